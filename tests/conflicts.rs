//! Conflict handling on a native bidirectional subscription
//! (`origin = none`, `copy_data = false`) between two real nodes.

mod common;

use common::{Cluster, Node, DEADLINE};

const TABLE: &str = "CREATE TABLE public.inventory (sku text PRIMARY KEY, qty int NOT NULL, note text)";

/// Two nodes, `a` (node id 1) and `b` (node id 2), replicating
/// `public.inventory` both ways under `policy`.
fn pair(test: &str, policy: &str) -> (Cluster, Node, Node) {
    let mut c = Cluster::new(test);
    let a = c.add_node("a", &["wal_retrieve_retry_interval = '1s'"]);
    let b = c.add_node("b", &["wal_retrieve_retry_interval = '1s'"]);
    for (n, id) in [(&a, 1), (&b, 2)] {
        n.execute(&format!("CREATE EXTENSION edgesync; SELECT edgesync.create_node('{}', {id}); {TABLE};", n.name));
        n.execute(&format!("SELECT edgesync.set_conflict_policy('public.inventory', '{policy}')"));
        n.execute("CREATE PUBLICATION inventory_pub FOR TABLE public.inventory");
    }
    for (n, other) in [(&a, &b), (&b, &a)] {
        n.execute(&format!(
            "CREATE SUBSCRIPTION {}_from_{} CONNECTION '{}' PUBLICATION inventory_pub WITH (origin = none, copy_data = false)",
            n.name,
            other.name,
            other.conninfo()
        ));
    }
    for n in [&a, &b] {
        c.wait_for(&format!("{}'s apply worker", n.name), DEADLINE, || {
            Ok(n.try_query("SELECT 1 FROM edgesync.subscriptions WHERE worker_pid IS NOT NULL")?.len() == 1)
        });
    }
    (c, a, b)
}

fn subscription(n: &Node) -> String {
    format!("{}_from_{}", n.name, if n.name == "a" { "b" } else { "a" })
}

fn set_subscriptions(c: &Cluster, nodes: &[&Node], enabled: bool) {
    for n in nodes {
        n.execute(&format!("ALTER SUBSCRIPTION {} {}", subscription(n), if enabled { "ENABLE" } else { "DISABLE" }));
    }
    for n in nodes {
        c.wait_for(&format!("{}'s worker {}", n.name, if enabled { "running" } else { "gone" }), DEADLINE, || {
            let running = n.try_query("SELECT 1 FROM edgesync.subscriptions WHERE worker_pid IS NOT NULL")?.len() == 1;
            Ok(running == enabled)
        });
    }
}

/// The table's rows with their versions, as one text: equal on both nodes once they converged.
fn rows(n: &Node) -> Result<String, String> {
    let r = n.try_query("SELECT coalesce(string_agg(format('%s=%s/%s %s', sku, qty, note, edgesync_version), ' ' ORDER BY sku), '') FROM public.inventory")?;
    Ok(r[0].get(0))
}

fn wait_converged(c: &Cluster, a: &Node, b: &Node) -> String {
    c.wait_for("both nodes hold the same rows", DEADLINE, || Ok(rows(a)? == rows(b)?));
    rows(a).unwrap()
}

fn wait_rows(c: &Cluster, n: &Node, sql_count: &str, want: i64) {
    c.wait_for(&format!("{}: {sql_count} = {want}", n.name), DEADLINE, || {
        let r = n.try_query(sql_count)?;
        Ok(r[0].get::<_, i64>(0) == want)
    });
}

