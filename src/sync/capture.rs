//! A peer's replication slot on this node: what waits in it, reading it
//! (peek, never consume), and moving it on once the peer confirmed.
//! Runs inside the forwarder's transactions, through SPI.

use pgrx::prelude::*;

use crate::model::sync::capture::{Reader, SourceTxn};
use crate::model::sync::lsn::{format_lsn, parse_lsn};
use crate::model::sync::pgoutput::PROTOCOL_VERSION;

/// What a read of a slot is for, which says what it reads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// A forwarder pushing up: tables enrolled `up` or `both`, changes made
    /// on this node only (what came from a peer is not sent back).
    Push,
    /// The cloud's feed worker: tables enrolled `down` or `both`, whoever
    /// made the change (the feed relays one edge's changes to the others).
    Feed,
}

impl Reading {
    pub(crate) fn publication(self) -> &'static str {
        match self {
            Reading::Push => "edgesync_up",
            Reading::Feed => "edgesync_down",
        }
    }
}

/// What one peek read.
pub struct Peek {
    pub txns: Vec<SourceTxn>,
    /// The flush LSN the peek read up to.
    pub upto: u64,
    /// Everything up to `upto` was read (the message limit did not cut it).
    pub complete: bool,
}

fn lsn(text: Option<String>) -> Result<u64, String> {
    let text = text.ok_or("no LSN")?;
    parse_lsn(&text).ok_or_else(|| format!("bad LSN {text:?}"))
}

/// Logical decoding logs two lines at LOG each time it starts; a forwarder
/// starts it several times a second. Keep them out of the server log for
/// this transaction (LOG ranks above ERROR there: only `fatal` hides it; an
/// error here reaches the forwarder, which logs it itself).
fn quiet(client: &pgrx::spi::SpiClient<'_>) -> pgrx::spi::Result<()> {
    client.select("SELECT pg_catalog.set_config('log_min_messages', 'fatal', true)", None, &[])?;
    Ok(())
}

/// Where a slot stands, in bytes of WAL.
pub struct Backlog {
    /// Written since the slot's confirmed position, flushed or not: an
    /// asynchronous commit counts before the WAL writer flushes it.
    pub pending: u64,
    /// Between the slot's restart point and its confirmed position: what
    /// every peek decodes again before it reaches anything new.
    pub restart_lag: u64,
}

pub fn backlog(slot: &str) -> Result<Backlog, String> {
    Spi::connect(|client| {
        let t = client.select(
            "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(), confirmed_flush_lsn)::bigint,
                    pg_catalog.pg_wal_lsn_diff(confirmed_flush_lsn, restart_lsn)::bigint
               FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            None,
            &[slot.into()],
        )?;
        if t.is_empty() {
            return Ok(Err(format!("replication slot {slot} does not exist; drop the peer and add it again")));
        }
        let row = t.first();
        // NULL when the slot has no position yet or lost its WAL: nothing to
        // measure, and the next peek reports what is wrong with the slot
        let bytes = |i| -> pgrx::spi::Result<u64> { Ok(row.get::<i64>(i)?.unwrap_or(0).max(0) as u64) };
        Ok(Ok(Backlog { pending: bytes(1)?, restart_lag: bytes(2)? }))
    })
    .map_err(|e: pgrx::spi::Error| e.to_string())?
}

/// Log a snapshot of running transactions, as the background writer does
/// every 15 s: the next decoding finds a point to restart from there, and
/// the slot's restart point moves up to it at the next advance. Without it
/// a busy slot's peeks re-decode up to 15 s of WAL each.
pub fn log_restart_point() {
    // SAFETY: called by a forwarder attached to shared memory, between its
    // transactions; LogStandbySnapshot needs no transaction (the background
    // writer calls it the same way).
    unsafe { pg_sys::LogStandbySnapshot() };
}

/// Flush the WAL written so far: decoding reads only flushed WAL, and an
/// asynchronous commit would otherwise wait for the WAL writer (up to
/// wal_writer_delay) before it could leave.
/// Returns where it flushed to.
pub fn flush_wal() -> u64 {
    // the end of the last record written (the insert position may sit past a page header not written yet)
    // SAFETY: called by a forwarder attached to shared memory; flushing up
    // to a position this server already inserted is always allowed.
    unsafe {
        let end = pg_sys::GetXLogInsertEndRecPtr();
        pg_sys::XLogFlush(end);
        end
    }
}

/// Read whole transactions from the slot, at most about `max_messages`
/// pgoutput messages, without consuming them.
pub fn peek(slot: &str, reading: Reading, max_messages: i64, reader: &mut Reader) -> Result<Peek, String> {
    let (upto, messages) = Spi::connect(|client| {
        quiet(client)?;
        // values are printed here and read back by the peer: print them the one way it reads them
        crate::guc::pin_value_text(crate::guc::Scope::Transaction);
        let upto = client.select("SELECT pg_catalog.pg_current_wal_flush_lsn()::text", None, &[])?.first().get_one::<String>()?;
        // `messages`: a delete's versions travel as a logical decoding
        // message beside it (conflict/tombstone.rs announce_delete).
        // Where pgoutput can leave out what came from peers (no echo); else filtered below
        let no_echo = reading == Reading::Push && crate::compat::PGOUTPUT_FILTERS_ORIGIN;
        let sql = format!(
            "SELECT data FROM pg_catalog.pg_logical_slot_peek_binary_changes($1, $2::pg_lsn, $3::int,
                 'proto_version', '{PROTOCOL_VERSION}', 'publication_names', '{}',
                 'messages', 'true'{})",
            reading.publication(),
            if no_echo { ", 'origin', 'none'" } else { "" }
        );
        let t = client.select(&sql, None, &[slot.into(), upto.clone().into(), (max_messages as i32).into()])?;
        let mut messages = Vec::with_capacity(t.len());
        for row in t {
            messages.push(row.get::<Vec<u8>>(1)?);
        }
        Ok::<_, pgrx::spi::Error>((upto, messages))
    })
    .map_err(|e| e.to_string())?;
    // `data` is never NULL: one would be a server fault, not an empty message
    let messages: Vec<Vec<u8>> = messages.into_iter().collect::<Option<_>>().ok_or("the slot returned a NULL message")?;
    let complete = (messages.len() as i64) < max_messages;
    let txns = reader.read(messages)?;
    Ok(Peek { txns, upto: lsn(upto)?, complete })
}

/// Move the slot's confirmed position to `to` (never back).
pub fn advance(slot: &str, to: u64) -> Result<(), String> {
    Spi::connect(|client| {
        quiet(client)?;
        client.select(
            "SELECT pg_catalog.pg_replication_slot_advance(slot_name, $2::pg_lsn)
               FROM pg_catalog.pg_replication_slots
              WHERE slot_name = $1 AND confirmed_flush_lsn < $2::pg_lsn",
            None,
            &[slot.into(), format_lsn(to).into()],
        )?;
        Ok::<_, pgrx::spi::Error>(())
    })
    .map_err(|e| e.to_string())
}
