//! `edgesync.diagnose()`: take a snapshot of this node's replication settings,
//! slots and subscriptions, and let `model::health::diagnose` find what to fix.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;

use super::read_rows;
use crate::error::raise;
use crate::model::health::diagnose::{self as model, FeedSnapshot, NodeSnapshot, SlotSnapshot, SubscriptionSnapshot};

/// Check this node's replication settings and objects; one row per finding,
/// most severe first, each with the SQL that fixes it.
#[pg_extern(volatile)]
fn diagnose() -> TableIterator<
    'static,
    (name!(severity, String), name!(subject, String), name!(finding, String), name!(fix, String)),
> {
    let rows = model::diagnose(&snapshot())
        .into_iter()
        .map(|f| (f.severity.as_str().to_string(), f.subject, f.finding, f.fix));
    TableIterator::new(rows.collect::<Vec<_>>())
}

fn snapshot() -> NodeSnapshot {
    Spi::connect(|client| {
        let settings = read_settings(client);
        let slots = read_slots(client);
        let subscriptions = read_subscriptions(client);
        let feed = read_feed(client);
        NodeSnapshot { slots, subscriptions, feed, ..settings }
    })
}

/// The settings and usage counts, in one row; slots, subscriptions and
/// the feed are left empty for their own reads.
fn read_settings(client: &SpiClient<'_>) -> NodeSnapshot {
    read_rows(
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
                feed: FeedSnapshot::default(),
            })
        },
    )
    .pop()
    .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "edgesync: reading settings returned no row"))
}

/// The cloud's feed: edges registered, its worker and its slot (the
/// worker runs in the database `edgesync.database` names, so this one's).
fn read_feed(client: &SpiClient<'_>) -> FeedSnapshot {
    read_rows(
        client,
        "SELECT pg_is_in_recovery(),
                (SELECT count(*) FROM edgesync.edge),
                EXISTS (SELECT FROM pg_catalog.pg_stat_activity WHERE backend_type = 'edgesync feed' AND datname = current_database()),
                EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name = 'edgesync_feed' AND database = current_database()),
                current_setting('edgesync.database', true),
                current_database()::text",
        |r| {
            Ok(FeedSnapshot {
                in_recovery: r.get(1)?.unwrap_or(false),
                edges_registered: r.get(2)?.unwrap_or(0),
                worker_running: r.get(3)?.unwrap_or(false),
                slot_here: r.get(4)?.unwrap_or(false),
                edgesync_database: r.get(5)?,
                current_database: r.get(6)?.unwrap_or_default(),
            })
        },
    )
    .pop()
    .unwrap_or_default()
}

fn read_slots(client: &SpiClient<'_>) -> Vec<SlotSnapshot> {
    read_rows(
        client,
        "SELECT slot_name::text, active, retained_wal_bytes FROM edgesync.replication_slots ORDER BY 1",
        |r| {
            Ok(SlotSnapshot {
                name: r.get(1)?.unwrap_or_default(),
                active: r.get(2)?.unwrap_or(false),
                retained_wal_bytes: r.get(3)?,
            })
        },
    )
}

fn read_subscriptions(client: &SpiClient<'_>) -> Vec<SubscriptionSnapshot> {
    read_rows(
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
    )
}
