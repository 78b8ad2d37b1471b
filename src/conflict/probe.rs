//! The primary-key probe of a remote insert: does this node already hold a
//! row with the new row's key, and with which stamp? One index lookup in
//! the apply worker's snapshot, with the scan keys' operators found once
//! per table (no SQL, no catalog lookups per row).

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::prelude::*;

use super::error::{fail, ConflictError};
use super::row::{slot_of, Tuple};
use super::stamp::stamp_in_slot;
use crate::model::conflict::version::RowStamp;

/// How to look a table's primary key up: found once per table from the
/// catalogs, rebuilt when the primary-key index changes.
#[derive(Clone)]
struct KeyProbe {
    index: pg_sys::Oid,
    heap_attnums: Vec<i16>,
    procs: Vec<pg_sys::RegProcedure>,
    collations: Vec<pg_sys::Oid>,
}

thread_local! {
    static KEY_PROBES: RefCell<HashMap<pg_sys::Oid, KeyProbe>> = RefCell::new(HashMap::new());
}

const BT_EQUAL_STRATEGY: u16 = 3;
const LOCK: pg_sys::LOCKMODE = pg_sys::AccessShareLock as pg_sys::LOCKMODE;

/// The stamp of the local row with the new row's key: one primary-key
/// lookup in the apply worker's snapshot, with scan keys prepared once per
/// table (no SQL, no catalog lookups per row). A row inserted by a local
/// transaction still in progress is not seen: the apply worker's own insert
/// then waits for it and retries the change if it committed.
pub(super) fn probe_existing(trigger: &PgTrigger<'_>) -> Result<Option<RowStamp>, ConflictError> {
    let rel = trigger.trigger_data().tg_relation;
    let inserted = slot_of(trigger, Tuple::Trig)?;
    // SAFETY: `tg_relation` is the open relation the trigger fires on.
    let probe = unsafe { key_probe(rel) }?;
    // SAFETY: `inserted` is the trigger's slot of the new row, a row of
    // `rel`, the table the probe was made for.
    let Some(mut keys) = (unsafe { scan_keys(&probe, inserted) }) else {
        return Ok(None); // a NULL key matches nothing (the insert will fail on its own)
    };
    // SAFETY: as above; `keys` were built from `probe` for `rel`.
    unsafe { look_up(trigger, rel, &probe, &mut keys) }
}

/// The probe of `rel`'s primary key: kept, or read from the catalogs when
/// the table is new to this backend or its primary-key index changed.
///
/// # Safety
/// `rel` must be an open relation.
unsafe fn key_probe(rel: pg_sys::Relation) -> Result<KeyProbe, ConflictError> {
    // SAFETY: the caller keeps `rel` open.
    let (relid, index) = unsafe { ((*rel).rd_id, crate::compat::primary_key_index(rel)) };
    if index == pg_sys::InvalidOid {
        return Err(fail("the table lost its primary key: re-run edgesync.set_conflict_policy"));
    }
    if let Some(p) = KEY_PROBES.with(|c| c.borrow().get(&relid).cloned()) {
        if p.index == index {
            return Ok(p);
        }
    }
    let probe = read_probe(index)?;
    KEY_PROBES.with(|c| c.borrow_mut().insert(relid, probe.clone()));
    Ok(probe)
}

/// Read the key columns and their equality functions from primary-key index `index`.
fn read_probe(index: pg_sys::Oid) -> Result<KeyProbe, ConflictError> {
    // SAFETY: `index` is the primary-key index of a relation the caller
    // holds open (so it exists); opened with a lock, closed below on every path.
    let idxrel = unsafe { pg_sys::index_open(index, LOCK) };
    // SAFETY: `idxrel` is an open index: `rd_index` is its pg_index row.
    let nkeys = unsafe { (*(*idxrel).rd_index).indnkeyatts } as usize;
    let mut probe = KeyProbe { index, heap_attnums: vec![], procs: vec![], collations: vec![] };
    let mut result = Ok(());
    for i in 0..nkeys {
        // SAFETY: `i` < `indnkeyatts`, the length of the index's per-key arrays.
        result = unsafe { add_key_column(&mut probe, idxrel, i) };
        if result.is_err() {
            break;
        }
    }
    // SAFETY: opened above with the same lock mode.
    unsafe { pg_sys::index_close(idxrel, LOCK) };
    result.map(|()| probe)
}

