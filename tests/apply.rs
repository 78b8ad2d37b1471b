//! How the receiving node writes what it is sent (`apply_batch`, row by
//! row through the executor, as PostgreSQL's own apply writes): conflicts
//! met in the middle of a long run of changes, rows of one batch that see
//! each other, and the receiving table's own defaults, generated columns,
//! column triggers and domain checks. On real clusters: an edge pushing to
//! a cloud on demand.

mod common;

use common::{Cluster, Node, DEADLINE};

/// A cloud and an edge pushing to it on demand, each running `setup`
/// (tables) and then enrolling `tables` in `sync`.
fn edge_pushing_to_cloud(test: &str, cloud_setup: &str, edge_setup: &str, tables: &[&str], sync: &str) -> (Cluster, Node, Node) {
    let mut c = Cluster::new(test);
    let enrol: String = tables.iter().map(|t| format!("SELECT edgesync.add_table('{t}', sync => '{sync}');")).collect();
    let cloud = c.add_node("cloud", &[]);
    cloud.execute(&format!("CREATE EXTENSION edgesync; SELECT edgesync.create_node('cloud', 100); {cloud_setup}; {enrol}"));
    cloud.execute("CREATE ROLE edge_login LOGIN; GRANT edgesync_peer TO edge_login; SELECT edgesync.register_edge('edge1', 'edge_login')");
    let edge = c.add_node("edge1", &[]);
    edge.execute(&format!("CREATE EXTENSION edgesync; SELECT edgesync.create_node('edge1', 1); {edge_setup}; {enrol}"));
    let conninfo = format!("host=127.0.0.1 port={} dbname=postgres user=edge_login connect_timeout=5", cloud.port);
    edge.execute(&format!("SELECT edgesync.add_peer('cloud', '{conninfo}', mode => 'on_demand')"));
    c.wait_for("the edge's forwarder", DEADLINE, || {
        Ok(edge.try_query("SELECT 1 FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NOT NULL")?.len() == 1)
    });
    (c, cloud, edge)
}

fn push(edge: &Node) {
    edge.execute("SELECT edgesync.sync_now('cloud')");
}

/// `statement` (on `i`) in `n` transactions of one row each, on `node`.
fn one_row_transactions(node: &Node, n: i32, statement: &str) {
    node.execute(&format!("DO $$ BEGIN FOR i IN 1..{n} LOOP {statement}; COMMIT; END LOOP; END $$"));
}

