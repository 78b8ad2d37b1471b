//! The primary-key probe of a remote insert: does this node already hold a
//! row with the new row's key, and with which stamp? One index lookup in
//! the apply worker's snapshot, with the scan keys' operators found once
//! per table (no SQL, no catalog lookups per row). The index's rightmost
//! leaf is asked first (`find::LastLeaf`, kept per index across
//! transactions, as PostgreSQL's apply commits each remote transaction on
//! its own): a new key that sorts after the others, or between two on
//! that page, needs no scan.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use pgrx::prelude::*;

use super::error::{fail, ConflictError};
use super::find::LastLeaf;
use super::row::{slot_of, Tuple};
use super::stamp::stamp_in_slot;
use crate::model::conflict::version::RowStamp;

/// How to look a table's primary key up: found once per table from the
/// catalogs, rebuilt when the primary-key index changes.
pub(super) struct KeyProbe {
    pub(super) index: pg_sys::Oid,
    heap_attnums: Vec<i16>,
    procs: Vec<pg_sys::RegProcedure>,
    collations: Vec<pg_sys::Oid>,
}

thread_local! {
    static KEY_PROBES: RefCell<OidMap<pg_sys::Oid, Rc<KeyProbe>>> = RefCell::new(OidMap::default());
    /// Each primary-key index's rightmost leaf as last seen (None: its keys
    /// cannot be compared there), by index and file: a TRUNCATE gives the
    /// index a new, smaller file, where a remembered page may not exist.
    /// At most MAX_LAST_LEAVES entries.
    static LAST_LEAVES: RefCell<OidMap<(pg_sys::Oid, u32), Option<LastLeaf>>> = RefCell::new(OidMap::default());
}

/// A map keyed by oids (and file numbers): small integers no peer
/// chooses, so a multiply-and-rotate hash serves (std's SipHash, made to
/// resist chosen keys, cost as much as the rest of a lookup per row).
type OidMap<K, V> = HashMap<K, V, BuildHasherDefault<OidHasher>>;

#[derive(Default)]
struct OidHasher(u64);

impl Hasher for OidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

const BT_EQUAL_STRATEGY: u16 = 3;
/// The lock the probe takes on the primary-key index: the one the write
/// that fires the trigger holds on it already (the executor opens a
/// table's indexes with it before it inserts), so that taking it again
/// costs a look in this backend's own lock table, not a new lock.
const LOCK: pg_sys::LOCKMODE = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
const MAX_LAST_LEAVES: usize = 256;

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
    let Some(key) = (unsafe { probe.key_values(inserted) }) else {
        return Ok(None); // a NULL key matches nothing (the insert will fail on its own)
    };
    // SAFETY: as above; `key` was read by `probe`, the probe of `rel`.
    unsafe { look_up(trigger, rel, &probe, &key) }
}

