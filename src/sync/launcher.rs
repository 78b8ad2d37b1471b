//! The launcher: one background worker per cluster that keeps one
//! forwarder (`sync::forwarder`) running per active peer. Both are thin
//! loops.
//!
//! Launcher: registered at server start (needs shared_preload_libraries),
//! runs in `edgesync.database`, starts a forwarder for every peer that is
//! not paused, stops those whose peer was paused or dropped, and restarts a
//! forwarder that died after `RESTART_COOLDOWN`. Backends wake it when they
//! commit a peer change.
//!
//! Also the plumbing both workers share: the database they run in, a
//! transaction that survives an ERROR, and reading NOT NULL columns.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::guc;
use crate::sync::status;

/// How long the launcher waits before restarting a forwarder that died.
const RESTART_COOLDOWN: Duration = Duration::from_secs(5);
/// How often the launcher looks at the peers without being woken.
const LAUNCHER_POLL: Duration = Duration::from_secs(5);
/// The launcher never sleeps shorter than this, however close a restart is.
const LAUNCHER_MIN_WAIT: Duration = Duration::from_millis(100);

/// Register the launcher; only possible while preloading.
pub fn register_launcher() {
    // SAFETY: a global the postmaster sets while it loads the preloaded
    // libraries; read in the process loading this one, which nothing else
    // writes to meanwhile.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    if preloading {
        BackgroundWorkerBuilder::new("edgesync launcher")
            .set_type("edgesync launcher")
            .set_library("edgesync")
            .set_function("edgesync_launcher_main")
            .enable_spi_access()
            .set_restart_time(Some(RESTART_COOLDOWN))
            .load();
    }
}

/// The database the launcher, and so every forwarder, runs in.
pub(super) fn database() -> String {
    guc::DATABASE.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_else(|| "postgres".to_string())
}

/// Run `f` in a transaction of its own; a PostgreSQL ERROR inside becomes
/// `Err` (the transaction is rolled back) instead of ending the worker.
/// Only for a background worker, outside any transaction.
pub(super) fn in_transaction<R>(f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    // SAFETY: callers are background workers connected to a database, at
    // the top of their loop, where no transaction is open.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        // what decoding read under historic snapshots is not for this transaction
        crate::sync::local_decoding::leave_decoding();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = PgTryBuilder::new(AssertUnwindSafe(f))
        .catch_others(|e| {
            Err(match e {
                pg_sys::panic::CaughtError::PostgresError(r) | pg_sys::panic::CaughtError::ErrorReport(r) => r.message().to_string(),
                pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
            })
        })
        .execute();
    match result {
        // SAFETY: the transaction started above is open and its snapshot is
        // the active one: pop it, then commit.
        Ok(_) => unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        },
        // SAFETY: the transaction started above is open (or failed);
        // aborting it also drops its snapshot.
        Err(_) => unsafe { pg_sys::AbortCurrentTransaction() },
    }
    result
}

/// The value of a NOT NULL column: a failed read, or a NULL (which the
/// schema rules out), is an error naming the column.
pub(super) fn not_null<T>(value: pgrx::spi::Result<Option<T>>, column: &str) -> Result<T, String> {
    match value {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(format!("{column} is NULL")),
        Err(e) => Err(format!("could not read {column}: {e}")),
    }
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn edgesync_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&database()), None);
    status::register_launcher();
    log!("edgesync launcher started in database {:?}", database());
    let mut forwarders = Forwarders::default();
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: the launcher's own loop, outside any transaction, as
            // PostgreSQL's processes reload their configuration.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        match in_transaction(active_peers) {
            Ok(wanted) => forwarders.reconcile(&wanted),
            // stopping every forwarder because one read failed would be worse than waiting
            Err(e) => warning!("edgesync: could not read the peers, the forwarders are left as they are: {e}"),
        }
        if !BackgroundWorker::wait_latch(Some(forwarders.next_look())) {
            break;
        }
    }
}

/// The worker id the feed worker (`sync::feed`) runs under among the
/// forwarders (peer ids start at 1).
const FEED_WORKER: i32 = 0;

