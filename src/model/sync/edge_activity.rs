//! What the cloud remembers of each edge's comings and goings: when it
//! last pushed and to which of its LSNs, when it last pulled and from
//! which feed position, when it last said hello.
//!
//! Pulls are stateless on the cloud (a hot standby may serve them), so this
//! is observability only, kept in shared memory (`sync::edge_activity`) and
//! lost at a restart, as `pg_stat_*` counters are. The table is fixed in
//! size: a slot per (database, edge name), found by hashing the key and
//! probing linearly, so that a push or a pull costs a few comparisons
//! under the lock whatever the number of edges. When every slot is taken a
//! new edge is not recorded (`record` says so); forgetting an edge frees
//! its slot.

use crate::model::node::MAX_NODE_NAME;

/// Slots of the table: the edges one server tracks, over all its databases.
pub const EDGE_SLOTS: usize = 4096;

/// What an edge did, as seen by the cloud.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `apply_batch`: the edge's LSN the cloud has applied up to.
    Push { position: u64 },
    /// `pull_batch`: the feed position the edge asked to pull after (the
    /// position it has applied).
    Pull { position: u64 },
    /// `hello`, at each connection.
    Hello,
}

/// One edge's activity. Times are microseconds since 2000-01-01
/// (PostgreSQL's `TimestampTz`), 0 for never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct EdgeActivity {
    pub dboid: u32,
    /// 0: the slot is free (a node name has at least one character).
    name_len: u8,
    name: [u8; MAX_NODE_NAME],
    pub last_push: i64,
    pub pushed_position: u64,
    pub last_pull: i64,
    pub pull_position: u64,
    pub last_hello: i64,
}

impl EdgeActivity {
    pub const FREE: EdgeActivity = EdgeActivity {
        dboid: 0,
        name_len: 0,
        name: [0; MAX_NODE_NAME],
        last_push: 0,
        pushed_position: 0,
        last_pull: 0,
        pull_position: 0,
        last_hello: 0,
    };

    fn is_free(&self) -> bool {
        self.name_len == 0
    }

    fn is(&self, dboid: u32, name: &[u8]) -> bool {
        self.dboid == dboid && &self.name[..self.name_len as usize] == name
    }

    /// The edge's name (node names are ASCII).
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.name[..self.name_len as usize]).into_owned()
    }

    fn note(&mut self, event: Event, at: i64) {
        match event {
            Event::Push { position } => (self.last_push, self.pushed_position) = (at, position),
            Event::Pull { position } => (self.last_pull, self.pull_position) = (at, position),
            Event::Hello => self.last_hello = at,
        }
    }
}

/// The table of `N` slots (`EDGE_SLOTS` in shared memory; fewer in tests).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct ActivityTable<const N: usize> {
    used: usize,
    slots: [EdgeActivity; N],
}

impl<const N: usize> ActivityTable<N> {
    pub const EMPTY: Self = ActivityTable { used: 0, slots: [EdgeActivity::FREE; N] };

    /// Note `event` of edge `name` in database `dboid` at `at`. False when
    /// it could not be kept: every slot is taken by other edges, or the
    /// name is not one a node can have.
    pub fn record(&mut self, dboid: u32, name: &str, event: Event, at: i64) -> bool {
        let key = name.as_bytes();
        if key.is_empty() || key.len() > MAX_NODE_NAME {
            return false;
        }
        let index = match self.probe(dboid, key) {
            Ok(found) => found,
            Err(Some(free)) => {
                let slot = &mut self.slots[free];
                *slot = EdgeActivity::FREE;
                slot.dboid = dboid;
                slot.name_len = key.len() as u8;
                slot.name[..key.len()].copy_from_slice(key);
                self.used += 1;
                free
            }
            Err(None) => return false,
        };
        self.slots[index].note(event, at);
        true
    }

    /// The activity of edge `name` in database `dboid`, if any was recorded.
    pub fn get(&self, dboid: u32, name: &str) -> Option<&EdgeActivity> {
        self.probe(dboid, name.as_bytes()).ok().map(|i| &self.slots[i])
    }

    /// The edges of database `dboid` that have activity recorded.
    pub fn of_database(&self, dboid: u32) -> impl Iterator<Item = &EdgeActivity> {
        self.slots.iter().filter(move |s| !s.is_free() && s.dboid == dboid)
    }

    /// Every slot is taken: a new edge will not be recorded.
    pub fn is_full(&self) -> bool {
        self.used >= N
    }

