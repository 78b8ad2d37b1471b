//! What the forwarders tell the rest of the server, through shared memory:
//! each forwarder's state, errors and counters (read by `edgesync.peers`),
//! and the requests backends make of them (`sync_now`) and of the launcher
//! (a peer was added, changed or dropped).
//!
//! The peers' settings live in the table `edgesync.peer` (sql/forwarder.sql);
//! this is only what changes while they run, lost at a restart as
//! `pg_stat_*` counters are.

use std::time::Duration;

use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, PgLwLock};

use crate::model::sync::secrets::redact_secrets;

/// Forwarders that can run at once (per cluster).
pub const MAX_PEERS: usize = 64;
const ERROR_LEN: usize = 240;
/// Room for the tables a blocking transaction touches, and the peer's whole
/// refusal (its DETAIL and CONTEXT lines too).
const BLOCKED_TABLES_LEN: usize = 200;
const BLOCKED_ERROR_LEN: usize = 1000;

/// What a forwarder is doing, as `edgesync.peers.state` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Activity {
    Starting,
    Idle,
    Connecting,
    Pushing,
    Backoff,
    /// Holding at `edgesync.fault_point`.
    Held,
    /// The peer refuses a transaction (`PeerSlot::blocked_lsn`); retried with backoff.
    Blocked,
    /// Pulling from the peer's feed and applying it here.
    Pulling,
}

impl Activity {
    pub fn name(code: u8) -> &'static str {
        match code {
            0 => "starting",
            1 => "idle",
            2 => "connecting",
            3 => "pushing",
            4 => "backoff",
            6 => "blocked",
            7 => "pulling",
            _ => "held",
        }
    }
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct PeerSlot {
    pub dboid: u32,
    /// `edgesync.peer.id`; 0: the slot is free.
    pub peer_id: i32,
    pub pid: i32,
    /// The forwarder's process latch (shared memory, same address everywhere).
    pub latch: usize,
    pub activity: u8,
    pub connected: bool,
    pub last_success: i64,
    pub last_error_at: i64,
    pub error_len: u16,
    pub last_error: [u8; ERROR_LEN],
    pub failures: u32,
    pub next_attempt: i64,
    pub pending_changes: i64,
    /// Commit time of the oldest change known not to be confirmed (0: none).
    pub oldest_pending: i64,
    pub rows_sent: i64,
    pub batches_sent: i64,
    pub bytes_raw: i64,
    pub bytes_compressed: i64,
    pub clock_skew_ms: i64,
    pub skew_measured: bool,
    /// `sync_now` asks for round `requested`; rounds finished so far.
    pub rounds_requested: u64,
    pub rounds_done: u64,
    pub last_round_failed: bool,
    pub last_round_rows: i64,
    /// The end LSN of the transaction the peer refuses (0: none), since
    /// when, the tables it touches and the peer's error.
    pub blocked_lsn: u64,
    pub blocked_since: i64,
    pub blocked_tables_len: u16,
    pub blocked_tables: [u8; BLOCKED_TABLES_LEN],
    pub blocked_error_len: u16,
    pub blocked_error: [u8; BLOCKED_ERROR_LEN],
    /// The pull side: when the last pull succeeded (0: never), the feed
    /// position applied and the feed's head as last seen, the feed
    /// transactions still waiting then, and what was received.
    pub last_pull: i64,
    pub pull_position: u64,
    pub feed_head: u64,
    pub pull_waiting: i64,
    pub rows_received: i64,
    pub transactions_received: i64,
    pub bytes_received_raw: i64,
    pub bytes_received_compressed: i64,
    /// The peer's feed no longer holds this node's position (its last pull
    /// was refused so): only a new copy of the edge repairs it.
    pub resync_needed: bool,
}

