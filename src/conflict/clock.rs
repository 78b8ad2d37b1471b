//! The node's hybrid logical clock, shared by every backend through shared
//! memory, and the node id stamped next to it.
//!
//! Before a reading is handed out, a reservation past it is written to the
//! sequence `edgesync.clock_reservation`: a sequence is changed outside
//! transactions and WAL-logged, so the reservation's WAL record comes before
//! the commit record of any row stamped with a reading under it. Wherever
//! such a row is durable (after a crash, on a promoted standby, in a restored
//! backup) the reservation is too, and the clock resumes past it: no version
//! is issued twice, even with the wall clock set back. (Between installing
//! this library and `ALTER EXTENSION edgesync UPDATE`, the mark stays in
//! the file 0.2.0 kept it in; the update seeds the sequence from it.)

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic, PgLwLock, PgSqlErrorCode};

use crate::error::{raise, raise_with_hint};
use crate::guc;
use crate::model::conflict::version::{self, within_drift, Drift};
use crate::privilege::as_extension_owner;

/// The last reading handed out or observed. Readings are taken with a
/// compare-and-swap: no lock on the write path.
// SAFETY: a shared-memory name used for this object only, prefixed
// "edgesync_" so that no other library's shared memory has it.
static LAST: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"edgesync_clock_last") };
/// Counts tombstones written since the server started (any database): a
/// backend that saw no tombstone need not look again until this moves.
// SAFETY: a shared-memory name used for this object only, prefixed
// "edgesync_" so that no other library's shared memory has it.
static TOMBSTONES_WRITTEN: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"edgesync_tombstones_written") };
/// The databases whose clock resumed from their reservation since the
/// server started (oids; 0: a free place). Resuming jumps the clock to the
/// reservation, up to `RESERVE_AHEAD_MS` past any reading: once per
/// database and server start, not once per backend.
// SAFETY: a shared-memory name used for this object only, prefixed
// "edgesync_" so that no other library's shared memory has it.
static RESUMED: PgLwLock<[u32; 32]> = unsafe { PgLwLock::new(c"edgesync_clock_resumed") };
static PRELOADED: AtomicBool = AtomicBool::new(false);
/// Did this backend see its database resumed (`RESUMED`)?
static RESUMED_HERE: AtomicBool = AtomicBool::new(false);
/// This backend's database's node id, once read (0: not yet).
static NODE_ID: AtomicI32 = AtomicI32::new(0);
/// The reservation of this backend's database as this backend last saw it
/// (0: not read yet). It only grows, so readings below it need no look.
static RESERVED: AtomicI64 = AtomicI64::new(0);

/// Reserve the shared clock; only possible while preloading.
pub fn init_shared_memory() {
    // SAFETY: a plain global of the postmaster, read while it loads libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(LAST);
        pg_shmem_init!(TOMBSTONES_WRITTEN);
        pg_shmem_init!(RESUMED);
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
    unix_millis().saturating_add(guc::CLOCK_OFFSET_MS.get() as i64)
}

/// Run `sql` on the reservation sequence as the extension owner (the
/// writer of a row need have no rights on it).
fn on_reservation(what: &str, sql: &str, args: &[pgrx::datum::DatumWithOid]) -> i64 {
    as_extension_owner(|| Spi::get_one_with_args::<i64>(sql, args))
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: {what} edgesync.clock_reservation: {e}")))
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: {what} edgesync.clock_reservation returned nothing")))
}

/// Until `ALTER EXTENSION edgesync UPDATE` made the sequence, the mark
/// stays where 0.2.0 kept it: a file in the data directory.
fn has_sequence() -> bool {
    let sql = "SELECT CASE WHEN pg_catalog.to_regclass('edgesync.clock_reservation') IS NULL THEN 0::pg_catalog.int8 ELSE 1 END";
    on_reservation("looking for", sql, &[]) == 1
}

fn read_reservation() -> i64 {
    if has_sequence() {
        on_reservation("reading", "SELECT last_value FROM edgesync.clock_reservation", &[])
    } else {
        legacy_file::read()
    }
}

/// Move the reservation past `reading` unless it is already; returns it.
fn advance_reservation(reading: i64) -> i64 {
    if !has_sequence() {
        let _only_writer = RESUMED.exclusive();
        let seen = legacy_file::read();
        return if reading < seen { seen } else { legacy_file::write(version::reservation_for(reading)) };
    }
    lock_reservation();
    let seen = on_reservation("reading", "SELECT last_value FROM edgesync.clock_reservation", &[]);
    if reading < seen {
        return seen;
    }
    let mark = version::reservation_for(reading);
    on_reservation("advancing", "SELECT pg_catalog.setval('edgesync.clock_reservation', $1)", &[mark.into()])
}