fn conflicts_of(n: &Node) -> Vec<(i32, String, String)> {
    n.query("SELECT (key->>'id')::int, conflict_type, resolution FROM edgesync.conflict_log ORDER BY 1, id")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

const STOCK: &str = "CREATE TABLE public.stock (id int PRIMARY KEY, qty int NOT NULL, note text)";

/// One batch of 300 single-row updates in which two rows meet a concurrent
/// write on the cloud: each conflict is logged once and settled by last
/// writer wins (the edge's newer update applied, the cloud's newer one
/// kept), and every update before, between and after them is applied; a
/// row updated twice in the batch ends with its second update.
#[test]
fn conflicts_in_the_middle_of_a_run_are_settled_and_logged_once() {
    let (_c, cloud, edge) = edge_pushing_to_cloud("run_conflicts", STOCK, STOCK, &["public.stock"], "both");
    edge.execute("INSERT INTO public.stock SELECT g, 0, 'new' FROM generate_series(1, 300) g");
    push(&edge);
    // the cloud writes row 100 before the edge's updates (older: the edge's wins)
    cloud.execute("UPDATE public.stock SET qty = -1, note = 'cloud' WHERE id = 100");
    one_row_transactions(&edge, 300, "UPDATE public.stock SET qty = i, note = 'edge' WHERE id = i");
    edge.execute("UPDATE public.stock SET qty = 7000 WHERE id = 250");
    // ... and row 200 after them (newer: the cloud's stays)
    cloud.execute("UPDATE public.stock SET qty = -2, note = 'cloud' WHERE id = 200");
    push(&edge);
    let held = |n: &Node, id: i32| -> (i32, String) {
        let r = n.query(&format!("SELECT qty, note FROM public.stock WHERE id = {id}"));
        (r[0].get(0), r[0].get(1))
    };
    assert_eq!(held(&cloud, 100), (100, "edge".into()), "the edge's newer update wins");
    assert_eq!(held(&cloud, 200), (-2, "cloud".into()), "the cloud's newer update stays");
    assert_eq!(held(&cloud, 250), (7000, "edge".into()), "the second update of a row comes last");
    let applied: i64 = cloud.scalar("SELECT count(*) FROM public.stock WHERE note = 'edge' AND (qty = id OR id = 250)");
    assert_eq!(applied, 299, "every other update of the run is applied");
    assert_eq!(
        conflicts_of(&cloud),
        vec![(100, "update_origin_differs".into(), "apply_remote".into()), (200, "update_origin_differs".into(), "keep_local".into())]
    );
}

/// Rows a batch writes are seen by its later changes, whatever the kind:
/// a row inserted, deleted, inserted again and updated in consecutive
/// transactions of one batch ends as the last of them left it, with no
/// conflict, on a table under a policy and on one without.
#[test]
fn changes_of_one_batch_see_the_rows_written_before_them() {
    let tables = format!("{STOCK}; CREATE TABLE public.plain_stock (id int PRIMARY KEY, qty int NOT NULL, note text)");
    let (_c, cloud, edge) = edge_pushing_to_cloud("run_sees_itself", &tables, &tables, &["public.stock", "public.plain_stock"], "both");
    for table in ["public.stock", "public.plain_stock"] {
        for step in [
            format!("INSERT INTO {table} VALUES (1, 1, 'first'), (2, 2, 'kept')"),
            format!("DELETE FROM {table} WHERE id = 1"),
            format!("INSERT INTO {table} VALUES (1, 10, 'second')"),
            format!("UPDATE {table} SET qty = 11 WHERE id = 1"),
            format!("UPDATE {table} SET id = 3 WHERE id = 2"),
        ] {
            edge.execute(&step);
        }
    }
    push(&edge);
    for table in ["public.stock", "public.plain_stock"] {
        let rows: String = cloud.scalar(&format!("SELECT string_agg(id || ':' || qty || ':' || note, ',' ORDER BY id) FROM {table}"));
        assert_eq!(rows, "1:11:second,3:2:kept", "{table}");
    }
    assert_eq!(conflicts_of(&cloud), vec![]);
}

/// The receiving table's own definition holds for the rows it is sent, as
/// for an INSERT or UPDATE naming the columns sent: a column the sender
/// does not have gets its default (an identity column its next value), a
/// generated column is computed here, an `UPDATE OF` trigger fires for the
/// updates that set its column (not for a column only the receiver has),
/// and a domain's check refuses a value,
/// naming the table, with nothing of the transaction applied.
#[test]
fn the_receiving_tables_defaults_generated_columns_triggers_and_domains_hold() {
    let edge_table = "CREATE TABLE public.parts (id int PRIMARY KEY, qty int NOT NULL, label text)";
    let cloud_table = "CREATE DOMAIN public.small_qty AS int CHECK (VALUE < 1000);
        CREATE TABLE public.parts (id int PRIMARY KEY, qty public.small_qty NOT NULL, label text,
            received text NOT NULL DEFAULT 'cloud', seq int GENERATED BY DEFAULT AS IDENTITY,
            doubled int GENERATED ALWAYS AS (qty * 2) STORED);
        CREATE TABLE public.changes (kind text, id int, qty int);
        CREATE FUNCTION public.note_change() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN INSERT INTO public.changes VALUES (TG_ARGV[0], NEW.id, NEW.qty); RETURN NEW; END $$;
        CREATE TRIGGER qty_set AFTER UPDATE OF qty ON public.parts FOR EACH ROW EXECUTE FUNCTION public.note_change('qty');
        CREATE TRIGGER received_set AFTER UPDATE OF received ON public.parts FOR EACH ROW EXECUTE FUNCTION public.note_change('received');
        ALTER TABLE public.parts ENABLE ALWAYS TRIGGER qty_set, ENABLE ALWAYS TRIGGER received_set";
    let (c, cloud, edge) = edge_pushing_to_cloud("receiving_definition", cloud_table, edge_table, &["public.parts"], "up");
    edge.execute("INSERT INTO public.parts VALUES (1, 5, 'a'), (2, 6, 'b')");
    edge.execute("UPDATE public.parts SET label = 'renamed' WHERE id = 1");
    edge.execute("UPDATE public.parts SET qty = 8 WHERE id = 2");
    push(&edge);
    let rows: String =
        cloud.scalar("SELECT string_agg(concat_ws(':', id, qty, label, received, seq, doubled), ',' ORDER BY id) FROM public.parts");
    assert_eq!(rows, "1:5:renamed:cloud:1:10,2:8:b:cloud:2:16");
    // an update sends every column (but TOASTed ones it left unchanged): both set qty, neither a column only the cloud has
    let fired: String = cloud.scalar("SELECT coalesce(string_agg(kind || ':' || id || '=' || qty, ',' ORDER BY id), '') FROM public.changes");
    assert_eq!(fired, "qty:1=5,qty:2=8", "column triggers fire by the columns an update sets");

    edge.execute("BEGIN; INSERT INTO public.parts VALUES (3, 1, 'c'); UPDATE public.parts SET qty = 5000 WHERE id = 1; COMMIT");
    let refused = edge.try_query("SELECT edgesync.sync_now('cloud')").expect_err("the domain refuses 5000");
    assert!(refused.contains("failed"), "{refused}");
    c.wait_for("the refusal in the peer's last error", DEADLINE, || {
        let error: String = edge.scalar("SELECT coalesce(last_error, '') FROM edgesync.peers WHERE direction = 'push'");
        Ok(error.contains("public.parts") && error.contains("small_qty"))
    });
    let held: i64 = cloud.scalar("SELECT count(*) FROM public.parts");
    assert_eq!(held, 2, "nothing of the refused transaction is applied");
}

/// Whether an insert's key is taken is first asked of the index's last
/// page: keys after the last one there are new without a look, a key equal
/// to it or before it is looked up. Over an index of several pages, an
/// insert of the key a cloud row holds at the end of the key space meets
/// that row (kept without a policy, settled by last writer wins under one,
/// logged either way), and every key before and after it arrives.
#[test]
fn inserts_at_the_end_of_the_key_space_meet_the_rows_there() {
    let tables = "CREATE TABLE public.plain_stock (id int PRIMARY KEY, qty int NOT NULL, note text); CREATE TABLE public.stock (id int PRIMARY KEY, qty int NOT NULL, note text); SELECT edgesync.add_table('public.stock', sync => 'both')";
    let (_c, cloud, edge) = edge_pushing_to_cloud("end_of_keys", tables, tables, &["public.plain_stock"], "up");
    let both = ["public.plain_stock", "public.stock"];
    for table in both {
        edge.execute(&format!("INSERT INTO {table} SELECT g, 0, 'edge' FROM generate_series(1, 3000) g"));
    }
    push(&edge);
    for table in both {
        cloud.execute(&format!("INSERT INTO {table} VALUES (5000, -1, 'cloud')"));
    }
    for id in [3001, 3002, 4999, 5000, 5001, 100_000] {
        for table in both {
            edge.execute(&format!("INSERT INTO {table} VALUES ({id}, {id}, 'edge')"));
        }
    }
    push(&edge);
    let rows = |table: &str| -> String {
        cloud.scalar(&format!("SELECT string_agg(id || '=' || note, ',' ORDER BY id) FROM {table} WHERE id > 3000"))
    };
    assert_eq!(rows("public.plain_stock"), "3001=edge,3002=edge,4999=edge,5000=cloud,5001=edge,100000=edge", "the cloud's row stays");
    assert_eq!(rows("public.stock"), "3001=edge,3002=edge,4999=edge,5000=edge,5001=edge,100000=edge", "the later write wins");
    let held: i64 = cloud.scalar("SELECT count(*) FROM public.plain_stock");
    assert_eq!(held, 3006);
    let logged: Vec<(String, i32, String, String)> = cloud
        .query("SELECT table_name, (key->>'id')::int, conflict_type, resolution FROM edgesync.conflict_log ORDER BY 1")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        logged,
        vec![
            ("plain_stock".into(), 5000, "insert_exists".into(), "keep_local".into()),
            ("stock".into(), 5000, "insert_exists".into(), "apply_remote".into())
        ]
    );
}
