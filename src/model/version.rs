//! Row versions: a hybrid-logical-clock (HLC) reading plus the id of the node
//! that wrote the row. What last-writer-wins compares.
//!
//! An HLC reading is one `i64`: milliseconds since the Unix epoch in the
//! high 48 bits, a logical counter in the low 16. It never goes backwards on
//! a node (`tick`), and after a node sees a remote reading its next one is
//! larger (`observe` then `tick`): an edit made after seeing a change wins
//! over it, whatever the wall clocks say.
//!
//! In a row the version travels as `edgesync_version bigint[]`:
//! `{hlc, node, prev_hlc, prev_node}`: the version of this write and of the
//! row version it replaced (zero for an insert). The previous version tells
//! a remote change made on top of the local row (not a conflict) from a
//! concurrent one.

use std::cmp::Ordering;
use std::fmt;

pub const LOGICAL_BITS: u32 = 16;

/// The HLC reading for a wall-clock time in milliseconds.
pub fn hlc_from_millis(ms: i64) -> i64 {
    ms.max(0) << LOGICAL_BITS
}

/// The wall-clock milliseconds of an HLC reading.
pub fn millis_of(hlc: i64) -> i64 {
    hlc >> LOGICAL_BITS
}

/// The next local reading: after `last`, and not behind the wall clock.
pub fn tick(last: i64, wall_ms: i64) -> i64 {
    (last + 1).max(hlc_from_millis(wall_ms))
}

/// The clock after seeing `remote`: the next `tick` is past it.
pub fn observe(last: i64, remote: i64) -> i64 {
    last.max(remote)
}

/// Who wrote a row, and when (by HLC). Ordered by clock, then node id, so
/// that every node breaks equal clocks the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Version {
    pub hlc: i64,
    pub node: i32,
}

impl Version {
    /// The version of rows that existed before their table was enrolled:
    /// the same on every node, and older than any write.
    pub const ZERO: Version = Version { hlc: 0, node: 0 };

    pub fn new(hlc: i64, node: i32) -> Version {
        Version { hlc, node }
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.hlc, self.node).cmp(&(other.hlc, other.node))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", millis_of(self.hlc), self.hlc & 0xffff, self.node)
    }
}

/// The version a row carries: this write's and the one it replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowStamp {
    pub version: Version,
    pub prev: Version,
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadStamp(pub String);

impl fmt::Display for BadStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl RowStamp {
    pub const ZERO: RowStamp = RowStamp { version: Version::ZERO, prev: Version::ZERO };

    /// A fresh local write on top of `prev`.
    pub fn local(hlc: i64, node: i32, prev: Version) -> RowStamp {
        RowStamp { version: Version::new(hlc, node), prev }
    }

    pub fn to_array(self) -> [i64; 4] {
        [self.version.hlc, self.version.node as i64, self.prev.hlc, self.prev.node as i64]
    }

    /// Read `{hlc, node, prev_hlc, prev_node}`; NULL elements or another length are an error.
    pub fn from_array(values: &[Option<i64>]) -> Result<RowStamp, BadStamp> {
        let v: Vec<i64> = values
            .iter()
            .map(|x| x.ok_or_else(|| BadStamp("edgesync_version has a NULL element".into())))
            .collect::<Result<_, _>>()?;
        if v.len() != 4 {
            return Err(BadStamp(format!("edgesync_version must have 4 elements, not {}", v.len())));
        }
        let node = |x: i64| i32::try_from(x).map_err(|_| BadStamp(format!("node id {x} out of range")));
        Ok(RowStamp { version: Version::new(v[0], node(v[1])?), prev: Version::new(v[2], node(v[3])?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_monotonic_when_the_wall_clock_steps_back() {
        let a = tick(0, 1_000_000);
        let b = tick(a, 999_000); // wall clock went back a second
        let c = tick(b, 999_001);
        assert!(a < b && b < c);
        assert_eq!(millis_of(a), 1_000_000);
        assert_eq!(millis_of(c), 1_000_000, "stays on the high-water mark, counting");
        let d = tick(c, 2_000_000);
        assert_eq!(d, hlc_from_millis(2_000_000), "catches up with a wall clock that moved ahead");
    }

    #[test]
    fn an_edit_after_seeing_a_change_wins_even_with_a_clock_behind() {
        let remote = hlc_from_millis(5_000_000); // a node whose clock is ahead
        let mine = tick(observe(hlc_from_millis(1_000_000), remote), 1_000_000);
        assert!(Version::new(mine, 1) > Version::new(remote, 2));
        assert!(Version::new(mine, 2) > Version::new(remote, 1));
    }

    #[test]
    fn node_id_breaks_equal_clocks() {
        assert!(Version::new(10, 2) > Version::new(10, 1));
        assert!(Version::new(11, 1) > Version::new(10, 2));
        assert!(Version::ZERO < Version::new(1, 0));
    }

    #[test]
    fn stamp_round_trip_and_errors() {
        let s = RowStamp::local(123 << 16, 7, Version::new(99, 3));
        let a = s.to_array().map(Some);
        assert_eq!(RowStamp::from_array(&a), Ok(s));
        assert!(RowStamp::from_array(&[Some(1), Some(2)]).is_err());
        assert!(RowStamp::from_array(&[Some(1), None, Some(0), Some(0)]).is_err());
        assert!(RowStamp::from_array(&[Some(1), Some(1 << 40), Some(0), Some(0)]).is_err());
    }
}
