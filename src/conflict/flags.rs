//! Flags edgesync's own writes raise for the conflict trigger of this
//! backend: "let this table's rows through" (a settling write that already
//! carries its version), "judge this insert as an update of a missing row"
//! (apply recreating a row), "no row has this insert's key" (apply looked),
//! "stamp this resolution after that version" (a DBA's resolution), and
//! "this delete came with these versions" (apply handing over what the
//! deleting node sent). Each is set by a guard and cleared when it drops.

use std::cell::RefCell;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, Ordering};

use pgrx::pg_sys;

use crate::model::conflict::version::{RowStamp, Version};

/// The table edgesync is writing a row of to settle a conflict inside the
/// apply path (0: none): that row already carries the version it must keep.
static PASS_THROUGH: AtomicU32 = AtomicU32::new(0);

/// The table whose missing row edgesync's apply is inserting in place of a
/// remote update (0: none): the trigger judges that insert as the update it
/// is (update_missing, or update_deleted against a tombstone).
static MISSING_ROW_UPDATE: AtomicU32 = AtomicU32::new(0);

/// The table and command whose insert apply has just looked for by key,
/// finding no row (relid 0: none): the trigger need not look again.
static KEY_ABSENT_RELID: AtomicU32 = AtomicU32::new(0);
static KEY_ABSENT_COMMAND: AtomicU32 = AtomicU32::new(0);

/// The table a DBA's resolution is being written to (0: none), and the
/// previous version to put in its fresh stamp (the other node's version, so
/// the write is the next change there, not a new conflict).
static RESOLUTION_RELID: AtomicU32 = AtomicU32::new(0);
static RESOLUTION_PREV_HLC: AtomicI64 = AtomicI64::new(0);
static RESOLUTION_PREV_NODE: AtomicI32 = AtomicI32::new(0);

/// While alive, `flag` names table `relid` (so the trigger treats its rows
/// specially); cleared on drop, on unwind too.
pub struct TableFlag(&'static AtomicU32);

impl TableFlag {
    fn set(flag: &'static AtomicU32, relid: pg_sys::Oid) -> TableFlag {
        flag.store(relid.to_u32(), Ordering::Relaxed);
        TableFlag(flag)
    }

    /// The trigger lets rows of `relid` through unchanged.
    pub fn pass_through(relid: pg_sys::Oid) -> TableFlag {
        TableFlag::set(&PASS_THROUGH, relid)
    }

    /// Remote inserts into `relid` are judged as updates of a missing row.
    pub fn missing_row_update(relid: pg_sys::Oid) -> TableFlag {
        TableFlag::set(&MISSING_ROW_UPDATE, relid)
    }
}

impl Drop for TableFlag {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// While alive, the row apply inserts into `relid` in the current command
/// is known to have a key no row here has (apply looked in a dirty
/// snapshot, which sees more than the trigger's own look would). Bound to
/// the command: an insert a trigger makes meanwhile runs in a later one.
pub struct KeyAbsent(());

impl KeyAbsent {
    pub fn set(relid: pg_sys::Oid) -> KeyAbsent {
        // SAFETY: reads this backend's command counter, in a transaction.
        KEY_ABSENT_COMMAND.store(unsafe { pg_sys::GetCurrentCommandId(false) }, Ordering::Relaxed);
        KEY_ABSENT_RELID.store(relid.to_u32(), Ordering::Relaxed);
        KeyAbsent(())
    }
}

impl Drop for KeyAbsent {
    fn drop(&mut self) {
        KEY_ABSENT_RELID.store(0, Ordering::Relaxed);
    }
}

/// Is the row being inserted into `relid` one apply found no row with its key for?
pub(super) fn key_known_absent(relid: pg_sys::Oid) -> bool {
    let absent = KEY_ABSENT_RELID.load(Ordering::Relaxed);
    // SAFETY: reads this backend's command counter, in a transaction.
    absent != 0 && absent == relid.to_u32() && KEY_ABSENT_COMMAND.load(Ordering::Relaxed) == unsafe { pg_sys::GetCurrentCommandId(false) }
}

/// While alive, local stamps of rows of `relid` use `prev` as their previous
/// version (writes that cascade to other tables are stamped normally).
pub struct ResolutionWrite(());

impl ResolutionWrite {
    pub fn begin(relid: pg_sys::Oid, prev: Option<Version>) -> ResolutionWrite {
        if let Some(p) = prev {
            RESOLUTION_PREV_HLC.store(p.hlc, Ordering::Relaxed);
            RESOLUTION_PREV_NODE.store(p.node, Ordering::Relaxed);
            RESOLUTION_RELID.store(relid.to_u32(), Ordering::Relaxed);
        }
        ResolutionWrite(())
    }
}

impl Drop for ResolutionWrite {
    fn drop(&mut self) {
        RESOLUTION_RELID.store(0, Ordering::Relaxed);
    }
}

/// Does the trigger let rows of `relid` through unchanged (`TableFlag::pass_through`)?
pub(super) fn passes_through(relid: pg_sys::Oid) -> bool {
    let through = PASS_THROUGH.load(Ordering::Relaxed);
    through != 0 && through == relid.to_u32()
}

/// Is an insert into `relid` apply's stand-in for an update of a missing row?
pub(super) fn is_missing_row_update(relid: pg_sys::Oid) -> bool {
    MISSING_ROW_UPDATE.load(Ordering::Relaxed) == relid.to_u32()
}

/// The previous version a DBA's resolution written to `relid` is stamped
/// after; None when no resolution is being written there.
pub(super) fn resolution_prev(relid: pg_sys::Oid) -> Option<Version> {
    let target = RESOLUTION_RELID.load(Ordering::Relaxed);
    (target != 0 && target == relid.to_u32())
        .then(|| Version::new(RESOLUTION_PREV_HLC.load(Ordering::Relaxed), RESOLUTION_PREV_NODE.load(Ordering::Relaxed)))
}

thread_local! {
    /// The table, key object and versions of the remote delete apply is
    /// writing (None: none, or it came without versions).
    static REMOTE_DELETE: RefCell<Option<(u32, serde_json::Value, RowStamp)>> = const { RefCell::new(None) };
}

/// While alive, a remote delete of the row of `relid` whose key object is
/// `key` is judged with `stamp` (the delete's version, and the version it removed).
pub struct RemoteDeleteStamp(());

impl RemoteDeleteStamp {
    pub fn set(relid: pg_sys::Oid, key: serde_json::Value, stamp: RowStamp) -> RemoteDeleteStamp {
        REMOTE_DELETE.with(|d| *d.borrow_mut() = Some((relid.to_u32(), key, stamp)));
        RemoteDeleteStamp(())
    }

    /// Did the trigger meet a row for it (it takes the versions when it
    /// does, whether it then lets the delete through or skips it)?
    pub fn met_a_row(&self) -> bool {
        REMOTE_DELETE.with(|d| d.borrow().is_none())
    }
}

impl Drop for RemoteDeleteStamp {
    fn drop(&mut self) {
        REMOTE_DELETE.with(|d| d.borrow_mut().take());
    }
}

/// Take the key object and versions apply handed over for a delete from
/// `relid`, if any (the trigger checks the key is its row's).
pub(super) fn take_remote_delete_stamp(relid: pg_sys::Oid) -> Option<(serde_json::Value, RowStamp)> {
    REMOTE_DELETE.with(|d| {
        let mut d = d.borrow_mut();
        if d.as_ref().is_some_and(|(r, _, _)| *r == relid.to_u32()) {
            d.take().map(|(_, k, s)| (k, s))
        } else {
            None
        }
    })
}
