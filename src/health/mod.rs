//! SQL functions behind `edgesync.health` and `edgesync.diagnose()`: read the
//! statistics views, hand plain structs to `model::health` / `model::diagnose`.

use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiHeapTupleData};

use crate::guc;
use crate::model::health::diagnose::{self, NodeSnapshot, SlotSnapshot, SubscriptionSnapshot};
use crate::model::health::checks::{self as health, Check};

/// Run a read-only query and map each row; an SPI failure becomes an ERROR.
fn read_rows<T>(client: &SpiClient<'_>, sql: &str, map: impl Fn(&SpiHeapTupleData) -> pgrx::spi::Result<T>) -> Vec<T> {
    let table = client.select(sql, None, &[]).unwrap_or_else(|e| error!("edgesync: reading statistics failed: {e}"));
    table
        .map(|row| map(&row).unwrap_or_else(|e| error!("edgesync: unexpected statistics row: {e}")))
        .collect()
}

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

fn collect_checks() -> Vec<Check> {
    let t = guc::thresholds();
    Spi::connect(|client| {
        let mut checks = Vec::new();
        let standbys = read_rows(
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
        );
        checks.extend(standbys.iter().flat_map(|s| health::standby_checks(s, &t)));

        let receivers = read_rows(
            client,
            "SELECT coalesce(sender_host || ':' || sender_port, 'primary'), status, replay_delay_seconds FROM edgesync.wal_receiver",
            |r| {
                Ok(health::WalReceiver {
                    sender: r.get(1)?.unwrap_or_default(),
                    status: r.get(2)?.unwrap_or_default(),
                    replay_delay_seconds: r.get(3)?,
                })
            },
        );
        checks.extend(receivers.iter().flat_map(|w| health::wal_receiver_checks(w, &t)));

        let slots = read_rows(
            client,
            "SELECT slot_name::text, slot_type, active, retained_wal_bytes::float8, wal_status,
                    extract(epoch FROM now() - inactive_since)::float8
               FROM edgesync.replication_slots ORDER BY 1",
            |r| {
                Ok(health::Slot {
                    name: r.get(1)?.unwrap_or_default(),
                    slot_type: r.get(2)?.unwrap_or_default(),
                    active: r.get(3)?.unwrap_or(false),
                    retained_wal_bytes: r.get(4)?,
                    wal_status: r.get(5)?,
                    inactive_seconds: r.get(6)?,
                })
            },
        );
        checks.extend(slots.iter().flat_map(|s| health::slot_checks(s, &t)));

        let subscriptions = read_rows(
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
        );
        checks.extend(subscriptions.iter().flat_map(|s| health::subscription_checks(s, &t)));

        let peers = read_rows(
            client,
            "SELECT peer, state, consecutive_failures::bigint, extract(epoch FROM now() - last_success)::float8, last_error,
                    pending_bytes::float8, lag_seconds, clock_skew_seconds::float8
               FROM edgesync.peers ORDER BY 1",
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
        );
        let max_skew = guc::MAX_CLOCK_SKEW_MS.get() as f64 / 1000.0;
        checks.extend(peers.iter().flat_map(|p| health::peer_checks(p, &t, max_skew)));

        let pending = read_rows(
            client,
            "SELECT quote_ident(schema_name) || '.' || quote_ident(table_name), pending,
                    extract(epoch FROM now() - oldest)::float8
               FROM edgesync.pending_conflict_counts() ORDER BY 1",
            |r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<i64>(2)?.unwrap_or(0), r.get::<f64>(3)?)),
        );
        checks.extend(pending.iter().map(|(rel, n, age)| health::pending_conflicts_check(rel, *n, *age)));

        if checks.is_empty() {
            let node: String = client
                .select("SELECT current_database()::text", None, &[])
                .and_then(|t| t.first().get_one())
                .ok()
                .flatten()
                .unwrap_or_default();
            checks.push(health::nothing_to_check(&node));
        }
        checks
    })
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

