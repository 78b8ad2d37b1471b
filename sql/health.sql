-- Sync-health views. Columns a server version lacks are read through
-- to_jsonb(row) ->> 'column' so that one definition serves PostgreSQL 15
-- and 18 (and keeps working after pg_upgrade): they are NULL where absent.

-- The WAL position lag is measured against: the insert position on a
-- primary, the last received position on a standby.
CREATE FUNCTION edgesync.current_wal_lsn() RETURNS pg_lsn
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN pg_is_in_recovery()
                THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
                ELSE pg_current_wal_lsn() END
$$;
COMMENT ON FUNCTION edgesync.current_wal_lsn() IS
    'WAL position lag is measured against: insert LSN on a primary, last received LSN on a standby';

-- One row per WAL sender: streaming standbys (kind physical) and the
-- walsenders of native logical subscriptions (kind logical).
CREATE VIEW edgesync.streaming_replication AS
SELECT r.application_name                                   AS name,
       r.pid,
       CASE WHEN s.slot_type = 'logical' THEN 'logical' ELSE 'physical' END AS kind,
       s.slot_name,
       r.client_addr,
       r.state,
       r.sync_state,
       r.sent_lsn,
       r.write_lsn,
       r.flush_lsn,
       r.replay_lsn,
       pg_wal_lsn_diff(cur.lsn, r.sent_lsn)::bigint         AS sent_lag_bytes,
       pg_wal_lsn_diff(cur.lsn, r.write_lsn)::bigint        AS write_lag_bytes,
       pg_wal_lsn_diff(cur.lsn, r.flush_lsn)::bigint        AS flush_lag_bytes,
       pg_wal_lsn_diff(cur.lsn, r.replay_lsn)::bigint       AS replay_lag_bytes,
       extract(epoch FROM r.write_lag)::float8              AS write_lag_seconds,
       extract(epoch FROM r.flush_lag)::float8              AS flush_lag_seconds,
       extract(epoch FROM r.replay_lag)::float8             AS replay_lag_seconds,
       r.reply_time
FROM pg_catalog.pg_stat_replication r
LEFT JOIN pg_catalog.pg_replication_slots s ON s.active_pid = r.pid
CROSS JOIN (SELECT edgesync.current_wal_lsn() AS lsn) cur
-- edgesync's own reads of its slots (a forwarder's, shown in edgesync.peers;
-- the feed worker's) are not downstreams
WHERE s.slot_name IS NULL OR s.slot_name NOT IN (SELECT p.slot_name FROM edgesync.peer p UNION ALL SELECT 'edgesync_feed');
COMMENT ON VIEW edgesync.streaming_replication IS
    'WAL senders of this node (standbys and logical subscribers; not edgesync''s own reads of its slots) with lag in bytes and seconds';

-- This node's WAL receiver: one row on a standby (status "stopped" when it
-- is not connected), none on a primary.
CREATE VIEW edgesync.wal_receiver AS
SELECT w.pid,
       coalesce(w.status, 'stopped')                         AS status,
       w.sender_host,
       w.sender_port,
       w.slot_name,
       coalesce(w.flushed_lsn, pg_last_wal_receive_lsn())    AS received_lsn,
       pg_last_wal_replay_lsn()                              AS replayed_lsn,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint AS replay_lag_bytes,
       w.last_msg_receipt_time,
       extract(epoch FROM now() - w.last_msg_receipt_time)::float8 AS seconds_since_last_message,
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
       END                                                   AS replay_delay_seconds,
       pg_is_wal_replay_paused()                             AS replay_paused
FROM (SELECT 1) AS one
LEFT JOIN pg_catalog.pg_stat_wal_receiver w ON true
WHERE pg_is_in_recovery();
COMMENT ON VIEW edgesync.wal_receiver IS
    'On a standby: the WAL receiver, what it received and replayed, and the replay delay';

