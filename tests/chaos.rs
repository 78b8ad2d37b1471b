//! Convergence under chaos: seeded random inserts, updates and deletes of a
//! small key set of a `both` table on a cloud and two edges at once, with
//! each edge's link to the cloud cut and healed at random moments, an
//! edge's forwarder killed and the cloud restarted; at the end, after
//! `sync_now` rounds, the three nodes hold the same rows with the same
//! versions, and every conflict was settled and logged.
//!
//! "Logged" is checked write by write: each node audits its local writes
//! (an ordinary trigger, which apply does not fire). A write that is not
//! in the final rows was either seen by the write or delete that replaced
//! it (it is that write's previous version, or the version a local delete
//! removed), or it was overwritten by a change made without seeing it: a
//! concurrent one, which some node's `conflict_log` must name.
//!
//! The seeds run are printed; `EDGESYNC_CHAOS_SEED=n` replays one.

mod common;

use std::time::Duration;

use common::star::star_via;
use common::{kill9_worker, Client, Cluster, Link, Node};

/// Seeds `make test` runs (each a fresh cluster).
const SEEDS: [u64; 3] = [1, 2, 3];
/// Transactions per seed, each of 1 to 4 operations on one node.
const TRANSACTIONS: usize = 1_200;
/// Keys the operations pick from: few, so that nodes collide often.
const KEYS: u64 = 12;
/// How long the final rounds may take to converge.
const CONVERGE: Duration = Duration::from_secs(180);

/// Each node's audit of its local writes: the version each insert or
/// update wrote (which holds the version it replaced), and the version
/// each delete removed.
const AUDIT: &str = "CREATE TABLE public.chaos_audit (kind text NOT NULL, version bytea NOT NULL);
    CREATE FUNCTION public.chaos_audit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO public.chaos_audit VALUES ('deleted', OLD.edgesync_version);
        ELSE
            INSERT INTO public.chaos_audit VALUES ('written', NEW.edgesync_version);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER chaos_audit AFTER INSERT OR UPDATE OR DELETE ON public.inventory
        FOR EACH ROW EXECUTE FUNCTION public.chaos_audit();";

/// One column of hex strings from every node: a version's own part (its
/// clock reading and node, the first 12 bytes) unless the query says otherwise.
fn versions(nodes: &[&Node], sql: &str) -> std::collections::BTreeSet<String> {
    nodes.iter().flat_map(|n| n.query(sql).into_iter().map(|r| r.get::<_, String>(0))).collect()
}

/// The local writes that were overwritten without being seen and that no
/// node's conflict_log names (empty when every concurrent change was logged),
/// and how many were overwritten so.
fn concurrent_writes_not_logged(nodes: &[&Node]) -> (Vec<String>, usize) {
    let written = versions(nodes, "SELECT encode(substr(version, 1, 12), 'hex') FROM public.chaos_audit WHERE kind = 'written'");
    let mut seen = versions(nodes, "SELECT encode(substr(version, 13, 12), 'hex') FROM public.chaos_audit WHERE kind = 'written'");
    seen.extend(versions(nodes, "SELECT encode(substr(version, 1, 12), 'hex') FROM public.chaos_audit WHERE kind = 'deleted'"));
    seen.extend(versions(nodes, "SELECT encode(substr(edgesync_version, 1, 12), 'hex') FROM public.inventory"));
    let logged = versions(
        nodes,
        "SELECT encode(int8send(v[1]) || int4send(v[2]::int), 'hex')
           FROM edgesync.conflict_log, LATERAL (VALUES (local_version), (remote_version)) AS x(v) WHERE v IS NOT NULL",
    );
    let overwritten: Vec<&String> = written.difference(&seen).collect();
    let missing = overwritten.iter().filter(|w| !logged.contains(**w)).map(|w| w.to_string()).collect();
    (missing, overwritten.len())
}

/// splitmix64: a small, seedable generator; the same seed gives the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One random statement on the inventory table.
fn statement(rng: &mut Rng) -> String {
    let sku = format!("k{}", rng.below(KEYS));
    let qty = rng.below(1_000);
    match rng.below(10) {
        0..=3 => format!("INSERT INTO public.inventory VALUES ('{sku}', {qty}) ON CONFLICT (sku) DO UPDATE SET qty = EXCLUDED.qty"),
        4..=7 => format!("UPDATE public.inventory SET qty = qty + {} WHERE sku = '{sku}'", qty % 7 + 1),
        _ => format!("DELETE FROM public.inventory WHERE sku = '{sku}'"),
    }
}

/// Something that goes wrong between two transactions, if any: what it was.
fn upset(rng: &mut Rng, c: &Cluster, cloud: &Node, edges: &[Node], links: &[Link], cloud_restarted: &mut bool) -> Option<&'static str> {
    match rng.below(100) {
        0..=3 => {
            let link = &links[rng.below(links.len() as u64) as usize];
            if link.is_cut() {
                link.heal();
                Some("link healed")
            } else {
                link.cut();
                Some("link cut")
            }
        }
        4 => {
            let e = &edges[rng.below(edges.len() as u64) as usize];
            let rows = e.try_query("SELECT worker_pid FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NOT NULL").ok()?;
            let pid = rows.first().map(|r| r.get::<_, i32>(0))?;
            kill9_worker(c, e, pid, "chaos");
            Some("forwarder killed")
        }
        5 if !*cloud_restarted => {
            c.restart(cloud);
            *cloud_restarted = true;
            Some("cloud restarted")
        }
        _ => None,
    }
}

