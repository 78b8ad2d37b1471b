//! The cloud's change feed: decode the WAL once, serve every edge from a table.
//!
//! One background worker (the feed worker, started by the launcher while
//! edges are registered here) reads one replication slot, `edgesync_feed`,
//! through the publication `edgesync_down` (tables enrolled `down` or
//! `both`), whoever made the change: the cloud itself, or an edge whose push
//! the cloud applied. Each source transaction becomes one row of
//! `edgesync.feed`, whole: its commit's end LSN (the feed position), its
//! commit time, the node it came from (read from the replication origin
//! edgesync applied it under), the tables it touched and its changes as a
//! compressed one-transaction batch. The rows are committed before the slot
//! moves on; after a crash in between, the same transactions are read again
//! and their rows, already there, are left as they are.
//!
//! An edge pulls with `edgesync.pull_batch` (`_pull_batch` here): a plain
//! read, stateless on the cloud, that a hot standby can serve as well. It
//! hands over the transactions after the edge's position that did not come
//! from that edge (`model::sync::feed::choose`), as one batch whose sender
//! is the cloud; the edge applies it under the cloud's replication origin,
//! whose progress is its position. A position older than what retention
//! purged (`edgesync.feed_retention`, `edgesync.feed_max_size`, applied by
//! `edgesync._purge_feed`) is refused: the edge must resync.
//!
//! With no edge left registered, the worker drops its slot and empties the
//! feed, so an unused feed pins no WAL.

use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::error::{raise, raise_with_hint};
use crate::guc;
use crate::model::node::is_node_name;
use crate::model::sync::batch::{self, Batch, Transaction};
use crate::model::sync::blocked::tables_of;
use crate::model::sync::capture::{Reader, SourceTxn};
use crate::model::sync::feed::{self, FeedEntry, PullLimits, FEED_SLOT};
use crate::model::sync::lsn::{format_lsn, parse_lsn};
use crate::model::sync::pack::{pack, Limits};
use crate::privilege::as_extension_owner;
use crate::sync::capture::{self, Reading};
use crate::sync::launcher::{database, in_transaction, not_null};
use crate::sync::slot_stream::SlotStream;
use crate::sync::status::wait_on_latch;

/// How a pull from before the purge mark is refused (the puller shows it).
pub const RESYNC_NEEDED: &str = "edgesync: resync needed";
/// The channel the feed worker notifies when it wrote new transactions;
/// realtime edges listen on it instead of asking every second.
pub const FEED_CHANNEL: &str = "edgesync_feed";
/// How long an idle feed worker sleeps before it looks for new WAL.
const FEED_POLL: Duration = Duration::from_millis(50);
/// How long it waits after a failed turn.
const RETRY: Duration = Duration::from_secs(1);
/// How often retention is applied.
const PURGE_INTERVAL: Duration = Duration::from_secs(10);
/// How many pgoutput messages one read of the slot takes at most.
const PEEK_MESSAGES: i64 = 50_000;
/// How many transactions' rows one write to the feed holds at most.
const FEED_WRITE: Limits = Limits { max_rows: 50_000, max_bytes: 64 << 20 };
/// After the slot could not be taken for decoding, read it by peek for this long.
const STREAM_RETRY: Duration = Duration::from_secs(60);

/// How long the feed waits for WAL to decode before it starts over.
fn stream_timeout() -> Duration {
    Duration::from_secs(guc::PEER_TIMEOUT.get().max(1) as u64)
}
/// How many feed transactions one pull looks at, the caller's own included.
const PULL_SCAN: i64 = 10_000;

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn edgesync_feed_main(_arg: pg_sys::Datum) {
    super::forwarder::install_signal_handlers();
    BackgroundWorker::connect_worker_to_spi(Some(&database()), None);
    log!("edgesync feed worker started in database {:?}", database());
    FeedWorker { reader: Reader::default(), last_purge: None, stream: None, peek_until: None }.run();
}

/// What one turn of the feed worker found.
enum Turn {
    /// Nothing new: sleep.
    Idle,
    /// The read was cut: read on at once.
    More,
    /// No edge is registered any more.
    Stop,
}

