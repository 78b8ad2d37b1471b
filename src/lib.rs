//! edgesync: keeps edge PostgreSQL nodes and a cloud node in sync.
//!
//! Vocabulary (see README.md, "Concepts"), used the same way in every file:
//! - node: one PostgreSQL database running edgesync.
//! - peer: a node this node talks to (an edge has one: the cloud).
//! - change: one row insert, update or delete, with the row's version and origin.
//! - version: a hybrid-logical-clock reading plus a node id, stamped on a row
//!   by the node that last wrote it; what last-writer-wins compares.
//! - batch: a run of whole source transactions, encoded and compressed.
//! - conflict / resolution: a remote change meeting a concurrent local one, and
//!   what was done about it (`edgesync.conflict_log`).
//! - check: one row of `edgesync.health`, a metric judged ok / warning / critical.
//! - finding: one row of `edgesync.diagnose()`, a setting or object to fix, with the SQL that fixes it.
//! - threshold: the warning or critical level of a check, from the `edgesync.lag_*` settings.
//!
//! Layout: one folder per subsystem, `health/`, `conflict/` and `sync/`
//! (capture → pack → transport → apply, and the workers), each a thin layer
//! over the pure logic of the same name in `model/` (no pgrx, plain tests);
//! `compat` fences the differences between PostgreSQL versions; hand-written
//! SQL lives in `sql/`.

use pgrx::prelude::*;

pub mod model;

mod compat;
mod conflict;
mod directory;
mod error;
mod guc;
mod health;
mod lifecycle;
mod node;
mod plan_cache;
mod privilege;
mod quote;
mod sync;

::pgrx::pg_module_magic!();

/// Called when the library is loaded (at server start when it is in
/// `shared_preload_libraries`, else on first use in a session).
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::define();
    conflict::clock::init_shared_memory();
    // SAFETY: a global PostgreSQL sets while it loads the preload libraries; read in the
    // process that loads us, on its only thread.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        sync::status::init_shared_memory();
        sync::edge_activity::init_shared_memory();
    }
    sync::launcher::register_launcher();
}

// Roles, the node table and conflict bookkeeping: first, needing nothing from Rust.
extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
// Sync enrolment, peers, the receiving side and the peers view: after the Rust functions they call.
extension_sql_file!(
    "../sql/forwarder.sql",
    name = "forwarder",
    requires = ["schema", sync::apply::_apply_batch, sync::apply::_batch_format, sync::status::_peer_status, sync::status::_peer_pull_status, sync::peers::sync_now,
                sync::status::_peer_blocked, sync::peers::_request_round_at_commit,
                sync::transport::_conninfo_error, sync::peers::_wake_launcher_at_commit, privilege::_require_superuser_for_conninfo,
                privilege::_require_table_owner, privilege::_api_step, sync::edges::_require_edge_login, node::is_node_name, node::slot_name, node::origin_name,
                sync::edge_activity::_note_edge_hello, sync::edge_activity::_forget_edge_activity_at_commit]
);
// Node names: the directory, describe_version and the conflicts view.
extension_sql_file!(
    "../sql/directory.sql",
    name = "directory",
    requires = ["forwarder", directory::node_name, directory::hlc_time, node::row_version, node::make_row_version]
);
// The cloud's change feed and pull_batch.
extension_sql_file!("../sql/feed.sql", name = "feed", requires = ["forwarder", sync::feed::_pull_batch]);
// The cloud's view of its edges: registrations, activity, feed positions.
extension_sql_file!("../sql/edges.sql", name = "edges", requires = ["feed", sync::edge_activity::_edge_activity]);
// What DROP EXTENSION and DROP TABLE must not leave behind.
extension_sql_file!("../sql/lifecycle.sql", name = "lifecycle", requires = ["forwarder", "feed"]);
// The statistics views and every grant, last: they use the Rust functions.
extension_sql_file!("../sql/health.sql", name = "health_views", finalize);

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'edgesync'", "wal_level = logical", "track_commit_timestamp = on"]
    }
}
