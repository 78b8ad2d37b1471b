//! Who may do what, and what the extension leaves behind: a non-superuser
//! member of `edgesync_admin` does everything the README gives that role,
//! on real clusters, logged in as itself; the owner checks look at the
//! role that calls, not at the session's; `DROP EXTENSION` and `DROP TABLE`
//! leave no slot, publication or bookkeeping row behind.

mod common;

use common::{db_message, Cluster, Node, DEADLINE};

/// A session on `n` logged in as `user`.
fn login(n: &Node, user: &str) -> postgres::Client {
    postgres::Client::connect(&format!("host=127.0.0.1 port={} user={user} dbname=postgres", n.port), postgres::NoTls).unwrap()
}

/// Run `sql` as `client`'s role; the error message if it fails.
fn try_as(client: &mut postgres::Client, sql: &str) -> Result<(), String> {
    client.batch_execute(sql).map_err(|e| db_message(&e))
}

/// An edge whose role `ops` (LOGIN, member of edgesync_admin, not a
/// superuser) owns `public.inventory` and `public.readings`; a cloud that
/// takes its pushes.
fn edge_and_cloud(test: &str) -> (Cluster, Node, Node) {
    let mut c = Cluster::new(test);
    let cloud = c.add_node("cloud", &[]);
    let edge = c.add_node("edge", &[]);
    let tables = "CREATE TABLE public.inventory (sku text PRIMARY KEY, qty int);
                  CREATE TABLE public.readings (id bigint PRIMARY KEY, value float8);";
    cloud.execute(&format!(
        "CREATE EXTENSION edgesync; SELECT edgesync.create_node('cloud', 100); {tables}
         SELECT edgesync.add_table('public.inventory', sync => 'both');
         SELECT edgesync.add_table('public.readings', sync => 'up');
         CREATE ROLE edge_login LOGIN IN ROLE edgesync_peer; SELECT edgesync.register_edge('edge', 'edge_login');"
    ));
    edge.execute(&format!(
        "CREATE EXTENSION edgesync; {tables}
         CREATE ROLE ops LOGIN IN ROLE edgesync_admin;
         ALTER TABLE public.inventory OWNER TO ops; ALTER TABLE public.readings OWNER TO ops;
         CREATE TABLE public.not_ops (id int PRIMARY KEY);"
    ));
    (c, edge, cloud)
}

#[test]
fn a_non_superuser_admin_does_what_the_readme_says() {
    let (c, edge, cloud) = edge_and_cloud("roles_admin");
    let mut ops = login(&edge, "ops");
    for step in [
        "SELECT edgesync.create_node('edge', 1)",
        "SELECT edgesync.set_conflict_policy('public.inventory', 'manual')",
        "SELECT edgesync.add_table('public.inventory', sync => 'both')",
        "SELECT edgesync.add_table('public.readings', sync => 'up')",
    ] {
        try_as(&mut ops, step).unwrap_or_else(|e| panic!("{step}: {e}"));
    }
    // what the README keeps from the role: other owners' tables, conninfos
    let refused = try_as(&mut ops, "SELECT edgesync.add_table('public.not_ops', sync => 'up')").unwrap_err();
    assert!(refused.contains("only the table's owner"), "{refused}");
    let refused = try_as(&mut ops, "SELECT edgesync.set_conflict_policy('public.not_ops')").unwrap_err();
    assert!(refused.contains("only the table's owner"), "{refused}");
    let conninfo = format!("host=127.0.0.1 port={} dbname=postgres user=edge_login connect_timeout=5", cloud.port);
    let refused = try_as(&mut ops, &format!("SELECT edgesync.add_peer('cloud', '{conninfo}', mode => 'on_demand')")).unwrap_err();
    assert!(refused.contains("only a superuser may set a peer's conninfo"), "{refused}");
    edge.execute(&format!("SELECT edgesync.add_peer('cloud', '{conninfo}', mode => 'on_demand')"));
    let refused = try_as(&mut ops, "SELECT edgesync.alter_peer('cloud', conninfo => 'host=elsewhere')").unwrap_err();
    assert!(refused.contains("only a superuser may set a peer's conninfo"), "{refused}");

    for step in [
        "SELECT edgesync.alter_peer('cloud', max_batch_rows => 500)",
        "SELECT edgesync.pause_peer('cloud')",
        "SELECT edgesync.resume_peer('cloud')",
        "INSERT INTO public.readings SELECT g, g / 10.0 FROM generate_series(1, 20) g",
    ] {
        try_as(&mut ops, step).unwrap_or_else(|e| panic!("{step}: {e}"));
    }
    c.wait_for("the forwarder", DEADLINE, || Ok(edge.try_query("SELECT 1 FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NOT NULL")?.len() == 1));
    let sent: i64 = ops.query_one("SELECT edgesync.sync_now('cloud', '60 s')", &[]).unwrap().get(0);
    assert_eq!(sent, 20, "sync_now as the admin moves the rows");
    assert_eq!(cloud.scalar::<i64>("SELECT count(*) FROM public.readings"), 20);
    let peers: i64 = ops.query_one("SELECT count(*) FROM edgesync.peers WHERE direction = 'push'", &[]).unwrap().get(0);
    assert_eq!(peers, 1);

    // a pending conflict: settled, purged, and the table taken out again
    edge.execute(
        "INSERT INTO public.inventory VALUES ('x', 1);
         INSERT INTO edgesync.conflict_log (schema_name, table_name, conflict_type, resolution, key, local_row, remote_row,
                                            local_version, remote_version, status, detected_at)
         SELECT 'public', 'inventory', 'update_origin_differs', 'pending', '{\"sku\": \"x\"}', to_jsonb(i) - 'edgesync_version',
                '{\"sku\": \"x\", \"qty\": 2}', edgesync.row_version(i.edgesync_version), '{3,9,0,0}', 'pending', now() - interval '2 days'
           FROM public.inventory i",
    );
    for step in [
        "SELECT count(*) FROM edgesync.conflicts",
        "SELECT edgesync.resolve_conflicts('public.inventory', 'keep_local')",
        "SELECT edgesync.purge_conflict_log('1 day')",
        "SELECT edgesync.purge_tombstones()",
        "SELECT edgesync.drop_conflict_policy('public.inventory')",
        "SELECT edgesync.remove_table('public.readings')",
        "SELECT edgesync.drop_peer('cloud')",
    ] {
        try_as(&mut ops, step).unwrap_or_else(|e| panic!("{step}: {e}"));
    }
    assert_eq!(edge.scalar::<i64>("SELECT count(*) FROM edgesync.conflict_log"), 0, "the settled conflict was purged");
    assert_eq!(edge.scalar::<i64>("SELECT count(*) FROM pg_replication_slots"), 0, "drop_peer dropped the slot");
}

