-- edgesync 0.4.0 -> 0.5.0: speed. A forwarder reads its slot as a stream
-- (a replication connection to its own node) instead of peeking at it.
-- One section per concern; each says what it changes.

-- == edgesync's own streams are not downstreams ==
-- The walsenders that serve a forwarder's read of its peer's slot and the
-- feed worker's read of edgesync_feed show in pg_stat_replication; the
-- health views leave them out (else every on-demand round would look like
-- a downstream that came and went).
CREATE OR REPLACE VIEW edgesync.streaming_replication AS
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
