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
-- A remote change stamped too far past the wall clock is held as a pending
-- 'clock_drift' conflict; health reads who is held through a counts-only
-- function. The clock's high-water mark moves from a file in the data
-- directory (not replicated, not WAL-logged) to a sequence, seeded here
-- from that file so that the clock never goes back across the update.
ALTER TABLE edgesync.conflict_log DROP CONSTRAINT conflict_log_conflict_type_check;
ALTER TABLE edgesync.conflict_log ADD CONSTRAINT conflict_log_conflict_type_check
    CHECK (conflict_type IN ('insert_exists', 'update_origin_differs', 'update_missing',
                             'update_deleted', 'delete_origin_differs', 'delete_missing',
                             'clock_drift'));

CREATE SEQUENCE edgesync.clock_reservation AS bigint MINVALUE 0 START 0 NO CYCLE;
COMMENT ON SEQUENCE edgesync.clock_reservation IS 'Row-version clock readings are handed out only below this (moved ahead by the clock; do not set it by hand)';
SELECT pg_catalog.pg_extension_config_dump('edgesync.clock_reservation', '');
SELECT pg_catalog.setval('edgesync.clock_reservation', saved)
  FROM (SELECT pg_catalog.btrim(pg_catalog.pg_read_file('edgesync.clock', true))::bigint AS saved) f
 WHERE saved > 0;

CREATE FUNCTION edgesync.clock_drift_held(OUT node_id integer, OUT held bigint, OUT latest_hlc bigint, OUT latest_ahead_seconds float8)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT DISTINCT ON (remote_version[2]) remote_version[2]::integer, count(*) OVER (PARTITION BY remote_version[2]),
           remote_version[1], ((remote_version[1] >> 16) / 1000.0 - extract(epoch FROM detected_at))::float8
      FROM edgesync.conflict_log
     WHERE status = 'pending' AND conflict_type = 'clock_drift'
     ORDER BY remote_version[2], id DESC
$$;
COMMENT ON FUNCTION edgesync.clock_drift_held() IS
    'Per node: how many of its changes are held because their versions were too far ahead, its latest such version and how far past the wall clock it was';
REVOKE EXECUTE ON FUNCTION edgesync.clock_drift_held() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync.clock_drift_held() TO pg_monitor, edgesync_admin;

-- == 5. blocked transactions ==
-- (nothing yet)

-- == 6. apply like PostgreSQL's own ==
-- (nothing yet)

-- == 7. roles and lifecycle ==
-- (nothing yet)

-- == 8. downstreams health ==
-- (nothing yet)