/// The probe of `rel`'s primary key: kept, or read from the catalogs when
/// the table is new to this backend or its primary-key index changed.
///
/// # Safety
/// `rel` must be an open relation.
pub(super) unsafe fn key_probe(rel: pg_sys::Relation) -> Result<Rc<KeyProbe>, ConflictError> {
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
    let probe = Rc::new(read_probe(index)?);
    KEY_PROBES.with(|c| c.borrow_mut().insert(relid, Rc::clone(&probe)));
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

impl KeyProbe {
    /// One equality scan key per key column, their values still to set.
    pub(super) fn scan_keys(&self) -> Vec<pg_sys::ScanKeyData> {
        (0..self.heap_attnums.len())
            .map(|i| {
                // SAFETY: ScanKeyData is a plain C struct, filled whole by
                // ScanKeyEntryInitialize; the function and collation come
                // from the index's catalog entries.
                unsafe {
                    let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
                    pg_sys::ScanKeyEntryInitialize(
                        &mut key,
                        0,
                        (i + 1) as pg_sys::AttrNumber,
                        BT_EQUAL_STRATEGY,
                        pg_sys::InvalidOid,
                        self.collations[i],
                        self.procs[i],
                        pg_sys::Datum::from(0),
                    );
                    key
                }
            })
            .collect()
    }

    /// The key of the row in `slot`, a value per key column; None when a
    /// key column is NULL (a NULL key names no row).
    ///
    /// # Safety
    /// `slot` must hold a row of the table this probe was made for.
    unsafe fn key_values(&self, slot: *mut pg_sys::TupleTableSlot) -> Option<Vec<pg_sys::Datum>> {
        let mut values = Vec::with_capacity(self.heap_attnums.len());
        for &attnum in &self.heap_attnums {
            let mut isnull = false;
            // SAFETY: the caller vouches for `slot`; the attribute numbers are its table's.
            values.push(unsafe { pg_sys::slot_getattr(slot, attnum as i32, &mut isnull) });
            if isnull {
                return None;
            }
        }
        Some(values)
    }

    /// Set `keys` (from `scan_keys`) to the key of the row in `slot`; false
    /// when a key column is NULL (a NULL key names no row).
    ///
    /// # Safety
    /// `slot` must hold a row of the table this probe was made for.
    pub(super) unsafe fn set_key_values(&self, keys: &mut [pg_sys::ScanKeyData], slot: *mut pg_sys::TupleTableSlot) -> bool {
        for (key, &attnum) in keys.iter_mut().zip(&self.heap_attnums) {
            let mut isnull = false;
            // SAFETY: the caller vouches for `slot`; the attribute numbers are its table's.
            key.sk_argument = unsafe { pg_sys::slot_getattr(slot, attnum as i32, &mut isnull) };
            if isnull {
                return false;
            }
        }
        true
    }
}

/// Look `key` up in the primary-key index of `rel`, in the active (or
/// transaction) snapshot, and read the stamp of the row found.
///
/// # Safety
/// `rel` must be the trigger's open relation and `key` read by `probe`,
/// the probe of `rel`.
unsafe fn look_up(trigger: &PgTrigger<'_>, rel: pg_sys::Relation, probe: &KeyProbe, key: &[pg_sys::Datum]) -> Result<Option<RowStamp>, ConflictError> {
    // SAFETY: the caller's guarantees; the index is closed on every path
    // (the lock is kept until commit, as the executor keeps its own).
    unsafe {
        let idxrel = pg_sys::index_open(probe.index, LOCK);
        // no version of any row has this key: nothing to read
        let found = if ruled_out_at_the_end(idxrel, key) { Ok(None) } else { scan(trigger, rel, idxrel, probe, key) };
        pg_sys::index_close(idxrel, pg_sys::NoLock as pg_sys::LOCKMODE);
        found
    }
}

/// Scan primary-key index `idxrel` of `rel` for `key` in the active (or
/// transaction) snapshot, and read the stamp of the row found.
///
/// # Safety
/// As `look_up`'s, and `idxrel` open.
unsafe fn scan(trigger: &PgTrigger<'_>, rel: pg_sys::Relation, idxrel: pg_sys::Relation, probe: &KeyProbe, key: &[pg_sys::Datum]) -> Result<Option<RowStamp>, ConflictError> {
    let mut keys = probe.scan_keys();
    for (scan_key, &value) in keys.iter_mut().zip(key) {
        scan_key.sk_argument = value;
    }
    let n = keys.len() as i32;
    // SAFETY: the caller's guarantees; the scan and its slot are released
    // below before returning (the stamp's error, if any, is returned only
    // after), and the slot holds rows of `rel`.
    unsafe {
        let snapshot = if pg_sys::ActiveSnapshotSet() { pg_sys::GetActiveSnapshot() } else { pg_sys::GetTransactionSnapshot() };
        let scan = crate::compat::index_beginscan(rel, idxrel, snapshot, n);
        pg_sys::index_rescan(scan, keys.as_mut_ptr(), n, std::ptr::null_mut(), 0);
        let out = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let found = pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, out);
        let stamp = if found { Some(stamp_in_slot(trigger, out)) } else { None };
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(out);
        stamp.transpose()
    }
}

/// Has no entry of primary-key index `index` the key `key`, as its
/// rightmost leaf page says (B-tree's own fast path for appends)? Rows
/// written in about key order then need no descent and no scan each.
///
/// # Safety
/// `index` must be an open B-tree index and `key` a key of it; in a transaction.
unsafe fn ruled_out_at_the_end(index: pg_sys::Relation, key: &[pg_sys::Datum]) -> bool {
    // SAFETY: the caller's guarantees; the relcache entry is read only.
    let id = unsafe { ((*index).rd_id, crate::compat::relation_file(index)) };
    LAST_LEAVES.with(|leaves| {
        let mut leaves = leaves.borrow_mut();
        if leaves.len() >= MAX_LAST_LEAVES && !leaves.contains_key(&id) {
            leaves.clear(); // indexes dropped or rewritten leave entries behind
        }
        // SAFETY: the caller's guarantees; the comparison functions are kept
        // in TopMemoryContext, which lives as long as this backend's cache.
        let leaf = leaves.entry(id).or_insert_with(|| unsafe { LastLeaf::of(index, key.len(), pg_sys::TopMemoryContext) });
        // SAFETY: made for this index (same oid and file).
        leaf.as_mut().is_some_and(|leaf| unsafe { leaf.rules_out(index, key) })
    })
}