struct FeedWorker {
    /// Remembers relation descriptions across reads of the slot.
    reader: Reader,
    last_purge: Option<Instant>,
    /// The slot read as a stream (`slot_stream`), as the forwarders read
    /// theirs; None: not open.
    stream: Option<SlotStream>,
    /// Until when the slot is read by peek, after a stream could not open.
    peek_until: Option<Instant>,
}

impl FeedWorker {
    fn run(&mut self) {
        loop {
            super::forwarder::reload_config_if_asked();
            pgrx::check_for_interrupts!();
            match self.turn() {
                Ok(Turn::Stop) => return,
                Ok(Turn::Idle) => wait_on_latch(FEED_POLL),
                Ok(Turn::More) => {}
                Err(e) => {
                    log!("edgesync: the feed worker failed, retrying: {e}");
                    self.reader = Reader::default();
                    // what the stream read ahead is read again from the slot's position
                    self.stream = None;
                    wait_on_latch(RETRY);
                }
            }
        }
    }

    /// Look whether the feed is still wanted, read what the slot holds into
    /// the feed, and apply retention now and then.
    fn turn(&mut self) -> Result<Turn, String> {
        let Some(node) = in_transaction(feed_wanted)? else {
            // the slot is this process's while it decodes it: let it go before dropping it
            self.stream = None;
            in_transaction(close_feed)?;
            log!("edgesync: no edge is registered any more: the feed is closed and its slot dropped");
            return Ok(Turn::Stop);
        };
        in_transaction(open_slot)?;
        if self.last_purge.is_none_or(|t| t.elapsed() >= PURGE_INTERVAL) {
            in_transaction(purge)?;
            self.last_purge = Some(Instant::now());
        }
        let backlog = in_transaction(|| capture::backlog(FEED_SLOT))?;
        if backlog.pending == 0 {
            return Ok(Turn::Idle);
        }
        let target = capture::flush_wal();
        match self.open_stream() {
            true => self.stream_into_feed(&node, target),
            false => self.read_into_feed(&node),
        }
    }

    /// Open the slot's stream unless it is open; false: read by peek.
    fn open_stream(&mut self) -> bool {
        if self.stream.is_some() {
            return true;
        }
        if self.peek_until.is_some_and(|until| Instant::now() < until) {
            return false;
        }
        match SlotStream::open(FEED_SLOT, Reading::Feed) {
            Ok(stream) => self.stream = Some(stream),
            Err(e) => {
                log!("edgesync: the feed reads its slot through SQL for a minute, since it could not be decoded here: {e}");
                self.peek_until = Some(Instant::now() + STREAM_RETRY);
            }
        }
        self.stream.is_some()
    }

    /// Read the stream into feed rows until decoding has read past
    /// `target` (the WAL written before the turn), moving the slot past
    /// each write once it is committed.
    fn stream_into_feed(&mut self, node: &str, target: u64) -> Result<Turn, String> {
        let stream = self.stream.as_mut().ok_or("the feed's stream was closed")?;
        let mut quiet_until = Instant::now() + stream_timeout();
        loop {
            if stream.read_available()? {
                quiet_until = Instant::now() + stream_timeout();
            }
            let reached = stream.reached(target);
            let txns = stream.take_batch(FEED_WRITE, reached.then_some(target));
            if let Some(last) = txns.last().map(|t| t.end_lsn) {
                let rows = txns.into_iter().map(|t| FeedRow::of(t, node)).collect::<Result<Vec<_>, _>>()?;
                hold_at("feed_before_write");
                in_transaction(|| write_rows(&rows))?;
                hold_at("feed_before_advance");
                stream.confirm(last);
                continue;
            }
            if reached {
                stream.confirm_all_read();
                return Ok(Turn::Idle);
            }
            stream.wait(quiet_until)?;
        }
    }

