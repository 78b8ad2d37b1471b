//! Finding the row a remote change names, for apply: by primary key, as
//! PostgreSQL's apply finds it (`RelationFindReplTupleByIndex`), in a
//! dirty snapshot, so a row written earlier in this transaction or by one
//! still in progress is seen; the latter is waited for and the search made
//! again. The index scan is opened once for a run of changes to one table
//! and only given new keys per row.

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
}

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
        Ok(KeyFinder { rel, probe, index, scan, dirty, keys })
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
