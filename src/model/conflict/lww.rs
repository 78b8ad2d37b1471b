//! The conflict decision: given what this node holds for a key and the
//! remote change that meets it, is it a conflict, and what happens?
//!
//! `decide` is pure and total; the trigger in `conflict/trigger.rs` feeds it and
//! carries out the `Action`. Two nodes meeting the same pair of concurrent
//! changes (each one's local is the other's remote) pick the same row.

use std::fmt;
use std::str::FromStr;

use super::version::{RowStamp, Version};

/// A table's conflict policy (`edgesync.set_conflict_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    LastWriterWins,
    KeepLocal,
    ApplyRemote,
    Manual,
    Custom,
}

impl Policy {
    pub const NAMES: &'static str = "last_writer_wins, keep_local, apply_remote, manual, custom";

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::LastWriterWins => "last_writer_wins",
            Policy::KeepLocal => "keep_local",
            Policy::ApplyRemote => "apply_remote",
            Policy::Manual => "manual",
            Policy::Custom => "custom",
        }
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "last_writer_wins" => Policy::LastWriterWins,
            "keep_local" => Policy::KeepLocal,
            "apply_remote" => Policy::ApplyRemote,
            "manual" => Policy::Manual,
            "custom" => Policy::Custom,
            other => return Err(format!("unknown conflict policy {other:?}: expected one of {}", Policy::NAMES)),
        })
    }
}

/// Conflict types, named as PostgreSQL 18 names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictType {
    InsertExists,
    UpdateOriginDiffers,
    UpdateMissing,
    UpdateDeleted,
    DeleteOriginDiffers,
    DeleteMissing,
}

impl ConflictType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictType::InsertExists => "insert_exists",
            ConflictType::UpdateOriginDiffers => "update_origin_differs",
            ConflictType::UpdateMissing => "update_missing",
            ConflictType::UpdateDeleted => "update_deleted",
            ConflictType::DeleteOriginDiffers => "delete_origin_differs",
            ConflictType::DeleteMissing => "delete_missing",
        }
    }
}

impl fmt::Display for ConflictType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a conflict was settled, in `conflict_log.resolution`; also what a
/// DBA asks of `resolve_conflict` (all but `Pending`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    ApplyRemote,
    KeepLocal,
    Merge,
    Custom,
    Pending,
}

impl Resolution {
    pub const CHOICES: &'static str = "apply_remote, keep_local, merge, custom";

    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::ApplyRemote => "apply_remote",
            Resolution::KeepLocal => "keep_local",
            Resolution::Merge => "merge",
            Resolution::Custom => "custom",
            Resolution::Pending => "pending",
        }
    }

    /// A resolution a DBA may choose.
    pub fn parse_choice(s: &str) -> Result<Resolution, String> {
        Ok(match s {
            "apply_remote" => Resolution::ApplyRemote,
            "keep_local" => Resolution::KeepLocal,
            "merge" => Resolution::Merge,
            "custom" => Resolution::Custom,
            other => return Err(format!("unknown resolution {other:?}: expected one of {}", Resolution::CHOICES)),
        })
    }
}

/// What this node holds for the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    Row(RowStamp),
    /// Deleted here; the tombstone's version (when the delete happened).
    Deleted(Version),
    Absent,
}

/// The remote change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remote {
    Insert(RowStamp),
    Update(RowStamp),
    /// `seen`: the row version the deleting node removed; `version`: the
    /// delete's own (edgesync's forwarder carries both, beside the delete).
    /// Native logical replication carries neither (only the key).
    Delete { seen: Option<Version>, version: Option<Version> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    ApplyRemote,
    KeepLocal,
    /// `custom` policy: the table's handler chooses the row.
    AskHandler,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub conflict: Option<ConflictType>,
    /// `manual` policy: kept local, waiting for a DBA.
    pub pending: bool,
}

impl Decision {
    fn plain(action: Action) -> Decision {
        Decision { action, conflict: None, pending: false }
    }