fn conflicts(n: &Node) -> Vec<(String, String, String, String)> {
    n.query("SELECT key->>'sku', conflict_type, resolution, status FROM edgesync.conflict_log ORDER BY key->>'sku', id")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn c4(sku: &str, t: &str, res: &str, status: &str) -> (String, String, String, String) {
    (sku.into(), t.into(), res.into(), status.into())
}

#[test]
fn concurrent_changes_converge_to_the_newer_write_and_are_logged() {
    let (c, a, b) = pair("lww", "last_writer_wins");
    a.execute("INSERT INTO public.inventory VALUES ('u', 10, 'seed'), ('d', 10, 'seed')");
    wait_rows(&c, &b, "SELECT count(*) FROM public.inventory", 2);

    // native replication carries no node names: a is told b's by hand, b is not told a's
    a.execute("SELECT edgesync.learn_node(2, 'b')");
    set_subscriptions(&c, &[&a, &b], false);
    // a writes first, b later: b's writes are the newer ones
    a.execute("UPDATE public.inventory SET qty = 11, note = 'a' WHERE sku = 'u'");
    a.execute("INSERT INTO public.inventory VALUES ('i', 1, 'a')");
    a.execute("UPDATE public.inventory SET qty = 11, note = 'a' WHERE sku = 'd'");
    b.execute("UPDATE public.inventory SET qty = 12, note = 'b' WHERE sku = 'u'");
    b.execute("INSERT INTO public.inventory VALUES ('i', 2, 'b')");
    b.execute("DELETE FROM public.inventory WHERE sku = 'd'");
    set_subscriptions(&c, &[&a, &b], true);

    let converged = wait_converged(&c, &a, &b);
    let plain: Vec<(String, i32, String)> = a
        .query("SELECT sku, qty, note FROM public.inventory ORDER BY sku")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(plain, vec![("i".into(), 2, "b".into()), ("u".into(), 12, "b".into())], "{converged}");

    c.wait_for("a logged three conflicts", DEADLINE, || Ok(a.try_query("SELECT 1 FROM edgesync.conflict_log")?.len() == 3));
    assert_eq!(
        conflicts(&a),
        vec![
            c4("d", "delete_origin_differs", "apply_remote", "resolved"),
            c4("i", "insert_exists", "apply_remote", "resolved"),
            c4("u", "update_origin_differs", "apply_remote", "resolved"),
        ]
    );
    c.wait_for("b logged two conflicts", DEADLINE, || Ok(b.try_query("SELECT 1 FROM edgesync.conflict_log")?.len() == 2));
    assert_eq!(
        conflicts(&b),
        vec![c4("i", "insert_exists", "keep_local", "resolved"), c4("u", "update_origin_differs", "keep_local", "resolved")]
    );
    // b's native apply worker skipped a's update of the row b deleted before any trigger: PostgreSQL counts it
    c.wait_for("PostgreSQL counted b's update_missing", DEADLINE, || {
        Ok(b.try_query("SELECT 1 FROM edgesync.subscriptions WHERE confl_update_missing = 1")?.len() == 1)
    });

    // the log carries both rows, both versions and the origins
    let r = &a.query(
        "SELECT local_row->>'qty', remote_row->>'qty', kept_row->>'qty', local_version[2], remote_version[2], local_origin, remote_origin
           FROM edgesync.conflict_log WHERE key->>'sku' = 'u'",
    )[0];
    assert_eq!((r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2)), ("11".into(), "12".into(), "12".into()));
    assert_eq!((r.get::<_, i64>(3), r.get::<_, i64>(4)), (1, 2));
    assert_eq!((r.get::<_, String>(5), r.get::<_, String>(6)), ("a".into(), "b".into()), "the nodes that wrote each side, by name");
    let on_b: String = b.scalar("SELECT local_origin || ' ' || remote_origin FROM edgesync.conflict_log WHERE key->>'sku' = 'u'");
    assert_eq!(on_b, "b node 1", "an id b was never told the name of");
    // a native delete carries no version: it came through the subscription
    let delete_from: String = a.scalar("SELECT remote_origin FROM edgesync.conflict_log WHERE key->>'sku' = 'd'");
    assert_eq!(delete_from, "subscription a_from_b");
}

#[test]
fn one_way_traffic_logs_no_conflict() {
    let (c, a, b) = pair("oneway", "last_writer_wins");
    a.execute("INSERT INTO public.inventory SELECT 'sku' || g, g, 'new' FROM generate_series(1, 50) g");
    for round in 0..5 {
        a.execute(&format!("UPDATE public.inventory SET qty = qty + 1, note = 'round {round}'"));
    }
    a.execute("DELETE FROM public.inventory WHERE qty % 10 = 0");
    a.execute("INSERT INTO public.inventory VALUES ('sku5', 1000, 'again')");
    wait_converged(&c, &a, &b);
    // b edits on top of what it received, a only receives now
    b.execute("UPDATE public.inventory SET qty = qty * 2, note = 'from b'");
    c.wait_for("b's edits on a", DEADLINE, || Ok(a.try_query("SELECT 1 FROM public.inventory WHERE note = 'from b'")?.len() == 46));
    wait_converged(&c, &a, &b);
    for n in [&a, &b] {
        assert_eq!(n.scalar::<i64>("SELECT count(*) FROM edgesync.conflict_log"), 0, "no conflict on {}", n.name);
    }
}

