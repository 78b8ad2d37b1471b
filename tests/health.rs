//! Sync-health views and diagnose() against real clusters: a primary with a
//! streaming standby, a publisher with a native subscriber, and nodes with
//! settings that diagnose() must flag.

mod common;

use common::{Client, Cluster, Node, DEADLINE};

/// (status, value) of one health check, read in `session` so that its
/// threshold settings apply.
fn check(session: &mut Client, object: &str, metric: &str) -> Result<Option<(String, Option<f64>)>, String> {
    let rows = session
        .query("SELECT status, value FROM edgesync.health WHERE object = $1 AND metric = $2", &[&object, &metric])
        .map_err(|e| e.to_string())?;
    Ok(rows.first().map(|r| (r.get(0), r.get(1))))
}

fn status_is(session: &mut Client, object: &str, metric: &str, want: &str) -> Result<bool, String> {
    Ok(check(session, object, metric)?.map(|(s, _)| s == want).unwrap_or(false))
}

/// Every check about `object` is ok (and there is at least one).
fn all_ok(node: &Node, object: &str) -> Result<bool, String> {
    let rows = node.try_query(&format!("SELECT status FROM edgesync.health WHERE object = '{object}'"))?;
    Ok(!rows.is_empty() && rows.iter().all(|r| r.get::<_, String>(0) == "ok"))
}

/// Write about `mb` megabytes of WAL.
fn write_wal(node: &Node, mb: i32) {
    node.execute(&format!(
        "INSERT INTO filler(pad) SELECT repeat(md5(g::text), 32) FROM generate_series(1, {})  g",
        mb * 1000
    ));
}

fn retained(node: &Node, slot: &str) -> i64 {
    node.scalar(&format!("SELECT retained_wal_bytes FROM edgesync.replication_slots WHERE slot_name = '{slot}'"))
}

