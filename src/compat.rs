//! Every difference between the PostgreSQL versions edgesync builds for
//! (15 and 18), in one place: callers use these and never `cfg` a version
//! themselves.

use pgrx::pg_sys;

/// pgoutput takes the option `origin` (`none`: leave out changes that came
/// from a replication origin) from PostgreSQL 16 on; on 15 the forwarder
/// drops such transactions itself.
pub const PGOUTPUT_FILTERS_ORIGIN: bool = pg_sys::PG_VERSION_NUM >= 160000;

/// The table's primary-key index (InvalidOid when it has none).
///
/// # Safety
/// `rel` must be an open relation.
pub unsafe fn primary_key_index(rel: pg_sys::Relation) -> pg_sys::Oid {
    // SAFETY: the caller keeps `rel` open; 16 added the `deferrable_ok` flag.
    #[cfg(feature = "pg15")]
    let index = unsafe { pg_sys::RelationGetPrimaryKeyIndex(rel) };
    // SAFETY: as above.
    #[cfg(not(feature = "pg15"))]
    let index = unsafe { pg_sys::RelationGetPrimaryKeyIndex(rel, false) };
    index
}

/// Begin an index scan with `nkeys` scan keys and no order-by keys.
///
/// # Safety
/// `heap` and `index` must be open, `index` an index of `heap`, and
/// `snapshot` valid for the scan's life.
pub unsafe fn index_beginscan(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    nkeys: i32,
) -> pg_sys::IndexScanDesc {
    // SAFETY: the caller's guarantees are the function's requirements.
    #[cfg(feature = "pg15")]
    let scan = unsafe { pg_sys::index_beginscan(heap, index, snapshot, nkeys, 0) };
    // SAFETY: as above; 18 added the instrumentation argument (NULL: none).
    #[cfg(not(feature = "pg15"))]
    let scan = unsafe { pg_sys::index_beginscan(heap, index, snapshot, std::ptr::null_mut(), nkeys, 0) };
    scan
}

/// Make this backend's replication-origin session apply as `origin`.
///
/// # Safety
/// `origin` must exist, and no session may be set up in this backend.
pub unsafe fn replorigin_session_setup(origin: pg_sys::RepOriginId) {
    // SAFETY: the caller's guarantees are the function's requirements.
    #[cfg(feature = "pg15")]
    unsafe {
        pg_sys::replorigin_session_setup(origin)
    };
    // SAFETY: as above; 16 added the pid of a process to share the session with (0: none).
    #[cfg(not(feature = "pg15"))]
    unsafe {
        pg_sys::replorigin_session_setup(origin, 0)
    };
}

/// Install `handler` for `signal` in this process.
///
/// # Safety
/// `handler` must be safe to run inside a signal handler.
pub unsafe fn set_signal_handler(signal: u32, handler: unsafe extern "C-unwind" fn(std::ffi::c_int)) {
    // SAFETY: the caller vouches for the handler; pqsignal only records it.
    #[cfg(feature = "pg15")]
    unsafe {
        pg_sys::pqsignal(signal as i32, Some(handler));
    }
    // SAFETY: as above; the bindings of 18 name the backend's variant pqsignal_be.
    #[cfg(not(feature = "pg15"))]
    unsafe {
        pg_sys::pqsignal_be(signal as i32, Some(handler));
    }
}

// `LogLogicalMessage` is not in pgrx's bindings (calls go through
// `pg_guard_ffi_boundary`, so an ERROR in it becomes a Rust panic); 17 added `flush`.
#[cfg(feature = "pg15")]
unsafe extern "C-unwind" {
    fn LogLogicalMessage(prefix: *const std::ffi::c_char, message: *const std::ffi::c_char, size: usize, transactional: bool) -> u64;
}
#[cfg(not(feature = "pg15"))]
unsafe extern "C-unwind" {
    fn LogLogicalMessage(
        prefix: *const std::ffi::c_char,
        message: *const std::ffi::c_char,
        size: usize,
        transactional: bool,
        flush: bool,
    ) -> u64;
}