CREATE VIEW edgesync.replication_slots AS
SELECT s.slot_name,
       s.slot_type,
       s.plugin,
       s.database,
       s.active,
       s.active_pid,
       pg_wal_lsn_diff(cur.lsn, s.restart_lsn)::bigint        AS retained_wal_bytes,
       pg_wal_lsn_diff(cur.lsn, s.confirmed_flush_lsn)::bigint AS pending_bytes,
       s.wal_status,
       s.safe_wal_size,
       (to_jsonb(s) ->> 'inactive_since')::timestamptz        AS inactive_since,
       to_jsonb(s) ->> 'invalidation_reason'                  AS invalidation_reason,
       coalesce(s.wal_status IN ('unreserved', 'lost'), false)
         OR (NOT s.active AND pg_wal_lsn_diff(cur.lsn, s.restart_lsn) >= t.critical_bytes)
         OR coalesce(s.safe_wal_size < t.warning_bytes, false) AS disk_at_risk
FROM pg_catalog.pg_replication_slots s
CROSS JOIN (SELECT edgesync.current_wal_lsn() AS lsn) cur
CROSS JOIN edgesync.thresholds() t;
COMMENT ON VIEW edgesync.replication_slots IS
    'Replication slots with the WAL each retains; disk_at_risk flags slots that may fill the disk';

-- Native subscriptions of this database. The connection string is never shown.
CREATE VIEW edgesync.subscriptions AS
SELECT sub.oid                                              AS subid,
       sub.subname                                          AS name,
       sub.subenabled                                       AS enabled,
       w.pid                                                AS worker_pid,
       w.received_lsn,
       w.latest_end_lsn,
       w.last_msg_receipt_time,
       extract(epoch FROM now() - w.last_msg_receipt_time)::float8 AS seconds_since_last_message,
       st.apply_error_count,
       st.sync_error_count,
       (to_jsonb(st) ->> 'confl_insert_exists')::bigint           AS confl_insert_exists,
       (to_jsonb(st) ->> 'confl_update_origin_differs')::bigint   AS confl_update_origin_differs,
       (to_jsonb(st) ->> 'confl_update_exists')::bigint           AS confl_update_exists,
       (to_jsonb(st) ->> 'confl_update_missing')::bigint          AS confl_update_missing,
       (to_jsonb(st) ->> 'confl_delete_origin_differs')::bigint   AS confl_delete_origin_differs,
       (to_jsonb(st) ->> 'confl_delete_missing')::bigint          AS confl_delete_missing,
       (to_jsonb(st) ->> 'confl_multiple_unique_conflicts')::bigint AS confl_multiple_unique_conflicts,
       st.stats_reset
FROM pg_catalog.pg_subscription sub
-- the leader apply worker only: table-sync workers have a relid, parallel
-- apply workers (16+) a leader_pid
LEFT JOIN pg_catalog.pg_stat_subscription w
       ON w.subid = sub.oid AND w.relid IS NULL AND (to_jsonb(w) ->> 'leader_pid') IS NULL
LEFT JOIN pg_catalog.pg_stat_subscription_stats st ON st.subid = sub.oid
WHERE sub.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database());
COMMENT ON VIEW edgesync.subscriptions IS
    'Native subscriptions: worker, last message, error counts and (PostgreSQL 18) conflict counters';

-- Every walsender client edgesync.health has seen (streaming standbys,
-- logical subscribers, pg_receivewal), so that one that disconnects, and
-- with it vanishes from pg_stat_replication, is still reported. Health
-- records into it as the extension's owner. Unlogged: recording never waits
-- for a synchronous standby (the very standby that may be missing) nor
-- writes WAL; the price is that a crash, an immediate shutdown or a
-- promotion empties it.
CREATE UNLOGGED TABLE edgesync.downstream (
    name        text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('physical', 'logical')),
    slot_name   text,
    client_addr inet,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL
);
COMMENT ON TABLE edgesync.downstream IS
    'Downstreams (by application_name) edgesync.health has seen connected, and when it last saw each; edgesync.forget_downstream() retires one';

