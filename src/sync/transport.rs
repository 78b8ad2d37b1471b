//! The connection from a forwarder to its peer: libpq, driven without
//! blocking. Every wait is on the worker's latch and the socket together,
//! with a deadline, so a SIGTERM or SIGHUP is acted on at once and a dead
//! link costs at most `edgesync.peer_timeout`.
//!
//! The conninfo is an ordinary libpq string: sslmode (verify-full included),
//! passfile, keepalives, connect_timeout and the rest mean what they mean to
//! psql. edgesync adds TCP keepalives and an application_name unless the
//! conninfo sets its own. Errors are returned with any password masked.

use std::ffi::{c_char, c_int, CStr, CString};
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::model::sync::secrets::{redact_secrets, redact_secrets_of};
use crate::sync::libpq::*;

/// `PQconnectStartParams`' expand_dbname: the `dbname` value is itself a
/// conninfo, whose settings override the keywords before it.
const EXPAND_DBNAME: c_int = 1;

/// libpq's connect_timeout is never shorter than this.
const LIBPQ_MIN_CONNECT_TIMEOUT_SECS: u64 = 2;

/// A libpq message as a `String`, any password in it masked.
fn text_of(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libpq's messages are NUL-terminated and live until the next
    // call on their connection or result; the text is copied out at once.
    let text = unsafe { CStr::from_ptr(p) };
    redact_secrets(text.to_string_lossy().trim_end())
}

/// Is `conninfo` a valid libpq connection string? Err says why (masked).
pub fn check_conninfo(conninfo: &str) -> Result<(), String> {
    let c = CString::new(conninfo).map_err(|_| "the conninfo contains a NUL byte".to_string())?;
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: `c` is a NUL-terminated string that outlives the call; `err`
    // is a valid place for libpq to store its message.
    let options = unsafe { PQconninfoParse(c.as_ptr(), &mut err) };
    if options.is_null() {
        // libpq may quote a password back bare (a bad percent-encoding): mask what the conninfo holds
        let msg = if err.is_null() { "not a valid conninfo".to_string() } else { redact_secrets_of(&text_of(err), conninfo) };
        if !err.is_null() {
            // SAFETY: `err` was allocated by libpq for us and is freed once.
            unsafe { PQfreemem(err.cast()) };
        }
        return Err(msg);
    }
    // SAFETY: `options` came from PQconninfoParse and is freed once.
    unsafe { PQconninfoFree(options) };
    Ok(())
}

/// One value a statement is sent with.
pub enum Param<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// The rows of a statement, every value as text (None: NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// A parameter as libpq takes it: text NUL-terminated, binary as bytea.
enum WireParam<'a> {
    Text(CString),
    Binary(&'a [u8]),
}

impl<'a> WireParam<'a> {
    fn of(param: &Param<'a>) -> Result<Self, String> {
        match param {
            Param::Text(s) => CString::new(*s).map(WireParam::Text).map_err(|_| "a parameter contains a NUL byte".to_string()),
            Param::Binary(b) => Ok(WireParam::Binary(b)),
        }
    }

    fn type_oid(&self) -> u32 {
        match self {
            WireParam::Text(_) => INFER_TYPE,
            WireParam::Binary(_) => pg_sys::BYTEAOID.to_u32(),
        }
    }

    /// Points into `self` (or the caller's slice): valid while both live.
    fn value(&self) -> *const c_char {
        match self {
            WireParam::Text(c) => c.as_ptr(),
            WireParam::Binary(b) => b.as_ptr().cast(),
        }
    }

    /// libpq ignores the length of a text parameter.
    fn length(&self) -> c_int {
        match self {
            WireParam::Text(_) => 0,
            WireParam::Binary(b) => b.len() as c_int,
        }
    }

    fn format(&self) -> c_int {
        match self {
            WireParam::Text(_) => FORMAT_TEXT,
            WireParam::Binary(_) => FORMAT_BINARY,
        }
    }
}

/// An open connection to a peer.
pub struct Connection {
    /// Never NULL; owned: finished on drop.
    conn: *mut PGconn,
    /// The session has run `LISTEN` (`listen`).
    listening: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: `conn` is a live connection that only this value owns.
        unsafe { PQfinish(self.conn) };
    }
}

/// A result of libpq, cleared when dropped.
struct QueryResult(*mut PGresult);

