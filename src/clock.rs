//! The node's hybrid logical clock, shared by every backend through shared
//! memory, and the node id stamped next to it.
//!
//! The clock's high-water mark is kept in a file in the data directory,
//! always a little ahead of any reading handed out, so that after a restart
//! (even with the wall clock set back) the clock never repeats or goes back.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock, PgSqlErrorCode};

use crate::guc;
use crate::model::version::{self, hlc_from_millis};

#[derive(Copy, Clone, Default)]
pub struct ClockState {
    /// The last reading handed out or observed.
    last: i64,
    /// The reading saved in `CLOCK_FILE`; `last` never passes it unsaved.
    saved: i64,
    /// `saved` has been read from the file since the server started.
    loaded: bool,
}

unsafe impl PGRXSharedMemory for ClockState {}

static CLOCK: PgLwLock<ClockState> = unsafe { PgLwLock::new(c"edgesync_clock") };
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
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(CLOCK);
        PRELOADED.store(true, Ordering::Relaxed);
    }
}

/// Raise a clear error unless edgesync was loaded through shared_preload_libraries.
pub fn require_shared_clock() {
    if !PRELOADED.load(Ordering::Relaxed) {
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "edgesync must be loaded through shared_preload_libraries for conflict handling",
            "Row versions come from a clock in shared memory. Run ALTER SYSTEM SET shared_preload_libraries = 'edgesync' (keeping any libraries already listed) and restart the server."
        );
    }
}

fn wall_millis() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    now + guc::CLOCK_OFFSET_MS.get() as i64
}

fn read_saved() -> i64 {
    match std::fs::read_to_string(CLOCK_FILE) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            error!("edgesync: {CLOCK_FILE} in the data directory is corrupt: {text:?}")
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => error!("edgesync: cannot read {CLOCK_FILE}: {e}"),
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
        error!("edgesync: cannot save the clock to {CLOCK_FILE}: {e}");
    }
}

/// Bring `st` up to date with the file and make sure `st.last` is covered by it.
fn persist(st: &mut ClockState) {
    if !st.loaded {
        st.saved = read_saved();
        st.last = st.last.max(st.saved);
        st.loaded = true;
    }
    if st.last >= st.saved {
        let mark = st.last + hlc_from_millis(SAVE_AHEAD_MS);
        write_saved(mark);
        st.saved = mark;
    }
}

/// A new reading for a local write.
pub fn tick() -> i64 {
    require_shared_clock();
    let wall = wall_millis();
    let mut st = CLOCK.exclusive();
    st.last = version::tick(st.last, wall);
    persist(&mut st);
    st.last
}

/// Move the clock past a remote reading (the HLC receive rule).
pub fn observe(remote: i64) {
    require_shared_clock();
    let mut st = CLOCK.exclusive();
    if remote > st.last {
        st.last = version::observe(st.last, remote);
        persist(&mut st);
    }
}

/// The current reading, without advancing the clock.
pub fn peek() -> i64 {
    require_shared_clock();
    CLOCK.share().last
}

/// This database's node id; a clear error when the node was never created.
pub fn node_id() -> i32 {
    let cached = NODE_ID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let id = crate::privilege::as_extension_owner(|| Spi::get_one::<i32>("SELECT node_id FROM edgesync.node"))
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            ereport!(
                PgLogLevel::ERROR,
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "this database has no edgesync node id",
                "Run SELECT edgesync.create_node('a unique name') first."
            );
            unreachable!()
        });
    NODE_ID.store(id, Ordering::Relaxed);
    id
}

/// Forget the cached node id (after `create_node` in this backend).
pub fn forget_node_id() {
    NODE_ID.store(0, Ordering::Relaxed);
}
