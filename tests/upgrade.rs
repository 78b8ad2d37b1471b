//! `ALTER EXTENSION edgesync UPDATE` from the last release ends with the
//! same objects, grants and behaviour as a fresh install.

mod common;

use common::{Cluster, Node};

/// Install an old release's script (kept as a fixture) next to the current one.
fn install_old_script(version: &str) {
    let pg_config = std::env::var("EDGESYNC_PG_CONFIG").unwrap_or_else(|_| "pg_config".into());
    let out = std::process::Command::new(&pg_config).arg("--sharedir").output().expect("pg_config");
    let dir = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("extension");
    let name = format!("edgesync--{version}.sql");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(&name);
    std::fs::copy(fixture, dir.join(&name)).expect("copy the old script into the extension directory");
}

/// The extension's members, one line each: its name, its privileges, and
/// its definition (a function's whole definition, SECURITY DEFINER and
/// search_path included; a view's query; a table's columns and checks).
fn members(n: &Node, db: &str) -> Vec<String> {
    let mut c = postgres::Client::connect(&format!("host=127.0.0.1 port={} user=postgres dbname={db}", n.port), postgres::NoTls).unwrap();
    c.query(
        "SELECT pg_describe_object(d.classid, d.objid, 0) || coalesce(' ' || p.proacl::text, '') || coalesce(' ' || r.relacl::text, '')
                || coalesce(E'\n' || CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) END, '')
                || coalesce(E'\n' || CASE WHEN r.relkind = 'v' THEN pg_get_viewdef(r.oid) END, '')
                || coalesce(E'\n' || CASE WHEN r.relkind = 'r' THEN
                     (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                                        || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), ''), ', ' ORDER BY a.attnum)
                        FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                       WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped)
                     || coalesce(' ' || (SELECT string_agg(pg_get_constraintdef(k.oid), ', ' ORDER BY k.conname)
                                           FROM pg_constraint k WHERE k.conrelid = r.oid), '') END, '')
           FROM pg_depend d
           LEFT JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid
           LEFT JOIN pg_class r ON d.classid = 'pg_class'::regclass AND r.oid = d.objid
          WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
            AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'edgesync')
          ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn update_from_0_1_0_matches_a_fresh_install() {
    update_matches_a_fresh_install("0.1.0", "upgrade01");
}

#[test]
fn update_from_0_2_0_matches_a_fresh_install() {
    update_matches_a_fresh_install("0.2.0", "upgrade02");
}

#[test]
fn update_from_0_3_0_matches_a_fresh_install() {
    update_matches_a_fresh_install("0.3.0", "upgrade03");
}

#[test]
fn update_from_0_4_0_matches_a_fresh_install() {
    update_matches_a_fresh_install("0.4.0", "upgrade04");
}

#[test]
fn update_from_0_5_0_matches_a_fresh_install() {
    update_matches_a_fresh_install("0.5.0", "upgrade05");
}

/// Install `old`, write a row under conflict handling, update to this
/// version: the row keeps its version, and the extension's members are
/// those of a fresh install.
fn update_matches_a_fresh_install(old: &str, cluster_name: &str) {
    install_old_script(old);
    let current = env!("CARGO_PKG_VERSION");
    let mut cluster = Cluster::new(cluster_name);
    let n = cluster.add_node("n", &[]);
    n.execute(&format!(
        "CREATE EXTENSION edgesync VERSION '{old}'; SELECT edgesync.create_node('n', 1);
         CREATE TABLE public.inventory (sku text PRIMARY KEY, qty int);
         SELECT edgesync.set_conflict_policy('public.inventory');
         INSERT INTO public.inventory VALUES ('A', 1);"
    ));
    let versions_before: Vec<String> = n
        .query("SELECT sku || ' ' || encode(edgesync_version, 'hex') || ' ' || edgesync.row_version(edgesync_version)::text FROM public.inventory ORDER BY sku")
        .iter()
        .map(|r| r.get(0))
        .collect();
    n.execute(&format!("ALTER EXTENSION edgesync UPDATE TO '{current}'"));
    let versions_after: Vec<String> = n
        .query("SELECT sku || ' ' || encode(edgesync_version, 'hex') || ' ' || edgesync.row_version(edgesync_version)::text FROM public.inventory ORDER BY sku")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions_after, versions_before, "row versions written before the update read the same after it");
    let defaults: i64 = n.scalar("SELECT count(*) FROM pg_attrdef WHERE adrelid = 'public.inventory'::regclass");
    assert_eq!(defaults, 0, "an enrolled table's version column has no default, as set_conflict_policy leaves it now");
    let named: String = n.scalar("SELECT edgesync.node_name(1)");
    assert_eq!(named, "n", "the node is in its own directory");
    let version: String = n.scalar("SELECT extversion FROM pg_extension WHERE extname = 'edgesync'");
    assert_eq!(version, current);
    n.execute("CREATE DATABASE fresh");
    let mut fresh = postgres::Client::connect(&format!("host=127.0.0.1 port={} user=postgres dbname=fresh", n.port), postgres::NoTls).unwrap();
    fresh.batch_execute("CREATE EXTENSION edgesync").unwrap();
    let (upgraded, installed) = (members(&n, "postgres"), members(&n, "fresh"));
    let missing: Vec<_> = installed.iter().filter(|m| !upgraded.contains(m)).collect();
    let extra: Vec<_> = upgraded.iter().filter(|m| !installed.contains(m)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing after the update: {missing:#?}\nonly in the update: {extra:#?}");
    // the data and the conflict handling of the old release carry on; the new API works
    n.execute("UPDATE public.inventory SET qty = 2 WHERE sku = 'A'; SELECT edgesync.add_table('public.inventory', sync => 'both')");
    let stamped: i64 = n.scalar("SELECT (edgesync.row_version(edgesync_version))[1] FROM public.inventory");
    assert!(stamped > 0);
    let peers: i64 = n.scalar("SELECT count(*) FROM edgesync.peers WHERE direction = 'push'");
    assert_eq!(peers, 0);
}
