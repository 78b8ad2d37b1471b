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
//! after it is nobody's; and every page to its left holds keys at or
//! before its first one, so a key between two neighbours on it is nobody's
//! either. Rows appended in about key order (readings, sequences, even
//! from several writers whose commits overtake each other) are then not
//! looked up with a descent each. The answer holds at the moment it is
//! read, as the descent's does; anything but a live rightmost leaf, or a
//! key on it or before it, sends the question to the scan. The conflict
//! trigger's own probe (`probe.rs`) asks the same page first.

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
    probe: std::rc::Rc<KeyProbe>,
    index: pg_sys::Relation,
    scan: pg_sys::IndexScanDesc,
    /// Boxed: the scan reads it through a pointer for its whole life.
    dirty: Box<pg_sys::SnapshotData>,
    keys: Vec<pg_sys::ScanKeyData>,
    /// The values of `keys`, for the last leaf's comparisons.
    values: Vec<pg_sys::Datum>,
    /// Where the index ends (None: its key cannot be compared here).
    last_leaf: Option<LastLeaf>,
}

/// The index's rightmost leaf page as last seen, and how its keys compare.
pub(super) struct LastLeaf {
    /// None: not seen yet (the index was empty).
    block: Option<pg_sys::BlockNumber>,
    order: KeyOrder,
}

/// How a key compares with an index entry.
enum KeyOrder {
    /// A single `smallint`, `integer` or `bigint` column (the usual key of
    /// rows appended in order), of this width in bytes: compared as
    /// integers read in place, with no function call per comparison.
    Integer(usize),
    /// Per key column, the B-tree comparison function of its operator
    /// family, and its collation.
    Functions(Vec<(pg_sys::FmgrInfo, pg_sys::Oid)>),
}

