//! Naming the node behind a change: the rules that turn a row version's
//! node id, or the replication origin a change was applied under, into
//! what the conflict log, `edgesync.node_name` and
//! `edgesync.describe_version` show (a node name such as `store_042`,
//! never an internal origin name such as `pg_16636`); and the wall-clock
//! time of an HLC reading.
//!
//! Names come from the node directory (`edgesync.node_directory`), which
//! every node fills with itself and what it learns from the cloud at
//! `hello`. What the directory does not know reads `node <id>`.

use super::conflict::version::{millis_of, Version};
use super::node::{is_node_name, OBJECT_PREFIX};

/// The label of a node id: its name in the directory (`known`), `initial`
/// for id 0 (only the zero version carries it: rows from before conflict
/// handling), else `node <id>`.
pub fn node_label(node_id: i32, known: Option<&str>) -> String {
    match known {
        Some(name) => name.to_string(),
        None if node_id == 0 => "initial".to_string(),
        None => format!("node {node_id}"),
    }
}

/// Who wrote a row version: `initial` for the zero version (a row from
/// before conflict handling, the same on every node), else its node's label.
pub fn writer_label(version: Version, known: Option<&str>) -> String {
    if version == Version::ZERO {
        return "initial".to_string();
    }
    node_label(version.node, known)
}

/// Where a change was applied from, as a replication origin's name says.
#[derive(Debug, PartialEq, Eq)]
pub enum Origin<'a> {
    /// An origin edgesync named after a node (`edgesync_<node>`).
    Node(&'a str),
    /// A native subscription's origin (`pg_<subscription oid>`).
    Subscription(u32),
    /// An origin some other tool created: its own name is all there is.
    Other(&'a str),
}

/// Read a replication origin's name.
pub fn classify_origin(name: &str) -> Origin<'_> {
    if let Some(node) = name.strip_prefix(OBJECT_PREFIX).filter(|n| is_node_name(n)) {
        return Origin::Node(node);
    }
    match name.strip_prefix("pg_").filter(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit())).map(str::parse) {
        Some(Ok(oid)) => Origin::Subscription(oid),
        _ => Origin::Other(name),
    }
}

/// The node a transaction of a batch came from: the batch's sender, unless
/// the transaction names the node it came from (a pulled one: the cloud's
/// feed tags each with it). A native subscription's origin on the sender
/// (`pg_<oid>`) names no node this node could know: None.
pub fn source_of_transaction(origin: Option<&str>, sender: &str) -> Option<String> {
    match origin.map(classify_origin) {
        None => Some(sender.to_string()),
        Some(Origin::Node(node)) => Some(node.to_string()),
        Some(Origin::Subscription(_)) => None,
        Some(Origin::Other(name)) if is_node_name(name) => Some(name.to_string()),
        Some(Origin::Other(_)) => None,
    }
}

