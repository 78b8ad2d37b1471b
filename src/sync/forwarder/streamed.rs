//! The push half of a round, read from the slot as a stream
//! (`sync::slot_stream`), decoded in this process: the forwarder decodes
//! the next batch while the peer applies the one it sent.
//!
//! A round ends when decoding has read past the WAL written before the
//! round began and every transaction committed up to there was sent and
//! confirmed; transactions read beyond it wait in the stream for the next
//! round. The slot moves only to what the peer confirmed (or, when nothing
//! waits, to where decoding read). Any failure closes the
//! stream: what was read ahead is read again from the slot's position.
//!
//! Where the slot cannot be taken (another process holds it for longer
//! than a few seconds), rounds read the slot by peek, as before, and try
//! again a minute later.

use std::time::Instant;

use pgrx::prelude::*;

use super::{Forwarder, PeerConfig, Pushed, STREAM_RETRY, READ_AHEAD_BATCHES};

use crate::model::sync::capture::SourceTxn;
use crate::model::sync::pack::pack;
use crate::sync::capture::{self, Reading};
use crate::sync::launcher::in_transaction;
use crate::sync::slot_stream::SlotStream;
use crate::sync::status::{self, Activity};

impl Forwarder {
    /// Open the slot's stream unless it is open; false: read by peek.
    pub(super) fn open_stream(&mut self, peer: &PeerConfig) -> bool {
        if self.stream.is_some() {
            return true;
        }
        if self.peek_until.is_some_and(|until| Instant::now() < until) {
            return false;
        }
        let opened = SlotStream::open(&peer.slot, Reading::Push);
        match opened {
            Ok(mut stream) => {
                stream.set_window(READ_AHEAD_BATCHES * peer.limits.max_bytes);
                self.stream = Some(stream);
                true
            }
            Err(e) => {
                log!("edgesync: peer {:?}: reading the slot through SQL for a minute, since it could not be decoded here: {e}", peer.name);
                self.peek_until = Some(Instant::now() + STREAM_RETRY);
                false
            }
        }
    }

    /// Let the slot go (what was read ahead is read again from its position).
    pub(super) fn close_stream(&mut self) {
        self.stream = None;
    }

    /// Between rounds, for at most `d`: with a stream open, decode what is
    /// flushed and, when nothing waited, wake as soon as more WAL is written.
    pub(super) fn wait_idle(&mut self, d: std::time::Duration) {
        let Some(stream) = self.stream.as_mut() else { return status::wait_on_latch(d) };
        if let Err(e) = stream.read_available() {
            log!("edgesync: peer {}: reading the slot between rounds failed, it is read again from its position: {e}", self.peer_id);
            self.close_stream();
            return;
        }
        match stream.waiting().0 {
            0 => stream.nap(d),
            // something to send already: the state machine said how long to let more gather
            _ => status::wait_on_latch(d),
        }
    }

    /// Push everything committed up to `target` (and whatever else was
    /// read by then). Returns the rows sent.
    pub(super) fn push_streamed(&mut self, peer: &PeerConfig, node: &str, target: u64) -> Result<i64, String> {
        let mut sent = 0i64;
        let mut quiet_until = Instant::now() + Self::timeout();
        // the time from the peer's answer to the next batch: decoding that
        // did not happen while the peer applied
        let mut reading_since = Instant::now();
        loop {
            let stream = self.stream_mut()?;
            if stream.read_available()? {
                quiet_until = Instant::now() + Self::timeout();
            }
            let reached = stream.reached(target);
            let txns = stream.take_batch(peer.limits, reached.then_some(target));
            if !txns.is_empty() {
                self.read_wait += reading_since.elapsed();
                sent += self.push_taken(peer, node, txns)?;
                quiet_until = Instant::now() + Self::timeout();
                reading_since = Instant::now();
                continue;
            }
            if reached {
                stream.confirm_all_read();
                self.move_restart_point(peer)?;
                return Ok(sent);
            }
            stream.wait(quiet_until)?;
        }
    }

    /// Where the slot's restart point lags far behind what was confirmed
    /// (the next stream would decode all of that again before reaching
    /// anything new: say the WAL of a bulk load into tables this peer does
    /// not get), log a running-transactions snapshot, read past it and
    /// confirm it: confirming moves the restart point up to it.
    fn move_restart_point(&mut self, peer: &PeerConfig) -> Result<(), String> {
        let backlog = in_transaction(|| capture::backlog(&peer.slot))?;
        // the slot's own figure may predate the confirmation just sent: what this stream read counts too
        let read_span = self.stream_mut()?.read_span();
        if backlog.restart_lag.max(read_span) <= super::RESTART_LAG_LIMIT {
            return Ok(());
        }
        capture::log_restart_point();
        self.last_restart_point = Instant::now();
        let target = capture::flush_wal();
        let quiet_until = Instant::now() + Self::timeout();
        let stream = self.stream_mut()?;
        loop {
            stream.read_available()?;
            if stream.reached(target) {
                // what was read meanwhile waits for the next round; only a stream with nothing waiting confirms
                stream.moved_restart_point();
                stream.confirm_all_read();
                return Ok(());
            }
            stream.wait(quiet_until)?;
        }
    }

    fn stream_mut(&mut self) -> Result<&mut SlotStream, String> {
        self.stream.as_mut().ok_or_else(|| "the slot's stream was closed".to_string())
    }

    /// Send transactions taken from the stream, in batches, and move the
    /// slot past them once the peer confirmed them. Returns the rows sent.
    fn push_taken(&mut self, peer: &PeerConfig, node: &str, txns: Vec<SourceTxn>) -> Result<i64, String> {
        if self.conn.is_none() {
            self.connect(peer, node)?;
        }
        let last_taken = txns.last().map(|t| t.end_lsn).unwrap_or(0);
        let peer_has = self.peer_has;
        let txns: Vec<SourceTxn> = txns.into_iter().filter(|t| t.end_lsn > peer_has).collect();
        let txns = self.leave_out_skipped(peer, txns)?;
        let batches = pack(node, txns, peer.limits);
        let (_, waiting_rows) = self.stream_mut()?.waiting();
        let mut pending_rows = batches.iter().map(super::rows_in).sum::<i64>() + waiting_rows;
        status::update(self.index, |s| s.activity = Activity::Pushing as u8);
        let mut pushed = Pushed::default();
        for (i, b) in batches.iter().enumerate() {
            let next_oldest = super::oldest_in(batches.get(i + 1)).max(0);
            let next_oldest = if next_oldest == 0 { self.stream_mut()?.oldest_waiting() } else { next_oldest };
            pushed.blocked = self.send_narrowing(b, &mut pushed, &mut pending_rows, next_oldest)?;
            if pushed.blocked.is_some() {
                break;
            }
        }
        self.hold_at("before_advance");
        if let Some(blocked) = pushed.blocked {
            if pushed.confirmed_to > 0 {
                self.stream_mut()?.confirm(pushed.confirmed_to);
            }
            return Err(self.record_blocked(blocked));
        }
        self.stream_mut()?.confirm(last_taken);
        debug1!("edgesync: peer {:?}: {} rows confirmed up to {last_taken:#x}", peer.name, pushed.rows);
        Ok(pushed.rows)
    }
}