#[test]
fn standby_lag_and_disconnection_move_health_and_recover() {
    let mut c = Cluster::new("standby");
    let primary = c.add_node("primary", &[]);
    primary.execute("CREATE EXTENSION edgesync; CREATE TABLE filler(id bigserial PRIMARY KEY, pad text)");
    let standby = c.add_standby("standby1", &primary, "standby1_slot");

    c.wait_for("standby1 streaming", DEADLINE, || {
        Ok(primary.try_query("SELECT 1 FROM edgesync.streaming_replication WHERE name = 'standby1' AND state = 'streaming' AND kind = 'physical'")?.len() == 1)
    });
    c.wait_for("standby1 checks ok on the primary", DEADLINE, || all_ok(&primary, "standby1"));
    c.wait_for("the standby's wal receiver streams", DEADLINE, || {
        Ok(standby.try_query("SELECT 1 FROM edgesync.wal_receiver WHERE status = 'streaming' AND received_lsn IS NOT NULL")?.len() == 1)
    });
    let receiver_status: String = standby.scalar("SELECT status FROM edgesync.health WHERE component = 'wal_receiver' AND metric = 'status'");
    assert_eq!(receiver_status, "ok");

    // Lag while connected: pause replay, write WAL, watch replay lag bytes cross both levels.
    let mut monitor = primary.connect();
    monitor.batch_execute("SET edgesync.lag_warning_bytes = '1MB'; SET edgesync.lag_critical_bytes = '8MB'").unwrap();
    standby.execute("SELECT pg_wal_replay_pause()");
    write_wal(&primary, 3);
    c.wait_for("replay paused on the standby", DEADLINE, || {
        Ok(standby.try_query("SELECT 1 WHERE pg_get_wal_replay_pause_state() = 'paused'")?.len() == 1)
    });
    write_wal(&primary, 1);
    c.wait_for("replay lag warning", DEADLINE, || status_is(&mut monitor, "standby1", "replay_lag_bytes", "warning"));
    let (_, lag) = check(&mut monitor, "standby1", "replay_lag_bytes").unwrap().unwrap();
    assert!(lag.unwrap() >= 1024.0 * 1024.0, "lag {lag:?} below the warning level");
    write_wal(&primary, 10);
    c.wait_for("replay lag critical", DEADLINE, || status_is(&mut monitor, "standby1", "replay_lag_bytes", "critical"));
    // The standby sees its own replay lag once it has received what it does not replay.
    c.wait_for("the standby's own replay lag above 8MB", DEADLINE, || {
        Ok(standby
            .try_query("SELECT 1 FROM edgesync.wal_receiver WHERE replay_paused AND replay_lag_bytes > 8 * 1024 * 1024")?
            .len()
            == 1)
    });
    standby.execute("SELECT pg_wal_replay_resume()");
    c.wait_for("standby1 ok after replay resumed", DEADLINE, || {
        Ok(status_is(&mut monitor, "standby1", "replay_lag_bytes", "ok")? && status_is(&mut monitor, "standby1", "state", "ok")?)
    });

    // Disconnection: the standby's slot goes inactive (critical) and holds ever more WAL.
    c.stop(&standby);
    c.wait_for("standby1 gone from streaming_replication", DEADLINE, || {
        Ok(primary.try_query("SELECT 1 FROM edgesync.streaming_replication WHERE name = 'standby1'")?.is_empty())
    });
    c.wait_for("inactive slot is critical", DEADLINE, || status_is(&mut monitor, "standby1_slot", "inactive_seconds", "critical"));
    let before = retained(&primary, "standby1_slot");
    write_wal(&primary, 10);
    let after = retained(&primary, "standby1_slot");
    assert!(after > before + 8 * 1024 * 1024, "retained WAL grew: {before} -> {after}");
    assert!(status_is(&mut monitor, "standby1_slot", "retained_wal_bytes", "critical").unwrap());
    let at_risk: bool = monitor
        .query_one("SELECT disk_at_risk FROM edgesync.replication_slots WHERE slot_name = 'standby1_slot'", &[])
        .unwrap()
        .get(0);
    assert!(at_risk, "an inactive slot above the critical size puts the disk at risk");

    // Reconnection brings everything back to ok.
    c.start(&standby);
    c.wait_for("all standby checks ok again", DEADLINE, || {
        let rows = monitor
            .query("SELECT status FROM edgesync.health WHERE object IN ('standby1', 'standby1_slot')", &[])
            .map_err(|e| e.to_string())?;
        Ok(rows.len() >= 6 && rows.iter().all(|r| r.get::<_, String>(0) == "ok"))
    });

    // The primary goes away: on the standby, its WAL receiver check turns critical.
    c.stop(&primary);
    c.wait_for("the standby's receiver critical", DEADLINE, || {
        let rows = standby.try_query("SELECT status, detail FROM edgesync.health WHERE component = 'wal_receiver' AND metric = 'status'")?;
        Ok(rows.first().is_some_and(|r| r.get::<_, String>(0) == "critical" && r.get::<_, String>(1).contains("not connected to its primary")))
    });
    c.start(&primary);
    c.wait_for("the standby's receiver ok again", DEADLINE, || {
        let rows = standby.try_query("SELECT status FROM edgesync.health WHERE component = 'wal_receiver' AND metric = 'status'")?;
        Ok(rows.first().is_some_and(|r| r.get::<_, String>(0) == "ok"))
    });
}

