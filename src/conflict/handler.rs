//! The `custom` policy: a conflict is put to the table's handler (through
//! `edgesync._call_conflict_handler`, which runs it and catches its
//! errors), and the row it chooses is written on both nodes alike.

use pgrx::prelude::*;
use pgrx::JsonB;

use super::error::ConflictError;
use super::row::write_row_through;
use super::settle::Sides;
use super::stamp::VERSION_COLUMN;
use super::table::Table;
use crate::model::conflict::lww::ConflictType;
use crate::model::conflict::version::RowStamp;

/// How the handler settled a conflict.
pub(super) enum HandlerVerdict {
    /// It chose a row: written (completed and stamped) in place of both sides.
    Written(JsonB),
    /// It kept the local row.
    KeptLocal,
    /// It failed (the message says why): the local row stays, pending.
    Failed(String),
}

/// Ask the handler and write the row it chose.
pub(super) fn settle_by_handler(table: &Table, conflict: ConflictType, sides: &Sides) -> Result<HandlerVerdict, ConflictError> {
    match ask_handler(table, conflict, &sides.local_row, &sides.remote_row) {
        Ok(Some(chosen)) => {
            let row = agreed_row(sides, chosen);
            write_row_through(table, &row)?;
            Ok(HandlerVerdict::Written(row))
        }
        Ok(None) => Ok(HandlerVerdict::KeptLocal),
        Err(error) => Ok(HandlerVerdict::Failed(error)),
    }
}

/// The row both nodes end with: the handler's columns completed from the
/// newer row, not from each node's own, and given the newer version.
fn agreed_row(sides: &Sides, chosen: JsonB) -> JsonB {
    let remote_newer = match (sides.local_version, sides.remote_version) {
        (Some(l), Some(r)) => r.version > l.version,
        (None, _) => true,
        (Some(_), None) => false,
    };
    let newest = if remote_newer { sides.remote_version } else { sides.local_version }.unwrap_or(RowStamp::ZERO);
    let base = if remote_newer && sides.remote_row.is_some() { &sides.remote_row } else { &sides.local_row };
    settled_row(base, chosen, newest)
}

/// What the custom handler chose: Ok(Some(row)) to keep that row,
/// Ok(None) to keep the local one, Err(message) when it failed.
fn ask_handler(table: &Table, conflict: ConflictType, local: &Option<JsonB>, remote: &Option<JsonB>) -> Result<Option<JsonB>, String> {
    let handler = table.handler.clone().ok_or_else(|| "policy custom without a handler".to_string())?;
    match call_handler(&handler, table, conflict, local, remote) {
        Ok((Some(true), kept, _)) => match kept {
            None => Ok(None),
            Some(j) if j.0.is_null() => Ok(None),
            Some(j) if j.0.is_object() => Ok(Some(j)),
            Some(j) => Err(format!("the handler returned {}, not a jsonb object or NULL", j.0)),
        },
        Ok((_, _, error)) => Err(error.unwrap_or_else(|| "handler failed".to_string())),
        Err(e) => Err(e.to_string()),
    }
}

/// What `_call_conflict_handler` answered: (ok, kept_row, error).
type HandlerAnswer = (Option<bool>, Option<JsonB>, Option<String>);

fn call_handler(handler: &str, table: &Table, conflict: ConflictType, local: &Option<JsonB>, remote: &Option<JsonB>) -> pgrx::spi::Result<HandlerAnswer> {
    Spi::connect(|client| {
        let t = client.select(
            "SELECT ok, kept_row, error FROM edgesync._call_conflict_handler($1::regprocedure::regproc, $2::regclass, $3, $4, $5)",
            None,
            &[
                handler.into(),
                table.relid.into(),
                conflict.as_str().into(),
                local.as_ref().map(|j| JsonB(j.0.clone())).into(),
                remote.as_ref().map(|j| JsonB(j.0.clone())).into(),
            ],
        )?;
        let row = t.first();
        Ok((row.get::<bool>(1)?, row.get::<JsonB>(2)?, row.get::<String>(3)?))
    })
}

/// A row the handler returned, completed from the base row and given the
/// newer of the two versions, so that both nodes end with the same row.
fn settled_row(base: &Option<JsonB>, chosen: JsonB, keep: RowStamp) -> JsonB {
    let mut row = match base.as_ref().map(|b| b.0.clone()) {
        Some(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    if let serde_json::Value::Object(m) = chosen.0 {
        row.extend(m);
    }
    row.insert(VERSION_COLUMN.to_string(), serde_json::Value::String(keep.to_hex()));
    JsonB(serde_json::Value::Object(row))
}
