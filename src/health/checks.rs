//! `edgesync.health`: read each kind of replication object from the
//! `edgesync.*` statistics views and judge it with `model::health::checks`;
//! and `edgesync.thresholds()`, the levels it judges against.
//!
//! Rows come out in the order of the reads below (standbys, remembered
//! downstreams, WAL receiver, slots, subscriptions, peers, edges, pending
//! conflicts), each read sorted by name.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;

use super::{downstreams, read_rows};
use crate::error::raise;
use crate::guc;
use crate::model::directory::node_label;
use crate::model::health::checks::{self as health, Check};
use crate::model::health::edges::{self, Edge, Server};

/// The warning and critical lag levels in force in this session
/// (`edgesync.lag_*` settings), in bytes and seconds.
#[pg_extern(stable, parallel_safe)]
fn thresholds() -> TableIterator<
    'static,
    (
        name!(warning_bytes, i64),
        name!(critical_bytes, i64),
        name!(warning_seconds, f64),
        name!(critical_seconds, f64),
    ),
> {
    let t = guc::thresholds();
    TableIterator::once((t.warning_bytes as i64, t.critical_bytes as i64, t.warning_seconds, t.critical_seconds))
}

/// Every health check of this node, judged against the `edgesync.lag_*`
/// thresholds; `edgesync.health` is a view over it.
#[pg_extern(volatile)]
fn health_checks() -> TableIterator<
    'static,
    (
        name!(component, String),
        name!(object, String),
        name!(status, String),
        name!(metric, String),
        name!(value, Option<f64>),
        name!(threshold, Option<f64>),
        name!(detail, String),
    ),
> {
    let rows = collect_checks().into_iter().map(|c| {
        (c.component.to_string(), c.object, c.status.as_str().to_string(), c.metric.to_string(), c.value, c.threshold, c.detail)
    });
    TableIterator::new(rows.collect::<Vec<_>>())
}

fn collect_checks() -> Vec<Check> {
    let t = guc::thresholds();
    downstreams::record_connected();
    Spi::connect(|client| {
        let mut checks = Vec::new();
        checks.extend(read_standbys(client).iter().flat_map(|s| health::standby_checks(s, &t)));
        checks.extend(downstreams::downstream_checks(client, &t, || current_database(client)));
        checks.extend(read_wal_receivers(client).iter().flat_map(|w| health::wal_receiver_checks(w, &t)));
        checks.extend(read_slots(client).iter().flat_map(|s| health::slot_checks(s, &t)));
        checks.extend(read_subscriptions(client).iter().flat_map(|s| health::subscription_checks(s, &t)));
        let peers = read_peers(client);
        let max_skew = guc::MAX_CLOCK_SKEW_MS.get() as f64 / 1000.0;
        checks.extend(peers.iter().flat_map(|p| health::peer_checks(p, &t, max_skew)));
        checks.extend(read_blocked_peers(client).iter().map(health::blocked_peer_check));
        checks.extend(edge_checks(client));
        let pending = read_pending_conflicts(client);
        checks.extend(pending.iter().map(|p| health::pending_conflicts_check(&p.relation, p.pending, p.oldest_seconds)));
        checks.extend(read_clock_drift(client));
        if checks.is_empty() {
            checks.push(health::nothing_to_check(&current_database(client)));
        }
        checks
    })
}

fn read_standbys(client: &SpiClient<'_>) -> Vec<health::Standby> {
    read_rows(
        client,
        "SELECT coalesce(nullif(name, ''), 'pid ' || pid), kind, state, replay_lag_bytes::float8, replay_lag_seconds
           FROM edgesync.streaming_replication ORDER BY 1",
        |r| {
            Ok(health::Standby {
                name: r.get(1)?.unwrap_or_default(),
                kind: r.get(2)?.unwrap_or_default(),
                state: r.get(3)?,
                replay_lag_bytes: r.get(4)?,
                replay_lag_seconds: r.get(5)?,
            })
        },
    )
}

fn read_wal_receivers(client: &SpiClient<'_>) -> Vec<health::WalReceiver> {
    read_rows(
        client,
        "SELECT coalesce(sender_host || ':' || sender_port, 'primary'), status, replay_delay_seconds FROM edgesync.wal_receiver",
        |r| {
            Ok(health::WalReceiver {
                sender: r.get(1)?.unwrap_or_default(),
                status: r.get(2)?.unwrap_or_default(),
                replay_delay_seconds: r.get(3)?,
            })
        },
    )
}

