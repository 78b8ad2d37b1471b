//! The forwarder: one background worker per active peer, started by the
//! launcher (`sync::launcher`). A thin loop: wait, take one step of
//! `model::sync::forwarder::step`, carry out the action it returns.
//!
//! A round reads whole transactions from the peer's slot, packs them into
//! batches, sends each to the peer's `apply_batch`, and moves the slot to
//! the LSN the peer confirmed durable. A crash at any point leaves the slot
//! at or before what the peer has, and the peer's origin progress skips
//! what it already applied: nothing is lost or applied twice.
//!
//! A batch the peer refuses is halved until the one transaction it refuses
//! is found (`model::sync::blocked`); those before it go through, and the
//! forwarder shows it blocked (`edgesync.peers`) and retries it with backoff
//! until the peer takes it or a DBA sets it aside (`edgesync.skip_transaction`,
//! `sync::skipped`).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

use crate::guc;
use crate::model::node::OBJECT_PREFIX;
use crate::model::sync::batch::{self, Batch};
use crate::model::sync::blocked::{self as narrowing, Answer};
use crate::model::sync::capture::{Reader, SourceTxn};
use crate::model::sync::forwarder::{self as machine, Action, Backoff, Event, Mode, Observed, State};
use crate::model::sync::lsn::{format_lsn, parse_lsn};
use crate::model::sync::pack::{pack, Limits};
use crate::model::sync::secrets::redact_secrets;
use crate::sync::capture::{self, Backlog};
use crate::sync::launcher::{database, in_transaction, not_null};
use crate::sync::skipped;
use crate::sync::slot_stream::SlotStream;
use crate::sync::status::{self, Activity};
use crate::sync::transport::{Connection, Param};

mod names;
mod pull;
mod streamed;

/// Restart-point lag of the slot beyond which a forwarder logs a running
/// transactions snapshot itself, at most once per interval.
const RESTART_LAG_LIMIT: u64 = 1 << 20;
const RESTART_POINT_INTERVAL: Duration = Duration::from_secs(1);
/// How many batches' worth of messages one peek at the slot reads.
const PEEK_BATCHES: i64 = 8;
/// How long to wait before looking again after the peer could not be read.
const LOOKUP_RETRY: Duration = Duration::from_secs(1);
/// How often a held fault point looks whether it was lifted.
const HOLD_POLL: Duration = Duration::from_millis(50);
/// After the slot could not be streamed, read it by peek for this long
/// before trying again.
const STREAM_RETRY: Duration = Duration::from_secs(60);
/// How many bytes of transactions a stream reads ahead of what was sent,
/// in batches of the peer's size.
const READ_AHEAD_BATCHES: usize = 4;