#[test]
fn a_node_with_its_clock_behind_wins_with_an_edit_made_after_seeing_the_change() {
    let (c, a, b) = pair("skew", "last_writer_wins");
    // ten minutes is past the default drift bound: within a bound raised to an hour, b follows a's clock
    c.psql(&b, "ALTER SYSTEM SET edgesync.max_clock_drift = '1h'; ALTER SYSTEM SET edgesync.clock_offset = '-600s'; SELECT pg_reload_conf();");
    c.wait_for("b's clock ten minutes behind", DEADLINE, || {
        Ok(b.try_query("SELECT 1 FROM pg_settings WHERE name = 'edgesync.clock_offset' AND setting = '-600000'")?.len() == 1)
    });
    a.execute("INSERT INTO public.inventory VALUES ('x', 1, 'a')");
    wait_rows(&c, &b, "SELECT count(*) FROM public.inventory WHERE sku = 'x'", 1);
    b.execute("UPDATE public.inventory SET qty = 2, note = 'b, clock behind' WHERE sku = 'x'");
    let converged = wait_converged(&c, &a, &b);
    assert!(converged.contains("x=2/b, clock behind"), "{converged}");
    let (a_hlc, b_hlc): (i64, i64) = {
        let r = &b.query("SELECT v[3], v[1] FROM (SELECT edgesync.row_version(edgesync_version) AS v FROM public.inventory WHERE sku = 'x') s")[0];
        (r.get(0), r.get(1))
    };
    assert!(b_hlc > a_hlc, "b's version is past the one it saw, though its wall clock is behind");

    // receiving an update moves b's clock too: b's next write anywhere is later
    a.execute("UPDATE public.inventory SET qty = 5, note = 'a again' WHERE sku = 'x'");
    wait_rows(&c, &b, "SELECT count(*) FROM public.inventory WHERE note = 'a again'", 1);
    b.execute("INSERT INTO public.inventory VALUES ('y', 1, 'b, after the update')");
    let (updated_hlc, later_hlc): (i64, i64) = {
        let r = &b.query(
            "SELECT (SELECT (edgesync.row_version(edgesync_version))[1] FROM public.inventory WHERE sku = 'x'),
                    (SELECT (edgesync.row_version(edgesync_version))[1] FROM public.inventory WHERE sku = 'y')",
        )[0];
        (r.get(0), r.get(1))
    };
    assert!(later_hlc > updated_hlc, "b's write after receiving a's update is later than it: {later_hlc} > {updated_hlc}");
    wait_converged(&c, &a, &b);

    // a concurrent pair: b's edit comes later in real time, with a clock 10 min behind a's.
    // b has seen a's last version, so b's reading is past it: b still wins.
    set_subscriptions(&c, &[&a, &b], false);
    a.execute("UPDATE public.inventory SET qty = 3, note = 'a' WHERE sku = 'x'");
    b.execute("UPDATE public.inventory SET qty = 4, note = 'b' WHERE sku = 'x'");
    set_subscriptions(&c, &[&a, &b], true);
    let converged = wait_converged(&c, &a, &b);
    // a's write is newer by wall clock (b is ten minutes behind): last-writer-wins by the clock
    assert!(converged.contains("x=3/a"), "{converged}");
    for n in [&a, &b] {
        c.wait_for("the conflict logged", DEADLINE, || Ok(n.try_query("SELECT 1 FROM edgesync.conflict_log")?.len() == 1));
    }
}

#[test]
fn equal_clock_readings_are_settled_by_node_id() {
    let (c, a, b) = pair("tie", "last_writer_wins");
    a.execute("INSERT INTO public.inventory VALUES ('e', 1, 'seed')");
    wait_rows(&c, &b, "SELECT count(*) FROM public.inventory", 1);
    let seed: Vec<i64> = a.scalar("SELECT edgesync.row_version(edgesync_version) FROM public.inventory WHERE sku = 'e'");
    set_subscriptions(&c, &[&a, &b], false);
    // Two writes with the very same clock reading: written with the trigger off so
    // that the version is ours to choose; they replicate as ordinary changes.
    let hlc = seed[0] + (1 << 20);
    for (n, id, qty) in [(&a, 1, 100), (&b, 2, 200)] {
        n.execute(&format!(
            "BEGIN; ALTER TABLE public.inventory DISABLE TRIGGER edgesync_conflict;
             UPDATE public.inventory SET qty = {qty}, note = '{}', edgesync_version = edgesync.make_row_version('{{{hlc},{id},{},{}}}') WHERE sku = 'e';
             ALTER TABLE public.inventory ENABLE ALWAYS TRIGGER edgesync_conflict; COMMIT;",
            n.name, seed[0], seed[1]
        ));
    }
    set_subscriptions(&c, &[&a, &b], true);
    let converged = wait_converged(&c, &a, &b);
    assert!(converged.contains("e=200/b"), "node 2 wins the tie on both nodes: {converged}");
    c.wait_for("a logged the tie", DEADLINE, || Ok(a.try_query("SELECT 1 FROM edgesync.conflict_log WHERE resolution = 'apply_remote'")?.len() == 1));
    c.wait_for("b logged the tie", DEADLINE, || Ok(b.try_query("SELECT 1 FROM edgesync.conflict_log WHERE resolution = 'keep_local'")?.len() == 1));
}

