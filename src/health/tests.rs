//! `#[pg_test]`s of the health views, `diagnose()` and their grants.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn thresholds_follow_settings() {
        Spi::run(
            "SET edgesync.lag_warning_bytes = '2MB'; SET edgesync.lag_critical_bytes = '3GB';
             SET edgesync.lag_warning_seconds = '45s'; SET edgesync.lag_critical_seconds = '2min'",
        )
        .unwrap();
        let all = Spi::get_one::<String>(
            "SELECT warning_bytes || ' ' || critical_bytes || ' ' || warning_seconds || ' ' || critical_seconds FROM edgesync.thresholds()",
        )
        .unwrap();
        assert_eq!(all.as_deref(), Some("2097152 3221225472 45 120"), "each threshold comes from its own setting");
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
        // a slot with no cap on the WAL it may hold (the test server keeps the default, unlimited)
        Spi::run("SELECT pg_advisory_xact_lock(4242); SELECT pg_create_physical_replication_slot('es_diag_slot', true)").unwrap();
        let (severity, fix) = Spi::get_two::<String, String>(
            "SELECT severity, fix FROM edgesync.diagnose() WHERE subject = 'max_slot_wal_keep_size'",
        )
        .expect("diagnose() reports the unlimited max_slot_wal_keep_size");
        assert_eq!(severity.as_deref(), Some("warning"));
        assert!(fix.unwrap_or_default().contains("ALTER SYSTEM SET max_slot_wal_keep_size"), "the finding says how to fix it");
        let rows = Spi::get_one::<i64>("SELECT count(*) FROM edgesync.diagnose() WHERE fix IS NULL OR fix = ''").unwrap();
        assert_eq!(rows, Some(0), "every finding carries a fix");
        Spi::run("SELECT pg_drop_replication_slot('es_diag_slot')").unwrap();
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

    #[pg_test]
    fn a_role_with_only_pg_monitor_reads_health_but_no_row_data() {
        Spi::run(
            "SELECT pg_advisory_xact_lock(4242);
             CREATE FUNCTION public.es_can_read(relation text) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN EXECUTE format('SELECT count(*) FROM %s', relation); RETURN true;
             EXCEPTION WHEN insufficient_privilege THEN RETURN false; END $$;
             CREATE ROLE es_watcher; GRANT pg_monitor TO es_watcher; SET LOCAL ROLE es_watcher",
        )
        .unwrap();
        for readable in [
            "edgesync.streaming_replication",
            "edgesync.wal_receiver",
            "edgesync.replication_slots",
            "edgesync.subscriptions",
            "edgesync.health",
            "edgesync.diagnose()",
            "edgesync.peers",
            "edgesync.downstream",
            "edgesync.edges",
        ] {
            let can = Spi::get_one_with_args::<bool>("SELECT public.es_can_read($1)", &[readable.into()]).unwrap();
            assert_eq!(can, Some(true), "pg_monitor reads {readable}");
        }
        for row_data in ["edgesync.conflict_log", "edgesync.conflicts", "edgesync.tombstone", "edgesync.peer", "edgesync.feed"] {
            let can = Spi::get_one_with_args::<bool>("SELECT public.es_can_read($1)", &[row_data.into()]).unwrap();
            assert_eq!(can, Some(false), "pg_monitor does not read {row_data}");
        }
        let node = Spi::get_one::<String>("SELECT status FROM edgesync.health WHERE component = 'node'").unwrap();
        assert_eq!(node.as_deref(), Some("ok"), "the checks themselves run with pg_monitor's rights");
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test]
    fn an_admin_forgets_a_downstream_and_a_typo_is_an_error() {
        Spi::run(
            "INSERT INTO edgesync.downstream VALUES ('retired', 'physical', NULL, '10.0.0.5', now(), now());
             CREATE ROLE es_dba; GRANT edgesync_admin TO es_dba; CREATE ROLE es_monitor; GRANT pg_monitor TO es_monitor",
        )
        .unwrap();
        let missing = Spi::get_one::<String>("SELECT status FROM edgesync.health WHERE component = 'downstream' AND object = 'retired'").unwrap();
        assert_eq!(missing.as_deref(), Some("ok"), "just seen: below the warning level");
        let monitor_may = Spi::get_one::<bool>("SELECT has_function_privilege('es_monitor', 'edgesync.forget_downstream(text)', 'EXECUTE')").unwrap();
        assert_eq!(monitor_may, Some(false), "monitoring reads, it does not retire");
        Spi::run("SET LOCAL ROLE es_dba; SELECT edgesync.forget_downstream('retired'); RESET ROLE").unwrap();
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM edgesync.downstream WHERE name = 'retired'").unwrap(), Some(0));
        // forgotten once: a second time is an unknown name (and any other outcome fails the block)
        Spi::run(
            "DO $$ BEGIN PERFORM edgesync.forget_downstream('retired'); RAISE EXCEPTION 'an unknown name was accepted';
               EXCEPTION WHEN undefined_object THEN NULL; END $$",
        )
        .unwrap();
    }

    #[pg_test]
    fn every_pinned_search_path_names_pg_temp_last() {
        // left out, pg_temp is searched first for tables: a caller's temporary
        // table could stand in for one of edgesync's in a SECURITY DEFINER function
        let unpinned = Spi::get_one::<String>(
            "SELECT string_agg(p.oid::regprocedure::text || ' ' || c, ', ')
               FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'edgesync',
                    unnest(p.proconfig) c
              WHERE c LIKE 'search_path=%' AND c NOT LIKE '%pg_temp'",
        )
        .unwrap();
        assert_eq!(unpinned, None, "functions whose search_path does not end with pg_temp");
        let pinned = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'edgesync' AND 'search_path=pg_catalog, pg_temp' = ANY (p.proconfig)",
        )
        .unwrap();
        assert!(pinned.unwrap() >= 20, "{pinned:?} functions pin search_path");
    }

    /// The column names and types of a view, in order.
    fn columns_of(view: &str) -> String {
        Spi::get_one_with_args::<String>(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
               FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0",
            &[view.into()],
        )
        .unwrap()
        .unwrap_or_default()
    }

    #[pg_test]
    fn the_edges_view_shows_each_registered_edge_and_is_for_monitoring() {
        assert_eq!(
            columns_of("edgesync.edges"),
            "name text, login name, system_identifier bigint, registered_at timestamp with time zone, \
             first_contact_at timestamp with time zone, last_hello timestamp with time zone, last_push timestamp with time zone, \
             pushed_position pg_lsn, last_pull timestamp with time zone, pull_position pg_lsn, feed_head pg_lsn, behind_bytes bigint, \
             behind_transactions bigint, beyond_retention boolean"
        );
        let grants = Spi::get_one::<bool>(
            "SELECT has_table_privilege('pg_monitor', 'edgesync.edges', 'SELECT')
                AND has_table_privilege('edgesync_admin', 'edgesync.edges', 'SELECT')
                AND NOT has_table_privilege('public', 'edgesync.edges', 'SELECT')
                AND has_function_privilege('pg_monitor', 'edgesync._edge_activity()', 'EXECUTE')
                AND NOT has_function_privilege('public', 'edgesync._edge_activity()', 'EXECUTE')
                AND NOT has_function_privilege('public', 'edgesync._note_edge_hello(text)', 'EXECUTE')
                AND NOT has_function_privilege('edgesync_peer', 'edgesync._note_edge_hello(text)', 'EXECUTE')
                AND NOT has_function_privilege('public', 'edgesync._forget_edge_activity_at_commit(text)', 'EXECUTE')",
        )
        .unwrap();
        assert_eq!(grants, Some(true));
        Spi::run("CREATE ROLE es_view_login LOGIN; SELECT edgesync.register_edge('es_view_edge', 'es_view_login')").unwrap();
        let row = Spi::get_one::<String>(
            "SELECT concat_ws(' ', name, login, last_push IS NULL, last_pull IS NULL, feed_head, behind_bytes IS NULL, beyond_retention IS NULL)
               FROM edgesync.edges",
        )
        .unwrap();
        assert_eq!(row.as_deref(), Some("es_view_edge es_view_login t t 0/0 t t"), "registered, nothing heard yet, an empty feed");
    }

    /// Activity lives in shared memory, which a rolled-back test leaves
    /// behind: this edge's name is its own.
    #[pg_test]
    fn the_edges_view_and_health_follow_an_edges_hello_and_pull() {
        Spi::run(
            "SELECT edgesync.create_node('es_cloud', 90);
             CREATE ROLE es_pull_login LOGIN; SELECT edgesync.register_edge('es_pulling_edge', 'es_pull_login');
             SELECT * FROM edgesync.hello('es_pulling_edge');
             SELECT * FROM edgesync.pull_batch('es_pulling_edge', '0/100');",
        )
        .unwrap();
        let seen = Spi::get_one::<String>(
            "SELECT concat_ws(' ', last_hello IS NOT NULL, last_pull >= now(), pull_position, behind_bytes, behind_transactions, beyond_retention)
               FROM edgesync.edges WHERE name = 'es_pulling_edge'",
        )
        .unwrap();
        assert_eq!(seen.as_deref(), Some("t t 0/100 0 0 f"), "the pull's position, at the feed's head");
        let health = |metric: &str| {
            Spi::get_two_with_args::<String, String>(
                "SELECT status, detail FROM edgesync.health WHERE component = 'edge' AND object = 'es_pulling_edge' AND metric = $1",
                &[metric.into()],
            )
            .unwrap()
        };
        let (status, detail) = health("silent_seconds");
        assert_eq!(status.as_deref(), Some("ok"));
        assert!(detail.unwrap_or_default().contains("edgesync.edge_silence_warning 3600 s, critical at 14400 s"), "the default levels");
        assert_eq!(health("feed_position").0.as_deref(), Some("ok"));
        // retention purges past the edge's position: resync needed
        Spi::run("UPDATE edgesync.feed_mark SET purged_through = '0/200'").unwrap();
        let beyond = Spi::get_one::<bool>("SELECT beyond_retention FROM edgesync.edges WHERE name = 'es_pulling_edge'").unwrap();
        assert_eq!(beyond, Some(true));
        let (status, detail) = health("feed_position");
        assert_eq!(status.as_deref(), Some("critical"));
        assert!(detail.unwrap_or_default().starts_with("resync needed: it pulls from 0/100, but the feed keeps only what follows 0/200"));
    }

    #[pg_test]
    fn edgesync_edge_silence_warning_is_a_server_wide_setting() {
        let (setting, context) = Spi::get_two::<String, String>(
            "SELECT setting || unit, context FROM pg_settings WHERE name = 'edgesync.edge_silence_warning'",
        )
        .unwrap();
        assert_eq!((setting.as_deref(), context.as_deref()), (Some("3600s"), Some("sighup")));
    }

    #[pg_test]
    fn diagnose_says_edges_need_the_feed_worker_in_this_database() {
        // the test server preloads edgesync with edgesync.database left at postgres
        Spi::run("CREATE ROLE es_diag_login LOGIN; SELECT edgesync.register_edge('es_diag_edge', 'es_diag_login')").unwrap();
        let (finding, fix) =
            Spi::get_two::<String, String>("SELECT finding, fix FROM edgesync.diagnose() WHERE subject = 'feed'").unwrap();
        let finding = finding.unwrap_or_default();
        assert!(finding.starts_with("1 edge(s) are registered but no feed worker runs for this database"), "{finding}");
        assert!(finding.contains("edgesync.database (postgres), not in this one"), "{finding}");
        let database = Spi::get_one::<String>("SELECT current_database()::text").unwrap().unwrap();
        assert_eq!(fix, Some(format!("ALTER SYSTEM SET edgesync.database = '{database}';")));
    }
}
