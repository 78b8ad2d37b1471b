-- edgesync's own objects that need nothing from the Rust library: roles,
-- the node's identity, conflict bookkeeping and the SQL API around it.
-- Runs first (bootstrap); views over Rust functions and grants come last.

-- Roles are cluster-wide: another database may have created them already.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'edgesync_admin') THEN
        CREATE ROLE edgesync_admin NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE edgesync_admin IS 'May read edgesync.conflict_log and settle conflicts on every table';

-- This database's identity as an edgesync node. One row.
CREATE TABLE edgesync.node (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    node_id    integer     NOT NULL CHECK (node_id > 0),
    name       text        NOT NULL,  -- checked by node_name_check (sql/forwarder.sql)
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE edgesync.node IS 'This node: its name and the id stamped into every row version it writes';
SELECT pg_catalog.pg_extension_config_dump('edgesync.node', '');

-- Tables under conflict handling.
CREATE TABLE edgesync.conflict_table (
    relid       regclass    PRIMARY KEY,
    policy      text        NOT NULL CHECK (policy IN ('last_writer_wins', 'keep_local', 'apply_remote', 'manual', 'custom')),
    handler     regproc,
    key_columns text[]      NOT NULL,
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((policy = 'custom') = (handler IS NOT NULL))
);
COMMENT ON TABLE edgesync.conflict_table IS 'Tables with a conflict policy (edgesync.set_conflict_policy)';
SELECT pg_catalog.pg_extension_config_dump('edgesync.conflict_table', '');

-- One row per conflict, with both rows, their versions and origins: the
-- names of the nodes that wrote each side's version (src/conflict/log.rs).
CREATE TABLE edgesync.conflict_log (
    id             bigserial   PRIMARY KEY,
    detected_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    schema_name    name        NOT NULL,
    table_name     name        NOT NULL,
    conflict_type  text        NOT NULL CHECK (conflict_type IN ('insert_exists', 'update_origin_differs', 'update_missing',
                                                                  'update_deleted', 'delete_origin_differs', 'delete_missing',
                                                                  'clock_drift')),
    resolution     text        NOT NULL CHECK (resolution IN ('apply_remote', 'keep_local', 'merge', 'custom', 'pending')),
    key            jsonb       NOT NULL,
    local_row      jsonb,
    remote_row     jsonb,
    kept_row       jsonb,
    local_version  bigint[],
    remote_version bigint[],
    local_origin   text,
    remote_origin  text,
    status         text        NOT NULL CHECK (status IN ('resolved', 'pending')),
    resolved_at    timestamptz,
    resolved_by    name,
    note           text
);
CREATE INDEX conflict_log_pending ON edgesync.conflict_log (schema_name, table_name, detected_at) WHERE status = 'pending';
COMMENT ON TABLE edgesync.conflict_log IS 'Every conflict met while applying remote changes, and how it was settled';
SELECT pg_catalog.pg_extension_config_dump('edgesync.conflict_log', '');
SELECT pg_catalog.pg_extension_config_dump('edgesync.conflict_log_id_seq', '');

-- The clock's durable high-water mark: a reading is handed out only below
-- it. A sequence, because setval is outside transactions and WAL-logged: a
-- crash, a promoted standby or a restored backup keeps it with every row
-- stamped under it, and the clock resumes past it.
CREATE SEQUENCE edgesync.clock_reservation AS bigint MINVALUE 0 START 0 NO CYCLE;
COMMENT ON SEQUENCE edgesync.clock_reservation IS 'Row-version clock readings are handed out only below this (moved ahead by the clock; do not set it by hand)';
SELECT pg_catalog.pg_extension_config_dump('edgesync.clock_reservation', '');

-- Counts only (no row data): whose changes are held for clock drift, for the health view.
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

-- Deleted rows' keys and delete versions: a remote change older than the
-- delete loses to it. Local to this node (relation oids), never dumped.
CREATE TABLE edgesync.tombstone (
    relid      oid         NOT NULL,
    key        jsonb       NOT NULL,
    version    bigint[]    NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relid, key)
);
COMMENT ON TABLE edgesync.tombstone IS 'Recently deleted keys of tables under conflict handling, with the version of the delete';