/// Add key column `i` of index `idxrel` to `probe`: its heap attribute,
/// the equality function of its operator family, and its collation.
///
/// # Safety
/// `idxrel` must be an open btree index and `i` less than its number of key columns.
unsafe fn add_key_column(probe: &mut KeyProbe, idxrel: pg_sys::Relation, i: usize) -> Result<(), ConflictError> {
    // SAFETY: the caller's guarantees make these reads of the index's
    // relcache arrays in bounds; the lookups are syscache reads.
    unsafe {
        let opfamily = *(*idxrel).rd_opfamily.add(i);
        let opcintype = *(*idxrel).rd_opcintype.add(i);
        let op = pg_sys::get_opfamily_member(opfamily, opcintype, opcintype, BT_EQUAL_STRATEGY as i16);
        if op == pg_sys::InvalidOid {
            return Err(fail("the primary key has no equality operator"));
        }
        probe.heap_attnums.push(*(*(*idxrel).rd_index).indkey.values.as_ptr().add(i));
        probe.procs.push(pg_sys::get_opcode(op));
        probe.collations.push(*(*idxrel).rd_indcollation.add(i));
    }
    Ok(())
}

/// Scan keys matching the key columns of the row in `slot`; None when a
/// key column is NULL.
///
/// # Safety
/// `slot` must hold a row of the table `probe` was made for.
unsafe fn scan_keys(probe: &KeyProbe, slot: *mut pg_sys::TupleTableSlot) -> Option<Vec<pg_sys::ScanKeyData>> {
    let n = probe.heap_attnums.len();
    // SAFETY: ScanKeyData is a plain C struct; every entry is initialized
    // by ScanKeyEntryInitialize below before use.
    let mut keys: Vec<pg_sys::ScanKeyData> = vec![unsafe { std::mem::zeroed() }; n];
    for (i, key) in keys.iter_mut().enumerate() {
        let mut isnull = false;
        // SAFETY: the caller vouches for `slot`; the attribute numbers are its table's.
        let value = unsafe { pg_sys::slot_getattr(slot, probe.heap_attnums[i] as i32, &mut isnull) };
        if isnull {
            return None;
        }
        // SAFETY: `key` is a valid ScanKeyData to fill; the function and
        // collation come from the index's catalog entries.
        unsafe {
            pg_sys::ScanKeyEntryInitialize(
                key,
                0,
                (i + 1) as pg_sys::AttrNumber,
                BT_EQUAL_STRATEGY,
                pg_sys::InvalidOid,
                probe.collations[i],
                probe.procs[i],
                value,
            )
        };
    }
    Some(keys)
}

/// Look `keys` up in the primary-key index of `rel`, in the active (or
/// transaction) snapshot, and read the stamp of the row found.
///
/// # Safety
/// `rel` must be the trigger's open relation and `keys` built by
/// `scan_keys` from `probe`, the probe of `rel`.
unsafe fn look_up(trigger: &PgTrigger<'_>, rel: pg_sys::Relation, probe: &KeyProbe, keys: &mut [pg_sys::ScanKeyData]) -> Result<Option<RowStamp>, ConflictError> {
    let n = keys.len() as i32;
    // SAFETY: the caller's guarantees; the scan, its slot and the index are
    // all released below before returning (the stamp's error, if any, is
    // returned only after), and the slot holds rows of `rel`.
    unsafe {
        let snapshot = if pg_sys::ActiveSnapshotSet() { pg_sys::GetActiveSnapshot() } else { pg_sys::GetTransactionSnapshot() };
        let idxrel = pg_sys::index_open(probe.index, LOCK);
        let scan = crate::compat::index_beginscan(rel, idxrel, snapshot, n);
        pg_sys::index_rescan(scan, keys.as_mut_ptr(), n, std::ptr::null_mut(), 0);
        let out = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let found = pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, out);
        let stamp = if found { Some(stamp_in_slot(trigger, out)) } else { None };
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(out);
        pg_sys::index_close(idxrel, LOCK);
        stamp.transpose()
    }
}

/// How `find_by_key` leaves the row it finds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowLock {
    /// Read only (is the key taken?).
    None,
    /// Locked for the update or delete that follows, until commit.
    Exclusive,
}

