//! The connection from a forwarder to its peer: libpq, driven without
//! blocking. Every wait is on the worker's latch and the socket together,
//! with a deadline, so a SIGTERM or SIGHUP is acted on at once and a dead
//! link costs at most `edgesync.peer_timeout`.
//!
//! The conninfo is an ordinary libpq string: sslmode (verify-full included),
//! passfile, keepalives, connect_timeout and the rest mean what they mean to
//! psql. edgesync adds TCP keepalives and an application_name unless the
//! conninfo sets its own. Errors are returned with any password masked.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::model::sync::secrets::redact_secrets;

#[repr(C)]
struct PGconn {
    _private: [u8; 0],
}
#[repr(C)]
struct PGresult {
    _private: [u8; 0],
}
#[repr(C)]
struct PQconninfoOption {
    keyword: *mut c_char,
    envvar: *mut c_char,
    compiled: *mut c_char,
    val: *mut c_char,
    label: *mut c_char,
    dispchar: *mut c_char,
    dispsize: c_int,
}

#[link(name = "pq")]
unsafe extern "C" {
    fn PQconnectStartParams(keywords: *const *const c_char, values: *const *const c_char, expand_dbname: c_int) -> *mut PGconn;
    fn PQconnectPoll(conn: *mut PGconn) -> c_int;
    fn PQstatus(conn: *const PGconn) -> c_int;
    fn PQsocket(conn: *const PGconn) -> c_int;
    fn PQerrorMessage(conn: *const PGconn) -> *const c_char;
    fn PQfinish(conn: *mut PGconn);
    fn PQsetnonblocking(conn: *mut PGconn, arg: c_int) -> c_int;
    fn PQsendQueryParams(
        conn: *mut PGconn,
        command: *const c_char,
        n_params: c_int,
        param_types: *const u32,
        param_values: *const *const c_char,
        param_lengths: *const c_int,
        param_formats: *const c_int,
        result_format: c_int,
    ) -> c_int;
    fn PQflush(conn: *mut PGconn) -> c_int;
    fn PQconsumeInput(conn: *mut PGconn) -> c_int;
    fn PQisBusy(conn: *mut PGconn) -> c_int;
    fn PQgetResult(conn: *mut PGconn) -> *mut PGresult;
    fn PQresultStatus(res: *const PGresult) -> c_int;
    fn PQresultErrorMessage(res: *const PGresult) -> *const c_char;
    fn PQntuples(res: *const PGresult) -> c_int;
    fn PQnfields(res: *const PGresult) -> c_int;
    fn PQgetvalue(res: *const PGresult, row: c_int, col: c_int) -> *const c_char;
    fn PQgetisnull(res: *const PGresult, row: c_int, col: c_int) -> c_int;
    fn PQclear(res: *mut PGresult);
    fn PQconninfoParse(conninfo: *const c_char, errmsg: *mut *mut c_char) -> *mut PQconninfoOption;
    fn PQconninfo(conn: *mut PGconn) -> *mut PQconninfoOption;
    fn PQconninfoFree(options: *mut PQconninfoOption);
    fn PQfreemem(ptr: *mut c_void);
}

// libpq's enums, as numbers
const PGRES_POLLING_FAILED: c_int = 0;
const PGRES_POLLING_READING: c_int = 1;
const PGRES_POLLING_WRITING: c_int = 2;
const PGRES_POLLING_OK: c_int = 3;
const CONNECTION_BAD: c_int = 1;
const PGRES_COMMAND_OK: c_int = 1;
const PGRES_TUPLES_OK: c_int = 2;

const BYTEA_OID: u32 = 17;

fn text_of(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    redact_secrets(unsafe { CStr::from_ptr(p) }.to_string_lossy().trim_end())
}