/// Write a transactional logical decoding message (decoded in its
/// transaction, in place), when WAL is logical; without logical WAL no
/// decoder could ever read it.
pub fn emit_transactional_message(prefix: &std::ffi::CStr, content: &[u8]) {
    // SAFETY: a plain global of this backend, set at start from the setting.
    if unsafe { pg_sys::wal_level } < pg_sys::WalLevel::WAL_LEVEL_LOGICAL as i32 {
        return;
    }
    let message = content.as_ptr().cast();
    // SAFETY: `prefix` is NUL-terminated and `message` points at `content.len()`
    // bytes, both alive for the call; a transactional message needs a
    // transaction, which the trigger that calls this runs in; called from
    // the backend's main thread, with an ERROR caught at the boundary.
    #[cfg(feature = "pg15")]
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| LogLogicalMessage(prefix.as_ptr(), message, content.len(), true))
    };
    // SAFETY: as above; `flush` false: the commit flushes it with the transaction.
    #[cfg(not(feature = "pg15"))]
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| LogLogicalMessage(prefix.as_ptr(), message, content.len(), true, false))
    };
}

/// An executor state whose range table holds the open table `rel` alone
/// (entry 1), for writing its rows outside a plan, as PostgreSQL's apply
/// worker builds one (`create_edata_for_relation`).
///
/// # Safety
/// `rel` must be open, and stay open while the state is used; in a transaction.
pub unsafe fn executor_state_for(rel: pg_sys::Relation) -> *mut pg_sys::EState {
    // SAFETY: the caller's guarantees; every node is palloc'd and filled
    // before the range table takes it, as makeNode would.
    unsafe {
        let estate = pg_sys::CreateExecutorState();
        let rte = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>()).cast::<pg_sys::RangeTblEntry>();
        (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
        (*rte).rtekind = pg_sys::RTEKind::RTE_RELATION;
        (*rte).relid = (*rel).rd_id;
        (*rte).relkind = (*(*rel).rd_rel).relkind;
        (*rte).rellockmode = pg_sys::AccessShareLock as i32;
        let range_table = pg_sys::lappend(std::ptr::null_mut(), rte.cast());
        // 16 moved the privileges into their own list; 18 added the unpruned relations
        #[cfg(feature = "pg15")]
        pg_sys::ExecInitRangeTable(estate, range_table);
        #[cfg(not(feature = "pg15"))]
        {
            let mut permissions = std::ptr::null_mut();
            pg_sys::addRTEPermissionInfo(&mut permissions, rte);
            pg_sys::ExecInitRangeTable(estate, range_table, permissions, pg_sys::bms_make_singleton(1));
        }
        estate
    }
}

/// Record `columns` (attribute numbers offset by
/// FirstLowInvalidHeapAttributeNumber) as the columns an update of range
/// table entry 1 of `estate` sets: column triggers (`UPDATE OF`) and the
/// indexes' "unchanged" hint go by them.
///
/// # Safety
/// `estate` must come from `executor_state_for`; `columns` must be
/// allocated in its query context.
pub unsafe fn set_updated_columns(estate: *mut pg_sys::EState, columns: *mut pg_sys::Bitmapset) {
    // SAFETY: entry 1 exists (executor_state_for made it); on 16 and later
    // its privileges are the first (and only) entry of es_rteperminfos.
    unsafe {
        #[cfg(feature = "pg15")]
        {
            (*pg_sys::exec_rt_fetch(1, estate)).updatedCols = columns;
        }
        #[cfg(not(feature = "pg15"))]
        {
            let permissions = pg_sys::list_nth((*estate).es_rteperminfos, 0).cast::<pg_sys::RTEPermissionInfo>();
            (*permissions).updatedCols = columns;
        }
    }
}

