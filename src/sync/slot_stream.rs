//! Reading a peer's slot as a stream: a replication connection from the
//! forwarder to its own node (`replication=database`, `START_REPLICATION
//! ... LOGICAL` with pgoutput), so that the node's walsender decodes while
//! the forwarder encodes, sends, and waits for the peer's apply.
//!
//! The slot moves only when the forwarder says so: a standby status update
//! whose flush position is what the peer confirmed durable. A crash leaves
//! the slot at or before that, as with a peek, and the peer's origin
//! progress skips what it already has.
//!
//! Transactions read ahead wait in `ready`, up to a window in bytes; past
//! it the forwarder stops reading and the walsender waits on the socket.
//!
//! The forwarder's own slot is read the same way without a walsender: it
//! decodes the slot in its own process (`sync::local_decoding`), a piece
//! at a time, between looks at the peer's answer. The feed worker streams.

use std::collections::VecDeque;
use std::ffi::c_int;
use std::time::{Duration, Instant};

use pgrx::prelude::*;

use crate::model::sync::capture::{Reader, SourceTxn};
use crate::model::sync::pack::Limits;
use crate::model::sync::pgoutput::PROTOCOL_VERSION;
use crate::model::sync::walstream::{self, ServerMessage};
use crate::sync::capture::Reading;
use crate::sync::local_decoding::LocalDecoder;
use crate::sync::transport::{Connection, ReadBeside};

/// How long an open waits for the slot to be released by a walsender that
/// is still ending (the forwarder's previous stream, closed a moment ago).
const SLOT_BUSY_PATIENCE: Duration = Duration::from_secs(10);
const SLOT_BUSY_RETRY: Duration = Duration::from_millis(20);
/// A read that found fewer messages than this waits `GATHER` before the
/// next: the walsender sends a message at a time, and waking for each costs
/// more than reading a socket's worth at once.
const GATHER_BELOW: usize = 64;
const GATHER: Duration = Duration::from_millis(1);
/// WAL records decoded in process at a time: about a millisecond's work,
/// between looks at the peer's answer.
const DECODE_PIECE: usize = 512;
/// How often a slot decoded in process looks for newly written WAL while idle.
const LOCAL_POLL: Duration = Duration::from_millis(2);

/// Where the slot's messages come from.
enum Source {
    /// This node's walsender, over a replication connection.
    Walsender(Connection),
    /// Decoding in this process.
    InProcess(LocalDecoder),
}

pub struct SlotStream {
    source: Source,
    reader: Reader,
    /// Whole transactions read and not yet taken.
    ready: VecDeque<SourceTxn>,
    ready_bytes: usize,
    ready_rows: usize,
    /// Read no further while `ready` holds this many bytes.
    window: usize,
    /// How far the walsender has read WAL, as it last said.
    read_upto: u64,
    /// Where it had read to when first heard from, or when the restart
    /// point last moved (`moved_restart_point`).
    read_from: u64,
    /// What this stream last told the walsender is safe (the slot's position).
    confirmed: u64,
    /// Transactions at or below this are left out (the peer has them).
    skip_upto: u64,
    /// Answer every keepalive (a round waits to learn the walsender's position).
    answer_keepalives: bool,
    /// Not to be read again before this (the last read found little).
    gather_until: Option<Instant>,
    /// Keep transactions that came from a peer (the feed relays them; a
    /// push leaves them out where pgoutput could not).
    keep_relayed: bool,
    timeout: Duration,
}

/// The conninfo of this node for a replication connection as the bootstrap
/// superuser, over its Unix socket (or loopback without one).
/// Reads the catalogs: call it inside a transaction.
pub fn own_conninfo(database: &str) -> Result<String, String> {
    let setting = |name: &std::ffi::CStr| {
        // SAFETY: a known setting's name; the value is copied out at once.
        let v = unsafe { pg_sys::GetConfigOption(name.as_ptr(), false, false) };
        // SAFETY: GetConfigOption returns NULL or a NUL-terminated string.
        (!v.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(v) }.to_string_lossy().into_owned())
    };
    let socket_dir = setting(c"unix_socket_directories").and_then(|d| d.split(',').next().map(|s| s.trim().to_string()));
    let host = socket_dir.filter(|d| !d.is_empty()).unwrap_or_else(|| "127.0.0.1".to_string());
    // SAFETY: a plain global set at start, only read.
    let port = unsafe { pg_sys::PostPortNumber };
    // SAFETY: the bootstrap superuser always exists; the name is copied out at once.
    let user = unsafe { std::ffi::CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::BOOTSTRAP_SUPERUSERID.into(), false)) };
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    Ok(format!(
        "host={} port={port} dbname={} user={} replication=database options={}",
        quote(&host),
        quote(database),
        quote(&user.to_string_lossy()),
        quote(&value_text_options())
    ))
}

