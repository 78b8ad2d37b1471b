//! The conflict log: one row of `edgesync.conflict_log` per conflict, as
//! the trigger settled it (or as edgesync's apply found it), written with
//! the extension owner's rights whoever applies the change.

use pgrx::prelude::*;
use pgrx::JsonB;

use super::clock;
use super::error::{fail, ConflictError};
use super::stamp::stamp_array;
use crate::model::conflict::lww::{ConflictType, Resolution};
use crate::model::conflict::version::{RowStamp, Version};
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
    pub remote_origin: String,
    pub note: Option<String>,
}

/// The name of the replication origin this backend applies for (or
/// "origin N" when it has no name).
pub(crate) fn origin_name() -> String {
    // SAFETY: `replorigin_session_origin` is this backend's own global;
    // `replorigin_by_oid` with missing_ok only reads the catalog and leaves
    // `name` null or pointing at a palloc'd NUL-terminated string.
    unsafe {
        let origin = pg_sys::replorigin_session_origin;
        let mut name: *mut std::ffi::c_char = std::ptr::null_mut();
        if pg_sys::replorigin_by_oid(origin, true, &mut name) && !name.is_null() {
            std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned()
        } else {
            format!("origin {origin}")
        }
    }
}

/// Who wrote the local row, as `conflict_log.local_origin` says it.
fn local_origin(stamp: RowStamp) -> String {
    if stamp.version == Version::ZERO {
        "initial".to_string()
    } else if stamp.version.node == clock::node_id() {
        "local".to_string()
    } else {
        format!("node {}", stamp.version.node)
    }
}

/// Write `c` to `edgesync.conflict_log` (resolved, or pending for a DBA).
pub(crate) fn log_conflict(c: ConflictRecord<'_>) -> Result<(), ConflictError> {
    let status = if c.resolution == Resolution::Pending { "pending" } else { "resolved" };
    let local_origin = c.local_version.map(local_origin);
    as_extension_owner(|| {
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
                c.remote_origin.into(),
                status.into(),
                c.note.into(),
            ],
        )
    })
    .map_err(fail)
}