#[test]
fn manual_conflicts_wait_and_a_resolution_replicates() {
    let (c, a, b) = pair("manual", "manual");
    a.execute("INSERT INTO public.inventory VALUES ('m', 1, NULL), ('n', 1, 'seed')");
    wait_rows(&c, &b, "SELECT count(*) FROM public.inventory", 2);
    set_subscriptions(&c, &[&a, &b], false);
    a.execute("UPDATE public.inventory SET qty = 5 WHERE sku = 'm'");
    a.execute("UPDATE public.inventory SET qty = 5, note = NULL WHERE sku = 'n'");
    b.execute("UPDATE public.inventory SET qty = 7, note = 'b' WHERE sku = 'm'");
    b.execute("UPDATE public.inventory SET qty = 7, note = 'b' WHERE sku = 'n'");
    set_subscriptions(&c, &[&a, &b], true);
    for n in [&a, &b] {
        c.wait_for(&format!("two pending conflicts on {}", n.name), DEADLINE, || {
            Ok(n.try_query("SELECT 1 FROM edgesync.conflicts")?.len() == 2)
        });
    }
    // each node kept its own rows
    assert_eq!(a.scalar::<i32>("SELECT qty FROM public.inventory WHERE sku = 'm'"), 5);
    assert_eq!(b.scalar::<i32>("SELECT qty FROM public.inventory WHERE sku = 'm'"), 7);
    let health: String = a.scalar("SELECT status FROM edgesync.health WHERE component = 'conflicts'");
    assert_eq!(health, "warning");

    // the DBA on a takes b's row for m and merges n; both replicate to b as plain next changes
    let m: i64 = a.scalar("SELECT id FROM edgesync.conflicts WHERE key->>'sku' = 'm'");
    a.execute(&format!("SELECT edgesync.resolve_conflict({m}, 'apply_remote')"));
    let n_id: i64 = a.scalar("SELECT id FROM edgesync.conflicts WHERE key->>'sku' = 'n'");
    a.execute(&format!("SELECT edgesync.resolve_conflict({n_id}, 'merge')"));
    c.wait_for("b got the resolutions", DEADLINE, || {
        Ok(b.try_query("SELECT 1 FROM public.inventory WHERE (sku = 'm' AND qty = 7 AND note = 'b') OR (sku = 'n' AND qty = 5 AND note = 'b')")?.len() == 2)
    });
    wait_converged(&c, &a, &b);
    assert_eq!(a.scalar::<i64>("SELECT count(*) FROM edgesync.conflicts"), 0);
    let r = &a.query(&format!("SELECT resolution, resolved_by::text, kept_row->>'qty' FROM edgesync.conflict_log WHERE id = {m}"))[0];
    assert_eq!((r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2)), ("apply_remote".into(), "postgres".into(), "7".into()));
    assert_eq!(b.scalar::<i64>("SELECT count(*) FROM edgesync.conflict_log WHERE status = 'pending'"), 2, "b's own log still waits for its DBA");
    assert_eq!(b.scalar::<i64>("SELECT edgesync.resolve_conflicts('public.inventory', 'keep_local')"), 2);
    wait_converged(&c, &a, &b);

    // bad input changes nothing
    for (sql, msg) in [
        (format!("SELECT edgesync.resolve_conflict({m}, 'apply_remote')"), "already resolved"),
        ("SELECT edgesync.resolve_conflict(999999, 'keep_local')".to_string(), "does not exist"),
        (format!("SELECT edgesync.resolve_conflict({m}, 'custom', '{{\"nope\": 1}}')"), "already resolved"),
        ("SELECT edgesync.resolve_conflicts('public.inventory', 'custom')".to_string(), "custom needs a row"),
    ] {
        let err = a.try_connect().unwrap().batch_execute(&sql).unwrap_err();
        assert!(format!("{err:?}").contains(msg), "{sql}: {err:?}");
    }
}

#[test]
fn custom_handlers_choose_the_row_and_a_failing_one_leaves_the_conflict_pending() {
    let (c, a, b) = pair("custom", "last_writer_wins");
    let handlers = "CREATE FUNCTION public.keep_max(rel regclass, kind text, l jsonb, r jsonb) RETURNS jsonb LANGUAGE sql AS
                      $$ SELECT jsonb_build_object('qty', greatest((l->>'qty')::int, (r->>'qty')::int), 'note', 'max') $$;
                    CREATE FUNCTION public.broken(rel regclass, kind text, l jsonb, r jsonb) RETURNS jsonb LANGUAGE plpgsql AS
                      $$ BEGIN RAISE EXCEPTION 'handler bug'; END $$;";
    for n in [&a, &b] {
        n.execute(handlers);
        n.execute("SELECT edgesync.set_conflict_policy('public.inventory', 'custom', handler => 'public.keep_max'::regproc)");
    }
    a.execute("INSERT INTO public.inventory VALUES ('k', 1, 'seed')");
    wait_rows(&c, &b, "SELECT count(*) FROM public.inventory", 1);
    set_subscriptions(&c, &[&a, &b], false);
    a.execute("UPDATE public.inventory SET qty = 9, note = 'a' WHERE sku = 'k'");
    b.execute("UPDATE public.inventory SET qty = 4, note = 'b' WHERE sku = 'k'");
    set_subscriptions(&c, &[&a, &b], true);
    let converged = wait_converged(&c, &a, &b);
    assert!(converged.contains("k=9/max"), "{converged}");
    for n in [&a, &b] {
        let r: String = n.scalar("SELECT resolution || ' ' || status FROM edgesync.conflict_log");
        assert_eq!(r, "custom resolved");
    }

    // a handler that raises: the apply workers keep running, the conflict waits
    for n in [&a, &b] {
        n.execute("SELECT edgesync.set_conflict_policy('public.inventory', 'custom', handler => 'public.broken'::regproc)");
    }
    set_subscriptions(&c, &[&a, &b], false);
    a.execute("UPDATE public.inventory SET qty = 20, note = 'a' WHERE sku = 'k'");
    b.execute("UPDATE public.inventory SET qty = 30, note = 'b' WHERE sku = 'k'");
    set_subscriptions(&c, &[&a, &b], true);
    for n in [&a, &b] {
        c.wait_for(&format!("pending conflict on {}", n.name), DEADLINE, || {
            Ok(n.try_query("SELECT 1 FROM edgesync.conflicts WHERE note LIKE '%handler bug%'")?.len() == 1)
        });
    }
    // replication still flows
    a.execute("INSERT INTO public.inventory VALUES ('after', 1, 'a')");
    wait_rows(&c, &b, "SELECT count(*) FROM public.inventory WHERE sku = 'after'", 1);
    let errors: i64 = b.scalar("SELECT apply_error_count FROM edgesync.subscriptions");
    assert_eq!(errors, 0, "the handler's error never reached the apply worker");
}