// PostgreSQL's own handlers, called straight from the signal (pgrx's
// pg_sys wrappers of them are not signal handlers).
// SAFETY: the signatures are those of PostgreSQL's `die` and
// `SignalHandlerForConfigReload` (void f(SIGNAL_ARGS), SIGNAL_ARGS = int).
unsafe extern "C-unwind" {
    /// Ends the process at its next interrupt check (SIGTERM).
    ///
    /// # Safety
    /// Only as a signal handler of a PostgreSQL process.
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
    /// Marks the configuration for reloading (SIGHUP).
    ///
    /// # Safety
    /// Only as a signal handler of a PostgreSQL process.
    #[link_name = "SignalHandlerForConfigReload"]
    fn postgres_reload(signal: std::ffi::c_int);
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn edgesync_forwarder_main(arg: pg_sys::Datum) {
    let peer_id = arg.value() as i32;
    install_signal_handlers();
    BackgroundWorker::connect_worker_to_spi(Some(&database()), None);
    let Some(index) = status::claim(peer_id) else {
        warning!("edgesync: more than {} forwarders; peer {peer_id} is not served", status::MAX_PEERS);
        return;
    };
    // give the slot back however the worker ends (a SIGTERM ends it with FATAL)
    // SAFETY: a callback with the signature PostgreSQL calls, registered once
    // in this process; its argument is a plain number.
    unsafe { pg_sys::before_shmem_exit(Some(release_at_exit), pg_sys::Datum::from(index)) };
    Forwarder::new(peer_id, index).run();
}

/// die: a SIGTERM ends the worker at the next interrupt check, even
/// mid-statement; SIGHUP sets ConfigReloadPending for the loop to act on.
pub(super) fn install_signal_handlers() {
    // SAFETY: PostgreSQL's own handlers, made to run as signal handlers;
    // installed before the signals are unblocked, in this process only.
    unsafe {
        crate::compat::set_signal_handler(pg_sys::SIGTERM, postgres_die);
        crate::compat::set_signal_handler(pg_sys::SIGHUP, postgres_reload);
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

#[pg_guard]
extern "C-unwind" fn release_at_exit(_code: std::ffi::c_int, index: pg_sys::Datum) {
    status::release(index.value());
}

pub(super) fn reload_config_if_asked() {
    // SAFETY: ConfigReloadPending is set by the SIGHUP handler and read and
    // cleared here, outside any signal handler and outside a transaction,
    // as PostgreSQL's own processes do.
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}

fn now_ms() -> u64 {
    crate::conflict::clock::unix_millis() as u64
}

/// Jitter for the backoff: differs between forwarders and between calls.
fn noise() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    // SAFETY: set once when this process started, only read afterwards.
    let pid = unsafe { pg_sys::MyProcPid };
    nanos ^ (pid as u32).wrapping_mul(2_654_435_761)
}

// ---------------------------------------------------------------- the peer

/// A peer's settings, read from `edgesync.peer` at every wake-up.
#[derive(Clone, PartialEq)]
struct PeerConfig {
    name: String,
    conninfo: String,
    mode: Mode,
    limits: Limits,
    paused: bool,
    slot: String,
    /// Pull from the peer's feed: not when the peer also pushes to this
    /// node (it is registered here as an edge), which brings its changes.
    pulls: bool,
    /// Where pulls go when not to `conninfo` (a hot standby of the peer).
    pull_conninfo: Option<String>,
}

/// The peer's settings and this node's name; None when the peer is gone.
/// The defaults of the settings live in the table (`sql/forwarder.sql`),
/// whose columns are NOT NULL: a NULL here is an error, never a default.
fn load_peer(id: i32) -> Result<Option<(PeerConfig, String)>, String> {
    Spi::connect(|client| {
        let t = client
            .select(
                "SELECT p.name, p.conninfo, p.mode, (extract(epoch FROM p.batch_interval) * 1000)::bigint,
                        p.max_batch_rows, p.max_batch_bytes, p.paused, p.slot_name::text, n.name,
                        NOT EXISTS (SELECT FROM edgesync.edge e WHERE e.name = p.name), p.pull_conninfo
                   FROM edgesync.peer p, edgesync.node n WHERE p.id = $1",
                None,
                &[id.into()],
            )
            .map_err(|e| format!("could not read edgesync.peer: {e}"))?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        // the CHECK constraints keep these in range; the floors keep a
        // constraint dropped by hand from giving empty batches or a busy loop
        let max_bytes = not_null(r.get::<i64>(6), "edgesync.peer.max_batch_bytes")?.max(1024) as u64;
        let max_rows = not_null(r.get::<i32>(5), "edgesync.peer.max_batch_rows")?.max(1) as usize;
        let interval_ms = not_null(r.get::<i64>(4), "edgesync.peer.batch_interval")?.max(1) as u64;
        let mode = peer_mode(&not_null(r.get::<String>(3), "edgesync.peer.mode")?, interval_ms, max_bytes)?;
        let peer = PeerConfig {
            name: not_null(r.get::<String>(1), "edgesync.peer.name")?,
            conninfo: not_null(r.get::<String>(2), "edgesync.peer.conninfo")?,
            mode,
            limits: Limits { max_rows, max_bytes: max_bytes as usize },
            paused: not_null(r.get::<bool>(7), "edgesync.peer.paused")?,
            slot: not_null(r.get::<String>(8), "edgesync.peer.slot_name")?,
            pulls: not_null(r.get::<bool>(10), "whether the peer pushes here")?,
            pull_conninfo: r.get::<String>(11).map_err(|e| format!("could not read edgesync.peer.pull_conninfo: {e}"))?,
        };
        Ok(Some((peer, not_null(r.get::<String>(9), "edgesync.node.name")?)))
    })
}

/// The mode a peer's `mode` column names (its CHECK allows these three only).
fn peer_mode(mode: &str, interval_ms: u64, max_bytes: u64) -> Result<Mode, String> {
    match mode {
        "realtime" => Ok(Mode::Realtime),
        "batch" => Ok(Mode::Batch { interval: Duration::from_millis(interval_ms), max_bytes }),
        "on_demand" => Ok(Mode::OnDemand),
        other => Err(format!("edgesync.peer.mode is {other:?}, not realtime, batch or on_demand")),
    }
}

/// The peer, this node's name and the slot's backlog, in one transaction;
/// None when the peer was dropped.
fn look_up_peer(peer_id: i32) -> Result<Option<(PeerConfig, String, Backlog)>, String> {
    in_transaction(|| {
        let Some((peer, node)) = load_peer(peer_id)? else { return Ok(None) };
        let backlog = capture::backlog(&peer.slot)?;
        Ok(Some((peer, node, backlog)))
    })
}

/// The pgoutput messages of a batch that carry rows ('R' describes a relation).
fn rows_in(b: &Batch) -> i64 {
    b.transactions.iter().map(|t| t.messages.iter().filter(|m| m.first() != Some(&b'R')).count() as i64).sum()
}

/// The commit time of a batch's first transaction (0: no batch).
fn oldest_in(b: Option<&Batch>) -> i64 {
    b.and_then(|b| b.transactions.first()).map(|t| t.commit_time).unwrap_or(0)
}

// ---------------------------------------------------------------- the loop

/// What one wake-up found.
struct Wake {
    peer: PeerConfig,
    node: String,
    observed: Observed,
    /// `rounds_requested` of the status slot when it was read: a round
    /// that starts now answers the `sync_now` calls up to it.
    rounds_requested: u64,
}

/// What one peek at the slot gave.
struct Peeked {
    /// The whole transactions read that are to be sent, in order.
    txns: Vec<SourceTxn>,
    /// Everything up to `upto` was read.
    complete: bool,
    /// The flush LSN the peek read up to.
    upto: u64,
    /// The end of the last transaction read (0: none).
    last_read: u64,
    /// How long the peek took.
    took: Duration,
}

impl Peeked {
    /// Where the slot may move: past what the peer confirmed (`confirmed_to`)
    /// and what was read but is not to be sent.
    fn done_to(&self, pushed: &Pushed) -> u64 {
        match (pushed.held_back || pushed.blocked.is_some(), self.complete) {
            (true, _) => pushed.confirmed_to,
            (false, true) => self.upto.max(self.last_read),
            (false, false) => self.last_read,
        }
    }
}

/// What pushing one peek's transactions did.
#[derive(Default)]
struct Pushed {
    rows: i64,
    /// The end of the last transaction the peer confirmed (0: none).
    confirmed_to: u64,
    /// The peek was cut and its last, partial batch left for the next one.
    held_back: bool,
    /// The transaction the peer refuses, which stopped the push.
    blocked: Option<Blocked>,
}

/// A transaction the peer refuses.
struct Blocked {
    /// Its end LSN (what the peer would confirm).
    lsn: u64,
    /// The tables it touches, `schema.table, ...`.
    tables: String,
    /// The peer's error, as it sent it.
    error: String,
}

/// Cut `txns` into batches; a cut peek ends with a part batch, left for the
/// next peek, which reads it again whole. Returns the batches and whether
/// one was left.
fn batches_of(node: &str, txns: Vec<SourceTxn>, limits: Limits, complete: bool) -> (Vec<Batch>, bool) {
    let mut batches = pack(node, txns, limits);
    let held_back = !complete && batches.len() > 1;
    if held_back {
        batches.pop();
    }
    (batches, held_back)
}

/// What sending one batch measured.
struct Sent {
    raw_len: usize,
    compressed_len: usize,
    encoding: Duration,
    /// From the end of the encoding until the batch was all on the wire.
    sending: Duration,
    /// From then to the peer's confirmation: its apply and commit.
    peer: Duration,
}

struct Forwarder {
    peer_id: i32,
    /// This forwarder's slot in `status`.
    index: usize,
    conn: Option<Connection>,
    /// The connection pulls go through when the peer has a pull conninfo,
    /// and the conninfo it was opened with.
    pull_conn: Option<(Connection, String)>,
    /// What the peer said at hello it has applied (0: nothing): a
    /// transaction at or below it is not sent again.
    peer_has: u64,
    reader: Reader,
    /// The conninfo `conn` was opened with.
    conninfo: String,
    state: State,
    backoff: Backoff,
    /// Failed rounds in a row.
    failures: u32,
    /// The end LSN of the transaction the peer refused last (0: none).
    blocked: u64,
    last_round_ms: Option<u64>,
    last_restart_point: Instant,
    /// The nodes pulled changes came from that were looked up in the node
    /// directory on this connection (`names`).
    sources_checked: std::collections::HashSet<String>,
    /// The slot read as a stream (`slot_stream`); None: not open.
    stream: Option<SlotStream>,
    /// Until when the slot is read by peek, after a stream could not open.
    peek_until: Option<Instant>,
    /// Time from the peer's last answer until the next batch was taken
    /// (decoding that did not happen while the peer applied).
    read_wait: Duration,
}

impl Forwarder {
    fn new(peer_id: i32, index: usize) -> Self {
        Forwarder {
            peer_id,
            index,
            conn: None,
            pull_conn: None,
            peer_has: 0,
            reader: Reader::default(),
            conninfo: String::new(),
            state: State::Idle,
            backoff: Backoff::default(),
            failures: 0,
            blocked: 0,
            last_round_ms: None,
            last_restart_point: Instant::now(),
            sources_checked: Default::default(),
            stream: None,
            peek_until: None,
            read_wait: Duration::ZERO,
        }
    }

    /// Until the peer is dropped or paused (the launcher starts a new
    /// forwarder when it is back): look, step, act.
    fn run(&mut self) {
        status::update(self.index, |s| s.activity = Activity::Idle as u8);
        loop {
            reload_config_if_asked();
            pgrx::check_for_interrupts!();
            let wake = match self.wake_up() {
                Ok(Some(wake)) => wake,
                Ok(None) => return,
                Err(e) => {
                    status::update(self.index, |s| s.set_error(&e));
                    status::wait_on_latch(LOOKUP_RETRY);
                    continue;
                }
            };
            match self.step(Event::Wake, &wake.peer, &wake.observed) {
                Action::Wait(d) => self.wait_idle(d),
                Action::Disconnect => self.disconnect(),
                Action::RunRound => self.run_round(&wake),
            }
        }
    }

    /// Read the peer and the slot, and what the state machine needs to
    /// know. None: the peer was dropped or paused.
    fn wake_up(&mut self) -> Result<Option<Wake>, String> {
        let Some((peer, node, backlog)) = look_up_peer(self.peer_id)? else { return Ok(None) };
        if peer.paused {
            return Ok(None);
        }
        self.shorten_restart_lag(backlog.restart_lag);
        if self.conn.is_some() && self.conninfo != peer.conninfo {
            self.disconnect();
        }
        let slot = status::read(self.index);
        let (listening, feed_news) = self.feed_news(&peer);
        let observed = Observed {
            now_ms: now_ms(),
            pending_bytes: backlog.pending,
            last_round_ms: self.last_round_ms,
            sync_requested: slot.rounds_requested > slot.rounds_done,
            failures: self.failures,
            feed_news,
            listening,
        };
        Ok(Some(Wake { peer, node, observed, rounds_requested: slot.rounds_requested }))
    }

    /// Log a restart point when every peek re-decodes too much WAL.
    fn shorten_restart_lag(&mut self, restart_lag: u64) {
        if restart_lag > RESTART_LAG_LIMIT && self.last_restart_point.elapsed() > RESTART_POINT_INTERVAL {
            capture::log_restart_point();
            self.last_restart_point = Instant::now();
        }
    }

    /// One step of the state machine; returns what to do.
    fn step(&mut self, event: Event, peer: &PeerConfig, observed: &Observed) -> Action {
        let (next, action) = machine::step(self.state, event, peer.mode, self.backoff, observed, noise());
        self.state = next;
        action
    }

    /// Run a round and feed its outcome to the state machine.
    fn run_round(&mut self, wake: &Wake) {
        // a round (and sync_now) covers every commit made before it, asynchronous ones too
        let target = capture::flush_wal();
        let result = self.round(&wake.peer, &wake.node, target);
        self.failures = if result.is_ok() { 0 } else { self.failures + 1 };
        if result.is_err() {
            // what was read ahead is read again from the slot's position
            self.close_stream();
        }
        let observed = Observed { now_ms: now_ms(), failures: self.failures, ..wake.observed };
        let event = if result.is_ok() { Event::Succeeded } else { Event::Failed };
        let action = self.step(event, &wake.peer, &observed);
        if action == Action::Disconnect || !matches!(wake.peer.mode, Mode::Realtime) {
            self.disconnect();
        }
        self.record_round(wake.rounds_requested, observed.now_ms, &result);
        match result {
            Ok(_) => self.last_round_ms = Some(observed.now_ms),
            Err(e) => log!("edgesync: round with peer {:?} failed ({} in a row): {}", wake.peer.name, self.failures, redact_secrets(&e)),
        }
    }

    /// Show a round's outcome in the status slot.
    fn record_round(&mut self, asked: u64, now_ms: u64, result: &Result<i64, String>) {
        let next_attempt = match self.state {
            State::Backoff { until_ms } => status::now() + (until_ms.saturating_sub(now_ms) as i64) * 1000,
            _ => 0,
        };
        let failures = self.failures;
        if result.is_ok() {
            self.blocked = 0;
        }
        let failed_as = if self.blocked != 0 { Activity::Blocked } else { Activity::Backoff };
        status::update(self.index, |s| {
            s.rounds_done = s.rounds_done.max(asked);
            s.failures = failures;
            s.next_attempt = next_attempt;
            match result {
                Ok(rows) => {
                    s.clear_blocked();
                    s.last_success = status::now();
                    s.last_round_failed = false;
                    s.last_round_rows = *rows;
                    s.activity = Activity::Idle as u8;
                }
                Err(e) => {
                    s.set_error(e);
                    s.last_round_failed = true;
                    s.activity = failed_as as u8;
                }
            }
        });
    }

    /// Hold still while `edgesync.fault_point` names `point`.
    fn hold_at(&self, point: &str) {
        let armed = || guc::fault_point_is(point);
        if !armed() {
            return;
        }
        let before = status::read(self.index).activity;
        while armed() {
            status::update(self.index, |s| s.activity = Activity::Held as u8);
            status::wait_on_latch(HOLD_POLL);
            reload_config_if_asked();
        }
        status::update(self.index, |s| s.activity = before);
    }

    fn disconnect(&mut self) {
        self.pull_conn = None;
        self.close_stream();
        if self.conn.take().is_some() {
            status::update(self.index, |s| s.connected = false);
        }
    }

    fn timeout() -> Duration {
        Duration::from_secs(guc::PEER_TIMEOUT.get().max(1) as u64)
    }

    // ------------------------------------------------------------ a round

    /// Connect and greet the peer: check it speaks our batch format, measure
    /// the clock skew, and skip what it already has (after a crash between
    /// its commit and our slot advance).
    fn connect(&mut self, peer: &PeerConfig, node: &str) -> Result<(), String> {
        status::update(self.index, |s| s.activity = Activity::Connecting as u8);
        let mut conn = Connection::open(&peer.conninfo, &format!("{OBJECT_PREFIX}{node}"), Self::timeout())?;
        let node_id = names::own_node_id()?;
        let sent_at = now_ms() as i64;
        let row = names::say_hello(&mut conn, node, node_id)?;
        let got_at = now_ms() as i64;
        let field = |i: usize| row.get(i).cloned().flatten();
        let format: u16 = field(2).and_then(|f| f.parse().ok()).unwrap_or(0);
        if format != batch::FORMAT {
            return Err(format!("the peer reads batch format {format}, this node writes {}: upgrade edgesync on both", batch::FORMAT));
        }
        let remote_ms: i64 = field(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let skew = remote_ms - (sent_at + got_at) / 2;
        names::merge_directory(field(3).as_deref());
        self.sources_checked.clear();
        // apply_batch refuses SERIALIZABLE, whatever the peer's default
        conn.query("SET default_transaction_isolation TO 'read committed'", &[], Self::timeout())?;
        self.peer_has = field(0).and_then(|l| parse_lsn(&l)).unwrap_or(0);
        if self.peer_has > 0 {
            match self.stream.as_mut() {
                Some(stream) => stream.skip_to(self.peer_has),
                None => in_transaction(|| capture::advance(&peer.slot, self.peer_has))?,
            }
        }
        self.conn = Some(conn);
        self.conninfo = peer.conninfo.clone();
        status::update(self.index, |s| {
            s.connected = true;
            s.clock_skew_ms = skew;
            s.skew_measured = true;
        });
        Ok(())
    }

    /// Push what the slot holds, then pull what the peer's feed holds for
    /// this node (also when the push failed: a peer that refuses one of
    /// our transactions still has changes for us). Returns the rows moved.
    fn round(&mut self, peer: &PeerConfig, node: &str, target: u64) -> Result<i64, String> {
        let pushed = match self.open_stream(peer) {
            true => self.push_streamed(peer, node, target),
            false => self.push_all(peer, node),
        };
        if !peer.pulls || (self.conn.is_none() && pushed.is_err()) {
            // the link failed: pulling would only fail the same way
            return pushed;
        }
        let pulled = self.pull(peer, node);
        match (pushed, pulled) {
            (Ok(sent), Ok(received)) => Ok(sent + received),
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        }
    }

    /// Push everything the slot holds now. Returns the rows sent.
    ///
    /// Each peek decodes the slot from its restart point, so a round reads
    /// several batches' worth at once and moves the slot once per peek, after
    /// the peer confirmed every batch sent from it (a crash in between
    /// re-sends them, and the peer skips what it has).
    fn push_all(&mut self, peer: &PeerConfig, node: &str) -> Result<i64, String> {
        let mut sent = 0i64;
        // the peek's limit is an int4: never let a large max_batch_rows wrap it
        let max_messages = (PEEK_BATCHES * (3 * peer.limits.max_rows as i64 + 100)).min(i32::MAX as i64);
        loop {
            let mut peeked = self.peek(peer, max_messages)?;
            let txns = std::mem::take(&mut peeked.txns);
            let pushed = if txns.is_empty() { Pushed::default() } else { self.push(peer, node, txns, &peeked)? };
            sent += pushed.rows;
            let done_to = peeked.done_to(&pushed);
            if done_to > 0 {
                in_transaction(|| capture::advance(&peer.slot, done_to))?;
            }
            if let Some(blocked) = pushed.blocked {
                return Err(self.record_blocked(blocked));
            }
            if peeked.complete {
                return Ok(sent);
            }
        }
    }

    /// Read the slot; show what is to be sent as pending.
    fn peek(&mut self, peer: &PeerConfig, max_messages: i64) -> Result<Peeked, String> {
        let started = Instant::now();
        let peek = in_transaction(|| capture::peek(&peer.slot, capture::Reading::Push, max_messages, &mut self.reader))?;
        let took = started.elapsed();
        let last_read = peek.txns.last().map(|t| t.end_lsn).unwrap_or(0);
        // changes that came from a peer are not sent back (where pgoutput cannot leave them out)
        let txns: Vec<SourceTxn> = peek.txns.into_iter().filter(|t| t.origin.is_none()).collect();
        let txns = self.leave_out_skipped(peer, txns)?;
        let pending_rows: i64 = txns.iter().map(|t| t.rows as i64).sum();
        let oldest = txns.first().map(|t| t.commit_time).unwrap_or(0);
        status::update(self.index, |s| {
            s.pending_changes = pending_rows;
            s.oldest_pending = oldest;
        });
        Ok(Peeked { txns, complete: peek.complete, upto: peek.upto, last_read, took })
    }

    /// Send the peeked transactions the peer lacks, in batches, in order,
    /// up to the first one the peer refuses.
    /// Connecting first tells what the peer has: after a crash between its
    /// commit and our slot advance, that is not sent again.
    fn push(&mut self, peer: &PeerConfig, node: &str, txns: Vec<SourceTxn>, peeked: &Peeked) -> Result<Pushed, String> {
        if self.conn.is_none() {
            self.connect(peer, node)?;
        }
        let peer_has = self.peer_has;
        let missing: Vec<SourceTxn> = txns.into_iter().filter(|t| t.end_lsn > peer_has).collect();
        let (batches, held_back) = batches_of(node, missing, peer.limits, peeked.complete);
        status::update(self.index, |s| s.activity = Activity::Pushing as u8);
        debug1!("edgesync: peek took {:?} for {} batches", peeked.took, batches.len());
        let mut pending_rows: i64 = batches.iter().map(rows_in).sum();
        let mut pushed = Pushed { held_back, ..Pushed::default() };
        for (i, b) in batches.iter().enumerate() {
            let next_oldest = oldest_in(batches.get(i + 1));
            pushed.blocked = self.send_narrowing(b, &mut pushed, &mut pending_rows, next_oldest)?;
            if pushed.blocked.is_some() {
                break;
            }
        }
        if !batches.is_empty() {
            self.hold_at("before_advance");
        }
        Ok(pushed)
    }

    /// Send one batch; when the peer refuses it, halve it until the
    /// transaction it refuses is found (the ones before it go through).
    /// The one refused last round goes alone first.
    fn send_narrowing(&mut self, b: &Batch, pushed: &mut Pushed, pending_rows: &mut i64, next_oldest: i64) -> Result<Option<Blocked>, String> {
        let count = b.transactions.len();
        let suspect_first = self.blocked != 0 && b.transactions.first().is_some_and(|t| t.end_lsn == self.blocked);
        let refused = narrowing::send_narrowing(count, suspect_first, |run| {
            let oldest_after = b.transactions.get(run.end).map_or(next_oldest, |t| t.commit_time);
            let part = if run.len() == count { Cow::Borrowed(b) } else { Cow::Owned(narrowing::part_of(b, run)) };
            let measured = match self.send_batch(&part)? {
                Ok(measured) => measured,
                Err(refusal) => return Ok(Answer::Refused(refusal)),
            };
            let rows = rows_in(&part);
            debug1!(
                "edgesync: batch of {rows} rows, {} bytes ({} compressed): read {:?}, encode {:?}, send {:?}, peer {:?}",
                measured.raw_len,
                measured.compressed_len,
                std::mem::take(&mut self.read_wait),
                measured.encoding,
                measured.sending,
                measured.peer
            );
            pushed.confirmed_to = part.transactions.last().map(|t| t.end_lsn).unwrap_or(0);
            pushed.rows += rows;
            *pending_rows -= rows;
            self.record_batch(rows, &measured, *pending_rows, oldest_after);
            if self.blocked != 0 && pushed.confirmed_to >= self.blocked {
                self.unblock();
            }
            Ok::<_, String>(Answer::Applied)
        })?;
        Ok(refused.map(|(i, error)| {
            let culprit = narrowing::part_of(b, i..i + 1);
            Blocked { lsn: culprit.transactions[0].end_lsn, tables: narrowing::tables_of(&culprit).join(", "), error }
        }))
    }

    /// Show the transaction the peer refuses; returns the round's error
    /// (its first line only: DETAIL lines may quote row data, which
    /// `edgesync.peers.last_error` readers may not see).
    fn record_blocked(&mut self, b: Blocked) -> String {
        self.blocked = b.lsn;
        status::update(self.index, |s| s.set_blocked(b.lsn, &b.tables, &b.error));
        let first_line = b.error.lines().next().unwrap_or_default();
        format!(
            "the peer refuses the transaction ending at {} ({}): {first_line} (retried with backoff; edgesync.skip_transaction sets it aside)",
            format_lsn(b.lsn),
            b.tables
        )
    }

    /// The transaction the peer refused went through or was set aside.
    fn unblock(&mut self) {
        self.blocked = 0;
        status::update(self.index, |s| s.clear_blocked());
    }

    /// Leave out the transactions a DBA set aside for this peer (each is
    /// kept in `edgesync.skipped_transaction`, filled in here the first
    /// time it is met); the slot moves past them with the rest.
    fn leave_out_skipped(&mut self, peer: &PeerConfig, txns: Vec<SourceTxn>) -> Result<Vec<SourceTxn>, String> {
        if txns.is_empty() {
            return Ok(txns);
        }
        let skipped = in_transaction(|| skipped::set_aside(&peer.name, &txns))?;
        if skipped.is_empty() {
            return Ok(txns);
        }
        if skipped.contains(&self.blocked) {
            self.unblock();
        }
        Ok(txns.into_iter().filter(|t| !skipped.contains(&t.end_lsn)).collect())
    }

    /// Encode one batch, send it to the peer's `apply_batch` and check that
    /// the peer confirmed all of it. `Ok(Err)`: the peer refused it (its
    /// error, as it sent it); `Err`: the link failed.
    fn send_batch(&mut self, b: &Batch) -> Result<Result<Sent, String>, String> {
        let last = b.transactions.last().map(|t| t.end_lsn).unwrap_or(0);
        let started = Instant::now();
        let (encoded, raw_len) = batch::encode_measured(b, Some(guc::COMPRESSION_LEVEL.get())).map_err(|e| e.to_string())?;
        let encoded_at = Instant::now();
        self.hold_at("before_send");
        let conn = self.conn.as_mut().ok_or("the connection to the peer was closed before sending")?;
        let apply = "SELECT edgesync.apply_batch($1)::text";
        let params = [Param::Binary(&encoded)];
        // while the peer applies, the forwarder decodes on
        let answer = match self.stream.as_mut() {
            Some(stream) => conn.query_beside(apply, &params, Self::timeout(), stream),
            None => conn.query(apply, &params, Self::timeout()).map(|rows| (rows, Instant::now())),
        };
        let (answer, sent_at) = match answer {
            Ok(answer) => answer,
            // an ERROR leaves the session usable; a lost link or a timeout does not
            Err(e) if conn.query("SELECT 1", &[], Self::timeout()).is_ok() => return Ok(Err(e)),
            Err(e) => return Err(format!("sending a batch to the peer failed: {e}")),
        };
        let answered = answer.first().and_then(|r| r.first().cloned().flatten());
        let confirmed = answered.as_deref().and_then(parse_lsn).ok_or_else(|| {
            format!("the peer answered apply_batch with {answered:?}, not an LSN: does it run the same edgesync version?")
        })?;
        if confirmed < last {
            return Err(format!("the peer confirmed {} but was sent up to {}", format_lsn(confirmed), format_lsn(last)));
        }
        let (encoding, sending, peer) = (encoded_at - started, sent_at.min(Instant::now()) - encoded_at, sent_at.elapsed());
        Ok(Ok(Sent { raw_len, compressed_len: encoded.len(), encoding, sending, peer }))
    }

    /// Count a batch the peer confirmed in the status slot.
    fn record_batch(&self, rows: i64, sent: &Sent, pending_rows: i64, next_oldest: i64) {
        status::update(self.index, |s| {
            s.rows_sent += rows;
            s.batches_sent += 1;
            s.bytes_raw += sent.raw_len as i64;
            s.bytes_compressed += sent.compressed_len as i64;
            s.pending_changes = pending_rows.max(0);
            s.oldest_pending = if pending_rows > 0 { next_oldest } else { 0 };
            s.last_success = status::now();
        });
    }
}