    /// How `conflict_log.resolution` reads for this decision.
    pub fn resolution(&self) -> Resolution {
        match (self.pending, self.action) {
            (true, _) => Resolution::Pending,
            (_, Action::ApplyRemote) => Resolution::ApplyRemote,
            (_, Action::KeepLocal) => Resolution::KeepLocal,
            (_, Action::AskHandler) => Resolution::Custom,
        }
    }
}

fn by_policy(policy: Policy, conflict: ConflictType, remote_is_newer: bool) -> Decision {
    let (action, pending) = match policy {
        Policy::LastWriterWins if remote_is_newer => (Action::ApplyRemote, false),
        Policy::LastWriterWins => (Action::KeepLocal, false),
        Policy::KeepLocal => (Action::KeepLocal, false),
        Policy::ApplyRemote => (Action::ApplyRemote, false),
        Policy::Manual => (Action::KeepLocal, true),
        Policy::Custom => (Action::AskHandler, false),
    };
    Decision { action, conflict: Some(conflict), pending }
}

/// Decide what a remote change does to this node's state for its key.
/// `local_node` is this node's id (native deletes carry no version: a local
/// edit they remove is the only sign of a concurrent change).
pub fn decide(local: Local, remote: Remote, policy: Policy, local_node: i32) -> Decision {
    use ConflictType::*;
    match (remote, local) {
        (Remote::Insert(_), Local::Absent) => Decision::plain(Action::ApplyRemote),
        (Remote::Insert(r), Local::Row(l)) | (Remote::Update(r), Local::Row(l)) if r.version == l.version => {
            // the same write again (a re-sent batch, a relay): nothing to do
            Decision::plain(Action::KeepLocal)
        }
        // written on top of what we hold (a resolution re-inserting a row the other node had lost)
        (Remote::Insert(r), Local::Row(l)) if r.prev == l.version && l.version != Version::ZERO => Decision::plain(Action::ApplyRemote),
        (Remote::Insert(r), Local::Row(l)) => by_policy(policy, InsertExists, r.version > l.version),
        (Remote::Insert(r), Local::Deleted(t)) if r.version > t => Decision::plain(Action::ApplyRemote),
        (Remote::Insert(r), Local::Deleted(t)) => by_policy(policy, UpdateDeleted, r.version > t),

        // made on top of what we hold: the normal next change
        (Remote::Update(r), Local::Row(l)) if r.prev == l.version => Decision::plain(Action::ApplyRemote),
        // we already built on top of it: it is old news
        (Remote::Update(r), Local::Row(l)) if l.prev == r.version => Decision::plain(Action::KeepLocal),
        (Remote::Update(r), Local::Row(l)) => by_policy(policy, UpdateOriginDiffers, r.version > l.version),
        (Remote::Update(r), Local::Deleted(t)) => by_policy(policy, UpdateDeleted, r.version > t),
        (Remote::Update(_), Local::Absent) => by_policy(policy, UpdateMissing, true),

        (Remote::Delete { seen: Some(s), .. }, Local::Row(l)) if s == l.version => Decision::plain(Action::ApplyRemote),
        (Remote::Delete { seen: Some(_), version }, Local::Row(l)) => {
            by_policy(policy, DeleteOriginDiffers, version.map(|v| v > l.version).unwrap_or(true))
        }
        (Remote::Delete { seen: None, .. }, Local::Row(l)) if l.version.node == local_node && l.version != Version::ZERO => {
            // A native delete of a row last written here. It carries no
            // version, so whether it was concurrent is unknown; and had it
            // been, the deleting node already dropped our update
            // (update_missing happens before any trigger there). Refusing
            // it would leave the nodes apart for good, so it is applied
            // under every policy; `manual` logs it as pending, and a DBA's
            // keep_local puts the row back on both nodes.
            Decision { action: Action::ApplyRemote, conflict: Some(DeleteOriginDiffers), pending: policy == Policy::Manual }
        }
        (Remote::Delete { seen: None, .. }, Local::Row(_)) => Decision::plain(Action::ApplyRemote),
        (Remote::Delete { .. }, Local::Deleted(_)) => Decision::plain(Action::KeepLocal),
        (Remote::Delete { .. }, Local::Absent) => Decision { action: Action::KeepLocal, conflict: Some(DeleteMissing), pending: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: i32 = 1;
    const B: i32 = 2;

    fn v(hlc: i64, node: i32) -> Version {
        Version::new(hlc, node)
    }
    fn stamp(hlc: i64, node: i32, prev: Version) -> RowStamp {
        RowStamp { version: v(hlc, node), prev }
    }

    #[test]
    fn truth_table() {
        use Action::*;
        use ConflictType::*;
        let base = v(100, A);
        let lww = Policy::LastWriterWins;
        let row = Local::Row(stamp(200, A, base));
        let cases: Vec<(&str, Local, Remote, Action, Option<ConflictType>)> = vec![
            ("insert into nothing", Local::Absent, Remote::Insert(stamp(50, B, Version::ZERO)), ApplyRemote, None),
            ("same insert again", row, Remote::Insert(stamp(200, A, base)), KeepLocal, None),
            ("newer insert on existing key", row, Remote::Insert(stamp(300, B, Version::ZERO)), ApplyRemote, Some(InsertExists)),
            ("older insert on existing key", row, Remote::Insert(stamp(150, B, Version::ZERO)), KeepLocal, Some(InsertExists)),
            ("insert newer than a delete", Local::Deleted(v(200, A)), Remote::Insert(stamp(300, B, Version::ZERO)), ApplyRemote, None),
            ("insert older than a delete", Local::Deleted(v(200, A)), Remote::Insert(stamp(150, B, Version::ZERO)), KeepLocal, Some(UpdateDeleted)),
            ("next update in sequence", row, Remote::Update(stamp(150, B, v(200, A))), ApplyRemote, None),
            ("insert made on top of our row", row, Remote::Insert(stamp(300, B, v(200, A))), ApplyRemote, None),
            ("stale update already built on", Local::Row(stamp(300, A, v(250, B))), Remote::Update(stamp(250, B, base)), KeepLocal, None),
            ("concurrent newer update", row, Remote::Update(stamp(300, B, base)), ApplyRemote, Some(UpdateOriginDiffers)),
            ("concurrent older update", row, Remote::Update(stamp(150, B, base)), KeepLocal, Some(UpdateOriginDiffers)),
            ("update newer than a delete", Local::Deleted(v(200, A)), Remote::Update(stamp(300, B, base)), ApplyRemote, Some(UpdateDeleted)),
            ("update older than a delete", Local::Deleted(v(200, A)), Remote::Update(stamp(150, B, base)), KeepLocal, Some(UpdateDeleted)),
            ("update of a missing row", Local::Absent, Remote::Update(stamp(150, B, base)), ApplyRemote, Some(UpdateMissing)),
            ("delete of what we hold", row, Remote::Delete { seen: Some(v(200, A)), version: Some(v(300, B)) }, ApplyRemote, None),
            ("delete older than our update", row, Remote::Delete { seen: Some(base), version: Some(v(150, B)) }, KeepLocal, Some(DeleteOriginDiffers)),
            ("delete newer than our update", row, Remote::Delete { seen: Some(base), version: Some(v(250, B)) }, ApplyRemote, Some(DeleteOriginDiffers)),
            ("native delete of a row written here", row, Remote::Delete { seen: None, version: None }, ApplyRemote, Some(DeleteOriginDiffers)),
            ("native delete of a row written there", Local::Row(stamp(200, B, base)), Remote::Delete { seen: None, version: None }, ApplyRemote, None),
            ("native delete of a row never written since enrolment", Local::Row(RowStamp::ZERO), Remote::Delete { seen: None, version: None }, ApplyRemote, None),
            ("delete of a deleted row", Local::Deleted(v(1, A)), Remote::Delete { seen: None, version: None }, KeepLocal, None),
            ("delete of a missing row", Local::Absent, Remote::Delete { seen: None, version: None }, KeepLocal, Some(DeleteMissing)),
        ];
        for (name, local, remote, action, conflict) in cases {
            let d = decide(local, remote, lww, A);
            assert_eq!((d.action, d.conflict, d.pending), (action, conflict, false), "{name}");
        }
    }

    #[test]
    fn policies_on_a_conflict() {
        let row = Local::Row(stamp(200, A, v(100, A)));
        let older = Remote::Update(stamp(150, B, v(100, A)));
        let expect = [
            (Policy::LastWriterWins, Action::KeepLocal, false, Resolution::KeepLocal),
            (Policy::KeepLocal, Action::KeepLocal, false, Resolution::KeepLocal),
            (Policy::ApplyRemote, Action::ApplyRemote, false, Resolution::ApplyRemote),
            (Policy::Manual, Action::KeepLocal, true, Resolution::Pending),
            (Policy::Custom, Action::AskHandler, false, Resolution::Custom),
        ];
        for (policy, action, pending, resolution) in expect {
            let d = decide(row, older, policy, A);
            assert_eq!((d.action, d.pending, d.resolution()), (action, pending, resolution), "{policy:?}");
            assert_eq!(d.conflict, Some(ConflictType::UpdateOriginDiffers));
        }
        // no conflict: the policy does not matter
        let next = Remote::Update(stamp(150, B, v(200, A)));
        for policy in [Policy::KeepLocal, Policy::Manual, Policy::Custom] {
            assert_eq!(decide(row, next, policy, A), Decision::plain(Action::ApplyRemote));
        }
    }

    #[test]
    fn a_write_re_sent_after_its_delete_does_not_bring_the_row_back() {
        // Applying a native delete records the deleted row's own version as
        // the tombstone's (conflict/trigger.rs): a re-sent batch or a relay
        // may then bring that very write again, equal to the tombstone.
        let deleted = Local::Deleted(v(200, B));
        for remote in [Remote::Insert(stamp(200, B, Version::ZERO)), Remote::Update(stamp(200, B, v(100, A)))] {
            assert_eq!(decide(deleted, remote, Policy::LastWriterWins, A).action, Action::KeepLocal, "{remote:?}");
        }
    }

    #[test]
    fn native_deletes_apply_under_every_policy() {
        let row = Local::Row(stamp(200, A, v(100, A)));
        let native = Remote::Delete { seen: None, version: None };
        for policy in [Policy::LastWriterWins, Policy::KeepLocal, Policy::ApplyRemote, Policy::Manual, Policy::Custom] {
            let d = decide(row, native, policy, A);
            assert_eq!(d.action, Action::ApplyRemote, "{policy:?}");
            assert_eq!(d.conflict, Some(ConflictType::DeleteOriginDiffers));
            assert_eq!(d.pending, policy == Policy::Manual);
        }
    }

    /// The row a node ends with after a remote change meets its local row.
    fn outcome(local: RowStamp, remote: RowStamp, insert: bool, node: i32) -> RowStamp {
        let change = if insert { Remote::Insert(remote) } else { Remote::Update(remote) };
        match decide(Local::Row(local), change, Policy::LastWriterWins, node).action {
            Action::ApplyRemote => remote,
            Action::KeepLocal => local,
            Action::AskHandler => unreachable!(),
        }
    }

    #[test]
    fn both_nodes_pick_the_same_winner() {
        let clocks = [0i64, 1, 5, 1 << 16, (1 << 16) + 1, 7 << 16];
        let base = v(0, 0);
        for &ca in &clocks {
            for &cb in &clocks {
                for insert in [false, true] {
                    let prev = if insert { Version::ZERO } else { base };
                    let a = stamp(ca, A, prev);
                    let b = stamp(cb, B, prev);
                    let on_a = outcome(a, b, insert, A);
                    let on_b = outcome(b, a, insert, B);
                    assert_eq!(on_a, on_b, "clocks {ca} vs {cb}, insert {insert}");
                    let expected = if (ca, A) > (cb, B) { a } else { b };
                    assert_eq!(on_a, expected, "the newer write wins");
                }
            }
        }
    }

    #[test]
    fn a_delete_and_a_concurrent_update_end_the_same_on_both_nodes() {
        // node A deleted the row at version d, node B updated it to u; both
        // had seen `base`. Each node meets the other's change; the newer wins on both.
        let base = v(100, A);
        for (d, u) in [(300, 200), (200, 300), (250, 250)] {
            let delete = Remote::Delete { seen: Some(base), version: Some(v(d, A)) };
            let update = stamp(u, B, base);
            // on B: the delete meets the updated row
            let on_b = decide(Local::Row(update), delete, Policy::LastWriterWins, B);
            // on A: the update meets the tombstone
            let on_a = decide(Local::Deleted(v(d, A)), Remote::Update(update), Policy::LastWriterWins, A);
            let delete_wins = v(d, A) > update.version;
            assert_eq!(on_b.action == Action::ApplyRemote, delete_wins, "B, delete {d} vs update {u}");
            assert_eq!(on_a.action == Action::KeepLocal, delete_wins, "A, delete {d} vs update {u}");
            assert_eq!((on_b.conflict, on_a.conflict), (Some(ConflictType::DeleteOriginDiffers), Some(ConflictType::UpdateDeleted)));
        }
        // the same delete arriving twice, or at a node that already dropped the row
        let delete = Remote::Delete { seen: Some(base), version: Some(v(300, A)) };
        assert_eq!(decide(Local::Deleted(v(300, A)), delete, Policy::LastWriterWins, B), Decision::plain(Action::KeepLocal));
        assert_eq!(decide(Local::Absent, delete, Policy::LastWriterWins, B).conflict, Some(ConflictType::DeleteMissing));
    }

    #[test]
    fn equal_clocks_are_settled_by_node_id() {
        let a = stamp(42 << 16, A, Version::ZERO);
        let b = stamp(42 << 16, B, Version::ZERO);
        assert_eq!(outcome(a, b, false, A), b);
        assert_eq!(outcome(b, a, false, B), b);
    }

    #[test]
    fn names_parse_with_clear_errors() {
        assert_eq!("manual".parse::<Policy>(), Ok(Policy::Manual));
        let e = "newest".parse::<Policy>().unwrap_err();
        assert!(e.contains("newest") && e.contains("last_writer_wins"), "{e}");
        assert_eq!(Resolution::parse_choice("merge"), Ok(Resolution::Merge));
        assert!(Resolution::parse_choice("pending").is_err(), "pending is not a choice");
    }

    #[test]
    fn names_are_the_ones_sql_reads_and_writes() {
        // policies and resolutions round-trip through their names (set_conflict_policy, resolve_conflict)
        for p in [Policy::LastWriterWins, Policy::KeepLocal, Policy::ApplyRemote, Policy::Manual, Policy::Custom] {
            assert_eq!(p.as_str().parse::<Policy>(), Ok(p));
            assert!(Policy::NAMES.contains(p.as_str()), "{p:?}");
        }
        assert_eq!(Policy::LastWriterWins.as_str(), "last_writer_wins");
        for r in [Resolution::ApplyRemote, Resolution::KeepLocal, Resolution::Merge, Resolution::Custom] {
            assert_eq!(Resolution::parse_choice(r.as_str()), Ok(r));
        }
        assert_eq!(Resolution::Pending.as_str(), "pending");
        // conflict types read as PostgreSQL 18 names them, in conflict_log and in messages
        let names = [
            (ConflictType::InsertExists, "insert_exists"),
            (ConflictType::UpdateOriginDiffers, "update_origin_differs"),
            (ConflictType::UpdateMissing, "update_missing"),
            (ConflictType::UpdateDeleted, "update_deleted"),
            (ConflictType::DeleteOriginDiffers, "delete_origin_differs"),
            (ConflictType::DeleteMissing, "delete_missing"),
        ];
        for (t, name) in names {
            assert_eq!(t.as_str(), name);
            assert_eq!(t.to_string(), name);
        }
    }
}
