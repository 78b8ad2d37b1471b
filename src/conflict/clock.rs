//! The node's hybrid logical clock, shared by every backend through shared
//! memory, and the node id stamped next to it.
//!
//! The clock's high-water mark is kept in a file in the data directory,
//! always a little ahead of any reading handed out, so that after a restart
//! (even with the wall clock set back) the clock never repeats or goes back.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic, PgLwLock, PgSqlErrorCode};

use crate::error::{raise, raise_with_hint};
use crate::guc;
use crate::model::conflict::version::{self, hlc_from_millis};

/// The last reading handed out or observed. Readings are taken with a
/// compare-and-swap: no lock on the write path.
// SAFETY: a shared-memory name used for this object only, prefixed
// "edgesync_" so that no other library's shared memory has it.
static LAST: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"edgesync_clock_last") };
/// The mark saved in `CLOCK_FILE` (0: not read since the server started).
/// No reading at or past it is handed out before the file says so.
// SAFETY: a shared-memory name used for this object only, prefixed
// "edgesync_" so that no other library's shared memory has it.
static SAVED: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"edgesync_clock_saved") };
/// Counts tombstones written since the server started (any database): a
/// backend that saw no tombstone need not look again until this moves.
// SAFETY: a shared-memory name used for this object only, prefixed
// "edgesync_" so that no other library's shared memory has it.
static TOMBSTONES_WRITTEN: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"edgesync_tombstones_written") };
/// Serializes reading and writing `CLOCK_FILE`.
// SAFETY: a shared-memory name used for this object only, prefixed
// "edgesync_" so that no other library's shared memory has it.
static SAVING: PgLwLock<()> = unsafe { PgLwLock::new(c"edgesync_clock_file") };
static PRELOADED: AtomicBool = AtomicBool::new(false);
/// This backend's database's node id, once read (0: not yet).
static NODE_ID: AtomicI32 = AtomicI32::new(0);

/// Relative to the data directory (a backend's working directory).
const CLOCK_FILE: &str = "edgesync.clock";
/// How far ahead of the last reading the saved mark is put (ms), so that the
/// file is written about once per this much clock time.
const SAVE_AHEAD_MS: i64 = 10_000;

/// Reserve the shared clock; only possible while preloading.
pub fn init_shared_memory() {
    // SAFETY: a plain global of the postmaster, read while it loads libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(LAST);
        pg_shmem_init!(SAVED);
        pg_shmem_init!(SAVING);
        pg_shmem_init!(TOMBSTONES_WRITTEN);
        PRELOADED.store(true, Ordering::Relaxed);
    }
}

/// Was edgesync loaded through shared_preload_libraries (shared memory is there)?
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// Raise a clear error unless edgesync was loaded through shared_preload_libraries.
pub fn require_shared_clock() {
    if !PRELOADED.load(Ordering::Relaxed) {
        raise_with_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "edgesync must be loaded through shared_preload_libraries for conflict handling",
            "Row versions come from a clock in shared memory. Run ALTER SYSTEM SET shared_preload_libraries = 'edgesync' (keeping any libraries already listed) and restart the server.",
        );
    }
}

/// The system clock, in ms since 1970.
pub fn unix_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The clock row versions are read from: the system clock plus `edgesync.clock_offset`.
fn wall_millis() -> i64 {
    unix_millis() + guc::CLOCK_OFFSET_MS.get() as i64
}

fn read_saved() -> i64 {
    match std::fs::read_to_string(CLOCK_FILE) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: {CLOCK_FILE} in the data directory is corrupt: {text:?}"))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: cannot read {CLOCK_FILE}: {e}")),
    }
}

fn write_saved(mark: i64) {
    let tmp = format!("{CLOCK_FILE}.tmp");
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{mark}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, CLOCK_FILE)
    })();
    if let Err(e) = result {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: cannot save the clock to {CLOCK_FILE}: {e}"));
    }
}

/// Make sure the saved mark covers `reading` (and that the clock started
/// from the saved mark after a restart). Rarely takes the lock.
fn cover(reading: i64) {
    if reading < SAVED.get().load(Ordering::Acquire) {
        return;
    }
    let _lock = SAVING.exclusive();
    let saved = SAVED.get().load(Ordering::Acquire);
    if saved == 0 {
        // first use since the server started: resume from the file
        let from_file = read_saved();
        LAST.get().fetch_max(from_file, Ordering::AcqRel);
    }
    let last = LAST.get().load(Ordering::Acquire).max(reading);
    if last >= saved {
        let mark = last + hlc_from_millis(SAVE_AHEAD_MS);
        write_saved(mark);
        SAVED.get().store(mark, Ordering::Release);
    }
}

/// A new reading for a local write.
pub fn tick() -> i64 {
    require_shared_clock();
    if SAVED.get().load(Ordering::Acquire) == 0 {
        cover(0);
    }
    let wall = wall_millis();
    let last = LAST.get();
    let mut current = last.load(Ordering::Acquire);
    let reading = loop {
        let next = version::tick(current, wall);
        match last.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break next,
            Err(seen) => current = seen,
        }
    };
    cover(reading);
    reading
}

/// Move the clock past a remote reading (the HLC receive rule).
pub fn observe(remote: i64) {
    require_shared_clock();
    if SAVED.get().load(Ordering::Acquire) == 0 {
        cover(0);
    }
    let before = LAST.get().fetch_max(remote, Ordering::AcqRel);
    if remote > before {
        cover(version::observe(before, remote));
    }
}

/// Note that a tombstone was written (see `tombstones_written`).
pub fn tombstone_written() {
    TOMBSTONES_WRITTEN.get().fetch_add(1, Ordering::AcqRel);
}

/// How many tombstones were written since the server started.
pub fn tombstones_written() -> i64 {
    TOMBSTONES_WRITTEN.get().load(Ordering::Acquire)
}

/// The current reading, without advancing the clock.
pub fn peek() -> i64 {
    require_shared_clock();
    LAST.get().load(Ordering::Acquire)
}

/// This database's node id; a clear error when the node was never created.
pub fn node_id() -> i32 {
    let cached = NODE_ID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let id = match crate::privilege::as_extension_owner(|| Spi::get_one::<i32>("SELECT node_id FROM edgesync.node")) {
        Ok(Some(id)) => id,
        // no row: the node was never created
        Ok(None) | Err(pgrx::spi::Error::InvalidPosition) => raise_with_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "this database has no edgesync node id",
            "Run SELECT edgesync.create_node('a unique name') first.",
        ),
        Err(e) => raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: cannot read edgesync.node: {e}")),
    };
    NODE_ID.store(id, Ordering::Relaxed);
    id
}

/// Forget the cached node id (after `create_node` in this backend).
pub fn forget_node_id() {
    NODE_ID.store(0, Ordering::Relaxed);
}
