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

/// The trigger's tuple `which` with its version set to `stamp`: appended
/// when the tuple allows it (`with_stamp_appended`), else one
/// `heap_modify_tuple_by_cols`.
pub(super) fn stamped<'a>(trigger: &'a PgTrigger<'a>, which: Tuple, stamp: RowStamp) -> Result<Row<'a>, ConflictError> {
    let attnum = version_attnum(trigger)?;
    let tuple = tuple_of(trigger, which)?;
    // SAFETY: `tg_relation` is the open relation the trigger fires on.
    let tupdesc = unsafe { (*trigger.trigger_data().tg_relation).rd_att };
    // SAFETY: `tuple` (not null) is a row of that relation and `tupdesc` its descriptor.
    let modified = match unsafe { with_stamp_appended(tuple, tupdesc, attnum, stamp) } {
        Some(appended) => appended,
        // SAFETY: as above.
        None => unsafe { with_stamp_replaced(tuple, tupdesc, attnum, stamp) },
    };
    // SAFETY: `modified` is a fresh tuple laid out for `tupdesc`.
    Ok(unsafe { PgHeapTuple::from_heap_tuple(PgTupleDesc::from_pg_unchecked(tupdesc), modified) })
}

/// `tuple` with column `attnum` set to `stamp`, formed anew by PostgreSQL.
///
/// # Safety
/// `tuple` must be a valid tuple described by `tupdesc`, `attnum` its version column.
pub(super) unsafe fn with_stamp_replaced(tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc, attnum: i16, stamp: RowStamp) -> pg_sys::HeapTuple {
    let mut value = StampBytea::of(stamp);
    let mut columns = [attnum as std::ffi::c_int];
    let mut values = [pg_sys::Datum::from(std::ptr::from_mut(&mut value))];
    let mut nulls = [false];
    // SAFETY: the caller's guarantees; the three arrays hold the one column
    // replaced, whose value (on this stack frame) the new tuple copies
    // before the call returns.
    unsafe { pg_sys::heap_modify_tuple_by_cols(tuple, tupdesc, 1, columns.as_mut_ptr(), values.as_mut_ptr(), nulls.as_mut_ptr()) }
}

/// `offsetof(HeapTupleHeaderData, t_bits)`: where the null bitmap starts.
const HEADER_BYTES: usize = std::mem::offset_of!(pg_sys::HeapTupleHeaderData, t_bits);
/// `HEAPTUPLESIZE`: a palloc'd tuple's header lies this far past its `HeapTupleData`.
const TUPLE_DATA_OFFSET: usize = maxalign(std::mem::size_of::<pg_sys::HeapTupleData>());
/// A stamp as a row stores it: a short varlena, its 1-byte header and the stamp.
const SHORT_STAMP_BYTES: usize = 1 + STAMP_BYTES;

/// `MAXALIGN`, with the server's own alignment (as `find::ENTRY_DATA` computes it).
const fn maxalign(n: usize) -> usize {
    n.next_multiple_of(pg_sys::MAXIMUM_ALIGNOF as usize)
}

/// `tuple` with `stamp` in its version column, when that column is the
/// tuple's last and NULL in it: a local INSERT that left the column out,
/// nearly every row written. The tuple's bytes are copied and the stamp
/// placed right after its data, exactly where `heap_form_tuple` places a
/// short varlena (with no alignment), instead of taking the row apart and
/// forming it again. None for any other shape (the caller forms it anew).
///
/// # Safety
/// `tuple` must be a valid tuple described by `tupdesc`, `attnum` its version column.
pub(super) unsafe fn with_stamp_appended(tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc, attnum: i16, stamp: RowStamp) -> Option<pg_sys::HeapTuple> {
    // SAFETY: the caller's guarantee: `tupdesc` is valid.
    let desc = unsafe { PgTupleDesc::from_pg_unchecked(tupdesc) };
    let natts = desc.len();
    let packable = desc.get(natts.checked_sub(1)?).is_some_and(|a| a.attstorage as u8 != pg_sys::TYPSTORAGE_PLAIN);
    if usize::try_from(attnum).ok()? != natts || !packable {
        return None;
    }
    // SAFETY: the caller's guarantee: `tuple` is valid, its header `t_len` bytes long.
    let (old, old_len) = unsafe { ((*tuple).t_data, (*tuple).t_len as usize) };
    // SAFETY: as above; a header holds at least the fixed part and its bitmap when HEAP_HASNULL says so.
    let keeps_bitmap = unsafe { appendable(old, natts)? };
    let len = old_len + SHORT_STAMP_BYTES;
    // SAFETY: palloc0 in the current (the trigger's per-row) memory context,
    // as `heap_form_tuple` allocates; it raises an ERROR rather than return NULL.
    let new = unsafe { pg_sys::palloc0(TUPLE_DATA_OFFSET + len) }.cast::<pg_sys::HeapTupleData>();
    // SAFETY: `new` holds `TUPLE_DATA_OFFSET + len` bytes; `old` holds `old_len`.
    unsafe {
        let data = new.cast::<u8>().add(TUPLE_DATA_OFFSET);
        std::ptr::copy_nonoverlapping(old.cast::<u8>(), data, old_len);
        std::ptr::copy_nonoverlapping(short_stamp(stamp).as_ptr(), data.add(old_len), SHORT_STAMP_BYTES);
        *new = pg_sys::HeapTupleData { t_len: len as u32, t_self: (*tuple).t_self, t_tableOid: (*tuple).t_tableOid, t_data: data.cast() };
        set_header(&mut *(*new).t_data, &*tupdesc, len, natts, keeps_bitmap);
    }
    Some(new)
}

