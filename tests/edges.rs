//! The cloud's view of its edges, on real clusters (a cloud and its edges):
//! `edgesync.edges` follows the edge's pushes and pulls, `edgesync.health`
//! judges its silence and its place in the feed, `diagnose()` finds
//! nothing wrong with a running feed, and `drop_edge` / `reset_edge`
//! forget what was recorded.

mod common;

use std::time::Duration;

use common::star::star;
use common::{Cluster, Node, DEADLINE};

/// The star's cloud and its first edge (`edge1`, logging in as
/// `edge1_login`), once each edge has pulled once; the second edge keeps
/// the feed wanted while the first is dropped.
fn cloud_and_edge(test: &str) -> (Cluster, Node, Node) {
    let (c, cloud, mut edges) = star(test);
    let edge1 = edges.remove(0);
    (c, cloud, edge1)
}

/// A condition on edge `name`'s row of the cloud's `edgesync.edges`.
fn edge_row_holds(cloud: &Node, name: &str, condition: &str) -> Result<bool, String> {
    Ok(cloud.try_query(&format!("SELECT 1 FROM edgesync.edges WHERE name = '{name}' AND ({condition})"))?.len() == 1)
}

/// The status of an `edge` row of the cloud's health (None: no such row).
fn edge_health(cloud: &Node, name: &str, metric: &str) -> Result<Option<String>, String> {
    let rows = cloud.try_query(&format!(
        "SELECT status FROM edgesync.health WHERE component = 'edge' AND object = '{name}' AND metric = '{metric}'"
    ))?;
    Ok(rows.first().map(|r| r.get(0)))
}

#[test]
fn the_cloud_sees_its_edge_push_and_pull_and_judges_it_healthy() {
    let (c, cloud, edge) = cloud_and_edge("edges_view");
    c.wait_for("the edge's hello and pull on the cloud", DEADLINE, || {
        edge_row_holds(
            &cloud,
            "edge1",
            "last_hello IS NOT NULL AND last_pull IS NOT NULL AND pull_position IS NOT NULL
             AND system_identifier IS NOT NULL AND first_contact_at IS NOT NULL AND NOT beyond_retention",
        )
    });
    // pushes: the position the cloud confirmed moves with each one
    edge.execute("INSERT INTO public.inventory VALUES ('A', 5)");
    c.wait_for("a push recorded", DEADLINE, || edge_row_holds(&cloud, "edge1", "pushed_position > '0/0' AND last_push IS NOT NULL"));
    let first_push: String = cloud.scalar("SELECT pushed_position::text FROM edgesync.edges WHERE name = 'edge1'");
    edge.execute("UPDATE public.inventory SET qty = 4 WHERE sku = 'A'");
    c.wait_for("the pushed position moving on", DEADLINE, || {
        edge_row_holds(&cloud, "edge1", &format!("pushed_position > '{first_push}'"))
    });
    // the position is the edge's own LSN: its slot moves there once told
    let pushed: String = cloud.scalar("SELECT pushed_position::text FROM edgesync.edges WHERE name = 'edge1'");
    c.wait_for("the edge's slot at the pushed position", DEADLINE, || {
        let slot = edge.try_query(&format!(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'edgesync_cloud' AND confirmed_flush_lsn >= '{pushed}'"
        ))?;
        Ok(slot.len() == 1)
    });
    // pulls: a change made on the cloud puts the edge behind, until it pulls it
    let head_before: String = cloud.scalar("SELECT feed_head::text FROM edgesync.edges WHERE name = 'edge1'");
    cloud.execute("INSERT INTO public.config VALUES ('currency', 'EUR')");
    c.wait_for("the config row on the edge", DEADLINE, || Ok(edge.try_query("SELECT 1 FROM public.config")?.len() == 1));
    c.wait_for("the edge caught up with the feed's new head", DEADLINE, || {
        edge_row_holds(
            &cloud,
            "edge1",
            &format!("feed_head > '{head_before}' AND pull_position = feed_head AND behind_bytes = 0 AND behind_transactions = 0"),
        )
    });
    assert_eq!(edge_health(&cloud, "edge1", "silent_seconds").unwrap().as_deref(), Some("ok"));
    assert_eq!(edge_health(&cloud, "edge1", "feed_position").unwrap().as_deref(), Some("ok"));
    // the feed worker reads its slot in rounds: inactive in between, never a downstream gone
    c.assert_stays("the feed slot's health rows stay ok", Duration::from_secs(3), || {
        let bad = cloud.try_query("SELECT 1 FROM edgesync.health WHERE object = 'edgesync_feed' AND status <> 'ok'")?;
        Ok(bad.is_empty() && !cloud.try_query("SELECT 1 FROM edgesync.health WHERE object = 'edgesync_feed'")?.is_empty())
    });
    let feed_findings: i64 = cloud.scalar("SELECT count(*) FROM edgesync.diagnose() WHERE subject IN ('feed', 'slot:edgesync_feed')");
    assert_eq!(feed_findings, 0, "a running feed is not a finding");
}