/// Find the row of `rel` whose primary key is the key the row in `search`
/// holds, as PostgreSQL's apply finds the row a change names
/// (`RelationFindReplTupleByIndex`): in a dirty snapshot, so a row written
/// earlier in this transaction or by one still in progress is seen; the
/// latter is waited for and the search made again. The row found is left
/// in `found`, locked when `lock` says so.
///
/// # Safety
/// `rel` must be open; `search` and `found` must be slots of its row type
/// (`found` one that can hold its stored rows); in a transaction.
pub(crate) unsafe fn find_by_key(
    rel: pg_sys::Relation,
    search: *mut pg_sys::TupleTableSlot,
    found: *mut pg_sys::TupleTableSlot,
    lock: RowLock,
) -> Result<bool, ConflictError> {
    // SAFETY: the caller keeps `rel` open.
    let probe = unsafe { key_probe(rel) }?;
    // SAFETY: `search` holds a row of `rel`, the table the probe was made for.
    let Some(mut keys) = (unsafe { scan_keys(&probe, search) }) else {
        return Ok(false); // a NULL key names no row
    };
    let n = keys.len() as i32;
    // SAFETY: a zeroed SnapshotData with its type set is what InitDirtySnapshot makes.
    let mut dirty: pg_sys::SnapshotData = unsafe { std::mem::zeroed() };
    dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
    // SAFETY: the index of an open table, locked as PostgreSQL's apply locks
    // it (kept until commit); the scan reads `dirty`, alive until it ends
    // below, and fills `found`, a slot of `rel`.
    unsafe {
        let idxrel = pg_sys::index_open(probe.index, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let scan = crate::compat::index_beginscan(rel, idxrel, &mut dirty, n);
        let result = loop {
            pg_sys::index_rescan(scan, keys.as_mut_ptr(), n, std::ptr::null_mut(), 0);
            if !pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, found) {
                break Ok(false);
            }
            pg_sys::ExecMaterializeSlot(found);
            // the dirty snapshot names a transaction that holds the row in progress
            let holder = if dirty.xmin != pg_sys::InvalidTransactionId { dirty.xmin } else { dirty.xmax };
            if holder != pg_sys::InvalidTransactionId {
                pg_sys::XactLockTableWait(holder, std::ptr::null_mut(), std::ptr::null_mut(), pg_sys::XLTW_Oper::XLTW_None);
                continue;
            }
            match lock {
                RowLock::None => break Ok(true),
                RowLock::Exclusive => match lock_row(rel, found) {
                    Ok(true) => break Ok(true),
                    Ok(false) => continue, // changed under us: look again
                    Err(e) => break Err(e),
                },
            }
        };
        pg_sys::index_endscan(scan);
        pg_sys::index_close(idxrel, pg_sys::NoLock as pg_sys::LOCKMODE);
        result
    }
}

/// Lock the row in `slot` exclusively; false when another transaction
/// updated or deleted it since it was read (the caller looks again).
///
/// # Safety
/// `rel` must be open and `slot` hold a row of it just read from it.
unsafe fn lock_row(rel: pg_sys::Relation, slot: *mut pg_sys::TupleTableSlot) -> Result<bool, ConflictError> {
    // SAFETY: the caller's guarantees; the snapshot pushed here is popped
    // before returning, and `failure` is a plain struct the call fills.
    unsafe {
        let mut failure: pg_sys::TM_FailureData = std::mem::zeroed();
        pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
        let result = pg_sys::table_tuple_lock(
            rel,
            &mut (*slot).tts_tid,
            pg_sys::GetLatestSnapshot(),
            slot,
            pg_sys::GetCurrentCommandId(false),
            pg_sys::LockTupleMode::LockTupleExclusive,
            pg_sys::LockWaitPolicy::LockWaitBlock,
            0, // the row read, not a newer version of it
            &mut failure,
        );
        pg_sys::PopActiveSnapshot();
        match result {
            pg_sys::TM_Result::TM_Ok => Ok(true),
            pg_sys::TM_Result::TM_Updated | pg_sys::TM_Result::TM_Deleted => Ok(false),
            other => Err(fail(format!("unexpected result {other} locking a row to apply a change to"))),
        }
    }
}
