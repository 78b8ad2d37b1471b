//! Conflict handling inside the apply path: the node's clock, the row
//! versions the trigger stamps and compares, the conflict log, tombstones,
//! and settling conflicts by hand.
//!
//! What the rest of edgesync uses of it is re-exported here, so that the
//! files inside can move without their callers noticing.

pub mod clock;
pub mod resolution;
pub mod trigger;

pub(crate) use trigger::{log_conflict, origin_name, plan_for, row_by_key, ConflictRecord, ResolutionWrite, TableFlag, VERSION_COLUMN};

#[cfg(any(test, feature = "pg_test"))]
mod tests;
