//! Decoding a slot inside the forwarder's own process.
//!
//! A walsender decodes and then sends every pgoutput message on its own:
//! a `send` and a `recv` per message in the walsender, a `recv` and a copy
//! in the forwarder, three messages for each single-row transaction. On a
//! catch-up that costs the edge about as much CPU as the decoding itself.
//! Here the forwarder holds the slot (as `pg_logical_slot_peek_binary_changes`
//! does) and keeps one decoding context from one read to the next (as a
//! walsender does), so each WAL record is decoded once and its messages
//! land in the forwarder's memory with no system call at all.
//!
//! Rules this follows, from PostgreSQL's own users of the same calls:
//! - reading starts at the slot's restart point, and the context skips
//!   transactions that committed before the slot's confirmed position;
//! - only flushed WAL is read: the page reader says "not yet" past the
//!   flush point, and the reader starts again from the last whole record;
//! - the decoding context is made inside a transaction (as the SQL peek
//!   makes it), so the process is never marked PROC_IN_LOGICAL_DECODING:
//!   that mark suits a walsender, which runs no transactions of its own,
//!   but would hide this process's own transactions from other backends'
//!   snapshots;
//! - decoding runs outside any transaction, as in a walsender: the reorder
//!   buffer opens (and aborts) one of its own for each transaction it hands
//!   to pgoutput;
//! - catalog caches filled under decoding's historic snapshots are thrown
//!   away before the process reads the catalogs for itself again, and the
//!   other way round (`switch_to_decoding`, `leave_decoding`);
//! - the slot moves through `LogicalConfirmReceivedLocation`, the call a
//!   walsender makes for a standby status update, which also moves the
//!   restart point once a running-transactions record was decoded.
//!
//! An ERROR inside decoding (WAL removed, a slot invalidated) ends the
//! forwarder as it ends a walsender; the slot is released at exit, and the
//! launcher starts the forwarder again.

use std::cell::Cell;
use std::ffi::{c_char, c_int, CString};

use pgrx::prelude::*;

// SAFETY: these declarations match the C prototypes in replication/decode.h
// and access/xlogutils.h, the same in 15 and 18; calls go through
// `pg_guard_ffi_boundary` or are made by PostgreSQL's own WAL reader.
unsafe extern "C-unwind" {
    // replication/decode.h, which pgrx's bindings leave out
    fn LogicalDecodingProcessRecord(ctx: *mut pg_sys::LogicalDecodingContext, record: *mut pg_sys::XLogReaderState);
    // the WAL reader calls these itself: the C functions, not pgrx's wrappers
    fn wal_segment_open(state: *mut pg_sys::XLogReaderState, segment: pg_sys::XLogSegNo, timeline: *mut pg_sys::TimeLineID);
    fn wal_segment_close(state: *mut pg_sys::XLogReaderState);
}

thread_local! {
    /// Whose entries the catalog caches may hold: decoding's, read under a
    /// historic snapshot (true), or the process's own (false).
    static CACHES_HISTORIC: Cell<bool> = const { Cell::new(false) };
}

/// At the start of a transaction of the process's own, before it reads
/// the catalogs: forget what decoding put in the caches.
pub fn leave_decoding() {
    if CACHES_HISTORIC.with(|c| c.replace(false)) {
        // SAFETY: in a transaction (as pg_logical_slot_peek_binary_changes
        // calls it), outside decoding, in the backend's main thread.
        unsafe { pg_sys::InvalidateSystemCaches() };
    }
}

/// Before decoding: forget what the process's own reads put in the caches.
fn switch_to_decoding() {
    if !CACHES_HISTORIC.with(|c| c.replace(true)) {
        // SAFETY: outside any transaction (decoding runs outside one), so a
        // short one of its own holds the invalidation, as the SQL peek's does.
        unsafe {
            pg_sys::StartTransactionCommand();
            pg_sys::InvalidateSystemCaches();
            pg_sys::CommitTransactionCommand();
        }
    }
}

/// What pgoutput wrote, in order: each message's bytes.
#[derive(Default)]
struct Sink {
    messages: Vec<Vec<u8>>,
}

pub struct LocalDecoder {
    ctx: *mut pg_sys::LogicalDecodingContext,
    /// Holds the output plugin's options, and is current while decoding:
    /// the WAL reader allocates its buffers lazily in the current context
    /// and keeps them, so this context lives as long as the decoding one.
    memory: pg_sys::MemoryContext,
    sink: Box<Sink>,
    /// The end of the last WAL record decoded: where reading goes on.
    read_upto: u64,
    /// Where decoding started (the slot's restart point).
    started_at: u64,
    /// The flush point at which the next record was found to reach past
    /// it: nothing more to decode until the flush point moves.
    stopped_at_flush: u64,
}

