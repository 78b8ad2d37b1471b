//! The forwarder, push side: edges push their changes up to a cloud through
//! edgesync's own transport (background workers, libpq, apply_batch), on
//! real clusters.

mod common;

use std::time::Duration;

use common::{kill9_worker, set_fault_point, Cluster, Node, DEADLINE};

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
        cloud.execute(&format!("SELECT edgesync.register_edge('{name}', 'edge_login')"));
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
            Ok(e.try_query("SELECT 1 FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NOT NULL")?.len() == 1)
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
    let r = e.try_query(&format!("SELECT coalesce({column}::text, '') FROM edgesync.peers WHERE direction = 'push' AND peer = 'cloud'"))?;
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
        // the forwarder reads its slot between rounds too: it is not a downstream gone
        let slot_alarms: i64 = e.scalar("SELECT count(*) FROM edgesync.health WHERE component = 'replication_slot' AND status <> 'ok'");
        assert_eq!(slot_alarms, 0, "a healthy peer's slot is not an alarm");
        // a realtime forwarder decodes its slot in its own process: the slot is
        // held by the forwarder, with no walsender, and shows as no downstream
        let held: i64 = e.scalar(
            "SELECT count(*) FROM pg_replication_slots
              WHERE slot_name = 'edgesync_cloud' AND active_pid IN (SELECT worker_pid FROM edgesync.peers WHERE peer = 'cloud')",
        );
        assert_eq!(held, 1, "the forwarder holds its slot and decodes it itself");
        let walsenders: i64 = e.scalar("SELECT count(*) FROM pg_stat_replication");
        assert_eq!(walsenders, 0, "no walsender reads the slot for the forwarder");
        let shown: i64 = e.scalar("SELECT count(*) FROM edgesync.streaming_replication");
        assert_eq!(shown, 0, "the forwarder's own stream is not a downstream");
    }
    // the cloud's feed worker streams its slot as well, and that is no downstream either
    c.wait_for("the feed worker to stream its slot", DEADLINE, || {
        Ok(cloud.try_query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'edgesync_feed' AND active")?.len() == 1)
    });
    assert_eq!(cloud.scalar::<i64>("SELECT count(*) FROM edgesync.streaming_replication"), 0);
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
    c.wait_for("edgesync.health to report the peer unreachable", DEADLINE, || {
        Ok(e.try_query("SELECT 1 FROM edgesync.health WHERE component = 'peer' AND metric = 'unreachable_seconds' AND detail LIKE '%last error:%'")?.len() == 1)
    });
    let refused = e.try_query("SELECT edgesync.sync_now('cloud')").expect_err("sync_now raises the round's error");
    assert!(refused.contains("sync with peer \"cloud\" failed"), "{refused}");
    c.start(&cloud);
    wait_arrived(&c, &cloud, e, DRAIN);
    c.wait_for("the peer to recover", DEADLINE, || Ok(peer_field(e, "consecutive_failures")? == "0"));
    assert_eq!(readings_of(&cloud, &e.name).unwrap().0, 21_000);
}

/// The confirmed position of the edge's slot for the cloud.
fn slot_confirmed(e: &Node) -> String {
    e.scalar("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'edgesync_cloud'")
}

#[derive(Clone, Copy, Debug)]
enum Victim {
    Forwarder,
    EdgeServer,
    CloudServer,
}

/// kill -9 at three points of a push, of each of the three processes that
/// take part: after every restart the rows are on the cloud exactly once.
#[test]
fn kill9_at_every_point_of_a_push_loses_and_doubles_nothing() {
    let (c, cloud, edges) = hub("kill9", 1, "realtime");
    let e = &edges[0];
    let mut next_id = 1i64;
    for point in ["before_send", "during_apply", "before_advance"] {
        for victim in [Victim::Forwarder, Victim::EdgeServer, Victim::CloudServer] {
            let what = format!("{point} / {victim:?}");
            // the cloud blocks the apply on a lock: the batch is inside apply_batch
            let mut locker = (point == "during_apply").then(|| {
                let mut client = cloud.connect();
                client.batch_execute("BEGIN; LOCK TABLE public.sensor_readings IN SHARE MODE").unwrap();
                client
            });
            if point != "during_apply" {
                set_fault_point(e, Some(point));
            }
            write_readings(e, next_id, 1_000, 100);
            next_id += 1_000;
            if point == "during_apply" {
                c.wait_for(&format!("{what}: apply_batch waiting on the lock"), DEADLINE, || {
                    Ok(cloud.try_query("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%apply_batch%'")?.len() == 1)
                });
            } else {
                c.wait_for(&format!("{what}: forwarder held"), DEADLINE, || Ok(peer_field(e, "state")? == "held"));
            }
            // Where the push stands tells the three points apart: nothing of
            // this batch on the cloud before it is sent or while its apply
            // waits; all of it once the cloud committed, before the slot moves.
            // (a realtime forwarder may have peeked part of the write: at
            // before_advance the cloud holds what that peek sent)
            let held_at = readings_of(&cloud, &e.name).unwrap().0;
            let before_this_write = next_id - 1 - 1_000;
            if point == "before_advance" {
                assert!(held_at > before_this_write && held_at < next_id, "{what}: the cloud committed the batch before the slot moved: {held_at}");
            } else {
                assert_eq!(held_at, before_this_write, "{what}: nothing of this write on the cloud while held");
            }
            let slot_before = slot_confirmed(e);
            match victim {
                Victim::Forwarder => {
                    let pid: i32 = peer_field(e, "worker_pid").unwrap().parse().unwrap();
                    kill9_worker(&c, e, pid, &what);
                }
                Victim::EdgeServer => {
                    c.kill9(e);
                    c.start(e);
                }
                Victim::CloudServer => {
                    c.kill9(&cloud);
                    locker = None;
                    c.start(&cloud);
                }
            }
            drop(locker.take());
            set_fault_point(e, None);
            c.wait_for(&format!("{what}: all rows on the cloud"), DRAIN, || Ok(readings_of(&cloud, &e.name)? == readings_of(e, &e.name)?));
            e.execute("SELECT edgesync.sync_now('cloud')");
            let (count, _) = readings_of(&cloud, &e.name).unwrap();
            assert_eq!(count, next_id - 1, "{what}: every row once");
            // the slot moved to what the cloud confirmed, past this batch
            let confirmed: String = cloud.scalar("SELECT remote_lsn::text FROM pg_replication_origin_status WHERE external_id = 'edgesync_edge1'");
            let moved: bool = e.scalar(&format!(
                "SELECT confirmed_flush_lsn >= '{confirmed}'::pg_lsn AND confirmed_flush_lsn > '{slot_before}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'edgesync_cloud'"
            ));
            assert!(moved, "{what}: the slot moved to the cloud's confirmed {confirmed} (it was at {slot_before})");
            if point == "before_advance" && !matches!(victim, Victim::CloudServer) {
                // a new forwarder (its counters start at 0) learns from hello what
                // the cloud has, moves the slot past it and sends only the rest
                let sent: i64 = peer_field(e, "rows_sent").unwrap().parse().unwrap();
                assert_eq!(sent, next_id - 1 - held_at, "{what}: what the cloud had is not sent again");
            }
        }
    }
}

#[test]
fn conflicting_pushes_converge_on_the_newer_write() {
    let (_cluster, cloud, edges) = hub("conflict_push", 2, "on_demand");
    let (e1, e2) = (&edges[0], &edges[1]);
    // A: edge1 writes first, edge2 later; edge2's push arrives first
    e1.execute("INSERT INTO public.inventory VALUES ('A', 1, 'edge1')");
    e2.execute("INSERT INTO public.inventory VALUES ('A', 2, 'edge2')");
    // B: the same, but the older write arrives first
    e1.execute("INSERT INTO public.inventory VALUES ('B', 1, 'edge1')");
    e2.execute("INSERT INTO public.inventory VALUES ('B', 2, 'edge2'); UPDATE public.inventory SET qty = 3 WHERE sku = 'B'");
    e2.execute("SELECT edgesync.sync_now('cloud')");
    e1.execute("SELECT edgesync.sync_now('cloud')");
    let held: Vec<(String, i32, String)> = cloud
        .query("SELECT sku, qty, note FROM public.inventory ORDER BY sku")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(held, vec![("A".into(), 2, "edge2".into()), ("B".into(), 3, "edge2".into())]);
    let logged: Vec<(String, String, String)> = cloud
        .query("SELECT key->>'sku', conflict_type, resolution FROM edgesync.conflict_log ORDER BY 1")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        logged,
        vec![("A".into(), "insert_exists".into(), "keep_local".into()), ("B".into(), "insert_exists".into(), "keep_local".into())]
    );
    // the other order: the newer write arrives second and wins
    e1.execute("UPDATE public.inventory SET qty = 10, note = 'edge1 late' WHERE sku = 'A'");
    e1.execute("SELECT edgesync.sync_now('cloud')");
    let a: i32 = cloud.scalar("SELECT qty FROM public.inventory WHERE sku = 'A'");
    assert_eq!(a, 10, "edge1's later update wins over edge2's older row");
    let remote_wins: i64 = cloud.scalar("SELECT count(*) FROM edgesync.conflict_log WHERE key->>'sku' = 'A' AND resolution = 'apply_remote'");
    assert_eq!(remote_wins, 1);
}