/// Is `conninfo` a valid libpq connection string? Err says why (masked).
pub fn check_conninfo(conninfo: &str) -> Result<(), String> {
    let c = CString::new(conninfo).map_err(|_| "the conninfo contains a NUL byte".to_string())?;
    let mut err: *mut c_char = std::ptr::null_mut();
    let options = unsafe { PQconninfoParse(c.as_ptr(), &mut err) };
    if options.is_null() {
        let msg = if err.is_null() { "not a valid conninfo".to_string() } else { text_of(err) };
        if !err.is_null() {
            unsafe { PQfreemem(err.cast()) };
        }
        return Err(msg);
    }
    unsafe { PQconninfoFree(options) };
    Ok(())
}

/// One value a statement is sent with.
pub enum Param<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// An open connection to a peer.
pub struct Connection {
    conn: *mut PGconn,
}

impl Drop for Connection {
    fn drop(&mut self) {
        unsafe { PQfinish(self.conn) };
    }
}

/// Sleep until the socket is ready (or the latch is set, which is reset and
/// answered by checking for interrupts), at most until `deadline`.
fn wait_socket(sock: c_int, write: bool, deadline: Instant, what: &str) -> Result<(), String> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("timed out {what}"));
        }
        let timeout = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i64;
        let socket_event = if write { pg_sys::WL_SOCKET_WRITEABLE } else { pg_sys::WL_SOCKET_READABLE };
        let events = (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH | socket_event) as c_int;
        let rc = unsafe { pg_sys::WaitLatchOrSocket(pg_sys::MyLatch, events, sock as pg_sys::pgsocket, timeout as _, pg_sys::PG_WAIT_EXTENSION) };
        if rc & pg_sys::WL_LATCH_SET as c_int != 0 {
            unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
            pgrx::check_for_interrupts!();
        }
        if rc & socket_event as c_int != 0 {
            return Ok(());
        }
    }
}

impl Connection {
    /// Connect; `timeout` applies unless the conninfo sets connect_timeout.
    pub fn open(conninfo: &str, application_name: &str, timeout: Duration) -> Result<Connection, String> {
        // defaults first: the conninfo (expanded from dbname) overrides them
        let pairs: [(&CStr, CString); 6] = [
            (c"keepalives", c"1".into()),
            (c"keepalives_idle", c"30".into()),
            (c"keepalives_interval", c"10".into()),
            (c"keepalives_count", c"3".into()),
            (c"fallback_application_name", CString::new(application_name).map_err(|e| e.to_string())?),
            (c"dbname", CString::new(conninfo).map_err(|_| "the conninfo contains a NUL byte".to_string())?),
        ];
        let mut keys: Vec<*const c_char> = pairs.iter().map(|(k, _)| k.as_ptr()).collect();
        let mut values: Vec<*const c_char> = pairs.iter().map(|(_, v)| v.as_ptr()).collect();
        keys.push(std::ptr::null());
        values.push(std::ptr::null());
        let conn = unsafe { PQconnectStartParams(keys.as_ptr(), values.as_ptr(), 1) };
        if conn.is_null() {
            return Err("out of memory starting a connection".to_string());
        }
        let c = Connection { conn };
        if unsafe { PQstatus(conn) } == CONNECTION_BAD {
            return Err(c.error());
        }
        let deadline = Instant::now() + c.connect_timeout().unwrap_or(timeout);
        loop {
            match unsafe { PQconnectPoll(conn) } {
                PGRES_POLLING_OK => break,
                PGRES_POLLING_FAILED => return Err(c.error()),
                PGRES_POLLING_READING => wait_socket(unsafe { PQsocket(conn) }, false, deadline, "connecting")?,
                PGRES_POLLING_WRITING => wait_socket(unsafe { PQsocket(conn) }, true, deadline, "connecting")?,
                _ => {}
            }
        }
        if unsafe { PQsetnonblocking(conn, 1) } != 0 {
            return Err(c.error());
        }
        Ok(c)
    }

    fn error(&self) -> String {
        text_of(unsafe { PQerrorMessage(self.conn) })
    }

