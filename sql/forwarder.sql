-- The forwarder's SQL side: which tables travel where (edgesync.sync_table),
-- the peers this node talks to (edgesync.peer), and the functions to manage
-- them. The moving parts are in Rust, in src/sync/: status.rs and peers.rs
-- (status, sync_now), apply.rs (apply_batch), launcher.rs and forwarder.rs.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'edgesync_peer') THEN
        CREATE ROLE edgesync_peer NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE edgesync_peer IS 'May push changes into this node (edgesync.apply_batch): grant it to the role edges log in as';

-- Tables that sync, and which way: up (edge to cloud), down, or both.
CREATE TABLE edgesync.sync_table (
    relid       regclass    PRIMARY KEY,
    direction   text        NOT NULL CHECK (direction IN ('up', 'down', 'both')),
    enrolled_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE edgesync.sync_table IS 'Tables enrolled in sync (edgesync.add_table) and their direction';
SELECT pg_catalog.pg_extension_config_dump('edgesync.sync_table', '');

-- Peers this node connects to. Node-local (slots live here): not dumped.
-- conninfo may hold a password: the table is readable only by its owner.
-- A node's name follows the one rule the Rust code applies (model::node),
-- here through the function that exposes it.
ALTER TABLE edgesync.node ADD CONSTRAINT node_name_check CHECK (edgesync._is_node_name(name));

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
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- where pulls go when not to conninfo (a hot standby of the peer)
    pull_conninfo   text
);
COMMENT ON TABLE edgesync.peer IS 'Peers this node pushes to (edgesync.add_peer); see edgesync.peers for their state';

-- What this node sends up: tables enrolled up or both. Only row changes:
-- a TRUNCATE on an edge is not forwarded.
CREATE PUBLICATION edgesync_up WITH (publish = 'insert, update, delete');
-- What a cloud's feed carries to the edges: tables enrolled down or both
-- (src/sync/feed.rs). Unused on a node no edge pulls from.
CREATE PUBLICATION edgesync_down WITH (publish = 'insert, update, delete');

-- Put a table in a publication, or take it out.
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

-- Raise unless the value is one of the allowed ones.
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