fn read_slots(client: &SpiClient<'_>) -> Vec<health::Slot> {
    read_rows(
        client,
        "SELECT s.slot_name::text, s.slot_type, s.active, s.retained_wal_bytes::float8, s.wal_status,
                extract(epoch FROM now() - s.inactive_since)::float8,
                EXISTS (SELECT FROM edgesync.peers p WHERE p.slot_name = s.slot_name)
                -- the feed worker reads its slot in rounds while edges are registered
                OR (s.slot_name = 'edgesync_feed' AND s.database = current_database() AND EXISTS (SELECT FROM edgesync.edge))
           FROM edgesync.replication_slots s ORDER BY 1",
        |r| {
            Ok(health::Slot {
                name: r.get(1)?.unwrap_or_default(),
                slot_type: r.get(2)?.unwrap_or_default(),
                active: r.get(3)?.unwrap_or(false),
                retained_wal_bytes: r.get(4)?,
                wal_status: r.get(5)?,
                inactive_seconds: r.get(6)?,
                peer_slot: r.get(7)?.unwrap_or(false),
            })
        },
    )
}

/// The conflict count is NULL before 18, whose statistics have no `confl_*` columns.
fn read_subscriptions(client: &SpiClient<'_>) -> Vec<health::Subscription> {
    read_rows(
        client,
        "SELECT name::text, enabled, worker_pid IS NOT NULL, seconds_since_last_message,
                coalesce(apply_error_count, 0) + coalesce(sync_error_count, 0),
                CASE WHEN current_setting('server_version_num')::int >= 180000 THEN
                  coalesce(confl_insert_exists, 0) + coalesce(confl_update_origin_differs, 0)
                  + coalesce(confl_update_exists, 0) + coalesce(confl_update_missing, 0)
                  + coalesce(confl_delete_origin_differs, 0) + coalesce(confl_delete_missing, 0)
                  + coalesce(confl_multiple_unique_conflicts, 0) END
           FROM edgesync.subscriptions ORDER BY 1",
        |r| {
            Ok(health::Subscription {
                name: r.get(1)?.unwrap_or_default(),
                enabled: r.get(2)?.unwrap_or(false),
                worker_running: r.get(3)?.unwrap_or(false),
                seconds_since_last_message: r.get(4)?,
                error_count: r.get::<i64>(5)?.unwrap_or(0),
                conflict_count: r.get(6)?,
            })
        },
    )
}

fn read_peers(client: &SpiClient<'_>) -> Vec<health::Peer> {
    read_rows(
        client,
        // one row per peer: the push row, whose state a pull refused for good overrides
        "SELECT p.peer, CASE WHEN EXISTS (SELECT FROM edgesync.peers q WHERE q.peer = p.peer AND q.direction = 'pull'
                                                                         AND q.state = 'resync_needed')
                             THEN 'resync_needed' ELSE p.state END,
                p.consecutive_failures::bigint, extract(epoch FROM now() - p.last_success)::float8, p.last_error,
                p.pending_bytes::float8, p.lag_seconds, p.clock_skew_seconds::float8
           FROM edgesync.peers p WHERE p.direction = 'push' ORDER BY 1",
        |r| {
            Ok(health::Peer {
                name: r.get(1)?.unwrap_or_default(),
                state: r.get(2)?.unwrap_or_default(),
                consecutive_failures: r.get(3)?.unwrap_or(0),
                since_success_seconds: r.get(4)?,
                last_error: r.get(5)?,
                pending_bytes: r.get(6)?,
                lag_seconds: r.get(7)?,
                clock_skew_seconds: r.get(8)?,
            })
        },
    )
}

fn read_blocked_peers(client: &SpiClient<'_>) -> Vec<health::BlockedPeer> {
    read_rows(
        client,
        "SELECT peer, blocked_lsn::text, blocked_table, blocked_error, extract(epoch FROM now() - blocked_since)::float8
           FROM edgesync.peers WHERE direction = 'push' AND blocked_lsn IS NOT NULL ORDER BY 1",
        |r| {
            Ok(health::BlockedPeer {
                name: r.get(1)?.unwrap_or_default(),
                lsn: r.get(2)?.unwrap_or_default(),
                tables: r.get(3)?.unwrap_or_default(),
                error: r.get(4)?.unwrap_or_default(),
                blocked_seconds: r.get(5)?,
            })
        },
    )
}

