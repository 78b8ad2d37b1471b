//! edgesync: keeps edge PostgreSQL nodes and a cloud node in sync.
//!
//! Vocabulary (see README.md, "Concepts"), used the same way in every file:
//! - node: one PostgreSQL database running edgesync.
//! - peer: a node this node talks to (an edge has one: the cloud).
//! - check: one row of `edgesync.health`, a metric judged ok / warning / critical.
//! - finding: one row of `edgesync.diagnose()`, a setting or object to fix, with the SQL that fixes it.
//! - threshold: the warning or critical level of a check, from the `edgesync.lag_*` settings.
//!
//! Layout: `model/` holds pure logic (no pgrx); the other modules are thin
//! glue that read the server and call it; hand-written SQL lives in `sql/`.

use pgrx::prelude::*;

pub mod model;

mod apply;
mod capture;
mod clock;
mod conflict;
mod guc;
mod health;
mod node;
mod peers;
mod privilege;
mod resolution;
mod transport;
mod worker;

::pgrx::pg_module_magic!();

/// Called when the library is loaded (at server start when it is in
/// `shared_preload_libraries`, else on first use in a session).
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::define();
    clock::init_shared_memory();
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        peers::init_shared_memory();
    }
    worker::register_launcher();
}

// Roles, the node table and conflict bookkeeping: first, needing nothing from Rust.
extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
// Sync enrolment, peers, the receiving side and the peers view: after the Rust functions they call.
extension_sql_file!(
    "../sql/forwarder.sql",
    name = "forwarder",
    requires = ["schema", apply::_apply_batch, apply::_batch_format, peers::_peer_status, peers::sync_now,
                peers::_conninfo_error, peers::_wake_launcher_at_commit, peers::_require_superuser_for_conninfo,
                peers::_require_table_owner]
);
// The statistics views and every grant, last: they use the Rust functions.
extension_sql_file!("../sql/health.sql", name = "health_views", finalize);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn thresholds_follow_settings() {
        Spi::run("SET edgesync.lag_warning_bytes = '2MB'; SET edgesync.lag_critical_seconds = '2min'").unwrap();
        let (wb, cs) = Spi::get_two::<i64, f64>("SELECT warning_bytes, critical_seconds FROM edgesync.thresholds()").unwrap();
        assert_eq!(wb, Some(2 * 1024 * 1024));
        assert_eq!(cs, Some(120.0));
    }

    #[pg_test]
    fn views_answer_on_a_plain_node() {
        // replication slots outlive a rolled-back test: serialize with the slot test
        Spi::run("SELECT pg_advisory_xact_lock(4242)").unwrap();
        for view in ["streaming_replication", "wal_receiver", "replication_slots", "subscriptions", "health"] {
            Spi::get_one::<i64>(&format!("SELECT count(*) FROM edgesync.{view}"))
                .unwrap_or_else(|e| panic!("edgesync.{view}: {e}"));
        }
        // nothing to watch: one "node" row that says so
        let (component, status) =
            Spi::get_two::<String, String>("SELECT component, status FROM edgesync.health").unwrap();
        assert_eq!(component.as_deref(), Some("node"));
        assert_eq!(status.as_deref(), Some("ok"));
        // no standby here: wal_receiver is empty
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM edgesync.wal_receiver").unwrap(), Some(0));
    }

    #[pg_test]
    fn slot_shows_in_views_and_health() {
        Spi::run("SELECT pg_advisory_xact_lock(4242)").unwrap();
        Spi::run("SELECT pg_create_physical_replication_slot('es_test_slot', true)").unwrap();
        let (active, retained) = Spi::get_two::<bool, i64>(
            "SELECT active, retained_wal_bytes FROM edgesync.replication_slots WHERE slot_name = 'es_test_slot'",
        )
        .unwrap();
        assert_eq!(active, Some(false));
        assert!(retained.unwrap() >= 0);
        let status = Spi::get_one::<String>(
            "SELECT status FROM edgesync.health WHERE object = 'es_test_slot' AND metric = 'inactive_seconds'",
        )
        .unwrap();
        assert_eq!(status.as_deref(), Some("critical"));
        let version_col = Spi::get_one::<bool>(
            "SELECT (current_setting('server_version_num')::int >= 170000) = (inactive_since IS NOT NULL) FROM edgesync.replication_slots WHERE slot_name = 'es_test_slot'",
        )
        .unwrap();
        assert_eq!(version_col, Some(true), "inactive_since is set exactly on 17+");
        Spi::run("SELECT pg_drop_replication_slot('es_test_slot')").unwrap();
    }

    #[pg_test]
    fn diagnose_reports_settings_with_fixes() {
        let rows = Spi::get_one::<i64>("SELECT count(*) FROM edgesync.diagnose() WHERE fix IS NULL OR fix = ''").unwrap();
        assert_eq!(rows, Some(0), "every finding carries a fix");
        // The test server runs with wal_level = logical and edgesync preloaded (see below).
        let wal = Spi::get_one::<i64>("SELECT count(*) FROM edgesync.diagnose() WHERE subject = 'wal_level'").unwrap();
        assert_eq!(wal, Some(0));
        let preload = Spi::get_one::<i64>("SELECT count(*) FROM edgesync.diagnose() WHERE subject = 'shared_preload_libraries'").unwrap();
        assert_eq!(preload, Some(0));
    }

    #[pg_test]
    fn monitoring_is_not_public() {
        let public_can = Spi::get_one::<bool>(
            "SELECT has_function_privilege('public', 'edgesync.diagnose()', 'EXECUTE') OR has_table_privilege('public', 'edgesync.health', 'SELECT')",
        )
        .unwrap();
        assert_eq!(public_can, Some(false));
        let monitor_can = Spi::get_one::<bool>(
            "SELECT has_function_privilege('pg_monitor', 'edgesync.diagnose()', 'EXECUTE') AND has_table_privilege('pg_monitor', 'edgesync.health', 'SELECT')",
        )
        .unwrap();
        assert_eq!(monitor_can, Some(true));
    }

    // ---- conflict handling ----

    fn enrolled_table() {
        Spi::run(
            "SELECT edgesync.create_node('test_node', 7);
             CREATE TABLE public.stock (sku text PRIMARY KEY, qty int, note text);
             INSERT INTO public.stock VALUES ('before', 1, NULL);
             SELECT edgesync.set_conflict_policy('public.stock', 'last_writer_wins');",
        )
        .unwrap();
    }

    #[pg_test]
    fn local_writes_are_stamped_with_this_node_and_the_previous_version() {
        enrolled_table();
        let before = Spi::get_one::<Vec<i64>>("SELECT edgesync.row_version(edgesync_version) FROM public.stock WHERE sku = 'before'").unwrap().unwrap();
        assert_eq!(before, vec![0, 0, 0, 0], "rows older than the policy carry the zero version");
        Spi::run("INSERT INTO public.stock VALUES ('a', 5, NULL)").unwrap();
        let v1 = Spi::get_one::<Vec<i64>>("SELECT edgesync.row_version(edgesync_version) FROM public.stock WHERE sku = 'a'").unwrap().unwrap();
        assert_eq!(v1[1], 7);
        assert!(v1[0] > 0);
        assert_eq!((v1[2], v1[3]), (0, 0));
        Spi::run("UPDATE public.stock SET qty = 6 WHERE sku = 'a'").unwrap();
        let v2 = Spi::get_one::<Vec<i64>>("SELECT edgesync.row_version(edgesync_version) FROM public.stock WHERE sku = 'a'").unwrap().unwrap();
        assert!(v2[0] > v1[0], "the clock moves forward");
        assert_eq!((v2[2], v2[3]), (v1[0], v1[1]), "prev is the replaced version");
        // a version written by hand is overwritten
        Spi::run("UPDATE public.stock SET edgesync_version = edgesync.make_row_version('{1,1,1,1}') WHERE sku = 'a'").unwrap();
        let v3 = Spi::get_one::<Vec<i64>>("SELECT edgesync.row_version(edgesync_version) FROM public.stock WHERE sku = 'a'").unwrap().unwrap();
        assert!(v3[0] > v2[0] && v3[1] == 7);
        // a local delete leaves a tombstone; no conflict is logged for local writes
        Spi::run("DELETE FROM public.stock WHERE sku = 'a'").unwrap();
        let tomb = Spi::get_one::<i64>("SELECT count(*) FROM edgesync.tombstone WHERE key = '{\"sku\": \"a\"}'").unwrap();
        assert_eq!(tomb, Some(1));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM edgesync.conflict_log").unwrap(), Some(0));
        let trigger = Spi::get_one::<String>("SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'edgesync_conflict'").unwrap();
        assert_eq!(trigger.as_deref(), Some("A"), "ENABLE ALWAYS");
    }

    #[pg_test]
    fn drop_conflict_policy_undoes_it() {
        enrolled_table();
        Spi::run("SELECT edgesync.drop_conflict_policy('public.stock', drop_column => true)").unwrap();
        let left = Spi::get_one::<i64>(
            "SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.stock'::regclass AND tgname = 'edgesync_conflict')
                  + (SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.stock'::regclass AND attname = 'edgesync_version' AND NOT attisdropped)
                  + (SELECT count(*) FROM edgesync.conflict_table)",
        )
        .unwrap();
        assert_eq!(left, Some(0));
    }

    #[pg_test(error = "edgesync: table public.no_key has no primary key")]
    fn a_table_without_a_primary_key_is_refused() {
        Spi::run("CREATE TABLE public.no_key (a int)").unwrap();
        Spi::run("SELECT edgesync.set_conflict_policy('public.no_key')").unwrap();
    }

    #[pg_test(error = "edgesync: unknown conflict policy \"newest\": expected one of last_writer_wins, keep_local, apply_remote, manual, custom")]
    fn an_unknown_policy_is_refused() {
        Spi::run("CREATE TABLE public.t (a int PRIMARY KEY)").unwrap();
        Spi::run("SELECT edgesync.set_conflict_policy('public.t', 'newest')").unwrap();
    }

    #[pg_test(error = "edgesync: policy custom needs a handler")]
    fn custom_without_a_handler_is_refused() {
        Spi::run("CREATE TABLE public.t (a int PRIMARY KEY)").unwrap();
        Spi::run("SELECT edgesync.set_conflict_policy('public.t', 'custom')").unwrap();
    }

    #[pg_test(error = "edgesync: handler public.wrong_shape must take (regclass, text, jsonb, jsonb) and return jsonb")]
    fn a_handler_of_the_wrong_shape_is_refused() {
        Spi::run("CREATE TABLE public.t (a int PRIMARY KEY); CREATE FUNCTION public.wrong_shape(int) RETURNS int LANGUAGE sql AS 'SELECT 1'").unwrap();
        Spi::run("SELECT edgesync.set_conflict_policy('public.t', 'custom', handler => 'public.wrong_shape'::regproc)").unwrap();
    }

    #[pg_test(error = "edgesync: conflict 424242 does not exist")]
    fn resolving_an_unknown_conflict_is_refused() {
        Spi::run("SELECT edgesync.resolve_conflict(424242, 'keep_local')").unwrap();
    }

    #[pg_test(error = "edgesync: unknown resolution \"wins\": expected one of apply_remote, keep_local, merge, custom")]
    fn an_unknown_resolution_is_refused() {
        Spi::run("SELECT edgesync.resolve_conflict(1, 'wins')").unwrap();
    }

    #[pg_test]
    fn row_versions_are_24_bytes_and_readable() {
        let (len, parts) = Spi::get_two::<i32, Vec<i64>>(
            "SELECT octet_length(edgesync.make_row_version('{5,6,7,8}')), edgesync.row_version(edgesync.make_row_version('{5,6,7,8}'))",
        )
        .unwrap();
        assert_eq!(len, Some(24));
        assert_eq!(parts, Some(vec![5, 6, 7, 8]));
    }

    #[pg_test(error = "edgesync: edgesync_version must be 24 bytes, not 2")]
    fn a_malformed_row_version_is_refused() {
        Spi::run("SELECT edgesync.row_version('\\x0102'::bytea)").unwrap();
    }

    #[pg_test(error = "edgesync: this database is already node \"test_node\" (id 7)")]
    fn a_node_keeps_its_name() {
        Spi::run("SELECT edgesync.create_node('test_node', 7)").unwrap();
        assert_eq!(Spi::get_one::<i32>("SELECT edgesync.create_node('test_node')").unwrap(), Some(7));
        Spi::run("SELECT edgesync.create_node('other')").unwrap();
    }

    /// A pending conflict on public.stock (key 'a'), as the trigger would log it.
    fn pending_conflict() -> i64 {
        enrolled_table();
        Spi::run("INSERT INTO public.stock VALUES ('a', 5, NULL)").unwrap();
        Spi::get_one::<i64>(
            "INSERT INTO edgesync.conflict_log (schema_name, table_name, conflict_type, resolution, key, local_row, remote_row,
                                                local_version, remote_version, status)
             SELECT 'public', 'stock', 'update_origin_differs', 'pending', '{\"sku\": \"a\"}',
                    to_jsonb(s), '{\"sku\": \"a\", \"qty\": 9, \"note\": \"remote\"}', edgesync.row_version(s.edgesync_version), '{2,9,0,0}', 'pending'
               FROM public.stock s WHERE sku = 'a'
             RETURNING id",
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test(error = "edgesync: row_data has columns [\"colour\"] that public.stock does not have")]
    fn custom_row_data_must_fit_the_table() {
        let id = pending_conflict();
        Spi::run(&format!("SELECT edgesync.resolve_conflict({id}, 'custom', '{{\"colour\": \"red\"}}')")).unwrap();
    }

    #[pg_test(error = "edgesync: row_data may not change key column sku")]
    fn custom_row_data_may_not_change_the_key() {
        let id = pending_conflict();
        Spi::run(&format!("SELECT edgesync.resolve_conflict({id}, 'custom', '{{\"sku\": \"b\"}}')")).unwrap();
    }

    #[pg_test(error = "edgesync: resolution custom needs row_data, a jsonb object of the row to keep")]
    fn custom_needs_row_data() {
        let id = pending_conflict();
        Spi::run(&format!("SELECT edgesync.resolve_conflict({id}, 'custom')")).unwrap();
    }

    #[pg_test]
    fn merge_fills_nulls_and_resolves() {
        let id = pending_conflict();
        let kept = Spi::get_one::<pgrx::JsonB>(&format!("SELECT edgesync.resolve_conflict({id}, 'merge')")).unwrap().unwrap();
        assert_eq!(kept.0["qty"], 5, "local values stay");
        assert_eq!(kept.0["note"], "remote", "NULLs are filled from the remote row");
        let (status, by) = Spi::get_two::<String, String>(&format!("SELECT status, resolved_by::text FROM edgesync.conflict_log WHERE id = {id}")).unwrap();
        assert_eq!(status.as_deref(), Some("resolved"));
        assert!(by.is_some());
        let prev = Spi::get_one::<Vec<i64>>("SELECT edgesync.row_version(edgesync_version) FROM public.stock WHERE sku = 'a'").unwrap().unwrap();
        assert_eq!((prev[2], prev[3]), (2, 9), "the resolution is written on top of the remote version");
    }

    #[pg_test]
    fn keep_local_puts_back_a_row_a_remote_delete_removed() {
        enrolled_table();
        let id = Spi::get_one::<i64>(
            "INSERT INTO edgesync.conflict_log (schema_name, table_name, conflict_type, resolution, key, local_row,
                                                local_version, status)
             VALUES ('public', 'stock', 'delete_origin_differs', 'pending', '{\"sku\": \"gone\"}',
                     '{\"sku\": \"gone\", \"qty\": 3, \"note\": \"kept\"}', '{5,7,0,0}', 'pending')
             RETURNING id",
        )
        .unwrap()
        .unwrap();
        Spi::run(&format!("SELECT edgesync.resolve_conflict({id}, 'keep_local')")).unwrap();
        assert_eq!(Spi::get_one::<i32>("SELECT qty FROM public.stock WHERE sku = 'gone'").unwrap(), Some(3));
    }

    #[pg_test(error = "edgesync: only members of edgesync_admin or the owner of public.stock may settle its conflicts")]
    fn only_admins_and_owners_settle_conflicts() {
        let id = pending_conflict();
        Spi::run("CREATE ROLE es_clerk; GRANT EXECUTE ON FUNCTION edgesync.resolve_conflict(bigint, text, jsonb) TO es_clerk; SET ROLE es_clerk").unwrap();
        Spi::run(&format!("SELECT edgesync.resolve_conflict({id}, 'keep_local')")).unwrap();
    }

    #[pg_test(error = "permission denied for function resolve_conflict")]
    fn public_cannot_call_resolve() {
        Spi::run("CREATE ROLE es_nobody; SET ROLE es_nobody").unwrap();
        Spi::run("SELECT edgesync.resolve_conflict(1, 'keep_local')").unwrap();
    }

    #[pg_test(error = "edgesync: table public.t has no conflict policy")]
    fn dropping_a_policy_that_is_not_there_is_refused() {
        Spi::run("CREATE TABLE public.t (a int PRIMARY KEY)").unwrap();
        Spi::run("SELECT edgesync.drop_conflict_policy('public.t')").unwrap();
    }

    #[pg_test(error = "edgesync: older_than must be a non-negative interval")]
    fn purge_needs_a_sane_interval() {
        Spi::run("SELECT edgesync.purge_conflict_log('-1 day')").unwrap();
    }

    #[pg_test(error = "edgesync: node name \"bad name\" must be 1 to 48 letters, digits or underscores")]
    fn node_names_are_checked() {
        Spi::run("SELECT edgesync.create_node('bad name')").unwrap();
    }

    #[pg_test]
    fn purges_remove_only_what_is_old_enough() {
        enrolled_table();
        Spi::run(
            "INSERT INTO edgesync.tombstone (relid, key, version, deleted_at)
             VALUES ('public.stock'::regclass, '{\"sku\": \"old\"}', '{1,7,0,0}', now() - interval '30 days'),
                    ('public.stock'::regclass, '{\"sku\": \"new\"}', '{2,7,0,0}', now());
             INSERT INTO edgesync.conflict_log (detected_at, schema_name, table_name, conflict_type, resolution, key, status)
             VALUES (now() - interval '10 days', 'public', 'stock', 'insert_exists', 'keep_local', '{}', 'resolved'),
                    (now() - interval '10 days', 'public', 'stock', 'insert_exists', 'pending', '{}', 'pending'),
                    (now(), 'public', 'stock', 'insert_exists', 'keep_local', '{}', 'resolved');",
        )
        .unwrap();
        assert_eq!(Spi::get_one::<i64>("SELECT edgesync.purge_tombstones()").unwrap(), Some(1));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM edgesync.tombstone").unwrap(), Some(1));
        assert_eq!(Spi::get_one::<i64>("SELECT edgesync.purge_conflict_log('1 day')").unwrap(), Some(1), "pending ones stay");
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM edgesync.conflict_log").unwrap(), Some(2));
        let (pending, health) = Spi::get_two::<i64, String>(
            "SELECT (SELECT pending FROM edgesync.conflict_stats WHERE resolution = 'pending'),
                    (SELECT status FROM edgesync.health WHERE component = 'conflicts' AND object = 'public.stock')",
        )
        .unwrap();
        assert_eq!(pending, Some(1));
        assert_eq!(health.as_deref(), Some("warning"));
    }

    #[pg_test]
    fn bookkeeping_ignores_the_callers_search_path() {
        enrolled_table();
        Spi::run(
            "CREATE ROLE es_owner; ALTER TABLE public.stock OWNER TO es_owner;
             CREATE SCHEMA es_evil; GRANT USAGE ON SCHEMA es_evil TO es_owner;
             CREATE FUNCTION es_evil.now() RETURNS timestamptz LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
             GRANT EXECUTE ON FUNCTION es_evil.now() TO es_owner;
             SET ROLE es_owner; SET search_path = es_evil, pg_catalog;
             DELETE FROM public.stock WHERE sku = 'before';
             RESET ROLE; RESET search_path;",
        )
        .unwrap();
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM edgesync.tombstone").unwrap(), Some(1));
    }

    #[pg_test(error = "edgesync: public.parted is not a plain table")]
    fn partitioned_tables_are_refused() {
        Spi::run("CREATE TABLE public.parted (a int PRIMARY KEY) PARTITION BY RANGE (a)").unwrap();
        Spi::run("SELECT edgesync.set_conflict_policy('public.parted')").unwrap();
    }

    #[pg_test(error = "edgesync: the primary key of public.deferred is deferrable")]
    fn deferrable_keys_are_refused() {
        Spi::run("CREATE TABLE public.deferred (a int PRIMARY KEY DEFERRABLE)").unwrap();
        Spi::run("SELECT edgesync.set_conflict_policy('public.deferred')").unwrap();
    }

    #[pg_test]
    fn identity_columns_survive_a_settling_write() {
        Spi::run(
            "SELECT edgesync.create_node('test_node', 7);
             CREATE TABLE public.ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
             SELECT edgesync.set_conflict_policy('public.ident');
             SELECT edgesync._write_row('public.ident', '{\"id\": 42, \"v\": \"new\"}', ARRAY['id']);
             SELECT edgesync._write_row('public.ident', '{\"id\": 42, \"v\": \"again\"}', ARRAY['id']);",
        )
        .unwrap();
        assert_eq!(Spi::get_one::<String>("SELECT v FROM public.ident WHERE id = 42").unwrap().as_deref(), Some("again"));
    }

    #[pg_test(error = "edgesync: edgesync_version is missing: re-run edgesync.set_conflict_policy")]
    fn a_dropped_version_column_gets_a_clear_error() {
        enrolled_table();
        Spi::run("ALTER TABLE public.stock DROP COLUMN edgesync_version").unwrap();
        Spi::run("INSERT INTO public.stock VALUES ('x', 1, NULL)").unwrap();
    }

    #[pg_test]
    fn conflict_data_is_not_public() {
        let public_can = Spi::get_one::<bool>(
            "SELECT has_table_privilege('public', 'edgesync.conflict_log', 'SELECT')
                 OR has_function_privilege('public', 'edgesync.resolve_conflict(bigint, text, jsonb)', 'EXECUTE')
                 OR has_function_privilege('public', 'edgesync.resolve_conflicts(regclass, text, interval)', 'EXECUTE')",
        )
        .unwrap();
        assert_eq!(public_can, Some(false));
        let attach = Spi::get_one::<bool>("SELECT has_function_privilege('public', 'edgesync.conflict_trigger()', 'EXECUTE')").unwrap();
        assert_eq!(attach, Some(false), "only edgesync_admin attaches the conflict trigger");
        let admin_can = Spi::get_one::<bool>(
            "SELECT has_table_privilege('edgesync_admin', 'edgesync.conflict_log', 'SELECT')
                AND has_function_privilege('edgesync_admin', 'edgesync.resolve_conflict(bigint, text, jsonb)', 'EXECUTE')",
        )
        .unwrap();
        assert_eq!(admin_can, Some(true));
    }

    // ---- sync enrolment and peers (the forwarder itself runs in tests/forwarder.rs)

    #[pg_test(error = "edgesync: table public.no_key_sync has no primary key")]
    fn add_table_needs_a_primary_key() {
        Spi::run("CREATE TABLE public.no_key_sync (a int)").unwrap();
        Spi::run("SELECT edgesync.add_table('public.no_key_sync', sync => 'up')").unwrap();
    }

    #[pg_test(error = "edgesync: sync must be one of up, down, both, not 'sideways'")]
    fn add_table_checks_the_direction() {
        Spi::run("CREATE TABLE public.t_dir (a int PRIMARY KEY)").unwrap();
        Spi::run("SELECT edgesync.add_table('public.t_dir', sync => 'sideways')").unwrap();
    }

    #[pg_test]
    fn add_table_publishes_and_both_brings_last_writer_wins() {
        Spi::run("CREATE TABLE public.t_both (a int PRIMARY KEY, b text)").unwrap();
        Spi::run("SELECT edgesync.add_table('public.t_both', sync => 'both')").unwrap();
        let published = || {
            Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM pg_publication_tables WHERE pubname = 'edgesync_up' AND tablename = 't_both')")
                .unwrap()
                .unwrap()
        };
        assert!(published());
        assert_eq!(
            Spi::get_one::<String>("SELECT policy FROM edgesync.conflict_table WHERE relid = 'public.t_both'::regclass").unwrap().as_deref(),
            Some("last_writer_wins")
        );
        Spi::run("SELECT edgesync.add_table('public.t_both', sync => 'down')").unwrap();
        assert!(!published(), "down tables are not sent up");
        assert_eq!(Spi::get_one::<String>("SELECT direction FROM edgesync.sync_table").unwrap().as_deref(), Some("down"));
        Spi::run("SELECT edgesync.remove_table('public.t_both')").unwrap();
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM edgesync.sync_table").unwrap(), Some(0));
    }

    #[pg_test(error = "edgesync: table public.t_out is not enrolled in sync")]
    fn remove_table_of_a_table_not_enrolled() {
        Spi::run("CREATE TABLE public.t_out (a int PRIMARY KEY)").unwrap();
        Spi::run("SELECT edgesync.remove_table('public.t_out')").unwrap();
    }

    #[pg_test]
    fn conninfo_is_checked_by_libpq() {
        let check = |c: &str| Spi::get_one_with_args::<String>("SELECT edgesync._conninfo_error($1)", &[c.into()]).unwrap();
        assert_eq!(check("host=cloud.example port=5432 dbname=iot user=edge sslmode=verify-full connect_timeout=5"), None);
        assert_eq!(check("postgresql://edge@cloud.example/iot?sslmode=require"), None);
        assert!(check("host=cloud nonsense").is_some());
        assert!(check("colour=blue").unwrap().contains("colour"), "unknown keywords are named");
        // a password in a bad conninfo never comes back
        let e = check("password=s3cret host=a 'unterminated").unwrap_or_default();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[pg_test(error = "edgesync: mode must be one of realtime, batch, on_demand, not 'sometimes'")]
    fn add_peer_checks_the_mode() {
        Spi::run("SELECT edgesync.create_node('edge_t', 7)").unwrap();
        Spi::run("SELECT edgesync.add_peer('cloud', 'host=cloud.example', mode => 'sometimes')").unwrap();
    }

    #[pg_test(error = "edgesync: only the table's owner may enrol it in sync")]
    fn add_table_needs_the_tables_owner() {
        Spi::run("CREATE TABLE public.t_not_mine (a int PRIMARY KEY)").unwrap();
        Spi::run("CREATE ROLE es_test_admin; GRANT edgesync_admin TO es_test_admin; SET LOCAL ROLE es_test_admin").unwrap();
        Spi::run("SELECT edgesync.add_table('public.t_not_mine', sync => 'up')").unwrap();
    }

    #[pg_test(error = "edgesync: system catalogs do not sync")]
    fn add_table_refuses_catalogs() {
        Spi::run("SELECT edgesync.add_table('pg_catalog.pg_authid', sync => 'down')").unwrap();
    }

    #[pg_test(error = "edgesync: only a superuser may set a peer's conninfo")]
    fn add_peer_conninfo_needs_a_superuser() {
        Spi::run("CREATE ROLE es_test_admin2; GRANT edgesync_admin TO es_test_admin2; SET LOCAL ROLE es_test_admin2").unwrap();
        Spi::run("SELECT edgesync.add_peer('cloud', 'dbname=postgres')").unwrap();
    }

    #[pg_test(error = "edgesync: this database is not a node yet")]
    fn add_peer_needs_a_node() {
        Spi::run("SELECT edgesync.add_peer('cloud', 'host=cloud.example')").unwrap();
    }

    #[pg_test(error = "edgesync: peer name 'the cloud' must be 1 to 48 letters, digits or underscores")]
    fn add_peer_checks_the_name() {
        Spi::run("SELECT edgesync.add_peer('the cloud', 'host=cloud.example')").unwrap();
    }

    #[pg_test(error = "edgesync: max_batch_rows must be between 1 and 1000000")]
    fn add_peer_checks_the_batch_limits() {
        Spi::run("SELECT edgesync.add_peer('cloud', 'host=cloud.example', max_batch_rows => 0)").unwrap();
    }

    #[pg_test(error = "edgesync: no peer named 'nowhere'")]
    fn drop_peer_of_an_unknown_peer() {
        Spi::run("SELECT edgesync.drop_peer('nowhere')").unwrap();
    }

    #[pg_test(error = "edgesync: no peer named \"nowhere\"")]
    fn sync_now_of_an_unknown_peer() {
        Spi::run("SELECT edgesync.sync_now('nowhere')").unwrap();
    }

    #[pg_test(error = "edgesync: sender 'a b' is not a node name")]
    fn hello_checks_the_sender() {
        Spi::run("SELECT * FROM edgesync.hello('a b')").unwrap();
    }

    #[pg_test]
    fn peers_view_and_grants() {
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM edgesync.peers").unwrap(), Some(0));
        let grants = Spi::get_one::<bool>(
            "SELECT has_function_privilege('edgesync_peer', 'edgesync.apply_batch(bytea)', 'EXECUTE')
                AND NOT has_function_privilege('public', 'edgesync.apply_batch(bytea)', 'EXECUTE')
                AND NOT has_function_privilege('public', 'edgesync._apply_batch(bytea)', 'EXECUTE')
                AND NOT has_function_privilege('edgesync_peer', 'edgesync._apply_batch(bytea)', 'EXECUTE')
                AND NOT has_table_privilege('pg_monitor', 'edgesync.peer', 'SELECT')
                AND has_table_privilege('pg_monitor', 'edgesync.peers', 'SELECT')
                AND has_function_privilege('edgesync_admin', 'edgesync.add_peer(text, text, text, interval, integer, bigint)', 'EXECUTE')
                AND NOT has_function_privilege('public', 'edgesync.add_peer(text, text, text, interval, integer, bigint)', 'EXECUTE')",
        )
        .unwrap();
        assert_eq!(grants, Some(true));
    }
}

/// Used by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'edgesync'", "wal_level = logical", "track_commit_timestamp = on"]
    }
}