-- Enrol a table in sync, or change its direction.
CREATE FUNCTION edgesync._add_table(relation regclass, sync text) RETURNS void
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
-- The public functions that change what syncs or where are SECURITY
-- INVOKER: edgesync._api_step checks the caller (the current user: the
-- table's owner, or a superuser for a conninfo), then runs the internal
-- function above as the extension's owner. A SECURITY DEFINER function
-- could only check the session's outer role, which another definer
-- function in between would not be.
CREATE FUNCTION edgesync.add_table(relation regclass, sync text) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT edgesync._api_step('add_table', relation, ARRAY[sync]) $$;
COMMENT ON FUNCTION edgesync.add_table(regclass, text) IS
    'Enrol a table in sync: up (edge to cloud), down (cloud to edges) or both (adds last_writer_wins conflict handling unless a policy is set); run the same call on every node';

-- Take a table out of sync (its conflict policy, if any, stays).
CREATE FUNCTION edgesync._remove_table(relation regclass) RETURNS void
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
CREATE FUNCTION edgesync.remove_table(relation regclass) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT edgesync._api_step('remove_table', relation, ARRAY[]::text[]) $$;
COMMENT ON FUNCTION edgesync.remove_table(regclass) IS 'Stop syncing a table (a conflict policy stays until drop_conflict_policy)';

-- Check a peer's settings; raise on the first bad one.
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

-- A pull conninfo, when given, must be a valid one.
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

-- Add a peer to push to: creates its replication slot; its forwarder starts
-- when this transaction commits.
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

-- Change a peer's settings; NULL keeps a setting as it is.
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

-- Stop or restart a peer's forwarder (its slot keeps the changes meanwhile).
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

-- Remove a peer and its replication slot. The slot is gone at once, even if
-- the calling transaction rolls back.
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

-- The receiving side's register of the nodes that push to it: each
-- sender name belongs to one login, the role its connections authenticate
-- as (src/sync/edges.rs). hello and apply_batch serve no one else under
-- that name.
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

-- Register a node that pushes here, or move it to another login.
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
    -- the feed worker runs while edges are registered
    PERFORM edgesync._wake_launcher_at_commit();
END
$$;
COMMENT ON FUNCTION edgesync.register_edge(text, name) IS
    'Let the node name push here, as the given login only (run again to move it to another login)';

-- Forget a node that pushed here: its registration, its replication
-- origin (how far its changes were applied) and, at commit, the activity
-- edgesync.edges shows for it go.
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
    PERFORM edgesync._forget_edge_activity_at_commit(drop_edge.name);
END
$$;
COMMENT ON FUNCTION edgesync.drop_edge(text) IS
    'Forget a node that pushed here: its registration, its replication origin and its activity (edgesync.edges)';

-- Take a rebuilt node back: forget the database it was and how far its
-- changes were applied (its LSNs started over); its login stays.
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
    -- the positions recorded were the old database's
    PERFORM edgesync._forget_edge_activity_at_commit(reset_edge.name);
END
$$;
COMMENT ON FUNCTION edgesync.reset_edge(text) IS
    'Take back a node rebuilt under the same name: forget its old database and its progress (its login stays)';

-- At a node's first contact, remember which database it is; later, refuse
-- another database under its name (an edge rebuilt from scratch, whose
-- LSNs start over: its changes would be taken for ones already applied).
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

-- Apply a batch of a peer's changes; returns the sender LSN applied so far,
-- durable once the calling transaction has committed.
CREATE FUNCTION edgesync.apply_batch(batch bytea) RETURNS pg_lsn
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_lsn '0/0' + edgesync._apply_batch(batch) $$;
COMMENT ON FUNCTION edgesync.apply_batch(bytea) IS
    'For pushing peers: apply a batch (whole source transactions) exactly once; returns the sender LSN applied';

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

-- Who may do what. Managing sync and peers: edgesync_admin (and superusers).
-- Pushing into this node: edgesync_peer. Watching: pg_monitor too.
REVOKE ALL ON edgesync.peer, edgesync.sync_table, edgesync.edge FROM PUBLIC;
GRANT SELECT ON edgesync.edge TO pg_monitor, edgesync_admin;
GRANT SELECT ON edgesync.sync_table TO pg_monitor, edgesync_admin;
REVOKE EXECUTE ON FUNCTION edgesync.add_table(regclass, text), edgesync.remove_table(regclass),
                           edgesync.add_peer(text, text, text, interval, integer, bigint, text),
                           edgesync.alter_peer(text, text, text, interval, integer, bigint, text),
                           edgesync.pause_peer(text), edgesync.resume_peer(text), edgesync._set_peer_paused(text, boolean),
                           edgesync.drop_peer(text), edgesync.sync_now(text, interval),
                           edgesync.hello(text, bigint, integer), edgesync.apply_batch(bytea), edgesync._apply_batch(bytea),
                           edgesync._peer_status(), edgesync._peer_pull_status(), edgesync._wake_launcher_at_commit(),
                           edgesync._require_superuser_for_conninfo(), edgesync._require_table_owner(oid),
                           edgesync._api_step(text, oid, text[]),
                           edgesync.register_edge(text, name), edgesync.drop_edge(text), edgesync._require_edge_login(text),
                           edgesync.reset_edge(text), edgesync._check_edge_identity(text, bigint),
                           edgesync._note_edge_hello(text), edgesync._forget_edge_activity_at_commit(text),
                           edgesync._add_table(regclass, text), edgesync._remove_table(regclass),
                           edgesync._publish(regclass, name, boolean), edgesync._check_pull_conninfo(text),
                           edgesync._add_peer(text, text, text, interval, integer, bigint, text),
                           edgesync._alter_peer(text, text, text, interval, integer, bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgesync.add_table(regclass, text), edgesync.remove_table(regclass),
                          edgesync.add_peer(text, text, text, interval, integer, bigint, text),
                          edgesync.alter_peer(text, text, text, interval, integer, bigint, text),
                          edgesync.pause_peer(text), edgesync.resume_peer(text),
                          edgesync.drop_peer(text), edgesync.sync_now(text, interval),
                          edgesync._api_step(text, oid, text[]),
                          edgesync.register_edge(text, name), edgesync.drop_edge(text), edgesync.reset_edge(text) TO edgesync_admin;
GRANT EXECUTE ON FUNCTION edgesync.hello(text, bigint, integer), edgesync.apply_batch(bytea) TO edgesync_peer;
GRANT SELECT ON edgesync.peers TO pg_monitor, edgesync_admin;
GRANT EXECUTE ON FUNCTION edgesync._peer_status(), edgesync._peer_pull_status() TO pg_monitor, edgesync_admin;
