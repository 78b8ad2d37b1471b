//! Conflict handling inside the apply path: the node's clock, the row
//! versions the trigger stamps and compares, the conflict log, tombstones,
//! and settling conflicts by hand.
//!
//! The trigger's path, in the order a remote change meets it:
//! `trigger` (dispatch per operation) -> `table` (its arguments) ->
//! `stamp` (row versions) -> `probe` / `tombstone` (what this node holds)
//! -> `settle` (carry out the decision; `handler` for `custom`) -> `log`.
//! `row`, `key` and `flags` are the pieces those steps share; `find` is
//! apply's own primary-key lookup, made with the probe's scan keys.
//!
//! What the rest of edgesync uses of it is re-exported here, so that the
//! files inside can move without their callers noticing.

pub mod clock;
mod drift;
mod error;
mod find;
mod flags;
mod handler;
mod key;
mod log;
mod probe;
pub mod resolution;
mod row;
mod settle;
mod stamp;
mod table;
mod tombstone;
pub mod trigger;

pub(crate) use flags::{KeyAbsent, RemoteDeleteStamp, ResolutionWrite, TableFlag};
pub(crate) use key::key_of;
pub(crate) use log::{applying_from, done_applying, log_conflict, ConflictRecord};
pub(crate) use find::{KeyFinder, RowLock};
pub(crate) use row::row_by_key;
pub(crate) use stamp::VERSION_COLUMN;
pub(crate) use tombstone::missing_row_deleted;

#[cfg(any(test, feature = "pg_test"))]
mod tests;