    /// The connect_timeout the conninfo asked for, if any.
    fn connect_timeout(&self) -> Option<Duration> {
        unsafe {
            let options = PQconninfo(self.conn);
            if options.is_null() {
                return None;
            }
            let mut found = None;
            let mut o = options;
            while !(*o).keyword.is_null() {
                if CStr::from_ptr((*o).keyword) == c"connect_timeout" && !(*o).val.is_null() {
                    found = CStr::from_ptr((*o).val).to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).filter(|&s| s > 0);
                }
                o = o.add(1);
            }
            PQconninfoFree(options);
            // libpq's own minimum is 2 seconds
            found.map(|s| Duration::from_secs(s.max(2)))
        }
    }

    /// Run one statement; returns its rows as text. `timeout` bounds the
    /// whole exchange; after an error or a timeout drop the connection.
    pub fn query(&mut self, sql: &str, params: &[Param<'_>], timeout: Duration) -> Result<Vec<Vec<Option<String>>>, String> {
        let deadline = Instant::now() + timeout;
        let sql = CString::new(sql).map_err(|e| e.to_string())?;
        let types: Vec<u32> = params.iter().map(|p| if matches!(p, Param::Binary(_)) { BYTEA_OID } else { 0 }).collect();
        let texts: Vec<Option<CString>> = params
            .iter()
            .map(|p| match p {
                Param::Text(s) => CString::new(*s).ok(),
                Param::Binary(_) => None,
            })
            .collect();
        let values: Vec<*const c_char> = params
            .iter()
            .zip(&texts)
            .map(|(p, t)| match p {
                Param::Text(_) => t.as_ref().map(|c| c.as_ptr()).unwrap_or(std::ptr::null()),
                Param::Binary(b) => b.as_ptr().cast(),
            })
            .collect();
        let lengths: Vec<c_int> = params
            .iter()
            .map(|p| match p {
                Param::Text(_) => 0,
                Param::Binary(b) => b.len() as c_int,
            })
            .collect();
        let formats: Vec<c_int> = params.iter().map(|p| c_int::from(matches!(p, Param::Binary(_)))).collect();
        let sent = unsafe {
            PQsendQueryParams(
                self.conn,
                sql.as_ptr(),
                params.len() as c_int,
                types.as_ptr(),
                values.as_ptr(),
                lengths.as_ptr(),
                formats.as_ptr(),
                0,
            )
        };
        if sent == 0 {
            return Err(self.error());
        }
        let sock = unsafe { PQsocket(self.conn) };
        // push the request out, reading whatever comes back meanwhile
        loop {
            match unsafe { PQflush(self.conn) } {
                0 => break,
                1 => {
                    wait_socket(sock, true, deadline, "sending to the peer")?;
                    if unsafe { PQconsumeInput(self.conn) } == 0 {
                        return Err(self.error());
                    }
                }
                _ => return Err(self.error()),
            }
        }
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            while unsafe { PQisBusy(self.conn) } != 0 {
                wait_socket(sock, false, deadline, "waiting for the peer's answer")?;
                if unsafe { PQconsumeInput(self.conn) } == 0 {
                    return Err(self.error());
                }
            }
            let res = unsafe { PQgetResult(self.conn) };
            if res.is_null() {
                break;
            }
            match unsafe { PQresultStatus(res) } {
                PGRES_TUPLES_OK | PGRES_COMMAND_OK => unsafe {
                    for r in 0..PQntuples(res) {
                        rows.push(
                            (0..PQnfields(res))
                                .map(|c| {
                                    (PQgetisnull(res, r, c) == 0)
                                        .then(|| CStr::from_ptr(PQgetvalue(res, r, c)).to_string_lossy().into_owned())
                                })
                                .collect(),
                        );
                    }
                },
                _ => failure = Some(text_of(unsafe { PQresultErrorMessage(res) })),
            }
            unsafe { PQclear(res) };
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }
}

/// NULL when `conninfo` is a valid libpq connection string, else why not.
#[pg_extern(immutable, parallel_safe)]
fn _conninfo_error(conninfo: &str) -> Option<String> {
    check_conninfo(conninfo).err()
}