/// A batch as an edge would send it (format 1), built by hand from the
/// documented layout: one transaction inserting `(edge, id)` rows into
/// `table`.
fn handmade_batch(sender: &str, table: &str, end_lsn: u64, ids: &[i64], compress: bool, format: u16) -> Vec<u8> {
    handmade_batch_rows(sender, table, end_lsn, ids, compress, format, 5)
}

/// As `handmade_batch`, with rows of `width` values (the relation has 5 columns).
fn handmade_batch_rows(sender: &str, table: &str, end_lsn: u64, ids: &[i64], compress: bool, format: u16, width: usize) -> Vec<u8> {
    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    let mut relation = vec![b'R'];
    relation.extend_from_slice(&16_384u32.to_be_bytes());
    cstr(&mut relation, "public");
    cstr(&mut relation, table);
    relation.push(b'd');
    let cols: [(&str, u32); 5] = [("edge", 25), ("id", 20), ("sensor", 23), ("taken_at", 1184), ("value", 701)];
    relation.extend_from_slice(&(cols.len() as u16).to_be_bytes());
    for (i, (name, oid)) in cols.iter().enumerate() {
        relation.push(u8::from(i < 2));
        cstr(&mut relation, name);
        relation.extend_from_slice(&oid.to_be_bytes());
        relation.extend_from_slice(&(-1i32).to_be_bytes());
    }
    let mut messages = vec![relation];
    for id in ids {
        let mut insert = vec![b'I'];
        insert.extend_from_slice(&16_384u32.to_be_bytes());
        insert.push(b'N');
        insert.extend_from_slice(&(width as u16).to_be_bytes());
        for v in [sender.to_string(), id.to_string(), "7".into(), "2026-01-01 00:00:00+00".into(), "1.5".into()].into_iter().take(width) {
            insert.push(b't');
            insert.extend_from_slice(&(v.len() as u32).to_be_bytes());
            insert.extend_from_slice(v.as_bytes());
        }
        messages.push(insert);
    }
    let mut payload = Vec::new();
    payload.extend_from_slice(&(sender.len() as u16).to_be_bytes());
    payload.extend_from_slice(sender.as_bytes());
    payload.extend_from_slice(&1u32.to_be_bytes());
    payload.extend_from_slice(&end_lsn.to_be_bytes());
    payload.extend_from_slice(&0i64.to_be_bytes());
    payload.extend_from_slice(&u16::MAX.to_be_bytes());
    payload.extend_from_slice(&(messages.len() as u32).to_be_bytes());
    for m in &messages {
        payload.extend_from_slice(&(m.len() as u32).to_be_bytes());
        payload.extend_from_slice(m);
    }
    let body = if compress { zstd::bulk::compress(&payload, 3).unwrap() } else { payload.clone() };
    let mut out = b"EDGB".to_vec();
    out.extend_from_slice(&format.to_be_bytes());
    out.extend_from_slice(&u16::from(compress).to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn apply_batch_refuses_bad_input_and_applies_a_resent_batch_once() {
    let mut cluster = Cluster::new("bad_batches");
    let cloud = cluster.add_node("cloud", &[]);
    cloud.execute(&format!(
        "CREATE EXTENSION edgesync; SELECT edgesync.create_node('cloud', 100); {READINGS};
         CREATE TABLE public.not_enrolled (edge text, id bigint, sensor int, taken_at timestamptz, value float8, PRIMARY KEY (edge, id));
         SELECT edgesync.add_table('public.sensor_readings', sync => 'up');
         CREATE ROLE edge_login LOGIN; GRANT edgesync_peer TO edge_login; CREATE ROLE nobody LOGIN;
         SELECT edgesync.register_edge(e, 'edge_login') FROM unnest(ARRAY['edge8', 'edge9', 'edge10']) e;"
    ));
    let as_role = |role: &str| {
        postgres::Client::connect(&format!("host=127.0.0.1 port={} user={role} dbname=postgres", cloud.port), postgres::NoTls).unwrap()
    };
    let mut peer = as_role("edge_login");
    let count = || -> i64 { cloud.scalar("SELECT count(*) FROM public.sensor_readings") };
    let good = handmade_batch("edge9", "sensor_readings", 1_000, &[1, 2, 3], true, 1);

    let mut refused = |bytes: &[u8], why: &str| {
        let e = peer.query_one("SELECT edgesync.apply_batch($1)::text", &[&bytes]).expect_err(why);
        let message = common::db_message(&e);
        assert!(message.starts_with("edgesync: refused batch"), "{why}: {message}");
        // the backend is alive and nothing was applied
        assert_eq!(peer.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0), 1);
        message
    };
    refused(b"", "empty");
    refused(b"garbage, not a batch at all", "garbage");
    refused(&good[..good.len() / 2], "truncated");
    assert!(refused(&handmade_batch("edge9", "sensor_readings", 1_000, &[1], true, 2), "wrong version").contains("unsupported batch format 2"));
    let mut flipped = handmade_batch("edge9", "sensor_readings", 1_000, &[1], false, 1);
    let last = flipped.len() - 1;
    flipped[last] ^= 0x55;
    assert!(refused(&flipped, "wrong checksum").contains("checksum"));
    assert!(refused(&handmade_batch("edge9", "not_enrolled", 1_000, &[1], true, 1), "not enrolled").contains("not enrolled"));
    assert!(refused(&handmade_batch("bad name!", "sensor_readings", 1_000, &[1], true, 1), "bad sender").contains("not a node name"));
    assert!(refused(&handmade_batch_rows("edge9", "sensor_readings", 1_000, &[1], true, 1, 3), "short row").contains("columns"));
    assert_eq!(count(), 0);

    // a good batch applies, the same batch again changes nothing
    let lsn: String = peer.query_one("SELECT edgesync.apply_batch($1)::text", &[&good]).unwrap().get(0);
    assert_eq!(lsn, "0/3E8");
    assert_eq!(count(), 3);
    let again: String = peer.query_one("SELECT edgesync.apply_batch($1)::text", &[&good]).unwrap().get(0);
    assert_eq!(again, "0/3E8");
    assert_eq!(count(), 3);
    // one batch per transaction and never inside a savepoint: the origin's
    // progress is recorded at commit, and would outlive a rolled-back
    // savepoint or let a second copy of a batch apply
    let next = handmade_batch("edge9", "sensor_readings", 2_000, &[4, 5], true, 1);
    let other = handmade_batch("edge8", "sensor_readings", 2_000, &[6], true, 1);
    let refused_in = |peer: &mut postgres::Client, setup: &[&[u8]], bytes: &[u8]| -> String {
        let mut tx = peer.transaction().unwrap();
        for b in setup {
            tx.query_one("SELECT edgesync.apply_batch($1)::text", &[b]).unwrap();
        }
        let message = common::db_message(&tx.query_one("SELECT edgesync.apply_batch($1)::text", &[&bytes]).expect_err("refused"));
        tx.rollback().unwrap();
        message
    };
    let in_savepoint = {
        let mut tx = peer.transaction().unwrap();
        tx.batch_execute("SAVEPOINT s").unwrap();
        let m = common::db_message(&tx.query_one("SELECT edgesync.apply_batch($1)::text", &[&next]).expect_err("in a savepoint"));
        tx.rollback().unwrap();
        m
    };
    assert!(in_savepoint.contains("cannot run inside a savepoint"), "{in_savepoint}");
    let twice = refused_in(&mut peer, &[&next], &next);
    assert!(twice.contains("one batch per transaction"), "{twice}");
    let two_senders = refused_in(&mut peer, &[&next], &other);
    assert!(two_senders.contains("another origin"), "{two_senders}");
    assert_eq!(count(), 3, "nothing of the refused transactions stays");
    let progress: String = cloud.scalar("SELECT remote_lsn::text FROM pg_replication_origin_status WHERE external_id = 'edgesync_edge9'");
    assert_eq!(progress, "0/3E8", "the origin's progress did not move either");

    // a transaction that applied a batch and then rolled back, or failed at
    // COMMIT (a deferred constraint), records nothing: the batch applies when sent again
    let progress = || -> String { cloud.scalar("SELECT remote_lsn::text FROM pg_replication_origin_status WHERE external_id = 'edgesync_edge9'") };
    {
        let mut tx = peer.transaction().unwrap();
        tx.query_one("SELECT edgesync.apply_batch($1)::text", &[&next]).unwrap();
        tx.rollback().unwrap();
    }
    assert_eq!((progress(), count()), ("0/3E8".to_string(), 3), "a rolled-back apply records no progress");
    cloud.execute(
        "CREATE FUNCTION public.no_four() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF NEW.id = 4 THEN RAISE EXCEPTION 'id 4 refused at commit'; END IF; RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER no_four AFTER INSERT ON public.sensor_readings
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.no_four();
         ALTER TABLE public.sensor_readings ENABLE ALWAYS TRIGGER no_four;",
    );
    let at_commit = peer.query_one("SELECT edgesync.apply_batch($1)::text", &[&next]).expect_err("refused at commit");
    assert!(common::db_message(&at_commit).contains("id 4 refused at commit"), "{}", common::db_message(&at_commit));
    assert_eq!((progress(), count()), ("0/3E8".to_string(), 3), "a commit that failed records no progress");
    let serializable = {
        let mut tx = peer.build_transaction().isolation_level(postgres::IsolationLevel::Serializable).start().unwrap();
        let m = common::db_message(&tx.query_one("SELECT edgesync.apply_batch($1)::text", &[&next]).expect_err("serializable"));
        tx.rollback().unwrap();
        m
    };
    assert!(serializable.contains("SERIALIZABLE"), "{serializable}");
    cloud.execute("DROP TRIGGER no_four ON public.sensor_readings");
    let applied: String = peer.query_one("SELECT edgesync.apply_batch($1)::text", &[&next]).unwrap().get(0);
    assert_eq!((applied, progress(), count()), ("0/7D0".to_string(), "0/7D0".to_string(), 5));

    let origin: String = cloud.scalar("SELECT roident::text FROM pg_replication_origin WHERE roname = 'edgesync_edge9'");
    let tagged: i64 = cloud.scalar(&format!("SELECT count(*) FROM public.sensor_readings WHERE pg_xact_commit_timestamp_origin(xmin) IS NOT NULL AND (pg_xact_commit_timestamp_origin(xmin)).roident = {origin}"));
    assert_eq!(tagged, 5, "rows carry the sender's origin");

    // bombs: what a batch claims is never what it gets
    let hwm = |c: &mut postgres::Client| -> i64 {
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc");
        line.split_whitespace().nth(1).unwrap().parse::<i64>().unwrap()
    };
    let frame = |body: &[u8], compressed: bool, raw_len: u32, crc: u32| -> Vec<u8> {
        let mut out = b"EDGB".to_vec();
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&u16::from(compressed).to_be_bytes());
        out.extend_from_slice(&raw_len.to_be_bytes());
        out.extend_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(body);
        out
    };
    let zeros = vec![0u8; 200 << 20];
    let zero_bomb = frame(&zstd::bulk::compress(&zeros, 3).unwrap(), true, zeros.len() as u32, crc32c::crc32c(&zeros));
    let mut claims = vec![0u8, 1, b'e'];
    claims.extend_from_slice(&u32::MAX.to_be_bytes());
    let count_bomb = frame(&claims, false, claims.len() as u32, crc32c::crc32c(&claims));
    let too_large = frame(b"", true, 300 << 20, 0);
    let before = hwm(&mut peer);
    for (bomb, why, says) in [
        (&zero_bomb, "200 MB of zeros in a few kilobytes", "decompresses to more than"),
        (&count_bomb, "four billion transactions claimed", "more than the batch's bytes can hold"),
        (&too_large, "300 MB claimed", "exceeds the limit"),
    ] {
        let e = peer.query_one("SELECT edgesync.apply_batch($1)::text", &[bomb]).expect_err(why);
        assert!(common::db_message(&e).contains(says), "{why}: {}", common::db_message(&e));
    }
    let after = hwm(&mut peer);
    println!("backend peak memory (VmHWM) across the bombs: {before} kB -> {after} kB, {} kB compressed sent", zero_bomb.len() / 1024);
    assert!(after - before < 16 * 1024, "the bombs cost {} kB", after - before);
    // a batch of 1.7 million tiny messages (8 MB, sent plain): read in
    // place, it costs its bytes, not an allocation per message
    let mut tiny = vec![0u8, 6];
    tiny.extend_from_slice(b"edge10");
    tiny.extend_from_slice(&1u32.to_be_bytes());
    tiny.extend_from_slice(&0x2000u64.to_be_bytes());
    tiny.extend_from_slice(&0u64.to_be_bytes());
    tiny.extend_from_slice(&u16::MAX.to_be_bytes());
    let n: u32 = (8 << 20) / 5;
    tiny.extend_from_slice(&n.to_be_bytes());
    for _ in 0..n {
        tiny.extend_from_slice(&[0, 0, 0, 1, b'X']);
    }
    let message_bomb = frame(&tiny, false, tiny.len() as u32, crc32c::crc32c(&tiny));
    let before = hwm(&mut peer);
    let e = peer.query_one("SELECT edgesync.apply_batch($1)::text", &[&message_bomb]).expect_err("message bomb");
    let after = hwm(&mut peer);
    println!("backend peak memory (VmHWM) for {n} messages in {} kB: {before} kB -> {after} kB", message_bomb.len() / 1024);
    assert!(common::db_message(&e).contains("refused batch"), "{}", common::db_message(&e));
    assert!(after - before < 48 * 1024, "{n} tiny messages cost {} kB (the batch arrives, is detoasted and passed on: three copies)", after - before);
    assert_eq!(count(), 5);
    // a table owner's code leaves no setting behind
    cloud.execute(
        "CREATE FUNCTION public.meddle() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM set_config('myapp.leak', 'yes', false); RETURN NEW; END $$;
         CREATE TRIGGER meddle BEFORE INSERT ON public.sensor_readings FOR EACH ROW EXECUTE FUNCTION public.meddle();
         ALTER TABLE public.sensor_readings ENABLE REPLICA TRIGGER meddle;",
    );
    let sixth = handmade_batch("edge9", "sensor_readings", 3_000, &[6], true, 1);
    peer.query_one("SELECT edgesync.apply_batch($1)::text", &[&sixth]).unwrap();
    let leaked: Option<String> = peer.query_one("SELECT nullif(current_setting('myapp.leak', true), '')", &[]).unwrap().get(0);
    assert_eq!(leaked, None, "the trigger's setting did not outlive it");
    cloud.execute("DROP TRIGGER meddle ON public.sensor_readings");
    assert_eq!(count(), 6);

    // a batch with nothing to apply creates no replication origin for its sender
    let mut empty = vec![0u8, 6];
    empty.extend_from_slice(b"forged");
    empty.extend_from_slice(&0u32.to_be_bytes());
    let empty = frame(&empty, false, empty.len() as u32, crc32c::crc32c(&empty));
    let e = peer.query_one("SELECT edgesync.apply_batch($1)::text", &[&empty]).expect_err("an unregistered sender");
    assert!(common::db_message(&e).contains("node \"forged\" is not registered here"), "{}", common::db_message(&e));
    let origins: i64 = cloud.scalar("SELECT count(*) FROM pg_replication_origin WHERE roname = 'edgesync_forged'");
    assert_eq!(origins, 0, "no origin for a sender nobody registered");
    cloud.execute("SELECT edgesync.register_edge('forged', 'edge_login')");
    let answer: String = peer.query_one("SELECT edgesync.apply_batch($1)::text", &[&empty]).unwrap().get(0);
    assert_eq!(answer, "0/0");
    let origins: i64 = cloud.scalar("SELECT count(*) FROM pg_replication_origin WHERE roname = 'edgesync_forged'");
    assert_eq!(origins, 0, "no origin for an empty batch");

    // a login pushes, and reads progress, only as the node it is registered for
    // edge8 moves to another login
    cloud.execute("CREATE ROLE other_login LOGIN IN ROLE edgesync_peer; SELECT edgesync.register_edge('edge8', 'other_login')");
    let mut other = as_role("other_login");
    let pushed = other.query_one("SELECT edgesync.apply_batch($1)::text", &[&good]).expect_err("push as edge9");
    let greeted = other.query_one("SELECT confirmed_lsn::text FROM edgesync.hello('edge9')", &[]).expect_err("edge9's progress");
    for e in [pushed, greeted] {
        assert!(common::db_message(&e).contains("may not act as node \"edge9\""), "{}", common::db_message(&e));
    }
    let e = peer.query_one("SELECT confirmed_lsn::text FROM edgesync.hello('edge8')", &[]).expect_err("edge8's progress");
    assert!(common::db_message(&e).contains("may not act as node \"edge8\""), "{}", common::db_message(&e));
    let mine: String = peer.query_one("SELECT confirmed_lsn::text FROM edgesync.hello('edge9')", &[]).unwrap().get(0);
    let recorded: String = cloud.scalar("SELECT remote_lsn::text FROM pg_replication_origin_status WHERE external_id = 'edgesync_edge9'");
    assert_eq!(mine, recorded, "a login reads its own node's progress");
    cloud.execute("SELECT edgesync.drop_edge('edge8')");
    assert_eq!(count(), 6, "nothing of the impersonations applied");

    // only edgesync_peer may push
    let mut outsider = as_role("nobody");
    let e = outsider.query_one("SELECT edgesync.apply_batch($1)::text", &[&good]).expect_err("no grant");
    assert!(common::db_message(&e).contains("permission denied"), "{}", common::db_message(&e));
}

