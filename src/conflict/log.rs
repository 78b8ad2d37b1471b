//! The conflict log: one row of `edgesync.conflict_log` per conflict, as
//! the trigger settled it (or as edgesync's apply found it), written with
//! the extension owner's rights whoever applies the change. Each side
//! names the node that wrote its version, through the node directory
//! (`model::directory` has the rules).

use std::cell::RefCell;

use pgrx::prelude::*;
use pgrx::JsonB;

use super::error::{fail, ConflictError};
use super::stamp::stamp_array;
use crate::directory::name_of;
use crate::model::conflict::lww::{ConflictType, Resolution};
use crate::model::conflict::version::RowStamp;
use crate::model::directory::{classify_origin, remote_origin_label, writer_label, Origin};
use crate::privilege::as_extension_owner;

/// One conflict_log row.
pub struct ConflictRecord<'r> {
    pub table_schema: &'r str,
    pub table_name: &'r str,
    pub conflict: ConflictType,
    pub resolution: Resolution,
    pub key: JsonB,
    pub local_row: Option<JsonB>,
    pub remote_row: Option<JsonB>,
    pub kept_row: Option<JsonB>,
    pub local_version: Option<RowStamp>,
    pub remote_version: Option<RowStamp>,
    pub note: Option<String>,
}

thread_local! {
    /// The node the source transaction edgesync's apply is applying came
    /// from (`Some(None)`: a node it cannot name); None outside its apply,
    /// where the replication origin says where a change came from.
    static APPLYING_FROM: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// edgesync's apply says which node the changes it applies next came from
/// (None: from no node it can name); `done_applying` when it is over.
pub(crate) fn applying_from(node: Option<String>) {
    APPLYING_FROM.with(|a| *a.borrow_mut() = Some(node));
}

pub(crate) fn done_applying() {
    APPLYING_FROM.with(|a| *a.borrow_mut() = None);
}

/// The name of the replication origin this backend applies for, if any.
fn session_origin_name() -> Option<String> {
    // SAFETY: `replorigin_session_origin` is this backend's own global;
    // `replorigin_by_oid` with missing_ok only reads the catalog and leaves
    // `name` null or pointing at a palloc'd NUL-terminated string.
    unsafe {
        let origin = pg_sys::replorigin_session_origin;
        let mut name: *mut std::ffi::c_char = std::ptr::null_mut();
        if origin != 0 && pg_sys::replorigin_by_oid(origin, true, &mut name) && !name.is_null() {
            Some(std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned())
        } else {
            None
        }
    }
}

/// The name of the subscription whose oid a native origin carries.
fn subscription_name(oid: u32) -> Result<Option<String>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let rows = client.select("SELECT subname::text FROM pg_catalog.pg_subscription WHERE oid = $1", Some(1), &[pg_sys::Oid::from(oid).into()])?;
        match rows.into_iter().next() {
            Some(row) => row.get::<String>(1),
            None => Ok(None),
        }
    })
}

/// Where the change being applied came from: the node edgesync's apply
/// names, else what the replication origin says (a native subscription
/// by its name: its origin's `pg_<oid>` means nothing to a reader).
fn came_from() -> Result<Option<String>, pgrx::spi::Error> {
    if let Some(node) = APPLYING_FROM.with(|a| a.borrow().clone()) {
        return Ok(node);
    }
    let Some(origin) = session_origin_name() else { return Ok(None) };
    Ok(match classify_origin(&origin) {
        Origin::Node(node) => Some(node.to_string()),
        Origin::Subscription(oid) => subscription_name(oid)?.map(|name| format!("subscription {name}")),
        Origin::Other(name) => Some(name.to_string()),
    })
}

/// `local_origin` and `remote_origin`: the nodes that wrote each side's
/// version, by name (read as the extension's owner, as the log is written).
fn origins(local: Option<RowStamp>, remote: Option<RowStamp>) -> Result<(Option<String>, String), pgrx::spi::Error> {
    let local_origin = local.map(|s| writer_label(s.version, name_of(s.version.node).as_deref()));
    let remote_named = remote.map(|s| (s.version, name_of(s.version.node)));
    let from = if remote_named.is_some() { None } else { came_from()? };
    let remote_origin = remote_origin_label(remote_named.as_ref().map(|(v, n)| (*v, n.as_deref())), from.as_deref());
    Ok((local_origin, remote_origin))
}

/// Write `c` to `edgesync.conflict_log` (resolved, or pending for a DBA).
pub(crate) fn log_conflict(c: ConflictRecord<'_>) -> Result<(), ConflictError> {
    let status = if c.resolution == Resolution::Pending { "pending" } else { "resolved" };
    as_extension_owner(|| {
        let (local_origin, remote_origin) = origins(c.local_version, c.remote_version)?;
        Spi::run_with_args(
            "INSERT INTO edgesync.conflict_log (schema_name, table_name, conflict_type, resolution, key, local_row, remote_row,
                                                kept_row, local_version, remote_version, local_origin, remote_origin, status, note)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                c.table_schema.into(),
                c.table_name.into(),
                c.conflict.as_str().into(),
                c.resolution.as_str().into(),
                c.key.into(),
                c.local_row.into(),
                c.remote_row.into(),
                c.kept_row.into(),
                c.local_version.map(stamp_array).into(),
                c.remote_version.map(stamp_array).into(),
                local_origin.into(),
                remote_origin.into(),
                status.into(),
                c.note.into(),
            ],
        )
    })
    .map_err(fail)
}
