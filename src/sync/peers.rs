//! The SQL functions that act on running forwarders: `sync_now`, and the
//! launcher wake-up behind `add_peer` and friends. The peers' settings live
//! in the table `edgesync.peer` (sql/forwarder.sql); what the forwarders are
//! doing lives in shared memory (`status`).

use std::time::Duration;

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::sync::status::{find, read, set_latch, update, wait_on_latch, wake_launcher, Activity};

/// How often `sync_now` looks whether its round is done (the forwarder does
/// not know the waiting backend's latch).
const SYNC_NOW_POLL: Duration = Duration::from_millis(10);

fn require_preloaded() {
    if !crate::conflict::clock::preloaded() {
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "edgesync must be loaded through shared_preload_libraries to run forwarders",
            "Run ALTER SYSTEM SET shared_preload_libraries = 'edgesync' (keeping any libraries already listed) and restart the server."
        );
    }
}







/// Ask the forwarder of `peer` for a round and wait until it is done;
/// raise the round's error if it failed. Returns the rows it sent.
#[pg_extern(volatile, parallel_unsafe)]
fn sync_now(peer: &str, timeout: default!(pgrx::datum::Interval, "'5 min'")) -> i64 {
    require_preloaded();
    let found = Spi::get_two_with_args::<i32, bool>("SELECT id, paused FROM edgesync.peer WHERE name = $1", &[peer.into()]);
    let (peer_id, paused) = match found {
        Ok((Some(id), Some(paused))) => (id, paused),
        _ => {
            ereport!(PgLogLevel::ERROR, PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("edgesync: no peer named {peer:?}"));
            unreachable!()
        }
    };
    if paused {
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("edgesync: peer {peer:?} is paused"),
            format!("Resume it first: SELECT edgesync.resume_peer('{peer}');")
        );
    }
    let limit = Duration::from_micros(timeout.as_micros().max(0) as u64 + timeout.days() as u64 * 86_400_000_000 + timeout.months() as u64 * 30 * 86_400_000_000);
    let started = std::time::Instant::now();
    // the launcher may be about to start the forwarder (a peer just added or resumed)
    let index = loop {
        if let Some(i) = find(peer_id).filter(|&i| read(i).pid != 0) {
            break i;
        }
        if started.elapsed() > limit.min(Duration::from_secs(15)) {
            ereport!(
                PgLogLevel::ERROR,
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("edgesync: no forwarder is running for peer {peer:?}"),
                "Forwarders run in the database named by edgesync.database; check it and the server log."
            );
        }
        wait_on_latch(SYNC_NOW_POLL);
    };
    let (target, latch) = update(index, |s| {
        s.rounds_requested += 1;
        (s.rounds_requested, s.latch)
    });
    set_latch(latch);
    loop {
        let s = read(index);
        if s.peer_id != peer_id {
            error!("edgesync: the forwarder of peer {peer:?} went away");
        }
        if s.rounds_done >= target {
            if s.last_round_failed {
                ereport!(
                    PgLogLevel::ERROR,
                    PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
                    format!("edgesync: sync with peer {peer:?} failed: {}", s.error().unwrap_or_default())
                );
            }
            return s.last_round_rows;
        }
        if started.elapsed() > limit {
            ereport!(
                PgLogLevel::ERROR,
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
                format!("edgesync: sync with peer {peer:?} did not finish within the timeout"),
                format!("Its state: {}; see edgesync.peers.", Activity::name(s.activity))
            );
        }
        wait_on_latch(SYNC_NOW_POLL);
    }
}

/// Wake the launcher when this transaction commits (it then sees the
/// peer changes this transaction made).
#[pg_extern(volatile, parallel_unsafe)]
fn _wake_launcher_at_commit() {
    if !crate::conflict::clock::preloaded() {
        return;
    }
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, wake_launcher);
}
