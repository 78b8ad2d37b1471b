//! The part of libpq's C API the transport uses: the opaque connection and
//! result types, the functions, and the numbers of libpq's enums under
//! libpq's own names (libpq-fe.h). Declarations only; `transport` wraps
//! them in a safe connection.

use std::ffi::{c_char, c_int, c_void};

/// libpq's connection handle (opaque).
#[repr(C)]
pub struct PGconn {
    _private: [u8; 0],
}

/// libpq's query result (opaque).
#[repr(C)]
pub struct PGresult {
    _private: [u8; 0],
}

/// A notification (`LISTEN`) libpq received; only counted and freed here.
#[repr(C)]
pub struct PGnotify {
    _private: [u8; 0],
}

/// One conninfo keyword and its value, as `PQconninfo` and
/// `PQconninfoParse` return them (an array ended by a NULL keyword).
#[repr(C)]
pub struct PQconninfoOption {
    pub keyword: *mut c_char,
    pub envvar: *mut c_char,
    pub compiled: *mut c_char,
    pub val: *mut c_char,
    pub label: *mut c_char,
    pub dispchar: *mut c_char,
    pub dispsize: c_int,
}

// ConnStatusType
pub const CONNECTION_BAD: c_int = 1;

// PostgresPollingStatusType
pub const PGRES_POLLING_FAILED: c_int = 0;
pub const PGRES_POLLING_READING: c_int = 1;
pub const PGRES_POLLING_WRITING: c_int = 2;
pub const PGRES_POLLING_OK: c_int = 3;

// ExecStatusType
pub const PGRES_COMMAND_OK: c_int = 1;
pub const PGRES_TUPLES_OK: c_int = 2;
/// A replication stream started (`START_REPLICATION`): copy both ways.
pub const PGRES_COPY_BOTH: c_int = 8;

/// The `format` of a parameter or of a result: text or binary.
pub const FORMAT_TEXT: c_int = 0;
pub const FORMAT_BINARY: c_int = 1;

/// A parameter type of 0 lets the server infer it.
pub const INFER_TYPE: u32 = 0;

// SAFETY: each declaration matches libpq-fe.h of the libpq build.rs links
// (the one of the server edgesync is built for).
#[link(name = "pq")]
unsafe extern "C" {
    pub fn PQconnectStartParams(keywords: *const *const c_char, values: *const *const c_char, expand_dbname: c_int) -> *mut PGconn;
    pub fn PQconnectPoll(conn: *mut PGconn) -> c_int;
    pub fn PQstatus(conn: *const PGconn) -> c_int;
    pub fn PQsocket(conn: *const PGconn) -> c_int;
    pub fn PQerrorMessage(conn: *const PGconn) -> *const c_char;
    pub fn PQfinish(conn: *mut PGconn);
    pub fn PQsetnonblocking(conn: *mut PGconn, arg: c_int) -> c_int;
    pub fn PQsendQueryParams(
        conn: *mut PGconn,
        command: *const c_char,
        n_params: c_int,
        param_types: *const u32,
        param_values: *const *const c_char,
        param_lengths: *const c_int,
        param_formats: *const c_int,
        result_format: c_int,
    ) -> c_int;
    pub fn PQflush(conn: *mut PGconn) -> c_int;
    pub fn PQconsumeInput(conn: *mut PGconn) -> c_int;
    pub fn PQisBusy(conn: *mut PGconn) -> c_int;
    pub fn PQgetResult(conn: *mut PGconn) -> *mut PGresult;
    pub fn PQresultStatus(res: *const PGresult) -> c_int;
    pub fn PQresultErrorMessage(res: *const PGresult) -> *const c_char;
    pub fn PQntuples(res: *const PGresult) -> c_int;
    pub fn PQnfields(res: *const PGresult) -> c_int;
    pub fn PQgetvalue(res: *const PGresult, row: c_int, col: c_int) -> *const c_char;
    pub fn PQgetisnull(res: *const PGresult, row: c_int, col: c_int) -> c_int;
    pub fn PQclear(res: *mut PGresult);
    pub fn PQconninfoParse(conninfo: *const c_char, errmsg: *mut *mut c_char) -> *mut PQconninfoOption;
    pub fn PQconninfo(conn: *mut PGconn) -> *mut PQconninfoOption;
    pub fn PQconninfoFree(options: *mut PQconninfoOption);
    pub fn PQfreemem(ptr: *mut c_void);
    pub fn PQnotifies(conn: *mut PGconn) -> *mut PGnotify;
    pub fn PQsendQuery(conn: *mut PGconn, command: *const c_char) -> c_int;
    pub fn PQgetCopyData(conn: *mut PGconn, buffer: *mut *mut c_char, is_async: c_int) -> c_int;
    pub fn PQputCopyData(conn: *mut PGconn, buffer: *const c_char, nbytes: c_int) -> c_int;
    pub fn PQputCopyEnd(conn: *mut PGconn, errormsg: *const c_char) -> c_int;
}
