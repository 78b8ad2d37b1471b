//! The row version every table under conflict handling carries in
//! `edgesync_version`: finding that column, reading the stamp of one of the
//! trigger's rows, and returning a row with a new stamp.

use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::PgTupleDesc;

use super::error::{fail, ConflictError};
use super::row::{slot_of, tuple_of, Row, Tuple};
use crate::model::conflict::version::{RowStamp, STAMP_BYTES};

/// The column every table under conflict handling carries: a 24-byte
/// `bytea` (see `model::version`).
pub const VERSION_COLUMN: &str = "edgesync_version";

/// Where `edgesync_version` sat in the table seen last: its relid in the
/// high 32 bits, its attnum in the low 16; checked against the tuple
/// descriptor on every use, so a re-added column is found again. A plain
/// static (a backend has one thread): a thread-local costs a call into the
/// dynamic loader on each local write.
static VERSION_ATTNUM: AtomicU64 = AtomicU64::new(0);

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
    let cached = VERSION_ATTNUM.load(Ordering::Relaxed);
    let cached_attnum = cached as u16 as i16;
    if (cached >> 32) as u32 == relid.to_u32() && is_version_column(&tupdesc, cached_attnum) {
        return Ok(cached_attnum);
    }
    // SAFETY: a syscache lookup by oid and a NUL-terminated name, in a
    // backend inside a transaction (a trigger is running).
    let attnum = unsafe { pg_sys::get_attnum(relid, c"edgesync_version".as_ptr()) };
    if !is_version_column(&tupdesc, attnum) {
        return Err(fail(format!("{VERSION_COLUMN} is missing: re-run edgesync.set_conflict_policy")));
    }
    VERSION_ATTNUM.store((u64::from(relid.to_u32()) << 32) | u64::from(attnum as u16), Ordering::Relaxed);
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

/// The stamp of the trigger's tuple `which`, None when it has none (NULL):
/// the column has no default, so a remote row from a table without it
/// arrives without one.
pub(super) fn slot_version(trigger: &PgTrigger<'_>, which: Tuple) -> Result<Option<RowStamp>, ConflictError> {
    let slot = slot_of(trigger, which)?;
    // SAFETY: `slot` is one of the trigger's own slots (not null), holding
    // a row of the trigger's table.
    unsafe { version_in_slot(trigger, slot) }
}

/// The stamp of the row in `slot`.
///
/// # Safety
/// `slot` must be a valid slot holding a row of the trigger's table (so
/// that the version column's number means the same in it).
pub(super) unsafe fn stamp_in_slot(trigger: &PgTrigger<'_>, slot: *mut pg_sys::TupleTableSlot) -> Result<RowStamp, ConflictError> {
    // SAFETY: the caller's guarantee.
    Ok(unsafe { version_in_slot(trigger, slot) }?.unwrap_or(RowStamp::ZERO))
}

/// The stamp of the row in `slot`, None when its version is NULL.
///
/// # Safety
/// As `stamp_in_slot`'s.
unsafe fn version_in_slot(trigger: &PgTrigger<'_>, slot: *mut pg_sys::TupleTableSlot) -> Result<Option<RowStamp>, ConflictError> {
    let attnum = version_attnum(trigger)?;
    let mut isnull = false;
    // SAFETY: the caller vouches for `slot`; `attnum` is a live attribute of its table.
    let datum = unsafe { pg_sys::slot_getattr(slot, attnum as i32, &mut isnull) };
    if isnull {
        return Ok(None);
    }
    // SAFETY: a non-null `bytea` datum; detoasting returns it whole (copied
    // into the current memory context when it was toasted or compressed).
    let data = unsafe { pgrx::varlena::varlena_to_byte_slice(pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr())) };
    RowStamp::from_bytes(data).map(Some).map_err(fail)
}

/// The trigger's tuple `which` with its version set to `stamp`: one
/// `heap_modify_tuple_by_cols`.
pub(super) fn stamped<'a>(trigger: &'a PgTrigger<'a>, which: Tuple, stamp: RowStamp) -> Result<Row<'a>, ConflictError> {
    let attnum = version_attnum(trigger)?;
    let tuple = tuple_of(trigger, which)?;
    let mut value = StampBytea::of(stamp);
    let mut columns = [attnum as std::ffi::c_int];
    let mut values = [pg_sys::Datum::from(std::ptr::from_mut(&mut value))];
    let mut nulls = [false];
    // SAFETY: `tg_relation` is the open relation the trigger fires on.
    let tupdesc = unsafe { (*trigger.trigger_data().tg_relation).rd_att };
    // SAFETY: `tuple` (not null) is a row of that relation and `tupdesc`
    // its descriptor; the three arrays hold the one column replaced, whose
    // value (on this stack frame) the new tuple copies before the call returns.
    let modified = unsafe { pg_sys::heap_modify_tuple_by_cols(tuple, tupdesc, 1, columns.as_mut_ptr(), values.as_mut_ptr(), nulls.as_mut_ptr()) };
    // SAFETY: `modified` is a fresh tuple built by PostgreSQL with `tupdesc`.
    Ok(unsafe { PgHeapTuple::from_heap_tuple(PgTupleDesc::from_pg_unchecked(tupdesc), modified) })
}

/// A stamp as a `bytea` value, built on the stack: the new tuple copies it
/// (no allocation, no call into PostgreSQL, on every local write).
#[repr(C, align(4))]
struct StampBytea {
    /// The 4-byte varlena header.
    header: u32,
    bytes: [u8; STAMP_BYTES],
}

impl StampBytea {
    fn of(stamp: RowStamp) -> StampBytea {
        let mut value = StampBytea { header: 0, bytes: stamp.to_bytes() };
        // SAFETY: `value` starts with a 4-byte header, aligned to 4, and
        // holds the whole length written in it; only the header is written.
        unsafe { pgrx::varlena::set_varsize_4b(std::ptr::from_mut(&mut value).cast(), std::mem::size_of::<StampBytea>() as i32) };
        value
    }
}

/// A stamp as `conflict_log` and `tombstone` keep it: an int8[].
pub(super) fn stamp_array(stamp: RowStamp) -> Vec<i64> {
    stamp.to_array().to_vec()
}
