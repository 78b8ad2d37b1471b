//! Pure logic: no pgrx, no database client. Everything here is unit-tested
//! with plain `#[test]`s and called by thin glue in the modules above.

pub mod batch;
pub mod capture;
pub mod diagnose;
pub mod forwarder;
pub mod health;
pub mod lww;
pub mod pgoutput;
pub mod sql_text;
pub mod version;