impl PeerSlot {
    const FREE: PeerSlot = PeerSlot {
        dboid: 0,
        peer_id: 0,
        pid: 0,
        latch: 0,
        activity: 0,
        connected: false,
        last_success: 0,
        last_error_at: 0,
        error_len: 0,
        last_error: [0; ERROR_LEN],
        failures: 0,
        next_attempt: 0,
        pending_changes: 0,
        oldest_pending: 0,
        rows_sent: 0,
        batches_sent: 0,
        bytes_raw: 0,
        bytes_compressed: 0,
        clock_skew_ms: 0,
        skew_measured: false,
        rounds_requested: 0,
        rounds_done: 0,
        last_round_failed: false,
        last_round_rows: 0,
        blocked_lsn: 0,
        blocked_since: 0,
        blocked_tables_len: 0,
        blocked_tables: [0; BLOCKED_TABLES_LEN],
        blocked_error_len: 0,
        blocked_error: [0; BLOCKED_ERROR_LEN],
        last_pull: 0,
        pull_position: 0,
        feed_head: 0,
        pull_waiting: 0,
        rows_received: 0,
        transactions_received: 0,
        bytes_received_raw: 0,
        bytes_received_compressed: 0,
        resync_needed: false,
    };

    pub fn set_error(&mut self, message: &str) {
        self.error_len = copy_cut(&redact_secrets(message), &mut self.last_error);
        self.last_error_at = now();
    }

    pub fn error(&self) -> Option<String> {
        (self.error_len > 0).then(|| text_of(&self.last_error, self.error_len))
    }

    /// The peer refuses the transaction ending at `lsn`; `since` is kept
    /// while it is the same one.
    pub fn set_blocked(&mut self, lsn: u64, tables: &str, error: &str) {
        if self.blocked_lsn != lsn {
            self.blocked_since = now();
        }
        self.blocked_lsn = lsn;
        self.blocked_tables_len = copy_cut(tables, &mut self.blocked_tables);
        self.blocked_error_len = copy_cut(&redact_secrets(error), &mut self.blocked_error);
    }

    pub fn clear_blocked(&mut self) {
        self.blocked_lsn = 0;
        self.blocked_since = 0;
        self.blocked_tables_len = 0;
        self.blocked_error_len = 0;
    }
}

