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
-- (nothing yet)

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
