//! The background workers: one launcher per cluster, one forwarder per
//! active peer. Both are thin loops; what a forwarder does next is decided
//! by `model::forwarder::step`.
//!
//! Launcher: registered at server start (needs shared_preload_libraries),
//! runs in `edgesync.database`, starts a forwarder for every peer that is
//! not paused, stops those whose peer was paused or dropped, and restarts a
//! forwarder that died after `RESTART_COOLDOWN`. Backends wake it when they
//! commit a peer change.
//!
//! Forwarder: a round reads whole transactions from the peer's slot,
//! packs them into batches, sends each to the peer's `apply_batch`, and moves
//! the slot to the LSN the peer confirmed durable. A crash at any point
//! leaves the slot at or before what the peer has, and the peer's origin
//! progress skips what it already applied: nothing is lost or applied twice.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::sync::capture;
use crate::guc;
use crate::model::sync::batch;
use crate::model::sync::capture::Reader;
use crate::model::sync::pack::{pack, Limits};
use crate::model::sync::lsn::{format_lsn, parse_lsn};
use crate::model::sync::secrets::redact_secrets;
use crate::model::sync::forwarder::{step, Action, Backoff, Event, Mode, Observed, State};
use crate::sync::status::{self as peers, Activity};
use crate::sync::transport::{Connection, Param};

/// How long the launcher waits before restarting a forwarder that died.
const RESTART_COOLDOWN: Duration = Duration::from_secs(5);
/// Restart-point lag of the slot beyond which a forwarder logs a running
/// transactions snapshot itself, at most once per interval.
const RESTART_LAG_LIMIT: u64 = 1 << 20;
const RESTART_POINT_INTERVAL: Duration = Duration::from_secs(1);
/// How many batches' worth of messages one peek at the slot reads.
const PEEK_BATCHES: i64 = 8;
/// How often the launcher looks at the peers without being woken.
const LAUNCHER_POLL: Duration = Duration::from_secs(5);

/// Register the launcher; only possible while preloading.
pub fn register_launcher() {
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        BackgroundWorkerBuilder::new("edgesync launcher")
            .set_type("edgesync launcher")
            .set_library("edgesync")
            .set_function("edgesync_launcher_main")
            .enable_spi_access()
            .set_restart_time(Some(RESTART_COOLDOWN))
            .load();
    }
}

fn database() -> String {
    guc::DATABASE.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_else(|| "postgres".to_string())
}

/// Run `f` in a transaction of its own; a PostgreSQL ERROR inside becomes
/// `Err` (the transaction is rolled back) instead of ending the worker.
fn in_transaction<R>(f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = PgTryBuilder::new(AssertUnwindSafe(f))
        .catch_others(|e| {
            Err(match e {
                pg_sys::panic::CaughtError::PostgresError(r) | pg_sys::panic::CaughtError::ErrorReport(r) => r.message().to_string(),
                pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
            })
        })
        .execute();
    unsafe {
        match result {
            Ok(_) => {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
            Err(_) => pg_sys::AbortCurrentTransaction(),
        }
    }
    result
}

fn reload_config_if_asked() {
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}

// ---------------------------------------------------------------- launcher

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn edgesync_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&database()), None);
    peers::register_launcher();
    log!("edgesync launcher started in database {:?}", database());
    let mut running: HashMap<i32, DynamicBackgroundWorker> = HashMap::new();
    let mut not_before: HashMap<i32, Instant> = HashMap::new();
    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let wanted: Vec<(i32, String)> = BackgroundWorker::transaction(active_peers);
        // reap the forwarders that ended
        running.retain(|id, handle| match handle.pid() {
            Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted) => true,
            Err(_) => {
                not_before.insert(*id, Instant::now() + RESTART_COOLDOWN);
                false
            }
        });
        // stop those no longer wanted
        let ids: Vec<i32> = running.keys().copied().collect();
        for id in ids {
            if !wanted.iter().any(|(w, _)| *w == id) {
                if let Some(handle) = running.remove(&id) {
                    let _ = handle.terminate();
                }
                not_before.remove(&id);
            }
        }
        // start the missing ones
        for (id, name) in &wanted {
            if running.contains_key(id) || not_before.get(id).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            match start_forwarder(*id, name) {
                Ok(handle) => {
                    running.insert(*id, handle);
                }
                Err(e) => {
                    warning!("edgesync: could not start the forwarder of peer {name:?}: {e}");
                    not_before.insert(*id, Instant::now() + RESTART_COOLDOWN);
                }
            }
        }
        let next = not_before.values().map(|t| t.saturating_duration_since(Instant::now())).min().unwrap_or(LAUNCHER_POLL);
        if !BackgroundWorker::wait_latch(Some(next.clamp(Duration::from_millis(100), LAUNCHER_POLL))) {
            break;
        }
    }
}

