//! This database's identity as an edgesync node.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::conflict::clock;
use crate::error::{raise, raise_with_hint};
use crate::model::conflict::lww::Policy;
use crate::model::conflict::version::RowStamp;
use crate::model::node;
use crate::privilege::as_extension_owner;

fn invalid(message: String) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
}

/// An SPI failure, as an ERROR that says what was being done.
fn spi_failed(what: &str, e: pgrx::spi::Error) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: {what} failed: {e}"))
}

/// Name this node (and give it the id stamped into its row versions).
/// Returns the node id. Calling it again with the same name is a no-op; a
/// node, once named, keeps its name and id. `name` NULL picks one.
#[pg_extern(volatile)]
fn create_node(name: Option<&str>, node_id: default!(Option<i32>, "NULL")) -> i32 {
    if let Some(id) = node_id.filter(|&id| id <= 0) {
        invalid(format!("edgesync: node_id must be positive, not {id}"));
    }
    // edgesync_admin may name the node; edgesync.node is written as the extension's owner
    as_extension_owner(|| {
        if let Some((id, current)) = existing_node() {
            return keep_existing_node(id, &current, name, node_id);
        }
        let name = name.map_or_else(default_node_name, str::to_string);
        if !node::is_node_name(&name) {
            invalid(format!("edgesync: node name {name:?} must be 1 to {} letters, digits or underscores", node::MAX_NODE_NAME));
        }
        let id = insert_node(node_id, &name);
        enter_in_directory(id, &name);
        clock::forget_node_id();
        id
    })
}

/// The node this database already is (id, name), if it was named.
fn existing_node() -> Option<(i32, String)> {
    Spi::connect(|client| {
        let table = client.select("SELECT node_id, name FROM edgesync.node", Some(1), &[])?;
        let row = table.into_iter().next().map(|r| Ok::<_, pgrx::spi::Error>((r.get::<i32>(1)?, r.get::<String>(2)?)));
        row.transpose()
    })
    .unwrap_or_else(|e| spi_failed("reading this node", e))
    .and_then(|(id, name)| id.zip(name))
}

/// A repeated call that asks for nothing new returns the id; asking for
/// another name or id is refused.
fn keep_existing_node(id: i32, current: &str, name: Option<&str>, node_id: Option<i32>) -> i32 {
    let same_name = name.is_none_or(|n| n == current);
    let same_id = node_id.is_none_or(|n| n == id);
    if same_name && same_id {
        return id;
    }
    raise_with_hint(
        PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
        format!("edgesync: this database is already node {current:?} (id {id})"),
        "A node keeps its name and id: rows already carry them.",
    )
}

/// A name unique to this cluster and database, for `create_node(NULL)`.
fn default_node_name() -> String {
    Spi::get_one::<String>("SELECT 'node_' || substr(md5(system_identifier::text || current_database()), 1, 8) FROM pg_catalog.pg_control_system()")
        .unwrap_or_else(|e| spi_failed("picking a node name", e))
        .unwrap_or_else(|| "node".to_string())
}

/// Insert the node row; without `node_id`, a random positive one.
fn insert_node(node_id: Option<i32>, name: &str) -> i32 {
    Spi::get_one_with_args::<i32>(
        "INSERT INTO edgesync.node (node_id, name)
         VALUES (coalesce($1, 1 + floor(random() * 2147483646)::int), $2) RETURNING node_id",
        &[node_id.into(), name.into()],
    )
    .unwrap_or_else(|e| spi_failed("creating the node", e))
    .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "edgesync: creating the node returned no node id"))
}

/// This node is in its own directory, under its own name whatever was
/// learned for its id before (if the directory is there yet: the update
/// to 0.4.0 enters the node then).
fn enter_in_directory(id: i32, name: &str) {
    Spi::connect_mut(|client| {
        if crate::directory::has_directory(client)? {
            client.update(
                "INSERT INTO edgesync.node_directory AS d (node_id, name) VALUES ($1, $2)
                 ON CONFLICT ON CONSTRAINT node_directory_pkey DO UPDATE SET name = EXCLUDED.name, learned_at = EXCLUDED.learned_at",
                None,
                &[id.into(), name.into()],
            )?;
        }
        Ok(())
    })
    .unwrap_or_else(|e| spi_failed("entering this node in edgesync.node_directory", e))
}