/// Copy as much of `text` into `buf` as fits, cut at a character boundary;
/// returns the length copied.
fn copy_cut(text: &str, buf: &mut [u8]) -> u16 {
    let mut end = text.len().min(buf.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    buf[..end].copy_from_slice(&text.as_bytes()[..end]);
    end as u16
}

fn text_of(buf: &[u8], len: u16) -> String {
    String::from_utf8_lossy(&buf[..len as usize]).into_owned()
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Registry {
    pub launcher_latch: usize,
    pub slots: [PeerSlot; MAX_PEERS],
}

// SAFETY: `Registry` is `repr(C)` plain data (integers, bools, byte arrays)
// with no pointer into one process's memory: latches are kept as addresses in
// shared memory, which every process of the server maps at the same address.
unsafe impl PGRXSharedMemory for Registry {}

// SAFETY: no other lock or shared-memory segment of this library is named
// "edgesync_peers".
static REGISTRY: PgLwLock<Registry> = unsafe { PgLwLock::new(c"edgesync_peers") };

pub fn init_shared_memory() {
    pg_shmem_init!(REGISTRY = Registry { launcher_latch: 0, slots: [PeerSlot::FREE; MAX_PEERS] });
}

/// Now, in microseconds since 2000-01-01 (PostgreSQL's `TimestampTz`).
pub fn now() -> i64 {
    // SAFETY: reads the system clock; no state of PostgreSQL's is touched.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

pub fn my_database() -> u32 {
    // SAFETY: a global of this process, set once it connects to a database
    // (InvalidOid before); reading it from the process's only thread cannot race.
    unsafe { pg_sys::MyDatabaseId.to_u32() }
}

fn my_pid() -> i32 {
    // SAFETY: a global set at process start and never changed afterwards.
    unsafe { pg_sys::MyProcPid }
}

/// The address of this process's latch: its PGPROC's, in shared memory once
/// the process has one, so other processes can set it.
fn my_latch() -> usize {
    // SAFETY: only the pointer's value is read, from this process's only thread.
    unsafe { pg_sys::MyLatch as usize }
}

/// The launcher announces itself; backends wake it after peer changes.
pub fn register_launcher() {
    REGISTRY.exclusive().launcher_latch = my_latch();
}

/// Claim the slot of `peer_id` for this forwarder. None: all taken.
pub fn claim(peer_id: i32) -> Option<usize> {
    let mut reg = REGISTRY.exclusive();
    let db = my_database();
    let index = reg
        .slots
        .iter()
        .position(|s| s.peer_id == peer_id && s.dboid == db)
        .or_else(|| reg.slots.iter().position(|s| s.peer_id == 0))?;
    let slot = &mut reg.slots[index];
    let (requested, done) = (slot.rounds_requested, slot.rounds_done);
    *slot = PeerSlot::FREE;
    slot.dboid = db;
    slot.peer_id = peer_id;
    slot.pid = my_pid();
    slot.latch = my_latch();
    slot.activity = Activity::Starting as u8;
    // a sync_now that waited on a crashed forwarder is answered by the next one
    slot.rounds_requested = requested;
    slot.rounds_done = done;
    Some(index)
}

/// Give the slot up (the forwarder is exiting).
pub fn release(index: usize) {
    let mut reg = REGISTRY.exclusive();
    let slot = &mut reg.slots[index];
    if slot.pid != my_pid() {
        return; // a newer forwarder of the same peer took it over
    }
    slot.pid = 0;
    slot.latch = 0;
    slot.connected = false;
}

/// Change this forwarder's slot.
pub fn update<R>(index: usize, f: impl FnOnce(&mut PeerSlot) -> R) -> R {
    f(&mut REGISTRY.exclusive().slots[index])
}

pub fn read(index: usize) -> PeerSlot {
    REGISTRY.share().slots[index]
}

pub fn find(peer_id: i32) -> Option<usize> {
    let db = my_database();
    REGISTRY.share().slots.iter().position(|s| s.peer_id == peer_id && s.dboid == db)
}

/// Wake the process whose latch is at `latch` (0: none).
pub fn set_latch(latch: usize) {
    if latch != 0 {
        // SAFETY: `latch` was recorded by `my_latch` in a process with a
        // PGPROC: a latch in shared memory, which stays for the server's life.
        // If that process has exited, the latch wakes its PGPROC's next user
        // at worst, and every waiter rechecks why it woke.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// Wake the launcher (it then reads the peers again).
pub fn wake_launcher() {
    set_latch(REGISTRY.share().launcher_latch);
}

/// Sleep on this process's latch at most `d` (a `set_latch` wakes it
/// early), then answer interrupts (cancel, SIGTERM).
pub fn wait_on_latch(d: Duration) {
    wait_on_latch_woken(d);
}

/// As `wait_on_latch`; true when the latch woke it (not the time).
pub fn wait_on_latch_woken(d: Duration) -> bool {
    let timeout_ms = crate::model::sync::forwarder::wait_millis(d) as _;
    let events = (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32;
    // SAFETY: MyLatch is this process's own latch, valid for the process's
    // life; only this process waits on and resets it.
    let rc = unsafe {
        let rc = pg_sys::WaitLatch(pg_sys::MyLatch, events, timeout_ms, pg_sys::PG_WAIT_EXTENSION);
        pg_sys::ResetLatch(pg_sys::MyLatch);
        rc
    };
    pgrx::check_for_interrupts!();
    rc & pg_sys::WL_LATCH_SET as i32 != 0
}

/// The forwarders of this database, for `edgesync.peers`. Times are
/// microseconds since 2000-01-01 (0: never); the view turns them into
/// timestamps.
#[pg_extern(volatile, parallel_safe)]
#[allow(clippy::type_complexity)]
fn _peer_status() -> TableIterator<
    'static,
    (
        name!(peer_id, i32),
        name!(pid, i32),
        name!(state, String),
        name!(connected, bool),
        name!(last_success, i64),
        name!(last_error, Option<String>),
        name!(last_error_at, i64),
        name!(consecutive_failures, i32),
        name!(next_attempt, i64),
        name!(pending_changes, i64),
        name!(oldest_pending, i64),
        name!(rows_sent, i64),
        name!(batches_sent, i64),
        name!(bytes_raw, i64),
        name!(bytes_compressed, i64),
        name!(clock_skew_ms, Option<i64>),
    ),
> {
    if !crate::conflict::clock::preloaded() {
        return TableIterator::new(Vec::new());
    }
    let db = my_database();
    let rows: Vec<_> = REGISTRY
        .share()
        .slots
        .iter()
        .filter(|s| s.peer_id != 0 && s.dboid == db && s.pid != 0)
        .map(|s| {
            (
                s.peer_id,
                s.pid,
                Activity::name(s.activity).to_string(),
                s.connected,
                s.last_success,
                s.error(),
                s.last_error_at,
                s.failures as i32,
                s.next_attempt,
                s.pending_changes,
                s.oldest_pending,
                s.rows_sent,
                s.batches_sent,
                s.bytes_raw,
                s.bytes_compressed,
                s.skew_measured.then_some(s.clock_skew_ms),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// The pull side of the forwarders of this database, for `edgesync.peers`
/// (times as in `_peer_status`; positions as LSNs counted from 0/0).
#[pg_extern(volatile, parallel_safe)]
#[allow(clippy::type_complexity)]
fn _peer_pull_status() -> TableIterator<
    'static,
    (
        name!(peer_id, i32),
        name!(last_pull, i64),
        name!(pull_position, i64),
        name!(feed_head, i64),
        name!(waiting, i64),
        name!(rows_received, i64),
        name!(transactions_received, i64),
        name!(bytes_raw, i64),
        name!(bytes_compressed, i64),
        name!(resync_needed, bool),
    ),
> {
    if !crate::conflict::clock::preloaded() {
        return TableIterator::new(Vec::new());
    }
    let db = my_database();
    let rows: Vec<_> = REGISTRY
        .share()
        .slots
        .iter()
        .filter(|s| s.peer_id != 0 && s.dboid == db && s.pid != 0)
        .map(|s| {
            (
                s.peer_id,
                s.last_pull,
                s.pull_position as i64,
                s.feed_head as i64,
                s.pull_waiting,
                s.rows_received,
                s.transactions_received,
                s.bytes_received_raw,
                s.bytes_received_compressed,
                s.resync_needed,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// The peers of this database whose forwarder is blocked on a transaction
/// the peer refuses, for `edgesync.peers` and `edgesync.skip_transaction`:
/// its end LSN, since when (microseconds since 2000-01-01), the tables it
/// touches and the peer's whole error (passwords masked).
#[pg_extern(volatile, parallel_safe)]
#[allow(clippy::type_complexity)]
fn _peer_blocked() -> TableIterator<
    'static,
    (name!(peer_id, i32), name!(lsn, i64), name!(since, i64), name!(tables, String), name!(error, String)),
> {
    if !crate::conflict::clock::preloaded() {
        return TableIterator::new(Vec::new());
    }
    let db = my_database();
    let rows: Vec<_> = REGISTRY
        .share()
        .slots
        .iter()
        .filter(|s| s.peer_id != 0 && s.dboid == db && s.pid != 0 && s.blocked_lsn != 0)
        .map(|s| {
            (
                s.peer_id,
                s.blocked_lsn as i64,
                s.blocked_since,
                text_of(&s.blocked_tables, s.blocked_tables_len),
                text_of(&s.blocked_error, s.blocked_error_len),
            )
        })
        .collect();
    TableIterator::new(rows)
}