    /// Forget edge `name` of database `dboid` (dropped, or rebuilt): its
    /// slot is free again. False when nothing was recorded for it.
    ///
    /// The slots after it that probed past it move back (backward-shift
    /// deletion), so that every edge stays reachable from its home slot
    /// without leaving markers that would lengthen later probes.
    pub fn forget(&mut self, dboid: u32, name: &str) -> bool {
        let Ok(mut hole) = self.probe(dboid, name.as_bytes()) else {
            return false;
        };
        let mut next = hole;
        loop {
            next = (next + 1) % N;
            let moved = self.slots[next];
            // the run ends at a free slot; in a full table the hole is the
            // only one, met again once nothing is left to move
            if moved.is_free() || next == hole {
                break;
            }
            // an entry whose home lies cyclically in (hole, next] is
            // reached before the hole: it stays where it is
            let home = home_slot::<N>(moved.dboid, &moved.name[..moved.name_len as usize]);
            let stays = if hole <= next { hole < home && home <= next } else { hole < home || home <= next };
            if !stays {
                self.slots[hole] = moved;
                hole = next;
            }
        }
        self.slots[hole] = EdgeActivity::FREE;
        self.used -= 1;
        true
    }

    /// Ok(the slot holding the key), or Err(the free slot where it would
    /// go; None when the table is full and the key is not in it).
    fn probe(&self, dboid: u32, key: &[u8]) -> Result<usize, Option<usize>> {
        let start = home_slot::<N>(dboid, key);
        for step in 0..N {
            let i = (start + step) % N;
            let slot = &self.slots[i];
            if slot.is_free() {
                return Err(Some(i));
            }
            if slot.is(dboid, key) {
                return Ok(i);
            }
        }
        Err(None)
    }
}