/// The walsender prints values as text: under the settings every node reads them with.
fn value_text_options() -> String {
    crate::guc::VALUE_TEXT_SETTINGS
        .iter()
        .map(|(name, value)| format!("-c {}={}", name.to_string_lossy(), value.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

impl SlotStream {
    /// Start streaming `slot` from its confirmed position.
    pub fn open(slot: &str, reading: Reading, conninfo: &str, application_name: &str, timeout: Duration) -> Result<SlotStream, String> {
        let skip_echo = reading == Reading::Push && crate::compat::PGOUTPUT_FILTERS_ORIGIN;
        let command = walstream::start_command(slot, reading.publication(), PROTOCOL_VERSION, skip_echo)?;
        let patience = Instant::now() + SLOT_BUSY_PATIENCE;
        loop {
            let mut conn = Connection::open(conninfo, application_name, timeout)?;
            match conn.start_copy_both(&command, timeout) {
                Ok(()) => return Ok(SlotStream::over(Source::Walsender(conn), timeout, reading == Reading::Feed)),
                // the walsender of a stream closed a moment ago may still hold the slot
                Err(e) if e.contains("is active for PID") && Instant::now() < patience => {
                    crate::sync::status::wait_on_latch(SLOT_BUSY_RETRY);
                }
                Err(e) => return Err(format!("could not stream replication slot {slot}: {e}")),
            }
        }
    }

    /// Decode `slot` in this process, from its restart point on.
    pub fn open_in_process(slot: &str, reading: Reading, timeout: Duration) -> Result<SlotStream, String> {
        // pgoutput prints values as text under this process's settings
        super::launcher::in_transaction(|| {
            crate::guc::pin_value_text(crate::guc::Scope::Session);
            Ok(())
        })?;
        let version = PROTOCOL_VERSION.to_string();
        let mut options = vec![("proto_version", version.as_str()), ("publication_names", reading.publication()), ("messages", "true")];
        if reading == Reading::Push && crate::compat::PGOUTPUT_FILTERS_ORIGIN {
            options.push(("origin", "none"));
        }
        let patience = Instant::now() + SLOT_BUSY_PATIENCE;
        loop {
            match LocalDecoder::open(slot, &options) {
                Ok(decoder) => {
                    let mut stream = SlotStream::over(Source::InProcess(decoder), timeout, reading == Reading::Feed);
                    stream.read_from = stream.decoder_start();
                    return Ok(stream);
                }
                // the walsender of a stream closed a moment ago may still hold the slot
                Err(e) if e.contains("is active for PID") && Instant::now() < patience => {
                    crate::sync::status::wait_on_latch(SLOT_BUSY_RETRY);
                }
                Err(e) => return Err(format!("could not decode replication slot {slot}: {e}")),
            }
        }
    }

    fn decoder_start(&self) -> u64 {
        match &self.source {
            Source::InProcess(d) => d.started_at(),
            Source::Walsender(_) => 0,
        }
    }

    fn over(source: Source, timeout: Duration, keep_relayed: bool) -> SlotStream {
        SlotStream {
            source,
            reader: Reader::default(),
            ready: VecDeque::new(),
            ready_bytes: 0,
            ready_rows: 0,
            window: 64 << 20,
            read_upto: 0,
            read_from: 0,
            confirmed: 0,
            skip_upto: 0,
            answer_keepalives: false,
            gather_until: None,
            keep_relayed,
            timeout,
        }
    }

    /// Read ahead at most `bytes` of transactions.
    pub fn set_window(&mut self, bytes: usize) {
        self.window = bytes.max(1);
    }

    /// Leave out transactions at or below `lsn` (the peer has them), and
    /// move the slot there.
    pub fn skip_to(&mut self, lsn: u64) -> Result<(), String> {
        self.skip_upto = self.skip_upto.max(lsn);
        while self.ready.front().is_some_and(|t| t.end_lsn <= lsn) {
            self.pop();
        }
        self.confirm(lsn)
    }

    /// Tell the walsender everything up to `lsn` is safe: the slot moves there.
    pub fn confirm(&mut self, lsn: u64) -> Result<(), String> {
        self.confirmed = self.confirmed.max(lsn);
        self.send_status(false)
    }

    fn send_status(&mut self, reply_requested: bool) -> Result<(), String> {
        match &mut self.source {
            Source::Walsender(conn) => {
                let now = crate::conflict::clock::unix_millis() * 1000;
                let m = walstream::status_update(self.read_upto.max(self.confirmed), self.confirmed, now, reply_requested);
                conn.send_copy(&m, self.timeout)
            }
            Source::InProcess(decoder) => {
                decoder.confirm(self.confirmed);
                Ok(())
            }
        }
    }

    /// Start waiting for the walsender to reach `target`: from now on each
    /// keepalive is answered, so the next says how far it read.
    pub fn seek_position(&mut self) -> Result<(), String> {
        self.answer_keepalives = true;
        self.send_status(false)
    }

    /// Stop answering keepalives that ask nothing (an idle stream would
    /// otherwise trade them with the walsender in a loop).
    pub fn rest(&mut self) {
        self.answer_keepalives = false;
    }

    /// Everything committed before `target` has been read, and no
    /// transaction is half read.
    pub fn reached(&self, target: u64) -> bool {
        self.read_upto.max(self.confirmed) >= target && !self.reader.in_transaction()
    }

    /// Read what has arrived, without waiting, until the window is full.
    /// Returns whether anything arrived.
    pub fn read_available(&mut self) -> Result<bool, String> {
        if matches!(self.source, Source::InProcess(_)) {
            return self.decode_piece();
        }
        let mut read = 0usize;
        while self.ready_bytes < self.window {
            let Source::Walsender(conn) = &mut self.source else { break };
            let Some(message) = conn.next_copy()? else { break };
            read += 1;
            match walstream::parse(&message)? {
                ServerMessage::XLogData { data, .. } => {
                    if let Some(t) = self.reader.take(data.to_vec())? {
                        self.read_upto = self.read_upto.max(t.end_lsn);
                        self.keep(t);
                    }
                }
                ServerMessage::Keepalive { wal_end, reply_requested } => {
                    self.read_upto = self.read_upto.max(wal_end);
                    if self.read_from == 0 {
                        self.read_from = wal_end;
                    }
                    if reply_requested || self.answer_keepalives {
                        self.send_status(false)?;
                    }
                }
            }
        }
        self.gather_until = (read < GATHER_BELOW).then(|| Instant::now() + GATHER);
        Ok(read > 0)
    }

    /// In process: decode a piece of the flushed WAL, unless the window is
    /// full. Returns whether decoding moved on.
    fn decode_piece(&mut self) -> Result<bool, String> {
        let Source::InProcess(decoder) = &mut self.source else { return Ok(false) };
        if self.ready_bytes >= self.window || !decoder.has_flushed() {
            return Ok(false);
        }
        let before = decoder.read_upto();
        let messages = decoder.decode(DECODE_PIECE);
        let upto = decoder.read_upto();
        for message in messages {
            if let Some(t) = self.reader.take(message)? {
                self.keep(t);
            }
        }
        self.read_upto = self.read_upto.max(upto);
        Ok(upto > before)
    }

    /// In process: decoding has flushed WAL to read now.
    fn can_decode(&self) -> bool {
        matches!(&self.source, Source::InProcess(d) if self.ready_bytes < self.window && d.has_flushed())
    }

    /// How much WAL the walsender read since it was first heard from or the
    /// restart point last moved: what a stream opened now would decode again.
    pub fn read_span(&self) -> u64 {
        if self.read_from == 0 { 0 } else { self.read_upto.saturating_sub(self.read_from) }
    }

    /// The restart point moved up to where the walsender has read.
    pub fn moved_restart_point(&mut self) {
        self.read_from = self.read_upto;
    }

    /// Nothing waits and nothing is half read: the slot may move to where
    /// the walsender read (past transactions that were not for the peer).
    pub fn confirm_all_read(&mut self) -> Result<(), String> {
        if !self.ready.is_empty() || self.reader.in_transaction() {
            return Ok(());
        }
        self.confirm(self.read_upto)
    }

    /// Keep a transaction read, unless it is not to be sent: a push's that
    /// came from a peer (where pgoutput could not leave it out), or one the
    /// peer has.
    fn keep(&mut self, t: SourceTxn) {
        if (t.origin.is_some() && !self.keep_relayed) || t.end_lsn <= self.skip_upto {
            return;
        }
        self.ready_bytes += t.bytes;
        self.ready_rows += t.rows;
        self.ready.push_back(t);
    }

    fn pop(&mut self) -> Option<SourceTxn> {
        let t = self.ready.pop_front()?;
        self.ready_bytes -= t.bytes;
        self.ready_rows -= t.rows;
        Some(t)
    }

    /// The transactions read and waiting, and their rows.
    pub fn waiting(&self) -> (usize, i64) {
        (self.ready.len(), self.ready_rows as i64)
    }

    /// The commit time of the first transaction waiting (0: none).
    pub fn oldest_waiting(&self) -> i64 {
        self.ready.front().map(|t| t.commit_time).unwrap_or(0)
    }

    /// Take the next batch's worth of transactions: once `ready` holds a
    /// full batch; or, given `upto`, also a part batch of those committed
    /// up to it (nothing more is coming before it). None taken is empty;
    /// otherwise at least one transaction, however large.
    pub fn take_batch(&mut self, limits: Limits, upto: Option<u64>) -> Vec<SourceTxn> {
        // called after every read: look through `ready` only when a batch may be taken
        if upto.is_none() && self.ready_rows < limits.max_rows && self.ready_bytes < limits.max_bytes {
            return Vec::new();
        }
        let (mut rows, mut bytes, mut n) = (0usize, 0usize, 0usize);
        let mut full = false;
        for t in &self.ready {
            if n > 0 && (rows + t.rows > limits.max_rows || bytes + t.bytes > limits.max_bytes) {
                full = true;
                break;
            }
            if upto.is_some_and(|u| t.end_lsn > u) {
                break;
            }
            rows += t.rows;
            bytes += t.bytes;
            n += 1;
        }
        full |= rows >= limits.max_rows || bytes >= limits.max_bytes;
        if !(full || upto.is_some()) {
            return Vec::new();
        }
        (0..n).filter_map(|_| self.pop()).collect()
    }

    /// Wait until the walsender sends something, the latch is set, or `d` passed.
    pub fn nap(&self, d: Duration) {
        match &self.source {
            Source::Walsender(conn) => conn.nap(d),
            Source::InProcess(decoder) => {
                // no socket to wake on: look for new WAL now and then
                let until = Instant::now() + d;
                while !decoder.has_written() {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() || crate::sync::status::wait_on_latch_woken(left.min(LOCAL_POLL)) {
                        return;
                    }
                }
            }
        }
    }

    /// Wait until the walsender sends something, at most until `deadline`
    /// (after a read that found little, first let more gather).
    pub fn wait(&self, deadline: Instant) -> Result<(), String> {
        let conn = match &self.source {
            Source::Walsender(conn) => conn,
            Source::InProcess(decoder) => {
                if decoder.has_flushed() {
                    return Ok(());
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err("timed out waiting for WAL to decode".to_string());
                }
                crate::sync::status::wait_on_latch_woken(left.min(LOCAL_POLL));
                return Ok(());
            }
        };
        if let Some(gather) = self.gather_until.filter(|g| *g < deadline) {
            crate::sync::status::wait_on_latch(gather.saturating_duration_since(Instant::now()));
        }
        conn.wait_readable(deadline, "waiting for this node's walsender")
    }

    /// End the stream from our side: the walsender reads the last status
    /// update, then the end, and releases the slot.
    pub fn close(mut self) {
        if let Source::Walsender(conn) = &mut self.source {
            let _ = conn.end_copy(self.timeout);
        }
    }
}

impl ReadBeside for SlotStream {
    fn watch(&self) -> Option<(c_int, Instant)> {
        let Source::Walsender(conn) = &self.source else { return None };
        let from = self.gather_until.unwrap_or_else(Instant::now);
        (self.ready_bytes < self.window).then(|| (conn.raw_socket(), from))
    }

    fn readable(&mut self) -> Result<(), String> {
        self.read_available().map(|_| ())
    }

    fn work(&mut self) -> Result<bool, String> {
        if !self.can_decode() {
            return Ok(false);
        }
        self.decode_piece()
    }

    fn look_again(&self) -> Option<Instant> {
        matches!(self.source, Source::InProcess(_)).then(|| Instant::now() + LOCAL_POLL)
    }
}