/// The launcher follows pause, resume, alter and drop without a restart.
#[test]
fn peers_are_paused_resumed_altered_and_dropped_live() {
    let (c, cloud, edges) = hub("peer_admin", 1, "realtime");
    let e = &edges[0];
    let worker_running = |want: bool| {
        c.wait_for(&format!("the forwarder {}", if want { "running" } else { "gone" }), DEADLINE, || {
            Ok(peer_field(e, "worker_pid")?.is_empty() != want)
        })
    };
    e.execute("SELECT edgesync.pause_peer('cloud')");
    worker_running(false);
    assert_eq!(peer_field(e, "state").unwrap(), "paused");
    write_readings(e, 1, 500, 100);
    let refused = e.try_query("SELECT edgesync.sync_now('cloud')").expect_err("a paused peer does not sync");
    assert!(refused.contains("is paused"), "{refused}");
    assert_eq!(readings_of(&cloud, &e.name).unwrap().0, 0, "nothing leaves while paused");
    assert!(peer_field(e, "pending_bytes").unwrap().parse::<i64>().unwrap() > 0, "the slot holds the changes");

    e.execute("SELECT edgesync.resume_peer('cloud')");
    worker_running(true);
    wait_arrived(&c, &cloud, e, DEADLINE);

    // a forwarder that dies is started again by the launcher after a cooldown
    let first = peer_field(e, "worker_pid").unwrap();
    e.execute(&format!("SELECT pg_terminate_backend({first})"));
    c.wait_for("a new forwarder", DEADLINE, || {
        let now = peer_field(e, "worker_pid")?;
        Ok(!now.is_empty() && now != first)
    });

    // on_demand: nothing moves until asked
    e.execute("SELECT edgesync.alter_peer('cloud', mode => 'on_demand')");
    c.wait_for("the forwarder to take the new mode", DEADLINE, || Ok(peer_field(e, "mode")? == "on_demand"));
    // a round makes sure the forwarder has read its new settings (it reads them at every wake-up)
    let nothing: i64 = e.scalar("SELECT edgesync.sync_now('cloud')");
    assert_eq!(nothing, 0);
    write_readings(e, 501, 100, 100);
    // a realtime forwarder would push within 50 ms: over 40 such intervals, nothing moves
    let before = readings_of(&cloud, &e.name).unwrap();
    c.assert_stays("the cloud unchanged before sync_now", Duration::from_secs(2), || Ok(readings_of(&cloud, &e.name)? == before));
    assert_eq!(before.0, 500);
    let sent: i64 = e.scalar("SELECT edgesync.sync_now('cloud')");
    assert_eq!(sent, 100);
    assert_eq!(readings_of(&cloud, &e.name).unwrap(), readings_of(e, &e.name).unwrap());
    // an asynchronous commit made before sync_now is covered by it (its WAL is flushed first)
    e.execute("SET synchronous_commit = off; INSERT INTO public.sensor_readings VALUES ('edge1', 9999, 1, now(), 1)");
    let sent: i64 = e.scalar("SELECT edgesync.sync_now('cloud')");
    assert_eq!(sent, 1);
    assert_eq!(readings_of(&cloud, &e.name).unwrap(), readings_of(e, &e.name).unwrap());

    // a password in the conninfo shows nowhere: not in errors, views or the log
    e.execute("SELECT edgesync.alter_peer('cloud', conninfo => 'host=127.0.0.1 port=1 dbname=postgres user=edge_login password=s3cret-pw connect_timeout=2')");
    write_readings(e, 601, 1, 1);
    let failed = e.try_query("SELECT edgesync.sync_now('cloud')").expect_err("nothing listens on port 1");
    assert!(failed.contains("failed") && !failed.contains("s3cret-pw"), "{failed}");
    let shown: String = e.scalar("SELECT string_agg(row_to_json(p)::text, ' ') FROM edgesync.peers p");
    assert!(!shown.contains("s3cret-pw") && shown.contains("Connection refused"), "{shown}");
    let health: String = e.scalar("SELECT string_agg(detail, ' ') FROM edgesync.health");
    assert!(!health.contains("s3cret-pw"), "{health}");
    let log = std::fs::read_to_string(&e.logfile).unwrap();
    assert!(!log.contains("s3cret-pw"), "the server log shows the password");
    passwords_show_nowhere_when_libpq_quotes_them_or_a_login_is_refused(&c, &cloud, e);
    e.execute(&format!("SELECT edgesync.alter_peer('cloud', conninfo => 'host=127.0.0.1 port={} dbname=postgres user=edge_login')", cloud.port));

    // a bad conninfo is refused and changes nothing
    let bad = e.try_query("SELECT edgesync.alter_peer('cloud', conninfo => 'host=x nonsense')").expect_err("bad conninfo");
    assert!(bad.contains("invalid conninfo"), "{bad}");

    e.execute("SELECT edgesync.drop_peer('cloud')");
    worker_running(false);
    let rows: i64 = e.scalar("SELECT count(*) FROM edgesync.peers");
    assert_eq!(rows, 0);
    let slots: i64 = e.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'edgesync_cloud'");
    assert_eq!(slots, 0, "its slot is dropped");
}