    /// One read of the slot into feed rows, then the slot moves past it.
    fn read_into_feed(&mut self, node: &str) -> Result<Turn, String> {
        let peek = in_transaction(|| capture::peek(FEED_SLOT, Reading::Feed, PEEK_MESSAGES, &mut self.reader))?;
        let last_read = peek.txns.last().map(|t| t.end_lsn).unwrap_or(0);
        let done_to = if peek.complete { peek.upto.max(last_read) } else { last_read };
        if !peek.txns.is_empty() {
            let rows = peek.txns.into_iter().map(|t| FeedRow::of(t, node)).collect::<Result<Vec<_>, _>>()?;
            hold_at("feed_before_write");
            in_transaction(|| write_rows(&rows))?;
            hold_at("feed_before_advance");
        }
        if done_to > 0 {
            in_transaction(|| capture::advance(FEED_SLOT, done_to))?;
        }
        Ok(if peek.complete { Turn::Idle } else { Turn::More })
    }
}

/// Hold still while `edgesync.fault_point` names `point` (fault-injection
/// tests), showing it in `pg_stat_activity.query`.
fn hold_at(point: &str) {
    let armed = || guc::fault_point_is(point);
    if !armed() {
        return;
    }
    let Ok(shown) = std::ffi::CString::new(format!("edgesync feed: held at {point}")) else { return };
    // SAFETY: `shown` is NUL-terminated and outlives the call (PostgreSQL copies it).
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, shown.as_ptr()) };
    while armed() {
        wait_on_latch(Duration::from_millis(50));
        super::forwarder::reload_config_if_asked();
    }
    // the text stays in pg_stat_activity unless replaced: with an empty one
    // SAFETY: a static NUL-terminated string (PostgreSQL copies it).
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, c"".as_ptr()) };
}

/// This node's name while any edge is registered (None: the feed is not wanted).
fn feed_wanted() -> Result<Option<String>, String> {
    Spi::connect(|client| {
        let t = client.select(
            "SELECT n.name FROM edgesync.node n WHERE EXISTS (SELECT FROM edgesync.edge)",
            None,
            &[],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        t.first().get_one::<String>()
    })
    .map_err(|e: pgrx::spi::Error| format!("could not read edgesync.edge: {e}"))
}

/// Create the feed's slot unless it exists (in a transaction that wrote
/// nothing, as PostgreSQL requires).
fn open_slot() -> Result<(), String> {
    Spi::connect(|client| {
        client.select(
            "SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')
              WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)",
            None,
            &[FEED_SLOT.into()],
        )?;
        Ok::<_, pgrx::spi::Error>(())
    })
    .map_err(|e| format!("could not create the feed's replication slot {FEED_SLOT}: {e}"))
}

/// Drop the slot and empty the feed: a feed nobody pulls must not pin WAL.
fn close_feed() -> Result<(), String> {
    Spi::connect_mut(|client| {
        client.update(
            "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            None,
            &[FEED_SLOT.into()],
        )?;
        client.update("DELETE FROM edgesync.feed", None, &[])?;
        client.update("UPDATE edgesync.feed_mark SET purged_through = '0/0', purged_at = NULL", None, &[])?;
        Ok::<_, pgrx::spi::Error>(())
    })
    .map_err(|e| format!("could not close the feed: {e}"))
}

/// Apply retention (`edgesync._purge_feed`) with the settings in force.
fn purge() -> Result<(), String> {
    let retention = guc::FEED_RETENTION.get() as i64;
    let max_bytes = guc::FEED_MAX_SIZE_KB.get() as i64 * 1024;
    Spi::connect_mut(|client| {
        client.update("SELECT edgesync._purge_feed(make_interval(secs => $1), $2)", None, &[retention.into(), max_bytes.into()])?;
        Ok::<_, pgrx::spi::Error>(())
    })
    .map_err(|e| format!("could not purge the feed: {e}"))
}

/// One row of `edgesync.feed`.
struct FeedRow {
    position: u64,
    commit_time: i64,
    origin_node: String,
    tables: Vec<String>,
    rows: i32,
    raw_bytes: i64,
    changes: Vec<u8>,
}

