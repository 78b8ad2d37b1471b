//! Pull and relay: a cloud's change feed, pulled by every edge, on real
//! clusters (a cloud and two edges). `down` tables reach every edge, a
//! `both` table changed on one edge reaches the other through the cloud
//! and never comes back to where it was made.

mod common;

use common::{Cluster, Node, DEADLINE};

const CONFIG: &str = "CREATE TABLE public.config (key text PRIMARY KEY, value text NOT NULL)";
const INVENTORY: &str = "CREATE TABLE public.inventory (sku text PRIMARY KEY, qty int NOT NULL)";

/// A cloud and two edges, each logging in as its own role; `config` goes
/// down, `inventory` both ways. Returns once each edge has pulled once.
fn star(test: &str) -> (Cluster, Node, Vec<Node>) {
    let mut c = Cluster::new(test);
    let cloud = c.add_node("cloud", &[]);
    cloud.execute(&format!(
        "CREATE EXTENSION edgesync; SELECT edgesync.create_node('cloud', 100); {CONFIG}; {INVENTORY};
         SELECT edgesync.add_table('public.config', sync => 'down');
         SELECT edgesync.add_table('public.inventory', sync => 'both');"
    ));
    let mut edges = Vec::new();
    for i in 1..=2 {
        let name = format!("edge{i}");
        cloud.execute(&format!("CREATE ROLE {name}_login LOGIN IN ROLE edgesync_peer"));
        cloud.execute(&format!("SELECT edgesync.register_edge('{name}', '{name}_login')"));
        let e = c.add_node(&name, &[]);
        e.execute(&format!(
            "CREATE EXTENSION edgesync; SELECT edgesync.create_node('{name}', {i}); {CONFIG}; {INVENTORY};
             SELECT edgesync.add_table('public.config', sync => 'down');
             SELECT edgesync.add_table('public.inventory', sync => 'both');"
        ));
        edges.push(e);
    }
    c.wait_for("the cloud's feed slot", DEADLINE, || {
        Ok(cloud.try_query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'edgesync_feed'")?.len() == 1)
    });
    for e in &edges {
        e.execute(&format!(
            "SELECT edgesync.add_peer('cloud', 'host=127.0.0.1 port={} dbname=postgres user={}_login connect_timeout=5')",
            cloud.port, e.name
        ));
        c.wait_for(&format!("{}'s first pull", e.name), DEADLINE, || {
            Ok(e.try_query("SELECT 1 FROM edgesync.peers WHERE direction = 'pull' AND position IS NOT NULL")?.len() == 1)
        });
    }
    (c, cloud, edges)
}

/// The rows of `table` as text (row versions left out: they are compared apart).
fn rows_of(n: &Node, table: &str) -> Result<Vec<String>, String> {
    let columns = if table == "public.inventory" { "sku, qty" } else { "key, value" };
    let rows = n.try_query(&format!("SELECT ({columns})::text FROM {table} ORDER BY 1"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn pulled(e: &Node, column: &str) -> i64 {
    e.scalar(&format!("SELECT {column} FROM edgesync.peers WHERE direction = 'pull'"))
}

#[test]
fn changes_reach_every_edge_through_the_cloud_and_never_come_back() {
    let (c, cloud, edges) = star("relay");
    cloud.execute("INSERT INTO public.config VALUES ('currency', 'EUR'), ('tax', '0.2')");
    for e in &edges {
        c.wait_for(&format!("config on {}", e.name), DEADLINE, || Ok(rows_of(e, "public.config")? == rows_of(&cloud, "public.config")?));
    }
    edges[0].execute("INSERT INTO public.inventory VALUES ('A', 5)");
    c.wait_for("edge1's inventory on edge2", DEADLINE, || Ok(rows_of(&edges[1], "public.inventory")? == vec!["(A,5)".to_string()]));
    edges[1].execute("UPDATE public.inventory SET qty = 4 WHERE sku = 'A'");
    c.wait_for("edge2's update on edge1", DEADLINE, || Ok(rows_of(&edges[0], "public.inventory")? == vec!["(A,4)".to_string()]));
    for e in &edges {
        e.execute("SELECT edgesync.sync_now('cloud')");
    }
    let versions = |n: &Node| n.scalar::<String>("SELECT string_agg(sku || encode(edgesync_version, 'hex'), ',') FROM public.inventory");
    assert_eq!(versions(&edges[0]), versions(&cloud));
    assert_eq!(versions(&edges[1]), versions(&cloud));
    // each edge applied the cloud's config transaction and the other edge's
    // inventory transaction: its own never came back
    for e in &edges {
        assert_eq!(pulled(e, "transactions_received"), 2, "{}", e.name);
        assert_eq!(pulled(e, "rows_received"), 3, "{}: two config rows and one inventory row", e.name);
    }
    let origins: String = cloud.scalar("SELECT string_agg(origin_node || ':' || array_to_string(tables, '+'), ' ' ORDER BY position) FROM edgesync.feed");
    assert_eq!(origins, "cloud:public.config edge1:public.inventory edge2:public.inventory");
    let conflicts: i64 = edges[0].scalar("SELECT count(*) FROM edgesync.conflict_log");
    assert_eq!(conflicts, 0, "an update made on top of a row is not a conflict");
}

#[test]
fn a_login_cannot_pull_as_another_edge() {
    let (c, cloud, edges) = star("pull_as_other");
    cloud.execute("INSERT INTO public.config VALUES ('currency', 'EUR')");
    c.wait_for("config on edge1", DEADLINE, || Ok(rows_of(&edges[0], "public.config")?.len() == 1));
    let mut as_edge2 =
        postgres::Client::connect(&format!("host=127.0.0.1 port={} user=edge2_login dbname=postgres", cloud.port), postgres::NoTls).unwrap();
    let refused = as_edge2
        .query("SELECT batch FROM edgesync.pull_batch('edge1', '0/1'::pg_lsn)", &[])
        .expect_err("edge2's login pulling as edge1");
    let message = common::db_message(&refused);
    assert!(message.contains("may not act as node \"edge1\""), "{message}");
    let hello = as_edge2.query("SELECT * FROM edgesync.hello('edge1')", &[]).expect_err("hello as edge1");
    assert!(common::db_message(&hello).contains("may not act as node"), "{}", common::db_message(&hello));
    let feed = as_edge2.query("SELECT count(*) FROM edgesync.feed", &[]).expect_err("the feed itself");
    assert!(common::db_message(&feed).contains("permission denied"), "{}", common::db_message(&feed));
}

#[test]
fn a_position_older_than_the_feed_keeps_is_refused_until_resync() {
    let (c, cloud, edges) = star("resync");
    edges[1].execute("SELECT edgesync.pause_peer('cloud')");
    cloud.execute("INSERT INTO public.config VALUES ('currency', 'EUR')");
    c.wait_for("config on edge1", DEADLINE, || Ok(rows_of(&edges[0], "public.config")?.len() == 1));
    // retention purges everything, as if edge2 had been offline for long
    cloud.execute("SELECT edgesync._purge_feed(interval '0 seconds', 0)");
    edges[1].execute("SELECT edgesync.resume_peer('cloud')");
    c.wait_for("edge2 refused", DEADLINE, || {
        let error = edges[1].try_query("SELECT coalesce(last_error, '') FROM edgesync.peers WHERE direction = 'pull'")?;
        Ok(error.first().is_some_and(|r| r.get::<_, String>(0).contains("resync needed")))
    });
    assert!(rows_of(&edges[1], "public.config").unwrap().is_empty(), "nothing was skipped silently");
    // an edge at the mark is not refused: edge1 has seen everything purged
    edges[0].execute("SELECT edgesync.sync_now('cloud')");
    let error: String = edges[0].scalar("SELECT coalesce(last_error, '') FROM edgesync.peers WHERE direction = 'pull'");
    assert!(!error.contains("resync"), "{error}");
}

#[test]
fn an_edge_pulls_from_a_standby_of_the_cloud_while_pushing_to_the_primary() {
    let (mut c, cloud, edges) = star("pull_standby");
    let standby = c.add_standby("cloud_standby", &cloud, "cloud_standby");
    edges[0].execute(&format!(
        "SELECT edgesync.alter_peer('cloud', pull_conninfo => 'host=127.0.0.1 port={} dbname=postgres user=edge1_login connect_timeout=5')",
        standby.port
    ));
    // with the standby's replay paused, edge1 sees nothing new: its pulls go there
    standby.execute("SELECT pg_wal_replay_pause()");
    cloud.execute("INSERT INTO public.config VALUES ('currency', 'EUR')");
    c.wait_for("config on edge2, which pulls from the primary", DEADLINE, || Ok(rows_of(&edges[1], "public.config")?.len() == 1));
    c.assert_stays("no config on edge1 while the standby does not replay", std::time::Duration::from_secs(3), || {
        Ok(rows_of(&edges[0], "public.config")?.is_empty())
    });
    standby.execute("SELECT pg_wal_replay_resume()");
    c.wait_for("config on edge1 through the standby", DEADLINE, || Ok(rows_of(&edges[0], "public.config")?.len() == 1));
    // pushes still go to the primary, and reach edge2 through its feed
    edges[0].execute("INSERT INTO public.inventory VALUES ('A', 5)");
    c.wait_for("edge1's row on the cloud and on edge2", DEADLINE, || {
        Ok(rows_of(&cloud, "public.inventory")?.len() == 1 && rows_of(&edges[1], "public.inventory")?.len() == 1)
    });
    let pulls_on_standby: i64 =
        standby.scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = 'edge1_login' AND application_name = 'edgesync_edge1'");
    assert_eq!(pulls_on_standby, 1, "edge1 keeps a connection to the standby for its pulls");
    let workers: i64 = standby.scalar("SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'edgesync f%'");
    assert_eq!(workers, 0, "a standby runs no feed worker and no forwarder");
}