/// libpq quotes parts of a conninfo it cannot read back, not always after
/// `password=`; a refused login names the user. Either way the password
/// shows in no error, view, health row or server log line.
fn passwords_show_nowhere_when_libpq_quotes_them_or_a_login_is_refused(c: &Cluster, cloud: &Node, e: &Node) {
    let secret = "s3cret-pw";
    let shows_nowhere = |what: &str, error: &str| {
        assert!(!error.contains(secret), "{what}: the error shows the password: {error}");
        let shown: String = e.scalar("SELECT coalesce(string_agg(row_to_json(p)::text, ' '), '') FROM edgesync.peers p");
        assert!(!shown.contains(secret), "{what}: edgesync.peers shows the password: {shown}");
        let health: String = e.scalar("SELECT coalesce(string_agg(detail, ' '), '') FROM edgesync.health");
        assert!(!health.contains(secret), "{what}: edgesync.health shows the password: {health}");
        let log = std::fs::read_to_string(&e.logfile).unwrap();
        assert!(!log.contains(secret), "{what}: the server log shows the password");
    };
    // refused when set: the statement itself is kept out of the log (a documented limit)
    let mut session = e.connect();
    session.batch_execute("SET log_min_error_statement = panic").unwrap();
    let bad = session
        .batch_execute(&format!("SELECT edgesync.alter_peer('cloud', conninfo => 'postgresql://edge_login:{secret}%zz@127.0.0.1/postgres')"))
        .expect_err("a bad percent-encoding is refused");
    shows_nowhere("a bad URI", &common::db_message(&bad));
    // read only when the forwarder connects: a URI inside dbname
    e.execute(&format!(
        "SELECT edgesync.alter_peer('cloud', conninfo => 'host=127.0.0.1 port={} dbname=''postgresql://edge_login:{secret}%zz@127.0.0.1/postgres'' connect_timeout=2')",
        cloud.port
    ));
    let failed = e.try_query("SELECT edgesync.sync_now('cloud')").expect_err("no such database");
    assert!(failed.contains("does not exist"), "libpq names the dbname it was given: {failed}");
    shows_nowhere("a URI in dbname", &failed);
    // a conninfo that reached the catalog without alter_peer's check: the
    // forwarder's libpq quotes the password back bare (a bad percent-encoding)
    let mut direct = e.connect();
    direct.batch_execute("SET log_statement = none; SET log_min_error_statement = panic").unwrap();
    direct
        .batch_execute(&format!(
            "UPDATE edgesync.peer SET conninfo = 'postgresql://edge_login:{secret}%zz@127.0.0.1:{}/postgres' WHERE name = 'cloud'",
            cloud.port
        ))
        .unwrap();
    let failed = e.try_query("SELECT edgesync.sync_now('cloud')").expect_err("libpq cannot read that conninfo");
    assert!(failed.contains("percent"), "{failed}");
    shows_nowhere("a bad URI read by the forwarder", &failed);
    // a refused login
    let hba = cloud.datadir.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host all edge_login 127.0.0.1/32 scram-sha-256\n{rules}")).unwrap();
    cloud.execute("ALTER ROLE edge_login PASSWORD 'the-right-one'; SELECT pg_reload_conf()");
    e.execute(&format!(
        "SELECT edgesync.alter_peer('cloud', conninfo => 'host=127.0.0.1 port={} dbname=postgres user=edge_login password={secret} connect_timeout=2')",
        cloud.port
    ));
    c.wait_for("the refused login", DEADLINE, || {
        Ok(e.try_query("SELECT edgesync.sync_now('cloud')").err().is_some_and(|m| m.contains("password authentication failed")))
    });
    shows_nowhere("a refused login", &peer_field(e, "last_error").unwrap());
    std::fs::write(&hba, rules).unwrap();
    cloud.execute("SELECT pg_reload_conf()");
}

