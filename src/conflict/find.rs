//! Finding the row a remote change names, for apply: by primary key, as
//! PostgreSQL's apply finds it (`RelationFindReplTupleByIndex`), in a
//! dirty snapshot, so a row written earlier in this transaction or by one
//! still in progress is seen; the latter is waited for and the search made
//! again. The index scan is opened once for a run of changes to one table
//! and only given new keys per row.
//!
//! Whether an insert's key is taken is first asked of the index's
//! rightmost leaf page, as B-tree's own fast path for appends does: every
//! key of the index sorts at or before the last one on that page, so a key
//! after it is nobody's, and rows appended in key order (readings,
//! sequences) are not looked up with a descent each. The answer holds at
//! the moment it is read, as the descent's does; anything but a live
//! rightmost leaf with a key on it sends the question to the scan.

use pgrx::prelude::*;

use super::error::{fail, ConflictError};
use super::probe::{key_probe, KeyProbe};

/// How `KeyFinder::find` leaves the row it finds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowLock {
    /// Read only (is the key taken?).
    None,
    /// Locked for the update or delete that follows, until commit.
    Exclusive,
}

/// A primary-key scan of one table, kept open for a run of changes.
pub(crate) struct KeyFinder {
    rel: pg_sys::Relation,
    probe: KeyProbe,
    index: pg_sys::Relation,
    scan: pg_sys::IndexScanDesc,
    /// Boxed: the scan reads it through a pointer for its whole life.
    dirty: Box<pg_sys::SnapshotData>,
    keys: Vec<pg_sys::ScanKeyData>,
    /// Where the index ends (None: its key cannot be compared here).
    last_leaf: Option<LastLeaf>,
}

/// The index's rightmost leaf page as last seen, and how its keys compare.
struct LastLeaf {
    /// None: not seen yet (the index was empty).
    block: Option<pg_sys::BlockNumber>,
    /// Per key column, the B-tree comparison function of its operator family.
    compare: Vec<pg_sys::FmgrInfo>,
    collations: Vec<pg_sys::Oid>,
}

/// nbtree's page trailer (`BTPageOpaqueData`, the same in 15 and 18) and
/// the flags read here.
#[repr(C)]
struct BtPageOpaque {
    prev: pg_sys::BlockNumber,
    next: pg_sys::BlockNumber,
    level: u32,
    flags: u16,
    cycle_id: u16,
}
const BTP_LEAF: u16 = 1;
const BTP_DELETED: u16 = 1 << 2;
const BTP_HALF_DEAD: u16 = 1 << 4;
const BTP_INCOMPLETE_SPLIT: u16 = 1 << 7;
/// No right sibling: the page is its level's rightmost.
const P_NONE: pg_sys::BlockNumber = 0;
const BTORDER_PROC: i16 = 1;
/// Right siblings followed from the page last seen before the question goes to the scan.
const MAX_HOPS: usize = 4;