/// Peers that should have a forwarder (none while edgesync is not installed here).
fn active_peers() -> Vec<(i32, String)> {
    let installed = Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'edgesync')")
        .ok()
        .flatten()
        .unwrap_or(false);
    if !installed {
        return Vec::new();
    }
    Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select("SELECT id, name FROM edgesync.peer WHERE NOT paused ORDER BY id", None, &[])? {
            out.push((row.get::<i32>(1)?.unwrap_or(0), row.get::<String>(2)?.unwrap_or_default()));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_default()
}

fn start_forwarder(id: i32, name: &str) -> Result<DynamicBackgroundWorker, String> {
    BackgroundWorkerBuilder::new(&format!("edgesync forwarder {name}"))
        .set_type("edgesync forwarder")
        .set_library("edgesync")
        .set_function("edgesync_forwarder_main")
        .set_argument(id.into_datum())
        .enable_spi_access()
        .set_restart_time(None)
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .map_err(|_| "no background worker slot free (max_worker_processes)".to_string())
}

// ---------------------------------------------------------------- forwarder

/// A peer's settings, read from `edgesync.peer` at every wake-up.
#[derive(Clone, PartialEq)]
struct PeerConfig {
    name: String,
    conninfo: String,
    mode: Mode,
    limits: Limits,
    paused: bool,
    slot: String,
}

