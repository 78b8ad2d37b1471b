//! Pull and relay: a cloud's change feed, pulled by every edge, on real
//! clusters (a cloud and two edges). `down` tables reach every edge, a
//! `both` table changed on one edge reaches the other through the cloud
//! and never comes back to where it was made.

mod common;

use common::star::{rows_of, star, CONFIG};
use common::{kill9_worker, set_fault_point, Cluster, Node, DEADLINE};

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
    let state: String = edges[1].scalar("SELECT state FROM edgesync.peers WHERE direction = 'pull'");
    assert_eq!(state, "resync_needed");
    let health: String = edges[1].scalar("SELECT status || ': ' || detail FROM edgesync.health WHERE component = 'peer' AND metric = 'forwarder'");
    assert!(health.starts_with("critical: resync needed"), "{health}");
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

/// Who is killed at a fault point.
#[derive(Clone, Copy, Debug)]
enum Victim {
    /// The worker held at the point (an edge's forwarder, or the cloud's feed worker).
    Worker,
    /// The server the worker runs on.
    ItsServer,
    /// The server on the other side.
    OtherServer,
}

/// Write `count` config rows on the cloud in one transaction, keys from `first`.
fn write_config(cloud: &Node, first: i64, count: i64) {
    cloud.execute(&format!("INSERT INTO public.config SELECT 'k' || g, 'v' || g FROM generate_series({first}, {} - 1) g", first + count));
}

/// Kill `victim` while `holder`'s worker is held; `worker_pid` finds the
/// held worker's pid on `holder`.
fn kill(c: &Cluster, holder: &Node, other: &Node, victim: Victim, worker_pid: &str) {
    match victim {
        Victim::Worker => {
            let pid: i32 = holder.scalar(worker_pid);
            kill9_worker(c, holder, pid, "the held worker");
        }
        Victim::ItsServer => {
            c.kill9(holder);
            c.start(holder);
        }
        Victim::OtherServer => {
            c.kill9(other);
            c.start(other);
        }
    }
}

/// Every config row of the cloud on `e`, each applied once (a second
/// apply of an insert is logged there as insert_exists).
fn wait_config_once(c: &Cluster, cloud: &Node, e: &Node, what: &str) {
    c.wait_for(&format!("{what}: config on {}", e.name), DEADLINE, || Ok(rows_of(e, "public.config")? == rows_of(cloud, "public.config")?));
    e.execute("SELECT edgesync.sync_now('cloud')");
    let twice: i64 = e.scalar("SELECT count(*) FROM edgesync.conflict_log WHERE table_name = 'config'");
    assert_eq!(twice, 0, "{what}: a change applied twice on {}", e.name);
    assert_eq!(rows_of(e, "public.config").unwrap(), rows_of(cloud, "public.config").unwrap(), "{what}");
}

/// kill -9 at each point of a pull, of the edge's forwarder, the edge and
/// the cloud: every change arrives, once.
#[test]
fn kill9_at_every_point_of_a_pull_loses_and_doubles_nothing() {
    let (c, cloud, edges) = star("kill9_pull");
    let e = &edges[0];
    let mut next = 1i64;
    for point in ["pull_before_apply", "pull_after_apply"] {
        for victim in [Victim::Worker, Victim::ItsServer, Victim::OtherServer] {
            let what = format!("{point} / {victim:?}");
            set_fault_point(e, Some(point));
            write_config(&cloud, next, 100);
            next += 100;
            c.wait_for(&format!("{what}: forwarder held"), DEADLINE, || {
                Ok(e.try_query("SELECT 1 FROM edgesync.peers WHERE direction = 'pull' AND state = 'held'")?.len() == 1)
            });
            let held_with: usize = rows_of(e, "public.config").unwrap().len();
            let expected = if point == "pull_before_apply" { (next - 101) as usize } else { (next - 1) as usize };
            assert_eq!(held_with, expected, "{what}: the batch is applied only after pull_before_apply");
            kill(&c, e, &cloud, victim, "SELECT worker_pid FROM edgesync.peers WHERE direction = 'pull'");
            set_fault_point(e, None);
            wait_config_once(&c, &cloud, e, &what);
        }
    }
    wait_config_once(&c, &cloud, &edges[1], "the other edge");
}

/// kill -9 at each point of the feed worker, of the worker and of the
/// cloud: the feed holds every transaction once, and the edges get each once.
#[test]
fn kill9_at_every_point_of_the_feed_loses_and_doubles_nothing() {
    let (c, cloud, edges) = star("kill9_feed");
    let mut next = 1i64;
    for point in ["feed_before_write", "feed_before_advance"] {
        for victim in [Victim::Worker, Victim::ItsServer] {
            let what = format!("{point} / {victim:?}");
            set_fault_point(&cloud, Some(point));
            write_config(&cloud, next, 100);
            next += 100;
            let held = |cloud: &Node| -> Result<bool, String> {
                Ok(cloud.try_query(&format!("SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query = 'edgesync feed: held at {point}'"))?.len() == 1)
            };
            c.wait_for(&format!("{what}: feed worker held"), DEADLINE, || held(&cloud));
            let in_feed: i64 = cloud.scalar("SELECT count(*) FROM edgesync.feed WHERE 'public.config' = ANY (tables)");
            let expected = if point == "feed_before_write" { (next - 1) / 100 - 1 } else { (next - 1) / 100 };
            assert_eq!(in_feed, expected, "{what}: the transaction is in the feed only after feed_before_write");
            kill(&c, &cloud, &edges[0], victim, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'edgesync feed'");
            set_fault_point(&cloud, None);
            for e in &edges {
                wait_config_once(&c, &cloud, e, &what);
            }
            let in_feed: i64 = cloud.scalar("SELECT count(*) FROM edgesync.feed WHERE 'public.config' = ANY (tables)");
            assert_eq!(in_feed, (next - 1) / 100, "{what}: each transaction once in the feed");
        }
    }
}

#[test]
fn an_edge_that_only_pulls_works() {
    let (mut c, cloud, _edges) = star("pull_only");
    cloud.execute("CREATE ROLE edge3_login LOGIN IN ROLE edgesync_peer; SELECT edgesync.register_edge('edge3', 'edge3_login')");
    let e = c.add_node("edge3", &[]);
    e.execute(&format!(
        "CREATE EXTENSION edgesync; SELECT edgesync.create_node('edge3', 3); {CONFIG};
         SELECT edgesync.add_table('public.config', sync => 'down');"
    ));
    e.execute(&format!(
        "SELECT edgesync.add_peer('cloud', 'host=127.0.0.1 port={} dbname=postgres user=edge3_login connect_timeout=5')",
        cloud.port
    ));
    c.wait_for("edge3's first pull", DEADLINE, || {
        Ok(e.try_query("SELECT 1 FROM edgesync.peers WHERE direction = 'pull' AND position IS NOT NULL")?.len() == 1)
    });
    cloud.execute("INSERT INTO public.config VALUES ('currency', 'EUR')");
    c.wait_for("config on the edge that pushes nothing", DEADLINE, || Ok(rows_of(&e, "public.config")? == rows_of(&cloud, "public.config")?));
    assert_eq!(e.scalar::<i64>("SELECT edgesync.sync_now('cloud')"), 0, "nothing left to move");
    let errors: i64 = e.scalar("SELECT count(*) FROM edgesync.peers WHERE last_error IS NOT NULL OR consecutive_failures > 0");
    assert_eq!(errors, 0, "pushing nothing is not an error");
}
