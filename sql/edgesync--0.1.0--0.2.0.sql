-- edgesync 0.1.0 -> 0.2.0: the forwarder, push side.
-- Adds the Rust functions behind it, the edgesync_peer role, sync_table,
-- peer, the edgesync_up publication, add_table/add_peer and friends,
-- hello/apply_batch and the peers view (as sql/forwarder.sql), and the
-- node-name rule they share with the Rust code. Nothing of
-- 0.1.0 changes. The launcher starts after the next server restart (it
-- needs shared_preload_libraries and edgesync.database).

CREATE  FUNCTION "_apply_batch"(
	"batch" bytea /* & [u8] */
) RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_apply_batch_wrapper';

CREATE  FUNCTION "_batch_format"() RETURNS INT /* i32 */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_batch_format_wrapper';

CREATE  FUNCTION "_is_node_name"(
	"name" TEXT /* &str */
) RETURNS bool /* bool */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'is_node_name_wrapper';

CREATE  FUNCTION "_slot_name"(
	"peer" TEXT /* &str */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'slot_name_wrapper';

CREATE  FUNCTION "_origin_name"(
	"node" TEXT /* &str */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'origin_name_wrapper';

CREATE  FUNCTION "_conninfo_error"(
	"conninfo" TEXT /* & str */
) RETURNS TEXT /* Option < String > */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_conninfo_error_wrapper';

CREATE  FUNCTION "_peer_status"() RETURNS TABLE (
	"peer_id" INT,  /* i32 */
	"pid" INT,  /* i32 */
	"state" TEXT,  /* String */
	"connected" bool,  /* bool */
	"last_success" bigint,  /* i64 */
	"last_error" TEXT,  /* Option < String > */
	"last_error_at" bigint,  /* i64 */
	"consecutive_failures" INT,  /* i32 */
	"next_attempt" bigint,  /* i64 */
	"pending_changes" bigint,  /* i64 */
	"oldest_pending" bigint,  /* i64 */
	"rows_sent" bigint,  /* i64 */
	"batches_sent" bigint,  /* i64 */
	"bytes_raw" bigint,  /* i64 */
	"bytes_compressed" bigint,  /* i64 */
	"clock_skew_ms" bigint  /* Option < i64 > */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_peer_status_wrapper';


CREATE  FUNCTION "_require_superuser_for_conninfo"() RETURNS void
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_require_superuser_for_conninfo_wrapper';

CREATE  FUNCTION "_require_table_owner"(
	"relation" oid /* pg_sys :: Oid */
) RETURNS void
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_require_table_owner_wrapper';

CREATE  FUNCTION "_wake_launcher_at_commit"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_wake_launcher_at_commit_wrapper';

CREATE  FUNCTION "sync_now"(
	"peer" TEXT, /* & str */
	"timeout" interval DEFAULT '5 min' /* pgrx :: datum :: Interval */
) RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'sync_now_wrapper';



DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'edgesync_peer') THEN
        CREATE ROLE edgesync_peer NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE edgesync_peer IS 'May push changes into this node (edgesync.apply_batch): grant it to the role edges log in as';

CREATE TABLE edgesync.sync_table (
    relid       regclass    PRIMARY KEY,
    direction   text        NOT NULL CHECK (direction IN ('up', 'down', 'both')),
    enrolled_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE edgesync.sync_table IS 'Tables enrolled in sync (edgesync.add_table) and their direction';
SELECT pg_catalog.pg_extension_config_dump('edgesync.sync_table', '');

-- A node's name follows the one rule the Rust code applies (model::node),
-- here through the function that exposes it.
ALTER TABLE edgesync.node DROP CONSTRAINT node_name_check,
    ADD CONSTRAINT node_name_check CHECK (edgesync._is_node_name(name));

CREATE TABLE edgesync.peer (
    id              integer     GENERATED ALWAYS AS IDENTITY UNIQUE,
    name            text        PRIMARY KEY CHECK (edgesync._is_node_name(name)),
    conninfo        text        NOT NULL,
    mode            text        NOT NULL CHECK (mode IN ('realtime', 'batch', 'on_demand')),
    batch_interval  interval    NOT NULL CHECK (batch_interval > interval '0'),
    max_batch_rows  integer     NOT NULL CHECK (max_batch_rows > 0),
    max_batch_bytes bigint      NOT NULL CHECK (max_batch_bytes >= 1024),
    paused          boolean     NOT NULL DEFAULT false,
    slot_name       name        NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE edgesync.peer IS 'Peers this node pushes to (edgesync.add_peer); see edgesync.peers for their state';

CREATE PUBLICATION edgesync_up WITH (publish = 'insert, update, delete');

CREATE FUNCTION edgesync._check_choice(what text, value text, allowed text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF value IS NULL OR NOT (value = ANY (allowed)) THEN
        RAISE EXCEPTION 'edgesync: % must be one of %, not %', what, array_to_string(allowed, ', '), coalesce(quote_literal(value), 'NULL')
          USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN value;
END
$$;

CREATE FUNCTION edgesync.add_table(relation regclass, sync text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    published boolean;
BEGIN
    PERFORM edgesync._require_table_owner(relation);
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
COMMENT ON FUNCTION edgesync.add_table(regclass, text) IS
    'Enrol a table in sync: up (edge to cloud), down (cloud to edges) or both (adds last_writer_wins conflict handling unless a policy is set); run the same call on every node';

CREATE FUNCTION edgesync.remove_table(relation regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM edgesync._require_table_owner(relation);
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
COMMENT ON FUNCTION edgesync.remove_table(regclass) IS 'Stop syncing a table (a conflict policy stays until drop_conflict_policy)';

CREATE FUNCTION edgesync._check_peer_settings(conninfo text, mode text, batch_interval interval,
                                              max_batch_rows integer, max_batch_bytes bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text;
BEGIN
    problem := edgesync._conninfo_error(conninfo);
    IF conninfo IS NULL OR problem IS NOT NULL THEN
        RAISE EXCEPTION 'edgesync: invalid conninfo: %', coalesce(problem, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM edgesync._check_choice('mode', mode, ARRAY['realtime', 'batch', 'on_demand']);
    IF batch_interval IS NULL OR batch_interval <= interval '0' THEN
        RAISE EXCEPTION 'edgesync: batch_interval must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_batch_rows IS NULL OR max_batch_rows < 1 OR max_batch_rows > 1000000 THEN
        RAISE EXCEPTION 'edgesync: max_batch_rows must be between 1 and 1000000' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_batch_bytes IS NULL OR max_batch_bytes < 1024 THEN
        RAISE EXCEPTION 'edgesync: max_batch_bytes must be at least 1024' USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE FUNCTION edgesync.add_peer(name text, conninfo text, mode text DEFAULT 'realtime',
                                  batch_interval interval DEFAULT '1 minute',
                                  max_batch_rows integer DEFAULT 10000,
                                  max_batch_bytes bigint DEFAULT 16777216) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
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
    PERFORM edgesync._require_superuser_for_conninfo();
    IF NOT EXISTS (SELECT FROM edgesync.node) THEN
        RAISE EXCEPTION 'edgesync: this database is not a node yet'
          USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = 'Name it first: SELECT edgesync.create_node(''store_042''); peers know it by that name.';
    END IF;
    IF EXISTS (SELECT FROM edgesync.peer p WHERE lower(p.name) = lower(add_peer.name)) THEN
        RAISE EXCEPTION 'edgesync: peer % already exists', add_peer.name USING ERRCODE = 'duplicate_object';
    END IF;
    IF current_setting('wal_level') <> 'logical' THEN
        RAISE EXCEPTION 'edgesync: wal_level is %, peers need logical', current_setting('wal_level')
          USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = 'ALTER SYSTEM SET wal_level = logical; then restart the server.';
    END IF;
    slot := edgesync._slot_name(add_peer.name);
    IF NOT EXISTS (SELECT FROM pg_replication_slots s WHERE s.slot_name = slot) THEN
        PERFORM pg_create_logical_replication_slot(slot, 'pgoutput');
    END IF;
    INSERT INTO edgesync.peer (name, conninfo, mode, batch_interval, max_batch_rows, max_batch_bytes, slot_name)
    VALUES (add_peer.name, add_peer.conninfo, add_peer.mode, add_peer.batch_interval,
            add_peer.max_batch_rows, add_peer.max_batch_bytes, slot);
    PERFORM edgesync._wake_launcher_at_commit();
    IF current_setting('edgesync.database', true) IS DISTINCT FROM current_database() THEN
        RAISE WARNING 'edgesync: forwarders run in database %, not in %: this peer will not be served',
                      coalesce(current_setting('edgesync.database', true), '(edgesync not preloaded)'), current_database()
          USING HINT = format('ALTER SYSTEM SET edgesync.database = %L; then restart the server.', current_database());
    END IF;
END
$$;
COMMENT ON FUNCTION edgesync.add_peer(text, text, text, interval, integer, bigint) IS
    'Add a peer to push changes to (conninfo: a libpq connection string; mode realtime, batch or on_demand); creates its replication slot';

CREATE FUNCTION edgesync.alter_peer(name text, conninfo text DEFAULT NULL, mode text DEFAULT NULL,
                                    batch_interval interval DEFAULT NULL, max_batch_rows integer DEFAULT NULL,
                                    max_batch_bytes bigint DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p edgesync.peer;
BEGIN
    SELECT * INTO p FROM edgesync.peer WHERE peer.name = alter_peer.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'edgesync: no peer named %', coalesce(quote_literal(alter_peer.name), 'NULL') USING ERRCODE = 'undefined_object';
    END IF;
    IF alter_peer.conninfo IS NOT NULL THEN
        PERFORM edgesync._require_superuser_for_conninfo();
    END IF;
    p.conninfo := coalesce(alter_peer.conninfo, p.conninfo);
    p.mode := coalesce(alter_peer.mode, p.mode);
    p.batch_interval := coalesce(alter_peer.batch_interval, p.batch_interval);
    p.max_batch_rows := coalesce(alter_peer.max_batch_rows, p.max_batch_rows);
    p.max_batch_bytes := coalesce(alter_peer.max_batch_bytes, p.max_batch_bytes);
    PERFORM edgesync._check_peer_settings(p.conninfo, p.mode, p.batch_interval, p.max_batch_rows, p.max_batch_bytes);
    UPDATE edgesync.peer SET conninfo = p.conninfo, mode = p.mode, batch_interval = p.batch_interval,
                             max_batch_rows = p.max_batch_rows, max_batch_bytes = p.max_batch_bytes
     WHERE id = p.id;
    PERFORM edgesync._wake_launcher_at_commit();
END
$$;
COMMENT ON FUNCTION edgesync.alter_peer(text, text, text, interval, integer, bigint) IS
    'Change a peer''s conninfo, mode or batch limits (NULL keeps a setting); the forwarder picks them up at once';

CREATE FUNCTION edgesync._set_peer_paused(peer_name text, pause boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE edgesync.peer p SET paused = pause WHERE p.name = peer_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'edgesync: no peer named %', coalesce(quote_literal(peer_name), 'NULL') USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM edgesync._wake_launcher_at_commit();
END
$$;

CREATE FUNCTION edgesync.pause_peer(name text) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT edgesync._set_peer_paused(name, true) $$;
COMMENT ON FUNCTION edgesync.pause_peer(text) IS 'Stop forwarding to a peer; its changes wait in the slot (and hold WAL)';

CREATE FUNCTION edgesync.resume_peer(name text) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT edgesync._set_peer_paused(name, false) $$;
COMMENT ON FUNCTION edgesync.resume_peer(text) IS 'Forward to a paused peer again';

CREATE FUNCTION edgesync.drop_peer(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    slot     name;
    deadline timestamptz := clock_timestamp() + interval '15 seconds';
BEGIN
    DELETE FROM edgesync.peer p WHERE p.name = drop_peer.name RETURNING slot_name INTO slot;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'edgesync: no peer named %', coalesce(quote_literal(drop_peer.name), 'NULL') USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM edgesync._wake_launcher_at_commit();
    -- the forwarder holds the slot only while it reads it: stop it, then drop
    LOOP
        PERFORM pg_terminate_backend(active_pid) FROM pg_replication_slots s
          WHERE s.slot_name = slot AND s.active_pid IS NOT NULL;
        EXIT WHEN NOT EXISTS (SELECT FROM pg_replication_slots s WHERE s.slot_name = slot AND s.active);
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'edgesync: replication slot % stays in use', slot USING ERRCODE = 'object_in_use';
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    IF EXISTS (SELECT FROM pg_replication_slots s WHERE s.slot_name = slot) THEN
        PERFORM pg_drop_replication_slot(slot);
    END IF;
END
$$;
COMMENT ON FUNCTION edgesync.drop_peer(text) IS 'Remove a peer, stop its forwarder and drop its replication slot (unsent changes are lost to it)';

CREATE FUNCTION edgesync.hello(sender text, OUT confirmed_lsn pg_lsn, OUT clock_ms bigint, OUT batch_format integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF sender IS NULL OR NOT edgesync._is_node_name(sender) THEN
        RAISE EXCEPTION 'edgesync: sender % is not a node name', coalesce(quote_literal(sender), 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM pg_replication_origin WHERE roname = edgesync._origin_name(sender)) THEN
        confirmed_lsn := pg_replication_origin_progress(edgesync._origin_name(sender), true);
    END IF;
    clock_ms := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    batch_format := edgesync._batch_format();
END
$$;
COMMENT ON FUNCTION edgesync.hello(text) IS 'For pushing peers: how far this node applied the sender''s changes, its clock and batch format';

CREATE FUNCTION edgesync.apply_batch(batch bytea) RETURNS pg_lsn
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_lsn '0/0' + edgesync._apply_batch(batch) $$;
COMMENT ON FUNCTION edgesync.apply_batch(bytea) IS
    'For pushing peers: apply a batch (whole source transactions) exactly once; returns the sender LSN applied';

CREATE VIEW edgesync.peers AS
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
       s.pid AS worker_pid
  FROM since_epoch, edgesync.peer p
  LEFT JOIN edgesync._peer_status() s ON s.peer_id = p.id
  LEFT JOIN pg_replication_slots sl ON sl.slot_name = p.slot_name;
COMMENT ON VIEW edgesync.peers IS 'Each peer: forwarder state, last success and error, backlog, lag, volumes sent and clock skew';

REVOKE ALL ON edgesync.peer, edgesync.sync_table FROM PUBLIC;
GRANT SELECT ON edgesync.sync_table TO pg_monitor, edgesync_admin;
REVOKE EXECUTE ON FUNCTION edgesync.add_table(regclass, text), edgesync.remove_table(regclass),
                           edgesync.add_peer(text, text, text, interval, integer, bigint),
                           edgesync.alter_peer(text, text, text, interval, integer, bigint),
                           edgesync.pause_peer(text), edgesync.resume_peer(text), edgesync._set_peer_paused(text, boolean),
                           edgesync.drop_peer(text), edgesync.sync_now(text, interval),
                           edgesync.hello(text), edgesync.apply_batch(bytea), edgesync._apply_batch(bytea),
                           edgesync._peer_status(), edgesync._wake_launcher_at_commit(),
                           edgesync._require_superuser_for_conninfo(), edgesync._require_table_owner(oid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync.add_table(regclass, text), edgesync.remove_table(regclass),
                          edgesync.add_peer(text, text, text, interval, integer, bigint),
                          edgesync.alter_peer(text, text, text, interval, integer, bigint),
                          edgesync.pause_peer(text), edgesync.resume_peer(text),
                          edgesync.drop_peer(text), edgesync.sync_now(text, interval) TO edgesync_admin;
GRANT EXECUTE ON FUNCTION edgesync.hello(text), edgesync.apply_batch(bytea) TO edgesync_peer;
GRANT SELECT ON edgesync.peers TO pg_monitor, edgesync_admin;
GRANT EXECUTE ON FUNCTION edgesync._peer_status() TO pg_monitor, edgesync_admin;

-- Every function that pins search_path names pg_temp last (left out, it is
-- searched first for tables): the functions of 0.1.0 that did not.
ALTER FUNCTION edgesync._key_of(jsonb, text[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION edgesync._write_row(regclass, jsonb, text[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION edgesync._delete_row(regclass, jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION edgesync._call_conflict_handler(regproc, regclass, text, jsonb, jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION edgesync.set_conflict_policy(regclass, text, regproc) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION edgesync.drop_conflict_policy(regclass, boolean) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION edgesync.pending_conflict_counts() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION edgesync.resolve_conflicts(regclass, text, interval) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION edgesync.purge_conflict_log(interval) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION edgesync.current_wal_lsn() SET search_path = pg_catalog, pg_temp;
