//! The conflict trigger: a BEFORE ROW trigger on every table under conflict
//! handling, `ENABLE ALWAYS` so that it also fires in apply workers.
//!
//! - A local write (no replication-origin session) is stamped with a fresh
//!   row version and goes on; a local delete leaves a tombstone and tells
//!   peers its versions (a logical decoding message the forwarder carries).
//! - A remote change keeps the version it came with; `model::lww::decide`
//!   says whether it conflicts with what this node holds and which row stays.
//!   Conflicts are written to `edgesync.conflict_log`.
//!
//! Like PostgreSQL's `apply_dispatch`, the remote path has one short handler
//! per operation (remote insert, update, delete); the steps they share live
//! in the sibling modules (stamps, key probe, tombstones, settling).
//!
//! Trigger arguments (written by `set_conflict_policy`): policy, handler
//! (or ''), then the primary-key columns.

use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

use super::clock;
use super::drift;
use super::error::{fail, ConflictError};
use super::flags;
use super::key::{key_json, key_of};
use super::probe::probe_existing;
use super::row::{composite, row_by_key, row_json, write_row_through, Row, Tuple};
use super::settle::{settle, Outcome, Sides};
use super::stamp::{slot_stamp, slot_version, stamped};
use super::table::{policy_of, relid_of, LazyTable, Table};
use super::tombstone::{announce_delete, deleted_version, no_tombstones, record_tombstone};
use crate::error::raise;
use crate::model::conflict::lww::{decide, Action, Local, Policy, Remote};
use crate::model::conflict::version::{RowStamp, Version};

/// The trigger function behind every `edgesync_conflict` trigger.
#[pg_trigger]
fn conflict_trigger<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>, ConflictError> {
    match fire(trigger) {
        Ok(row) => Ok(row),
        // a plain ERROR with a SQLSTATE, not pgrx's "Trigger function panic"
        Err(e) => raise(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string()),
    }
}

fn fire<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>, ConflictError> {
    let op = trigger.op().map_err(fail)?;
    if flags::passes_through(relid_of(trigger)) {
        return Ok(current(trigger, &op));
    }
    // SAFETY: `replorigin_session_origin` is a plain global of this
    // backend, written only by this backend's own thread.
    let remote = unsafe { pg_sys::replorigin_session_origin } != 0;
    if remote {
        remote_change(trigger, op)
    } else {
        local_write(trigger, op)
    }
}

fn current<'a>(trigger: &'a PgTrigger<'a>, op: &PgTriggerOperation) -> Option<Row<'a>> {
    match op {
        PgTriggerOperation::Delete => trigger.old(),
        _ => trigger.new(),
    }
}

/// The cheap path, on every local write: stamp and go.
fn local_write<'a>(trigger: &'a PgTrigger<'a>, op: PgTriggerOperation) -> Result<Option<Row<'a>>, ConflictError> {
    let resolution_prev = || flags::resolution_prev(relid_of(trigger));
    match op {
        PgTriggerOperation::Insert => {
            let node = clock::node_id();
            let stamp = RowStamp::local(clock::tick(), node, resolution_prev().unwrap_or(Version::ZERO));
            Ok(Some(stamped(trigger, Tuple::Trig, stamp)?))
        }
        PgTriggerOperation::Update => {
            let node = clock::node_id();
            let prev = match resolution_prev() {
                Some(p) => p,
                None => slot_stamp(trigger, Tuple::Trig)?.version,
            };
            let stamp = RowStamp::local(clock::tick(), node, prev);
            Ok(Some(stamped(trigger, Tuple::New, stamp)?))
        }
        PgTriggerOperation::Delete => {
            let node = clock::node_id();
            let table = Table::from_trigger(trigger)?;
            let old = trigger.old().ok_or_else(|| fail("DELETE without an old row"))?;
            let deleted = RowStamp { version: Version::new(clock::tick(), node), prev: slot_stamp(trigger, Tuple::Trig)?.version };
            let key = key_json(&table, composite(trigger, Tuple::Trig)?)?;
            announce_delete(table.relid, &key, deleted);
            record_tombstone(table.relid, key, deleted)?;
            Ok(Some(old))
        }
        PgTriggerOperation::Truncate => Ok(None),
    }
}