/// Updates and deletes travel; an update of a row the cloud lacks is judged
/// against the cloud's tombstone (the newer of the delete and the update
/// wins), or recreates the row on a table without a policy; every such case
/// is logged.
#[test]
fn updates_and_deletes_travel_and_missing_rows_are_judged() {
    let (_c, cloud, edges) = hub("updates_deletes", 1, "on_demand");
    let e = &edges[0];
    let sync = || e.execute("SELECT edgesync.sync_now('cloud')");
    let inventory = |n: &Node| -> Vec<(String, i32)> {
        n.query("SELECT sku, qty FROM public.inventory ORDER BY sku").iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    e.execute("INSERT INTO public.inventory VALUES ('A', 1, ''), ('B', 1, ''), ('C', 1, ''), ('D', 1, '')");
    sync();
    e.execute("UPDATE public.inventory SET qty = 5 WHERE sku = 'A'; DELETE FROM public.inventory WHERE sku = 'B'");
    sync();
    assert_eq!(inventory(&cloud), vec![("A".into(), 5), ("C".into(), 1), ("D".into(), 1)]);

    // C: the edge updates, then the cloud deletes: the later delete wins
    e.execute("UPDATE public.inventory SET qty = 7 WHERE sku = 'C'");
    cloud.execute("DELETE FROM public.inventory WHERE sku = 'C'");
    // D: the cloud deletes, then the edge updates: the later update brings it back
    cloud.execute("DELETE FROM public.inventory WHERE sku = 'D'");
    e.execute("UPDATE public.inventory SET qty = 9 WHERE sku = 'D'");
    sync();
    assert_eq!(inventory(&cloud), vec![("A".into(), 5), ("D".into(), 9)]);
    let judged: Vec<(String, String, String)> = cloud
        .query("SELECT key->>'sku', conflict_type, resolution FROM edgesync.conflict_log WHERE table_name = 'inventory' ORDER BY 1")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        judged,
        vec![("C".into(), "update_deleted".into(), "keep_local".into()), ("D".into(), "update_deleted".into(), "apply_remote".into())]
    );

    // a table without a policy: the missing row is put back, a missing delete is a no-op; both logged
    write_readings(e, 1, 2, 2);
    sync();
    cloud.execute("DELETE FROM public.sensor_readings WHERE id IN (1, 2)");
    e.execute("UPDATE public.sensor_readings SET value = 42 WHERE id = 1; DELETE FROM public.sensor_readings WHERE id = 2");
    sync();
    let value: f64 = cloud.scalar("SELECT value FROM public.sensor_readings WHERE id = 1");
    assert_eq!(value, 42.0);
    let logged: Vec<(String, String)> = cloud
        .query("SELECT conflict_type, resolution FROM edgesync.conflict_log WHERE table_name = 'sensor_readings' ORDER BY 1")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(logged, vec![("delete_missing".into(), "keep_local".into()), ("update_missing".into(), "apply_remote".into())]);
}

/// The cloud writes each table as its owner, as PostgreSQL's own apply does:
/// an ordinary role's table records that role as the writer, and row-level
/// security forced on the table holds for the rows a peer sends.
#[test]
fn tables_are_written_as_their_owners() {
    let (c, cloud, edges) = hub("owners", 1, "on_demand");
    let e = &edges[0];
    cloud.execute(
        "CREATE ROLE shop; ALTER TABLE public.sensor_readings OWNER TO shop;
         ALTER TABLE public.sensor_readings ADD COLUMN written_by text DEFAULT current_user;
         ALTER TABLE public.sensor_readings ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
         CREATE POLICY known_sensors ON public.sensor_readings TO shop USING (true) WITH CHECK (sensor < 40);",
    );
    let insert = |id: i64, sensor: i32| {
        e.execute(&format!("INSERT INTO public.sensor_readings VALUES ('edge1', {id}, {sensor}, '2026-01-01', 1.5)"))
    };
    insert(1, 7);
    insert(2, 8);
    let sent: i64 = e.scalar("SELECT edgesync.sync_now('cloud')");
    assert_eq!(sent, 2);
    let writers: String = cloud.scalar("SELECT string_agg(DISTINCT written_by, ',') FROM public.sensor_readings");
    assert_eq!(writers, "shop", "rows are written as the table's owner");

    insert(3, 45);
    let refused = e.try_query("SELECT edgesync.sync_now('cloud')").expect_err("the owner may not write sensor 45");
    assert!(refused.contains("row-level security"), "{refused}");
    let held: i64 = cloud.scalar("SELECT count(*) FROM public.sensor_readings");
    assert_eq!(held, 2, "nothing of the refused batch is applied");
    // the owner's rights change on the cloud: the waiting change goes through
    cloud.execute("DROP POLICY known_sensors ON public.sensor_readings;
                   CREATE POLICY all_sensors ON public.sensor_readings TO shop USING (true) WITH CHECK (true)");
    c.wait_for("the held row on the cloud", DEADLINE, || {
        let _ = e.try_query("SELECT edgesync.sync_now('cloud')");
        Ok(cloud.try_query("SELECT 1 FROM public.sensor_readings WHERE id = 3 AND written_by = 'shop'")?.len() == 1)
    });
}

/// Two nodes that each push to the other: a change goes over once and never
/// comes back (on 16+ the slot's `origin = none`, on 15 the forwarder's own filter).
#[test]
fn a_node_that_receives_and_pushes_sends_back_nothing() {
    let mut c = Cluster::new("echo");
    let (a, b) = (c.add_node("a", &[]), c.add_node("b", &[]));
    for (n, id) in [(&a, 1), (&b, 2)] {
        n.execute(&format!(
            "CREATE EXTENSION edgesync; SELECT edgesync.create_node('{}', {id}); {INVENTORY};
             SELECT edgesync.add_table('public.inventory', sync => 'both');
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
    let sync = |from: &Node, to: &Node| -> i64 { from.scalar(&format!("SELECT edgesync.sync_now('{}')", to.name)) };
    let rows = |n: &Node| -> String { n.scalar("SELECT coalesce(string_agg(sku || '=' || qty, ',' ORDER BY sku), '') FROM public.inventory") };
    c.wait_for("both forwarders", DEADLINE, || {
        Ok(a.try_query("SELECT 1 FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NOT NULL")?.len() == 1
            && b.try_query("SELECT 1 FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NOT NULL")?.len() == 1)
    });
    a.execute("INSERT INTO public.inventory VALUES ('from_a', 1, NULL)");
    assert_eq!(sync(&a, &b), 1);
    assert_eq!(rows(&b), "from_a=1");
    assert_eq!(sync(&b, &a), 0, "b does not send a's change back");
    b.execute("UPDATE public.inventory SET qty = 2 WHERE sku = 'from_a'; INSERT INTO public.inventory VALUES ('from_b', 1, NULL)");
    assert_eq!(sync(&b, &a), 2);
    assert_eq!(sync(&a, &b), 0, "a does not send b's changes back");
    assert_eq!(rows(&a), rows(&b));
    assert_eq!(rows(&a), "from_a=2,from_b=1");
    for n in [&a, &b] {
        let logged: i64 = n.scalar("SELECT count(*) FROM edgesync.conflict_log");
        assert_eq!(logged, 0, "{}: one-way changes are not conflicts", n.name);
    }
}

/// `batch` mode: a round goes when `batch_interval` has passed or a batch's
/// worth of changes waits, and `max_batch_bytes` cuts a backlog into batches.
#[test]
fn batch_mode_waits_for_the_interval_or_a_full_batch() {
    let (c, cloud, edges) = hub("batch_mode", 1, "batch");
    let e = &edges[0];
    e.execute("SELECT edgesync.alter_peer('cloud', batch_interval => '1 hour', max_batch_bytes => 65536)");
    // make sure the forwarder runs with these settings before writing
    let nothing: i64 = e.scalar("SELECT edgesync.sync_now('cloud')");
    assert_eq!(nothing, 0);
    write_readings(e, 1, 10, 10);
    c.assert_stays("a small backlog waits for the interval", Duration::from_secs(2), || Ok(readings_of(&cloud, &e.name)?.0 == 0));
    let batches_before: i64 = peer_field(e, "batches_sent").unwrap().parse().unwrap();
    // more than a batch's worth: it goes without waiting, cut at max_batch_bytes
    write_readings(e, 11, 3_000, 100);
    wait_arrived(&c, &cloud, e, DEADLINE);
    let batches: i64 = peer_field(e, "batches_sent").unwrap().parse::<i64>().unwrap() - batches_before;
    assert!(batches >= 3, "3,010 rows of about 100 bytes went in batches of at most 64 kB: {batches} batches");
    // a short interval: a single row goes once it has passed
    e.execute("SELECT edgesync.alter_peer('cloud', batch_interval => '1 second')");
    write_readings(e, 5_000, 1, 1);
    wait_arrived(&c, &cloud, e, DEADLINE);
}

/// A peer that accepts the connection and never answers: the forwarder gives
/// up after `connect_timeout` (or `edgesync.peer_timeout` when the conninfo
/// sets none) and stays responsive to SIGTERM while it waits.
#[test]
fn a_silent_peer_times_out_and_the_forwarder_still_stops_at_once() {
    let (c, _cloud, edges) = hub("silent_peer", 1, "on_demand");
    let e = &edges[0];
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream); // accepted, never answered, never closed
        }
    });
    let mut next_id = 1;
    let mut timed = |conninfo: &str| -> (String, Duration) {
        e.execute(&format!("SELECT edgesync.alter_peer('cloud', conninfo => '{conninfo}')"));
        // a round connects only to send something
        write_readings(e, next_id, 1, 1);
        next_id += 1;
        let started = std::time::Instant::now();
        // a short timeout: a forwarder that waited past its deadline fails the test fast
        let error = e.try_query("SELECT edgesync.sync_now('cloud', timeout => '30s')").expect_err("a silent peer");
        (error, started.elapsed())
    };
    let (error, took) = timed(&format!("host=127.0.0.1 port={port} dbname=postgres user=edge_login connect_timeout=2"));
    assert!(error.contains("failed"), "{error}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(20), "gave up after {took:?}, connect_timeout is 2 s");
    c.psql(e, "ALTER SYSTEM SET edgesync.peer_timeout = '3s'; SELECT pg_reload_conf();");
    c.wait_for("peer_timeout 3s", DEADLINE, || Ok(e.try_query("SELECT 1 FROM pg_settings WHERE name = 'edgesync.peer_timeout' AND setting = '3'")?.len() == 1));
    let (error, took) = timed(&format!("host=127.0.0.1 port={port} dbname=postgres user=edge_login"));
    assert!(error.contains("failed"), "{error}");
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(20), "gave up after {took:?}, peer_timeout is 3 s");
    // stuck on a long connect_timeout, a SIGTERM still stops the forwarder at once
    e.execute(&format!("SELECT edgesync.alter_peer('cloud', conninfo => 'host=127.0.0.1 port={port} dbname=postgres user=edge_login connect_timeout=600')"));
    write_readings(e, 100, 1, 1);
    let mut asker = e.connect();
    std::thread::spawn(move || {
        let _ = asker.batch_execute("SELECT edgesync.sync_now('cloud', timeout => '10 min')");
    });
    c.wait_for("the forwarder connecting", DEADLINE, || Ok(peer_field(e, "state")? == "connecting"));
    let pid: i32 = peer_field(e, "worker_pid").unwrap().parse().unwrap();
    let asked = std::time::Instant::now();
    e.execute(&format!("SELECT pg_terminate_backend({pid})"));
    c.wait_for("the forwarder gone", Duration::from_secs(5), || {
        Ok(e.try_query(&format!("SELECT 1 FROM pg_stat_activity WHERE pid = {pid}"))?.is_empty())
    });
    assert!(asked.elapsed() < Duration::from_secs(5), "stopped after {:?}", asked.elapsed());
}

