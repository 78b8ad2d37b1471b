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
