//! The one way edgesync ends a statement with an error: an ERROR with a
//! SQLSTATE, through PostgreSQL's own error machinery (never a Rust panic
//! turned into an unclear message).

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// Raise an ERROR with `code` and `message` (which starts with "edgesync: ").
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>) -> ! {
    let message: String = message.into();
    ereport!(PgLogLevel::ERROR, code, message);
    unreachable!("ereport(ERROR) does not return")
}

/// Raise an ERROR with `code`, `message` and a hint saying what to do.
/// (Built by hand: pgrx's `ereport!` takes a fourth argument as DETAIL.)
pub fn raise_with_hint(code: PgSqlErrorCode, message: impl Into<String>, hint: &str) -> ! {
    let message: String = message.into();
    pg_sys::panic::ErrorReport::new(code, message, pg_sys::function_name!()).set_hint(hint).report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) does not return")
}