#[test]
fn the_clock_never_goes_back_across_restarts_and_crashes() {
    let mut c = Cluster::new("clock");
    let n = c.add_node("n", &[]);
    n.execute(&format!("CREATE EXTENSION edgesync; SELECT edgesync.create_node('n', 1); {TABLE};"));
    n.execute("SELECT edgesync.set_conflict_policy('public.inventory')");
    let hlc_of = |sku: &str| -> i64 {
        n.scalar(&format!("SELECT (edgesync.row_version(edgesync_version))[1] FROM public.inventory WHERE sku = '{sku}'"))
    };
    n.execute("INSERT INTO public.inventory VALUES ('before', 1, NULL)");
    let before = hlc_of("before");
    // the wall clock steps back an hour, and the server restarts
    c.psql(&n, "ALTER SYSTEM SET edgesync.clock_offset = '-3600s';");
    c.restart(&n);
    n.execute("INSERT INTO public.inventory VALUES ('after_restart', 1, NULL)");
    let after_restart = hlc_of("after_restart");
    assert!(after_restart > before, "{after_restart} > {before}");
    // the wall clock jumps an hour ahead: readings pass the saved mark, which
    // must be saved again ahead of them before they are handed out
    c.psql(&n, "ALTER SYSTEM SET edgesync.clock_offset = '3600s'; SELECT pg_reload_conf();");
    c.wait_for("the clock an hour ahead", DEADLINE, || {
        Ok(n.try_query("SELECT 1 FROM pg_settings WHERE name = 'edgesync.clock_offset' AND setting = '3600000'")?.len() == 1)
    });
    n.execute("INSERT INTO public.inventory SELECT 'burst' || g, g, NULL FROM generate_series(1, 1000) g");
    let burst: i64 = n.scalar("SELECT max((edgesync.row_version(edgesync_version))[1]) FROM public.inventory");
    assert!(burst > after_restart + (3_000_000_i64 << 16), "readings jumped ahead: {burst} vs {after_restart}");
    // a crash, and the wall clock back where it was: the saved mark is ahead of every reading handed out
    c.psql(&n, "ALTER SYSTEM RESET edgesync.clock_offset;");
    c.kill9(&n);
    c.start(&n);
    n.execute("INSERT INTO public.inventory VALUES ('after_crash', 1, NULL)");
    assert!(hlc_of("after_crash") > burst, "{} > {burst}", hlc_of("after_crash"));
}

/// The HLC reading of a row's version.
fn hlc_of(n: &Node, sku: &str) -> i64 {
    n.scalar(&format!("SELECT (edgesync.row_version(edgesync_version))[1] FROM public.inventory WHERE sku = '{sku}'"))
}

/// The wall clock of `n`, in HLC units.
fn wall_hlc(n: &Node) -> i64 {
    n.scalar::<i64>("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint") << 16
}