/// A change that arrived through replication (native apply worker or edgesync's own apply).
fn remote_change<'a>(trigger: &'a PgTrigger<'a>, op: PgTriggerOperation) -> Result<Option<Row<'a>>, ConflictError> {
    let policy = policy_of(trigger)?;
    let table = LazyTable::new(trigger);
    let me = clock::node_id();
    match op {
        PgTriggerOperation::Update => remote_update(trigger, &table, policy, me),
        PgTriggerOperation::Insert => remote_insert(trigger, &table, policy, me),
        PgTriggerOperation::Delete => remote_delete(trigger, &table, policy, me),
        PgTriggerOperation::Truncate => Ok(None),
    }
}

/// A remote update of a row this node holds (the apply found it by key).
fn remote_update<'a>(trigger: &'a PgTrigger<'a>, table: &LazyTable<'_>, policy: Policy, me: i32) -> Result<Option<Row<'a>>, ConflictError> {
    let new = trigger.new().ok_or_else(|| fail("UPDATE without a new row"))?;
    let (l, r) = (slot_stamp(trigger, Tuple::Trig)?, slot_stamp(trigger, Tuple::New)?);
    if let Err(drift) = clock::observe(r.version.hlc) {
        return drift::hold(trigger, table, Local::Row(l), r, Tuple::New, drift);
    }
    let decision = decide(Local::Row(l), Remote::Update(r), policy, me);
    let Some(conflict) = decision.conflict else {
        return Ok(pass_if(Outcome::of(decision.action), new));
    };
    let local_row = row_json(trigger, Tuple::Trig)?;
    let remote_row = row_json(trigger, Tuple::New)?;
    let table = table.get()?;
    let key = key_of(&local_row, &table.keys);
    let sides = Sides { key, local_row: Some(local_row), remote_row: Some(remote_row), local_version: Some(l), remote_version: Some(r) };
    Ok(pass_if(settle(table, conflict, decision, sides)?, new))
}

/// A remote insert, or (under `TableFlag::missing_row_update`) apply's
/// insert standing in for a remote update of a row this node lacks.
fn remote_insert<'a>(trigger: &'a PgTrigger<'a>, table: &LazyTable<'_>, policy: Policy, me: i32) -> Result<Option<Row<'a>>, ConflictError> {
    let (new, r) = match slot_version(trigger, Tuple::Trig)? {
        Some(r) => (trigger.new().ok_or_else(|| fail("INSERT without a new row"))?, r),
        // from a table without the column: the zero version, as rows from
        // before conflict handling carry (and as its default gave before 0.6.0)
        None => (stamped(trigger, Tuple::Trig, RowStamp::ZERO)?, RowStamp::ZERO),
    };
    let observed = clock::observe(r.version.hlc);
    let local = local_state_for(table, trigger)?;
    if let Err(drift) = observed {
        return drift::hold(trigger, table, local, r, Tuple::Trig, drift);
    }
    let remote = if flags::is_missing_row_update(relid_of(trigger)) { Remote::Update(r) } else { Remote::Insert(r) };
    let decision = decide(local, remote, policy, me);
    let Some(conflict) = decision.conflict else {
        return insert_without_conflict(trigger, table, decision.action, local, new);
    };
    let remote_row = row_json(trigger, Tuple::Trig)?;
    let table = table.get()?;
    let key = key_of(&remote_row, &table.keys);
    let (local_row, local_version) = match local {
        Local::Row(stamp) => (row_by_key(&table.qualified, &table.keys, &key).map_err(fail)?, Some(stamp)),
        _ => (None, None),
    };
    let row_exists = local_row.is_some();
    let sides = Sides { key, local_row, remote_row: Some(JsonB(remote_row.0.clone())), local_version, remote_version: Some(r) };
    match settle(table, conflict, decision, sides)? {
        // the key exists: the insert becomes an update of that row
        Outcome::Remote if row_exists => {
            write_row_through(table, &remote_row)?;
            Ok(None)
        }
        outcome => Ok(pass_if(outcome, new)),
    }
}

