-- edgesync 0.2.0 -> 0.3.0: hardening (untrusted batches, values in
-- transit, last writer wins for deletes, clock bounds, blocked
-- transactions, roles and lifecycle, downstreams health).
-- One section per concern; each says what it changes.

-- == 1. untrusted batches ==
-- (nothing changes in SQL)

-- == 2. values in transit ==
-- (nothing yet)

-- == 3. last writer wins for deletes ==
-- (nothing yet)

-- == 4. the clock ==
-- (nothing yet)

-- == 5. blocked transactions ==
-- The forwarder finds the transaction a peer refuses and shows it:
-- edgesync.peers gains blocked_lsn, blocked_table, blocked_error and
-- blocked_since (at its end, so the view is replaced in place) from the
-- new _peer_blocked(); a DBA sets it aside with skip_transaction into the
-- new table skipped_transaction.
CREATE  FUNCTION "_peer_blocked"() RETURNS TABLE (
	"peer_id" INT,  /* i32 */
	"lsn" bigint,  /* i64 */
	"since" bigint,  /* i64 */
	"tables" TEXT,  /* String */
	"error" TEXT  /* String */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_peer_blocked_wrapper';

CREATE  FUNCTION "_request_round_at_commit"(
	"peer_id" INT /* i32 */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_request_round_at_commit_wrapper';

CREATE OR REPLACE VIEW edgesync.peers AS
WITH since_epoch(t0) AS (SELECT timestamptz '2000-01-01 00:00:00+00')
SELECT p.name AS peer,
       'push'::text AS direction,
       p.mode,
       CASE WHEN p.paused THEN 'paused' WHEN s.pid IS NULL THEN 'stopped' ELSE s.state END AS state,
       coalesce(s.connected, false) AS connected,
       CASE WHEN s.last_success > 0 THEN t0 + make_interval(secs => s.last_success / 1e6) END AS last_success,
       s.last_error,
       CASE WHEN s.last_error_at > 0 THEN t0 + make_interval(secs => s.last_error_at / 1e6) END AS last_error_at,
       coalesce(s.consecutive_failures, 0) AS consecutive_failures,
       CASE WHEN s.next_attempt > 0 THEN t0 + make_interval(secs => s.next_attempt / 1e6) END AS next_attempt,
       coalesce(s.pending_changes, 0) AS pending_changes,
       CASE WHEN NOT pg_is_in_recovery()
            THEN pg_wal_lsn_diff(pg_current_wal_flush_lsn(), sl.confirmed_flush_lsn)::bigint END AS pending_bytes,
       CASE WHEN s.oldest_pending > 0
            THEN greatest(extract(epoch FROM clock_timestamp() - (t0 + make_interval(secs => s.oldest_pending / 1e6))), 0)
            ELSE 0 END::double precision AS lag_seconds,
       coalesce(s.rows_sent, 0) AS rows_sent,
       coalesce(s.batches_sent, 0) AS batches_sent,
       coalesce(s.bytes_raw, 0) AS bytes_sent_raw,
       coalesce(s.bytes_compressed, 0) AS bytes_sent_compressed,
       s.clock_skew_ms / 1000.0 AS clock_skew_seconds,
       p.slot_name,
       sl.wal_status AS slot_wal_status,
       s.pid AS worker_pid,
       pg_lsn '0/0' + b.lsn AS blocked_lsn,
       b.tables AS blocked_table,
       regexp_replace(split_part(b.error, E'\n', 1), '^ERROR:\s+', '') AS blocked_error,
       CASE WHEN b.since > 0 THEN t0 + make_interval(secs => b.since / 1e6) END AS blocked_since
  FROM since_epoch, edgesync.peer p
  LEFT JOIN edgesync._peer_status() s ON s.peer_id = p.id
  LEFT JOIN edgesync._peer_blocked() b ON b.peer_id = p.id
  LEFT JOIN pg_replication_slots sl ON sl.slot_name = p.slot_name;
COMMENT ON VIEW edgesync.peers IS 'Each peer: forwarder state, last success and error, backlog, lag, volumes sent, clock skew, and the transaction the peer refuses (blocked_*)';

-- A transaction the peer refuses blocks the peer (edgesync.peers shows it
-- in blocked_*; its first line only: the error's DETAIL may quote row data).
-- A DBA retries it (fix the cause, then edgesync.sync_now) or sets it
-- aside. Set aside, it is kept here whole: the forwarder fills in its
-- changes as it steps past it. Holds row data: edgesync_admin only.
CREATE TABLE edgesync.skipped_transaction (
    peer        text        NOT NULL,
    lsn         pg_lsn      NOT NULL,
    commit_time timestamptz,
    tables      text        NOT NULL,
    error       text        NOT NULL,
    skipped_at  timestamptz NOT NULL DEFAULT now(),
    skipped_by  name        NOT NULL DEFAULT session_user,
    changes     jsonb,
    PRIMARY KEY (peer, lsn)
);
COMMENT ON TABLE edgesync.skipped_transaction IS
    'Transactions set aside by edgesync.skip_transaction: never sent to the peer, kept here whole';
COMMENT ON COLUMN edgesync.skipped_transaction.changes IS
    'One entry per change: table, operation (insert, update, delete, truncate), key and row (values as text); NULL until the forwarder steps past it';
SELECT pg_catalog.pg_extension_config_dump('edgesync.skipped_transaction', '');

-- Set aside the transaction that blocks a peer: only the one edgesync.peers
-- shows in blocked_lsn. The forwarder leaves it out from its next round on.
CREATE FUNCTION edgesync.skip_transaction(peer text, lsn pg_lsn) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target_id integer;
    blocked   record;
BEGIN
    SELECT p.id INTO target_id FROM edgesync.peer p WHERE p.name = skip_transaction.peer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'edgesync: no peer named %', coalesce(quote_literal(skip_transaction.peer), 'NULL') USING ERRCODE = 'undefined_object';
    END IF;
    IF skip_transaction.lsn IS NULL THEN
        RAISE EXCEPTION 'edgesync: lsn must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT b.lsn, b.tables, b.error INTO blocked FROM edgesync._peer_blocked() b WHERE b.peer_id = target_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'edgesync: peer % is not blocked by any transaction', skip_transaction.peer
          USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = 'Only the transaction edgesync.peers shows in blocked_lsn can be skipped.';
    END IF;
    IF pg_lsn '0/0' + blocked.lsn <> skip_transaction.lsn THEN
        RAISE EXCEPTION 'edgesync: peer % is blocked by the transaction at %, not at %',
                        skip_transaction.peer, pg_lsn '0/0' + blocked.lsn, skip_transaction.lsn
          USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM edgesync.skipped_transaction s WHERE s.peer = skip_transaction.peer AND s.lsn = skip_transaction.lsn) THEN
        RAISE EXCEPTION 'edgesync: the transaction at % is already skipped for peer %', skip_transaction.lsn, skip_transaction.peer
          USING ERRCODE = 'duplicate_object', HINT = 'The forwarder leaves it out from its next round on.';
    END IF;
    INSERT INTO edgesync.skipped_transaction (peer, lsn, tables, error)
    VALUES (skip_transaction.peer, skip_transaction.lsn, blocked.tables, blocked.error);
    PERFORM edgesync._request_round_at_commit(target_id);
END
$$;
COMMENT ON FUNCTION edgesync.skip_transaction(text, pg_lsn) IS
    'Set aside the transaction that blocks a peer (its blocked_lsn in edgesync.peers): never sent, kept in edgesync.skipped_transaction';

REVOKE ALL ON edgesync.skipped_transaction FROM PUBLIC;
GRANT SELECT ON edgesync.skipped_transaction TO edgesync_admin;
REVOKE EXECUTE ON FUNCTION edgesync.skip_transaction(text, pg_lsn), edgesync._peer_blocked(),
                           edgesync._request_round_at_commit(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync.skip_transaction(text, pg_lsn) TO edgesync_admin;
GRANT EXECUTE ON FUNCTION edgesync._peer_blocked() TO pg_monitor, edgesync_admin;

-- == 6. apply like PostgreSQL's own ==
-- (nothing yet)

-- == 7. roles and lifecycle ==
-- (nothing yet)

-- == 8. downstreams health ==
-- (nothing yet)
