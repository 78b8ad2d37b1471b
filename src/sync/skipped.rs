//! Transactions a DBA set aside (`edgesync.skip_transaction`, sql/forwarder.sql).
//! The function records the request in `edgesync.skipped_transaction`; the
//! forwarder, when its peek meets the transaction, fills in its changes (it
//! alone holds them: they live in the slot) and leaves it out of what it
//! sends. Runs inside the forwarder's transactions, through SPI.

use std::cell::Cell;

use pgrx::prelude::*;

use crate::model::sync::blocked::changes_json;
use crate::model::sync::capture::SourceTxn;
use crate::model::sync::lsn::{format_lsn, parse_lsn};

thread_local! {
    /// `edgesync.skipped_transaction` was seen in this process.
    static TABLE_SEEN: Cell<bool> = const { Cell::new(false) };
}

/// Does the table exist? Not before `ALTER EXTENSION edgesync UPDATE` has
/// run under a newer library: nothing can have been skipped then, and the
/// forwarder must go on forwarding.
fn table_exists() -> Result<bool, String> {
    if !TABLE_SEEN.with(Cell::get) {
        let found = Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('edgesync.skipped_transaction') IS NOT NULL")
            .map_err(|e| e.to_string())?
            .unwrap_or(false);
        TABLE_SEEN.with(|seen| seen.set(found));
    }
    Ok(TABLE_SEEN.with(Cell::get))
}

/// The end LSNs of `txns` (in LSN order) that were skipped for `peer`;
/// the changes of each one not yet kept are written to its row.
pub fn set_aside(peer: &str, txns: &[SourceTxn]) -> Result<Vec<u64>, String> {
    let (Some(first), Some(last)) = (txns.first(), txns.last()) else { return Ok(Vec::new()) };
    if !table_exists()? {
        return Ok(Vec::new());
    }
    let found = Spi::connect(|client| {
        let t = client.select(
            "SELECT lsn::text, changes IS NULL FROM edgesync.skipped_transaction
              WHERE peer = $1 AND lsn BETWEEN $2::pg_lsn AND $3::pg_lsn",
            None,
            &[peer.into(), format_lsn(first.end_lsn).into(), format_lsn(last.end_lsn).into()],
        )?;
        t.into_iter().map(|r| Ok((r.get::<String>(1)?, r.get::<bool>(2)?.unwrap_or(false)))).collect::<pgrx::spi::Result<Vec<_>>>()
    })
    .map_err(|e| format!("could not read edgesync.skipped_transaction: {e}"))?;
    let mut skipped = Vec::with_capacity(found.len());
    for (lsn, unfilled) in found {
        let lsn = lsn.as_deref().and_then(parse_lsn).ok_or("edgesync.skipped_transaction holds a NULL lsn")?;
        if let Some(txn) = txns.iter().find(|t| t.end_lsn == lsn).filter(|_| unfilled) {
            keep(peer, txn)?;
        }
        skipped.push(lsn);
    }
    Ok(skipped)
}

/// Write a skipped transaction's changes and commit time to its row.
fn keep(peer: &str, txn: &SourceTxn) -> Result<(), String> {
    let messages = txn.needs.iter().map(|(_, m)| m.as_slice()).chain(txn.messages.iter().map(Vec::as_slice));
    let changes = changes_json(messages)?.to_string();
    Spi::connect_mut(|client| {
        client.update(
            "UPDATE edgesync.skipped_transaction
                SET changes = $3::jsonb,
                    commit_time = timestamptz '2000-01-01 00:00:00+00' + make_interval(secs => $4 / 1e6)
              WHERE peer = $1 AND lsn = $2::pg_lsn",
            None,
            &[peer.into(), format_lsn(txn.end_lsn).into(), changes.into(), txn.commit_time.into()],
        )?;
        Ok::<_, pgrx::spi::Error>(())
    })
    .map_err(|e| format!("could not keep the skipped transaction {}: {e}", format_lsn(txn.end_lsn)))
}
