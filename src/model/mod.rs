//! Pure logic: no pgrx, no database client. Everything here is unit-tested
//! with plain `#[test]`s and called by thin glue in the modules of the same
//! name one level up (`model::conflict` by `conflict/`, and so on).

pub mod conflict;
pub mod directory;
pub mod node;
pub mod health;
pub mod sql_text;
pub mod sync;
