//! The cloud's feed, as pure decisions: which feed transactions a pull
//! hands a caller, when a caller must resync, and how far retention
//! purges. The feed itself is a table (`edgesync.feed`), one row per
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

/// One feed transaction as retention sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retained {
    pub position: u64,
    /// When the cloud committed it, microseconds (any epoch, the same as `now`).
    pub committed_at: i64,
    pub bytes: u64,
}

/// The position through which to purge `feed` (in position order): every
/// transaction older than `retention_us`, and then the oldest ones until
/// the rest fit in `max_bytes`. None: nothing to purge.
pub fn purge_through(feed: &[Retained], now: i64, retention_us: i64, max_bytes: u64) -> Option<u64> {
    let too_old = now.saturating_sub(retention_us);
    let mut kept: u64 = feed.iter().map(|r| r.bytes).fold(0, u64::saturating_add);
    let mut through = None;
    for r in feed {
        if r.committed_at >= too_old && kept <= max_bytes {
            break;
        }
        kept = kept.saturating_sub(r.bytes);
        through = Some(r.position);
    }
    through
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
    fn retention_purges_by_age_then_by_size() {
        let feed = [
            Retained { position: 10, committed_at: 100, bytes: 40 },
            Retained { position: 20, committed_at: 200, bytes: 40 },
            Retained { position: 30, committed_at: 300, bytes: 40 },
        ];
        assert_eq!(purge_through(&feed, 310, 1_000, 1_000), None, "young and small: all kept");
        assert_eq!(purge_through(&feed, 310, 150, 1_000), Some(10), "older than 150");
        assert_eq!(purge_through(&feed, 310, 1_000, 80), Some(10), "the oldest go until the rest fit");
        assert_eq!(purge_through(&feed, 310, 1_000, 39), Some(30), "nothing fits");
        assert_eq!(purge_through(&feed, 310, 100, 80), Some(20), "whichever rule purges further");
        assert_eq!(purge_through(&feed, 310, 150, 39), Some(30), "whichever rule purges further");
        assert_eq!(purge_through(&[], 310, 0, 0), None);
    }
}