fn snapshot() -> NodeSnapshot {
    Spi::connect(|client| {
        let mut n = read_rows(
            client,
            "SELECT current_setting('server_version_num')::int,
                    current_setting('wal_level'),
                    current_setting('track_commit_timestamp')::bool,
                    current_setting('shared_preload_libraries'),
                    current_setting('max_replication_slots')::int,
                    (SELECT count(*) FROM pg_catalog.pg_replication_slots)::int,
                    current_setting('max_wal_senders')::int,
                    (SELECT count(*) FROM pg_catalog.pg_stat_replication)::int,
                    current_setting('max_logical_replication_workers')::int,
                    current_setting('max_worker_processes')::int,
                    (SELECT count(*) FROM pg_catalog.pg_subscription WHERE subenabled)::int,
                    (SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'max_slot_wal_keep_size'),
                    (SELECT setting::bigint * CASE unit WHEN 'min' THEN 60 WHEN 'ms' THEN 0.001 ELSE 1 END
                       FROM pg_catalog.pg_settings WHERE name = 'idle_replication_slot_timeout')::bigint,
                    (SELECT warning_bytes FROM edgesync.thresholds())",
            |r| {
                Ok(NodeSnapshot {
                    server_version_num: r.get(1)?.unwrap_or(0),
                    wal_level: r.get(2)?.unwrap_or_default(),
                    track_commit_timestamp: r.get(3)?.unwrap_or(false),
                    shared_preload_libraries: r.get(4)?.unwrap_or_default(),
                    max_replication_slots: r.get(5)?.unwrap_or(0),
                    replication_slots_used: r.get(6)?.unwrap_or(0),
                    max_wal_senders: r.get(7)?.unwrap_or(0),
                    wal_senders_used: r.get(8)?.unwrap_or(0),
                    max_logical_replication_workers: r.get(9)?.unwrap_or(0),
                    max_worker_processes: r.get(10)?.unwrap_or(0),
                    subscriptions_enabled: r.get(11)?.unwrap_or(0),
                    max_slot_wal_keep_size_mb: r.get(12)?.unwrap_or(-1),
                    idle_replication_slot_timeout_s: r.get(13)?,
                    inactive_slot_warning_bytes: r.get(14)?.unwrap_or(0),
                    slots: Vec::new(),
                    subscriptions: Vec::new(),
                })
            },
        )
        .pop()
        .unwrap_or_else(|| error!("edgesync: reading settings returned no row"));
        n.slots = read_rows(
            client,
            "SELECT slot_name::text, active, retained_wal_bytes FROM edgesync.replication_slots ORDER BY 1",
            |r| {
                Ok(SlotSnapshot {
                    name: r.get(1)?.unwrap_or_default(),
                    active: r.get(2)?.unwrap_or(false),
                    retained_wal_bytes: r.get(3)?,
                })
            },
        );
        n.subscriptions = read_rows(
            client,
            "SELECT name::text, enabled, worker_pid IS NOT NULL,
                    coalesce(apply_error_count, 0) + coalesce(sync_error_count, 0)
               FROM edgesync.subscriptions ORDER BY 1",
            |r| {
                Ok(SubscriptionSnapshot {
                    name: r.get(1)?.unwrap_or_default(),
                    enabled: r.get(2)?.unwrap_or(false),
                    worker_running: r.get(3)?.unwrap_or(false),
                    error_count: r.get::<i64>(4)?.unwrap_or(0),
                })
            },
        );
        n
    })
}

/// Check this node's replication settings and objects; one row per finding,
/// most severe first, each with the SQL that fixes it.
#[pg_extern(volatile)]
fn diagnose() -> TableIterator<
    'static,
    (name!(severity, String), name!(subject, String), name!(finding, String), name!(fix, String)),
> {
    let rows = diagnose::diagnose(&snapshot())
        .into_iter()
        .map(|f| (f.severity.as_str().to_string(), f.subject, f.finding, f.fix));
    TableIterator::new(rows.collect::<Vec<_>>())
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;
