//! The row version every table under conflict handling carries in
//! `edgesync_version`: finding that column, reading the stamp of one of the
//! trigger's rows, and returning a row with a new stamp.

use std::cell::Cell;

use pgrx::prelude::*;
use pgrx::PgTupleDesc;

use super::error::{fail, ConflictError};
use super::row::{slot_of, tuple_of, Row, Tuple};
use crate::model::conflict::version::RowStamp;

/// The column every table under conflict handling carries: a 24-byte
/// `bytea` (see `model::version`).
pub const VERSION_COLUMN: &str = "edgesync_version";

thread_local! {
    /// Where `edgesync_version` sat in the table seen last (relid, attnum);
    /// checked against the tuple descriptor on every use, so a re-added
    /// column is found again.
    static VERSION_ATTNUM: Cell<(pg_sys::Oid, i16)> = const { Cell::new((pg_sys::InvalidOid, 0)) };
}

/// Is attribute `attnum` of `tupdesc` the (not dropped) version column?
/// Compared as bytes: a column name need not be UTF-8 in every database encoding.
fn is_version_column(tupdesc: &PgTupleDesc<'_>, attnum: i16) -> bool {
    attnum > 0
        && tupdesc.get(attnum as usize - 1).is_some_and(|a| {
            !a.attisdropped && a.attname.data.iter().map(|&c| c as u8).take_while(|&b| b != 0).eq(VERSION_COLUMN.bytes())
        })
}

/// The attribute number of `edgesync_version` in the trigger's table.
fn version_attnum(trigger: &PgTrigger<'_>) -> Result<i16, ConflictError> {
    let rel = trigger.trigger_data().tg_relation;
    // SAFETY: `tg_relation` is the open relation the trigger fires on,
    // valid for the call, and `rd_att` its tuple descriptor.
    let (relid, tupdesc) = unsafe { ((*rel).rd_id, PgTupleDesc::from_pg_unchecked((*rel).rd_att)) };
    let (cached_rel, cached_attnum) = VERSION_ATTNUM.with(|c| c.get());
    if cached_rel == relid && is_version_column(&tupdesc, cached_attnum) {
        return Ok(cached_attnum);
    }
    // SAFETY: a syscache lookup by oid and a NUL-terminated name, in a
    // backend inside a transaction (a trigger is running).
    let attnum = unsafe { pg_sys::get_attnum(relid, c"edgesync_version".as_ptr()) };
    if !is_version_column(&tupdesc, attnum) {
        return Err(fail(format!("{VERSION_COLUMN} is missing: re-run edgesync.set_conflict_policy")));
    }
    VERSION_ATTNUM.with(|c| c.set((relid, attnum)));
    Ok(attnum)
}

/// The stamp of the trigger's tuple `which`, read from its slot without
/// copying the tuple.
pub(super) fn slot_stamp(trigger: &PgTrigger<'_>, which: Tuple) -> Result<RowStamp, ConflictError> {
    let slot = slot_of(trigger, which)?;
    // SAFETY: `slot` is one of the trigger's own slots (not null), holding
    // a row of the trigger's table.
    unsafe { stamp_in_slot(trigger, slot) }
}

/// Does the trigger's tuple `which` lack a version (NULL)? The column has
/// no default: a remote row from a table without it arrives with none.
pub(super) fn version_missing(trigger: &PgTrigger<'_>, which: Tuple) -> Result<bool, ConflictError> {
    let attnum = version_attnum(trigger)?;
    let slot = slot_of(trigger, which)?;
    // SAFETY: `slot` is one of the trigger's own slots (not null), holding
    // a row of the trigger's table, and `attnum` a live attribute of it.
    Ok(unsafe { pg_sys::slot_attisnull(slot, attnum as i32) })
}

/// The stamp of the row in `slot`.
///
/// # Safety
/// `slot` must be a valid slot holding a row of the trigger's table (so
/// that the version column's number means the same in it).
pub(super) unsafe fn stamp_in_slot(trigger: &PgTrigger<'_>, slot: *mut pg_sys::TupleTableSlot) -> Result<RowStamp, ConflictError> {
    let attnum = version_attnum(trigger)?;
    let mut isnull = false;
    // SAFETY: the caller vouches for `slot`; `attnum` is a live attribute of its table.
    let datum = unsafe { pg_sys::slot_getattr(slot, attnum as i32, &mut isnull) };
    if isnull {
        return Ok(RowStamp::ZERO);
    }
    // SAFETY: a non-null `bytea` datum; detoasting returns it whole (copied
    // into the current memory context when it was toasted or compressed).
    let data = unsafe { pgrx::varlena::varlena_to_byte_slice(pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr())) };
    RowStamp::from_bytes(data).map_err(fail)
}

/// The trigger's tuple `which` with its version set to `stamp`: one
/// `heap_modify_tuple_by_cols`.
pub(super) fn stamped<'a>(trigger: &'a PgTrigger<'a>, which: Tuple, stamp: RowStamp) -> Result<Row<'a>, ConflictError> {
    let attnum = version_attnum(trigger)?;
    let tuple = tuple_of(trigger, which)?;
    let bytes = stamp.to_bytes();
    let value = pgrx::varlena::rust_byte_slice_to_bytea(&bytes);
    let mut columns = [attnum as std::ffi::c_int];
    let mut values = [pg_sys::Datum::from(value.into_pg())];
    let mut nulls = [false];
    // SAFETY: `tg_relation` is the open relation the trigger fires on.
    let tupdesc = unsafe { (*trigger.trigger_data().tg_relation).rd_att };
    // SAFETY: `tuple` (not null) is a row of that relation and `tupdesc`
    // its descriptor; the three arrays hold the one column replaced.
    let modified = unsafe { pg_sys::heap_modify_tuple_by_cols(tuple, tupdesc, 1, columns.as_mut_ptr(), values.as_mut_ptr(), nulls.as_mut_ptr()) };
    // SAFETY: `modified` is a fresh tuple built by PostgreSQL with `tupdesc`.
    Ok(unsafe { PgHeapTuple::from_heap_tuple(PgTupleDesc::from_pg_unchecked(tupdesc), modified) })
}

/// A stamp as `conflict_log` and `tombstone` keep it: an int8[].
pub(super) fn stamp_array(stamp: RowStamp) -> Vec<i64> {
    stamp.to_array().to_vec()
}