/// Apply runs as PostgreSQL's own apply worker does (`session_replication_role
/// = replica`): an ordinary trigger on the receiving table does not fire for
/// pushed rows, an `ENABLE REPLICA` one does, and the conflict trigger
/// (`ENABLE ALWAYS`) still judges them.
#[test]
fn pushed_rows_fire_replica_triggers_only() {
    let (_c, cloud, edges) = hub("replica_role", 1, "on_demand");
    let e = &edges[0];
    cloud.execute(
        "CREATE TABLE public.audit (kind text, id bigint);
         CREATE FUNCTION public.audit_row() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO public.audit VALUES (TG_ARGV[0], NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER ordinary AFTER INSERT ON public.sensor_readings FOR EACH ROW EXECUTE FUNCTION public.audit_row('ordinary');
         CREATE TRIGGER for_replicas AFTER INSERT ON public.sensor_readings FOR EACH ROW EXECUTE FUNCTION public.audit_row('replica');
         ALTER TABLE public.sensor_readings ENABLE REPLICA TRIGGER for_replicas;",
    );
    write_readings(e, 1, 3, 3);
    let sent: i64 = e.scalar("SELECT edgesync.sync_now('cloud')");
    assert_eq!(sent, 3);
    let fired: String = cloud.scalar("SELECT coalesce(string_agg(kind || ':' || id, ',' ORDER BY kind, id), '') FROM public.audit");
    assert_eq!(fired, "replica:1,replica:2,replica:3", "only the replica trigger fires for pushed rows");
    // the receiving table's local writes still fire the ordinary one
    cloud.execute("INSERT INTO public.sensor_readings VALUES ('cloud', 9, 1, now(), 1)");
    let local: i64 = cloud.scalar("SELECT count(*) FROM public.audit WHERE kind = 'ordinary'");
    assert_eq!(local, 1);
    // and the conflict trigger still judges pushed rows on a table under a policy
    cloud.execute("INSERT INTO public.inventory VALUES ('X', 1, 'cloud')");
    e.execute("INSERT INTO public.inventory VALUES ('X', 2, 'edge')");
    e.execute("SELECT edgesync.sync_now('cloud')");
    let logged: i64 = cloud.scalar("SELECT count(*) FROM edgesync.conflict_log WHERE key->>'sku' = 'X'");
    assert_eq!(logged, 1, "the conflict trigger fired");
}

/// Ids of the readings of `edge` held by `n`, in order, comma-separated.
fn reading_ids(n: &Node, edge: &str) -> Result<String, String> {
    let r = n.try_query(&format!("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM public.sensor_readings WHERE edge = '{edge}'"))?;
    Ok(r[0].get(0))
}

/// One transaction of readings `ids` on `e`, each with `value`.
fn write_reading_txn(e: &Node, ids: &[(i64, f64)]) {
    let rows: Vec<String> = ids.iter().map(|(id, v)| format!("('{}', {id}, 1, '2026-01-01', {v})", e.name)).collect();
    e.execute(&format!("INSERT INTO public.sensor_readings VALUES {}", rows.join(", ")));
}

/// Has the edge's slot for the cloud confirmed `lsn`?
fn slot_passed(e: &Node, lsn: &str) -> Result<bool, String> {
    let r = e.try_query(&format!("SELECT confirmed_flush_lsn >= '{lsn}' FROM pg_replication_slots WHERE slot_name = 'edgesync_cloud'"))?;
    Ok(r[0].get(0))
}

/// A session on `n` as `role`.
fn session_as(n: &Node, role: &str) -> common::Client {
    common::Client::connect(&format!("host=127.0.0.1 port={} user={role} dbname=postgres", n.port), common::NoTls).unwrap()
}

fn statement_error(client: &mut common::Client, sql: &str) -> String {
    common::db_message(&client.batch_execute(sql).expect_err(sql))
}

/// A transaction the cloud refuses (a CHECK only the cloud has), between
/// two good ones, sent in one batch: the one before it goes through, the
/// peer shows the refused one blocked (LSN, table, error) and health is
/// critical; a wrong LSN cannot be skipped; the right one is kept whole in
/// the exceptions table, the one after it arrives and the slot moves past
/// it, also when it is the last transaction.
#[test]
fn a_refused_transaction_blocks_its_peer_visibly_until_a_dba_skips_it() {
    let (c, cloud, edges) = hub("blocked", 1, "on_demand");
    let e = &edges[0];
    cloud.execute("ALTER TABLE public.sensor_readings ADD CONSTRAINT cloud_only CHECK (value < 1000)");
    e.execute("CREATE ROLE dba LOGIN; GRANT edgesync_admin TO dba; CREATE ROLE watcher LOGIN; GRANT pg_monitor TO watcher;");
    write_reading_txn(e, &[(1, 1.0), (2, 2.0), (3, 3.0)]);
    write_reading_txn(e, &[(4, 4.0), (5, 5000.0)]);
    write_reading_txn(e, &[(6, 6.0), (7, 7.0), (8, 8.0)]);
    let refused = e.try_query("SELECT edgesync.sync_now('cloud')").expect_err("the round stops at the refused transaction");
    assert!(refused.contains("refuses the transaction") && refused.contains("cloud_only"), "{refused}");

    let row = &e.query("SELECT state, blocked_lsn::text, blocked_table, blocked_error FROM edgesync.peers WHERE direction = 'push'")[0];
    let (state, lsn, table, error): (String, String, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((state.as_str(), table.as_str()), ("blocked", "public.sensor_readings"));
    assert!(error.starts_with("new row for relation") && error.contains("cloud_only") && !error.contains("5000"), "first line only: {error}");
    assert_eq!(reading_ids(&cloud, "edge1").unwrap(), "1,2,3", "the transaction before it went through");
    assert!(!slot_passed(e, &lsn).unwrap(), "the slot keeps it");
    let health = e.query("SELECT status, detail FROM edgesync.health WHERE component = 'peer' AND metric = 'blocked_seconds'");
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].get::<_, String>(0), "critical");
    assert!(health[0].get::<_, String>(1).contains(&format!("edgesync.skip_transaction('cloud', '{lsn}')")));

    // bad input is refused and changes nothing; pg_monitor sees the block, not the rows
    let mut dba = session_as(e, "dba");
    let wrong = statement_error(&mut dba, "SELECT edgesync.skip_transaction('cloud', '0/1')");
    assert_eq!(wrong, format!("edgesync: peer cloud is blocked by the transaction at {lsn}, not at 0/1"));
    let unknown = statement_error(&mut dba, &format!("SELECT edgesync.skip_transaction('nowhere', '{lsn}')"));
    assert!(unknown.contains("no peer named 'nowhere'"), "{unknown}");
    let mut watcher = session_as(e, "watcher");
    let seen: String = watcher.query_one("SELECT blocked_lsn::text FROM edgesync.peers WHERE direction = 'push'", &[]).unwrap().get(0);
    assert_eq!(seen, lsn);
    assert!(statement_error(&mut watcher, "SELECT * FROM edgesync.skipped_transaction").contains("permission denied"));
    assert!(statement_error(&mut watcher, &format!("SELECT edgesync.skip_transaction('cloud', '{lsn}')")).contains("permission denied"));
    assert_eq!(e.scalar::<i64>("SELECT count(*) FROM edgesync.skipped_transaction"), 0);
    assert_eq!(peer_field(e, "blocked_lsn").unwrap(), lsn);

    // the right one, by an edgesync_admin who is no superuser
    dba.batch_execute(&format!("SELECT edgesync.skip_transaction('cloud', '{lsn}')")).unwrap();
    c.wait_for("the transaction after the skipped one on the cloud", DEADLINE, || Ok(reading_ids(&cloud, "edge1")? == "1,2,3,6,7,8"));
    c.wait_for("the slot to pass the skipped transaction", DEADLINE, || slot_passed(e, &lsn));
    c.wait_for("the peer to be unblocked", DEADLINE, || Ok(peer_field(e, "blocked_lsn")?.is_empty() && peer_field(e, "state")? == "idle"));
    let kept = dba
        .query_one(
            "SELECT tables, skipped_by::text, error, commit_time IS NOT NULL, jsonb_array_length(changes),
                    (SELECT string_agg(c->>'operation' || ' ' || (c->'key'->>'id') || ' ' || (c->'row'->>'value'), ',') FROM jsonb_array_elements(changes) c)
               FROM edgesync.skipped_transaction WHERE peer = 'cloud' AND lsn = $1::text::pg_lsn",
            &[&lsn],
        )
        .unwrap();
    assert_eq!((kept.get::<_, String>(0), kept.get::<_, String>(1)), ("public.sensor_readings".to_string(), "dba".to_string()));
    assert!(kept.get::<_, String>(2).contains("cloud_only"));
    assert!(kept.get::<_, bool>(3), "its commit time is kept");
    assert_eq!((kept.get::<_, i32>(4), kept.get::<_, String>(5)), (2, "insert 4 4,insert 5 5000".to_string()), "whole: both rows");
    let again = statement_error(&mut dba, &format!("SELECT edgesync.skip_transaction('cloud', '{lsn}')"));
    assert!(again.contains("is not blocked"), "{again}");
    let not_ok: i64 = e.scalar("SELECT count(*) FROM edgesync.health WHERE component = 'peer' AND status <> 'ok'");
    assert_eq!(not_ok, 0, "health is back to ok");

    // a refused last transaction: once skipped, the slot still moves past it
    write_reading_txn(e, &[(9, 9000.0)]);
    assert!(e.try_query("SELECT edgesync.sync_now('cloud')").is_err());
    let last = peer_field(e, "blocked_lsn").unwrap();
    assert!(!last.is_empty() && last != lsn);
    dba.batch_execute(&format!("SELECT edgesync.skip_transaction('cloud', '{last}')")).unwrap();
    c.wait_for("the slot to pass the skipped last transaction", DEADLINE, || slot_passed(e, &last));
    c.wait_for("the peer to be unblocked", DEADLINE, || Ok(peer_field(e, "blocked_lsn")?.is_empty()));
    assert_eq!(reading_ids(&cloud, "edge1").unwrap(), "1,2,3,6,7,8");
    assert_eq!(e.scalar::<i64>("SELECT count(*) FROM edgesync.skipped_transaction WHERE changes IS NOT NULL"), 2);
}