/// Where a B-tree entry without NULLs keeps its first column
/// (`IndexInfoFindDataOffset`): after the tuple's header, aligned as
/// strictly as any type.
const ENTRY_DATA: usize = std::mem::size_of::<pg_sys::IndexTupleData>().next_multiple_of(pg_sys::MAXIMUM_ALIGNOF as usize);

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
        let last_leaf = unsafe { LastLeaf::of(index, keys.len(), pg_sys::CurrentMemoryContext) };
        Ok(KeyFinder { rel, probe, index, scan, dirty, keys, values: Vec::new(), last_leaf })
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
        // a key after every key, or between two, on the last leaf is nobody's
        if lock == RowLock::None {
            self.values.clear();
            self.values.extend(self.keys.iter().map(|key| key.sk_argument));
            // SAFETY: the values of a key of the open index.
            if self.last_leaf.as_mut().is_some_and(|leaf| unsafe { leaf.rules_out(self.index, &self.values) }) {
                return Ok(false);
            }
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

impl LastLeaf {
    /// Has no entry of `index` the key `key` (a value per key column), as
    /// its rightmost leaf page says? False when that cannot be told there
    /// (and the page is looked for again next time).
    ///
    /// # Safety
    /// `index` must be the open B-tree index this was made for, `key`
    /// the values of a key of it.
    pub(super) unsafe fn rules_out(&mut self, index: pg_sys::Relation, key: &[pg_sys::Datum]) -> bool {
        // an index empty when this was made has its first page once a row is in
        // SAFETY: the caller's guarantee.
        let Some(mut block) = self.block.or_else(|| unsafe { crate::compat::btree_rightmost_leaf(index) }) else { return false };
        for _ in 0..MAX_HOPS {
            // SAFETY: a page of the open index, pinned and share-locked
            // while it is read, released on every path.
            let seen = unsafe {
                let buffer = pg_sys::ReadBuffer(index, block);
                pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
                let seen = LeafPage::read(buffer).map(|leaf| (leaf.next, leaf.next == P_NONE && self.absent_from(index, key, &leaf)));
                pg_sys::UnlockReleaseBuffer(buffer);
                seen
            };
            let Some((next, absent)) = seen else { break };
            if next == P_NONE {
                self.block = Some(block);
                return absent;
            }
            // split since it was seen: its right sibling holds the later keys
            block = next;
        }
        self.block = None;
        false
    }

    /// Is `key` on none of the entries of the rightmost leaf
    /// `leaf`, and after its first? Then no entry of the index has it:
    /// every page to the left holds keys at or before that first one.
    /// Keys appended in order sort after the last entry (one comparison);
    /// keys committed a little out of order fall between two neighbours.
    ///
    /// # Safety
    /// `leaf` must be a page of `index` still locked, `key` a key's values.
    unsafe fn absent_from(&mut self, index: pg_sys::Relation, key: &[pg_sys::Datum], leaf: &LeafPage) -> bool {
        use std::cmp::Ordering::{Greater, Less};
        // SAFETY: the caller's guarantees; `n` counts the page's entries from 1.
        let mut order = |n: usize| unsafe { leaf.entry(n).and_then(|(entry, length)| self.compare(index, key, entry, length)) };
        match order(leaf.entries) {
            Some(Greater) => return true,
            Some(Less) => {}
            _ => return false, // the same key (a row, or a dead version of one), or not comparable
        }
        if order(1) != Some(Greater) {
            return false; // at or before the page's first key: it may be on a page to the left
        }
        // the key sorts after entry `low` and before entry `high`
        let (mut low, mut high) = (1, leaf.entries);
        while high - low > 1 {
            let middle = (low + high) / 2;
            match order(middle) {
                Some(Greater) => low = middle,
                Some(Less) => high = middle,
                _ => return false,
            }
        }
        true
    }

    /// The rightmost leaf of B-tree `index` and how its first `nkeys`
    /// columns compare, any function kept in `memory` (None: a column has
    /// no comparison function).
    ///
    /// # Safety
    /// `index` must be an open B-tree index with `nkeys` key columns;
    /// `memory` a memory context that lives as long as the result.
    pub(super) unsafe fn of(index: pg_sys::Relation, nkeys: usize, memory: pg_sys::MemoryContext) -> Option<LastLeaf> {
        // SAFETY: the caller's guarantees.
        let order = unsafe { key_order(index, nkeys, memory) }?;
        // SAFETY: the caller's guarantee.
        let block = unsafe { crate::compat::btree_rightmost_leaf(index) };
        Some(LastLeaf { block, order })
    }

    /// How `key` sorts against index tuple `entry`, `length` bytes long
    /// (None: the entry has a NULL, which a primary key's never has, or is
    /// too short to hold the key).
    ///
    /// # Safety
    /// `entry` must be a tuple of `index` on a page still locked, `key` a
    /// key's values.
    unsafe fn compare(&mut self, index: pg_sys::Relation, key: &[pg_sys::Datum], entry: pg_sys::IndexTuple, length: usize) -> Option<std::cmp::Ordering> {
        const INDEX_NULL_MASK: u16 = 0x8000;
        // SAFETY: the caller's guarantee: a tuple on a locked page.
        if unsafe { (*entry).t_info } & INDEX_NULL_MASK != 0 {
            return None;
        }
        match &mut self.order {
            KeyOrder::Integer(width) => {
                let width = *width;
                if length < ENTRY_DATA + width {
                    return None;
                }
                // SAFETY: the entry holds its first column's `width` bytes
                // at ENTRY_DATA (no NULLs), inside its `length` checked above.
                let theirs = unsafe { read_integer(entry.cast::<u8>().add(ENTRY_DATA), width) };
                let ours = match width {
                    2 => i64::from(key[0].value() as i16),
                    4 => i64::from(key[0].value() as i32),
                    _ => key[0].value() as i64,
                };
                Some(ours.cmp(&theirs))
            }
            KeyOrder::Functions(functions) => {
                for (i, (function, collation)) in functions.iter_mut().enumerate() {
                    // SAFETY: a key column of a tuple with no NULL is read at
                    // its place; the function compares two values of the
                    // column's operator class.
                    let order = unsafe {
                        let theirs = pg_sys::nocache_index_getattr(entry, i as i32 + 1, (*index).rd_att);
                        pg_sys::FunctionCall2Coll(function, *collation, key[i], theirs).value() as i32
                    };
                    if order != 0 {
                        return Some(order.cmp(&0));
                    }
                }
                Some(std::cmp::Ordering::Equal)
            }
        }
    }
}

/// How keys of B-tree `index` (its first `nkeys` columns) compare: in
/// place for a single integer column, else through each column's B-tree
/// function, kept in `memory` (None: a column has no such function).
///
/// # Safety
/// As `LastLeaf::of`'s.
unsafe fn key_order(index: pg_sys::Relation, nkeys: usize, memory: pg_sys::MemoryContext) -> Option<KeyOrder> {
    let mut functions = Vec::with_capacity(nkeys);
    for i in 0..nkeys {
        // SAFETY: `i` is below the index's number of key columns, the
        // length of its relcache arrays; catalog lookups in a transaction.
        let (proc_oid, collation) = unsafe {
            let (family, input) = (*(*index).rd_opfamily.add(i), *(*index).rd_opcintype.add(i));
            (pg_sys::get_opfamily_proc(family, input, input, BTORDER_PROC), *(*index).rd_indcollation.add(i))
        };
        if proc_oid == pg_sys::InvalidOid {
            return None;
        }
        // SAFETY: an open index with `nkeys` key columns.
        if let Some(width) = unsafe { integer_width(index, nkeys, proc_oid) } {
            return Some(KeyOrder::Integer(width));
        }
        // SAFETY: a function of the operator family; its cache lives in
        // `memory`, as long as the caller keeps the result.
        let function = unsafe {
            let mut function: pg_sys::FmgrInfo = std::mem::zeroed();
            pg_sys::fmgr_info_cxt(proc_oid, &mut function, memory);
            function
        };
        functions.push((function, collation));
    }
    Some(KeyOrder::Functions(functions))
}

/// The width of `index`'s only key column when it is a `smallint`,
/// `integer` or `bigint` compared by its own B-tree function; None for
/// any other key.
///
/// # Safety
/// `index` must be an open index with `nkeys` key columns.
unsafe fn integer_width(index: pg_sys::Relation, nkeys: usize, proc_oid: pg_sys::Oid) -> Option<usize> {
    let width = match proc_oid.to_u32() {
        pg_sys::F_BTINT2CMP => 2,
        pg_sys::F_BTINT4CMP => 4,
        pg_sys::F_BTINT8CMP => 8,
        _ => return None,
    };
    // SAFETY: the caller's guarantee: an open index's tuple descriptor.
    let columns = unsafe { pgrx::PgTupleDesc::from_pg_unchecked((*index).rd_att) };
    let column = columns.get(0)?;
    (nkeys == 1 && column.attbyval && column.attlen as usize == width).then_some(width)
}

/// A signed integer of `width` bytes (2, 4 or 8) in this machine's byte order.
///
/// # Safety
/// `at` must point at `width` readable bytes.
unsafe fn read_integer(at: *const u8, width: usize) -> i64 {
    // SAFETY: the caller's guarantee; read unaligned, as any byte may start it.
    unsafe {
        match width {
            2 => i64::from(at.cast::<i16>().read_unaligned()),
            4 => i64::from(at.cast::<i32>().read_unaligned()),
            _ => at.cast::<i64>().read_unaligned(),
        }
    }
}

/// A live leaf page of a B-tree, read while its buffer is locked.
struct LeafPage {
    page: *const u8,
    /// The right sibling (P_NONE: none, the rightmost leaf).
    next: pg_sys::BlockNumber,
    /// How many line pointers the page has (at least one).
    entries: usize,
    /// Where the page's trailer starts: entries end before it.
    special: usize,
}

const PAGE_HEADER: usize = std::mem::offset_of!(pg_sys::PageHeaderData, pd_linp);

impl LeafPage {
    /// The page of `buffer` if it is a live leaf with entries; None for
    /// any other page.
    ///
    /// # Safety
    /// `buffer` must be a pinned and share-locked page of a B-tree index,
    /// and stay so while the result is used.
    unsafe fn read(buffer: pg_sys::Buffer) -> Option<LeafPage> {
        if buffer <= 0 {
            return None; // a local buffer: not an index apply writes
        }
        // SAFETY: a shared buffer's page is at its place in the buffer pool
        // (BufferGetPage); the page is locked, so its header and trailer
        // are consistent; the trailer's place is checked against the page.
        unsafe {
            let page = pg_sys::BufferBlocks.add((buffer as usize - 1) * pg_sys::BLCKSZ as usize).cast_const().cast::<u8>();
            let header = &*page.cast::<pg_sys::PageHeaderData>();
            let special = header.pd_special as usize;
            if special + std::mem::size_of::<BtPageOpaque>() > pg_sys::BLCKSZ as usize {
                return None;
            }
            let opaque = &*page.add(special).cast::<BtPageOpaque>();
            if opaque.flags & BTP_LEAF == 0 || opaque.flags & (BTP_DELETED | BTP_HALF_DEAD | BTP_INCOMPLETE_SPLIT) != 0 {
                return None;
            }
            let entries = (header.pd_lower as usize).saturating_sub(PAGE_HEADER) / std::mem::size_of::<pg_sys::ItemIdData>();
            (entries > 0).then_some(LeafPage { page, next: opaque.next, entries, special })
        }
    }

    /// Entry `n` (counted from 1, as line pointers are) and its length;
    /// None when its line pointer does not point at a tuple inside the page.
    ///
    /// # Safety
    /// The page must still be locked; `n` between 1 and `entries`.
    unsafe fn entry(&self, n: usize) -> Option<(pg_sys::IndexTuple, usize)> {
        // SAFETY: the caller's guarantees: line pointer `n` lies below
        // pd_lower; the tuple it names is checked to end before the trailer.
        unsafe {
            let item = &*self.page.add(PAGE_HEADER + (n - 1) * std::mem::size_of::<pg_sys::ItemIdData>()).cast::<pg_sys::ItemIdData>();
            let (offset, length) = (item.lp_off() as usize, item.lp_len() as usize);
            if length == 0 || offset < PAGE_HEADER || offset + length > self.special {
                return None;
            }
            Some((self.page.add(offset).cast_mut().cast(), length))
        }
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
