//! `#[pg_test]`s of conflict handling: the trigger's stamps, policies,
//! settling conflicts by hand, purges and grants. Two-node behaviour is in
//! `tests/conflicts.rs`.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

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
}