/// The registered edges (on a cloud), judged against
/// `edgesync.edge_silence_warning`.
fn edge_checks(client: &SpiClient<'_>) -> Vec<Check> {
    let silence_warning = guc::EDGE_SILENCE_WARNING.get() as f64;
    let table_full = crate::sync::edge_activity::activity_table_full();
    let (registered, in_recovery) = read_edges(client, table_full);
    let server = if in_recovery { Server::Standby } else { Server::Primary };
    registered.iter().flat_map(|e| edges::edge_checks(e, silence_warning, server)).collect()
}

/// `edgesync.edges`, with how long each edge has been unheard and whether
/// this node is a standby (the same on every row).
fn read_edges(client: &SpiClient<'_>, table_full: bool) -> (Vec<Edge>, bool) {
    let rows = read_rows(
        client,
        "SELECT e.name, extract(epoch FROM now() - greatest(e.last_push, e.last_pull, e.last_hello))::float8,
                extract(epoch FROM now() - greatest(pg_postmaster_start_time(), e.registered_at))::float8,
                e.pull_position::text, m.purged_through::text, coalesce(e.beyond_retention, false), e.behind_bytes::float8,
                pg_is_in_recovery()
           FROM edgesync.edges e, edgesync.feed_mark m ORDER BY 1",
        |r| {
            let heard_seconds_ago: Option<f64> = r.get(2)?;
            let edge = Edge {
                name: r.get(1)?.unwrap_or_default(),
                heard_seconds_ago,
                watched_seconds: r.get(3)?.unwrap_or(0.0),
                untracked: table_full && heard_seconds_ago.is_none(),
                pull_position: r.get(4)?,
                purged_through: r.get(5)?.unwrap_or_default(),
                beyond_retention: r.get(6)?.unwrap_or(false),
                behind_bytes: r.get(7)?,
            };
            Ok((edge, r.get::<bool>(8)?.unwrap_or(false)))
        },
    );
    let in_recovery = rows.first().is_some_and(|(_, standby)| *standby);
    (rows.into_iter().map(|(e, _)| e).collect(), in_recovery)
}

/// One table's conflicts waiting for a DBA.
struct PendingConflicts {
    /// Schema-qualified and quoted, as a DBA would type it.
    relation: String,
    pending: i64,
    oldest_seconds: Option<f64>,
}

fn read_pending_conflicts(client: &SpiClient<'_>) -> Vec<PendingConflicts> {
    read_rows(
        client,
        "SELECT quote_ident(schema_name) || '.' || quote_ident(table_name), pending,
                extract(epoch FROM now() - oldest)::float8
           FROM edgesync.pending_conflict_counts() ORDER BY 1",
        |r| {
            Ok(PendingConflicts {
                relation: r.get::<String>(1)?.unwrap_or_default(),
                pending: r.get::<i64>(2)?.unwrap_or(0),
                oldest_seconds: r.get::<f64>(3)?,
            })
        },
    )
}

/// One row per node whose changes are held for clock drift, named
/// through the node directory.
fn read_clock_drift(client: &SpiClient<'_>) -> Vec<Check> {
    let bound_seconds = guc::MAX_CLOCK_DRIFT_MS.get() as f64 / 1000.0;
    read_rows(client, "SELECT node_id, held, latest_ahead_seconds FROM edgesync.clock_drift_held() ORDER BY 1", |r| {
        let node_id = r.get(1)?.unwrap_or(0);
        let node = node_label(node_id, crate::directory::name_of(node_id).as_deref());
        Ok(health::clock_drift_check(&node, r.get(2)?.unwrap_or(0), r.get(3)?.unwrap_or(0.0), bound_seconds))
    })
}

/// The name the "nothing to check" row is about.
fn current_database(client: &SpiClient<'_>) -> String {
    client
        .select("SELECT current_database()::text", None, &[])
        .and_then(|t| t.first().get_one::<String>())
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading the database name failed: {e}")))
        .unwrap_or_default()
}
