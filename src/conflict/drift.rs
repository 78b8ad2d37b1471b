//! A remote change stamped further past this node's wall clock than
//! `edgesync.max_clock_drift` is held, not applied: logged as a pending
//! `clock_drift` conflict with both rows, for a DBA to take or drop with
//! `resolve_conflict`. Applied, its version would beat every concurrent
//! edit on every node until the wall clocks catch up (for a clock set to
//! 2100, for good); a resolution writes it with this node's own version.

use pgrx::prelude::*;

use super::error::{fail, ConflictError};
use super::key::key_of;
use super::log::{log_conflict, ConflictRecord};
use super::row::{row_by_key, row_json, Row, Tuple};
use super::table::LazyTable;
use crate::guc;
use crate::model::conflict::lww::{ConflictType, Local, Resolution};
use crate::model::conflict::version::{Drift, RowStamp};

/// Hold the remote change in `remote_tuple` (stamped `remote`): keep what
/// this node holds for its key and log the change for a DBA.
pub(super) fn hold<'a>(
    trigger: &'a PgTrigger<'a>,
    table: &LazyTable<'_>,
    local: Local,
    remote: RowStamp,
    remote_tuple: Tuple,
    drift: Drift,
) -> Result<Option<Row<'a>>, ConflictError> {
    let local_version = match local {
        // this very write is here already (applied under a wider bound): nothing to hold
        Local::Row(l) if l.version == remote.version => return Ok(None),
        Local::Row(l) => Some(l),
        _ => None,
    };
    let table = table.get()?;
    let remote_row = row_json(trigger, remote_tuple)?;
    let key = key_of(&remote_row, &table.keys);
    let local_row = match local_version {
        Some(_) => row_by_key(&table.qualified, &table.keys, &key).map_err(fail)?,
        None => None,
    };
    let held = Held { table_schema: &table.schema, table_name: &table.name, key, remote, drift };
    log_held(held, local_row, local_version, Some(remote_row))?;
    Ok(None)
}

/// Hold a remote delete stamped `remote` of the row this node holds at
/// version `local`: the row stays, and the delete is logged for a DBA
/// (`apply_remote` deletes it then).
pub(super) fn hold_delete<'a>(
    trigger: &'a PgTrigger<'a>,
    table: &LazyTable<'_>,
    local: RowStamp,
    remote: RowStamp,
    drift: Drift,
) -> Result<Option<Row<'a>>, ConflictError> {
    let table = table.get()?;
    let local_row = row_json(trigger, Tuple::Trig)?;
    let key = key_of(&local_row, &table.keys);
    let held = Held { table_schema: &table.schema, table_name: &table.name, key, remote, drift };
    log_held(held, Some(local_row), Some(local), None)?;
    Ok(None)
}

/// A remote change held for a DBA: its table, key, version and how far
/// past the wall clock that version is.
pub(super) struct Held<'t> {
    pub table_schema: &'t str,
    pub table_name: &'t str,
    pub key: pgrx::JsonB,
    pub remote: RowStamp,
    pub drift: Drift,
}

/// Log `held` as a pending `clock_drift` conflict: what this node holds
/// for its key stays (and is the kept row); `remote_row` None is a delete.
pub(super) fn log_held(held: Held<'_>, local_row: Option<pgrx::JsonB>, local_version: Option<RowStamp>, remote_row: Option<pgrx::JsonB>) -> Result<(), ConflictError> {
    let kept_row = local_row.as_ref().map(|j| pgrx::JsonB(j.0.clone()));
    log_conflict(ConflictRecord {
        table_schema: held.table_schema,
        table_name: held.table_name,
        conflict: ConflictType::ClockDrift,
        resolution: Resolution::Pending,
        key: held.key,
        local_row,
        remote_row,
        kept_row,
        local_version,
        remote_version: Some(held.remote),
        note: Some(held_note(held.remote, held.drift)),
    })
}

fn held_note(remote: RowStamp, drift: Drift) -> String {
    format!(
        "held: version {} is {:.3} s past this node's wall clock, beyond edgesync.max_clock_drift ({} ms); \
         fix that node's clock, then take the change (apply_remote, written with this node's version) or drop it (keep_local)",
        remote.version,
        drift.ahead_ms as f64 / 1000.0,
        guc::MAX_CLOCK_DRIFT_MS.get()
    )
}
