//! The cloud's feed, as pure decisions: which feed transactions a pull
//! hands a caller, when a caller must resync, and which node a feed
//! transaction came from. (Retention is plain SQL: `edgesync._purge_feed`.)
//! The feed itself is a table (`edgesync.feed`), one row per
//! source transaction the cloud committed in a `down` or `both` table, in
//! commit order, tagged with the node it came from.
//!
//! A pull is a read: it keeps no state for the caller. The caller's
//! position is the feed position of the last transaction it applied (its
//! replication origin for the cloud). What the caller itself sent is not
//! handed back, but the caller's position must still move past it, or it
//! would be read again at every pull: when the last transactions a pull
//! reaches are the caller's own, the pull ends with an empty transaction
//! at the last of them, which applies nothing and moves the caller's
//! origin there.

use crate::model::node::{is_node_name, OBJECT_PREFIX};

/// The feed's replication slot on the cloud (one per cluster: the feed
/// worker runs in the database named by `edgesync.database`).
pub const FEED_SLOT: &str = "edgesync_feed";

/// One feed transaction as a pull sees it (its changes stay in the table
/// until it is chosen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEntry {
    /// The cloud's end LSN of the transaction's commit: its feed position.
    pub position: u64,
    /// The node the transaction came from (an edge whose push the cloud
    /// applied, or the cloud itself).
    pub origin_node: String,
    pub rows: u64,
    pub bytes: u64,
}

/// How much one pull may carry (a transaction is never split: the first
/// one chosen goes whatever its size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullLimits {
    pub max_rows: u64,
    pub max_bytes: u64,
}

/// What a pull hands the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pull {
    /// Positions of the transactions to send, in order.
    pub send: Vec<u64>,
    /// The position of an empty transaction to send last, when the pull's
    /// last transactions were the caller's own.
    pub skip_to: Option<u64>,
}

impl Pull {
    /// Where the caller stands once it applied this pull (None: nothing new).
    pub fn reaches(&self) -> Option<u64> {
        self.skip_to.or(self.send.last().copied())
    }
}

/// Choose what a pull by `caller` hands over from `entries`: the feed's
/// transactions after the caller's position, in order. Another node's
/// transactions go until the limits are reached; the caller's own are
/// passed over (and, last, skipped to).
pub fn choose(entries: &[FeedEntry], caller: &str, limits: PullLimits) -> Pull {
    let mut pull = Pull::default();
    let (mut rows, mut bytes) = (0u64, 0u64);
    for e in entries {
        if e.origin_node == caller {
            pull.skip_to = Some(e.position);
            continue;
        }
        let fits = rows.saturating_add(e.rows) <= limits.max_rows && bytes.saturating_add(e.bytes) <= limits.max_bytes;
        if !pull.send.is_empty() && !fits {
            break;
        }
        rows = rows.saturating_add(e.rows);
        bytes = bytes.saturating_add(e.bytes);
        pull.send.push(e.position);
        pull.skip_to = None;
    }
    pull
}

/// A pull from `after` when the feed no longer holds what follows it:
/// everything at or below `purged_through` is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncNeeded {
    pub after: u64,
    pub purged_through: u64,
}

/// Refuse a pull from below what retention purged: serving it would skip
/// the purged transactions for good. A caller at the purge mark has seen
/// all of them.
pub fn check_position(after: u64, purged_through: u64) -> Result<(), ResyncNeeded> {
    if after < purged_through {
        return Err(ResyncNeeded { after, purged_through });
    }
    Ok(())
}

/// The node a feed transaction came from: an edge whose push the cloud
/// applied (PostgreSQL tagged its changes with the origin edgesync named
/// after it), or the cloud itself (no origin). Another origin (a native
/// subscription's) keeps its own name.
pub fn origin_node(origin: Option<&str>, local_node: &str) -> String {
    match origin {
        None => local_node.to_string(),
        Some(o) => o.strip_prefix(OBJECT_PREFIX).filter(|n| is_node_name(n)).unwrap_or(o).to_string(),
    }
}

