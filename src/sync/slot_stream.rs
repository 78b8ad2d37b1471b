//! Reading a slot as a stream of whole transactions, decoded in this
//! process (`sync::local_decoding`): the forwarder decodes the next batch a
//! piece at a time while the peer applies the one it sent (between looks at
//! the peer's answer, `ReadBeside`), and the feed worker reads the cloud's
//! changes the same way.
//!
//! The slot moves only when the reader says so (`confirm`): to what the
//! peer confirmed durable, or, for the feed, to what it committed. A crash
//! leaves the slot at or before that, as with a peek, and the peer's origin
//! progress skips what it already has.
//!
//! Transactions read ahead wait in `ready`, up to a window in bytes; past
//! it decoding pauses.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::model::sync::capture::{Reader, SourceTxn};
use crate::model::sync::pack::Limits;
use crate::model::sync::pgoutput::PROTOCOL_VERSION;
use crate::sync::capture::Reading;
use crate::sync::local_decoding::LocalDecoder;
use crate::sync::status::wait_on_latch_woken;
use crate::sync::transport::ReadBeside;

/// How long an open waits for the slot to be let go by a process still
/// holding it (a DBA's peek; a forwarder that is ending).
const SLOT_BUSY_PATIENCE: Duration = Duration::from_secs(10);
const SLOT_BUSY_RETRY: Duration = Duration::from_millis(20);
/// WAL records decoded at a time: about a millisecond's work, between
/// looks at the peer's answer.
const DECODE_PIECE: usize = 512;
/// How often an idle stream looks for newly written WAL (nothing wakes a
/// process that is not a walsender when WAL is flushed).
const LOCAL_POLL: Duration = Duration::from_millis(2);

pub struct SlotStream {
    decoder: LocalDecoder,
    reader: Reader,
    /// Whole transactions read and not yet taken.
    ready: VecDeque<SourceTxn>,
    ready_bytes: usize,
    ready_rows: usize,
    /// Decode no further while `ready` holds this many bytes.
    window: usize,
    /// The end of the WAL decoded so far.
    read_upto: u64,
    /// Where decoding started, or where the restart point last moved
    /// (`moved_restart_point`).
    read_from: u64,
    /// Where the slot was last moved to.
    confirmed: u64,
    /// Transactions at or below this are left out (the peer has them).
    skip_upto: u64,
    /// Keep transactions that came from a peer (the feed relays them; a
    /// push leaves them out where pgoutput could not).
    keep_relayed: bool,
}

impl SlotStream {
    /// Take `slot` and decode it in this process, from its restart point
    /// on, for `reading`.
    pub fn open(slot: &str, reading: Reading) -> Result<SlotStream, String> {
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
                Ok(decoder) => return Ok(SlotStream::over(decoder, reading == Reading::Feed)),
                Err(e) if e.contains("is active for PID") && Instant::now() < patience => {
                    crate::sync::status::wait_on_latch(SLOT_BUSY_RETRY);
                }
                Err(e) => return Err(format!("could not decode replication slot {slot}: {e}")),
            }
        }
    }

    fn over(decoder: LocalDecoder, keep_relayed: bool) -> SlotStream {
        let started_at = decoder.started_at();
        SlotStream {
            decoder,
            reader: Reader::default(),
            ready: VecDeque::new(),
            ready_bytes: 0,
            ready_rows: 0,
            window: 64 << 20,
            read_upto: started_at,
            read_from: started_at,
            confirmed: 0,
            skip_upto: 0,
            keep_relayed,
        }
    }

    /// Read ahead at most `bytes` of transactions.
    pub fn set_window(&mut self, bytes: usize) {
        self.window = bytes.max(1);
    }

    /// Leave out transactions at or below `lsn` (the peer has them), and
    /// move the slot there.
    pub fn skip_to(&mut self, lsn: u64) {
        self.skip_upto = self.skip_upto.max(lsn);
        while self.ready.front().is_some_and(|t| t.end_lsn <= lsn) {
            self.pop();
        }
        self.confirm(lsn);
    }

    /// Everything up to `lsn` is safe: the slot moves there.
    pub fn confirm(&mut self, lsn: u64) {
        self.confirmed = self.confirmed.max(lsn);
        self.decoder.confirm(self.confirmed);
    }

    /// Everything committed before `target` has been read, and no
    /// transaction is half read.
    pub fn reached(&self, target: u64) -> bool {
        self.read_upto.max(self.confirmed) >= target && !self.reader.in_transaction()
    }

    /// Decode a piece of the flushed WAL, unless the window is full.
    /// Returns whether decoding moved on.
    pub fn read_available(&mut self) -> Result<bool, String> {
        if !self.can_decode() {
            return Ok(false);
        }
        let before = self.decoder.read_upto();
        let messages = self.decoder.decode(DECODE_PIECE);
        for message in messages {
            if let Some(t) = self.reader.take(message)? {
                self.keep(t);
            }
        }
        self.read_upto = self.read_upto.max(self.decoder.read_upto());
        Ok(self.read_upto > before)
    }

    /// Flushed WAL waits to be decoded, and the window has room.
    fn can_decode(&self) -> bool {
        self.ready_bytes < self.window && self.decoder.has_flushed()
    }

    /// How much WAL was decoded since decoding started or the restart point
    /// last moved: what a stream opened now would decode again.
    pub fn read_span(&self) -> u64 {
        self.read_upto.saturating_sub(self.read_from)
    }

    /// The restart point moved up to where decoding has read.
    pub fn moved_restart_point(&mut self) {
        self.read_from = self.read_upto;
    }

    /// Nothing waits and nothing is half read: the slot may move to where
    /// decoding read (past transactions that were not for the peer).
    pub fn confirm_all_read(&mut self) {
        if !self.ready.is_empty() || self.reader.in_transaction() {
            return;
        }
        self.confirm(self.read_upto);
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

    /// Sleep until WAL is written past what was decoded, the latch is set,
    /// or `d` passed; when such WAL waits already, for `d` (the caller
    /// chose to let it gather).
    pub fn nap(&self, d: Duration) {
        if self.decoder.has_written() {
            crate::sync::status::wait_on_latch(d);
            return;
        }
        let until = Instant::now() + d;
        while !self.decoder.has_written() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || wait_on_latch_woken(left.min(LOCAL_POLL)) {
                return;
            }
        }
    }

    /// Before decoding again: wait a moment unless flushed WAL waits;
    /// Err once `deadline` passed.
    pub fn wait(&self, deadline: Instant) -> Result<(), String> {
        if self.decoder.has_flushed() {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out waiting for WAL to decode".to_string());
        }
        wait_on_latch_woken(left.min(LOCAL_POLL));
        Ok(())
    }
}

impl ReadBeside for SlotStream {
    fn work(&mut self) -> Result<bool, String> {
        self.read_available()
    }

    fn look_again(&self) -> Instant {
        Instant::now() + LOCAL_POLL
    }
}
