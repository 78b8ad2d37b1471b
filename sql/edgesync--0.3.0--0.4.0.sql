-- edgesync 0.3.0 -> 0.4.0: pull and relay. The cloud decodes its WAL once
-- into a change feed that every edge pulls from; an edge's forwarder
-- pushes, then pulls. One section per concern; each says what it changes.

-- == tables that travel down: a second publication ==
-- Tables enrolled down or both are published in edgesync_down, which the
-- cloud's feed reads; the ones enrolled before this update are added here.
CREATE PUBLICATION edgesync_down WITH (publish = 'insert, update, delete');

CREATE FUNCTION edgesync._publish(relation regclass, publication name, wanted boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    published boolean := EXISTS (SELECT FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                                  WHERE p.pubname = publication AND pr.prrelid = relation);
BEGIN
    IF wanted AND NOT published THEN
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', publication, relation);
    ELSIF published AND NOT wanted THEN
        EXECUTE format('ALTER PUBLICATION %I DROP TABLE %s', publication, relation);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION edgesync._add_table(relation regclass, sync text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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
    PERFORM edgesync._publish(relation, 'edgesync_up', sync IN ('up', 'both'));
    PERFORM edgesync._publish(relation, 'edgesync_down', sync IN ('down', 'both'));
    INSERT INTO edgesync.sync_table AS s (relid, direction) VALUES (relation, sync)
    ON CONFLICT (relid) DO UPDATE SET direction = EXCLUDED.direction;
END
$$;

CREATE OR REPLACE FUNCTION edgesync._remove_table(relation regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM edgesync.sync_table WHERE relid = relation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'edgesync: table % is not enrolled in sync', relation USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM edgesync._publish(relation, 'edgesync_up', false);
    PERFORM edgesync._publish(relation, 'edgesync_down', false);
END
$$;

SELECT edgesync._publish(relid, 'edgesync_down', true) FROM edgesync.sync_table WHERE direction IN ('down', 'both');

-- == edges: registering one starts the feed ==
CREATE OR REPLACE FUNCTION edgesync.register_edge(name text, login name) RETURNS void
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
    -- the feed worker runs while edges are registered
    PERFORM edgesync._wake_launcher_at_commit();
END
$$;

-- == the peers view: a row per direction ==
-- The pull side's counters come from a new function; the view gains a
-- pull row per peer and the columns position, head, rows_received and
-- transactions_received (at the end, after the 0.3.0 columns).
CREATE  FUNCTION "_peer_pull_status"() RETURNS TABLE (
	"peer_id" INT,  /* i32 */
	"last_pull" bigint,  /* i64 */
	"pull_position" bigint,  /* i64 */
	"feed_head" bigint,  /* i64 */
	"waiting" bigint,  /* i64 */
	"rows_received" bigint,  /* i64 */
	"transactions_received" bigint,  /* i64 */
	"bytes_raw" bigint,  /* i64 */
	"bytes_compressed" bigint,  /* i64 */
	"resync_needed" bool  /* bool */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_peer_pull_status_wrapper';

DROP VIEW edgesync.peers;
-- The state of every peer, one row per direction: push (this node's slot
-- to the peer) and pull (the peer's feed to this node). The settings, the
-- forwarder's state and counters (since the server started), and how far
-- behind each direction is: its position and the head it moves towards
-- (push: this node's WAL; pull: the peer's feed).
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
       s.pid AS worker_pid,
       pg_lsn '0/0' + b.lsn AS blocked_lsn,
       b.tables AS blocked_table,
       regexp_replace(split_part(b.error, E'\n', 1), '^ERROR:\s+', '') AS blocked_error,
       CASE WHEN b.since > 0 THEN t0 + make_interval(secs => b.since / 1e6) END AS blocked_since,
       sl.confirmed_flush_lsn AS position,
       CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_flush_lsn() END AS head,
       0::bigint AS rows_received,
       0::bigint AS transactions_received
  FROM since_epoch, edgesync.peer p
  LEFT JOIN edgesync._peer_status() s ON s.peer_id = p.id
  LEFT JOIN edgesync._peer_blocked() b ON b.peer_id = p.id
  LEFT JOIN pg_replication_slots sl ON sl.slot_name = p.slot_name
UNION ALL
SELECT p.name, 'pull', p.mode,
       CASE WHEN p.paused THEN 'paused' WHEN s.pid IS NULL THEN 'stopped' WHEN u.resync_needed THEN 'resync_needed' ELSE s.state END,
       coalesce(s.connected, false),
       CASE WHEN u.last_pull > 0 THEN t0 + make_interval(secs => u.last_pull / 1e6) END,
       s.last_error,
       CASE WHEN s.last_error_at > 0 THEN t0 + make_interval(secs => s.last_error_at / 1e6) END,
       coalesce(s.consecutive_failures, 0),
       CASE WHEN s.next_attempt > 0 THEN t0 + make_interval(secs => s.next_attempt / 1e6) END,
       -- feed transactions not pulled yet (this node's own among them)
       coalesce(u.waiting, 0),
       CASE WHEN u.last_pull > 0 THEN greatest(u.feed_head - u.pull_position, 0) END,
       NULL::double precision,
       0::bigint, 0::bigint, 0::bigint, 0::bigint,
       s.clock_skew_ms / 1000.0,
       NULL::name, NULL::text, s.pid,
       NULL::pg_lsn, NULL::text, NULL::text, NULL::timestamptz,
       CASE WHEN u.last_pull > 0 THEN pg_lsn '0/0' + u.pull_position END,
       CASE WHEN u.last_pull > 0 THEN pg_lsn '0/0' + u.feed_head END,
       coalesce(u.rows_received, 0),
       coalesce(u.transactions_received, 0)
  FROM since_epoch, edgesync.peer p
  LEFT JOIN edgesync._peer_status() s ON s.peer_id = p.id
  LEFT JOIN edgesync._peer_pull_status() u ON u.peer_id = p.id;
COMMENT ON VIEW edgesync.peers IS 'Each peer, a row per direction (push, pull): forwarder state, last success and error, backlog, lag, volumes moved, clock skew, the transaction the peer refuses (blocked_*), position and head';

REVOKE EXECUTE ON FUNCTION edgesync._peer_pull_status(), edgesync._publish(regclass, name, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync._peer_pull_status() TO pg_monitor, edgesync_admin;
GRANT SELECT ON edgesync.peers TO pg_monitor, edgesync_admin;

-- == pulls from a hot standby of the peer ==
-- A peer may have a second conninfo that pulls go to (the feed is an
-- ordinary table: a streaming standby serves it too): a new column, and
-- add_peer / alter_peer gain a last argument, pull_conninfo.
ALTER TABLE edgesync.peer ADD COLUMN pull_conninfo text;
DROP FUNCTION edgesync.add_peer(text, text, text, interval, integer, bigint);
DROP FUNCTION edgesync._add_peer(text, text, text, interval, integer, bigint);
DROP FUNCTION edgesync.alter_peer(text, text, text, interval, integer, bigint);
DROP FUNCTION edgesync._alter_peer(text, text, text, interval, integer, bigint);
CREATE FUNCTION edgesync._check_pull_conninfo(pull_conninfo text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text := edgesync._conninfo_error(pull_conninfo);
BEGIN
    IF pull_conninfo IS NOT NULL AND problem IS NOT NULL THEN
        RAISE EXCEPTION 'edgesync: invalid pull_conninfo: %', problem USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE FUNCTION edgesync._add_peer(name text, conninfo text, mode text, batch_interval interval,
                                   max_batch_rows integer, max_batch_bytes bigint, pull_conninfo text) RETURNS void
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
    PERFORM edgesync._check_pull_conninfo(pull_conninfo);
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
    INSERT INTO edgesync.peer (name, conninfo, mode, batch_interval, max_batch_rows, max_batch_bytes, slot_name, pull_conninfo)
    VALUES (_add_peer.name, _add_peer.conninfo, _add_peer.mode, _add_peer.batch_interval,
            _add_peer.max_batch_rows, _add_peer.max_batch_bytes, slot, nullif(_add_peer.pull_conninfo, ''));
    PERFORM edgesync._wake_launcher_at_commit();
    IF current_setting('edgesync.database', true) IS DISTINCT FROM current_database() THEN
        RAISE WARNING 'edgesync: forwarders run in database %, not in %: this peer will not be served',
                      coalesce(current_setting('edgesync.database', true), '(edgesync not preloaded)'), current_database()
          USING HINT = format('ALTER SYSTEM SET edgesync.database = %L; then restart the server.', current_database());
    END IF;
END
$$;

CREATE FUNCTION edgesync.add_peer(name text, conninfo text, mode text DEFAULT 'realtime',
                                  batch_interval interval DEFAULT '1 minute',
                                  max_batch_rows integer DEFAULT 10000,
                                  max_batch_bytes bigint DEFAULT 16777216,
                                  pull_conninfo text DEFAULT NULL) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT edgesync._api_step('add_peer', NULL,
                              ARRAY[name, conninfo, mode, batch_interval::text, max_batch_rows::text, max_batch_bytes::text,
                                    pull_conninfo])
$$;
COMMENT ON FUNCTION edgesync.add_peer(text, text, text, interval, integer, bigint, text) IS
    'Add a peer to push changes to and pull its feed from (conninfo: a libpq connection string; mode realtime, batch or on_demand; pull_conninfo: where pulls go instead, e.g. a hot standby of the peer); creates its replication slot';


CREATE FUNCTION edgesync._alter_peer(name text, conninfo text, mode text, batch_interval interval,
                                     max_batch_rows integer, max_batch_bytes bigint, pull_conninfo text) RETURNS void
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
    -- '' sends pulls back to conninfo
    p.pull_conninfo := CASE WHEN _alter_peer.pull_conninfo IS NULL THEN p.pull_conninfo ELSE nullif(_alter_peer.pull_conninfo, '') END;
    PERFORM edgesync._check_peer_settings(p.conninfo, p.mode, p.batch_interval, p.max_batch_rows, p.max_batch_bytes);
    PERFORM edgesync._check_pull_conninfo(p.pull_conninfo);
    UPDATE edgesync.peer SET conninfo = p.conninfo, mode = p.mode, batch_interval = p.batch_interval,
                             max_batch_rows = p.max_batch_rows, max_batch_bytes = p.max_batch_bytes,
                             pull_conninfo = p.pull_conninfo
     WHERE id = p.id;
    PERFORM edgesync._wake_launcher_at_commit();
END
$$;

CREATE FUNCTION edgesync.alter_peer(name text, conninfo text DEFAULT NULL, mode text DEFAULT NULL,
                                    batch_interval interval DEFAULT NULL, max_batch_rows integer DEFAULT NULL,
                                    max_batch_bytes bigint DEFAULT NULL, pull_conninfo text DEFAULT NULL) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT edgesync._api_step('alter_peer', NULL,
                              ARRAY[name, conninfo, mode, batch_interval::text, max_batch_rows::text, max_batch_bytes::text,
                                    pull_conninfo])
$$;
COMMENT ON FUNCTION edgesync.alter_peer(text, text, text, interval, integer, bigint, text) IS
    'Change a peer''s conninfo, mode, batch limits or pull_conninfo (NULL keeps a setting; pull_conninfo '''' pulls from conninfo again); the forwarder picks them up at once';


REVOKE EXECUTE ON FUNCTION edgesync.add_peer(text, text, text, interval, integer, bigint, text),
                           edgesync.alter_peer(text, text, text, interval, integer, bigint, text),
                           edgesync._add_peer(text, text, text, interval, integer, bigint, text),
                           edgesync._alter_peer(text, text, text, interval, integer, bigint, text),
                           edgesync._check_pull_conninfo(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync.add_peer(text, text, text, interval, integer, bigint, text),
                          edgesync.alter_peer(text, text, text, interval, integer, bigint, text) TO edgesync_admin;

-- == the feed and pull_batch (new) ==
CREATE  FUNCTION "_pull_batch"(
	"node" TEXT, /* & str */
	"after" bigint, /* i64 */
	"max_rows" INT, /* i32 */
	"max_bytes" bigint /* i64 */
) RETURNS bytea /* :: std :: option :: Option < Vec < u8 > > */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_pull_batch_wrapper';

-- The cloud's change feed (src/sync/feed.rs): one row per source
-- transaction in a table enrolled down or both, written by the feed worker
-- while edges are registered here, pulled by every edge with
-- edgesync.pull_batch. Node-local (positions are this cluster's LSNs): not
-- dumped. A streaming standby holds it too and can serve pulls.
CREATE TABLE edgesync.feed (
    position         pg_lsn      PRIMARY KEY,  -- the end LSN of the transaction's commit here
    committed_at     timestamptz NOT NULL,
    origin_node      text        NOT NULL,     -- the edge whose push this was, or this node
    tables           text[]      NOT NULL,
    rows             integer     NOT NULL,
    raw_bytes        bigint      NOT NULL,
    compressed_bytes bigint      NOT NULL,
    changes          bytea       NOT NULL      -- the transaction alone, in the batch format (compressed)
);
-- compressed already: TOAST would only spend CPU trying again
ALTER TABLE edgesync.feed ALTER COLUMN changes SET STORAGE EXTERNAL;
COMMENT ON TABLE edgesync.feed IS
    'The change feed edges pull from (edgesync.pull_batch): each transaction of a down or both table, whole, tagged with the node it came from';

-- How far retention purged the feed: a pull from before it must resync.
CREATE TABLE edgesync.feed_mark (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    purged_through pg_lsn      NOT NULL DEFAULT '0/0',
    purged_at      timestamptz
);
INSERT INTO edgesync.feed_mark DEFAULT VALUES;
COMMENT ON TABLE edgesync.feed_mark IS 'The feed position through which retention purged edgesync.feed';

-- Retention: every transaction older than `retention`, then the oldest
-- ones until the rest fit in `max_bytes` (compressed). Returns the new
-- purge mark (NULL: nothing purged). Called by the feed worker.
CREATE FUNCTION edgesync._purge_feed(retention interval, max_bytes bigint) RETURNS pg_lsn
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    by_age  pg_lsn;
    by_size pg_lsn;
    mark    pg_lsn;
BEGIN
    SELECT max(f.position) INTO by_age FROM edgesync.feed f WHERE f.committed_at < now() - retention;
    SELECT kept.position INTO by_size
      FROM (SELECT f.position, sum(f.compressed_bytes) OVER (ORDER BY f.position DESC) AS from_here
              FROM edgesync.feed f) kept
     WHERE kept.from_here > max_bytes
     ORDER BY kept.position DESC LIMIT 1;
    mark := greatest(by_age, by_size);
    IF mark IS NULL THEN
        RETURN NULL;
    END IF;
    DELETE FROM edgesync.feed f WHERE f.position <= mark;
    UPDATE edgesync.feed_mark SET purged_through = greatest(purged_through, mark), purged_at = now();
    RETURN mark;
END
$$;

-- Where a new edge starts pulling: every transaction that commits from
-- now on is past it. (What was committed before is the edge's initial
-- copy, not the feed's.) On a standby: what it has replayed.
CREATE FUNCTION edgesync.feed_start() RETURNS pg_lsn
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END
$$;
COMMENT ON FUNCTION edgesync.feed_start() IS
    'For pulling edges: the feed position a new edge starts from (changes committed before it are not in its feed)';

-- The next batch of the feed after `after` for the calling edge: every
-- transaction that did not come from it, whole, within the limits (one
-- transaction always goes); NULL when there is nothing new. Also the
-- feed's head (the last position it holds) and how many of its
-- transactions follow `after`. The caller must be the login registered
-- for `node`.
CREATE FUNCTION edgesync.pull_batch(node text, after pg_lsn, max_rows integer DEFAULT 10000, max_bytes bigint DEFAULT 16777216,
                                    OUT batch bytea, OUT feed_head pg_lsn, OUT waiting bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF node IS NULL OR after IS NULL OR max_rows IS NULL OR max_bytes IS NULL THEN
        RAISE EXCEPTION 'edgesync: pull_batch needs a node, a position and both limits, not NULL'
          USING ERRCODE = 'null_value_not_allowed';
    END IF;
    batch := edgesync._pull_batch(node, (after - pg_lsn '0/0')::bigint, max_rows, max_bytes);
    SELECT greatest(max(f.position), (SELECT m.purged_through FROM edgesync.feed_mark m)) INTO feed_head FROM edgesync.feed f;
    SELECT count(*) INTO waiting FROM edgesync.feed f WHERE f.position > after;
END
$$;
COMMENT ON FUNCTION edgesync.pull_batch(text, pg_lsn, integer, bigint) IS
    'For pulling edges: the next batch of the feed after a position, without the caller''s own changes; the feed''s head and how many transactions wait';

REVOKE ALL ON edgesync.feed, edgesync.feed_mark FROM PUBLIC;
GRANT SELECT ON edgesync.feed_mark TO pg_monitor, edgesync_admin;
-- the feed holds row data
GRANT SELECT ON edgesync.feed TO edgesync_admin;
REVOKE EXECUTE ON FUNCTION edgesync._purge_feed(interval, bigint), edgesync._pull_batch(text, bigint, integer, bigint),
                           edgesync.pull_batch(text, pg_lsn, integer, bigint), edgesync.feed_start() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync.pull_batch(text, pg_lsn, integer, bigint), edgesync.feed_start() TO edgesync_peer;

-- == node names ==
-- Every node keeps a directory of node ids and names (this node, and the
-- nodes the cloud knows, learned at hello), so that conflicts and row
-- versions name the node that wrote them. conflict_log rows logged before
-- this update keep their origins as they were written.
CREATE  FUNCTION "hlc_time"(
	"hlc" bigint /* i64 */
) RETURNS timestamp with time zone /* Option < TimestampWithTimeZone > */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'hlc_time_wrapper';

CREATE  FUNCTION "node_name"(
	"node_id" INT /* i32 */
) RETURNS TEXT /* String */
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'node_name_wrapper';

CREATE TABLE edgesync.node_directory (
    node_id    integer     PRIMARY KEY CHECK (node_id > 0),
    name       text        NOT NULL CHECK (edgesync._is_node_name(name)),
    learned_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE edgesync.node_directory IS
    'Node ids and the names they stand for (this node and those learned from the cloud): how versions and conflicts name nodes';
SELECT pg_catalog.pg_extension_config_dump('edgesync.node_directory', '');
-- this node, as create_node enters it
INSERT INTO edgesync.node_directory (node_id, name, learned_at) SELECT node_id, name, created_at FROM edgesync.node;

-- Learn that node_id is called name, as of learned_at. An entry changes
-- only for a newer name; this node's own entry never changes (it knows
-- its name, and an edge must not rename the cloud). An entry that is not
-- a node id and a node name is left out. Returns whether anything changed.
CREATE FUNCTION edgesync._learn_node(node_id integer, name text, learned_at timestamptz) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF _learn_node.node_id IS NULL OR _learn_node.node_id <= 0 OR _learn_node.learned_at IS NULL
       OR _learn_node.name IS NULL OR NOT edgesync._is_node_name(_learn_node.name)
       OR EXISTS (SELECT FROM edgesync.node n WHERE n.node_id = _learn_node.node_id) THEN
        RETURN false;
    END IF;
    INSERT INTO edgesync.node_directory AS d (node_id, name, learned_at)
    VALUES (_learn_node.node_id, _learn_node.name, _learn_node.learned_at)
    ON CONFLICT ON CONSTRAINT node_directory_pkey DO UPDATE SET name = EXCLUDED.name, learned_at = EXCLUDED.learned_at
     WHERE d.name <> EXCLUDED.name AND d.learned_at < EXCLUDED.learned_at;
    RETURN FOUND;
END
$$;

-- The directory as hello hands it out: [{node_id, name, learned_at}, ...].
CREATE FUNCTION edgesync._node_directory() RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('node_id', d.node_id, 'name', d.name, 'learned_at', d.learned_at)
                              ORDER BY d.node_id), '[]')
      FROM edgesync.node_directory d
$$;

-- Merge a directory another node handed out (the cloud's, at hello);
-- returns how many entries changed here.
CREATE FUNCTION edgesync._learn_nodes(directory jsonb) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) FILTER (WHERE edgesync._learn_node(e.node_id, e.name, e.learned_at))::integer
      FROM jsonb_to_recordset(CASE WHEN jsonb_typeof(directory) = 'array' THEN directory ELSE '[]' END)
           AS e(node_id integer, name text, learned_at timestamptz)
$$;

-- Name a node by hand: for nodes that never meet through the cloud's
-- hello (native logical replication, which carries no names).
CREATE FUNCTION edgesync.learn_node(node_id integer, name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF name IS NULL OR NOT edgesync._is_node_name(name) THEN
        RAISE EXCEPTION 'edgesync: node name % must be 1 to 48 letters, digits or underscores', coalesce(quote_literal(name), 'NULL')
          USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF node_id IS NULL OR node_id <= 0 THEN
        RAISE EXCEPTION 'edgesync: node_id must be positive, not %', coalesce(node_id::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM edgesync.node n WHERE n.node_id = learn_node.node_id) THEN
        RAISE EXCEPTION 'edgesync: node id % is this node''s own', node_id USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- by hand: what the DBA says is the newest
    PERFORM edgesync._learn_node(node_id, name, greatest(now(), (SELECT d.learned_at + interval '1 microsecond'
                                                                  FROM edgesync.node_directory d WHERE d.node_id = learn_node.node_id)));
END
$$;
COMMENT ON FUNCTION edgesync.learn_node(integer, text) IS
    'Name a node id in this node''s directory (for nodes that never meet through the cloud, such as native subscribers)';

-- A row version, readable: when it was written (its HLC reading's
-- milliseconds; the counter orders writes within one), by which node, and
-- the same for the version it replaced (NULL for an insert, or a row from
-- before conflict handling). The zero version (a row from before conflict
-- handling) has no time and the node name 'initial'.
CREATE FUNCTION edgesync.describe_version(version bigint[],
                                          OUT written_at timestamptz, OUT counter integer, OUT node_id integer, OUT node_name text,
                                          OUT prev_written_at timestamptz, OUT prev_counter integer,
                                          OUT prev_node_id integer, OUT prev_node_name text)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT edgesync.hlc_time(v[1]), (v[1] & 65535)::integer, v[2]::integer, edgesync.node_name(v[2]::integer),
           edgesync.hlc_time(v[3]),
           CASE WHEN replaced THEN (v[3] & 65535)::integer END,
           CASE WHEN replaced THEN v[4]::integer END,
           CASE WHEN replaced THEN edgesync.node_name(v[4]::integer) END
      FROM (SELECT v, (v[3], v[4]) <> (0, 0) AS replaced
              -- the round trip checks the array as a version
              FROM edgesync.row_version(edgesync.make_row_version(version)) AS v) AS checked
$$;
COMMENT ON FUNCTION edgesync.describe_version(bigint[]) IS
    'A row version ({hlc, node_id, prev_hlc, prev_node_id}, as conflict_log keeps it) as times and node names';

CREATE FUNCTION edgesync.describe_version(version bytea,
                                          OUT written_at timestamptz, OUT counter integer, OUT node_id integer, OUT node_name text,
                                          OUT prev_written_at timestamptz, OUT prev_counter integer,
                                          OUT prev_node_id integer, OUT prev_node_name text)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM edgesync.describe_version(edgesync.row_version(version)) $$;
COMMENT ON FUNCTION edgesync.describe_version(bytea) IS
    'A row''s edgesync_version as times and node names';

-- Pending conflicts, oldest first; each side's version read as the time
-- it was written and the node that wrote it. (Here rather than next to
-- conflict_log: it names nodes through the functions above.)
CREATE OR REPLACE VIEW edgesync.conflicts AS
SELECT id, detected_at, schema_name, table_name, conflict_type, key, local_row, remote_row,
       local_version, remote_version, local_origin, remote_origin, note,
       edgesync.hlc_time(local_version[1]) AS local_written_at,
       edgesync.node_name(local_version[2]::integer) AS local_node,
       edgesync.hlc_time(remote_version[1]) AS remote_written_at,
       edgesync.node_name(remote_version[2]::integer) AS remote_node
  FROM edgesync.conflict_log
 WHERE status = 'pending'
 ORDER BY detected_at, id;
COMMENT ON VIEW edgesync.conflicts IS 'Conflicts waiting for a DBA: settle them with edgesync.resolve_conflict(id, resolution)';

REVOKE ALL ON edgesync.node_directory FROM PUBLIC;
GRANT SELECT ON edgesync.node_directory TO pg_monitor, edgesync_admin;
REVOKE EXECUTE ON FUNCTION edgesync._learn_node(integer, text, timestamptz), edgesync._learn_nodes(jsonb),
                           edgesync._node_directory(), edgesync.learn_node(integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync.learn_node(integer, text) TO edgesync_admin;

-- hello takes the caller's node id and answers with the directory: its
-- OUT columns change, so it is dropped and created anew (an edge of 0.3.0
-- calls it as before).
DROP FUNCTION edgesync.hello(text, bigint);
-- The receiving side. A pushing node says hello once per connection: it
-- learns how far this node applied its changes, this node's clock (for the
-- skew check), the batch format spoken here and this node's directory of
-- node names (sql/directory.sql), which it merges into its own; it says
-- which database it is and its node id, which goes into the directory.
CREATE FUNCTION edgesync.hello(sender text, system_identifier bigint DEFAULT NULL, node_id integer DEFAULT NULL,
                               OUT confirmed_lsn pg_lsn, OUT clock_ms bigint, OUT batch_format integer, OUT directory jsonb)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF sender IS NULL OR NOT edgesync._is_node_name(sender) THEN
        RAISE EXCEPTION 'edgesync: sender % is not a node name', coalesce(quote_literal(sender), 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- only the node's own login learns its progress (and names its id)
    PERFORM edgesync._require_edge_login(sender);
    IF hello.system_identifier IS NOT NULL THEN
        PERFORM edgesync._check_edge_identity(sender, hello.system_identifier);
    END IF;
    IF hello.node_id IS NOT NULL THEN
        IF hello.node_id <= 0 THEN
            RAISE EXCEPTION 'edgesync: node_id must be positive, not %', hello.node_id USING ERRCODE = 'invalid_parameter_value';
        END IF;
        PERFORM edgesync._learn_node(hello.node_id, sender, now());
    END IF;
    IF EXISTS (SELECT FROM pg_replication_origin WHERE roname = edgesync._origin_name(sender)) THEN
        confirmed_lsn := pg_replication_origin_progress(edgesync._origin_name(sender), true);
    END IF;
    clock_ms := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    batch_format := edgesync._batch_format();
    directory := edgesync._node_directory();
END
$$;
COMMENT ON FUNCTION edgesync.hello(text, bigint, integer) IS
    'For pushing peers: how far this node applied the sender''s changes, its clock, batch format and node directory; the sender says which database it is and its node id';
REVOKE EXECUTE ON FUNCTION edgesync.hello(text, bigint, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync.hello(text, bigint, integer) TO edgesync_peer;

-- == the cloud's view of its edges ==
-- What each edge last did (hello, push, pull) is kept in shared memory
-- (src/sync/edge_activity.rs; the server must restart with the new
-- library to have it) and shown, with each edge's place in the feed, by
-- the new view edgesync.edges. hello records the edge's connection;
-- drop_edge and reset_edge forget what was recorded.
CREATE  FUNCTION "_edge_activity"() RETURNS TABLE (
	"name" TEXT,  /* String */
	"last_hello" bigint,  /* i64 */
	"last_push" bigint,  /* i64 */
	"pushed_position" bigint,  /* i64 */
	"last_pull" bigint,  /* i64 */
	"pull_position" bigint  /* i64 */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_edge_activity_wrapper';

CREATE  FUNCTION "_note_edge_hello"(
	"sender" TEXT /* & str */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_note_edge_hello_wrapper';

CREATE  FUNCTION "_forget_edge_activity_at_commit"(
	"name" TEXT /* & str */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_forget_edge_activity_at_commit_wrapper';

CREATE OR REPLACE FUNCTION edgesync.hello(sender text, system_identifier bigint DEFAULT NULL, node_id integer DEFAULT NULL,
                               OUT confirmed_lsn pg_lsn, OUT clock_ms bigint, OUT batch_format integer, OUT directory jsonb)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF sender IS NULL OR NOT edgesync._is_node_name(sender) THEN
        RAISE EXCEPTION 'edgesync: sender % is not a node name', coalesce(quote_literal(sender), 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- only the node's own login learns its progress (and names its id)
    PERFORM edgesync._require_edge_login(sender);
    IF hello.system_identifier IS NOT NULL THEN
        PERFORM edgesync._check_edge_identity(sender, hello.system_identifier);
    END IF;
    IF hello.node_id IS NOT NULL THEN
        IF hello.node_id <= 0 THEN
            RAISE EXCEPTION 'edgesync: node_id must be positive, not %', hello.node_id USING ERRCODE = 'invalid_parameter_value';
        END IF;
        PERFORM edgesync._learn_node(hello.node_id, sender, now());
    END IF;
    -- last_hello in edgesync.edges (shared memory, not this transaction)
    PERFORM edgesync._note_edge_hello(sender);
    IF EXISTS (SELECT FROM pg_replication_origin WHERE roname = edgesync._origin_name(sender)) THEN
        confirmed_lsn := pg_replication_origin_progress(edgesync._origin_name(sender), true);
    END IF;
    clock_ms := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    batch_format := edgesync._batch_format();
    directory := edgesync._node_directory();
END
$$;
COMMENT ON FUNCTION edgesync.hello(text, bigint, integer) IS
    'For pushing peers: how far this node applied the sender''s changes, its clock, batch format and node directory; the sender says which database it is and its node id';

CREATE OR REPLACE FUNCTION edgesync.drop_edge(name text) RETURNS void
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
    PERFORM edgesync._forget_edge_activity_at_commit(drop_edge.name);
END
$$;
COMMENT ON FUNCTION edgesync.drop_edge(text) IS
    'Forget a node that pushed here: its registration, its replication origin and its activity (edgesync.edges)';

CREATE OR REPLACE FUNCTION edgesync.reset_edge(name text) RETURNS void
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
    -- the positions recorded were the old database's
    PERFORM edgesync._forget_edge_activity_at_commit(reset_edge.name);
END
$$;
COMMENT ON FUNCTION edgesync.reset_edge(text) IS
    'Take back a node rebuilt under the same name: forget its old database and its progress (its login stays)';

REVOKE EXECUTE ON FUNCTION edgesync._note_edge_hello(text), edgesync._forget_edge_activity_at_commit(text) FROM PUBLIC;

-- The cloud's view of its edges: each registered edge (edgesync.edge),
-- what it last did here (shared memory, src/sync/edge_activity.rs: lost at
-- a restart, and on a standby only the pulls it served) and where it
-- stands in the feed (edgesync.feed, edgesync.feed_mark). On an edge
-- nothing is registered: the view is empty.
CREATE VIEW edgesync.edges AS
WITH since_epoch(t0) AS (SELECT timestamptz '2000-01-01 00:00:00+00'),
     feed_state(head, purged_through) AS (
         SELECT greatest((SELECT max(f.position) FROM edgesync.feed f), m.purged_through), m.purged_through
           FROM edgesync.feed_mark m)
SELECT e.name,
       e.login,
       e.system_identifier,
       e.registered_at,
       e.first_contact_at,
       CASE WHEN a.last_hello > 0 THEN t0 + make_interval(secs => a.last_hello / 1e6) END AS last_hello,
       CASE WHEN a.last_push > 0 THEN t0 + make_interval(secs => a.last_push / 1e6) END AS last_push,
       CASE WHEN a.last_push > 0 THEN pg_lsn '0/0' + a.pushed_position END AS pushed_position,
       CASE WHEN a.last_pull > 0 THEN t0 + make_interval(secs => a.last_pull / 1e6) END AS last_pull,
       CASE WHEN a.last_pull > 0 THEN pg_lsn '0/0' + a.pull_position END AS pull_position,
       feed_state.head AS feed_head,
       CASE WHEN a.last_pull > 0
            THEN greatest(pg_wal_lsn_diff(feed_state.head, pg_lsn '0/0' + a.pull_position), 0)::bigint END AS behind_bytes,
       -- the edge's own transactions among them: its position moves past those too
       CASE WHEN a.last_pull > 0
            THEN (SELECT count(*) FROM edgesync.feed f WHERE f.position > pg_lsn '0/0' + a.pull_position) END AS behind_transactions,
       CASE WHEN a.last_pull > 0 THEN pg_lsn '0/0' + a.pull_position < feed_state.purged_through END AS beyond_retention
  FROM since_epoch, feed_state, edgesync.edge e
  LEFT JOIN edgesync._edge_activity() a ON a.name = e.name;
COMMENT ON VIEW edgesync.edges IS
    'On the cloud, each registered edge: its login and database, when it last said hello, pushed and pulled (since the server started), its pushed and pull positions, how far behind the feed head it is and whether retention purged past it (resync needed)';

REVOKE ALL ON edgesync.edges FROM PUBLIC;
GRANT SELECT ON edgesync.edges TO pg_monitor, edgesync_admin;
-- called by the view as its reader
REVOKE EXECUTE ON FUNCTION edgesync._edge_activity() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync._edge_activity() TO pg_monitor, edgesync_admin;
