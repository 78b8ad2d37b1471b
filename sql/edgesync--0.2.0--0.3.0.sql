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
-- The public functions that change what syncs or where become SECURITY
-- INVOKER: edgesync._api_step checks the calling role (not the session's
-- outer role) and runs the internal function as the extension's owner, so
-- a non-superuser member of edgesync_admin can use them.
CREATE FUNCTION edgesync."_api_step"(
	"step" TEXT, /* & str */
	"relation" oid, /* Option < pg_sys :: Oid > */
	"args" TEXT[] /* :: std :: option :: Option < Vec < Option < String > > > */
) RETURNS void
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_api_step_wrapper';

CREATE FUNCTION edgesync._set_conflict_policy(relation regclass, policy text, handler regproc) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    keys    text[];
    args    text;
    hproc   pg_proc;
BEGIN
    PERFORM edgesync._require_shared_clock();
    policy := edgesync._check_policy(policy);
    IF (SELECT relkind FROM pg_class WHERE oid = relation) <> 'r' THEN
        RAISE EXCEPTION 'edgesync: % is not a plain table', relation
          USING ERRCODE = 'wrong_object_type',
                HINT = 'Partitioned tables are not supported yet: enrol each partition.';
    END IF;
    IF EXISTS (SELECT FROM pg_constraint WHERE conrelid = relation AND contype = 'p' AND condeferrable) THEN
        RAISE EXCEPTION 'edgesync: the primary key of % is deferrable', relation
          USING ERRCODE = 'invalid_table_definition',
                HINT = 'Conflict handling looks rows up through the primary key, which must be checked immediately.';
    END IF;
    SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum)) INTO keys
      FROM pg_index i
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
     WHERE i.indrelid = relation AND i.indisprimary;
    IF keys IS NULL THEN
        RAISE EXCEPTION 'edgesync: table % has no primary key', relation
          USING ERRCODE = 'invalid_table_definition',
                HINT = 'Conflict handling finds rows by their primary key: add one (ALTER TABLE ... ADD PRIMARY KEY).';
    END IF;
    IF policy = 'custom' THEN
        IF handler IS NULL THEN
            RAISE EXCEPTION 'edgesync: policy custom needs a handler'
              USING ERRCODE = 'invalid_parameter_value',
                    HINT = 'Pass handler => ''schema.function''::regproc, a function (regclass, text, jsonb, jsonb) returning jsonb.';
        END IF;
        SELECT * INTO hproc FROM pg_proc WHERE oid = handler;
        IF hproc.pronargs <> 4 OR hproc.proargtypes[0] <> 'regclass'::regtype OR hproc.proargtypes[1] <> 'text'::regtype
           OR hproc.proargtypes[2] <> 'jsonb'::regtype OR hproc.proargtypes[3] <> 'jsonb'::regtype
           OR hproc.prorettype <> 'jsonb'::regtype THEN
            RAISE EXCEPTION 'edgesync: handler % must take (regclass, text, jsonb, jsonb) and return jsonb', handler
              USING ERRCODE = 'invalid_parameter_value';
        END IF;
    ELSIF handler IS NOT NULL THEN
        RAISE EXCEPTION 'edgesync: a handler is only used with policy custom, not %', policy
          USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT FROM edgesync.node) THEN
        PERFORM edgesync.create_node(NULL);
    END IF;

    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = relation AND attname = 'edgesync_version' AND NOT attisdropped) THEN
        -- Existing rows get the zero version: the same on every node, older than any write.
        EXECUTE format('ALTER TABLE %s ADD COLUMN edgesync_version bytea NOT NULL DEFAULT %L',
                       relation, '\x' || repeat('00', 24));
    ELSIF (SELECT atttypid FROM pg_attribute WHERE attrelid = relation AND attname = 'edgesync_version' AND NOT attisdropped) <> 'bytea'::regtype THEN
        RAISE EXCEPTION 'edgesync: %.edgesync_version exists and is not bytea', relation USING ERRCODE = 'duplicate_column';
    END IF;

    SELECT string_agg(quote_literal(a), ', ') INTO args
      FROM unnest(ARRAY[policy, coalesce(handler::regprocedure::text, '')] || keys) AS a;
    EXECUTE format('DROP TRIGGER IF EXISTS edgesync_conflict ON %s', relation);
    EXECUTE format('CREATE TRIGGER edgesync_conflict BEFORE INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION edgesync.conflict_trigger(%s)', relation, args);
    -- fire in apply workers too (session_replication_role = replica)
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER edgesync_conflict', relation);

    -- the table's owner may settle the table's conflicts
    EXECUTE format('GRANT EXECUTE ON FUNCTION edgesync.resolve_conflict(bigint, text, jsonb), '
                   'edgesync.resolve_conflicts(regclass, text, interval), '
                   'edgesync._resolve_conflicts(oid, text, interval) TO %I',
                   (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = relation));

    INSERT INTO edgesync.conflict_table AS c (relid, policy, handler, key_columns)
    VALUES (relation, policy, handler, keys)
    ON CONFLICT (relid) DO UPDATE SET policy = EXCLUDED.policy, handler = EXCLUDED.handler,
                                      key_columns = EXCLUDED.key_columns;
