//! Node names across a cloud and two edges: every node learns the others'
//! names through the cloud's `hello`, and the conflicts a concurrent
//! update of one row on both edges (and on the cloud) leaves on each node
//! name the nodes that wrote each side, as `describe_version` names the
//! writers of the rows.

mod common;

// a cloud (node id 100) and two edges (ids 1 and 2), edge1 pulling first:
// it said hello before edge2 existed
use common::star::star;
use common::{Cluster, Node, DEADLINE};

/// The node's directory, `id=name` by id.
fn directory(n: &Node) -> String {
    n.scalar("SELECT string_agg(node_id || '=' || name, ' ' ORDER BY node_id) FROM edgesync.node_directory")
}

fn qty(n: &Node, sku: &str) -> Result<Option<i32>, String> {
    Ok(n.try_query(&format!("SELECT qty FROM public.inventory WHERE sku = '{sku}'"))?.first().map(|r| r.get(0)))
}

/// Each conflict as `sku local_origin>remote_origin resolution`, by key.
fn conflicts(n: &Node) -> Vec<String> {
    n.query("SELECT format('%s %s>%s %s', key->>'sku', local_origin, remote_origin, resolution) FROM edgesync.conflict_log ORDER BY key->>'sku'")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Stop edge2's forwarder: its writes wait in its slot, concurrent with
/// what the others write meanwhile.
fn pause(c: &Cluster, e: &Node) {
    e.execute("SELECT edgesync.pause_peer('cloud')");
    c.wait_for(&format!("{}'s forwarder stopped", e.name), DEADLINE, || {
        Ok(e.try_query("SELECT 1 FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NULL")?.len() == 1)
    });
}

#[test]
fn conflicts_and_versions_name_the_nodes_that_wrote_them() {
    let (c, cloud, edges) = star("names");
    let (edge1, edge2) = (&edges[0], &edges[1]);
    assert_eq!(directory(&cloud), "1=edge1 2=edge2 100=cloud", "the cloud learned each edge at its hello");
    assert_eq!(directory(edge2), "1=edge1 2=edge2 100=cloud", "edge2 learned the cloud's directory");
    assert_eq!(directory(edge1), "1=edge1 100=cloud", "edge1 said hello before edge2 reached the cloud");

    cloud.execute("INSERT INTO public.inventory VALUES ('A', 10), ('B', 10)");
    for e in &edges {
        c.wait_for(&format!("the rows on {}", e.name), DEADLINE, || Ok(qty(e, "B")? == Some(10)));
    }
    // A: edge1, then edge2 (newer); B: the cloud, then edge2 (newer)
    pause(&c, edge2);
    edge1.execute("UPDATE public.inventory SET qty = 1 WHERE sku = 'A'");
    c.wait_for("edge1's A on the cloud", DEADLINE, || Ok(qty(&cloud, "A")? == Some(1)));
    cloud.execute("UPDATE public.inventory SET qty = 20 WHERE sku = 'B'");
    c.wait_for("the cloud's B on edge1", DEADLINE, || Ok(qty(edge1, "B")? == Some(20)));
    edge2.execute("UPDATE public.inventory SET qty = 2 WHERE sku = 'A'");
    edge2.execute("UPDATE public.inventory SET qty = 22 WHERE sku = 'B'");
    assert_eq!(directory(edge1), "1=edge1 100=cloud", "edge1 kept its connection: it has not heard of edge2 yet");
    edge2.execute("SELECT edgesync.resume_peer('cloud')");

    for n in [&cloud, edge1, edge2] {
        c.wait_for(&format!("two conflicts and edge2's rows on {}", n.name), DEADLINE, || {
            let logged = n.try_query("SELECT 1 FROM edgesync.conflict_log")?.len();
            Ok(logged == 2 && qty(n, "A")? == Some(2) && qty(n, "B")? == Some(22))
        });
    }
    assert_eq!(conflicts(&cloud), ["A edge1>edge2 apply_remote", "B cloud>edge2 apply_remote"]);
    assert_eq!(conflicts(edge2), ["A edge2>edge1 keep_local", "B edge2>cloud keep_local"]);
    // edge2's changes reached edge1 through the cloud, still named for the node that made them
    assert_eq!(conflicts(edge1), ["A edge1>edge2 apply_remote", "B cloud>edge2 apply_remote"]);
    assert_eq!(directory(edge1), "1=edge1 2=edge2 100=cloud", "asked the cloud before applying edge2's changes");
    let unnamed: i64 = cloud.scalar("SELECT count(*) FROM edgesync.conflict_log WHERE remote_origin LIKE 'pg\\_%' OR remote_origin LIKE 'edgesync\\_%'");
    assert_eq!(unnamed, 0);

    // the rows' versions: written by edge2, on top of the cloud's insert
    for n in [&cloud, edge1, edge2] {
        let described: String = n.scalar(
            "SELECT string_agg(format('%s:%s@%s<-%s', sku, d.node_id, d.node_name, d.prev_node_name), ' ' ORDER BY sku)
               FROM public.inventory, edgesync.describe_version(edgesync_version) d",
        );
        assert_eq!(described, "A:2@edge2<-cloud B:2@edge2<-cloud", "on {}", n.name);
        let in_time: bool = n.scalar(
            "SELECT bool_and(d.written_at BETWEEN now() - interval '5 minutes' AND clock_timestamp() + interval '2 seconds'
                             AND d.written_at > d.prev_written_at)
               FROM public.inventory, edgesync.describe_version(edgesync_version) d",
        );
        assert!(in_time, "versions read as the times they were written, on {}", n.name);
    }
}