#[test]
fn a_remote_clock_far_ahead_neither_drags_the_local_clock_nor_wins_unseen() {
    let (c, a, b) = pair("drift", "last_writer_wins");
    a.execute("INSERT INTO public.inventory VALUES ('d', 1, 'seed')");
    wait_rows(&c, &b, "SELECT count(*) FROM public.inventory WHERE sku = 'd'", 1);
    let seed: Vec<i64> = a.scalar("SELECT edgesync.row_version(edgesync_version) FROM public.inventory WHERE sku = 'd'");
    // a's clock reads 2100-01-01: versions written with the trigger off so that they are ours to choose
    let y2100: i64 = 4_102_444_800_000 << 16;
    a.execute(&format!(
        "BEGIN; ALTER TABLE public.inventory DISABLE TRIGGER edgesync_conflict;
         UPDATE public.inventory SET qty = 2100, note = 'from 2100', edgesync_version = edgesync.make_row_version('{{{y2100},1,{},{}}}') WHERE sku = 'd';
         INSERT INTO public.inventory VALUES ('e', 2100, 'new in 2100', edgesync.make_row_version('{{{},1,0,0}}'));
         ALTER TABLE public.inventory ENABLE ALWAYS TRIGGER edgesync_conflict; COMMIT;",
        seed[0],
        seed[1],
        y2100 + 1
    ));
    // b holds both changes for a DBA: its rows stay as they were
    c.wait_for("b held a's two changes", DEADLINE, || {
        Ok(b.try_query("SELECT 1 FROM edgesync.conflicts WHERE conflict_type = 'clock_drift' AND remote_version[2] = 1")?.len() == 2)
    });
    assert_eq!(b.scalar::<String>("SELECT qty || '/' || note FROM public.inventory WHERE sku = 'd'"), "1/seed");
    assert_eq!(b.scalar::<i64>("SELECT count(*) FROM public.inventory WHERE sku = 'e'"), 0);
    // b's clock did not follow: its next write is stamped near its wall clock
    b.execute("INSERT INTO public.inventory VALUES ('later', 1, 'b')");
    let (later, wall) = (hlc_of(&b, "later"), wall_hlc(&b));
    assert!(later < wall + (60_000 << 16), "b's clock stayed near its wall clock: {later} vs wall {wall}");
    // health says so, naming the node and how far ahead it was
    let r = &b.query("SELECT status, object, value, detail FROM edgesync.health WHERE component = 'clock'");
    assert_eq!(r.len(), 1, "one clock row");
    assert_eq!((r[0].get::<_, String>(0), r[0].get::<_, String>(1)), ("critical".into(), "node 1".into()));
    assert!(r[0].get::<_, f64>(2) > 365.0 * 24.0 * 3600.0, "seconds ahead of b's wall clock");
    assert!(r[0].get::<_, String>(3).contains("2 changes held"), "{}", r[0].get::<_, String>(3));

    // the DBA takes a's rows: b writes them with its own sane version, on top of the held ones,
    // so a receives them as plain next changes and the 2100 versions are gone everywhere
    assert_eq!(b.scalar::<i64>("SELECT edgesync.resolve_conflicts('public.inventory', 'apply_remote')"), 2);
    c.wait_for("a got b's resolutions", DEADLINE, || {
        Ok(a.try_query("SELECT 1 FROM public.inventory WHERE qty = 2100 AND (edgesync.row_version(edgesync_version))[2] = 2")?.len() == 2)
    });
    let converged = wait_converged(&c, &a, &b);
    assert!(converged.contains("d=2100/from 2100") && converged.contains("e=2100/new in 2100"), "{converged}");
    let newest: i64 = a.scalar("SELECT max((edgesync.row_version(edgesync_version))[1]) FROM public.inventory");
    assert!(newest < wall_hlc(&a) + (60_000 << 16), "no 2100 version is left: {newest}");
    assert_eq!(b.scalar::<i64>("SELECT count(*) FROM edgesync.health WHERE component = 'clock'"), 0, "nothing held any more");
}

#[test]
fn a_promoted_standby_never_reissues_a_version_of_its_primary() {
    let mut c = Cluster::new("promote");
    let p = c.add_node("p", &[]);
    p.execute(&format!("CREATE EXTENSION edgesync; SELECT edgesync.create_node('p', 1); {TABLE};"));
    p.execute("SELECT edgesync.set_conflict_policy('public.inventory')");
    p.execute("INSERT INTO public.inventory VALUES ('before', 1, NULL)");
    let s = c.add_standby("s", &p, "s_slot");
    // after the standby was made, the primary's clock runs an hour ahead of the standby's
    c.psql(&p, "ALTER SYSTEM SET edgesync.clock_offset = '3600s'; SELECT pg_reload_conf();");
    c.wait_for("the primary's clock an hour ahead", DEADLINE, || {
        Ok(p.try_query("SELECT 1 FROM pg_settings WHERE name = 'edgesync.clock_offset' AND setting = '3600000'")?.len() == 1)
    });
    p.execute("INSERT INTO public.inventory SELECT 'p' || g, g, NULL FROM generate_series(1, 100) g");
    let issued: i64 = p.scalar("SELECT max((edgesync.row_version(edgesync_version))[1]) FROM public.inventory");
    assert!(issued > wall_hlc(&p) + (3_000_000 << 16), "the primary stamped an hour ahead");
    c.wait_for("the standby replayed every row", DEADLINE, || {
        Ok(s.try_query("SELECT count(*) FROM public.inventory")?[0].get::<_, i64>(0) == 101)
    });
    assert!(s.scalar::<bool>("SELECT pg_promote(true, 60)"), "promoted");
    s.execute("INSERT INTO public.inventory VALUES ('after_promotion', 1, NULL)");
    let first = hlc_of(&s, "after_promotion");
    assert!(first > issued, "the promoted standby's first version {first} is past every version the primary issued ({issued})");
}

#[test]
fn conflict_handling_needs_the_preloaded_library() {
    let mut c = Cluster::new("nopreload");
    let n = c.add_node("plain", &["shared_preload_libraries = ''"]);
    n.execute(&format!("CREATE EXTENSION edgesync; {TABLE};"));
    let err = n.try_connect().unwrap().batch_execute("SELECT edgesync.set_conflict_policy('public.inventory')").unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("edgesync must be loaded through shared_preload_libraries"), "{text}");
    let columns: i64 = n.scalar("SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.inventory'::regclass AND attname = 'edgesync_version'");
    assert_eq!(columns, 0, "nothing changed");
    // the health views work without it, and diagnose() says what to do
    let fix: String = n.scalar("SELECT fix FROM edgesync.diagnose() WHERE subject = 'shared_preload_libraries'");
    assert_eq!(fix, "ALTER SYSTEM SET shared_preload_libraries = 'edgesync';");
}

