//! Names of nodes and of the objects edgesync creates for them: one rule,
//! used by the Rust code and, through `edgesync._require_node_name`, by the
//! SQL functions.

/// The longest node name: `edgesync_` plus it fits PostgreSQL's 63-byte names.
pub const MAX_NODE_NAME: usize = 48;

/// Replication slots and origins edgesync creates are named this plus a node name.
pub const OBJECT_PREFIX: &str = "edgesync_";

/// A node (or peer, or sender) name: 1 to 48 ASCII letters, digits or underscores.
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NODE_NAME && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The replication origin a node's changes are applied under.
pub fn origin_name(node: &str) -> String {
    format!("{OBJECT_PREFIX}{node}")
}

/// The logical replication slot that feeds a peer (PostgreSQL slot names are lower case).
pub fn slot_name(peer: &str) -> String {
    format!("{OBJECT_PREFIX}{}", peer.to_ascii_lowercase())
}

/// What is wrong with a name that is not a node name, for an error message.
pub fn name_rule(what: &str, name: &str) -> String {
    format!("edgesync: {what} name {name:?} must be 1 to {MAX_NODE_NAME} letters, digits or underscores")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        for ok in ["a", "store_042", "Cloud", &"x".repeat(48)] {
            assert!(is_node_name(ok), "{ok}");
        }
        for bad in ["", "the cloud", "é", "a-b", "a;b", &"x".repeat(49)] {
            assert!(!is_node_name(bad), "{bad}");
        }
    }

    #[test]
    fn object_names() {
        assert_eq!(origin_name("Store_1"), "edgesync_Store_1");
        assert_eq!(slot_name("Store_1"), "edgesync_store_1");
        assert!(slot_name(&"X".repeat(MAX_NODE_NAME)).len() <= 63);
    }

    #[test]
    fn the_rule_is_told_with_the_name() {
        assert_eq!(name_rule("peer", "a-b"), "edgesync: peer name \"a-b\" must be 1 to 48 letters, digits or underscores");
    }
}