/// `conflict_log.remote_origin`: the node that wrote the remote row
/// version (its label, given the directory's name for it), or, for a
/// change that carried no version (a table without a conflict policy, a
/// native delete), where the change came from; `unknown` when nothing says.
pub fn remote_origin_label(remote: Option<(Version, Option<&str>)>, came_from: Option<&str>) -> String {
    match (remote, came_from) {
        (Some((version, known)), _) => writer_label(version, known),
        (None, Some(source)) => source.to_string(),
        (None, None) => "unknown".to_string(),
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The wall-clock time of an HLC reading as a PostgreSQL timestamptz
/// (microseconds since 2000-01-01 UTC); None for 0 (the zero version:
/// written before conflict handling, at no known time) or less.
pub fn timestamp_of(hlc: i64) -> Option<i64> {
    if hlc <= 0 {
        return None;
    }
    // at most MAX_MILLIS (the year 6429) * 1000: far inside an i64
    Some(millis_of(hlc) * 1_000 - POSTGRES_EPOCH_MICROS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::conflict::version::{hlc_from_millis, MAX_MILLIS};

    #[test]
    fn a_node_reads_as_its_name_else_as_its_id() {
        assert_eq!(node_label(42, Some("store_042")), "store_042");
        assert_eq!(node_label(42, None), "node 42");
        assert_eq!(node_label(-7, None), "node -7");
        assert_eq!(node_label(0, None), "initial", "only the zero version carries id 0");
    }

    #[test]
    fn the_zero_version_reads_initial_whatever_the_directory_says() {
        assert_eq!(writer_label(Version::ZERO, Some("n")), "initial");
        assert_eq!(writer_label(Version::new(5, 3), Some("edge3")), "edge3");
        assert_eq!(writer_label(Version::new(5, 3), None), "node 3");
        assert_eq!(writer_label(Version::new(0, 3), None), "node 3", "a version is zero only with node 0 too");
    }

    #[test]
    fn origins_are_told_apart_by_their_names() {
        assert_eq!(classify_origin("edgesync_store_042"), Origin::Node("store_042"));
        assert_eq!(classify_origin("pg_16636"), Origin::Subscription(16636));
        assert_eq!(classify_origin("pg_"), Origin::Other("pg_"));
        assert_eq!(classify_origin("pg_12a"), Origin::Other("pg_12a"));
        assert_eq!(classify_origin("pg_99999999999"), Origin::Other("pg_99999999999"), "not an oid");
        assert_eq!(classify_origin("edgesync_"), Origin::Other("edgesync_"));
        assert_eq!(classify_origin("edgesync_a-b"), Origin::Other("edgesync_a-b"));
        assert_eq!(classify_origin("pgl_sub"), Origin::Other("pgl_sub"));
    }

    #[test]
    fn a_transaction_comes_from_the_sender_unless_it_names_its_node() {
        assert_eq!(source_of_transaction(None, "edge1").as_deref(), Some("edge1"), "a pushed transaction");
        assert_eq!(source_of_transaction(Some("edge2"), "cloud").as_deref(), Some("edge2"), "pulled: the feed's tag");
        assert_eq!(source_of_transaction(Some("edgesync_edge2"), "cloud").as_deref(), Some("edge2"));
        assert_eq!(source_of_transaction(Some("pg_16636"), "cloud"), None, "a native subscription on the cloud");
        assert_eq!(source_of_transaction(Some("not a name"), "cloud"), None);
    }

    #[test]
    fn the_remote_origin_is_the_writer_of_the_remote_version_first() {
        let v = Version::new(hlc_from_millis(1_000), 2);
        assert_eq!(remote_origin_label(Some((v, Some("edge2"))), Some("cloud")), "edge2", "relayed: the writer, not the relay");
        assert_eq!(remote_origin_label(Some((v, None)), Some("cloud")), "node 2", "an id not yet learned");
        assert_eq!(remote_origin_label(Some((Version::ZERO, None)), Some("cloud")), "initial");
        assert_eq!(remote_origin_label(None, Some("edge1")), "edge1", "no version: where it came from");
        assert_eq!(remote_origin_label(None, Some("subscription sub_a")), "subscription sub_a");
        assert_eq!(remote_origin_label(None, None), "unknown");
    }

    #[test]
    fn an_hlc_reading_is_a_timestamp_to_the_millisecond() {
        // 2023-11-14 22:13:20.123 UTC, counter 5: the counter is not part of the time
        let hlc = hlc_from_millis(1_700_000_000_123) + 5;
        assert_eq!(timestamp_of(hlc), Some(1_700_000_000_123_000 - POSTGRES_EPOCH_MICROS));
        assert_eq!(timestamp_of(hlc_from_millis(946_684_800_000)), Some(0), "PostgreSQL's epoch");
        assert_eq!(timestamp_of(1), Some(-POSTGRES_EPOCH_MICROS), "1970, counter 1");
        assert_eq!(timestamp_of(0), None, "the zero version has no time");
        assert_eq!(timestamp_of(-1), None);
        assert_eq!(timestamp_of(i64::MAX), Some(MAX_MILLIS * 1_000 - POSTGRES_EPOCH_MICROS), "the top of the range, no overflow");
    }
}