/// This node's id, as stamped into row versions.
#[pg_extern(stable)]
fn node_id() -> i32 {
    clock::node_id()
}

/// A row version (`edgesync_version`, 24 bytes) as
/// `{hlc, node_id, prev_hlc, prev_node_id}`.
#[pg_extern(immutable, strict, parallel_safe)]
fn row_version(version: &[u8]) -> Vec<i64> {
    match RowStamp::from_bytes(version) {
        Ok(s) => s.to_array().to_vec(),
        Err(e) => invalid(format!("edgesync: {e}")),
    }
}

/// The 24-byte row version for `{hlc, node_id, prev_hlc, prev_node_id}`.
#[pg_extern(immutable, strict, parallel_safe)]
fn make_row_version(parts: Vec<Option<i64>>) -> Vec<u8> {
    match RowStamp::from_array(&parts) {
        Ok(s) => s.to_bytes().to_vec(),
        Err(e) => invalid(format!("edgesync: {e}")),
    }
}

/// The current reading of this node's hybrid logical clock (not advanced).
#[pg_extern(volatile)]
fn clock_now() -> i64 {
    clock::peek()
}

/// Raise a clear error unless edgesync is in shared_preload_libraries.
#[pg_extern(volatile, name = "_require_shared_clock")]
fn require_shared_clock() {
    clock::require_shared_clock();
}

/// Check a conflict policy name; returns it, or raises listing the valid ones.
#[pg_extern(immutable, name = "_check_policy")]
fn check_policy(policy: &str) -> String {
    match policy.parse::<Policy>() {
        Ok(p) => p.as_str().to_string(),
        Err(e) => invalid(format!("edgesync: {e}")),
    }
}

/// Whether `name` may name a node (and so a peer or a sender): the one rule,
/// for the SQL functions that check names.
#[pg_extern(immutable, strict, parallel_safe, name = "_is_node_name")]
fn is_node_name(name: &str) -> bool {
    node::is_node_name(name)
}

/// The replication slot that feeds peer `peer`.
#[pg_extern(immutable, strict, parallel_safe, name = "_slot_name")]
fn slot_name(peer: &str) -> String {
    node::slot_name(peer)
}

/// The replication origin that node `node`'s changes are applied under.
#[pg_extern(immutable, strict, parallel_safe, name = "_origin_name")]
fn origin_name(node: &str) -> String {
    node::origin_name(node)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn row_versions_are_24_bytes_and_readable() {
        let (len, parts) = Spi::get_two::<i32, Vec<i64>>(
            "SELECT octet_length(edgesync.make_row_version('{5,6,7,8}')), edgesync.row_version(edgesync.make_row_version('{5,6,7,8}'))",
        )
        .unwrap();
        assert_eq!(len, Some(24));
        assert_eq!(parts, Some(vec![5, 6, 7, 8]));
    }

    #[pg_test(error = "edgesync: edgesync_version must be 24 bytes, not 2")]
    fn a_malformed_row_version_is_refused() {
        Spi::run("SELECT edgesync.row_version('\\x0102'::bytea)").unwrap();
    }

    #[pg_test(error = "edgesync: this database is already node \"test_node\" (id 7)")]
    fn a_node_keeps_its_name() {
        Spi::run("SELECT edgesync.create_node('test_node', 7)").unwrap();
        assert_eq!(Spi::get_one::<i32>("SELECT edgesync.create_node('test_node')").unwrap(), Some(7));
        Spi::run("SELECT edgesync.create_node('other')").unwrap();
    }

    #[pg_test(error = "edgesync: node name \"bad name\" must be 1 to 48 letters, digits or underscores")]
    fn node_names_are_checked() {
        Spi::run("SELECT edgesync.create_node('bad name')").unwrap();
    }
}