/// Workers that should run, as (id, name): a forwarder per active peer,
/// and the feed worker while edges are registered here (none while
/// edgesync is not installed here, or on a hot standby).
fn active_peers() -> Result<Vec<(i32, String)>, String> {
    let installed = Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'edgesync')")
        .map_err(|e| format!("could not check whether edgesync is installed: {e}"))?;
    if installed != Some(true) {
        return Ok(Vec::new());
    }
    // a hot standby pushes nothing and keeps no feed (it may serve pulls,
    // which are reads); once promoted, the next look starts the workers
    // SAFETY: reads shared recovery state; any backend may ask at any time.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Ok(Vec::new());
    }
    Spi::connect(|client| {
        let rows = client
            .select("SELECT id, name FROM edgesync.peer WHERE NOT paused ORDER BY id", None, &[])
            .map_err(|e| format!("could not read edgesync.peer: {e}"))?;
        let mut out = Vec::new();
        for row in rows {
            out.push((not_null(row.get::<i32>(1), "edgesync.peer.id")?, not_null(row.get::<String>(2), "edgesync.peer.name")?));
        }
        if feed_wanted(client)? {
            out.push((FEED_WORKER, "feed".to_string()));
        }
        Ok(out)
    })
}

/// Is an edge registered here (so the feed worker should run)? Not before
/// the extension was updated to a version with a feed.
fn feed_wanted(client: &pgrx::spi::SpiClient<'_>) -> Result<bool, String> {
    let read = |sql: &str| -> Result<bool, String> {
        let t = client.select(sql, None, &[]).map_err(|e| format!("could not read edgesync.edge: {e}"))?;
        not_null(t.first().get_one::<bool>(), "the feed check")
    };
    Ok(read("SELECT to_regclass('edgesync.feed') IS NOT NULL")? && read("SELECT EXISTS (SELECT FROM edgesync.edge)")?)
}

/// The forwarders this launcher started, by peer id.
#[derive(Default)]
struct Forwarders {
    running: HashMap<i32, DynamicBackgroundWorker>,
    /// Peers whose forwarder died or could not start: not before then again.
    not_before: HashMap<i32, Instant>,
}

impl Forwarders {
    /// Make the running forwarders match `wanted`.
    fn reconcile(&mut self, wanted: &[(i32, String)]) {
        self.reap_ended();
        self.stop_unwanted(wanted);
        self.start_missing(wanted);
    }

    /// Forget the forwarders that ended; restart them after the cooldown.
    fn reap_ended(&mut self) {
        let not_before = &mut self.not_before;
        self.running.retain(|id, handle| match handle.pid() {
            Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted) => true,
            Err(_) => {
                not_before.insert(*id, Instant::now() + RESTART_COOLDOWN);
                false
            }
        });
    }

    fn stop_unwanted(&mut self, wanted: &[(i32, String)]) {
        let ids: Vec<i32> = self.running.keys().copied().collect();
        for id in ids {
            // the feed worker ends by itself, after dropping its slot
            if id != FEED_WORKER && !wanted.iter().any(|(w, _)| *w == id) {
                if let Some(handle) = self.running.remove(&id) {
                    let _ = handle.terminate();
                }
                self.not_before.remove(&id);
            }
        }
    }

    fn start_missing(&mut self, wanted: &[(i32, String)]) {
        for (id, name) in wanted {
            if self.running.contains_key(id) || self.not_before.get(id).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            match start_forwarder(*id, name) {
                Ok(handle) => {
                    self.running.insert(*id, handle);
                }
                Err(e) => {
                    warning!("edgesync: could not start the forwarder of peer {name:?}: {e}");
                    self.not_before.insert(*id, Instant::now() + RESTART_COOLDOWN);
                }
            }
        }
    }

    /// How long the launcher may sleep: until the next restart is due, at most `LAUNCHER_POLL`.
    fn next_look(&self) -> Duration {
        let next = self.not_before.values().map(|t| t.saturating_duration_since(Instant::now())).min().unwrap_or(LAUNCHER_POLL);
        next.clamp(LAUNCHER_MIN_WAIT, LAUNCHER_POLL)
    }
}

fn start_forwarder(id: i32, name: &str) -> Result<DynamicBackgroundWorker, String> {
    // SAFETY: set once when this process started, only read afterwards.
    let launcher_pid = unsafe { pg_sys::MyProcPid };
    let (title, kind, function) = match id {
        FEED_WORKER => ("edgesync feed".to_string(), "edgesync feed", "edgesync_feed_main"),
        _ => (format!("edgesync forwarder {name}"), "edgesync forwarder", "edgesync_forwarder_main"),
    };
    BackgroundWorkerBuilder::new(&title)
        .set_type(kind)
        .set_library("edgesync")
        .set_function(function)
        .set_argument(id.into_datum())
        .enable_spi_access()
        .set_restart_time(None)
        .set_notify_pid(launcher_pid)
        .load_dynamic()
        .map_err(|_| "no background worker slot free (max_worker_processes)".to_string())
}