/// Where the key's probe starts: FNV-1a of the database oid and the name.
/// A fixed function, not std's seeded hasher: every process of the server
/// must find the same slot.
fn home_slot<const N: usize>(dboid: u32, name: &[u8]) -> usize {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = dboid.to_le_bytes().iter().chain(name).fold(OFFSET, |h, &b| (h ^ b as u64).wrapping_mul(PRIME));
    (hash % N as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<const N: usize>(t: &ActivityTable<N>, dboid: u32) -> Vec<String> {
        let mut all: Vec<String> = t.of_database(dboid).map(|a| a.name()).collect();
        all.sort();
        all
    }

    #[test]
    fn each_event_sets_its_own_columns() {
        let mut t = ActivityTable::<8>::EMPTY;
        assert!(t.record(5, "store_1", Event::Push { position: 100 }, 1_000));
        assert!(t.record(5, "store_1", Event::Pull { position: 70 }, 2_000));
        assert!(t.record(5, "store_1", Event::Hello, 3_000));
        let a = *t.get(5, "store_1").unwrap();
        assert_eq!((a.last_push, a.pushed_position, a.last_pull, a.pull_position, a.last_hello), (1_000, 100, 2_000, 70, 3_000));
        assert_eq!((a.dboid, a.name()), (5, "store_1".to_string()));
        // the latest call wins, also when a position goes back (a rebuilt edge)
        t.record(5, "store_1", Event::Pull { position: 40 }, 4_000);
        t.record(5, "store_1", Event::Push { position: 90 }, 5_000);
        let a = *t.get(5, "store_1").unwrap();
        assert_eq!((a.last_pull, a.pull_position, a.last_push, a.pushed_position, a.last_hello), (4_000, 40, 5_000, 90, 3_000));
    }

    #[test]
    fn edges_are_told_apart_by_database_and_exact_name() {
        let mut t = ActivityTable::<8>::EMPTY;
        t.record(5, "store_1", Event::Hello, 1);
        t.record(6, "store_1", Event::Hello, 2);
        t.record(5, "Store_1", Event::Hello, 3);
        t.record(5, "store_10", Event::Hello, 4);
        assert_eq!(t.get(5, "store_1").unwrap().last_hello, 1);
        assert_eq!(t.get(6, "store_1").unwrap().last_hello, 2);
        assert_eq!(t.get(5, "Store_1").unwrap().last_hello, 3);
        assert_eq!(t.get(5, "store_10").unwrap().last_hello, 4);
        assert_eq!(t.get(5, "store"), None);
        assert_eq!(names(&t, 5), vec!["Store_1", "store_1", "store_10"]);
        assert_eq!(names(&t, 6), vec!["store_1"]);
        assert!(names(&t, 7).is_empty());
    }

    #[test]
    fn a_name_no_node_has_is_not_recorded() {
        let mut t = ActivityTable::<8>::EMPTY;
        assert!(!t.record(5, "", Event::Hello, 1));
        assert!(!t.record(5, &"x".repeat(MAX_NODE_NAME + 1), Event::Hello, 1));
        assert!(t.record(5, &"x".repeat(MAX_NODE_NAME), Event::Hello, 1), "the longest name fits");
        assert_eq!(t.of_database(5).count(), 1);
    }

    #[test]
    fn a_full_table_keeps_its_edges_and_turns_new_ones_away() {
        let mut t = ActivityTable::<4>::EMPTY;
        for i in 0..4 {
            assert!(!t.is_full());
            assert!(t.record(1, &format!("e{i}"), Event::Hello, i));
        }
        assert!(t.is_full());
        assert!(!t.record(1, "e9", Event::Hello, 9), "no slot left");
        assert_eq!(t.get(1, "e9"), None);
        assert!(t.record(1, "e2", Event::Pull { position: 7 }, 10), "a known edge is still recorded");
        assert_eq!(t.get(1, "e2").unwrap().pull_position, 7);
        assert!(t.forget(1, "e0"));
        assert!(!t.is_full());
        assert!(t.record(1, "e9", Event::Hello, 11), "a forgotten edge's slot is free again");
        assert_eq!(names(&t, 1), vec!["e1", "e2", "e3", "e9"]);
    }

    #[test]
    fn forgetting_keeps_every_other_edge_reachable() {
        // many keys in few slots: long probe runs that wrap around the end
        const N: usize = 16;
        let keys: Vec<String> = (0..N).map(|i| format!("edge_{i}")).collect();
        for gone in 0..N {
            let mut t = ActivityTable::<N>::EMPTY;
            for (i, k) in keys.iter().enumerate() {
                t.record(3, k, Event::Push { position: i as u64 }, i as i64);
            }
            assert!(t.forget(3, &keys[gone]));
            assert!(!t.forget(3, &keys[gone]), "forgotten once");
            assert_eq!(t.get(3, &keys[gone]), None);
            for (i, k) in keys.iter().enumerate().filter(|(i, _)| *i != gone) {
                assert_eq!(t.get(3, k).map(|a| a.pushed_position), Some(i as u64), "{k} after forgetting {}", keys[gone]);
            }
            assert_eq!(t.of_database(3).count(), N - 1);
        }
    }

    /// `count` names whose probe starts at slot `home` of a table of 8.
    fn names_at_home(home: usize, count: usize) -> Vec<String> {
        let found: Vec<String> =
            (0..10_000).map(|i| format!("k{i}")).filter(|k| home_slot::<8>(1, k.as_bytes()) == home).take(count).collect();
        assert_eq!(found.len(), count, "names spread over every slot");
        found
    }

    /// A table of 8 with `keys` recorded in order (database 1).
    fn table_of(keys: &[String]) -> ActivityTable<8> {
        let mut t = ActivityTable::<8>::EMPTY;
        for k in keys {
            t.record(1, k, Event::Hello, 1);
        }
        t
    }

    #[test]
    fn forgetting_moves_back_what_wrapped_past_the_end_and_only_that() {
        // a run from the last slot around to the first: home 7 at 7, 0, 1
        let at_end = names_at_home(7, 3);
        let mut t = table_of(&at_end);
        assert!(t.forget(1, &at_end[0]));
        for k in &at_end[1..] {
            assert!(t.get(1, k).is_some(), "{k}: moved back to the end, still found");
        }
        // a run from slot 5 around to 0: one edge at home 5, three at home 6
        // (6, 7, then 0): forgetting the first leaves the others where they are
        let mut keys = names_at_home(5, 1);
        keys.extend(names_at_home(6, 3));
        let mut t = table_of(&keys);
        assert!(t.forget(1, &keys[0]));
        for k in &keys[1..] {
            assert!(t.get(1, k).is_some(), "{k}: its home is past the hole, it stays");
        }
    }

    #[test]
    fn forgetting_in_any_order_empties_the_table() {
        const N: usize = 8;
        let mut t = ActivityTable::<N>::EMPTY;
        let keys: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
        for k in &keys {
            t.record(9, k, Event::Hello, 1);
        }
        for k in keys.iter().rev().step_by(2).chain(keys.iter().step_by(2)) {
            assert!(t.forget(9, k), "{k}");
            assert_eq!(t.get(9, k), None, "{k}");
        }
        assert_eq!(t.of_database(9).count(), 0);
        assert!(!t.forget(9, "s0"));
        // every slot usable again
        for i in 0..N {
            assert!(t.record(9, &format!("n{i}"), Event::Hello, 1));
        }
        assert!(t.is_full());
    }

    #[test]
    fn the_home_slot_is_a_fixed_function_of_the_key() {
        // the same in every process: no per-process seed
        assert_eq!(home_slot::<4096>(5, b"store_1"), home_slot::<4096>(5, b"store_1"));
        let spread: std::collections::HashSet<usize> = (0..64).map(|i| home_slot::<4096>(5, format!("store_{i}").as_bytes())).collect();
        assert!(spread.len() > 48, "names spread over the slots: {}", spread.len());
        assert_ne!(home_slot::<4096>(5, b"store_1"), home_slot::<4096>(6, b"store_1"), "the database counts");
        assert!(home_slot::<7>(u32::MAX, &[0xff; 48]) < 7);
    }
}
