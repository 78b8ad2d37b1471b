//! Row versions: a hybrid-logical-clock (HLC) reading plus the id of the node
//! that wrote the row. What last-writer-wins compares.
//!
//! An HLC reading is one `i64`: milliseconds since the Unix epoch in the
//! high 48 bits, a logical counter in the low 16. It never goes backwards on
//! a node (`tick`), and after a node sees a remote reading its next one is
//! larger (`observe` then `tick`): an edit made after seeing a change wins
//! over it, whatever the wall clocks say. A remote reading moves the clock
//! only within a bound past the local wall clock (`within_drift`), and the
//! arithmetic clamps or refuses at the ends of the range, never wraps:
//! release builds have no overflow checks.
//!
//! In a row the version travels as `edgesync_version bytea`, 24 bytes,
//! big-endian: `hlc` (8), `node` (4), `prev_hlc` (8), `prev_node` (4): the
//! version of this write and of the row version it replaced (zero for an
//! insert). Big-endian so that byte order is version order. The previous
//! version tells a remote change made on top of the local row (not a
//! conflict) from a concurrent one. 24 bytes rather than a 56-byte
//! `bigint[]`: the column is paid on every row and every replicated change.

use std::cmp::Ordering;
use std::fmt;

pub const LOGICAL_BITS: u32 = 16;
/// Size of the row form of a stamp.
pub const STAMP_BYTES: usize = 24;
/// The latest wall-clock time (ms) an HLC reading can hold: the year 6429.
pub const MAX_MILLIS: i64 = i64::MAX >> LOGICAL_BITS;
/// How far past a reading handed out the clock's durable reservation is
/// put (ms): the reservation is written about once per this much clock time,
/// and a restart may start the clock up to this far ahead of the wall clock.
pub const RESERVE_AHEAD_MS: i64 = 1_000;

/// The HLC reading for a wall-clock time in milliseconds; times outside
/// the range an HLC holds are clamped to it rather than wrapped.
pub fn hlc_from_millis(ms: i64) -> i64 {
    ms.clamp(0, MAX_MILLIS) << LOGICAL_BITS
}

/// The wall-clock milliseconds of an HLC reading.
pub fn millis_of(hlc: i64) -> i64 {
    hlc >> LOGICAL_BITS
}

/// The clock reached the top of its range: there is no later reading to
/// hand out, and repeating one would give two writes the same version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockExhausted;

/// The next local reading: after `last`, and not behind the wall clock.
/// A full logical counter carries into the milliseconds (still after
/// `last`); past the top of the range there is no next reading.
pub fn tick(last: i64, wall_ms: i64) -> Result<i64, ClockExhausted> {
    let next = last.checked_add(1).ok_or(ClockExhausted)?;
    Ok(next.max(hlc_from_millis(wall_ms)))
}

/// The clock after seeing `remote`: the next `tick` is past it. Only for a
/// reading `within_drift` accepted.
pub fn observe(last: i64, remote: i64) -> i64 {
    last.max(remote)
}

/// A remote reading further past the local wall clock than the bound allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drift {
    /// How far past the local wall clock the reading is, in ms.
    pub ahead_ms: i64,
}

/// May a remote reading move the local clock? Only up to `max_drift_ms`
/// past the local wall clock: beyond it one node with a wrong clock would
/// drag every node that hears from it into its future, for good.
pub fn within_drift(remote: i64, wall_ms: i64, max_drift_ms: i64) -> Result<(), Drift> {
    let ahead_ms = millis_of(remote).saturating_sub(wall_ms);
    if ahead_ms > max_drift_ms { Err(Drift { ahead_ms }) } else { Ok(()) }
}