impl KeyFinder {
    /// Open the primary-key scan of `rel`.
    ///
    /// # Safety
    /// `rel` must be open, and stay open until `close`; in a transaction.
    pub(crate) unsafe fn open(rel: pg_sys::Relation) -> Result<KeyFinder, ConflictError> {
        // SAFETY: the caller keeps `rel` open.
        let probe = unsafe { key_probe(rel) }?;
        let keys = probe.scan_keys();
        // SAFETY: a zeroed SnapshotData with its type set is what InitDirtySnapshot makes.
        let mut dirty = Box::new(unsafe { std::mem::zeroed::<pg_sys::SnapshotData>() });
        dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
        // SAFETY: the index of an open table, locked as PostgreSQL's apply
        // locks it (kept until commit); the scan reads `dirty`, boxed and
        // kept with it until `close`.
        let (index, scan) = unsafe {
            let index = pg_sys::index_open(probe.index, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            (index, crate::compat::index_beginscan(rel, index, &mut *dirty, keys.len() as i32))
        };
        // SAFETY: `index` is the open primary-key index of `rel`.
        let last_leaf = unsafe { LastLeaf::of(index, keys.len()) };
        Ok(KeyFinder { rel, probe, index, scan, dirty, keys, last_leaf })
    }

    /// End the scan; the index stays locked until commit.
    pub(crate) fn close(self) {
        // SAFETY: opened by `open`, ended once here.
        unsafe {
            pg_sys::index_endscan(self.scan);
            pg_sys::index_close(self.index, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }

    /// Find the row whose primary key is the key the row in `search` holds
    /// into `found`, locked when `lock` says so; false when there is none.
    ///
    /// # Safety
    /// `search` and `found` must be slots of the table's row type (`found`
    /// one that can hold its stored rows).
    pub(crate) unsafe fn find(
        &mut self,
        search: *mut pg_sys::TupleTableSlot,
        found: *mut pg_sys::TupleTableSlot,
        lock: RowLock,
    ) -> Result<bool, ConflictError> {
        // SAFETY: `search` holds a row of the table the probe was made for.
        if !unsafe { self.probe.set_key_values(&mut self.keys, search) } {
            return Ok(false); // a NULL key names no row
        }
        // SAFETY: the keys were just set; the index is open.
        if lock == RowLock::None && unsafe { self.after_every_key() } {
            return Ok(false);
        }
        let n = self.keys.len() as i32;
        loop {
            // SAFETY: the scan is open with `n` keys; the dirty snapshot it
            // reads is alive; `found` is a slot of the table.
            let holder = unsafe {
                pg_sys::index_rescan(self.scan, self.keys.as_mut_ptr(), n, std::ptr::null_mut(), 0);
                if !pg_sys::index_getnext_slot(self.scan, pg_sys::ScanDirection::ForwardScanDirection, found) {
                    return Ok(false);
                }
                pg_sys::ExecMaterializeSlot(found);
                // the dirty snapshot names a transaction that holds the row in progress
                let dirty = &*self.dirty;
                if dirty.xmin != pg_sys::InvalidTransactionId { dirty.xmin } else { dirty.xmax }
            };
            if holder != pg_sys::InvalidTransactionId {
                // SAFETY: waits on a transaction id's lock, in a transaction.
                unsafe { pg_sys::XactLockTableWait(holder, std::ptr::null_mut(), std::ptr::null_mut(), pg_sys::XLTW_Oper::XLTW_None) };
                continue;
            }
            match lock {
                RowLock::None => return Ok(true),
                // SAFETY: `found` holds a row just read from the open table.
                RowLock::Exclusive => match unsafe { lock_row(self.rel, found) }? {
                    true => return Ok(true),
                    false => continue, // changed under us: look again
                },
            }
        }
    }
}

impl KeyFinder {
    /// Does the key in `keys` sort after every key of the index, as its
    /// rightmost leaf page says? False when that cannot be told there.
    ///
    /// # Safety
    /// `keys` must hold the values of a key of the index.
    unsafe fn after_every_key(&mut self) -> bool {
        let (index, keys) = (self.index, &self.keys);
        let Some(leaf) = self.last_leaf.as_mut() else { return false };
        // an index empty when the run began has its first page once a row is in
        // SAFETY: `index` is the open B-tree index the finder was made for.
        let Some(mut block) = leaf.block.or_else(|| unsafe { crate::compat::btree_rightmost_leaf(index) }) else { return false };
        for _ in 0..MAX_HOPS {
            // SAFETY: a page of the open index, pinned and share-locked
            // while it is read, released on every path.
            let (next, after) = unsafe {
                let buffer = pg_sys::ReadBuffer(index, block);
                pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
                let seen = read_leaf(buffer).map(|(next, last)| (next, next == P_NONE && leaf.sorts_after(index, keys, last)));
                pg_sys::UnlockReleaseBuffer(buffer);
                match seen {
                    Some(seen) => seen,
                    None => return false,
                }
            };
            if next == P_NONE {
                leaf.block = Some(block);
                return after;
            }
            // split since it was seen: its right sibling holds the later keys
            block = next;
        }
        false
    }
}

impl LastLeaf {
    /// The rightmost leaf of B-tree `index` and the comparison functions
    /// of its first `nkeys` columns (None: no such function).
    ///
    /// # Safety
    /// `index` must be an open B-tree index with `nkeys` key columns.
    unsafe fn of(index: pg_sys::Relation, nkeys: usize) -> Option<LastLeaf> {
        let mut leaf = LastLeaf { block: None, compare: Vec::with_capacity(nkeys), collations: Vec::with_capacity(nkeys) };
        for i in 0..nkeys {
            // SAFETY: `i` is below the index's number of key columns, the
            // length of its relcache arrays; catalog lookups in a transaction;
            // the function's cache lives in the current memory context.
            unsafe {
                let (family, input) = (*(*index).rd_opfamily.add(i), *(*index).rd_opcintype.add(i));
                let proc_oid = pg_sys::get_opfamily_proc(family, input, input, BTORDER_PROC);
                if proc_oid == pg_sys::InvalidOid {
                    return None;
                }
                let mut function: pg_sys::FmgrInfo = std::mem::zeroed();
                pg_sys::fmgr_info_cxt(proc_oid, &mut function, pg_sys::CurrentMemoryContext);
                leaf.compare.push(function);
                leaf.collations.push(*(*index).rd_indcollation.add(i));
            }
        }
        // SAFETY: the caller's guarantee.
        leaf.block = unsafe { crate::compat::btree_rightmost_leaf(index) };
        Some(leaf)
    }

    /// Does the key in `keys` sort after index tuple `last`?
    ///
    /// # Safety
    /// `last` must be a tuple of `index` on a page still locked, `keys` a
    /// key's values.
    unsafe fn sorts_after(&mut self, index: pg_sys::Relation, keys: &[pg_sys::ScanKeyData], last: pg_sys::IndexTuple) -> bool {
        const INDEX_NULL_MASK: u16 = 0x8000;
        // SAFETY: the caller's guarantees; a key column of a tuple with no
        // NULL is read at its place; the functions compare two values of
        // the column's operator class.
        unsafe {
            if (*last).t_info & INDEX_NULL_MASK != 0 {
                return false;
            }
            for (i, key) in keys.iter().enumerate() {
                let theirs = pg_sys::nocache_index_getattr(last, i as i32 + 1, (*index).rd_att);
                let order = pg_sys::FunctionCall2Coll(&mut self.compare[i], self.collations[i], key.sk_argument, theirs).value() as i32;
                if order != 0 {
                    return order > 0;
                }
            }
        }
        false // the same key
    }
}

/// A live leaf page's right sibling (P_NONE: none) and its last tuple;
/// None for any other page, or one without tuples.
///
/// # Safety
/// `buffer` must be a pinned and share-locked page of a B-tree index.
unsafe fn read_leaf(buffer: pg_sys::Buffer) -> Option<(pg_sys::BlockNumber, pg_sys::IndexTuple)> {
    const HEADER: usize = std::mem::offset_of!(pg_sys::PageHeaderData, pd_linp);
    if buffer <= 0 {
        return None; // a local buffer: not an index apply writes
    }
    // SAFETY: a shared buffer's page is at its place in the buffer pool
    // (BufferGetPage); the page is locked, so its header, trailer and
    // line pointers are consistent; every offset is checked against it.
    unsafe {
        let page = pg_sys::BufferBlocks.add((buffer as usize - 1) * pg_sys::BLCKSZ as usize);
        let header = &*page.cast::<pg_sys::PageHeaderData>();
        let special = header.pd_special as usize;
        if special + std::mem::size_of::<BtPageOpaque>() > pg_sys::BLCKSZ as usize {
            return None;
        }
        let opaque = &*page.add(special).cast::<BtPageOpaque>();
        if opaque.flags & BTP_LEAF == 0 || opaque.flags & (BTP_DELETED | BTP_HALF_DEAD | BTP_INCOMPLETE_SPLIT) != 0 {
            return None;
        }
        let lower = header.pd_lower as usize;
        let items = lower.saturating_sub(HEADER) / std::mem::size_of::<pg_sys::ItemIdData>();
        if items == 0 {
            return None;
        }
        let item = &*page.add(HEADER + (items - 1) * std::mem::size_of::<pg_sys::ItemIdData>()).cast::<pg_sys::ItemIdData>();
        let (offset, length) = (item.lp_off() as usize, item.lp_len() as usize);
        if length == 0 || offset + length > special {
            return None;
        }
        Some((opaque.next, page.add(offset).cast()))
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