#[test]
fn an_edge_never_heard_from_turns_silent_and_drop_or_reset_forget_what_was_recorded() {
    let (c, cloud, edge) = cloud_and_edge("edges_silence");
    cloud.execute("CREATE ROLE ghost_login LOGIN IN ROLE edgesync_peer; SELECT edgesync.register_edge('ghost', 'ghost_login')");
    cloud.execute("ALTER SYSTEM SET edgesync.edge_silence_warning = '5s'");
    cloud.execute("SELECT pg_reload_conf()");
    c.wait_for("the ghost edge silent (warning at 5 s)", DEADLINE, || {
        Ok(edge_health(&cloud, "ghost", "silent_seconds")?.is_some_and(|s| s != "ok"))
    });
    c.wait_for("the ghost edge critical (at 20 s)", DEADLINE, || Ok(edge_health(&cloud, "ghost", "silent_seconds")?.as_deref() == Some("critical")));
    // an idle realtime edge asks the feed every 30 s: news on the cloud makes it pull at once
    cloud.execute("INSERT INTO public.config VALUES ('currency', 'EUR')");
    c.wait_for("edge1 heard again: ok", DEADLINE, || Ok(edge_health(&cloud, "edge1", "silent_seconds")?.as_deref() == Some("ok")));
    let detail: String = cloud.scalar("SELECT detail FROM edgesync.health WHERE object = 'ghost' AND metric = 'silent_seconds'");
    assert!(detail.starts_with("not heard from in "), "{detail}");
    cloud.execute("SELECT edgesync.drop_edge('ghost')");
    assert_eq!(edge_health(&cloud, "ghost", "silent_seconds").unwrap(), None, "a dropped edge is not judged");

    // with the edge paused nothing new is recorded: what was recorded is forgotten
    edge.execute("SELECT edgesync.pause_peer('cloud')");
    c.wait_for("edge1's forwarder stopped", DEADLINE, || {
        Ok(edge.try_query("SELECT 1 FROM edgesync.peers WHERE worker_pid IS NULL AND direction = 'pull'")?.len() == 1)
    });
    cloud.execute("SELECT edgesync.reset_edge('edge1')");
    assert!(edge_row_holds(&cloud, "edge1", "last_hello IS NULL AND last_pull IS NULL AND system_identifier IS NULL").unwrap());
    edge.execute("SELECT edgesync.resume_peer('cloud')");
    c.wait_for("edge1 heard again after its reset", DEADLINE, || {
        edge_row_holds(&cloud, "edge1", "last_hello IS NOT NULL AND last_pull IS NOT NULL AND system_identifier IS NOT NULL")
    });
    edge.execute("SELECT edgesync.pause_peer('cloud')");
    c.wait_for("edge1's forwarder stopped again", DEADLINE, || {
        Ok(edge.try_query("SELECT 1 FROM edgesync.peers WHERE worker_pid IS NULL AND direction = 'pull'")?.len() == 1)
    });
    cloud.execute("SELECT edgesync.drop_edge('edge1')");
    let origins: i64 = cloud.scalar("SELECT count(*) FROM pg_replication_origin WHERE roname = 'edgesync_edge1'");
    assert_eq!(origins, 0, "its origin is gone");
    // registered again under the same name: nothing of the dropped one shows
    cloud.execute("SELECT edgesync.register_edge('edge1', 'edge1_login')");
    assert!(edge_row_holds(&cloud, "edge1", "last_hello IS NULL AND last_push IS NULL AND last_pull IS NULL").unwrap());
}
