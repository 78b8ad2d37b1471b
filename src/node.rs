//! This database's identity as an edgesync node.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::clock;
use crate::model::lww::Policy;
use crate::model::version::RowStamp;

fn invalid(message: String) -> ! {
    ereport!(PgLogLevel::ERROR, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message);
    unreachable!()
}

/// Name this node (and give it the id stamped into its row versions).
/// Returns the node id. Calling it again with the same name is a no-op; a
/// node, once named, keeps its name and id. `name` NULL picks one.
#[pg_extern(volatile)]
fn create_node(name: Option<&str>, node_id: default!(Option<i32>, "NULL")) -> i32 {
    if let Some(id) = node_id {
        if id <= 0 {
            invalid(format!("edgesync: node_id must be positive, not {id}"));
        }
    }
    let existing = Spi::get_two::<i32, String>("SELECT node_id, name FROM edgesync.node").unwrap_or((None, None));
    if let (Some(id), Some(current)) = existing {
        let same_name = name.is_none_or(|n| n == current);
        let same_id = node_id.is_none_or(|n| n == id);
        if same_name && same_id {
            return id;
        }
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("edgesync: this database is already node {current:?} (id {id})"),
            "A node keeps its name and id: rows already carry them."
        );
    }
    let name = match name {
        Some(n) => n.to_string(),
        None => Spi::get_one::<String>("SELECT 'node_' || substr(md5(system_identifier::text || current_database()), 1, 8) FROM pg_catalog.pg_control_system()")
            .ok()
            .flatten()
            .unwrap_or_else(|| "node".to_string()),
    };
    if name.is_empty() || name.len() > 48 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        invalid(format!("edgesync: node name {name:?} must be 1 to 48 letters, digits or underscores"));
    }
    let id = Spi::get_one_with_args::<i32>(
        "INSERT INTO edgesync.node (node_id, name)
         VALUES (coalesce($1, 1 + floor(random() * 2147483646)::int), $2) RETURNING node_id",
        &[node_id.into(), name.as_str().into()],
    )
    .unwrap_or_else(|e| error!("edgesync: creating the node failed: {e}"))
    .expect("INSERT RETURNING gives a row");
    clock::forget_node_id();
    id
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