/// A SECURITY DEFINER function owned by an admin who does not own the
/// table, called by the table's owner: the check sees the function's
/// owner (the role that calls add_table), not the session's role.
#[test]
fn owner_checks_look_at_the_calling_role() {
    let (_c, edge, _cloud) = edge_and_cloud("roles_caller");
    edge.execute(
        "SELECT edgesync.create_node('edge', 1);
         CREATE ROLE mallory LOGIN IN ROLE edgesync_admin;
         CREATE FUNCTION public.enrol_for_me(t regclass) RETURNS void LANGUAGE sql SECURITY DEFINER
             AS $$ SELECT edgesync.add_table(t, 'up') $$;
         ALTER FUNCTION public.enrol_for_me(regclass) OWNER TO mallory;",
    );
    let mut ops = login(&edge, "ops");
    let refused = try_as(&mut ops, "SELECT public.enrol_for_me('public.readings')").unwrap_err();
    assert!(refused.contains("only the table's owner"), "{refused}");
    assert_eq!(edge.scalar::<i64>("SELECT count(*) FROM edgesync.sync_table"), 0);
    // the internal steps are not callable directly
    let refused = try_as(&mut ops, "SELECT edgesync._add_table('public.readings', 'up')").unwrap_err();
    assert!(refused.contains("permission denied"), "{refused}");
}

#[test]
fn drop_extension_leaves_no_slot_publication_or_rows_behind() {
    let (_c, edge, cloud) = edge_and_cloud("roles_drop");
    edge.execute(&format!(
        "SELECT edgesync.create_node('edge', 1);
         SELECT edgesync.add_table('public.inventory', sync => 'both');
         SELECT edgesync.add_table('public.readings', sync => 'up');
         INSERT INTO public.inventory VALUES ('gone', 1); DELETE FROM public.inventory;"
    ));
    // a slot is created in a transaction of its own
    edge.execute(&format!(
        "SELECT edgesync.add_peer('cloud', 'host=127.0.0.1 port={} dbname=postgres user=edge_login', mode => 'on_demand')",
        cloud.port
    ));
    // a dropped table's enrolment, policy and tombstones go with it
    assert_eq!(edge.scalar::<i64>("SELECT count(*) FROM edgesync.tombstone"), 1);
    edge.execute("DROP TABLE public.inventory");
    let left: i64 = edge.scalar(
        "SELECT (SELECT count(*) FROM edgesync.sync_table WHERE relid::oid NOT IN (SELECT oid FROM pg_class))
              + (SELECT count(*) FROM edgesync.conflict_table) + (SELECT count(*) FROM edgesync.tombstone)",
    );
    assert_eq!(left, 0, "nothing of the dropped table is left in edgesync's tables");
    // refused while a peer's slot would be left holding WAL
    let refused = edge.try_query("DROP EXTENSION edgesync").unwrap_err();
    assert!(refused.contains("edgesync_cloud") && refused.contains("hold WAL"), "{refused}");
    assert_eq!(edge.scalar::<i64>("SELECT count(*) FROM pg_extension WHERE extname = 'edgesync'"), 1, "nothing dropped");
    // other extensions drop as before
    edge.execute("CREATE EXTENSION pg_trgm; DROP EXTENSION pg_trgm");
    edge.execute("SELECT edgesync.drop_peer('cloud')");
    edge.execute("DROP EXTENSION edgesync");
    assert_eq!(edge.scalar::<i64>("SELECT count(*) FROM pg_replication_slots"), 0);
    assert_eq!(edge.scalar::<i64>("SELECT count(*) FROM pg_publication"), 0, "the edgesync_up and edgesync_down publications went with it");
    edge.execute("CREATE EXTENSION edgesync");
}
