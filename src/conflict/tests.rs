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
    fn every_version_handed_out_is_below_the_durable_reservation() {
        enrolled_table();
        Spi::run("INSERT INTO public.stock SELECT 'r' || g, g, NULL FROM generate_series(1, 50) g").unwrap();
        let covered = Spi::get_one::<bool>(
            "SELECT max((edgesync.row_version(edgesync_version))[1]) < (SELECT last_value FROM edgesync.clock_reservation)
               AND edgesync.clock_now() < (SELECT last_value FROM edgesync.clock_reservation)
               FROM public.stock",
        )
        .unwrap();
        assert_eq!(covered, Some(true));
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

    #[pg_test]
    fn the_version_column_has_no_default_while_the_trigger_stamps_rows() {
        enrolled_table();
        let defaults = "SELECT count(*) FROM pg_attrdef WHERE adrelid = 'public.stock'::regclass";
        assert_eq!(Spi::get_one::<i64>(defaults).unwrap(), Some(0), "the trigger stamps every row: no default to plan");
        // a remote row from a table without the column gets the zero version
        Spi::run("SELECT pg_replication_origin_create('edgesync_store_8')").unwrap();
        as_remote("edgesync_store_8", "INSERT INTO public.stock (sku, qty) VALUES ('remote', 1)");
        let remote = Spi::get_one::<Vec<i64>>("SELECT edgesync.row_version(edgesync_version) FROM public.stock WHERE sku = 'remote'").unwrap();
        assert_eq!(remote, Some(vec![0, 0, 0, 0]));
        // out of conflict handling with the column kept: new rows take the zero version again
        Spi::run("SELECT edgesync.drop_conflict_policy('public.stock'); INSERT INTO public.stock VALUES ('after', 1, NULL)").unwrap();
        let after = Spi::get_one::<Vec<i64>>("SELECT edgesync.row_version(edgesync_version) FROM public.stock WHERE sku = 'after'").unwrap();
        assert_eq!(after, Some(vec![0, 0, 0, 0]));
        // enrolled again: no default, and every row kept its version
        Spi::run("SELECT edgesync.set_conflict_policy('public.stock')").unwrap();
        assert_eq!(Spi::get_one::<i64>(defaults).unwrap(), Some(0));
        let zero = Spi::get_one::<i64>("SELECT count(*) FROM public.stock WHERE edgesync.row_version(edgesync_version) = '{0,0,0,0}'").unwrap();
        assert_eq!(zero, Some(3), "before, remote and after");
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
        let (status, resolution, by_me) = Spi::get_three::<String, String, bool>(&format!(
            "SELECT status, resolution, resolved_by = current_user AND resolved_at IS NOT NULL FROM edgesync.conflict_log WHERE id = {id}"
        ))
        .unwrap();
        assert_eq!((status.as_deref(), resolution.as_deref(), by_me), (Some("resolved"), Some("merge"), Some(true)));
        let row = Spi::get_one::<String>("SELECT sku || ':' || qty || ':' || note FROM public.stock WHERE sku = 'a'").unwrap();
        assert_eq!(row.as_deref(), Some("a:5:remote"), "the table holds the merged row");
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
        let tombstones = Spi::get_one::<String>("SELECT string_agg(key->>'sku', ',' ORDER BY key->>'sku') FROM edgesync.tombstone").unwrap();
        assert_eq!(tombstones.as_deref(), Some("new"), "only the expired tombstone goes");
        assert_eq!(Spi::get_one::<i64>("SELECT edgesync.purge_conflict_log('1 day')").unwrap(), Some(1), "pending ones stay");
        let kept = Spi::get_one::<String>(
            "SELECT string_agg(status || ':' || (detected_at > now() - interval '1 day'), ',' ORDER BY status) FROM edgesync.conflict_log",
        )
        .unwrap();
        assert_eq!(kept.as_deref(), Some("pending:false,resolved:true"), "the old pending one and the new resolved one stay");
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
             GRANT EXECUTE ON FUNCTION es_evil.now() TO es_owner;",
        )
        .unwrap();
        let as_owner_with_evil_path = |sql: &str| {
            Spi::run(&format!("SET ROLE es_owner; SET search_path = es_evil, pg_catalog; {sql}; RESET ROLE; RESET search_path;")).unwrap()
        };
        let tombstone = || Spi::get_one::<Vec<i64>>("SELECT version FROM edgesync.tombstone WHERE key = '{\"sku\": \"before\"}'").unwrap();
        as_owner_with_evil_path("DELETE FROM public.stock WHERE sku = 'before'");
        let first = tombstone().expect("the first delete leaves a tombstone");
        // A second delete of the key takes the tombstone's ON CONFLICT branch,
        // whose now() would be es_evil.now() under the caller's search_path.
        as_owner_with_evil_path("INSERT INTO public.stock VALUES ('before', 2, NULL); DELETE FROM public.stock WHERE sku = 'before'");
        let second = tombstone().expect("the tombstone stays");
        assert!(second[0] > first[0], "the tombstone now carries the second delete: {first:?} -> {second:?}");
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

    /// `public.shelf`, owned by the ordinary role es_shop, with a pending
    /// conflict on key 'x' (local qty 1, remote qty 2).
    fn conflict_on_a_table_of_an_ordinary_owner() -> i64 {
        Spi::run(
            "SELECT edgesync.create_node('test_node', 7);
             CREATE ROLE es_shop;
             CREATE TABLE public.shelf (sku text PRIMARY KEY, qty int);
             ALTER TABLE public.shelf OWNER TO es_shop;
             SELECT edgesync.set_conflict_policy('public.shelf', 'manual');
             INSERT INTO public.shelf VALUES ('x', 1);",
        )
        .unwrap();
        Spi::get_one::<i64>(
            "INSERT INTO edgesync.conflict_log (schema_name, table_name, conflict_type, resolution, key, local_row, remote_row,
                                                local_version, remote_version, status)
             SELECT 'public', 'shelf', 'update_origin_differs', 'pending', '{\"sku\": \"x\"}',
                    to_jsonb(s) - 'edgesync_version', '{\"sku\": \"x\", \"qty\": 2}', edgesync.row_version(s.edgesync_version), '{3,9,0,0}', 'pending'
               FROM public.shelf s
             RETURNING id",
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn the_tables_owner_settles_its_conflicts() {
        let id = conflict_on_a_table_of_an_ordinary_owner();
        Spi::run(&format!("SET LOCAL ROLE es_shop; SELECT edgesync.resolve_conflict({id}, 'apply_remote'); RESET ROLE")).unwrap();
        let (resolution, by) =
            Spi::get_two::<String, String>(&format!("SELECT resolution, resolved_by::text FROM edgesync.conflict_log WHERE id = {id}")).unwrap();
        assert_eq!((resolution.as_deref(), by.as_deref()), (Some("apply_remote"), Some("es_shop")));
        assert_eq!(Spi::get_one::<i32>("SELECT qty FROM public.shelf WHERE sku = 'x'").unwrap(), Some(2));
    }

    #[pg_test]
    fn a_non_superuser_admin_settles_conflicts_with_its_own_rights() {
        let id = conflict_on_a_table_of_an_ordinary_owner();
        Spi::run(
            "CREATE ROLE es_dba; GRANT edgesync_admin TO es_dba;
             GRANT SELECT, INSERT, UPDATE ON public.shelf TO es_dba",
        )
        .unwrap();
        Spi::run(&format!("SET LOCAL ROLE es_dba; SELECT edgesync.resolve_conflict({id}, 'keep_local'); RESET ROLE")).unwrap();
        let (resolution, by) =
            Spi::get_two::<String, String>(&format!("SELECT resolution, resolved_by::text FROM edgesync.conflict_log WHERE id = {id}")).unwrap();
        assert_eq!((resolution.as_deref(), by.as_deref()), (Some("keep_local"), Some("es_dba")));
        assert_eq!(Spi::get_one::<i32>("SELECT qty FROM public.shelf WHERE sku = 'x'").unwrap(), Some(1));
        let prev = Spi::get_one::<Vec<i64>>("SELECT edgesync.row_version(edgesync_version) FROM public.shelf").unwrap().unwrap();
        assert_eq!((prev[2], prev[3]), (3, 9), "written on top of the remote version");
    }

    #[pg_test(error = "permission denied for table shelf")]
    fn an_admin_without_rights_on_the_table_cannot_write_a_resolution() {
        let id = conflict_on_a_table_of_an_ordinary_owner();
        Spi::run("CREATE ROLE es_dba2; GRANT edgesync_admin TO es_dba2").unwrap();
        Spi::run(&format!("SET LOCAL ROLE es_dba2; SELECT edgesync.resolve_conflict({id}, 'keep_local')")).unwrap();
    }

    #[pg_test]
    fn custom_row_data_with_some_columns_keeps_the_others_from_the_local_row() {
        let id = pending_conflict();
        Spi::run("UPDATE public.stock SET note = 'local note' WHERE sku = 'a'").unwrap();
        let kept = Spi::get_one::<pgrx::JsonB>(&format!("SELECT edgesync.resolve_conflict({id}, 'custom', '{{\"qty\": 42}}')")).unwrap().unwrap();
        assert_eq!((kept.0["qty"].clone(), kept.0["note"].clone()), (serde_json::json!(42), serde_json::json!("local note")));
        let row = Spi::get_one::<String>("SELECT sku || ':' || qty || ':' || note FROM public.stock WHERE sku = 'a'").unwrap();
        assert_eq!(row.as_deref(), Some("a:42:local note"));
        let (resolution, status) =
            Spi::get_two::<String, String>(&format!("SELECT resolution, status FROM edgesync.conflict_log WHERE id = {id}")).unwrap();
        assert_eq!((resolution.as_deref(), status.as_deref()), (Some("custom"), Some("resolved")));
    }

    /// Apply's word that no row has an insert's key holds for the insert it
    /// was given for only: its table, in its command (a row a trigger
    /// inserts meanwhile is in a later command), and only while the guard lives.
    #[pg_test]
    fn an_absent_key_holds_for_its_own_insert_only() {
        enrolled_table();
        let relid = Spi::get_one::<pg_sys::Oid>("SELECT 'public.stock'::regclass::oid").unwrap().unwrap();
        // SAFETY: marks this test transaction's current command as used, as a write does.
        unsafe { pg_sys::GetCurrentCommandId(true) };
        let absent = crate::conflict::KeyAbsent::set(relid);
        assert!(crate::conflict::flags::key_known_absent(relid));
        assert!(!crate::conflict::flags::key_known_absent(pg_sys::Oid::from(relid.to_u32() + 1)), "another table");
        drop(absent);
        assert!(!crate::conflict::flags::key_known_absent(relid), "the guard is gone");
        let _absent = crate::conflict::KeyAbsent::set(relid);
        // SAFETY: advances this test transaction's command counter.
        unsafe { pg_sys::CommandCounterIncrement() };
        assert!(!crate::conflict::flags::key_known_absent(relid), "a later command");
    }

    #[pg_test]
    fn the_plan_cache_is_bounded() {
        Spi::connect(|client| {
            for i in 0..crate::plan_cache::MAX_PLANS + 100 {
                crate::plan_cache::plan_for(client, &format!("SELECT {i}"), &[], false).unwrap();
            }
        });
        let kept = crate::plan_cache::kept_plans();
        assert!(kept > 0 && kept <= crate::plan_cache::MAX_PLANS, "{kept} plans kept");
    }

    /// A remote change, as an apply under origin `origin` makes it: the
    /// conflicts it meets name the nodes that wrote each side (by the
    /// version, through the directory), or, without a remote version, the
    /// node the origin is named for; a native origin never shows.
    fn as_remote(origin: &str, sql: &str) {
        Spi::run(&format!(
            "SELECT pg_replication_origin_session_setup('{origin}');
             {sql};
             SELECT pg_replication_origin_session_reset();"
        ))
        .unwrap();
    }

    #[pg_test]
    fn remote_inserts_meet_the_local_row_wherever_its_key_sits_in_the_index() {
        Spi::run("SELECT edgesync.create_node('test_node', 7); SELECT pg_replication_origin_create('edgesync_store_8');").unwrap();
        // integer keys are compared in place on the last leaf, others through their function
        for key_type in ["bigint", "integer", "smallint", "numeric", "text"] {
            let table = format!("public.meter_{key_type}");
            Spi::run(&format!(
                "CREATE TABLE {table} (id {key_type} PRIMARY KEY, v int);
                 SELECT edgesync.set_conflict_policy('{table}', 'manual');
                 INSERT INTO {table} SELECT (2 * g)::{key_type}, 0 FROM generate_series(1000, 2999) g;"
            ))
            .unwrap();
            // keys on a page left of the last leaf (taken, free), between two
            // keys on the last leaf (taken, free), its last key, and after it
            for id in [2008, 2007, 5996, 5997, 5998, 6000] {
                as_remote(
                    "edgesync_store_8",
                    &format!("INSERT INTO {table} VALUES ({id}::{key_type}, 1, edgesync.make_row_version('{{65536,8,0,0}}'))"),
                );
            }
            let conflicts = Spi::get_one::<String>(&format!(
                "SELECT string_agg(key->>'id', ' ' ORDER BY (key->>'id')::int) FROM edgesync.conflict_log WHERE table_name = 'meter_{key_type}'"
            ))
            .unwrap();
            assert_eq!(conflicts.as_deref(), Some("2008 5996 5998"), "{key_type}: each taken key is found");
            let inserted = Spi::get_one::<String>(&format!("SELECT string_agg(id::text, ' ' ORDER BY id::int) FROM {table} WHERE v = 1")).unwrap();
            assert_eq!(inserted.as_deref(), Some("2007 5997 6000"), "{key_type}: each free key is inserted");
        }
    }

    /// A row of `table` formed by PostgreSQL from `values` (None: NULL),
    /// stamped both ways with its column `attnum` as the version: appended
    /// (None when the shape does not allow it) and formed anew. As bytes:
    /// `t_len`, then the header and data.
    fn both_stampings(table: &str, attnum: i16, values: &[Option<pg_sys::Datum>]) -> (Option<Vec<u8>>, Vec<u8>) {
        use crate::conflict::stamp::{with_stamp_appended, with_stamp_replaced};
        use crate::model::conflict::version::{RowStamp, Version};
        let stamp = RowStamp { version: Version::new(0x1234_5678_9abc, 7), prev: Version::new(0x42, 3) };
        let rel = pgrx::PgRelation::open_with_name_and_share_lock(table).unwrap();
        let tupdesc = rel.rd_att;
        let mut datums: Vec<pg_sys::Datum> = values.iter().map(|v| v.unwrap_or(pg_sys::Datum::from(0))).collect();
        let mut nulls: Vec<bool> = values.iter().map(Option::is_none).collect();
        // the layout: length, header from t_ctid on, data. The header's first
        // 12 bytes and t_infomask's transaction bits are heap_insert's to
        // write (xmin, xmax, cid), and on 15 heap_modify_tuple_by_cols leaves
        // other values there than 18 does.
        let bytes = |t: pg_sys::HeapTuple| {
            // SAFETY: `t` is a tuple just formed, `t_len` bytes of header and data.
            let mut b = unsafe { [&(*t).t_len.to_le_bytes()[..], std::slice::from_raw_parts((*t).t_data.cast::<u8>(), (*t).t_len as usize)].concat() };
            let infomask = 4 + std::mem::offset_of!(pg_sys::HeapTupleHeaderData, t_infomask);
            b[4..16].fill(0);
            b[infomask + 1] &= !((pg_sys::HEAP_XACT_MASK >> 8) as u8);
            b[infomask] &= !(pg_sys::HEAP_XACT_MASK as u8);
            b
        };
        // SAFETY: one datum and null flag per column of `tupdesc`, whose
        // version column is `attnum`; the tuples live in this memory context.
        unsafe {
            let tuple = pg_sys::heap_form_tuple(tupdesc, datums.as_mut_ptr(), nulls.as_mut_ptr());
            (with_stamp_appended(tuple, tupdesc, attnum, stamp).map(bytes), bytes(with_stamp_replaced(tuple, tupdesc, attnum, stamp)))
        }
    }

    #[pg_test]
    fn a_stamp_appended_to_a_row_is_laid_out_as_postgresql_forms_it() {
        Spi::run(
            "CREATE TABLE public.narrow (id bigint, note text, flag boolean, v bytea);
             CREATE TABLE public.wide (a1 int, a2 int, a3 int, a4 int, a5 int, a6 int, a7 int, a8 int, v bytea);
             CREATE TABLE public.dropped (id bigint, gone text, v bytea); ALTER TABLE public.dropped DROP COLUMN gone;
             CREATE TABLE public.plain_storage (id bigint, v bytea); ALTER TABLE public.plain_storage ALTER COLUMN v SET STORAGE PLAIN;
             CREATE TABLE public.middle (id bigint, v bytea, z int);",
        )
        .unwrap();
        let (id, note, yes) = (7i64.into_datum(), "a note".into_datum(), true.into_datum());
        let given = Some(pg_sys::Datum::from(pgrx::varlena::rust_byte_slice_to_bytea(&[1, 2, 3]).into_pg()));
        let same = |table: &str, attnum: i16, values: &[Option<pg_sys::Datum>]| {
            let (appended, replaced) = both_stampings(table, attnum, values);
            assert_eq!(appended.as_ref(), Some(&replaced), "{table} {values:?}: appended as formed anew");
        };
        let refused = |table: &str, attnum: i16, values: &[Option<pg_sys::Datum>]| {
            assert_eq!(both_stampings(table, attnum, values).0, None, "{table} {values:?}: not appended");
        };
        // after data that ends unaligned (a boolean), with no other NULL (the
        // bitmap goes) and with one (it stays)
        same("public.narrow", 4, &[id, note, yes, None]);
        same("public.narrow", 4, &[id, None, yes, None]);
        // nine columns: without its bitmap the data would start 8 bytes
        // earlier, so only a row with another NULL is appended to
        let mut wide: Vec<Option<pg_sys::Datum>> = (1..=8).map(|i: i32| i.into_datum()).collect();
        wide.push(None);
        refused("public.wide", 9, &wide);
        wide[0] = None;
        same("public.wide", 9, &wide);
        // a dropped column is NULL in every row: the bitmap stays
        same("public.dropped", 3, &[id, None, None]);
        // a version already there, one stored with a 4-byte header, one not last
        refused("public.narrow", 4, &[id, note, yes, given]);
        refused("public.plain_storage", 2, &[id, None]);
        refused("public.middle", 2, &[id, None, 1i32.into_datum()]);
    }

    #[pg_test]
    fn conflicts_name_the_nodes_that_wrote_each_side() {
        enrolled_table();
        Spi::run("SELECT edgesync._learn_node(8, 'store_8', now()); INSERT INTO public.stock VALUES ('a', 5, NULL), ('b', 5, NULL), ('c', 5, NULL), ('d', 5, NULL)").unwrap();
        Spi::run("SELECT pg_replication_origin_create('edgesync_store_8')").unwrap();
        // a native subscription's origin (never connected)
        Spi::run("CREATE SUBSCRIPTION es_sub CONNECTION 'host=nowhere.invalid' PUBLICATION es_pub WITH (connect = false)").unwrap();
        let native = Spi::get_one::<String>("SELECT 'pg_' || oid FROM pg_subscription WHERE subname = 'es_sub'").unwrap().unwrap();
        // versions written concurrently with the local rows by node 8 and node 9 (not in
        // the directory), one over a row from before conflict handling, and deletes
        // without versions (as native ones arrive) under an edgesync origin and a native one
        as_remote(
            "edgesync_store_8",
            "UPDATE public.stock SET qty = 8, edgesync_version = edgesync.make_row_version('{65536,8,0,0}') WHERE sku = 'a';
             UPDATE public.stock SET qty = 9, edgesync_version = edgesync.make_row_version('{65536,9,0,0}') WHERE sku = 'b';
             UPDATE public.stock SET qty = 0, edgesync_version = edgesync.make_row_version('{65536,8,1,1}') WHERE sku = 'before';
             DELETE FROM public.stock WHERE sku = 'c'",
        );
        as_remote(&native, "DELETE FROM public.stock WHERE sku = 'd'");
        let logged = Spi::get_one::<String>(
            "SELECT string_agg(format('%s %s %s>%s', key->>'sku', conflict_type, local_origin, remote_origin), ', ' ORDER BY key->>'sku')
               FROM edgesync.conflict_log",
        )
        .unwrap();
        assert_eq!(
            logged.as_deref(),
            Some(
                "a update_origin_differs test_node>store_8, b update_origin_differs test_node>node 9, \
                 before update_origin_differs initial>store_8, c delete_origin_differs test_node>store_8, \
                 d delete_origin_differs test_node>subscription es_sub"
            )
        );
    }
}
