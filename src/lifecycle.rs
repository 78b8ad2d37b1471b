//! The extension's own lifecycle: what `DROP EXTENSION edgesync` must not
//! leave behind. A peer's replication slot outlives the extension (slots
//! are not database objects) and would hold WAL until the disk fills, so
//! dropping the extension while peers exist is refused with the way out.
//! The `edgesync_up` and `edgesync_down` publications are not extension members either: they are
//! dropped with the extension (transactionally: a failed drop keeps it).
//! (Dropped tables are forgotten by the `sql_drop` event trigger in
//! `sql/lifecycle.sql`.)
//!
//! The guard is an event trigger on `ddl_command_start`: only there is the
//! statement's parse tree at hand, which names the extensions being
//! dropped. pgrx has no event-trigger functions, so this one is declared
//! by hand (`sql/lifecycle.sql`) with the version-1 call convention.

use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::{PgList, PgSqlErrorCode};

use crate::error::{raise, raise_with_hint};

/// The version-1 call convention record PostgreSQL looks up for
/// `edgesync_guard_drop_extension` (what `PG_FUNCTION_INFO_V1` declares in C).
#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_edgesync_guard_drop_extension() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// The event trigger function behind `edgesync_guard_drop_extension`.
///
/// # Safety
/// Called by PostgreSQL's fmgr with a valid `fcinfo`.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn edgesync_guard_drop_extension(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: fmgr passes a valid fcinfo; its context is an
    // EventTriggerData when called as an event trigger, which
    // `drops_edgesync` checks by node tag before reading it.
    if unsafe { drops_edgesync((*fcinfo).context) } {
        refuse_while_peers_hold_slots();
        Spi::run("DROP PUBLICATION IF EXISTS edgesync_up, edgesync_down").unwrap_or_else(|e| {
            raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: dropping publications edgesync_up and edgesync_down failed: {e}"))
        });
    }
    pg_sys::Datum::from(0)
}

/// Is `context` the event-trigger data of a `DROP EXTENSION` naming edgesync?
///
/// # Safety
/// `context` is null or points to a PostgreSQL node.
unsafe fn drops_edgesync(context: *mut pg_sys::Node) -> bool {
    // SAFETY: `context` is null or a node (the caller's contract); a node
    // starts with its tag.
    if context.is_null() || unsafe { (*context).type_ } != pg_sys::NodeTag::T_EventTriggerData {
        raise(PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED, "edgesync: not called as an event trigger");
    }
    // SAFETY: tagged T_EventTriggerData just above.
    let tree = unsafe { (*(context as *mut pg_sys::EventTriggerData)).parsetree };
    // SAFETY: the parse tree of the statement being run, a node or null.
    if tree.is_null() || unsafe { (*tree).type_ } != pg_sys::NodeTag::T_DropStmt {
        return false;
    }
    let stmt = tree as *mut pg_sys::DropStmt;
    // SAFETY: tagged T_DropStmt just above.
    if unsafe { (*stmt).removeType } != pg_sys::ObjectType::OBJECT_EXTENSION {
        return false;
    }
    // SAFETY: a DropStmt's `objects` is a List of nodes; for extensions
    // each is a String node (the grammar's `name_list`).
    let objects = unsafe { PgList::<pg_sys::Node>::from_pg((*stmt).objects) };
    let named = objects.iter_ptr().any(|name| {
        // SAFETY: a node of the list above; only read as a String node
        // when tagged so, whose `sval` is a NUL-terminated C string.
        unsafe { (*name).type_ == pg_sys::NodeTag::T_String && CStr::from_ptr((*(name as *mut pg_sys::String)).sval).to_bytes() == b"edgesync" }
    });
    named
}

/// Raise while a peer's replication slot exists in this database.
fn refuse_while_peers_hold_slots() {
    let slots = Spi::get_one::<String>(
        "SELECT string_agg(s.slot_name::text, ', ' ORDER BY s.slot_name)
           FROM pg_catalog.pg_replication_slots s JOIN edgesync.peer p ON p.slot_name = s.slot_name",
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading the peers' slots failed: {e}")));
    if let Some(slots) = slots {
        raise_with_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("edgesync: the peers' replication slots ({slots}) would outlive the extension and hold WAL"),
            "Drop the peers first: SELECT edgesync.drop_peer(name) FROM edgesync.peer; then DROP EXTENSION edgesync.",
        );
    }
    refuse_while_the_feed_holds_its_slot();
}

/// Raise while edges are registered, or the feed's slot is still there
/// (the feed worker drops it once the last edge is gone).
fn refuse_while_the_feed_holds_its_slot() {
    let feed = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name = 'edgesync_feed' AND database = current_database())
             OR EXISTS (SELECT FROM edgesync.edge)",
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading the feed's slot failed: {e}")));
    if feed == Some(true) {
        raise_with_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            "edgesync: the change feed's replication slot (edgesync_feed) would outlive the extension and hold WAL".to_string(),
            "Drop the edges first: SELECT edgesync.drop_edge(name) FROM edgesync.edge; the feed worker then drops its slot (edgesync.replication_slots shows when), then DROP EXTENSION edgesync.",
        );
    }
}