impl Drop for QueryResult {
    fn drop(&mut self) {
        // SAFETY: the result came from PQgetResult, is not NULL and is cleared once.
        unsafe { PQclear(self.0) };
    }
}

impl QueryResult {
    /// The rows, or the error the statement ended with.
    fn rows(&self) -> Result<Rows, String> {
        let res = self.0;
        // SAFETY: `res` is a live result owned by `self`.
        let status = unsafe { PQresultStatus(res) };
        if !matches!(status, PGRES_TUPLES_OK | PGRES_COMMAND_OK) {
            // SAFETY: as above.
            return Err(text_of(unsafe { PQresultErrorMessage(res) }));
        }
        // SAFETY: as above.
        let (rows, fields) = unsafe { (PQntuples(res), PQnfields(res)) };
        Ok((0..rows).map(|r| (0..fields).map(|c| self.value(r, c)).collect()).collect())
    }

    /// One value as text (None: NULL); `row` and `col` are in range.
    fn value(&self, row: c_int, col: c_int) -> Option<String> {
        // SAFETY: a live result, asked within its row and column counts.
        if unsafe { PQgetisnull(self.0, row, col) } != 0 {
            return None;
        }
        // SAFETY: as above; a value that is not NULL is a NUL-terminated
        // string owned by the result, copied out at once.
        let text = unsafe { CStr::from_ptr(PQgetvalue(self.0, row, col)) };
        Some(text.to_string_lossy().into_owned())
    }
}

/// Sleep until the socket is ready (or the latch is set, which is reset and
/// answered by checking for interrupts), at most until `deadline`.
fn wait_socket(sock: c_int, write: bool, deadline: Instant, what: &str) -> Result<(), String> {
    match wait_socket_until(sock, write, deadline)? {
        true => Ok(()),
        false => Err(format!("timed out {what}")),
    }
}

/// As `wait_socket`; false when `until` came first.
fn wait_socket_until(sock: c_int, write: bool, until: Instant) -> Result<bool, String> {
    loop {
        let now = Instant::now();
        if now >= until {
            return Ok(false);
        }
        let timeout = (until - now).as_millis().clamp(1, i32::MAX as u128) as i64;
        let socket_event = if write { pg_sys::WL_SOCKET_WRITEABLE } else { pg_sys::WL_SOCKET_READABLE };
        let events = (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH | socket_event) as c_int;
        // SAFETY: MyLatch is this process's own latch, set up at its start;
        // `sock` is the connection's socket, open while we wait on it.
        let rc = unsafe { pg_sys::WaitLatchOrSocket(pg_sys::MyLatch, events, sock as pg_sys::pgsocket, timeout as _, pg_sys::PG_WAIT_EXTENSION) };
        if rc & pg_sys::WL_LATCH_SET as c_int != 0 {
            // SAFETY: as above, this process's own latch.
            unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
            pgrx::check_for_interrupts!();
        }
        if rc & socket_event as c_int != 0 {
            return Ok(true);
        }
    }
}

impl Connection {
    /// Connect; `timeout` applies unless the conninfo sets connect_timeout.
    /// Errors never show a password the conninfo holds, even one libpq
    /// quotes back bare (a URI inside `dbname` is read only here).
    pub fn open(conninfo: &str, application_name: &str, timeout: Duration) -> Result<Connection, String> {
        Self::connect(conninfo, application_name, timeout).map_err(|e| redact_secrets_of(&e, conninfo))
    }

    fn connect(conninfo: &str, application_name: &str, timeout: Duration) -> Result<Connection, String> {
        let c = Self::start(conninfo, application_name)?;
        let deadline = Instant::now() + c.connect_timeout().unwrap_or(timeout);
        c.poll_until_connected(deadline)?;
        // SAFETY: a live connection owned by `c`.
        if unsafe { PQsetnonblocking(c.conn, 1) } != 0 {
            return Err(c.error());
        }
        Ok(c)
    }

