-- edgesync 0.5.0 -> 0.6.0: cheaper local writes. One section per concern;
-- each says what it changes.

-- == edgesync_version has no default ==
-- The conflict trigger stamps every row written, so the column's default
-- (the zero version) only cost time: PostgreSQL reads a default from the
-- catalog and plans it anew for each INSERT that leaves the column out,
-- about 4% of a one-row INSERT. Rows already in a table keep the version
-- they have (rows from before conflict handling read the zero version as
-- before: PostgreSQL keeps the value an added column gave them apart from
-- the default). A remote row from a table without the column still gets
-- the zero version: the trigger (the new library) writes it.
-- set_conflict_policy leaves the column without a default; a table taken
-- out of conflict handling with its column kept gets the default back, as
-- its new rows have no trigger to stamp them.
CREATE OR REPLACE FUNCTION edgesync._set_conflict_policy(relation regclass, policy text, handler regproc) RETURNS void
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

-- Take a table out of conflict handling.
CREATE OR REPLACE FUNCTION edgesync._drop_conflict_policy(relation regclass, drop_column boolean) RETURNS void
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

-- Tables already under conflict handling lose the default now (each is
-- locked for a moment, as ALTER TABLE locks it).
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT c.relid::regclass FROM edgesync.conflict_table c
              WHERE EXISTS (SELECT FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid = c.relid AND a.attname = 'edgesync_version' AND NOT a.attisdropped)
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN edgesync_version DROP DEFAULT', t);
    END LOOP;
END
$$;