/// Can the stamp be appended to the tuple whose header is `header`? Its
/// last column must be NULL, and its data start where `heap_form_tuple`
/// starts it for the new tuple. Some(whether the new tuple keeps a null
/// bitmap: another column is NULL too).
///
/// # Safety
/// `header` must be a valid tuple header of a tuple of `natts` columns.
unsafe fn appendable(header: *const pg_sys::HeapTupleHeaderData, natts: usize) -> Option<bool> {
    // SAFETY: the caller's guarantee.
    let head = unsafe { &*header };
    if usize::from(head.t_infomask2) & pg_sys::HEAP_NATTS_MASK as usize != natts || u32::from(head.t_infomask) & pg_sys::HEAP_HASNULL == 0 {
        return None;
    }
    // SAFETY: HEAP_HASNULL: the header holds a bitmap of one bit per column.
    let bits = unsafe { std::slice::from_raw_parts(head.t_bits.as_ptr(), natts.div_ceil(8)) };
    let is_null = |i: usize| bits[i / 8] & (1 << (i % 8)) == 0;
    if !is_null(natts - 1) {
        return None;
    }
    let keeps_bitmap = (0..natts - 1).any(is_null);
    let hoff = maxalign(HEADER_BYTES + if keeps_bitmap { bits.len() } else { 0 });
    (usize::from(head.t_hoff) == hoff).then_some(keeps_bitmap)
}

/// The header of an appended tuple as `heap_form_tuple` writes it: length,
/// row type, column count, the flags it sets, and the bitmap with the
/// version column present (or none at all).
fn set_header(head: &mut pg_sys::HeapTupleHeaderData, tupdesc: &pg_sys::TupleDescData, len: usize, natts: usize, keeps_bitmap: bool) {
    let external = u32::from(head.t_infomask) & pg_sys::HEAP_HASEXTERNAL;
    let nulls = if keeps_bitmap { pg_sys::HEAP_HASNULL } else { 0 };
    head.t_infomask = (pg_sys::HEAP_HASVARWIDTH | external | nulls) as u16;
    head.t_infomask2 = natts as u16;
    // SAFETY: the union's datum form, as `heap_form_tuple` fills it.
    unsafe {
        head.t_choice.t_datum.datum_typmod = tupdesc.tdtypmod;
        head.t_choice.t_datum.datum_typeid = tupdesc.tdtypeid;
        pgrx::varlena::set_varsize_4b(std::ptr::from_mut(head).cast(), len as i32);
    }
    // SAFETY: the tuple's bitmap is there (t_hoff leaves room for it) whether or not it is kept.
    let bits = unsafe { std::slice::from_raw_parts_mut(head.t_bits.as_mut_ptr(), natts.div_ceil(8)) };
    if keeps_bitmap {
        bits[(natts - 1) / 8] |= 1 << ((natts - 1) % 8);
    } else {
        bits.fill(0);
    }
}

/// A stamp in the short varlena form `heap_fill_tuple` stores a small
/// `bytea` in (`SET_VARSIZE_SHORT`).
fn short_stamp(stamp: RowStamp) -> [u8; SHORT_STAMP_BYTES] {
    let mut out = [0; SHORT_STAMP_BYTES];
    let len = SHORT_STAMP_BYTES as u8;
    out[0] = if cfg!(target_endian = "little") { (len << 1) | 0x01 } else { len | 0x80 };
    out[1..].copy_from_slice(&stamp.to_bytes());
    out
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