    /// Start connecting, with edgesync's defaults under the conninfo.
    fn start(conninfo: &str, application_name: &str) -> Result<Connection, String> {
        check_libpq_is_known()?;
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
        // SAFETY: both arrays are NULL-terminated, of the same length, and
        // point into `pairs`, which outlives the call (libpq copies them).
        let conn = unsafe { PQconnectStartParams(keys.as_ptr(), values.as_ptr(), EXPAND_DBNAME) };
        if conn.is_null() {
            return Err("out of memory starting a connection".to_string());
        }
        let c = Connection { conn, listening: false };
        // SAFETY: `conn` is not NULL and owned by `c`.
        if unsafe { PQstatus(c.conn) } == CONNECTION_BAD {
            return Err(c.error());
        }
        Ok(c)
    }

    /// Drive libpq's connection state machine until it is done or `deadline`.
    fn poll_until_connected(&self, deadline: Instant) -> Result<(), String> {
        loop {
            // SAFETY: a live connection owned by `self`.
            match unsafe { PQconnectPoll(self.conn) } {
                PGRES_POLLING_OK => return Ok(()),
                PGRES_POLLING_FAILED => return Err(self.error()),
                PGRES_POLLING_READING => wait_socket(self.socket(), false, deadline, "connecting")?,
                PGRES_POLLING_WRITING => wait_socket(self.socket(), true, deadline, "connecting")?,
                _ => {}
            }
        }
    }

    fn socket(&self) -> c_int {
        // SAFETY: a live connection owned by `self`.
        unsafe { PQsocket(self.conn) }
    }

    fn error(&self) -> String {
        // SAFETY: a live connection owned by `self`.
        text_of(unsafe { PQerrorMessage(self.conn) })
    }

