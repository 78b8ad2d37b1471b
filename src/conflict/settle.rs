//! Settling a conflict the trigger found: carry out the decision of
//! `model::lww::decide` (let the remote change through, keep the local
//! row, or ask the table's handler) and log the conflict.

use pgrx::JsonB;

use super::error::ConflictError;
use super::handler::{settle_by_handler, HandlerVerdict};
use super::log::{log_conflict, ConflictRecord};
use super::table::Table;
use crate::model::conflict::lww::{Action, ConflictType, Decision, Resolution};
use crate::model::conflict::version::RowStamp;

pub(super) enum Outcome {
    /// let the remote change through
    Remote,
    /// drop it (the local row stays, or edgesync wrote the row to keep)
    Skip,
}

impl Outcome {
    /// What to do with a remote change that is no conflict.
    pub fn of(action: Action) -> Outcome {
        match action {
            Action::ApplyRemote => Outcome::Remote,
            _ => Outcome::Skip,
        }
    }
}

/// The two sides of a conflict, as logged: the key, and each side's row
/// and version (None where that side has no row).
pub(super) struct Sides {
    pub key: JsonB,
    pub local_row: Option<JsonB>,
    pub remote_row: Option<JsonB>,
    pub local_version: Option<RowStamp>,
    pub remote_version: Option<RowStamp>,
}

fn copy(row: &Option<JsonB>) -> Option<JsonB> {
    row.as_ref().map(|j| JsonB(j.0.clone()))
}

/// Carry out a conflict's decision and log it.
pub(super) fn settle(table: &Table, conflict: ConflictType, decision: Decision, sides: Sides) -> Result<Outcome, ConflictError> {
    let mut resolution = decision.resolution();
    let mut note = None;
    let (outcome, kept_row) = match decision.action {
        Action::ApplyRemote => (Outcome::Remote, copy(&sides.remote_row)),
        Action::KeepLocal => (Outcome::Skip, copy(&sides.local_row)),
        Action::AskHandler => match settle_by_handler(table, conflict, &sides)? {
            HandlerVerdict::Written(row) => (Outcome::Skip, Some(row)),
            HandlerVerdict::KeptLocal => (Outcome::Skip, copy(&sides.local_row)),
            HandlerVerdict::Failed(error) => {
                resolution = Resolution::Pending;
                note = Some(format!("custom handler failed, local row kept: {error}"));
                (Outcome::Skip, copy(&sides.local_row))
            }
        },
    };
    log_conflict(ConflictRecord {
        table_schema: &table.schema,
        table_name: &table.name,
        conflict,
        resolution,
        key: sides.key,
        local_row: sides.local_row,
        remote_row: sides.remote_row,
        kept_row,
        local_version: sides.local_version,
        remote_version: sides.remote_version,
        note,
    })?;
    Ok(outcome)
}
