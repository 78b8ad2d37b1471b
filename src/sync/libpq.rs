//! libpq's C API as the transport uses it: pq-sys's bindings (generated
//! from libpq-fe.h), with the variants of libpq's enums also under libpq's
//! own bare names (`PGRES_TUPLES_OK`, `CONNECTION_BAD`, ...), typed: a
//! status is compared with its own enum, never with a number.
//!
//! pq-sys only declares. Which libpq is linked, and loaded at run time, is
//! `build.rs`'s choice: the server's own (see there and the README).

pub use pq_sys::*;

pub use pq_sys::ConnStatusType::*;
pub use pq_sys::ExecStatusType::*;
pub use pq_sys::PostgresPollingStatusType::*;

use std::ffi::c_int;

/// The `format` of a parameter or of a result: text or binary.
pub const FORMAT_TEXT: c_int = 0;
pub const FORMAT_BINARY: c_int = 1;

/// A parameter type of 0 lets the server infer it.
pub const INFER_TYPE: Oid = 0;

/// The newest libpq whose enums pq-sys's bindings hold in full: pq-sys
/// 0.7.8 (pinned in Cargo.toml) was generated from PostgreSQL 18's
/// libpq-fe.h. Raise it only with a pq-sys generated from the newer one.
const NEWEST_LIBPQ_THE_BINDINGS_KNOW: c_int = 18;

/// Err when the libpq loaded is newer than the bindings. pq-sys's enums are
/// Rust enums: a status a newer libpq added (each major release adds some)
/// would reach Rust as a value its enum cannot hold, which is undefined
/// behaviour, so no connection is started with such a libpq. Debian's
/// libpq5 can move ahead of the server it came with (apt.postgresql.org
/// ships the newest for every server version).
pub fn check_libpq_is_known() -> Result<(), String> {
    // SAFETY: PQlibVersion takes nothing and only returns a number.
    let major = unsafe { PQlibVersion() } / 10000;
    if major > NEWEST_LIBPQ_THE_BINDINGS_KNOW {
        return Err(format!(
            "the libpq loaded is version {major}, newer than the libpq edgesync's bindings (pq-sys) know ({NEWEST_LIBPQ_THE_BINDINGS_KNOW}): rebuild edgesync with a pq-sys made for it"
        ));
    }
    Ok(())
}