/// Set up `epq` for single-row writes of `estate` with no plan to recheck
/// (the rows are locked before they are written).
///
/// # Safety
/// `epq` must be writable and outlive its use; `estate` valid.
pub unsafe fn eval_plan_qual_init(epq: *mut pg_sys::EPQState, estate: *mut pg_sys::EState) {
    // SAFETY: the caller's guarantees; 16 added the result relations (NIL).
    #[cfg(feature = "pg15")]
    unsafe {
        pg_sys::EvalPlanQualInit(epq, estate, std::ptr::null_mut(), std::ptr::null_mut(), -1)
    };
    // SAFETY: as above.
    #[cfg(not(feature = "pg15"))]
    unsafe {
        pg_sys::EvalPlanQualInit(epq, estate, std::ptr::null_mut(), std::ptr::null_mut(), -1, std::ptr::null_mut())
    };
}

// nbtree's `_bt_get_endpoint` is not in pgrx's bindings (called through
// `pg_guard_ffi_boundary`); 17 dropped its snapshot argument (old-snapshot checks).
// SAFETY: each declaration matches access/nbtree.h of the versions it is built for.
#[cfg(feature = "pg15")]
unsafe extern "C-unwind" {
    fn _bt_get_endpoint(rel: pg_sys::Relation, level: u32, rightmost: bool, snapshot: pg_sys::Snapshot) -> pg_sys::Buffer;
}
#[cfg(not(feature = "pg15"))]
unsafe extern "C-unwind" {
    fn _bt_get_endpoint(rel: pg_sys::Relation, level: u32, rightmost: bool) -> pg_sys::Buffer;
}

/// The block of the rightmost leaf page of btree index `index` (None: the
/// index is empty).
///
/// # Safety
/// `index` must be an open btree index; in a transaction.
pub unsafe fn btree_rightmost_leaf(index: pg_sys::Relation) -> Option<pg_sys::BlockNumber> {
    // SAFETY: the caller's guarantees; the page comes back pinned and
    // share-locked (or InvalidBuffer), released here at once. On 15 no
    // snapshot is given: it only serves old-snapshot checks.
    unsafe {
        #[cfg(feature = "pg15")]
        let buffer = pg_sys::ffi::pg_guard_ffi_boundary(|| _bt_get_endpoint(index, 0, true, std::ptr::null_mut()));
        #[cfg(not(feature = "pg15"))]
        let buffer = pg_sys::ffi::pg_guard_ffi_boundary(|| _bt_get_endpoint(index, 0, true));
        if buffer == pg_sys::InvalidBuffer as pg_sys::Buffer {
            return None;
        }
        let block = pg_sys::BufferGetBlockNumber(buffer);
        pg_sys::UnlockReleaseBuffer(buffer);
        Some(block)
    }
}

/// Take a replication slot for this process (MyReplicationSlot), or raise
/// an ERROR if another process has it; 18 added `error_if_invalid`.
pub fn acquire_slot(name: &std::ffi::CStr) {
    // SAFETY: a NUL-terminated name alive for the call; `nowait`: an ERROR
    // rather than a wait when the slot is active elsewhere.
    #[cfg(feature = "pg15")]
    unsafe {
        pg_sys::ReplicationSlotAcquire(name.as_ptr(), true)
    };
    // SAFETY: as above; an invalidated slot raises an ERROR too.
    #[cfg(not(feature = "pg15"))]
    unsafe {
        pg_sys::ReplicationSlotAcquire(name.as_ptr(), true, true)
    };
}

/// The number of the file that holds `rel` now (TRUNCATE and rewrites change it).
///
/// # Safety
/// `rel` must be an open relation.
pub unsafe fn relation_file(rel: pg_sys::Relation) -> u32 {
    // SAFETY: the caller's guarantee: an open relation's relcache entry.
    #[cfg(feature = "pg15")]
    let file = unsafe { (*rel).rd_node.relNode };
    // SAFETY: as above.
    #[cfg(not(feature = "pg15"))]
    let file = unsafe { (*rel).rd_locator.relNumber };
    file.into()
}