impl LocalDecoder {
    /// Take `slot` and start decoding it with pgoutput and `options`.
    /// Err (nothing held) when another process has the slot.
    pub fn open(slot: &str, options: &[(&str, &str)]) -> Result<LocalDecoder, String> {
        let name = CString::new(slot).map_err(|e| e.to_string())?;
        let options = options
            .iter()
            .map(|(k, v)| Ok((CString::new(*k)?, CString::new(*v)?)))
            .collect::<Result<Vec<_>, std::ffi::NulError>>()
            .map_err(|e| e.to_string())?;
        if let Some(pid) = slot_holder(&name) {
            return Err(format!("replication slot \"{slot}\" is active for PID {pid}"));
        }
        // SAFETY: TopMemoryContext lives as long as the process; the new
        // context is deleted in `Drop`.
        let memory = unsafe {
            pg_sys::AllocSetContextCreateInternal(pg_sys::TopMemoryContext, c"edgesync decoding".as_ptr(), 0, 8 * 1024, 8 * 1024 * 1024)
        };
        let mut sink = Box::<Sink>::default();
        // The context is made inside a transaction, as the SQL peek makes
        // it: made outside one (as a walsender does), it marks the process
        // PROC_IN_LOGICAL_DECODING for good, and other backends' snapshots
        // then leave out the xid of every transaction it runs afterwards,
        // treat its rows as aborted while it is in progress and mark them
        // so: the rows of a pulled batch applied here were lost that way.
        // SAFETY: a background worker between its own transactions.
        unsafe { pg_sys::StartTransactionCommand() };
        crate::compat::acquire_slot(&name);
        // SAFETY: we hold the slot (acquired above), in a transaction as the
        // SQL peek is; the options list and the context are made in
        // `memory`, which outlives the context (both go in Drop); the
        // routine is copied by the WAL reader; `sink` is boxed, so its
        // address stays what the write callback is given.
        let (ctx, started_at) = unsafe {
            let old = pg_sys::MemoryContextSwitchTo(memory);
            let mut list: *mut pg_sys::List = std::ptr::null_mut();
            for (key, value) in &options {
                let (key, value) = (pg_sys::pstrdup(key.as_ptr()), pg_sys::pstrdup(value.as_ptr()));
                let def = pg_sys::makeDefElem(key, pg_sys::makeString(value).cast(), -1);
                list = pg_sys::lappend(list, def.cast());
            }
            let mut routine = pg_sys::XLogReaderRoutine {
                page_read: Some(read_flushed_page),
                segment_open: Some(wal_segment_open),
                segment_close: Some(wal_segment_close),
            };
            let ctx = pg_sys::CreateDecodingContext(0, list, false, &mut routine, Some(prepare_write), Some(write), None);
            pg_sys::MemoryContextSwitchTo(old);
            (*ctx).output_writer_private = (&mut *sink as *mut Sink).cast();
            let restart = (*pg_sys::MyReplicationSlot).data.restart_lsn;
            pg_sys::XLogBeginRead((*ctx).reader, restart);
            pg_sys::CommitTransactionCommand();
            (ctx, restart)
        };
        Ok(LocalDecoder { ctx, memory, sink, read_upto: started_at, started_at, stopped_at_flush: 0 })
    }

    /// Where decoding started: the slot's restart point when it was taken.
    pub fn started_at(&self) -> u64 {
        self.started_at
    }

    /// The end of the last record decoded.
    pub fn read_upto(&self) -> u64 {
        self.read_upto
    }

    /// Whether flushed WAL waits past what was decoded.
    pub fn has_flushed(&self) -> bool {
        let flushed = flushed();
        flushed > self.read_upto && flushed != self.stopped_at_flush
    }

    /// Whether WAL was written past what was decoded, flushed or not (an
    /// asynchronous commit waits for the WAL writer; a round flushes it).
    pub fn has_written(&self) -> bool {
        // the end of the last record written, as a record's end reads (the
        // insert position may sit past a page header, past any record's end)
        // SAFETY: reads a shared WAL position under PostgreSQL's own locking.
        unsafe { pg_sys::GetXLogInsertEndRecPtr() > self.read_upto }
    }

    /// Decode at most `records` WAL records of what is flushed; returns
    /// the messages pgoutput wrote for them, in order.
    pub fn decode(&mut self, records: usize) -> Vec<Vec<u8>> {
        let flushed = flushed();
        switch_to_decoding();
        // SAFETY: `ctx` is live and its slot is ours; outside any
        // transaction (the reorder buffer opens its own); `memory` lives
        // as long as the reader that allocates in it.
        unsafe {
            let old = pg_sys::MemoryContextSwitchTo(self.memory);
            let reader = (*self.ctx).reader;
            for _ in 0..records {
                if self.read_upto >= flushed {
                    break;
                }
                let mut error: *mut c_char = std::ptr::null_mut();
                let record = pg_sys::XLogReadRecord(reader, &mut error);
                if !error.is_null() {
                    let message = std::ffi::CStr::from_ptr(error).to_string_lossy().into_owned();
                    let slot = std::ffi::CStr::from_ptr((*pg_sys::MyReplicationSlot).data.name.data.as_ptr()).to_string_lossy();
                    error!(
                        "edgesync: could not read WAL to decode replication slot \"{slot}\": {message}; the worker starts again in a few seconds; if the WAL is gone, edgesync.health shows the slot as lost"
                    );
                }
                if record.is_null() {
                    // it reaches past the flush point: read it again once that moved
                    pg_sys::XLogBeginRead(reader, self.read_upto);
                    self.stopped_at_flush = flushed;
                    break;
                }
                pg_sys::ffi::pg_guard_ffi_boundary(|| LogicalDecodingProcessRecord(self.ctx, reader));
                self.read_upto = (*reader).EndRecPtr;
            }
            pg_sys::MemoryContextSwitchTo(old);
        }
        std::mem::take(&mut self.sink.messages)
    }