/// Two nodes, `a` (node id 1) and `b` (node id 2), each pushing
/// `public.inventory` (and `public.readings`, enrolled `up`, without a
/// conflict policy) to the other through edgesync's forwarder, on demand.
fn pushing_pair(test: &str) -> (Cluster, Node, Node) {
    let mut c = Cluster::new(test);
    let (a, b) = (c.add_node("a", &[]), c.add_node("b", &[]));
    for (n, id) in [(&a, 1), (&b, 2)] {
        n.execute(&format!(
            "CREATE EXTENSION edgesync; SELECT edgesync.create_node('{}', {id}); {TABLE};
             CREATE TABLE public.readings (id int PRIMARY KEY, value text);
             SELECT edgesync.add_table('public.inventory', sync => 'both');
             SELECT edgesync.add_table('public.readings', sync => 'up');
             CREATE ROLE peer_login LOGIN; GRANT edgesync_peer TO peer_login;
             SELECT edgesync.register_edge('{}', 'peer_login');",
            n.name,
            if n.name == "a" { "b" } else { "a" }
        ));
    }
    for (n, other) in [(&a, &b), (&b, &a)] {
        n.execute(&format!(
            "SELECT edgesync.add_peer('{}', 'host=127.0.0.1 port={} dbname=postgres user=peer_login connect_timeout=5', mode => 'on_demand')",
            other.name, other.port
        ));
    }
    for n in [&a, &b] {
        c.wait_for(&format!("{}'s forwarder", n.name), DEADLINE, || {
            Ok(n.try_query("SELECT 1 FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NOT NULL")?.len() == 1)
        });
    }
    (c, a, b)
}

fn push(from: &Node, to: &Node) {
    from.execute(&format!("SELECT edgesync.sync_now('{}')", to.name));
}

/// The tombstone of `sku` on `n`, as text ('' without one).
fn tombstone(n: &Node, sku: &str) -> String {
    n.scalar(&format!(
        "SELECT coalesce((SELECT version::text FROM edgesync.tombstone WHERE key->>'sku' = '{sku}'), '')"
    ))
}

/// A delete travels with its own version and the version it removed: an
/// old delete made on one node does not remove a newer update made on the
/// other, a newer delete does, whichever of the two arrives first, and
/// every node ends with the same rows and the delete's tombstone.
#[test]
fn forwarded_deletes_are_judged_by_last_writer_wins_in_both_arrival_orders() {
    let (_c, a, b) = pushing_pair("fwd_deletes");
    a.execute("INSERT INTO public.inventory SELECT s, 1, 'seed' FROM unnest(ARRAY['old_del_ab', 'old_del_ba', 'new_del_ab', 'new_del_ba']) s");
    push(&a, &b);
    // _ab: a's change reaches b first; _ba: b's reaches a first
    for (first, second, suffix) in [(&a, &b, "ab"), (&b, &a, "ba")] {
        // an old delete on a, then a newer update on b: the update stays
        a.execute(&format!("DELETE FROM public.inventory WHERE sku = 'old_del_{suffix}'"));
        b.execute(&format!("UPDATE public.inventory SET qty = 2, note = 'b' WHERE sku = 'old_del_{suffix}'"));
        // an old update on b, then a newer delete on a: the row goes
        b.execute(&format!("UPDATE public.inventory SET qty = 3, note = 'b' WHERE sku = 'new_del_{suffix}'"));
        a.execute(&format!("DELETE FROM public.inventory WHERE sku = 'new_del_{suffix}'"));
        push(first, second);
        push(second, first);
    }
    let rows = |n: &Node| -> Vec<(String, i32, String)> {
        n.query("SELECT sku, qty, note FROM public.inventory ORDER BY sku").iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
    };
    let expected = vec![("old_del_ab".to_string(), 2, "b".to_string()), ("old_del_ba".to_string(), 2, "b".to_string())];
    assert_eq!(rows(&a), expected, "a");
    assert_eq!(rows(&b), expected, "b");
    let versions = |n: &Node| -> String { n.scalar("SELECT string_agg(sku || edgesync_version::text, ',' ORDER BY sku) FROM public.inventory") };
    assert_eq!(versions(&a), versions(&b), "the same versions on both nodes");
    // the newer deletes left the same tombstone, the delete's version, on both nodes
    for sku in ["new_del_ab", "new_del_ba"] {
        let on_a = tombstone(&a, sku);
        assert!(on_a.starts_with('{') && on_a.contains(",1,"), "a's own delete: {on_a}");
        assert_eq!(tombstone(&b, sku), on_a, "{sku}: b's tombstone carries a's delete version, not the row's");
    }
    let logged = |n: &Node| -> Vec<(String, String, String)> {
        n.query("SELECT key->>'sku', conflict_type, resolution FROM edgesync.conflict_log WHERE table_name = 'inventory' ORDER BY 1")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    let t = |s: &str, c: &str, r: &str| (s.to_string(), c.to_string(), r.to_string());
    assert_eq!(
        logged(&a),
        vec![
            t("new_del_ab", "update_deleted", "keep_local"),
            t("new_del_ba", "update_deleted", "keep_local"),
            t("old_del_ab", "update_deleted", "apply_remote"),
            t("old_del_ba", "update_deleted", "apply_remote"),
        ]
    );
    assert_eq!(
        logged(&b),
        vec![
            t("new_del_ab", "delete_origin_differs", "apply_remote"),
            t("new_del_ba", "delete_origin_differs", "apply_remote"),
            t("old_del_ab", "delete_origin_differs", "keep_local"),
            t("old_del_ba", "delete_origin_differs", "keep_local"),
        ]
    );
    // the losing delete is logged with both versions
    let r = &b.query("SELECT local_version[2], remote_version[2] FROM edgesync.conflict_log WHERE key->>'sku' = 'old_del_ab'")[0];
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (2, 1));
}