/// Hold the reservation still for other writers until this transaction
/// ends: it must only grow, and a read-then-set is not atomic. Readers need
/// no lock (a sequence's value is seen at once by every backend).
fn lock_reservation() {
    let oid = on_reservation("locking", "SELECT 'edgesync.clock_reservation'::pg_catalog.regclass::pg_catalog.oid::pg_catalog.int8", &[]);
    // SAFETY: in a transaction (a trigger or function of this extension);
    // an oid of a dropped relation only makes the later read raise.
    unsafe { pg_sys::LockRelationOid(pg_sys::Oid::from(oid as u32), pg_sys::ShareUpdateExclusiveLock as pg_sys::LOCKMODE) };
}

/// The 0.2.0 place of the mark, kept until the extension is updated: a
/// file written whole under another name, synced, renamed over the old one,
/// and the directory synced so that the rename survives a crash too.
mod legacy_file {
    use std::io::Write;

    use pgrx::PgSqlErrorCode;

    use crate::error::raise;

    /// Relative to the data directory (a backend's working directory).
    const CLOCK_FILE: &str = "edgesync.clock";

    pub(super) fn read() -> i64 {
        match std::fs::read_to_string(CLOCK_FILE) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, format!("edgesync: {CLOCK_FILE} in the data directory is corrupt: {text:?}"))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => raise(PgSqlErrorCode::ERRCODE_IO_ERROR, format!("edgesync: cannot read {CLOCK_FILE}: {e}")),
        }
    }

    pub(super) fn write(mark: i64) -> i64 {
        let tmp = format!("{CLOCK_FILE}.tmp");
        let result = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{mark}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, CLOCK_FILE)?;
            std::fs::File::open(".")?.sync_all()
        })();
        if let Err(e) = result {
            raise(PgSqlErrorCode::ERRCODE_IO_ERROR, format!("edgesync: cannot save the clock to {CLOCK_FILE}: {e}"));
        }
        mark
    }
}

/// Start the clock past this database's reservation: once per database
/// after the server started (or was promoted), before any reading is
/// handed out there. Not recorded during recovery: replay may still move
/// the reservation until promotion.
fn resume() {
    if RESUMED_HERE.load(Ordering::Relaxed) {
        return;
    }
    // read before the lock (no SPI under an LWLock): nothing moves the
    // reservation in this server run before some backend resumed it
    let reserved = read_reservation();
    // SAFETY: plain globals of this backend, set at connection start.
    let (database, recovering) = unsafe { (u32::from(pg_sys::MyDatabaseId), pg_sys::RecoveryInProgress()) };
    let mut resumed = RESUMED.exclusive();
    if !resumed.contains(&database) {
        LAST.get().fetch_max(reserved, Ordering::AcqRel);
        if recovering {
            return;
        }
        // more databases than places: each new backend resumes again, which
        // only moves the clock ahead a little, never back
        if let Some(free) = resumed.iter_mut().find(|d| **d == 0) {
            *free = database;
        }
    }
    drop(resumed);
    RESERVED.fetch_max(reserved, Ordering::Relaxed);
    RESUMED_HERE.store(true, Ordering::Relaxed);
}

/// Make the durable reservation cover `reading` before it is handed out.
/// Rarely does more than compare: once per `RESERVE_AHEAD_MS` of clock.
fn reserve_past(reading: i64) {
    if reading < RESERVED.load(Ordering::Relaxed) {
        return;
    }
    // another backend may have moved it already
    let mut reserved = read_reservation();
    if reading >= reserved {
        reserved = advance_reservation(reading);
    }
    RESERVED.store(reserved, Ordering::Relaxed);
}

/// A new reading for a local write.
pub fn tick() -> i64 {
    require_shared_clock();
    resume();
    let wall = wall_millis();
    let last = LAST.get();
    let mut current = last.load(Ordering::Acquire);
    let reading = loop {
        let Ok(next) = version::tick(current, wall) else {
            raise(PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, "edgesync: the row-version clock has reached the end of its range");
        };
        match last.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break next,
            Err(seen) => current = seen,
        }
    };
    reserve_past(reading);
    reading
}

/// The HLC receive rule, bounded: move the clock past a remote reading
/// unless it is further past the wall clock than `edgesync.max_clock_drift`;
/// then the clock stays where it is and the caller holds the change.
pub fn observe(remote: i64) -> Result<(), Drift> {
    require_shared_clock();
    within_drift(remote, wall_millis(), guc::MAX_CLOCK_DRIFT_MS.get() as i64)?;
    resume();
    let before = LAST.get().fetch_max(remote, Ordering::AcqRel);
    if remote > before {
        reserve_past(version::observe(before, remote));
    }
    Ok(())
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
    resume();
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

/// Forget the cached node id and reservation (after `create_node` in this
/// backend: the extension may have been made anew).
pub fn forget_node_id() {
    NODE_ID.store(0, Ordering::Relaxed);
    RESERVED.store(0, Ordering::Relaxed);
    RESUMED_HERE.store(false, Ordering::Relaxed);
}
