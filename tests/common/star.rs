//! A cloud and two edges, each edge logging in as its own role: the setup
//! of the pull and relay tests.

use super::{Cluster, Link, Node, DEADLINE};

pub const CONFIG: &str = "CREATE TABLE public.config (key text PRIMARY KEY, value text NOT NULL)";
pub const INVENTORY: &str = "CREATE TABLE public.inventory (sku text PRIMARY KEY, qty int NOT NULL)";

/// A cloud and two edges, each logging in as its own role; `config` goes
/// down, `inventory` both ways. Returns once each edge has pulled once.
pub fn star(test: &str) -> (Cluster, Node, Vec<Node>) {
    let (c, cloud, edges, _) = star_via(test, false);
    (c, cloud, edges)
}

/// The same, each edge reaching the cloud through a link of its own when
/// `through_links` (returned in the edges' order) for a test to cut and heal.
pub fn star_via(test: &str, through_links: bool) -> (Cluster, Node, Vec<Node>, Vec<Link>) {
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
    let links: Vec<Link> = if through_links { edges.iter().map(|_| Link::new(cloud.port)).collect() } else { Vec::new() };
    for (i, e) in edges.iter().enumerate() {
        let port = links.get(i).map_or(cloud.port, Link::port);
        e.execute(&format!(
            "SELECT edgesync.add_peer('cloud', 'host=127.0.0.1 port={port} dbname=postgres user={}_login connect_timeout=5')",
            e.name
        ));
        c.wait_for(&format!("{}'s first pull", e.name), DEADLINE, || {
            Ok(e.try_query("SELECT 1 FROM edgesync.peers WHERE direction = 'pull' AND position IS NOT NULL")?.len() == 1)
        });
    }
    (c, cloud, edges, links)
}

/// The rows of `table` as text (row versions left out: they are compared apart).
pub fn rows_of(n: &Node, table: &str) -> Result<Vec<String>, String> {
    let columns = if table == "public.inventory" { "sku, qty" } else { "key, value" };
    let rows = n.try_query(&format!("SELECT ({columns})::text FROM {table} ORDER BY 1"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

