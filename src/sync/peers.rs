//! The SQL functions that act on running forwarders: `sync_now`, and the
//! launcher wake-up behind `add_peer` and friends. The peers' settings live
//! in the table `edgesync.peer` (sql/forwarder.sql); what the forwarders are
//! doing lives in shared memory (`status`).

use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::error::{raise, raise_with_hint};
use crate::privilege::as_extension_owner;
use crate::sync::status::{find, read, set_latch, update, wait_on_latch, wake_launcher, Activity};

/// How often `sync_now` looks whether its round is done (the forwarder does
/// not know the waiting backend's latch).
const SYNC_NOW_POLL: Duration = Duration::from_millis(10);

/// How long `sync_now` waits at most for a forwarder to appear (a peer
/// just added or resumed), whatever its own timeout.
const FORWARDER_START_WAIT: Duration = Duration::from_secs(15);

fn require_preloaded() {
    if !crate::conflict::clock::preloaded() {
        raise_with_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "edgesync must be loaded through shared_preload_libraries to run forwarders",
            "Run ALTER SYSTEM SET shared_preload_libraries = 'edgesync' (keeping any libraries already listed) and restart the server.",
        );
    }
}

/// Ask the forwarder of `peer` for a round and wait until it is done;
/// raise the round's error if it failed. Returns the rows it sent.
#[pg_extern(volatile, parallel_unsafe)]
fn sync_now(peer: &str, timeout: default!(pgrx::datum::Interval, "'5 min'")) -> i64 {
    require_preloaded();
    let peer_id = unpaused_peer_id(peer);
    let deadline = Deadline { started: Instant::now(), limit: interval_duration(&timeout) };
    let index = wait_for_forwarder(peer, peer_id, &deadline);
    let target = request_round(index);
    wait_for_round(peer, peer_id, index, target, &deadline)
}

/// The time `sync_now` started and how long it may take in all.
struct Deadline {
    started: Instant,
    limit: Duration,
}

impl Deadline {
    /// The whole timeout has passed.
    fn expired(&self) -> bool {
        self.started.elapsed() > self.limit
    }

    /// Waiting for a forwarder to start is over: the timeout or
    /// `FORWARDER_START_WAIT` passed, whichever is shorter.
    fn forwarder_start_expired(&self) -> bool {
        self.started.elapsed() > self.limit.min(FORWARDER_START_WAIT)
    }
}

/// An interval as a duration, a month counted as 30 days (a negative one
/// counts as zero).
fn interval_duration(timeout: &pgrx::datum::Interval) -> Duration {
    Duration::from_micros(
        timeout.as_micros().max(0) as u64 + timeout.days() as u64 * 86_400_000_000 + timeout.months() as u64 * 30 * 86_400_000_000,
    )
}

/// The id of peer `peer`; raises when there is no such peer or it is paused.
fn unpaused_peer_id(peer: &str) -> i32 {
    let Some((peer_id, paused)) = read_peer(peer) else {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("edgesync: no peer named {peer:?}"));
    };
    if paused {
        raise_with_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("edgesync: peer {peer:?} is paused"),
            &format!("Resume it first: SELECT edgesync.resume_peer('{peer}');"),
        );
    }
    peer_id
}

/// (id, paused) of peer `peer`, None when there is no such peer.
fn read_peer(peer: &str) -> Option<(i32, bool)> {
    // edgesync.peer holds conninfos: only the extension's owner reads it
    as_extension_owner(|| {
        Spi::connect(|client| {
            let table = client.select("SELECT id, paused FROM edgesync.peer WHERE name = $1", Some(1), &[peer.into()])?;
            let row = table.into_iter().next().map(|r| Ok::<_, pgrx::spi::Error>((r.get::<i32>(1)?, r.get::<bool>(2)?)));
            row.transpose()
        })
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading peer {peer:?} failed: {e}")))
    .and_then(|(id, paused)| id.zip(paused))
}

/// The shared-memory slot of the running forwarder of `peer_id`. The
/// launcher may be about to start it (a peer just added or resumed), so
/// wait a little for it.
fn wait_for_forwarder(peer: &str, peer_id: i32, deadline: &Deadline) -> usize {
    loop {
        if let Some(i) = find(peer_id).filter(|&i| read(i).pid != 0) {
            return i;
        }
        if deadline.forwarder_start_expired() {
            raise_with_hint(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("edgesync: no forwarder is running for peer {peer:?}"),
                "Forwarders run in the database named by edgesync.database; check it and the server log.",
            );
        }
        wait_on_latch(SYNC_NOW_POLL);
    }
}

/// Ask the forwarder in slot `index` for one more round and wake it;
/// returns the number of the round asked for.
fn request_round(index: usize) -> u64 {
    let (target, latch) = update(index, |s| {
        s.rounds_requested += 1;
        (s.rounds_requested, s.latch)
    });
    set_latch(latch);
    target
}

/// Wait until the forwarder has finished round `target`; its rows sent, or
/// its error raised.
fn wait_for_round(peer: &str, peer_id: i32, index: usize, target: u64, deadline: &Deadline) -> i64 {
    loop {
        let s = read(index);
        if s.peer_id != peer_id {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("edgesync: the forwarder of peer {peer:?} went away"),
            );
        }
        if s.rounds_done >= target {
            if s.last_round_failed {
                raise(
                    PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
                    format!("edgesync: sync with peer {peer:?} failed: {}", s.error().unwrap_or_default()),
                );
            }
            return s.last_round_rows;
        }
        if deadline.expired() {
            raise_with_hint(
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
                format!("edgesync: sync with peer {peer:?} did not finish within the timeout"),
                &format!("Its state: {}; see edgesync.peers.", Activity::name(s.activity)),
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
