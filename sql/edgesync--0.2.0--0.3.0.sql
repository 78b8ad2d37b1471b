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
-- (nothing yet)

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