#[test]
fn subscription_health_follows_both_ends() {
    let mut c = Cluster::new("subscription");
    let publisher = c.add_node("publisher", &[]);
    let subscriber = c.add_node("subscriber", &["wal_retrieve_retry_interval = '1s'"]);
    for n in [&publisher, &subscriber] {
        n.execute("CREATE EXTENSION edgesync; CREATE TABLE readings(id bigint PRIMARY KEY, v float8); CREATE TABLE filler(id bigserial PRIMARY KEY, pad text)");
    }
    publisher.execute("CREATE PUBLICATION readings_pub FOR TABLE readings");
    subscriber.execute(&format!(
        "CREATE SUBSCRIPTION readings_sub CONNECTION '{} password=never-shown' PUBLICATION readings_pub",
        publisher.conninfo()
    ));
    publisher.execute("INSERT INTO readings SELECT g, g * 0.5 FROM generate_series(1, 100) g");
    c.wait_for("100 rows replicated", DEADLINE, || Ok(subscriber.try_query("SELECT 1 FROM readings")?.len() == 100));
    c.wait_for("publisher sees the logical walsender", DEADLINE, || {
        Ok(publisher.try_query("SELECT 1 FROM edgesync.streaming_replication WHERE name = 'readings_sub' AND kind = 'logical' AND state = 'streaming'")?.len() == 1)
    });
    c.wait_for("subscription ok on the subscriber", DEADLINE, || all_ok(&subscriber, "readings_sub"));
    c.wait_for("slot ok on the publisher", DEADLINE, || all_ok(&publisher, "readings_sub"));
    let row = &subscriber.query(
        "SELECT worker_pid IS NOT NULL, received_lsn IS NOT NULL, seconds_since_last_message >= 0, apply_error_count, confl_insert_exists
           FROM edgesync.subscriptions WHERE name = 'readings_sub'",
    )[0];
    assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1) && row.get::<_, bool>(2));
    assert_eq!(row.get::<_, i64>(3), 0);
    let confl: Option<i64> = row.get(4);
    let pg18: bool = subscriber.scalar("SELECT current_setting('server_version_num')::int >= 180000");
    assert_eq!(confl.is_some(), pg18, "confl_* counters exist exactly on 18");

    // No view shows the connection string.
    let views_text: String = subscriber.scalar(
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM edgesync.subscriptions) t",
    );
    assert!(!views_text.contains("never-shown"));

    // Subscriber down: the publisher's slot is inactive and retains WAL.
    let mut monitor = publisher.connect();
    monitor.batch_execute("SET edgesync.lag_warning_bytes = '1MB'; SET edgesync.lag_critical_bytes = '4MB'").unwrap();
    c.stop(&subscriber);
    c.wait_for("publisher slot critical", DEADLINE, || status_is(&mut monitor, "readings_sub", "inactive_seconds", "critical"));
    write_wal(&publisher, 6);
    publisher.execute("INSERT INTO readings SELECT g, g FROM generate_series(101, 200) g");
    c.wait_for("retained WAL critical", DEADLINE, || status_is(&mut monitor, "readings_sub", "retained_wal_bytes", "critical"));
    c.start(&subscriber);
    c.wait_for("200 rows after the subscriber came back", DEADLINE, || Ok(subscriber.try_query("SELECT 1 FROM readings")?.len() == 200));
    c.wait_for("publisher slot ok again", DEADLINE, || {
        let rows = monitor
            .query("SELECT status FROM edgesync.health WHERE object = 'readings_sub'", &[])
            .map_err(|e| e.to_string())?;
        Ok(!rows.is_empty() && rows.iter().all(|r| r.get::<_, String>(0) == "ok"))
    });

    // Publisher down: the subscription has no apply worker (critical), then recovers.
    c.stop(&publisher);
    c.wait_for("subscription worker critical", DEADLINE, || {
        let rows = subscriber.try_query("SELECT status FROM edgesync.health WHERE object = 'readings_sub' AND metric = 'worker'")?;
        Ok(rows.first().map(|r| r.get::<_, String>(0) == "critical").unwrap_or(false))
    });
    c.start(&publisher);
    c.wait_for("apply worker back after the publisher came back", DEADLINE, || {
        let rows = subscriber.try_query("SELECT status FROM edgesync.health WHERE object = 'readings_sub' AND metric = 'worker'")?;
        Ok(rows.first().map(|r| r.get::<_, String>(0) == "ok").unwrap_or(false))
    });
    // The lost connection was counted as an error: a warning until the DBA resets
    // the counter with the fix diagnose() offers.
    reset_errors_with_diagnose_fix(&c, &subscriber);
    c.wait_for("subscription all ok after the reset", DEADLINE, || all_ok(&subscriber, "readings_sub"));

    // A real apply error (a key that exists on the subscriber) shows in the counters.
    subscriber.execute("INSERT INTO readings VALUES (1000, 0)");
    publisher.execute("INSERT INTO readings VALUES (1000, 1)");
    c.wait_for("apply error counted", DEADLINE, || {
        let rows = subscriber.try_query("SELECT status FROM edgesync.health WHERE object = 'readings_sub' AND metric = 'error_count'")?;
        Ok(rows.first().map(|r| r.get::<_, String>(0) == "warning").unwrap_or(false))
    });
    if pg18 {
        let n: i64 = subscriber.scalar("SELECT confl_insert_exists FROM edgesync.subscriptions WHERE name = 'readings_sub'");
        assert!(n >= 1, "insert_exists counted");
    }
    subscriber.execute("DELETE FROM readings WHERE id = 1000");
    c.wait_for("the publisher's row arrives once the local one is gone", DEADLINE, || {
        Ok(subscriber.try_query("SELECT 1 FROM readings WHERE id = 1000 AND v = 1")?.len() == 1)
    });
    reset_errors_with_diagnose_fix(&c, &subscriber);
    c.wait_for("subscription all ok again", DEADLINE, || all_ok(&subscriber, "readings_sub"));
}

