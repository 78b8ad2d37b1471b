//! The cloud's record of what its edges did (`model::sync::edge_activity`),
//! in shared memory: `apply_batch` notes a push, `pull_batch` a pull,
//! `hello` a connection; `edgesync.edges` and the `edge` rows of
//! `edgesync.health` read it.
//!
//! Observability only: pulls stay stateless on the cloud (a hot standby
//! serves them, recording into its own memory), nothing here is durable,
//! and a restart forgets it all, as `pg_stat_*` counters are forgotten.
//! A write holds the lock for a hash probe, never longer.

use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, PgLwLock};

use super::status::{my_database, now};
use crate::model::sync::edge_activity::{ActivityTable, Event, EDGE_SLOTS};

// SAFETY: `ActivityTable` is `repr(C)` plain data (integers and byte
// arrays) with no pointer into one process's memory.
unsafe impl<const N: usize> PGRXSharedMemory for ActivityTable<N> {}

// SAFETY: no other lock or shared-memory segment of this library is named
// "edgesync_edge_activity".
static ACTIVITY: PgLwLock<ActivityTable<EDGE_SLOTS>> = unsafe { PgLwLock::new(c"edgesync_edge_activity") };

/// Set up the table (only while preloading: shared memory is sized then).
pub fn init_shared_memory() {
    pg_shmem_init!(ACTIVITY = ActivityTable::<EDGE_SLOTS>::EMPTY);
}

/// Note `event` of edge `sender` in this database, now. Called once the
/// caller's login was checked for `sender`; a superuser may act under any
/// name, so a name nobody registered is not given a slot.
pub(crate) fn record(sender: &str, event: Event) {
    if !crate::conflict::clock::preloaded() || !super::edges::is_registered_after_login_check(sender) {
        return;
    }
    let (dboid, at) = (my_database(), now());
    // a full table keeps the edges it has; `activity_table_full` tells health
    ACTIVITY.exclusive().record(dboid, sender, event, at);
}

/// Every slot is taken: edges not yet recorded will not be.
pub(crate) fn activity_table_full() -> bool {
    crate::conflict::clock::preloaded() && ACTIVITY.share().is_full()
}

/// `edgesync.hello` says the edge connected (after its login check).
#[pg_extern(volatile, parallel_unsafe)]
fn _note_edge_hello(sender: &str) {
    record(sender, Event::Hello);
}

/// Forget edge `name`'s activity when this transaction commits
/// (`drop_edge`, `reset_edge`): a rolled-back drop keeps it.
#[pg_extern(volatile, parallel_unsafe)]
fn _forget_edge_activity_at_commit(name: &str) {
    if !crate::conflict::clock::preloaded() {
        return;
    }
    let (dboid, name) = (my_database(), name.to_string());
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        ACTIVITY.exclusive().forget(dboid, &name);
    });
}

/// The activity recorded for this database's edges, for `edgesync.edges`.
/// Times are microseconds since 2000-01-01 (0: never), positions LSNs
/// counted from 0/0; the view turns them into timestamps and `pg_lsn`s.
#[pg_extern(volatile, parallel_safe)]
#[allow(clippy::type_complexity)]
fn _edge_activity() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(last_hello, i64),
        name!(last_push, i64),
        name!(pushed_position, i64),
        name!(last_pull, i64),
        name!(pull_position, i64),
    ),
> {
    if !crate::conflict::clock::preloaded() {
        return TableIterator::new(Vec::new());
    }
    let dboid = my_database();
    // copied out under the lock, turned into rows after it
    let recorded: Vec<_> = ACTIVITY.share().of_database(dboid).copied().collect();
    let rows = recorded.iter().map(|a| {
        (a.name(), a.last_hello, a.last_push, a.pushed_position as i64, a.last_pull, a.pull_position as i64)
    });
    TableIterator::new(rows.collect::<Vec<_>>())
}
