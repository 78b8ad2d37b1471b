-- Node names: the directory of node ids and names every node keeps, so
-- that a row version or a conflict names the node that wrote it
-- (store_042, cloud), never a bare id or a replication origin.

-- Every node this node knows of. This node itself (create_node); on the
-- cloud, each edge that says hello with its id; on an edge, the cloud's
-- directory, merged at each connection (src/sync/forwarder.rs); any node,
-- by hand with learn_node. One name per id: the newest learned wins. A
-- name may stand for several ids (a node re-created under its old name):
-- the rows each of them wrote all read as that name.
CREATE TABLE edgesync.node_directory (
    node_id    integer     PRIMARY KEY CHECK (node_id > 0),
    name       text        NOT NULL CHECK (edgesync._is_node_name(name)),
    learned_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE edgesync.node_directory IS
    'Node ids and the names they stand for (this node and those learned from the cloud): how versions and conflicts name nodes';
SELECT pg_catalog.pg_extension_config_dump('edgesync.node_directory', '');

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
CREATE VIEW edgesync.conflicts AS
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
