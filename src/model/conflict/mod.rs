//! Conflict handling: row versions and the last-writer-wins decision.

pub mod delete_stamp;
pub mod lww;
pub mod version;