impl FeedRow {
    /// The feed row of a transaction read from the slot: a batch of it
    /// alone, carrying the relation descriptions it needs, so that any
    /// pull can start at it.
    fn of(t: SourceTxn, local_node: &str) -> Result<FeedRow, String> {
        let origin_node = feed::origin_node(t.origin.as_deref(), local_node);
        let (position, commit_time, rows) = (t.end_lsn, t.commit_time, t.rows);
        let unbounded = Limits { max_rows: usize::MAX, max_bytes: usize::MAX };
        let one = pack(&origin_node, vec![t], unbounded).pop().ok_or("a transaction packed into no batch")?;
        let tables = tables_of(&one);
        let (changes, raw_len) = batch::encode_measured(&one, Some(guc::COMPRESSION_LEVEL.get())).map_err(|e| e.to_string())?;
        Ok(FeedRow {
            position,
            commit_time,
            origin_node,
            tables,
            rows: i32::try_from(rows).unwrap_or(i32::MAX),
            raw_bytes: raw_len as i64,
            changes,
        })
    }
}

/// Insert the rows, leaving any already there (read again after a crash
/// before the slot moved); durable before the slot moves past them.
fn write_rows(rows: &[FeedRow]) -> Result<(), String> {
    crate::guc::set_for(crate::guc::Scope::Transaction, c"synchronous_commit", c"on");
    Spi::connect_mut(|client| {
        for r in rows {
            client.update(
                "INSERT INTO edgesync.feed (position, committed_at, origin_node, tables, rows, raw_bytes, compressed_bytes, changes)
                 VALUES ($1::pg_lsn, timestamptz '2000-01-01 00:00:00+00' + make_interval(secs => $2 / 1e6), $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (position) DO NOTHING",
                None,
                &[
                    format_lsn(r.position).into(),
                    r.commit_time.into(),
                    r.origin_node.as_str().into(),
                    r.tables.clone().into(),
                    r.rows.into(),
                    r.raw_bytes.into(),
                    (r.changes.len() as i64).into(),
                    r.changes.as_slice().into(),
                ],
            )?;
        }
        // delivered at commit, to the edges listening (on this server)
        client.update("SELECT pg_catalog.pg_notify($1, '')", None, &[FEED_CHANNEL.into()])?;
        Ok::<_, pgrx::spi::Error>(())
    })
    .map_err(|e| format!("could not write the feed: {e}"))
}

// ------------------------------------------------------------ serving pulls

/// The next batch of feed transactions after `after` for `node` (through
/// `edgesync.pull_batch`, which checks its arguments and adds the feed's
/// head); NULL when there is nothing new. A read only: a standby serves it too.
#[pg_extern(stable, parallel_safe)]
fn _pull_batch(node: &str, after: i64, max_rows: i32, max_bytes: i64) -> Option<Vec<u8>> {
    if !is_node_name(node) {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("edgesync: {node:?} is not a node name"));
    }
    if max_rows < 1 || max_bytes < 1024 || after < 0 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "edgesync: max_rows must be at least 1 and max_bytes at least 1024".to_string(),
        );
    }
    super::edges::require_edge_login(node);
    // before serving: a pull refused for resync shows where the edge stands
    super::edge_activity::record(node, crate::model::sync::edge_activity::Event::Pull { position: after as u64 });
    let limits = PullLimits { max_rows: max_rows as u64, max_bytes: (max_bytes as u64).min(guc::max_batch_size() as u64) };
    as_extension_owner(|| serve_pull(node, after as u64, limits))
}

fn serve_pull(node: &str, after: u64, limits: PullLimits) -> Option<Vec<u8>> {
    let (cloud, purged_through) = feed_bounds();
    if let Err(refused) = feed::check_position(after, purged_through) {
        raise_with_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "{RESYNC_NEEDED}: node {node:?} is at {} in the feed, which keeps only what follows {}",
                format_lsn(refused.after),
                format_lsn(refused.purged_through)
            ),
            "The changes in between were purged (edgesync.feed_retention, edgesync.feed_max_size); the edge must be copied again.",
        );
    }
    let entries = feed_entries(after).unwrap_or_else(|e| spi_failed(e));
    let pull = feed::choose(&entries, node, limits);
    pull.reaches()?;
    let mut transactions = load_transactions(&pull.send).unwrap_or_else(|e| spi_failed(e));
    if let Some(skip_to) = pull.skip_to {
        transactions.push(Transaction { end_lsn: skip_to, commit_time: 0, origin: None, messages: Vec::new() });
    }
    let b = Batch { sender: cloud, transactions };
    let encoded = batch::encode(&b, Some(guc::COMPRESSION_LEVEL.get()))
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: could not encode a pull: {e}")));
    Some(encoded)
}