fn load_peer(id: i32) -> Result<Option<(PeerConfig, String)>, String> {
    Spi::connect(|client| {
        let t = client.select(
            "SELECT p.name, p.conninfo, p.mode, (extract(epoch FROM p.batch_interval) * 1000)::bigint,
                    p.max_batch_rows, p.max_batch_bytes, p.paused, p.slot_name::text, n.name
               FROM edgesync.peer p, edgesync.node n WHERE p.id = $1",
            None,
            &[id.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        let max_bytes = r.get::<i64>(6)?.unwrap_or(1 << 24).max(1024) as u64;
        let mode = match r.get::<String>(3)?.as_deref() {
            Some("batch") => Mode::Batch { interval: Duration::from_millis(r.get::<i64>(4)?.unwrap_or(60_000).max(1) as u64), max_bytes },
            Some("on_demand") => Mode::OnDemand,
            _ => Mode::Realtime,
        };
        Ok(Some((
            PeerConfig {
                name: r.get::<String>(1)?.unwrap_or_default(),
                conninfo: r.get::<String>(2)?.unwrap_or_default(),
                mode,
                limits: Limits { max_rows: r.get::<i32>(5)?.unwrap_or(10_000).max(1) as usize, max_bytes: max_bytes as usize },
                paused: r.get::<bool>(7)?.unwrap_or(false),
                slot: r.get::<String>(8)?.unwrap_or_default(),
            },
            r.get::<String>(9)?.unwrap_or_default(),
        )))
    })
    .map_err(|e: pgrx::spi::Error| e.to_string())
}

fn now_ms() -> u64 {
    crate::conflict::clock::unix_millis() as u64
}

fn noise() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    nanos ^ (unsafe { pg_sys::MyProcPid } as u32).wrapping_mul(2_654_435_761)
}

// PostgreSQL's own handlers, called straight from the signal (pgrx's
// pg_sys wrappers of them are not signal handlers).
unsafe extern "C-unwind" {
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
    #[link_name = "SignalHandlerForConfigReload"]
    fn postgres_reload(signal: std::ffi::c_int);
}


#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn edgesync_forwarder_main(arg: pg_sys::Datum) {
    let peer_id = arg.value() as i32;
    unsafe {
        // die: a SIGTERM ends the worker at the next interrupt check, even mid-statement
        crate::compat::set_signal_handler(pg_sys::SIGTERM, postgres_die);
        crate::compat::set_signal_handler(pg_sys::SIGHUP, postgres_reload);
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    BackgroundWorker::connect_worker_to_spi(Some(&database()), None);
    let Some(index) = peers::claim(peer_id) else {
        warning!("edgesync: more than {} forwarders; peer {peer_id} is not served", peers::MAX_PEERS);
        return;
    };
    // give the slot back however the worker ends (a SIGTERM ends it with FATAL)
    unsafe { pg_sys::before_shmem_exit(Some(release_at_exit), pg_sys::Datum::from(index)) };
    let mut f = Forwarder { index, conn: None, reader: Reader::default(), conninfo: String::new() };
    f.run(peer_id);
}

#[pg_guard]
unsafe extern "C-unwind" fn release_at_exit(_code: std::ffi::c_int, index: pg_sys::Datum) {
    peers::release(index.value());
}

struct Forwarder {
    index: usize,
    conn: Option<Connection>,
    reader: Reader,
    /// The conninfo `conn` was opened with.
    conninfo: String,
}

impl Forwarder {
    fn run(&mut self, peer_id: i32) {
        let backoff = Backoff::default();
        let mut state = State::Idle;
        let mut failures = 0u32;
        let mut last_round_ms: Option<u64> = None;
        let mut last_restart_point = Instant::now();
        peers::update(self.index, |s| s.activity = Activity::Idle as u8);
        loop {
            reload_config_if_asked();
            pgrx::check_for_interrupts!();
            let looked = in_transaction(|| {
                let Some((peer, node)) = load_peer(peer_id)? else { return Ok(None) };
                let pending = capture::backlog(&peer.slot)?;
                Ok(Some((peer, node, pending)))
            });
            let (peer, node, backlog) = match looked {
                Ok(Some(found)) => found,
                Ok(None) => return, // the peer was dropped
                Err(e) => {
                    peers::update(self.index, |s| s.set_error(&e));
                    peers::wait_on_latch(Duration::from_secs(1));
                    continue;
                }
            };
            if peer.paused {
                return;
            }
            if backlog.restart_lag > RESTART_LAG_LIMIT && last_restart_point.elapsed() > RESTART_POINT_INTERVAL {
                capture::log_restart_point();
                last_restart_point = Instant::now();
            }
            let pending = backlog.pending;
            if self.conn.is_some() && self.conninfo != peer.conninfo {
                self.disconnect();
            }
            let slot = peers::read(self.index);
            let o = Observed {
                now_ms: now_ms(),
                pending_bytes: pending,
                last_round_ms,
                sync_requested: slot.rounds_requested > slot.rounds_done,
                failures,
            };
            let (next, action) = step(state, Event::Wake, peer.mode, backoff, &o, noise());
            state = next;
            match action {
                Action::Wait(d) => peers::wait_on_latch(d),
                Action::Disconnect => self.disconnect(),
                Action::RunRound => {
                    let asked = slot.rounds_requested;
                    // a round (and sync_now) covers every commit made before it, asynchronous ones too
                    capture::flush_wal();
                    let result = self.round(&peer, &node);
                    let event = if result.is_ok() { Event::Succeeded } else { Event::Failed };
                    failures = if result.is_ok() { 0 } else { failures + 1 };
                    let o = Observed { now_ms: now_ms(), failures, ..o };
                    let (next, action) = step(state, event, peer.mode, backoff, &o, noise());
                    state = next;
                    let next_attempt = match state {
                        State::Backoff { until_ms } => peers::now() + (until_ms.saturating_sub(o.now_ms) as i64) * 1000,
                        _ => 0,
                    };
                    if action == Action::Disconnect || !matches!(peer.mode, Mode::Realtime) {
                        self.disconnect();
                    }
                    peers::update(self.index, |s| {
                        s.rounds_done = s.rounds_done.max(asked);
                        s.failures = failures;
                        s.next_attempt = next_attempt;
                        match &result {
                            Ok(rows) => {
                                s.last_success = peers::now();
                                s.last_round_failed = false;
                                s.last_round_rows = *rows;
                                s.activity = Activity::Idle as u8;
                            }
                            Err(e) => {
                                s.set_error(e);
                                s.last_round_failed = true;
                                s.activity = Activity::Backoff as u8;
                            }
                        }
                    });
                    match result {
                        Ok(_) => last_round_ms = Some(o.now_ms),
                        Err(e) => log!("edgesync: round with peer {:?} failed ({failures} in a row): {}", peer.name, redact_secrets(&e)),
                    }
                }
            }
        }
    }

    /// Hold still while `edgesync.fault_point` names `point`.
    fn hold_at(&self, point: &str) {
        let armed = || guc::FAULT_POINT.get().is_some_and(|p| p.to_bytes() == point.as_bytes());
        if !armed() {
            return;
        }
        let before = peers::read(self.index).activity;
        while armed() {
            peers::update(self.index, |s| s.activity = Activity::Held as u8);
            peers::wait_on_latch(Duration::from_millis(50));
            reload_config_if_asked();
        }
        peers::update(self.index, |s| s.activity = before);
    }

    fn disconnect(&mut self) {
        if self.conn.take().is_some() {
            peers::update(self.index, |s| s.connected = false);
        }
    }

    fn timeout() -> Duration {
        Duration::from_secs(guc::PEER_TIMEOUT.get().max(1) as u64)
    }

    /// Connect and greet the peer: check it speaks our batch format, measure
    /// the clock skew, and skip what it already has (after a crash between
    /// its commit and our slot advance).
    fn connect(&mut self, peer: &PeerConfig, node: &str) -> Result<(), String> {
        peers::update(self.index, |s| s.activity = Activity::Connecting as u8);
        let mut conn = Connection::open(&peer.conninfo, &format!("edgesync_{node}"), Self::timeout())?;
        let sent_at = now_ms() as i64;
        let rows = conn.query(
            "SELECT confirmed_lsn::text, clock_ms, batch_format FROM edgesync.hello($1)",
            &[Param::Text(node)],
            Self::timeout(),
        )?;
        let got_at = now_ms() as i64;
        let row = rows.first().ok_or("the peer did not answer hello")?;
        let field = |i: usize| row.get(i).cloned().flatten();
        let format: u16 = field(2).and_then(|f| f.parse().ok()).unwrap_or(0);
        if format != batch::FORMAT {
            return Err(format!("the peer reads batch format {format}, this node writes {}: upgrade edgesync on both", batch::FORMAT));
        }
        let remote_ms: i64 = field(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let skew = remote_ms - (sent_at + got_at) / 2;
        if let Some(confirmed) = field(0).and_then(|l| parse_lsn(&l)) {
            in_transaction(|| capture::advance(&peer.slot, confirmed))?;
        }
        self.conn = Some(conn);
        self.conninfo = peer.conninfo.clone();
        peers::update(self.index, |s| {
            s.connected = true;
            s.clock_skew_ms = skew;
            s.skew_measured = true;
        });
        Ok(())
    }

    /// Push everything the slot holds now. Returns the rows sent.
    ///
    /// Each peek decodes the slot from its restart point, so a round reads
    /// several batches' worth at once and moves the slot once per peek, after
    /// the peer confirmed every batch sent from it (a crash in between
    /// re-sends them, and the peer skips what it has).
    fn round(&mut self, peer: &PeerConfig, node: &str) -> Result<i64, String> {
        let mut sent = 0i64;
        // the peek's limit is an int4: never let a large max_batch_rows wrap it
        let max_messages = (PEEK_BATCHES * (3 * peer.limits.max_rows as i64 + 100)).min(i32::MAX as i64);
        loop {
            let started = Instant::now();
            let peek = in_transaction(|| capture::peek(&peer.slot, max_messages, &mut self.reader))?;
            let peeked = started.elapsed();
            let last_read = peek.txns.last().map(|t| t.end_lsn).unwrap_or(0);
            // changes that came from a peer are not sent back (15 has no origin filter)
            let to_send: Vec<_> = peek.txns.into_iter().filter(|t| t.origin.is_none()).collect();
            let mut batches = pack(node, to_send, peer.limits);
            // a cut peek ends with a part batch: leave it for the next peek, which reads it again whole
            let held_back = !peek.complete && batches.len() > 1;
            if held_back {
                batches.pop();
            }
            let rows_of = |b: &crate::model::sync::batch::Batch| -> i64 {
                b.transactions.iter().map(|t| t.messages.iter().filter(|m| m.first() != Some(&b'R')).count() as i64).sum()
            };
            let mut pending_rows: i64 = batches.iter().map(rows_of).sum();
            let oldest = batches.first().map(|b| b.transactions[0].commit_time).unwrap_or(0);
            peers::update(self.index, |s| {
                s.pending_changes = pending_rows;
                s.oldest_pending = oldest;
            });
            let mut confirmed_to = 0u64;
            if !batches.is_empty() {
                if self.conn.is_none() {
                    self.connect(peer, node)?;
                }
                peers::update(self.index, |s| s.activity = Activity::Pushing as u8);
                for (i, b) in batches.iter().enumerate() {
                    let last = b.transactions.last().map(|t| t.end_lsn).unwrap_or(0);
                    let rows = rows_of(b);
                    let next_oldest = batches.get(i + 1).map(|n| n.transactions[0].commit_time).unwrap_or(0);
                    let t0 = Instant::now();
                    let (encoded, raw_len) = batch::encode_measured(b, Some(guc::COMPRESSION_LEVEL.get())).map_err(|e| e.to_string())?;
                    let t1 = Instant::now();
                    self.hold_at("before_send");
                    let conn = self.conn.as_mut().expect("connected above");
                    let answer = conn
                        .query("SELECT edgesync.apply_batch($1)::text", &[Param::Binary(&encoded)], Self::timeout())
                        .map_err(|e| format!("the peer refused a batch: {e}"))?;
                    let answered = answer.first().and_then(|r| r.first().cloned().flatten());
                    let confirmed = answered.as_deref().and_then(parse_lsn).ok_or_else(|| {
                        format!("the peer answered apply_batch with {answered:?}, not an LSN: does it run the same edgesync version?")
                    })?;
                    if confirmed < last {
                        return Err(format!("the peer confirmed {} but was sent up to {}", format_lsn(confirmed), format_lsn(last)));
                    }
                    confirmed_to = last;
                    debug1!(
                        "edgesync: batch of {rows} rows, {raw_len} bytes ({} compressed): peek {peeked:?} (for {} batches), encode {:?}, peer {:?}",
                        encoded.len(),
                        batches.len(),
                        t1 - t0,
                        t1.elapsed()
                    );
                    sent += rows;
                    pending_rows -= rows;
                    peers::update(self.index, |s| {
                        s.rows_sent += rows;
                        s.batches_sent += 1;
                        s.bytes_raw += raw_len as i64;
                        s.bytes_compressed += encoded.len() as i64;
                        s.pending_changes = pending_rows.max(0);
                        s.oldest_pending = if pending_rows > 0 { next_oldest } else { 0 };
                        s.last_success = peers::now();
                    });
                }
                self.hold_at("before_advance");
            }
            // move past what the peer confirmed and what was read but is not to be sent
            let done_to = match (held_back, peek.complete) {
                (true, _) => confirmed_to,
                (false, true) => peek.upto.max(last_read),
                (false, false) => last_read,
            };
            if done_to > 0 {
                in_transaction(|| capture::advance(&peer.slot, done_to))?;
            }
            if peek.complete {
                return Ok(sent);
            }
        }
    }
}