/// A blocked peer retries on its own: once the cloud takes the transaction
/// (its constraint dropped), it and the ones after it arrive and the block
/// clears, with nothing set aside.
#[test]
fn a_blocked_peer_moves_on_by_itself_once_the_cloud_takes_the_transaction() {
    let (c, cloud, edges) = hub("unblock", 1, "realtime");
    let e = &edges[0];
    cloud.execute("ALTER TABLE public.sensor_readings ADD CONSTRAINT cloud_only CHECK (value < 1000)");
    write_reading_txn(e, &[(1, 1.0), (2, 2000.0)]);
    write_reading_txn(e, &[(3, 3.0)]);
    c.wait_for("the peer to show it blocked", DEADLINE, || Ok(peer_field(e, "state")? == "blocked"));
    assert_eq!(reading_ids(&cloud, "edge1").unwrap(), "");
    cloud.execute("ALTER TABLE public.sensor_readings DROP CONSTRAINT cloud_only");
    c.wait_for("the blocked transaction and the next on the cloud", DEADLINE, || Ok(reading_ids(&cloud, "edge1")? == "1,2,3"));
    c.wait_for("the block to clear", DEADLINE, || Ok(peer_field(e, "blocked_lsn")?.is_empty()));
    let blocked_checks: i64 = e.scalar("SELECT count(*) FROM edgesync.health WHERE metric = 'blocked_seconds'");
    assert_eq!(blocked_checks, 0);
    assert_eq!(e.scalar::<i64>("SELECT count(*) FROM edgesync.skipped_transaction"), 0);
}

/// A cloud and one edge pushing to it on demand. Each node runs its
/// `setup` (settings, tables) before the edge's forwarder starts; then
/// `table` is enrolled `sync` on both.
fn pair(test: &str, cloud_setup: &str, edge_setup: &str, table: &str, sync: &str) -> (Cluster, Node, Node) {
    let mut c = Cluster::new(test);
    let cloud = c.add_node("cloud", &[]);
    cloud.execute(&format!(
        "CREATE EXTENSION edgesync; SELECT edgesync.create_node('cloud', 100); {cloud_setup};
         SELECT edgesync.add_table('{table}', sync => '{sync}');
         CREATE ROLE edge_login LOGIN; GRANT edgesync_peer TO edge_login; SELECT edgesync.register_edge('edge1', 'edge_login');"
    ));
    let e = c.add_node("edge1", &[]);
    e.execute(&format!(
        "CREATE EXTENSION edgesync; SELECT edgesync.create_node('edge1', 1); {edge_setup};
         SELECT edgesync.add_table('{table}', sync => '{sync}');"
    ));
    e.execute(&format!(
        "SELECT edgesync.add_peer('cloud', 'host=127.0.0.1 port={} dbname=postgres user=edge_login connect_timeout=5', mode => 'on_demand')",
        cloud.port
    ));
    c.wait_for("edge1's forwarder", DEADLINE, || Ok(e.try_query("SELECT 1 FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NOT NULL")?.len() == 1));
    (c, cloud, e)
}

/// Rows of `sql` as text, each column `::text`, read under the same
/// settings on every node (whatever its database defaults say).
fn rows_as_text(n: &Node, sql: &str) -> Vec<Vec<String>> {
    let mut client = n.connect();
    client
        .batch_execute("SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET bytea_output = 'hex'")
        .unwrap();
    let rows = client.query(sql, &[]).unwrap_or_else(|e| panic!("{sql} on {}: {e:?}", n.name));
    rows.iter().map(|r| (0..r.len()).map(|i| r.get::<_, Option<String>>(i).unwrap_or_else(|| "NULL".into())).collect()).collect()
}

/// Values leave the edge as text and are read back on the cloud: both
/// sides print and read them under pinned settings, whatever a database
/// default says (here the edge prints dates day-first, floats with 15
/// digits and intervals the SQL-standard way, and the cloud reads dates
/// month-first).
#[test]
fn values_arrive_exactly_as_they_left_whatever_each_side_prints() {
    const TABLE: &str = "CREATE TABLE public.measures (id int PRIMARY KEY, d date, ts timestamp, tstz timestamptz,
        iv interval, f float8, r real, m money, b bytea, n numeric)";
    let (_c, cloud, e) = pair(
        "value_text",
        &format!("ALTER DATABASE postgres SET DateStyle = 'SQL, MDY'; ALTER DATABASE postgres SET TimeZone = 'America/New_York'; {TABLE}"),
        &format!(
            "ALTER DATABASE postgres SET DateStyle = 'SQL, DMY'; ALTER DATABASE postgres SET extra_float_digits = 0;
             ALTER DATABASE postgres SET IntervalStyle = 'sql_standard'; ALTER DATABASE postgres SET bytea_output = 'escape';
             ALTER DATABASE postgres SET TimeZone = 'Asia/Kolkata'; {TABLE}"
        ),
        "public.measures",
        "up",
    );
    let all = "SELECT id::text, d::text, ts::text, tstz::text, iv::text, f::text, r::text, m::text, b::text, n::text FROM public.measures ORDER BY id";
    // the rows are written under the edge's defaults, as any of its clients would
    e.execute(
        "INSERT INTO public.measures VALUES
           (1, '2024-03-04', '2024-03-04 10:11:12.345678', '2024-03-04 10:11:12.345678+00', '-1 days -02:03:04',
            0.1::float8 + 0.2::float8, 1 / 3.0::real, 1234.56, '\\x00ff5c27', 1.000000000000000000001),
           (3, '2024-12-05', '1999-01-08 04:05:06', '2024-07-01 23:59:59.999999+05:45', '-0.000001 seconds',
            1e-308::float8 * 1.5, 3.4e38, 92233720368547758.07, NULL, 1e100)",
    );
    e.execute("SELECT edgesync.sync_now('cloud')");
    assert_eq!(rows_as_text(&cloud, all), rows_as_text(&e, all), "every value arrives as it left");
    // values whose text one side could not even read under the other's settings
    e.execute("INSERT INTO public.measures VALUES (2, '0044-03-15 BC', 'infinity', '-infinity', '1 year 2 mons -3 days 04:05:06.7', 'NaN', '-0', -0.01, '', 'NaN')");
    e.execute("SELECT edgesync.sync_now('cloud')");
    assert_eq!(rows_as_text(&cloud, all), rows_as_text(&e, all), "every value arrives as it left");
    // floats compared as numbers too: not one bit lost
    let floats = |n: &Node| -> Vec<(f64, f32)> {
        n.query("SELECT f, r FROM public.measures WHERE id <> 2 ORDER BY id").iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let (on_cloud, on_edge) = (floats(&cloud), floats(&e));
    assert!(on_cloud.iter().zip(&on_edge).all(|(a, b)| a.0.to_bits() == b.0.to_bits() && a.1.to_bits() == b.1.to_bits()), "{on_cloud:?} vs {on_edge:?}");
}

