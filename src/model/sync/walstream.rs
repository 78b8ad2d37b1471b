//! The streaming replication protocol's copy messages, as a logical
//! replication client sees them (PostgreSQL's "Streaming Replication
//! Protocol", `START_REPLICATION ... LOGICAL`): what the walsender sends
//! (`XLogData` carrying one pgoutput message, and `Primary keepalive`), and
//! the `Standby status update` the client answers with, which is what moves
//! the slot.
//!
//! The walsender is this node's own, but its bytes are read like any peer's:
//! every length is checked against the bytes received.

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// One copy message from the walsender.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// `w`: one pgoutput message, written at `wal_start` (for a Commit: the
    /// end of the commit record).
    XLogData { wal_start: u64, wal_end: u64, data: &'a [u8] },
    /// `k`: where the walsender has read WAL up to, and whether it wants an
    /// answer now (its `wal_sender_timeout` is running out).
    Keepalive { wal_end: u64, reply_requested: bool },
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
}

/// Read one copy message. Err: not a message a walsender sends.
pub fn parse(b: &[u8]) -> Result<ServerMessage<'_>, String> {
    const XLOGDATA_HEADER: usize = 1 + 8 + 8 + 8;
    const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
    match b.first() {
        Some(b'w') if b.len() >= XLOGDATA_HEADER => Ok(ServerMessage::XLogData {
            wal_start: u64_at(b, 1).expect("checked length"),
            wal_end: u64_at(b, 9).expect("checked length"),
            data: &b[XLOGDATA_HEADER..],
        }),
        Some(b'k') if b.len() == KEEPALIVE_LEN => {
            Ok(ServerMessage::Keepalive { wal_end: u64_at(b, 1).expect("checked length"), reply_requested: b[17] != 0 })
        }
        Some(b'w') | Some(b'k') => Err(format!("a replication message of {} bytes, too short for its kind", b.len())),
        Some(kind) => Err(format!("a replication message of unknown kind {kind:#04x}")),
        None => Err("an empty replication message".to_string()),
    }
}

/// A standby status update (`r`): everything up to `received` was read,
/// everything up to `confirmed` is safe (the slot may move there).
pub fn status_update(received: u64, confirmed: u64, now_unix_micros: i64, reply_requested: bool) -> [u8; 34] {
    let mut m = [0u8; 34];
    m[0] = b'r';
    m[1..9].copy_from_slice(&received.to_be_bytes());
    m[9..17].copy_from_slice(&confirmed.to_be_bytes());
    // applied: the same as flushed; a logical walsender reads only the flush position
    m[17..25].copy_from_slice(&confirmed.to_be_bytes());
    m[25..33].copy_from_slice(&(now_unix_micros - POSTGRES_EPOCH_UNIX_MICROS).to_be_bytes());
    m[33] = reply_requested as u8;
    m
}

/// The `START_REPLICATION` command for `slot` with pgoutput's options.
/// `slot` must be a slot name (PostgreSQL allows only `[a-z0-9_]`, which
/// needs no quoting); `publication` is one of edgesync's own.
pub fn start_command(slot: &str, publication: &str, proto_version: u32, skip_other_origins: bool) -> Result<String, String> {
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
    if !plain(slot) || !plain(publication) {
        return Err(format!("{slot:?} / {publication:?} is not a plain slot or publication name"));
    }
    let origin = if skip_other_origins { ", origin 'none'" } else { "" };
    Ok(format!(
        "START_REPLICATION SLOT \"{slot}\" LOGICAL 0/0 (proto_version '{proto_version}', publication_names '\"{publication}\"', messages 'true'{origin})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlogdata(start: u64, end: u64, data: &[u8]) -> Vec<u8> {
        let mut m = vec![b'w'];
        m.extend(start.to_be_bytes());
        m.extend(end.to_be_bytes());
        m.extend(7i64.to_be_bytes());
        m.extend(data);
        m
    }

    #[test]
    fn reads_xlogdata_and_its_payload() {
        let m = xlogdata(0x10, 0x20, b"B...");
        assert_eq!(parse(&m).unwrap(), ServerMessage::XLogData { wal_start: 0x10, wal_end: 0x20, data: b"B..." });
        // an empty payload is the walsender's business, not a framing error
        assert!(matches!(parse(&xlogdata(1, 2, b"")).unwrap(), ServerMessage::XLogData { data: [], .. }));
    }

    #[test]
    fn reads_keepalives() {
        let mut k = vec![b'k'];
        k.extend(0x1234u64.to_be_bytes());
        k.extend(9i64.to_be_bytes());
        k.push(1);
        assert_eq!(parse(&k).unwrap(), ServerMessage::Keepalive { wal_end: 0x1234, reply_requested: true });
        k[17] = 0;
        assert_eq!(parse(&k).unwrap(), ServerMessage::Keepalive { wal_end: 0x1234, reply_requested: false });
    }

    #[test]
    fn refuses_short_and_unknown_messages() {
        assert!(parse(&[]).is_err());
        assert!(parse(b"w1234").is_err());
        assert!(parse(&[b'k'; 17]).is_err());
        assert!(parse(&[b'k'; 19]).is_err());
        assert!(parse(b"x").unwrap_err().contains("unknown kind"));
    }

    #[test]
    fn a_status_update_carries_both_positions_and_postgres_time() {
        let m = status_update(0x30, 0x20, POSTGRES_EPOCH_UNIX_MICROS + 5, true);
        assert_eq!(m[0], b'r');
        assert_eq!(u64_at(&m, 1), Some(0x30));
        assert_eq!(u64_at(&m, 9), Some(0x20));
        assert_eq!(u64_at(&m, 17), Some(0x20));
        assert_eq!(u64_at(&m, 25), Some(5));
        assert_eq!(m[33], 1);
    }

    #[test]
    fn the_start_command_names_only_plain_names() {
        let c = start_command("edgesync_cloud", "edgesync_up", 1, true).unwrap();
        assert_eq!(
            c,
            "START_REPLICATION SLOT \"edgesync_cloud\" LOGICAL 0/0 (proto_version '1', publication_names '\"edgesync_up\"', messages 'true', origin 'none')"
        );
        assert!(!start_command("s", "p", 1, false).unwrap().contains("origin"));
        assert!(start_command("a\" x", "p", 1, false).is_err());
        assert!(start_command("s", "p'; DROP", 1, false).is_err());
        assert!(start_command("", "p", 1, false).is_err());
    }
}