fn spi_failed(e: pgrx::spi::Error) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: could not read the feed: {e}"))
}

/// This node's name and the feed's purge mark.
fn feed_bounds() -> (String, u64) {
    let read = Spi::connect(|client| {
        let t = client.select("SELECT n.name, m.purged_through::text FROM edgesync.node n, edgesync.feed_mark m", None, &[])?;
        if t.is_empty() {
            return Ok(None);
        }
        let row = t.first();
        Ok::<_, pgrx::spi::Error>(Some((not_null(row.get::<String>(1), "edgesync.node.name"), row.get::<String>(2)?)))
    });
    match read {
        Ok(Some((Ok(name), mark))) => (name, mark.as_deref().and_then(parse_lsn).unwrap_or(0)),
        Ok(Some((Err(e), _))) => raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: {e}")),
        Ok(None) => raise_with_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "edgesync: this database is not a node yet",
            "Name it first: SELECT edgesync.create_node('cloud');",
        ),
        Err(e) => spi_failed(e),
    }
}

/// The feed's transactions after `after`, in order, without their changes.
fn feed_entries(after: u64) -> pgrx::spi::Result<Vec<FeedEntry>> {
    Spi::connect(|client| {
        let t = client.select(
            "SELECT position::text, origin_node, rows::bigint, raw_bytes FROM edgesync.feed
              WHERE position > $1::pg_lsn ORDER BY position LIMIT $2",
            None,
            &[format_lsn(after).into(), PULL_SCAN.into()],
        )?;
        let mut entries = Vec::with_capacity(t.len());
        for row in t {
            let position = row.get::<String>(1)?.as_deref().and_then(parse_lsn).unwrap_or(0);
            let origin_node = row.get::<String>(2)?.unwrap_or_default();
            let rows = row.get::<i64>(3)?.unwrap_or(0).max(0) as u64;
            let bytes = row.get::<i64>(4)?.unwrap_or(0).max(0) as u64;
            entries.push(FeedEntry { position, origin_node, rows, bytes });
        }
        Ok(entries)
    })
}

/// The transactions at `positions`, in order, each tagged with the node it came from.
fn load_transactions(positions: &[u64]) -> pgrx::spi::Result<Vec<Transaction>> {
    let texts: Vec<String> = positions.iter().map(|&p| format_lsn(p)).collect();
    Spi::connect(|client| {
        let t = client.select(
            "SELECT f.origin_node, f.changes FROM edgesync.feed f
              WHERE f.position = ANY ($1::pg_lsn[]) ORDER BY f.position",
            None,
            &[texts.into()],
        )?;
        let mut out = Vec::with_capacity(t.len());
        for row in t {
            let origin_node = row.get::<String>(1)?.unwrap_or_default();
            let changes = row.get::<Vec<u8>>(2)?.unwrap_or_default();
            out.push(stored_transaction(&changes, origin_node));
        }
        Ok(out)
    })
}

/// The one transaction a feed row holds (written by the feed worker; a
/// row that does not decode is a damaged feed, not a peer's fault).
fn stored_transaction(changes: &[u8], origin_node: String) -> Transaction {
    let decoded = batch::decode(changes, usize::MAX)
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, format!("edgesync: a feed row does not decode: {e}")));
    let mut stored = decoded.to_batch();
    if stored.transactions.len() != 1 {
        raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, "edgesync: a feed row holds other than one transaction".to_string());
    }
    let mut t = stored.transactions.remove(0);
    t.origin = Some(origin_node);
    t
}