/// A value too long for the receiving column is refused, naming the table
/// and the column, never cut to fit (an explicit cast to `varchar(5)`
/// would cut it); nothing of its transaction is applied, and once the
/// column is widened the same transaction arrives whole.
#[test]
fn a_value_too_long_for_the_receiver_is_refused_naming_its_column() {
    let (c, cloud, e) = pair(
        "too_long",
        "CREATE TABLE public.labels (id int PRIMARY KEY, label varchar(5), code char(3))",
        "CREATE TABLE public.labels (id int PRIMARY KEY, label varchar(20), code char(10))",
        "public.labels",
        "up",
    );
    let rows = |n: &Node| rows_as_text(n, "SELECT id::text, label::text, code::text FROM public.labels ORDER BY id");
    e.execute("INSERT INTO public.labels VALUES (1, 'fits', 'ab')");
    e.execute("SELECT edgesync.sync_now('cloud')");
    assert_eq!(rows(&cloud), vec![vec!["1".to_string(), "fits".into(), "ab".into()]]);
    // several rows in one transaction (written with one statement), one of them too long
    e.execute("INSERT INTO public.labels VALUES (2, 'short', 'x'), (3, 'abcdefghij', 'y'), (4, 'ok', 'z')");
    let refused = e.try_query("SELECT edgesync.sync_now('cloud')").expect_err("a value too long is refused");
    assert!(refused.contains("failed"), "{refused}");
    c.wait_for("the refusal in the peer's last error", DEADLINE, || {
        Ok(peer_field(&e, "last_error")?.contains("column label of public.labels: value too long for type character varying(5)"))
    });
    assert_eq!(rows(&cloud).len(), 1, "nothing of the refused transaction is applied");
    // the update path: widen the column so the insert passes, then an update too long for another column
    cloud.execute("ALTER TABLE public.labels ALTER label TYPE varchar(20)");
    e.execute("SELECT edgesync.sync_now('cloud')");
    assert_eq!(rows(&cloud).len(), 4, "the held transaction arrives once the column takes it");
    assert!(rows(&cloud).iter().any(|r| r[1] == "abcdefghij"), "whole, not cut");
    e.execute("UPDATE public.labels SET code = 'toolong' WHERE id = 1");
    let refused = e.try_query("SELECT edgesync.sync_now('cloud')").expect_err("a value too long is refused");
    assert!(refused.contains("failed"), "{refused}");
    c.wait_for("the refusal in the peer's last error", DEADLINE, || {
        Ok(peer_field(&e, "last_error")?.contains("column code of public.labels: value too long for type character(3)"))
    });
    assert_eq!(rows(&cloud)[0][2], "ab", "the row keeps its value");
}

/// Columns named after keywords PostgreSQL reserves (or keeps for type and
/// function names), in mixed case, or with a double quote in the name:
/// inserts, updates, deletes and a conflict on them all travel.
#[test]
fn columns_named_like_keywords_sync() {
    const TABLE: &str = r#"CREATE TABLE public.keywords (
        "left" int, "order" int, "right" text, "like" text, "verbose" text, "binary" text, "user" text, "similar" text,
        "freeze" text, "tablesample" text, "concurrently" text, "authorization" text, "Mixed Case" text, "quo""te" text, qty int,
        PRIMARY KEY ("left", "order"))"#;
    let (_c, cloud, e) = pair("keywords", TABLE, TABLE, "public.keywords", "both");
    let sync = || e.execute("SELECT edgesync.sync_now('cloud')");
    let all = r#"SELECT "left"::text, "order"::text, "right", "like", "verbose", "binary", "user", "similar", "freeze", "tablesample",
                        "concurrently", "authorization", "Mixed Case", "quo""te", qty::text FROM public.keywords ORDER BY 1, 2"#;
    let insert = |n: &Node, left: i32, qty: i32| {
        n.execute(&format!(
            r#"INSERT INTO public.keywords VALUES ({left}, 1, 'r', 'l', 'v', 'b', 'u', 's', 'f', 't', 'c', 'a', 'M', 'q', {qty})"#
        ))
    };
    // one row (single insert), then several in one transaction (one statement)
    insert(&e, 1, 1);
    sync();
    e.execute(
        r#"BEGIN; INSERT INTO public.keywords ("left", "order", "Mixed Case", "quo""te", qty) VALUES (2, 1, 'x', 'y', 2), (3, 1, NULL, '"', 3); COMMIT"#,
    );
    sync();
    assert_eq!(rows_as_text(&cloud, all), rows_as_text(&e, all));
    e.execute(r#"UPDATE public.keywords SET "like" = 'liked', "Mixed Case" = 'changed', "quo""te" = 'q2' WHERE "left" = 1"#);
    e.execute(r#"UPDATE public.keywords SET "order" = 5 WHERE "left" = 2"#);
    e.execute(r#"DELETE FROM public.keywords WHERE "left" = 3"#);
    sync();
    assert_eq!(rows_as_text(&cloud, all), rows_as_text(&e, all));
    assert_eq!(rows_as_text(&cloud, all).len(), 2);
    // a conflict on such a key: judged, logged, and the newer write kept
    cloud.execute(r#"UPDATE public.keywords SET qty = 10 WHERE "left" = 1"#);
    e.execute(r#"UPDATE public.keywords SET qty = 20 WHERE "left" = 1"#);
    sync();
    let qty: i32 = cloud.scalar(r#"SELECT qty FROM public.keywords WHERE "left" = 1"#);
    assert_eq!(qty, 20);
    let logged: String = cloud.scalar("SELECT key::text FROM edgesync.conflict_log WHERE table_name = 'keywords'");
    assert_eq!(logged, r#"{"left": 1, "order": 1}"#);
}

/// An edge rebuilt from scratch under the same name (another database, its
/// LSNs starting over) is refused at hello until a DBA takes it back with
/// `reset_edge`; the cloud remembers which database each edge is.
#[test]
fn a_rebuilt_edge_is_refused_until_it_is_reset() {
    let (mut c, cloud, edges) = hub("rebuilt", 1, "on_demand");
    let e = &edges[0];
    write_readings(e, 1, 10, 5);
    e.execute("SELECT edgesync.sync_now('cloud')");
    let first: String = cloud.scalar("SELECT system_identifier::text FROM edgesync.edge WHERE name = 'edge1'");
    let own: String = e.scalar("SELECT system_identifier::text FROM pg_control_system()");
    assert_eq!(first, own, "the cloud recorded which database edge1 is");
    let applied = || -> String { cloud.scalar("SELECT remote_lsn::text FROM pg_replication_origin_status WHERE external_id = 'edgesync_edge1'") };
    let mark = applied();
    let total = || -> i64 { cloud.scalar("SELECT count(*) FROM public.sensor_readings") };

    // edge1 again, from scratch: same name and login, another database
    e.execute("SELECT edgesync.drop_peer('cloud')");
    let rebuilt = c.add_node("edge1_rebuilt", &[]);
    rebuilt.execute(&format!(
        "CREATE EXTENSION edgesync; SELECT edgesync.create_node('edge1', 1); {READINGS};
         SELECT edgesync.add_table('public.sensor_readings', sync => 'up');"
    ));
    rebuilt.execute(&format!(
        "SELECT edgesync.add_peer('cloud', 'host=127.0.0.1 port={} dbname=postgres user=edge_login connect_timeout=5', mode => 'on_demand')",
        cloud.port
    ));
    c.wait_for("the rebuilt edge's forwarder", DEADLINE, || Ok(rebuilt.try_query("SELECT 1 FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NOT NULL")?.len() == 1));
    write_readings(&rebuilt, 1000, 10, 5);
    let refused = rebuilt.try_query("SELECT edgesync.sync_now('cloud')").expect_err("a rebuilt edge");
    assert!(refused.contains("another database than the one registered"), "{refused}");
    assert!(peer_field(&rebuilt, "last_error").unwrap().contains("another database"), "the edge shows why");
    assert_eq!((applied(), total()), (mark, 10), "nothing of it applied");

    cloud.execute("SELECT edgesync.reset_edge('edge1')");
    rebuilt.execute("SELECT edgesync.sync_now('cloud')");
    assert_eq!(total(), 20, "taken back, it pushes from its own start");
    let now_known: String = cloud.scalar("SELECT system_identifier::text FROM edgesync.edge WHERE name = 'edge1'");
    let rebuilt_own: String = rebuilt.scalar("SELECT system_identifier::text FROM pg_control_system()");
    assert_eq!(now_known, rebuilt_own);
}