/// A remote insert that conflicts with nothing here.
fn insert_without_conflict<'a>(
    trigger: &'a PgTrigger<'a>,
    table: &LazyTable<'_>,
    action: Action,
    local: Local,
    new: Row<'a>,
) -> Result<Option<Row<'a>>, ConflictError> {
    match (action, local) {
        // written on top of the row we hold (a resolution that re-inserted it there): an update here
        (Action::ApplyRemote, Local::Row(_)) => {
            let remote_row = row_json(trigger, Tuple::Trig)?;
            write_row_through(table.get()?, &remote_row)?;
            Ok(None)
        }
        (Action::ApplyRemote, _) => Ok(Some(new)),
        _ => Ok(None),
    }
}

/// A remote delete of a row this node holds: judged with the delete's
/// versions when they came with it (edgesync's own apply), else as a
/// native delete, which carries only the key.
fn remote_delete<'a>(trigger: &'a PgTrigger<'a>, table: &LazyTable<'_>, policy: Policy, me: i32) -> Result<Option<Row<'a>>, ConflictError> {
    let old = trigger.old().ok_or_else(|| fail("DELETE without an old row"))?;
    let l = slot_stamp(trigger, Tuple::Trig)?;
    let stamped = delete_versions(trigger, table)?;
    let stamp = stamped.as_ref().map(|(s, _)| *s);
    if let Some(s) = stamp {
        if let Err(drift) = clock::observe(s.version.hlc) {
            return drift::hold_delete(trigger, table, l, s, drift);
        }
    }
    let remote = Remote::Delete { seen: stamp.map(|s| s.prev), version: stamp.map(|s| s.version) };
    let decision = decide(Local::Row(l), remote, policy, me);
    let outcome = match decision.conflict {
        None => Outcome::of(decision.action),
        Some(conflict) => {
            let local_row = row_json(trigger, Tuple::Trig)?;
            let table = table.get()?;
            let key = key_of(&local_row, &table.keys);
            let sides = Sides { key, local_row: Some(local_row), remote_row: None, local_version: Some(l), remote_version: stamp };
            settle(table, conflict, decision, sides)?
        }
    };
    match outcome {
        Outcome::Remote => {
            // the delete's own versions; a native delete's are unknown here,
            // and the row's version is their lower bound
            let (deleted, key) = match stamped {
                Some(stamped) => {
                    // relayed on (the cloud's feed): the next node judges it by the same versions
                    announce_delete(relid_of(trigger), &stamped.1, stamped.0);
                    stamped
                }
                None => (RowStamp { version: l.version, prev: l.version }, key_json(table.get()?, composite(trigger, Tuple::Trig)?)?),
            };
            record_tombstone(relid_of(trigger), key, deleted)?;
            Ok(Some(old))
        }
        Outcome::Skip => Ok(None),
    }
}

/// The versions edgesync's apply handed over for this delete, with the
/// row's key object, when the key they came with is this row's (None: a
/// native delete, or versions of another row).
fn delete_versions(trigger: &PgTrigger<'_>, table: &LazyTable<'_>) -> Result<Option<(RowStamp, JsonB)>, ConflictError> {
    let Some((key, stamp)) = flags::take_remote_delete_stamp(relid_of(trigger)) else {
        return Ok(None);
    };
    let row_key = key_json(table.get()?, composite(trigger, Tuple::Trig)?)?;
    Ok((row_key.0 == key).then_some((stamp, row_key)))
}

/// The row to hand back to PostgreSQL for `outcome`: `row` to let the
/// change through, none to skip it.
fn pass_if(outcome: Outcome, row: Row<'_>) -> Option<Row<'_>> {
    match outcome {
        Outcome::Remote => Some(row),
        Outcome::Skip => None,
    }
}

/// What this node holds for the key of the row being inserted: the row's
/// stamp, or the unexpired tombstone's delete version. (Apply may have
/// looked for the row already, and found none.)
fn local_state_for(table: &LazyTable<'_>, trigger: &PgTrigger<'_>) -> Result<Local, ConflictError> {
    if !flags::key_known_absent(relid_of(trigger)) {
        if let Some(stamp) = probe_existing(trigger)? {
            return Ok(Local::Row(stamp));
        }
    }
    if no_tombstones()? {
        return Ok(Local::Absent);
    }
    let table = table.get()?;
    let key = key_json(table, composite(trigger, Tuple::Trig)?)?;
    Ok(match deleted_version(table.relid, key)? {
        Some(version) => Local::Deleted(version),
        None => Local::Absent,
    })
}