-- A downstream retired on purpose: health stops reporting it missing.
CREATE FUNCTION edgesync.forget_downstream(name text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'edgesync: this node is a standby: it remembers no downstreams'
          USING ERRCODE = 'read_only_sql_transaction', HINT = 'Run edgesync.forget_downstream() on the primary.';
    END IF;
    DELETE FROM edgesync.downstream d WHERE d.name = forget_downstream.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'edgesync: no downstream named %', coalesce(quote_literal(forget_downstream.name), 'NULL')
          USING ERRCODE = 'undefined_object', HINT = 'The names are those of edgesync.downstream (application_name).';
    END IF;
END
$$;
COMMENT ON FUNCTION edgesync.forget_downstream(text) IS
    'Forget a downstream retired on purpose, so that edgesync.health stops reporting it missing (it is remembered again if it reconnects)';

REVOKE ALL ON edgesync.downstream FROM PUBLIC;
GRANT SELECT ON edgesync.downstream TO pg_monitor;
GRANT SELECT, DELETE ON edgesync.downstream TO edgesync_admin;
REVOKE EXECUTE ON FUNCTION edgesync.forget_downstream(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync.forget_downstream(text) TO edgesync_admin;

CREATE VIEW edgesync.health AS
SELECT * FROM edgesync.health_checks();
COMMENT ON VIEW edgesync.health IS
    'One row per check: ok, warning or critical, with the metric, its value and the threshold';

-- Monitoring data is for monitoring roles, not for everyone.
REVOKE ALL ON edgesync.streaming_replication, edgesync.wal_receiver, edgesync.replication_slots,
              edgesync.subscriptions, edgesync.health FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION edgesync.health_checks(), edgesync.diagnose() FROM PUBLIC;
GRANT SELECT ON edgesync.streaming_replication, edgesync.wal_receiver, edgesync.replication_slots,
                edgesync.subscriptions, edgesync.health TO pg_monitor;
GRANT EXECUTE ON FUNCTION edgesync.health_checks(), edgesync.diagnose() TO pg_monitor;

-- Conflict handling. The schema is usable by all: apply workers run as
-- table owners and call the trigger's helpers, which act with the caller's
-- rights. Row data (conflict_log) and settling are for edgesync_admin and,
-- per table, its owner (granted by set_conflict_policy).
GRANT USAGE ON SCHEMA edgesync TO PUBLIC;
REVOKE ALL ON edgesync.node, edgesync.conflict_table, edgesync.conflict_log, edgesync.tombstone,
              edgesync.conflicts, edgesync.conflict_stats FROM PUBLIC;
GRANT SELECT ON edgesync.node, edgesync.conflict_table, edgesync.conflict_log,
                edgesync.conflicts, edgesync.conflict_stats TO edgesync_admin;
REVOKE EXECUTE ON FUNCTION edgesync.resolve_conflict(bigint, text, jsonb),
                           edgesync.resolve_conflicts(regclass, text, interval),
                           edgesync._resolve_conflicts(oid, text, interval),
                           edgesync.set_conflict_policy(regclass, text, regproc),
                           edgesync.drop_conflict_policy(regclass, boolean),
                           edgesync.create_node(text, integer),
                           edgesync.purge_conflict_log(interval),
                           edgesync.purge_tombstones(),
                           edgesync.pending_conflict_counts(),
                           edgesync.conflict_trigger(),
                           edgesync._set_conflict_policy(regclass, text, regproc),
                           edgesync._drop_conflict_policy(regclass, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync.resolve_conflict(bigint, text, jsonb),
                          edgesync.resolve_conflicts(regclass, text, interval),
                          edgesync._resolve_conflicts(oid, text, interval) TO edgesync_admin WITH GRANT OPTION;
GRANT EXECUTE ON FUNCTION edgesync.set_conflict_policy(regclass, text, regproc),
                          edgesync.drop_conflict_policy(regclass, boolean),
                          edgesync.create_node(text, integer),
                          edgesync.purge_conflict_log(interval),
                          edgesync.purge_tombstones() TO edgesync_admin;
GRANT EXECUTE ON FUNCTION edgesync.pending_conflict_counts() TO pg_monitor, edgesync_admin;
-- a trigger function is checked when a trigger is created, not when it fires:
-- only set_conflict_policy's callers attach it
GRANT EXECUTE ON FUNCTION edgesync.conflict_trigger() TO edgesync_admin;