END
$$;

CREATE FUNCTION edgesync._drop_conflict_policy(relation regclass, drop_column boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM edgesync.conflict_table WHERE relid = relation) THEN
        RAISE EXCEPTION 'edgesync: table % has no conflict policy', relation USING ERRCODE = 'undefined_object';
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS edgesync_conflict ON %s', relation);
    IF drop_column THEN
        EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS edgesync_version', relation);
    END IF;
    DELETE FROM edgesync.tombstone WHERE relid = relation;
    DELETE FROM edgesync.conflict_table WHERE relid = relation;
END
$$;

CREATE FUNCTION edgesync._add_table(relation regclass, sync text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    published boolean;
BEGIN
    PERFORM edgesync._check_choice('sync', sync, ARRAY['up', 'down', 'both']);
    IF (SELECT relkind FROM pg_class WHERE oid = relation) <> 'r' THEN
        RAISE EXCEPTION 'edgesync: % is not a plain table', relation
          USING ERRCODE = 'wrong_object_type', HINT = 'Partitioned tables are not supported yet: enrol each partition.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_index WHERE indrelid = relation AND indisprimary) THEN
        RAISE EXCEPTION 'edgesync: table % has no primary key', relation
          USING ERRCODE = 'invalid_table_definition',
                HINT = 'Changes find their rows by primary key: add one (ALTER TABLE ... ADD PRIMARY KEY).';
    END IF;
    -- a table written on both sides can conflict: last writer wins unless a policy is set
    IF sync = 'both' AND NOT EXISTS (SELECT FROM edgesync.conflict_table WHERE relid = relation) THEN
        PERFORM edgesync.set_conflict_policy(relation, 'last_writer_wins');
    END IF;
    published := EXISTS (SELECT FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                          WHERE p.pubname = 'edgesync_up' AND pr.prrelid = relation);
    IF sync IN ('up', 'both') AND NOT published THEN
        EXECUTE format('ALTER PUBLICATION edgesync_up ADD TABLE %s', relation);
    ELSIF sync = 'down' AND published THEN
        EXECUTE format('ALTER PUBLICATION edgesync_up DROP TABLE %s', relation);
    END IF;
    INSERT INTO edgesync.sync_table AS s (relid, direction) VALUES (relation, sync)
    ON CONFLICT (relid) DO UPDATE SET direction = EXCLUDED.direction;
END
$$;

CREATE FUNCTION edgesync._remove_table(relation regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM edgesync.sync_table WHERE relid = relation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'edgesync: table % is not enrolled in sync', relation USING ERRCODE = 'undefined_object';
    END IF;
    IF EXISTS (SELECT FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                WHERE p.pubname = 'edgesync_up' AND pr.prrelid = relation) THEN
        EXECUTE format('ALTER PUBLICATION edgesync_up DROP TABLE %s', relation);
    END IF;
END
$$;

CREATE FUNCTION edgesync._add_peer(name text, conninfo text, mode text, batch_interval interval,
                                   max_batch_rows integer, max_batch_bytes bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    slot name;
BEGIN
    IF name IS NULL OR NOT edgesync._is_node_name(name) THEN
        RAISE EXCEPTION 'edgesync: peer name % must be 1 to 48 letters, digits or underscores', coalesce(quote_literal(name), 'NULL')
          USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM edgesync._check_peer_settings(conninfo, mode, batch_interval, max_batch_rows, max_batch_bytes);
    IF NOT EXISTS (SELECT FROM edgesync.node) THEN
        RAISE EXCEPTION 'edgesync: this database is not a node yet'
          USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = 'Name it first: SELECT edgesync.create_node(''store_042''); peers know it by that name.';
    END IF;
    IF EXISTS (SELECT FROM edgesync.peer p WHERE lower(p.name) = lower(_add_peer.name)) THEN
        RAISE EXCEPTION 'edgesync: peer % already exists', _add_peer.name USING ERRCODE = 'duplicate_object';
    END IF;
    IF current_setting('wal_level') <> 'logical' THEN
        RAISE EXCEPTION 'edgesync: wal_level is %, peers need logical', current_setting('wal_level')
          USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = 'ALTER SYSTEM SET wal_level = logical; then restart the server.';
    END IF;
    slot := edgesync._slot_name(_add_peer.name);
    IF NOT EXISTS (SELECT FROM pg_replication_slots s WHERE s.slot_name = slot) THEN
        PERFORM pg_create_logical_replication_slot(slot, 'pgoutput');
    END IF;
    INSERT INTO edgesync.peer (name, conninfo, mode, batch_interval, max_batch_rows, max_batch_bytes, slot_name)
    VALUES (_add_peer.name, _add_peer.conninfo, _add_peer.mode, _add_peer.batch_interval,
            _add_peer.max_batch_rows, _add_peer.max_batch_bytes, slot);
    PERFORM edgesync._wake_launcher_at_commit();
    IF current_setting('edgesync.database', true) IS DISTINCT FROM current_database() THEN
        RAISE WARNING 'edgesync: forwarders run in database %, not in %: this peer will not be served',
                      coalesce(current_setting('edgesync.database', true), '(edgesync not preloaded)'), current_database()
          USING HINT = format('ALTER SYSTEM SET edgesync.database = %L; then restart the server.', current_database());
    END IF;
END
$$;

CREATE FUNCTION edgesync._alter_peer(name text, conninfo text, mode text, batch_interval interval,
                                     max_batch_rows integer, max_batch_bytes bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p edgesync.peer;
BEGIN
    SELECT * INTO p FROM edgesync.peer WHERE peer.name = _alter_peer.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'edgesync: no peer named %', coalesce(quote_literal(_alter_peer.name), 'NULL') USING ERRCODE = 'undefined_object';
    END IF;
    p.conninfo := coalesce(_alter_peer.conninfo, p.conninfo);
    p.mode := coalesce(_alter_peer.mode, p.mode);
    p.batch_interval := coalesce(_alter_peer.batch_interval, p.batch_interval);
    p.max_batch_rows := coalesce(_alter_peer.max_batch_rows, p.max_batch_rows);
    p.max_batch_bytes := coalesce(_alter_peer.max_batch_bytes, p.max_batch_bytes);
    PERFORM edgesync._check_peer_settings(p.conninfo, p.mode, p.batch_interval, p.max_batch_rows, p.max_batch_bytes);
    UPDATE edgesync.peer SET conninfo = p.conninfo, mode = p.mode, batch_interval = p.batch_interval,
                             max_batch_rows = p.max_batch_rows, max_batch_bytes = p.max_batch_bytes
     WHERE id = p.id;
    PERFORM edgesync._wake_launcher_at_commit();
END
$$;

CREATE OR REPLACE FUNCTION edgesync.set_conflict_policy(relation regclass, policy text DEFAULT 'last_writer_wins',
                                             handler regproc DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM edgesync._api_step('set_conflict_policy', relation, ARRAY[policy, handler::oid::text]);
END
$$;

CREATE OR REPLACE FUNCTION edgesync.drop_conflict_policy(relation regclass, drop_column boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM edgesync._api_step('drop_conflict_policy', relation, ARRAY[drop_column::text]);
END
$$;

CREATE OR REPLACE FUNCTION edgesync.add_table(relation regclass, sync text) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT edgesync._api_step('add_table', relation, ARRAY[sync]) $$;

CREATE OR REPLACE FUNCTION edgesync.remove_table(relation regclass) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT edgesync._api_step('remove_table', relation, ARRAY[]::text[]) $$;

CREATE OR REPLACE FUNCTION edgesync.add_peer(name text, conninfo text, mode text DEFAULT 'realtime',
                                  batch_interval interval DEFAULT '1 minute',
                                  max_batch_rows integer DEFAULT 10000,
                                  max_batch_bytes bigint DEFAULT 16777216) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT edgesync._api_step('add_peer', NULL,
                              ARRAY[name, conninfo, mode, batch_interval::text, max_batch_rows::text, max_batch_bytes::text])
$$;

CREATE OR REPLACE FUNCTION edgesync.alter_peer(name text, conninfo text DEFAULT NULL, mode text DEFAULT NULL,
                                    batch_interval interval DEFAULT NULL, max_batch_rows integer DEFAULT NULL,
                                    max_batch_bytes bigint DEFAULT NULL) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT edgesync._api_step('alter_peer', NULL,
                              ARRAY[name, conninfo, mode, batch_interval::text, max_batch_rows::text, max_batch_bytes::text])
$$;

ALTER FUNCTION edgesync.purge_conflict_log(interval) SECURITY DEFINER;

REVOKE EXECUTE ON FUNCTION edgesync._api_step(text, oid, text[]),
                           edgesync._set_conflict_policy(regclass, text, regproc),
                           edgesync._drop_conflict_policy(regclass, boolean),
                           edgesync._add_table(regclass, text), edgesync._remove_table(regclass),
                           edgesync._add_peer(text, text, text, interval, integer, bigint),
                           edgesync._alter_peer(text, text, text, interval, integer, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync._api_step(text, oid, text[]) TO edgesync_admin;

-- DROP EXTENSION refuses while peers hold slots and drops edgesync_up;
-- a dropped table's bookkeeping goes with it (sql/lifecycle.sql).
-- A peer's replication slot is not a database object: it would outlive the
-- extension and hold WAL. Refuse to drop the extension while peers exist
-- (the function reads the statement's parse tree: src/lifecycle.rs).
CREATE FUNCTION edgesync._guard_drop_extension() RETURNS event_trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'edgesync_guard_drop_extension';
COMMENT ON FUNCTION edgesync._guard_drop_extension() IS
    'Event trigger: refuses DROP EXTENSION edgesync while peers hold replication slots';
CREATE EVENT TRIGGER edgesync_guard_drop_extension ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION')
    EXECUTE FUNCTION edgesync._guard_drop_extension();

-- A dropped table's enrolment, conflict policy and tombstones go with it
-- (its conflict_log rows stay: they are history). Otherwise a new table
-- that gets the same oid would inherit them.
CREATE FUNCTION edgesync._forget_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    gone oid[];
BEGIN
    SELECT array_agg(objid) INTO gone
      FROM pg_event_trigger_dropped_objects()
     WHERE classid = 'pg_class'::regclass AND objsubid = 0 AND object_type = 'table';
    -- edgesync's own tables are among the dropped when the extension goes
    IF gone IS NULL OR to_regclass('edgesync.sync_table') IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM edgesync.sync_table WHERE relid::oid = ANY (gone);
    DELETE FROM edgesync.conflict_table WHERE relid::oid = ANY (gone);
    DELETE FROM edgesync.tombstone WHERE relid = ANY (gone);
END
$$;
COMMENT ON FUNCTION edgesync._forget_dropped_tables() IS
    'Event trigger: forgets the enrolment, conflict policy and tombstones of dropped tables';
CREATE EVENT TRIGGER edgesync_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION edgesync._forget_dropped_tables();

REVOKE EXECUTE ON FUNCTION edgesync._guard_drop_extension(), edgesync._forget_dropped_tables() FROM PUBLIC;

-- Nodes that push here are registered with their login (register_edge,
-- drop_edge, reset_edge); hello and apply_batch serve a login only as its
-- node, and hello learns which database the node is (a rebuilt one is
-- refused until reset_edge). After this update, register each edge that
-- pushes here.
CREATE TABLE edgesync.edge (
    name              text        PRIMARY KEY CHECK (edgesync._is_node_name(name)),
    login             name        NOT NULL,
    registered_at     timestamptz NOT NULL DEFAULT now(),
    -- the database it is (pg_control_system()), recorded at first contact:
    -- an edge rebuilt under the same name starts its LSNs over
    system_identifier bigint,
    first_contact_at  timestamptz
);
COMMENT ON TABLE edgesync.edge IS 'Nodes that may push here (edgesync.register_edge), each with the login it must connect as';

CREATE FUNCTION edgesync."_require_edge_login"(
	"sender" TEXT /* & str */
) RETURNS void
STABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_require_edge_login_wrapper';
CREATE FUNCTION edgesync.register_edge(name text, login name) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF name IS NULL OR NOT edgesync._is_node_name(name) THEN
        RAISE EXCEPTION 'edgesync: node name % must be 1 to 48 letters, digits or underscores', coalesce(quote_literal(name), 'NULL')
          USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles r WHERE r.rolname = register_edge.login AND r.rolcanlogin) THEN
        RAISE EXCEPTION 'edgesync: % is not a role that can log in', coalesce(quote_ident(register_edge.login), 'NULL')
          USING ERRCODE = 'undefined_object',
                HINT = 'CREATE ROLE ... LOGIN; GRANT edgesync_peer TO ...; then register the node with it.';
    END IF;
    INSERT INTO edgesync.edge AS e (name, login) VALUES (register_edge.name, register_edge.login)
    ON CONFLICT ON CONSTRAINT edge_pkey DO UPDATE SET login = EXCLUDED.login, registered_at = now();
END
$$;
COMMENT ON FUNCTION edgesync.register_edge(text, name) IS
    'Let the node name push here, as the given login only (run again to move it to another login)';
CREATE FUNCTION edgesync.drop_edge(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM edgesync.edge e WHERE e.name = drop_edge.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'edgesync: no edge named % is registered', coalesce(quote_literal(drop_edge.name), 'NULL')
          USING ERRCODE = 'undefined_object';
    END IF;
    IF EXISTS (SELECT FROM pg_replication_origin WHERE roname = edgesync._origin_name(drop_edge.name)) THEN
        PERFORM pg_replication_origin_drop(edgesync._origin_name(drop_edge.name));
    END IF;
END
$$;
COMMENT ON FUNCTION edgesync.drop_edge(text) IS
    'Forget a node that pushed here: its registration and its replication origin';
CREATE FUNCTION edgesync.reset_edge(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE edgesync.edge e SET system_identifier = NULL, first_contact_at = NULL WHERE e.name = reset_edge.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'edgesync: no edge named % is registered', coalesce(quote_literal(reset_edge.name), 'NULL')
          USING ERRCODE = 'undefined_object';
    END IF;
    IF EXISTS (SELECT FROM pg_replication_origin WHERE roname = edgesync._origin_name(reset_edge.name)) THEN
        PERFORM pg_replication_origin_drop(edgesync._origin_name(reset_edge.name));
    END IF;
END
$$;
COMMENT ON FUNCTION edgesync.reset_edge(text) IS
    'Take back a node rebuilt under the same name: forget its old database and its progress (its login stays)';
CREATE FUNCTION edgesync._check_edge_identity(sender text, system_identifier bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    known edgesync.edge;
BEGIN
    UPDATE edgesync.edge e SET system_identifier = _check_edge_identity.system_identifier, first_contact_at = now()
     WHERE e.name = sender AND e.system_identifier IS NULL;
    SELECT * INTO known FROM edgesync.edge e WHERE e.name = sender;
    IF known.system_identifier <> _check_edge_identity.system_identifier THEN
        RAISE EXCEPTION 'edgesync: node % is another database than the one registered under its name (system identifier %, not %)',
                        sender, known.system_identifier, _check_edge_identity.system_identifier
          USING ERRCODE = 'insufficient_privilege',
                DETAIL = format('The registered one was first seen at %s.', known.first_contact_at),
                HINT = format('If the edge was rebuilt on purpose, take it back on this node: SELECT edgesync.reset_edge(%L);', sender);
    END IF;
END
$$;
-- hello takes the sender's system identifier (an edge of 0.2.0 calls it
-- without one and is not checked)
DROP FUNCTION edgesync.hello(text);
CREATE FUNCTION edgesync.hello(sender text, system_identifier bigint DEFAULT NULL,
                               OUT confirmed_lsn pg_lsn, OUT clock_ms bigint, OUT batch_format integer)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF sender IS NULL OR NOT edgesync._is_node_name(sender) THEN
        RAISE EXCEPTION 'edgesync: sender % is not a node name', coalesce(quote_literal(sender), 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- only the node's own login learns its progress
    PERFORM edgesync._require_edge_login(sender);
    IF hello.system_identifier IS NOT NULL THEN
        PERFORM edgesync._check_edge_identity(sender, hello.system_identifier);
    END IF;
    IF EXISTS (SELECT FROM pg_replication_origin WHERE roname = edgesync._origin_name(sender)) THEN
        confirmed_lsn := pg_replication_origin_progress(edgesync._origin_name(sender), true);
    END IF;
    clock_ms := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    batch_format := edgesync._batch_format();
END
$$;
COMMENT ON FUNCTION edgesync.hello(text, bigint) IS
    'For pushing peers: how far this node applied the sender''s changes, its clock and batch format; the sender says which database it is';
REVOKE ALL ON edgesync.edge FROM PUBLIC;
GRANT SELECT ON edgesync.edge TO pg_monitor, edgesync_admin;
REVOKE EXECUTE ON FUNCTION edgesync.register_edge(text, name), edgesync.drop_edge(text), edgesync._require_edge_login(text),
                           edgesync.reset_edge(text), edgesync._check_edge_identity(text, bigint),
                           edgesync.hello(text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync.register_edge(text, name), edgesync.drop_edge(text), edgesync.reset_edge(text) TO edgesync_admin;
GRANT EXECUTE ON FUNCTION edgesync.hello(text, bigint) TO edgesync_peer;

-- == 8. downstreams health ==
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