/// A bytea as PostgreSQL prints it in text (hex: `\\x` then two digits
/// per byte), as a pull's batch arrives; anything else is refused.
pub fn decode_hex_bytea(text: &str) -> Result<Vec<u8>, String> {
    let digits = text.strip_prefix("\\x").ok_or("the batch did not arrive as a hex bytea")?.as_bytes();
    if digits.len() % 2 != 0 {
        return Err("the batch's hex has an odd number of digits".to_string());
    }
    let nibble = |d: u8| -> Result<u8, String> {
        match d {
            b'0'..=b'9' => Ok(d - b'0'),
            b'a'..=b'f' => Ok(d - b'a' + 10),
            b'A'..=b'F' => Ok(d - b'A' + 10),
            _ => Err(format!("the batch's hex has a non-hex character {:?}", d as char)),
        }
    };
    digits.chunks_exact(2).map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(position: u64, origin: &str, rows: u64) -> FeedEntry {
        FeedEntry { position, origin_node: origin.into(), rows, bytes: rows * 100 }
    }

    const ROOMY: PullLimits = PullLimits { max_rows: 1_000, max_bytes: 1 << 20 };

    #[test]
    fn a_caller_gets_everything_but_its_own_changes() {
        let feed = [entry(10, "cloud", 1), entry(20, "edge1", 1), entry(30, "edge2", 1), entry(40, "cloud", 1)];
        let pull = choose(&feed, "edge1", ROOMY);
        assert_eq!(pull, Pull { send: vec![10, 30, 40], skip_to: None });
        assert_eq!(pull.reaches(), Some(40));
        assert_eq!(choose(&feed, "edge2", ROOMY).send, vec![10, 20, 40]);
    }

    #[test]
    fn a_caller_moves_past_its_own_changes_at_the_end() {
        let feed = [entry(10, "edge2", 1), entry(20, "edge1", 1), entry(30, "edge1", 1)];
        let pull = choose(&feed, "edge1", ROOMY);
        assert_eq!(pull, Pull { send: vec![10], skip_to: Some(30) });
        assert_eq!(pull.reaches(), Some(30), "not read again at the next pull");
        let only_own = choose(&feed[1..], "edge1", ROOMY);
        assert_eq!((only_own.send.len(), only_own.reaches()), (0, Some(30)));
        assert_eq!(choose(&[], "edge1", ROOMY).reaches(), None, "nothing new");
    }

    #[test]
    fn limits_cut_between_transactions_and_a_large_one_goes_alone() {
        let feed = [entry(10, "cloud", 6), entry(20, "cloud", 5), entry(30, "cloud", 1)];
        let limits = PullLimits { max_rows: 10, max_bytes: 1 << 20 };
        assert_eq!(choose(&feed, "edge1", limits).send, vec![10]);
        assert_eq!(choose(&feed[1..], "edge1", limits).send, vec![20, 30]);
        let tight = PullLimits { max_rows: 1, max_bytes: 50 };
        assert_eq!(choose(&feed, "edge1", tight).send, vec![10], "one transaction goes whatever its size");
        // a cut ends the pull: the caller's own changes after it wait for the next one
        let feed = [entry(10, "cloud", 6), entry(20, "cloud", 5), entry(30, "edge1", 1)];
        assert_eq!(choose(&feed, "edge1", limits), Pull { send: vec![10], skip_to: None });
    }

    #[test]
    fn a_caller_below_the_purge_mark_must_resync() {
        assert_eq!(check_position(100, 100), Ok(()), "at the mark: it has seen everything purged");
        assert_eq!(check_position(99, 100), Err(ResyncNeeded { after: 99, purged_through: 100 }));
        assert_eq!(check_position(0, 0), Ok(()), "a feed never purged");
    }

    #[test]
    fn a_batch_arrives_as_hex() {
        assert_eq!(decode_hex_bytea("\\x00ff10Ab"), Ok(vec![0, 255, 16, 171]));
        assert_eq!(decode_hex_bytea("\\x"), Ok(vec![]));
        assert!(decode_hex_bytea("00ff").is_err(), "escape format, or no prefix");
        assert!(decode_hex_bytea("\\x0").is_err(), "odd");
        assert!(decode_hex_bytea("\\x0g").is_err(), "not hex");
        assert!(decode_hex_bytea("\\xé0").is_err(), "not ASCII");
    }

    #[test]
    fn a_transaction_comes_from_the_node_its_origin_names() {
        assert_eq!(origin_node(None, "cloud"), "cloud");
        assert_eq!(origin_node(Some("edgesync_store_042"), "cloud"), "store_042");
        assert_eq!(origin_node(Some("pg_16636"), "cloud"), "pg_16636");
        assert_eq!(origin_node(Some("edgesync_"), "cloud"), "edgesync_", "no node name after the prefix");
    }
}