/// A delete that reaches a node which no longer holds the row still leaves
/// its tombstone there (the newer of the two deletes), so an update older
/// than it that arrives later loses on every node.
#[test]
fn a_forwarded_delete_of_a_missing_row_leaves_its_tombstone() {
    let (_c, a, b) = pushing_pair("fwd_delete_missing");
    a.execute("INSERT INTO public.inventory VALUES ('x', 1, 'seed'), ('y', 1, 'seed')");
    push(&a, &b);
    // x: both delete it, b later; y: gone from b (outside edgesync's view), deleted on a
    a.execute("DELETE FROM public.inventory WHERE sku = 'x'");
    b.execute("DELETE FROM public.inventory WHERE sku = 'x'");
    b.execute("ALTER TABLE public.inventory DISABLE TRIGGER edgesync_conflict; DELETE FROM public.inventory WHERE sku = 'y';
               ALTER TABLE public.inventory ENABLE ALWAYS TRIGGER edgesync_conflict");
    a.execute("DELETE FROM public.inventory WHERE sku = 'y'");
    let (older, newer) = (tombstone(&a, "x"), tombstone(&b, "x"));
    assert_ne!(older, newer);
    push(&b, &a);
    push(&a, &b);
    assert_eq!(tombstone(&a, "x"), newer, "a keeps b's newer delete");
    assert_eq!(tombstone(&b, "x"), newer, "b keeps its own newer delete");
    assert_eq!(tombstone(&b, "y"), tombstone(&a, "y"), "b records a's delete of a row it lacked");
    // two deletes of one row agree: no conflict; a delete of a row without
    // a tombstone: delete_missing, with the delete's versions when it had
    // them (b's trigger-less delete of y had none)
    for (n, versioned) in [(&a, false), (&b, true)] {
        let logged: Vec<(String, String, String, bool)> = n
            .query("SELECT key->>'sku', conflict_type, resolution, remote_version IS NOT NULL FROM edgesync.conflict_log ORDER BY id")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(logged, vec![("y".to_string(), "delete_missing".to_string(), "keep_local".to_string(), versioned)], "{}", n.name);
    }
}

/// Two nodes insert the same key into a table without a conflict policy:
/// the receiver keeps the row it has and logs insert_exists with both rows,
/// and later changes keep flowing both ways (a duplicate key used to stop
/// the sender's batches for good), for single and bulk-applied inserts.
#[test]
fn colliding_keys_without_a_policy_are_logged_and_do_not_stop_the_peer() {
    let (c, a, b) = pushing_pair("fwd_insert_exists");
    a.execute("INSERT INTO public.readings VALUES (1, 'a')");
    b.execute("INSERT INTO public.readings VALUES (1, 'b'), (15, 'b')");
    a.execute("INSERT INTO public.readings SELECT g, 'a' FROM generate_series(10, 20) g");
    push(&a, &b);
    push(&b, &a);
    a.execute("INSERT INTO public.readings VALUES (2, 'a')");
    b.execute("INSERT INTO public.readings VALUES (3, 'b')");
    push(&a, &b);
    push(&b, &a);
    let held = |n: &Node| -> String { n.scalar("SELECT string_agg(id || '=' || value, ',' ORDER BY id) FROM public.readings") };
    let later = "2=a,3=b,10=a,11=a,12=a,13=a,14=a";
    assert_eq!(held(&a), format!("1=a,{later},15=a,16=a,17=a,18=a,19=a,20=a"), "a keeps its own 1 and 15");
    assert_eq!(held(&b), format!("1=b,{later},15=b,16=a,17=a,18=a,19=a,20=a"), "b keeps its own 1 and 15");
    let logged = |n: &Node| -> Vec<(i32, String, String, String, String)> {
        n.query(
            "SELECT (key->>'id')::int, conflict_type, resolution, local_row->>'value', remote_row->>'value'
               FROM edgesync.conflict_log WHERE table_name = 'readings' ORDER BY 1",
        )
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
    };
    let row = |id: i32, local: &str, remote: &str| (id, "insert_exists".to_string(), "keep_local".to_string(), local.to_string(), remote.to_string());
    assert_eq!(logged(&b), vec![row(1, "b", "a"), row(15, "b", "a")]);
    assert_eq!(logged(&a), vec![row(1, "a", "b"), row(15, "a", "b")]);
    for n in [&a, &b] {
        let error = n.scalar::<String>("SELECT coalesce(last_error, '') FROM edgesync.peers WHERE direction = 'push'");
        assert_eq!(error, "", "{}'s peer is not blocked", n.name);
    }
    let _ = c;
}