-- The key columns of a row, as a jsonb object.
CREATE FUNCTION edgesync._key_of(row_data jsonb, key_columns text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT jsonb_object_agg(k, row_data -> k) FROM unnest(key_columns) AS k $$;

-- Write a whole row given as jsonb: update the row with its key, or insert it.
-- Runs with the caller's rights. Generated columns are left to the table;
-- identity columns keep the row's value (OVERRIDING SYSTEM VALUE).
CREATE FUNCTION edgesync._write_row(relation regclass, row_data jsonb, key_columns text[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cols     text;
    set_cols text;
    match    text;
    n        bigint;
BEGIN
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
      FROM pg_attribute
     WHERE attrelid = relation AND attnum > 0 AND NOT attisdropped AND attgenerated = '';
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO set_cols
      FROM pg_attribute
     WHERE attrelid = relation AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
       AND attidentity <> 'a' AND NOT (attname::text = ANY (key_columns));
    SELECT string_agg(format('t.%I = r.%I', k, k), ' AND ') INTO match
      FROM unnest(key_columns) AS k;
    EXECUTE format('UPDATE %s AS t SET (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%s, $1)) '
                   'FROM jsonb_populate_record(NULL::%s, $1) AS r WHERE %s',
                   relation, set_cols, set_cols, relation, relation, match)
      USING row_data;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM jsonb_populate_record(NULL::%s, $1)',
                       relation, cols, cols, relation)
          USING row_data;
    END IF;
END
$$;

-- Delete the row with this key, if any.
CREATE FUNCTION edgesync._delete_row(relation regclass, key jsonb) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    match text;
BEGIN
    SELECT string_agg(format('t.%I = r.%I', k, k), ' AND ') INTO match
      FROM jsonb_object_keys(key) AS k;
    EXECUTE format('DELETE FROM %s AS t USING jsonb_populate_record(NULL::%s, $1) AS r WHERE %s',
                   relation, relation, match)
      USING key;
END
$$;

-- Call a custom conflict handler; an error in it is caught and reported,
-- never raised into the apply path.
CREATE FUNCTION edgesync._call_conflict_handler(handler regproc, relation regclass, conflict_type text,
                                                local_row jsonb, remote_row jsonb,
                                                OUT ok boolean, OUT kept_row jsonb, OUT error text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('SELECT %s($1, $2, $3, $4)', handler)
       INTO kept_row USING relation, conflict_type, local_row, remote_row;
    ok := true;
EXCEPTION WHEN OTHERS THEN
    ok := false;
    kept_row := NULL;
    error := format('%s (SQLSTATE %s)', SQLERRM, SQLSTATE);
END
$$;

-- Enrol a table in conflict handling, or change its policy.
-- (run as the extension's owner by edgesync._api_step, once the caller
-- was found to own the table)
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
    -- No default from now on (the rows above keep theirs): the trigger
    -- stamps every row written, while a default would be read from the
    -- catalog and planned anew for each INSERT that leaves the column
    -- out, about 4% of a one-row INSERT.
    EXECUTE format('ALTER TABLE %s ALTER COLUMN edgesync_version DROP DEFAULT', relation);

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
-- SECURITY INVOKER, as the sync API's functions: edgesync._api_step checks
-- that the caller (the current user) owns the table, then runs the
-- internal function as the extension's owner, which writes edgesync's
-- own tables.
CREATE FUNCTION edgesync.set_conflict_policy(relation regclass, policy text DEFAULT 'last_writer_wins',
                                             handler regproc DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM edgesync._api_step('set_conflict_policy', relation, ARRAY[policy, handler::oid::text]);
END
$$;
COMMENT ON FUNCTION edgesync.set_conflict_policy(regclass, text, regproc) IS
    'Put a table under conflict handling: adds edgesync_version and the conflict trigger; policy last_writer_wins, keep_local, apply_remote, manual or custom';

-- Take a table out of conflict handling.
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
    ELSIF EXISTS (SELECT FROM pg_attribute WHERE attrelid = relation AND attname = 'edgesync_version' AND NOT attisdropped) THEN
        -- with no trigger to stamp them, new rows take the zero version again
        EXECUTE format('ALTER TABLE %s ALTER COLUMN edgesync_version SET DEFAULT %L', relation, '\x' || repeat('00', 24));
    END IF;
    DELETE FROM edgesync.tombstone WHERE relid = relation;
    DELETE FROM edgesync.conflict_table WHERE relid = relation;
END
$$;
CREATE FUNCTION edgesync.drop_conflict_policy(relation regclass, drop_column boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM edgesync._api_step('drop_conflict_policy', relation, ARRAY[drop_column::text]);
END
$$;
COMMENT ON FUNCTION edgesync.drop_conflict_policy(regclass, boolean) IS
    'Remove a table''s conflict trigger (and its edgesync_version column when drop_column is true)';

-- The pending conflicts, edgesync.conflicts, are in sql/directory.sql:
-- the view names nodes through functions of the Rust library.

CREATE VIEW edgesync.conflict_stats AS
SELECT schema_name, table_name, conflict_type, resolution, count(*) AS conflicts,
       count(*) FILTER (WHERE status = 'pending') AS pending,
       min(detected_at) AS first_seen, max(detected_at) AS last_seen
  FROM edgesync.conflict_log
 GROUP BY schema_name, table_name, conflict_type, resolution;
COMMENT ON VIEW edgesync.conflict_stats IS 'Conflicts per table, type and resolution';

-- Counts only (no row data): what the health view reports to monitoring roles.
CREATE FUNCTION edgesync.pending_conflict_counts(OUT schema_name name, OUT table_name name,
                                                 OUT pending bigint, OUT oldest timestamptz)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT schema_name, table_name, count(*), min(detected_at)
      FROM edgesync.conflict_log WHERE status = 'pending'
     GROUP BY 1, 2
$$;

-- Settle every pending conflict of a table the same way; returns how many.
CREATE FUNCTION edgesync.resolve_conflicts(relation regclass, resolution text, older_than interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN edgesync._resolve_conflicts(relation::oid, resolution, older_than);
END
$$;
COMMENT ON FUNCTION edgesync.resolve_conflicts(regclass, text, interval) IS
    'Settle all pending conflicts of a table (older than older_than, if given) with one resolution; returns the count';

-- Delete resolved conflict_log rows detected longer ago than older_than.
CREATE FUNCTION edgesync.purge_conflict_log(older_than interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'edgesync: older_than must be a non-negative interval' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM edgesync.conflict_log WHERE status = 'resolved' AND detected_at < now() - older_than;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION edgesync.purge_conflict_log(interval) IS 'Delete resolved conflicts older than the interval; returns how many';