/// A session per node, opened again after the node restarted, and how many
/// transactions committed and failed.
struct Sessions(Vec<Option<Client>>, usize, usize);

impl Sessions {
    /// Run one transaction on `n` (the `i`th node); a node restarting after
    /// a crash refuses it, which is fine for a random workload: the test
    /// compares what the nodes end with, not what was asked.
    fn run(&mut self, i: usize, n: &Node, statements: &[String]) {
        if self.0[i].as_ref().is_none_or(Client::is_closed) {
            self.0[i] = n.try_connect().ok();
        }
        let Some(client) = self.0[i].as_mut() else {
            self.2 += 1;
            return;
        };
        if client.batch_execute(&format!("BEGIN; {}; COMMIT", statements.join("; "))).is_err() {
            self.0[i] = None;
            self.2 += 1;
        } else {
            self.1 += 1;
        }
    }
}

/// Every row and its version, as one string.
fn digest(n: &Node) -> Result<String, String> {
    let rows = n.try_query(
        "SELECT coalesce(string_agg(sku || '=' || qty || '@' || encode(edgesync_version, 'hex'), ' ' ORDER BY sku), '')
           FROM public.inventory",
    )?;
    Ok(rows[0].get(0))
}

fn converged(cloud: &Node, edges: &[Node]) -> Result<bool, String> {
    for e in edges {
        e.try_query("SELECT edgesync.sync_now('cloud')")?;
    }
    let want = digest(cloud)?;
    for e in edges {
        if digest(e)? != want {
            return Ok(false);
        }
    }
    Ok(true)
}

fn chaos(seed: u64) {
    println!("chaos seed {seed} (replay: EDGESYNC_CHAOS_SEED={seed})");
    let (c, cloud, edges, links) = star_via(&format!("chaos{seed}"), true);
    for n in [&cloud, &edges[0], &edges[1]] {
        n.execute(AUDIT);
    }
    let mut rng = Rng(seed);
    let mut cloud_restarted = false;
    let mut sessions = Sessions((0..3).map(|_| None).collect(), 0, 0);
    let mut upsets: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for _ in 0..TRANSACTIONS {
        let statements: Vec<String> = (0..=rng.below(4)).map(|_| statement(&mut rng)).collect();
        match rng.below(3) as usize {
            0 => sessions.run(0, &cloud, &statements),
            i => sessions.run(i, &edges[i - 1], &statements),
        }
        if let Some(what) = upset(&mut rng, &c, &cloud, &edges, &links, &mut cloud_restarted) {
            *upsets.entry(what).or_insert(0) += 1;
        }
    }
    if !cloud_restarted {
        c.restart(&cloud);
    }
    let (committed, failed) = (sessions.1, sessions.2);
    // only a node restarting after a crash refuses a transaction
    assert!(committed >= TRANSACTIONS * 9 / 10, "seed {seed}: {committed} transactions committed, {failed} failed");
    links.iter().for_each(Link::heal);
    c.wait_for(&format!("seed {seed}: the three nodes converge"), CONVERGE, || converged(&cloud, &edges));
    let nodes = [&cloud, &edges[0], &edges[1]];
    let logged: i64 = nodes.iter().map(|n| n.scalar::<i64>("SELECT count(*) FROM edgesync.conflict_log")).sum();
    let (not_logged, overwritten) = concurrent_writes_not_logged(&nodes);
    assert!(overwritten > 0, "seed {seed}: writes to {KEYS} keys on three nodes were overwritten concurrently");
    assert!(not_logged.is_empty(), "seed {seed}: {} of {overwritten} writes overwritten unseen are in no conflict_log: {not_logged:?}", not_logged.len());
    for n in nodes {
        let pending: i64 = n.scalar("SELECT count(*) FROM edgesync.conflict_log WHERE status <> 'resolved'");
        assert_eq!(pending, 0, "seed {seed}: last writer wins settles every conflict on {}", n.name);
        let blocked: i64 = n.scalar("SELECT count(*) FROM edgesync.peers WHERE blocked_lsn IS NOT NULL");
        assert_eq!(blocked, 0, "seed {seed}: no transaction blocked on {}", n.name);
    }
    let rows: i64 = cloud.scalar("SELECT count(*) FROM public.inventory");
    println!(
        "seed {seed}: {committed} transactions committed ({failed} refused by a restarting node), converged on {rows} rows, \
         {overwritten} writes overwritten unseen, each in a conflict_log ({logged} conflicts logged), {} bytes through the links; {upsets:?}",
        links.iter().map(Link::bytes).sum::<u64>()
    );
    assert!(upsets.get("link cut").is_some_and(|&n| n > 0) && upsets.contains_key("forwarder killed"), "seed {seed}: {upsets:?}");
}

#[test]
fn three_nodes_converge_under_chaos() {
    let seeds: Vec<u64> = match std::env::var("EDGESYNC_CHAOS_SEED") {
        Ok(s) => vec![s.parse().expect("EDGESYNC_CHAOS_SEED is a number")],
        Err(_) => SEEDS.to_vec(),
    };
    for seed in seeds {
        chaos(seed);
    }
}