/// The durable reservation to write before `reading` is handed out: a
/// restarted (or promoted, or restored) node starts past it.
pub fn reservation_for(reading: i64) -> i64 {
    reading.saturating_add(hlc_from_millis(RESERVE_AHEAD_MS))
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

    /// The 24-byte row form (see the module comment).
    pub fn to_bytes(self) -> [u8; STAMP_BYTES] {
        let mut out = [0u8; STAMP_BYTES];
        out[0..8].copy_from_slice(&self.version.hlc.to_be_bytes());
        out[8..12].copy_from_slice(&self.version.node.to_be_bytes());
        out[12..20].copy_from_slice(&self.prev.hlc.to_be_bytes());
        out[20..24].copy_from_slice(&self.prev.node.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<RowStamp, BadStamp> {
        if bytes.len() != STAMP_BYTES {
            return Err(BadStamp(format!("edgesync_version must be {STAMP_BYTES} bytes, not {}", bytes.len())));
        }
        let i64_at = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
        let i32_at = |at: usize| i32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        Ok(RowStamp { version: Version::new(i64_at(0), i32_at(8)), prev: Version::new(i64_at(12), i32_at(20)) })
    }

    /// The text form of the bytea (`\x` and hex), as in jsonb and COPY.
    pub fn to_hex(self) -> String {
        let mut out = String::from("\\x");
        for b in self.to_bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    pub fn from_hex(text: &str) -> Result<RowStamp, BadStamp> {
        let hex = text.strip_prefix("\\x").ok_or_else(|| BadStamp(format!("not a hex bytea: {text:?}")))?;
        if hex.len() % 2 != 0 || !hex.is_ascii() {
            return Err(BadStamp(format!("not a hex bytea: {text:?}")));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| BadStamp(format!("not a hex bytea: {text:?}"))))
            .collect::<Result<Vec<u8>, _>>()?;
        RowStamp::from_bytes(&bytes)
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
        let a = tick(0, 1_000_000).unwrap();
        let b = tick(a, 999_000).unwrap(); // wall clock went back a second
        let c = tick(b, 999_001).unwrap();
        assert!(a < b && b < c);
        assert_eq!(millis_of(a), 1_000_000);
        assert_eq!(millis_of(c), 1_000_000, "stays on the high-water mark, counting");
        let d = tick(c, 2_000_000).unwrap();
        assert_eq!(d, hlc_from_millis(2_000_000), "catches up with a wall clock that moved ahead");
    }

    #[test]
    fn an_edit_after_seeing_a_change_wins_even_with_a_clock_behind() {
        let remote = hlc_from_millis(5_000_000); // a node whose clock is ahead
        let mine = tick(observe(hlc_from_millis(1_000_000), remote), 1_000_000).unwrap();
        assert!(Version::new(mine, 1) > Version::new(remote, 2));
        assert!(Version::new(mine, 2) > Version::new(remote, 1));
    }

    #[test]
    fn a_full_counter_carries_into_the_milliseconds() {
        let full = hlc_from_millis(1_000) | 0xffff;
        let next = tick(full, 1_000).unwrap();
        assert!(next > full);
        assert_eq!((millis_of(next), next & 0xffff), (1_001, 0), "carried, not wrapped to the start of the millisecond");
    }

    #[test]
    fn the_top_of_the_range_is_refused_not_wrapped() {
        assert_eq!(tick(i64::MAX, 0), Err(ClockExhausted));
        assert_eq!(tick(i64::MAX - 1, 0), Ok(i64::MAX), "the last reading is still handed out");
        assert_eq!(tick(i64::MAX - 1, i64::MAX), Ok(i64::MAX), "a wall clock past the range is clamped");
        assert_eq!(hlc_from_millis(i64::MAX), MAX_MILLIS << LOGICAL_BITS);
        assert_eq!(hlc_from_millis(MAX_MILLIS + 1), hlc_from_millis(MAX_MILLIS));
        assert_eq!(hlc_from_millis(-5), 0);
        assert_eq!(hlc_from_millis(i64::MIN), 0);
        assert_eq!(tick(-10, -10), Ok(0), "a clock before 1970 starts at zero");
        assert_eq!(reservation_for(i64::MAX - 5), i64::MAX, "the reservation saturates");
        assert_eq!(reservation_for(7), 7 + hlc_from_millis(RESERVE_AHEAD_MS));
    }

    #[test]
    fn a_remote_reading_moves_the_clock_only_within_the_drift_bound() {
        let wall = 1_700_000_000_000;
        assert_eq!(within_drift(hlc_from_millis(wall + 60_000) | 0xffff, wall, 60_000), Ok(()), "right at the bound");
        assert_eq!(within_drift(hlc_from_millis(wall + 60_001), wall, 60_000), Err(Drift { ahead_ms: 60_001 }));
        assert_eq!(within_drift(hlc_from_millis(wall - 3_600_000), wall, 60_000), Ok(()), "behind is always fine");
        assert_eq!(within_drift(-1, wall, 60_000), Ok(()));
        // the receive rule at the edges of the range: no overflow, however far the reading
        assert_eq!(within_drift(i64::MAX, wall, 60_000), Err(Drift { ahead_ms: MAX_MILLIS - wall }));
        assert_eq!(within_drift(i64::MAX, i64::MIN, 60_000), Err(Drift { ahead_ms: i64::MAX }), "saturated, not wrapped");
        assert_eq!(within_drift(i64::MAX, MAX_MILLIS, 0), Ok(()), "a wall clock at the top accepts the top reading");
        let followed = observe(hlc_from_millis(wall), i64::MAX);
        assert_eq!(followed, i64::MAX);
        assert_eq!(tick(followed, MAX_MILLIS), Err(ClockExhausted), "then no later reading: refused, not wrapped");
        assert_eq!(observe(i64::MAX, 5), i64::MAX, "the clock never goes back");
    }

    #[test]
    fn node_id_breaks_equal_clocks() {
        assert!(Version::new(10, 2) > Version::new(10, 1));
        assert!(Version::new(11, 1) > Version::new(10, 2));
        assert!(Version::ZERO < Version::new(1, 0));
    }

    #[test]
    fn byte_form_round_trips_and_sorts_like_versions() {
        let s = RowStamp::local(hlc_from_millis(1_700_000_000_000) + 3, 464_487_714, Version::new(99, 3));
        assert_eq!(RowStamp::from_bytes(&s.to_bytes()), Ok(s));
        assert_eq!(RowStamp::from_hex(&s.to_hex()), Ok(s));
        assert_eq!(RowStamp::ZERO.to_hex(), format!("\\x{}", "0".repeat(48)));
        assert!(RowStamp::from_bytes(&[0; 23]).is_err());
        assert!(RowStamp::from_hex("00").is_err());
        assert!(RowStamp::from_hex("\\xzz").is_err());
        let older = RowStamp::local(5 << 16, 9, Version::ZERO).to_bytes();
        let newer = RowStamp::local(6 << 16, 1, Version::ZERO).to_bytes();
        let tie = RowStamp::local(6 << 16, 2, Version::ZERO).to_bytes();
        assert!(older < newer && newer < tie, "byte order is version order");
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

    #[test]
    fn bad_hex_is_an_error_not_a_panic() {
        // an odd number of digits (a truncated value) is refused before it is sliced
        for bad in ["\\x0", "\\x000", &format!("\\x{}", "0".repeat(47))] {
            assert_eq!(RowStamp::from_hex(bad), Err(BadStamp(format!("not a hex bytea: {bad:?}"))));
        }
        assert!(RowStamp::from_hex(&format!("\\x{}", "0".repeat(46))).is_err(), "23 bytes");
        assert!(RowStamp::from_hex("\\x\u{e9}").is_err(), "not ASCII");
    }

    #[test]
    fn text_forms_for_messages() {
        // millis.logical@node, as conflict messages show a version
        let v = Version::new(hlc_from_millis(1_700_000_000_123) + 5, 7);
        assert_eq!(v.to_string(), "1700000000123.5@7");
        assert_eq!(Version::ZERO.to_string(), "0.0@0");
        let e = RowStamp::from_bytes(&[0; 3]).unwrap_err();
        assert_eq!(e.to_string(), "edgesync_version must be 24 bytes, not 3");
    }
}
