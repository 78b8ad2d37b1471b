//! Identifiers in the SQL text edgesync composes and runs (apply's
//! statements, the conflict trigger's lookups) are quoted by PostgreSQL's
//! own rule, `quote_identifier`, with this server's whole keyword list: a
//! hand-kept list misses words such as `left`, `like`, `verbose` or
//! `binary`, and one missed word breaks every statement about its table.

use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

use crate::error::raise;

/// `ident`, double-quoted when PostgreSQL's parser would not read it back
/// as itself (a keyword, upper case, a quote or any other special character).
pub fn quote_ident(ident: &str) -> String {
    let Ok(name) = CString::new(ident) else {
        raise(PgSqlErrorCode::ERRCODE_INVALID_NAME, format!("edgesync: identifier {ident:?} contains a NUL byte"))
    };
    // SAFETY: `name` is NUL-terminated and outlives the call; in a backend,
    // quote_identifier returns either its argument or a NUL-terminated
    // palloc'd copy, which is read here before anything frees it.
    unsafe {
        let quoted = pg_sys::quote_identifier(name.as_ptr());
        let text = CStr::from_ptr(quoted).to_string_lossy().into_owned();
        if quoted != name.as_ptr() {
            pg_sys::pfree(quoted as *mut std::ffi::c_void);
        }
        text
    }
}
