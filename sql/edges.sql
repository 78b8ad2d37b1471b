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