/// Run the fix diagnose() gives for the subscription's error counter, through psql.
fn reset_errors_with_diagnose_fix(c: &Cluster, subscriber: &Node) {
    let fix: String = subscriber.scalar(
        "SELECT fix FROM edgesync.diagnose() WHERE subject = 'subscription:readings_sub' AND finding LIKE '%error%'",
    );
    c.psql(subscriber, &fix);
}

#[test]
fn diagnose_flags_wal_level_and_the_fix_works() {
    let mut c = Cluster::new("diagnose-wal");
    let node = c.add_node("replica_level", &["wal_level = replica"]);
    node.execute("CREATE EXTENSION edgesync");
    let rows = node.query("SELECT severity, fix FROM edgesync.diagnose() WHERE subject = 'wal_level'");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "critical");
    let fix: String = rows[0].get(1);
    assert_eq!(fix, "ALTER SYSTEM SET wal_level = 'logical';");
    c.psql(&node, &fix);
    c.restart(&node);
    assert_eq!(node.scalar::<String>("SHOW wal_level"), "logical");
    assert!(node.query("SELECT 1 FROM edgesync.diagnose() WHERE subject = 'wal_level'").is_empty());
}

#[test]
fn diagnose_flags_an_inactive_slot_holding_wal_and_the_fixes_work() {
    let mut c = Cluster::new("diagnose-slot");
    let node = c.add_node("slots", &[]);
    node.execute("CREATE EXTENSION edgesync; CREATE TABLE filler(id bigserial PRIMARY KEY, pad text)");
    node.execute("SELECT pg_create_logical_replication_slot('forgotten_edge', 'pgoutput')");
    write_wal(&node, 3);

    let mut session = node.connect();
    session.batch_execute("SET edgesync.lag_warning_bytes = '1MB'").unwrap();
    let findings = |s: &mut Client| -> Vec<(String, String, String)> {
        s.query("SELECT severity, subject, fix FROM edgesync.diagnose()", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    let before = findings(&mut session);
    let slot = before.iter().find(|f| f.1 == "slot:forgotten_edge").unwrap_or_else(|| panic!("no slot finding in {before:?}"));
    assert_eq!(slot.0, "warning");
    assert_eq!(slot.2, "SELECT pg_drop_replication_slot('forgotten_edge');");
    let cap = before.iter().find(|f| f.1 == "max_slot_wal_keep_size").expect("max_slot_wal_keep_size finding");

    // the cap's fix alone clears the cap's finding, while the slot is still there
    c.psql(&node, &cap.2);
    c.wait_for("the cap applied", DEADLINE, || Ok(node.scalar::<String>("SHOW max_slot_wal_keep_size") == "10GB"));
    let capped = findings(&mut session);
    assert!(capped.iter().all(|f| f.1 != "max_slot_wal_keep_size"), "{capped:?}");
    assert!(capped.iter().any(|f| f.1 == "slot:forgotten_edge"), "the slot finding stays until its own fix: {capped:?}");
    c.psql(&node, &slot.2);
    let after = findings(&mut session);
    assert!(after.iter().all(|f| f.1 != "slot:forgotten_edge" && f.1 != "max_slot_wal_keep_size"), "{after:?}");
}

/// A client of `node` logged in as `role` (trust authentication).
fn connect_as(node: &Node, role: &str) -> Client {
    Client::connect(&format!("host=127.0.0.1 port={} user={role} dbname=postgres", node.port), common::NoTls)
        .unwrap_or_else(|e| panic!("{role} on {}: {e}", node.name))
}

/// (status, detail) of the missing-downstream check of `name`, read as `session`.
fn downstream(session: &mut Client, name: &str) -> Result<Option<(String, String)>, String> {
    let rows = session
        .query("SELECT status, detail FROM edgesync.health WHERE component = 'downstream' AND object = $1", &[&name])
        .map_err(|e| e.to_string())?;
    Ok(rows.first().map(|r| (r.get(0), r.get(1))))
}

fn downstream_status_is(session: &mut Client, name: &str, want: &str) -> Result<bool, String> {
    Ok(downstream(session, name)?.is_some_and(|(status, _)| status == want))
}

/// A standby streaming without a replication slot: made with one (the
/// harness's way), then switched off it on the standby and the slot dropped.
fn slotless_standby(c: &mut Cluster, primary: &Node, name: &str) -> Node {
    let boot_slot = format!("{name}_boot");
    let standby = c.add_standby(name, primary, &boot_slot);
    standby.execute("ALTER SYSTEM RESET primary_slot_name");
    standby.execute("SELECT pg_reload_conf()");
    c.wait_for("the standby streams without a slot", DEADLINE, || {
        Ok(primary
            .try_query(&format!("SELECT 1 FROM edgesync.streaming_replication WHERE name = '{name}' AND state = 'streaming' AND slot_name IS NULL"))?
            .len()
            == 1)
    });
    c.wait_for("the boot slot released", DEADLINE, || {
        Ok(primary.try_query(&format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = '{boot_slot}' AND NOT active"))?.len() == 1)
    });
    primary.execute(&format!("SELECT pg_drop_replication_slot('{boot_slot}')"));
    standby
}

#[test]
fn a_slotless_standby_that_vanishes_is_reported_until_it_returns_or_is_forgotten() {
    let mut c = Cluster::new("downstreams");
    let primary = c.add_node("primary", &[]);
    primary.execute("CREATE EXTENSION edgesync; CREATE ROLE watcher LOGIN IN ROLE pg_monitor; CREATE ROLE dba LOGIN IN ROLE edgesync_admin");
    // short levels keep the test short; ALTER SYSTEM runs outside a transaction block, one at a time
    primary.execute("ALTER SYSTEM SET edgesync.lag_warning_seconds = '2s'");
    primary.execute("ALTER SYSTEM SET edgesync.lag_critical_seconds = '5s'");
    primary.execute("SELECT pg_reload_conf()");
    let standby = slotless_standby(&mut c, &primary, "standby1");
    // a monitoring role with nothing but pg_monitor reads health (and so records what it sees)
    let mut watcher = connect_as(&primary, "watcher");
    c.wait_for("the short thresholds in force", DEADLINE, || {
        Ok(watcher.query_one("SHOW edgesync.lag_critical_seconds", &[]).map_err(|e| e.to_string())?.get::<_, String>(0) == "5s")
    });
    c.wait_for("health all ok about the streaming standby, read by the monitoring role", DEADLINE, || {
        let rows = watcher.query("SELECT status FROM edgesync.health WHERE object = 'standby1'", &[]).map_err(|e| e.to_string())?;
        Ok(!rows.is_empty() && rows.iter().all(|r| r.get::<_, String>(0) == "ok"))
    });

    // Gone without a trace in pg_stat_replication: health says so, then louder.
    c.stop(&standby);
    c.wait_for("standby1 reported missing", DEADLINE, || {
        if downstream_status_is(&mut watcher, "standby1", "warning")? {
            return Ok(true);
        }
        let not_ok = watcher.query("SELECT 1 FROM edgesync.health WHERE status <> 'ok'", &[]).map_err(|e| e.to_string())?;
        Err(format!("{} check(s) not ok, none about standby1 missing", not_ok.len()))
    });
    let (_, detail) = downstream(&mut watcher, "standby1").unwrap().unwrap();
    for part in ["physical standby \"standby1\"", "127.0.0.1", "(no slot)", "not connected since", "forget_downstream('standby1')"] {
        assert!(detail.contains(part), "{part:?} missing from {detail:?}");
    }
    c.wait_for("standby1 missing is critical", DEADLINE, || downstream_status_is(&mut watcher, "standby1", "critical"));
    // a read-only transaction records nothing but still judges
    watcher.batch_execute("BEGIN READ ONLY").unwrap();
    assert!(downstream_status_is(&mut watcher, "standby1", "critical").unwrap());
    watcher.batch_execute("COMMIT").unwrap();

    // It comes back: ok again.
    c.start(&standby);
    c.wait_for("standby1 ok after it came back", DEADLINE, || downstream_status_is(&mut watcher, "standby1", "ok"));
    let (kind, slot, addr): (String, Option<String>, String) = {
        let r = primary.query("SELECT kind, slot_name, host(client_addr) FROM edgesync.downstream WHERE name = 'standby1'");
        (r[0].get(0), r[0].get(1), r[0].get(2))
    };
    assert_eq!((kind.as_str(), slot, addr.as_str()), ("physical", None, "127.0.0.1"));
    // the standby itself remembers nothing (read-only) and says so instead of failing
    let on_standby = standby.query("SELECT metric, status FROM edgesync.health WHERE component = 'downstream'");
    assert_eq!(on_standby.len(), 1);
    assert_eq!((on_standby[0].get::<_, String>(0), on_standby[0].get::<_, String>(1)), ("tracking".to_string(), "ok".to_string()));

    // Retired on purpose: forgotten by an edgesync_admin, never by a monitor, never by a typo.
    c.stop(&standby);
    c.wait_for("standby1 missing again", DEADLINE, || downstream_status_is(&mut watcher, "standby1", "critical"));
    let denied = watcher.batch_execute("SELECT edgesync.forget_downstream('standby1')").unwrap_err();
    assert_eq!(denied.code(), Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{denied:?}");
    let mut dba = connect_as(&primary, "dba");
    let unknown = dba.batch_execute("SELECT edgesync.forget_downstream('standby9')").unwrap_err();
    assert_eq!(unknown.code(), Some(&postgres::error::SqlState::UNDEFINED_OBJECT), "{unknown:?}");
    assert!(common::db_message(&unknown).contains("standby9"), "{unknown:?}");
    dba.batch_execute("SELECT edgesync.forget_downstream('standby1')").unwrap();
    assert_eq!(downstream(&mut watcher, "standby1").unwrap(), None, "forgotten: no row about it");
    assert!(primary.query("SELECT 1 FROM edgesync.health WHERE status <> 'ok'").is_empty(), "nothing else is wrong");

    // A forgotten standby that comes back is remembered again.
    c.start(&standby);
    c.wait_for("standby1 remembered and ok", DEADLINE, || downstream_status_is(&mut watcher, "standby1", "ok"));
}
