//! The forwarder, push side: edges push their changes up to a cloud through
//! edgesync's own transport (background workers, libpq, apply_batch), on
//! real clusters.

mod common;

use std::time::Duration;

use common::{Cluster, Node, DEADLINE};

/// A generous deadline for draining 100k-row backlogs on a slow machine.
const DRAIN: Duration = Duration::from_secs(240);

const READINGS: &str = "CREATE TABLE public.sensor_readings (
    edge text NOT NULL, id bigint NOT NULL, sensor int NOT NULL, taken_at timestamptz NOT NULL, value double precision,
    PRIMARY KEY (edge, id))";
const INVENTORY: &str = "CREATE TABLE public.inventory (sku text PRIMARY KEY, qty int NOT NULL, note text)";

/// A cloud and `edges` edges, each with the readings table (up) and the
/// inventory table (both), each edge pushing to the cloud in `mode`.
fn hub(test: &str, edges: usize, mode: &str) -> (Cluster, Node, Vec<Node>) {
    let mut c = Cluster::new(test);
    let cloud = c.add_node("cloud", &[]);
    cloud.execute(&format!(
        "CREATE EXTENSION edgesync; SELECT edgesync.create_node('cloud', 100); {READINGS}; {INVENTORY};
         SELECT edgesync.add_table('public.sensor_readings', sync => 'up');
         SELECT edgesync.add_table('public.inventory', sync => 'both');
         CREATE ROLE edge_login LOGIN; GRANT edgesync_peer TO edge_login;"
    ));
    let mut nodes = Vec::new();
    for i in 1..=edges {
        let name = format!("edge{i}");
        let e = c.add_node(&name, &[]);
        e.execute(&format!(
            "CREATE EXTENSION edgesync; SELECT edgesync.create_node('{name}', {i}); {READINGS}; {INVENTORY};
             SELECT edgesync.add_table('public.sensor_readings', sync => 'up');
             SELECT edgesync.add_table('public.inventory', sync => 'both');"
        ));
        e.execute(&format!(
            "SELECT edgesync.add_peer('cloud', 'host=127.0.0.1 port={} dbname=postgres user=edge_login connect_timeout=5', mode => '{mode}')",
            cloud.port
        ));
        c.wait_for(&format!("{name}'s forwarder"), DEADLINE, || {
            Ok(e.try_query("SELECT 1 FROM edgesync.peers WHERE worker_pid IS NOT NULL")?.len() == 1)
        });
        nodes.push(e);
    }
    (c, cloud, nodes)
}

/// Write `rows` readings on `edge`, in transactions of `per_txn` rows,
/// numbered from `first`.
fn write_readings(e: &Node, first: i64, rows: i64, per_txn: i64) {
    e.execute(&format!(
        "DO $$
         BEGIN
           FOR b IN 0..({rows} - 1) / {per_txn} LOOP
             INSERT INTO public.sensor_readings
             SELECT '{name}', g, g % 50, timestamptz '2026-01-01' + g * interval '1 second', (g % 1000) / 10.0
               FROM generate_series({first} + b * {per_txn}, least({first} + (b + 1) * {per_txn}, {first} + {rows}) - 1) g;
             COMMIT;
           END LOOP;
         END $$",
        name = e.name
    ));
}

/// Row count and a checksum over the readings of `edge` held by `n`.
fn readings_of(n: &Node, edge: &str) -> Result<(i64, i64), String> {
    let r = n.try_query(&format!(
        "SELECT count(*), coalesce(sum(hashtext(format('%s|%s|%s|%s|%s', edge, id, sensor, taken_at, value))::bigint), 0)::bigint
           FROM public.sensor_readings WHERE edge = '{edge}'"
    ))?;
    Ok((r[0].get(0), r[0].get(1)))
}

fn wait_arrived(c: &Cluster, cloud: &Node, e: &Node, deadline: Duration) {
    let expected = readings_of(e, &e.name).unwrap();
    c.wait_for(&format!("{}'s {} readings on the cloud", e.name, expected.0), deadline, || Ok(readings_of(cloud, &e.name)? == expected));
}

fn peer_field(e: &Node, column: &str) -> Result<String, String> {
    let r = e.try_query(&format!("SELECT coalesce({column}::text, '') FROM edgesync.peers WHERE peer = 'cloud'"))?;
    Ok(r.first().map(|row| row.get::<_, String>(0)).unwrap_or_default())
}

#[test]
fn readings_arrive_exactly_once_from_two_edges() {
    let (c, cloud, edges) = hub("push_once", 2, "realtime");
    for e in &edges {
        write_readings(e, 1, 100_000, 1_000);
    }
    for e in &edges {
        wait_arrived(&c, &cloud, e, DRAIN);
    }
    // sync_now answers after a round; nothing more goes up and nothing is doubled
    for e in &edges {
        e.execute("SELECT edgesync.sync_now('cloud')");
        assert_eq!(readings_of(&cloud, &e.name).unwrap(), readings_of(e, &e.name).unwrap());
        assert_eq!(peer_field(e, "pending_changes").unwrap(), "0");
        assert_eq!(peer_field(e, "consecutive_failures").unwrap(), "0");
        let sent: i64 = peer_field(e, "rows_sent").unwrap().parse().unwrap();
        assert_eq!(sent, 100_000, "each row sent once");
        let raw: i64 = peer_field(e, "bytes_sent_raw").unwrap().parse().unwrap();
        let compressed: i64 = peer_field(e, "bytes_sent_compressed").unwrap().parse().unwrap();
        assert!(compressed * 3 < raw, "batches are compressed: {compressed} of {raw} bytes");
        assert!(!peer_field(e, "clock_skew_seconds").unwrap().is_empty(), "skew measured at connect");
    }
    // the cloud tagged the rows with each edge's origin and knows how far it got
    let origins: i64 = cloud.scalar("SELECT count(*) FROM pg_replication_origin_status WHERE external_id IN ('edgesync_edge1', 'edgesync_edge2') AND remote_lsn > '0/0'");
    assert_eq!(origins, 2);
}

#[test]
fn an_outage_drains_when_the_cloud_returns() {
    let (c, cloud, edges) = hub("outage", 1, "realtime");
    let e = &edges[0];
    write_readings(e, 1, 1_000, 100);
    wait_arrived(&c, &cloud, e, DEADLINE);
    c.stop(&cloud);
    write_readings(e, 1_001, 20_000, 500);
    c.wait_for("the peer error to show", DEADLINE, || {
        Ok(peer_field(e, "consecutive_failures")?.parse::<i64>().unwrap_or(0) >= 1 && !peer_field(e, "last_error")?.is_empty())
    });
    assert_eq!(peer_field(e, "connected").unwrap(), "false");
    let refused = e.try_query("SELECT edgesync.sync_now('cloud')").expect_err("sync_now raises the round's error");
    assert!(refused.contains("sync with peer \"cloud\" failed"), "{refused}");
    c.start(&cloud);
    wait_arrived(&c, &cloud, e, DRAIN);
    c.wait_for("the peer to recover", DEADLINE, || Ok(peer_field(e, "consecutive_failures")? == "0"));
    assert_eq!(readings_of(&cloud, &e.name).unwrap().0, 21_000);
}