    /// The connect_timeout the conninfo asked for, if any.
    fn connect_timeout(&self) -> Option<Duration> {
        // SAFETY: a live connection owned by `self`.
        let options = unsafe { PQconninfo(self.conn) };
        if options.is_null() {
            return None;
        }
        let mut found = None;
        let mut o = options;
        // SAFETY: `options` is libpq's array, ended by an entry whose keyword
        // is NULL; `o` walks it up to that entry, whose strings are
        // NUL-terminated or NULL, and the array is freed once, after the walk.
        unsafe {
            while !(*o).keyword.is_null() {
                if CStr::from_ptr((*o).keyword) == c"connect_timeout" && !(*o).val.is_null() {
                    found = CStr::from_ptr((*o).val).to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).filter(|&s| s > 0);
                }
                o = o.add(1);
            }
            PQconninfoFree(options);
        }
        found.map(|s| Duration::from_secs(s.max(LIBPQ_MIN_CONNECT_TIMEOUT_SECS)))
    }

    /// Listen for notifications on `channel` (a name edgesync chose: not
    /// quoted); false when the peer cannot (a hot standby takes no LISTEN).
    pub fn listen(&mut self, channel: &str, timeout: Duration) -> bool {
        self.listening = self.query(&format!("LISTEN {channel}"), &[], timeout).is_ok();
        self.listening
    }

    pub fn is_listening(&self) -> bool {
        self.listening
    }

    /// Whether a notification (`LISTEN`) arrived since the last call: reads
    /// what the socket holds, without waiting. Only between statements.
    pub fn notified(&mut self) -> Result<bool, String> {
        self.consume_input()?;
        let mut any = false;
        loop {
            // SAFETY: a live connection owned by `self`, with no statement running.
            let notice = unsafe { PQnotifies(self.conn) };
            if notice.is_null() {
                return Ok(any);
            }
            // SAFETY: a notification PQnotifies handed over, freed once, as libpq asks.
            unsafe { PQfreemem(notice.cast()) };
            any = true;
        }
    }

    /// Run one statement; returns its rows as text. `timeout` bounds the
    /// whole exchange; after an error or a timeout drop the connection.
    pub fn query(&mut self, sql: &str, params: &[Param<'_>], timeout: Duration) -> Result<Rows, String> {
        let deadline = Instant::now() + timeout;
        self.send(sql, params)?;
        self.flush(deadline)?;
        self.collect_results(deadline)
    }

    /// Queue the statement with its parameters (text ones as text, binary
    /// ones as bytea).
    fn send(&mut self, sql: &str, params: &[Param<'_>]) -> Result<(), String> {
        let sql = CString::new(sql).map_err(|e| e.to_string())?;
        let wire: Vec<WireParam<'_>> = params.iter().map(WireParam::of).collect::<Result<_, _>>()?;
        let types: Vec<u32> = wire.iter().map(WireParam::type_oid).collect();
        let values: Vec<*const c_char> = wire.iter().map(WireParam::value).collect();
        let lengths: Vec<c_int> = wire.iter().map(WireParam::length).collect();
        let formats: Vec<c_int> = wire.iter().map(WireParam::format).collect();
        // SAFETY: a live connection; the four arrays have `params.len()`
        // entries and point into `wire` and the caller's slices, which
        // outlive the call (libpq copies the values before it returns).
        let sent = unsafe {
            PQsendQueryParams(
                self.conn,
                sql.as_ptr(),
                params.len() as c_int,
                types.as_ptr(),
                values.as_ptr(),
                lengths.as_ptr(),
                formats.as_ptr(),
                FORMAT_TEXT,
            )
        };
        if sent == 0 {
            return Err(self.error());
        }
        Ok(())
    }

    /// Push the request out, reading whatever comes back meanwhile (a
    /// server that answers while we still write must not block us).
    fn flush(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            // SAFETY: a live connection owned by `self`.
            match unsafe { PQflush(self.conn) } {
                0 => return Ok(()),
                1 => {
                    wait_socket(self.socket(), true, deadline, "sending to the peer")?;
                    self.consume_input()?;
                }
                _ => return Err(self.error()),
            }
        }
    }

    fn consume_input(&mut self) -> Result<(), String> {
        // SAFETY: a live connection owned by `self`.
        if unsafe { PQconsumeInput(self.conn) } == 0 {
            return Err(self.error());
        }
        Ok(())
    }

    /// Read every result of the statement; the rows of the ones that
    /// succeeded, or the last error.
    fn collect_results(&mut self, deadline: Instant) -> Result<Rows, String> {
        let mut rows = Vec::new();
        let mut failure = None;
        while let Some(result) = self.next_result(deadline, None)? {
            match result.rows() {
                Ok(more) => rows.extend(more),
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Wait for the next result without blocking; None when there are no more.
    /// Between looks at the answer, `beside` does its work.
    fn next_result(&mut self, deadline: Instant, mut beside: Option<&mut dyn ReadBeside>) -> Result<Option<QueryResult>, String> {
        // SAFETY: a live connection owned by `self`.
        while unsafe { PQisBusy(self.conn) } != 0 {
            match beside.as_deref_mut() {
                Some(b) => {
                    // after a piece of work, look at the answer before the next
                    if !b.work()? {
                        let until = b.look_again().min(deadline);
                        if !wait_socket_until(self.socket(), false, until)? && until >= deadline {
                            return Err("timed out waiting for the peer's answer".to_string());
                        }
                    }
                }
                None => wait_socket(self.socket(), false, deadline, "waiting for the peer's answer")?,
            }
            self.consume_input()?;
        }
        // SAFETY: as above; PQisBusy said the result is there, so this does not block.
        let res = unsafe { PQgetResult(self.conn) };
        Ok((!res.is_null()).then_some(QueryResult(res)))
    }

    /// Run one statement as `query` does, letting `beside` work while the
    /// peer works on the statement. Returns the rows and when the statement
    /// was all sent.
    pub fn query_beside(&mut self, sql: &str, params: &[Param<'_>], timeout: Duration, beside: &mut dyn ReadBeside) -> Result<(Rows, Instant), String> {
        let deadline = Instant::now() + timeout;
        self.send(sql, params)?;
        self.flush(deadline)?;
        let sent_at = Instant::now();
        let mut rows = Vec::new();
        let mut failure = None;
        while let Some(result) = self.next_result(deadline, Some(&mut *beside))? {
            match result.rows() {
                Ok(more) => rows.extend(more),
                Err(e) => failure = Some(e),
            }
        }
        failure.map_or(Ok((rows, sent_at)), Err)
    }
}

/// Work to do in this process while a peer works on a statement (the
/// forwarder decoding its next batch), a short piece at a time.
pub trait ReadBeside {
    /// Do a short piece of work that needs no waiting; true: some was done
    /// (the answer is looked at, then this is asked again).
    fn work(&mut self) -> Result<bool, String>;
    /// With no work to do now: when to ask again at the latest.
    fn look_again(&self) -> Instant;
}


/// NULL when `conninfo` is a valid libpq connection string, else why not.
#[pg_extern(immutable, parallel_safe)]
fn _conninfo_error(conninfo: &str) -> Option<String> {
    check_conninfo(conninfo).err()
}