    /// Everything up to `lsn` is safe with the peer: the slot moves there
    /// (and its restart point, as far as decoding found one).
    pub fn confirm(&mut self, lsn: u64) {
        // SAFETY: the slot is ours (MyReplicationSlot), outside a transaction.
        unsafe { pg_sys::LogicalConfirmReceivedLocation(lsn) };
    }
}

impl Drop for LocalDecoder {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // an ERROR is ending the worker, maybe from inside decoding: the
            // context may be half way through a change, and an ERROR raised
            // while freeing it would abort the server; the process's exit
            // releases the slot and its memory goes with the process
            return;
        }
        // SAFETY: the context and the slot are ours until here; freeing the
        // context calls pgoutput's shutdown and closes the WAL file; the
        // memory context is not used after. The caches keep their historic
        // mark: the next transaction of this process forgets them.
        unsafe {
            pg_sys::FreeDecodingContext(self.ctx);
            pg_sys::ReplicationSlotRelease();
            pg_sys::MemoryContextDelete(self.memory);
        }
    }
}

/// The PID of the process holding `slot`, if one does (a walsender still
/// ending, a DBA's peek). None: free, or no such slot (acquiring says why).
fn slot_holder(name: &CString) -> Option<i32> {
    // SAFETY: the lookup takes the control lock itself; slots live in
    // shared memory for the server's life, and active_pid is read once, as
    // a hint (acquiring checks it again under the slot's lock).
    unsafe {
        let slot = pg_sys::SearchNamedReplicationSlot(name.as_ptr(), true);
        let pid = if slot.is_null() { 0 } else { std::ptr::read_volatile(&(*slot).active_pid) };
        (pid != 0).then_some(pid)
    }
}

fn flushed() -> u64 {
    // SAFETY: reads shared WAL positions under PostgreSQL's own locking.
    unsafe { pg_sys::GetFlushRecPtr(std::ptr::null_mut()) }
}

/// The WAL reader's page source: a page of local WAL as far as it is
/// flushed, and "not yet" (-1) for anything past that, where
/// `read_local_xlog_page` would sleep until it is.
///
/// # Safety
/// Called by PostgreSQL's WAL reader only, with its own state and a page
/// buffer of `XLOG_BLCKSZ` bytes.
#[pg_guard]
unsafe extern "C-unwind" fn read_flushed_page(
    state: *mut pg_sys::XLogReaderState,
    target_page: pg_sys::XLogRecPtr,
    wanted: c_int,
    target_record: pg_sys::XLogRecPtr,
    page: *mut c_char,
) -> c_int {
    if target_page + wanted as u64 > flushed() {
        return -1;
    }
    // SAFETY: the reader's own arguments, passed on; the bytes asked for are flushed.
    unsafe { pg_sys::read_local_xlog_page(state, target_page, wanted, target_record, page) }
}

/// pgoutput starts a message: its buffer starts empty.
///
/// # Safety
/// Called by logical decoding only, with the context it decodes in.
#[pg_guard]
unsafe extern "C-unwind" fn prepare_write(ctx: *mut pg_sys::LogicalDecodingContext, _lsn: pg_sys::XLogRecPtr, _xid: pg_sys::TransactionId, _last: bool) {
    // SAFETY: the context decoding runs in; `out` is its output buffer.
    unsafe { pg_sys::resetStringInfo((*ctx).out) };
}

/// pgoutput finished a message: keep its bytes.
///
/// # Safety
/// Called by logical decoding only, with a context made by `LocalDecoder::open`.
#[pg_guard]
unsafe extern "C-unwind" fn write(ctx: *mut pg_sys::LogicalDecodingContext, _lsn: pg_sys::XLogRecPtr, _xid: pg_sys::TransactionId, _last: bool) {
    // SAFETY: `output_writer_private` is the decoder's boxed Sink, alive
    // while the context is; `out` holds `len` bytes just written.
    unsafe {
        let sink = &mut *(*ctx).output_writer_private.cast::<Sink>();
        let out = &*(*ctx).out;
        let bytes = std::slice::from_raw_parts(out.data.cast::<u8>(), out.len as usize);
        sink.messages.push(bytes.to_vec());
    }
}
