//! `#[pg_test]`s of sync enrolment and peers. The forwarder itself runs
//! in `tests/forwarder.rs` (a background worker never sees a pg_test's writes).

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

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
        // libpq quotes a part it cannot read back without saying it is a password
        let e = check("postgresql://edge:s3cret%zz@cloud.example/iot").unwrap_or_default();
        assert!(e.contains("percent") && !e.contains("s3cret"), "{e}");
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

    #[pg_test(error = "edgesync: node name 'a b' must be 1 to 48 letters, digits or underscores")]
    fn register_edge_checks_the_name() {
        Spi::run("CREATE ROLE es_store LOGIN; SELECT edgesync.register_edge('a b', 'es_store')").unwrap();
    }

    #[pg_test(error = "edgesync: es_nologin is not a role that can log in")]
    fn register_edge_needs_a_login_role() {
        Spi::run("CREATE ROLE es_nologin; SELECT edgesync.register_edge('store_1', 'es_nologin')").unwrap();
    }

    #[pg_test(error = "edgesync: no edge named 'nowhere' is registered")]
    fn reset_edge_of_an_unknown_edge() {
        Spi::run("SELECT edgesync.reset_edge('nowhere')").unwrap();
    }

    /// The first hello with a system identifier records it; another one
    /// under the same name is refused (as a superuser: the login check
    /// lets it through, the identity check does not).
    #[pg_test(error = "edgesync: node store_1 is another database than the one registered under its name (system identifier 42, not 43)")]
    fn hello_refuses_another_database_under_a_known_name() {
        Spi::run("CREATE ROLE es_store LOGIN; SELECT edgesync.register_edge('store_1', 'es_store')").unwrap();
        Spi::run("SELECT * FROM edgesync.hello('store_1', 42)").unwrap();
        assert_eq!(Spi::get_one::<i64>("SELECT system_identifier FROM edgesync.edge").unwrap(), Some(42));
        Spi::run("SELECT * FROM edgesync.hello('store_1', 43)").unwrap();
    }

    #[pg_test(error = "edgesync: no edge named 'nowhere' is registered")]
    fn drop_edge_of_an_unknown_edge() {
        Spi::run("SELECT edgesync.drop_edge('nowhere')").unwrap();
    }

    #[pg_test]
    fn an_edge_registered_again_moves_to_the_new_login_and_drop_edge_forgets_it() {
        Spi::run(
            "CREATE ROLE es_old LOGIN; CREATE ROLE es_new LOGIN;
             SELECT edgesync.register_edge('store_1', 'es_old'); SELECT edgesync.register_edge('store_1', 'es_new');
             SELECT pg_replication_origin_create('edgesync_store_1');",
        )
        .unwrap();
        assert_eq!(Spi::get_one::<String>("SELECT login::text FROM edgesync.edge WHERE name = 'store_1'").unwrap().as_deref(), Some("es_new"));
        Spi::run("SELECT edgesync.drop_edge('store_1')").unwrap();
        let left = Spi::get_one::<i64>(
            "SELECT (SELECT count(*) FROM edgesync.edge) + (SELECT count(*) FROM pg_replication_origin WHERE roname = 'edgesync_store_1')",
        );
        assert_eq!(left.unwrap(), Some(0), "its registration and its origin are gone");
        let grants = Spi::get_one::<bool>(
            "SELECT has_function_privilege('edgesync_admin', 'edgesync.register_edge(text, name)', 'EXECUTE')
                AND NOT has_function_privilege('edgesync_peer', 'edgesync.register_edge(text, name)', 'EXECUTE')
                AND NOT has_function_privilege('public', 'edgesync.drop_edge(text)', 'EXECUTE')
                AND NOT has_table_privilege('edgesync_peer', 'edgesync.edge', 'SELECT')",
        );
        assert_eq!(grants.unwrap(), Some(true));
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
                AND has_function_privilege('edgesync_admin', 'edgesync.add_peer(text, text, text, interval, integer, bigint, text)', 'EXECUTE')
                AND NOT has_function_privilege('public', 'edgesync.add_peer(text, text, text, interval, integer, bigint, text)', 'EXECUTE')",
        )
        .unwrap();
        assert_eq!(grants, Some(true));
    }

    /// A peer row as `add_peer` writes it, but without its slot: a slot
    /// cannot be created in a transaction that wrote, and a pg_test is one.
    fn a_peer_row() {
        Spi::run(
            "SELECT edgesync.create_node('edge_t', 7);
             INSERT INTO edgesync.peer (name, conninfo, mode, batch_interval, max_batch_rows, max_batch_bytes, slot_name)
             VALUES ('cloud', 'host=cloud.example password=s3cret', 'realtime', '1 minute', 10000, 16777216, 'edgesync_cloud')",
        )
        .unwrap();
    }

    #[pg_test]
    fn a_non_superuser_admin_manages_peers_and_reads_their_state() {
        a_peer_row();
        Spi::run(
            "CREATE ROLE es_ops; GRANT edgesync_admin TO es_ops; SET LOCAL ROLE es_ops;
             SELECT edgesync.alter_peer('cloud', mode => 'batch', max_batch_rows => 500);
             SELECT edgesync.pause_peer('cloud');",
        )
        .unwrap();
        let seen = Spi::get_one::<String>("SELECT peer || ':' || mode || ':' || state FROM edgesync.peers").unwrap();
        assert_eq!(seen.as_deref(), Some("cloud:batch:paused"), "an admin reads the peers view");
        Spi::run("RESET ROLE").unwrap();
        let (rows, paused) = Spi::get_two::<i32, bool>("SELECT max_batch_rows, paused FROM edgesync.peer").unwrap();
        assert_eq!((rows, paused), (Some(500), Some(true)));
        Spi::run("SET LOCAL ROLE es_ops; SELECT edgesync.resume_peer('cloud'); RESET ROLE").unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT paused FROM edgesync.peer").unwrap(), Some(false));
    }

    #[pg_test(error = "edgesync: only a superuser may set a peer's conninfo")]
    fn alter_peer_conninfo_needs_a_superuser() {
        a_peer_row();
        Spi::run("CREATE ROLE es_ops2; GRANT edgesync_admin TO es_ops2; SET LOCAL ROLE es_ops2").unwrap();
        Spi::run("SELECT edgesync.alter_peer('cloud', conninfo => 'host=elsewhere.example')").unwrap();
    }

    #[pg_test]
    fn a_monitoring_role_reads_the_peers_view_but_not_conninfos() {
        a_peer_row();
        Spi::run(
            "CREATE FUNCTION public.es_can_read(relation text) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN EXECUTE format('SELECT count(*) FROM %s', relation); RETURN true;
             EXCEPTION WHEN insufficient_privilege THEN RETURN false; END $$;
             CREATE ROLE es_watcher; GRANT pg_monitor TO es_watcher; SET LOCAL ROLE es_watcher",
        )
        .unwrap();
        let peers = Spi::get_one::<String>("SELECT peer || ':' || mode || ':' || slot_name FROM edgesync.peers").unwrap();
        assert_eq!(peers.as_deref(), Some("cloud:realtime:edgesync_cloud"));
        let shown = Spi::get_one::<String>("SELECT to_jsonb(p)::text FROM edgesync.peers p").unwrap().unwrap();
        assert!(!shown.contains("s3cret") && !shown.contains("cloud.example"), "no conninfo in the view: {shown}");
        assert_eq!(Spi::get_one::<bool>("SELECT public.es_can_read('edgesync.peer')").unwrap(), Some(false), "conninfos are the owner's");
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test(error = "edgesync: no peer named 'nowhere'")]
    fn skip_transaction_of_an_unknown_peer() {
        Spi::run("SELECT edgesync.skip_transaction('nowhere', '0/16B3748')").unwrap();
    }

    #[pg_test(error = "edgesync: lsn must not be NULL")]
    fn skip_transaction_needs_an_lsn() {
        a_peer_row();
        Spi::run("SELECT edgesync.skip_transaction('cloud', NULL)").unwrap();
    }

    /// Only the transaction the forwarder found blocking can be skipped:
    /// a peer that is not blocked has none, and nothing is written.
    #[pg_test(error = "edgesync: peer cloud is not blocked by any transaction")]
    fn skip_transaction_of_a_peer_that_is_not_blocked() {
        a_peer_row();
        Spi::run("CREATE ROLE es_ops3; GRANT edgesync_admin TO es_ops3; SET LOCAL ROLE es_ops3").unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT blocked_lsn IS NULL FROM edgesync.peers").unwrap(), Some(true));
        Spi::run("SELECT edgesync.skip_transaction('cloud', '0/16B3748')").unwrap();
    }

    /// The exceptions table holds row data: edgesync_admin reads it,
    /// pg_monitor does not; only edgesync_admin may skip.
    #[pg_test]
    fn skipped_transactions_are_for_admins_only() {
        let grants = Spi::get_one::<bool>(
            "SELECT has_table_privilege('edgesync_admin', 'edgesync.skipped_transaction', 'SELECT')
                AND NOT has_table_privilege('pg_monitor', 'edgesync.skipped_transaction', 'SELECT')
                AND NOT has_table_privilege('edgesync_admin', 'edgesync.skipped_transaction', 'INSERT, UPDATE, DELETE')
                AND has_function_privilege('edgesync_admin', 'edgesync.skip_transaction(text, pg_lsn)', 'EXECUTE')
                AND NOT has_function_privilege('pg_monitor', 'edgesync.skip_transaction(text, pg_lsn)', 'EXECUTE')
                AND NOT has_function_privilege('public', 'edgesync._request_round_at_commit(integer)', 'EXECUTE')
                AND has_function_privilege('pg_monitor', 'edgesync._peer_blocked()', 'EXECUTE')",
        )
        .unwrap();
        assert_eq!(grants, Some(true));
    }

    /// SQL text composed server-side quotes identifiers by PostgreSQL's own
    /// rule: every keyword that is not unreserved, in any of its categories.
    #[pg_test]
    fn identifiers_are_quoted_by_the_servers_own_rule() {
        use crate::quote::quote_ident;
        for word in ["left", "right", "like", "verbose", "binary", "similar", "freeze", "tablesample", "concurrently", "authorization", "user", "order"] {
            assert_eq!(quote_ident(word), format!("\"{word}\""), "{word} is a keyword");
        }
        assert_eq!(quote_ident("reading_2"), "reading_2");
        assert_eq!(quote_ident("name"), "name", "an unreserved keyword reads back bare");
        assert_eq!(quote_ident("Mixed Case"), "\"Mixed Case\"");
        assert_eq!(quote_ident("quo\"te"), "\"quo\"\"te\"");
    }

    /// Three feed rows of 40 compressed bytes: two days old, an hour old, new.
    fn three_feed_rows() {
        Spi::run(
            "INSERT INTO edgesync.feed VALUES
               ('0/10', now() - interval '2 days', 'cloud', '{public.t}', 1, 100, 40, '\\x00'),
               ('0/20', now() - interval '1 hour', 'edge1', '{public.t}', 1, 100, 40, '\\x00'),
               ('0/30', now(), 'cloud', '{public.t}', 1, 100, 40, '\\x00')",
        )
        .unwrap();
    }

    #[pg_test]
    fn retention_purges_the_feed_by_age_then_by_size() {
        three_feed_rows();
        let purge = |sql: &str| Spi::get_one::<String>(&format!("SELECT edgesync._purge_feed({sql})::text")).unwrap();
        assert_eq!(purge("interval '1 week', 1000"), None, "young and small: all kept");
        assert_eq!(purge("interval '1 day', 1000"), Some("0/10".into()), "older than a day");
        assert_eq!(purge("interval '1 day', 40"), Some("0/20".into()), "the oldest go until the rest fit");
        let mark = Spi::get_one::<String>("SELECT purged_through::text FROM edgesync.feed_mark").unwrap();
        assert_eq!(mark.as_deref(), Some("0/20"));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM edgesync.feed").unwrap(), Some(1));
    }

    #[pg_test(error = "edgesync: resync needed: node \"edge1\" is at 0/15 in the feed, which keeps only what follows 0/20")]
    fn a_pull_from_before_the_purge_mark_is_refused() {
        Spi::run("SELECT edgesync.create_node('cloud')").unwrap();
        three_feed_rows();
        Spi::run("SELECT edgesync._purge_feed(interval '1 day', 40)").unwrap();
        Spi::run("SELECT edgesync.pull_batch('edge1', '0/15')").unwrap();
    }

    #[pg_test]
    fn a_pull_hands_over_other_nodes_changes_only() {
        use crate::model::sync::batch::{self, Batch, Transaction};
        Spi::run("SELECT edgesync.create_node('cloud')").unwrap();
        three_feed_rows();
        let stored = |lsn: u64| {
            let t = Transaction { end_lsn: lsn, commit_time: 0, origin: None, messages: vec![b"Y".to_vec()] };
            batch::encode(&Batch { sender: "cloud".into(), transactions: vec![t] }, Some(3)).unwrap()
        };
        for (lsn, position) in [(0x10, "0/10"), (0x30, "0/30")] {
            Spi::run_with_args("UPDATE edgesync.feed SET changes = $1 WHERE position = $2::pg_lsn", &[stored(lsn).into(), position.into()]).unwrap();
        }
        let pull = |sql: &str| {
            let b = Spi::get_one::<Vec<u8>>(&format!("SELECT batch FROM edgesync.pull_batch({sql})")).unwrap()?;
            let decoded = batch::decode(&b, 1 << 20).unwrap().to_batch();
            assert_eq!(decoded.sender, "cloud");
            Some(decoded.transactions.iter().map(|t| (t.end_lsn, t.origin.clone(), t.messages.len())).collect::<Vec<_>>())
        };
        let cloud = Some("cloud".to_string());
        assert_eq!(pull("'edge1', '0/0'"), Some(vec![(0x10, cloud.clone(), 1), (0x30, cloud.clone(), 1)]), "its own one is left out");
        // cut by the limits before 0/30; the caller's own 0/20 before the cut is stepped over
        assert_eq!(pull("'edge1', '0/0', max_rows => 1"), Some(vec![(0x10, cloud.clone(), 1), (0x20, None, 0)]), "within the limits");
        assert_eq!(pull("'cloud', '0/20'"), Some(vec![(0x30, None, 0)]), "its own last: stepped over with an empty transaction");
        assert_eq!(pull("'edge1', '0/15'"), Some(vec![(0x30, cloud, 1)]));
        let head = Spi::get_one::<String>("SELECT feed_head::text || ' ' || waiting FROM edgesync.pull_batch('edge1', '0/20')").unwrap();
        assert_eq!(head.as_deref(), Some("0/30 1"));
        assert_eq!(pull("'edge1', '0/30'"), None, "nothing new");
    }

    #[pg_test(error = "edgesync: max_rows must be at least 1 and max_bytes at least 1024")]
    fn pull_batch_checks_its_limits() {
        Spi::run("SELECT edgesync.create_node('cloud')").unwrap();
        Spi::run("SELECT edgesync.pull_batch('edge1', '0/0', max_rows => 0)").unwrap();
    }

    /// Values PostgreSQL printed under the pinned settings (and a few spelt
    /// by hand), read by apply's canonical path: each one it reads is the
    /// datum the type's input function returns, and it reads nearly all.
    #[pg_test]
    fn canonical_values_read_as_the_input_functions_read_them() {
        crate::guc::pin_value_text(crate::guc::Scope::Transaction);
        let samples = [
            ("int2", "SELECT g::int2::text FROM generate_series(-32768, 32767, 331) g UNION ALL VALUES ('32767'), ('-0'), ('007'), (' 1')"),
            ("int4", "SELECT (g::int8 * 65535)::int4::text FROM generate_series(-32768, 32767, 331) g UNION ALL VALUES ('2147483647'), ('-2147483648')"),
            ("int8", "SELECT (g::int8 * 281474976710655)::text FROM generate_series(-32768, 32767, 331) g UNION ALL VALUES ('-9223372036854775808')"),
            ("float8", "SELECT (sign(random() - 0.5) * random() * 10 ^ (random() * 616 - 308))::float8::text FROM generate_series(1, 2000)
                        UNION ALL VALUES ('NaN'), ('Infinity'), ('-0'), ('5e-324'), ('1e-310'), ('2.2250738585072014e-308'), ('1.7976931348623157e+308'), ('0.1')"),
            ("float4", "SELECT (sign(random() - 0.5) * random() * 10 ^ (random() * 76 - 38))::float4::text FROM generate_series(1, 2000)
                        UNION ALL VALUES ('1e-45'), ('3.4028235e+38'), ('-Infinity')"),
            ("date", "SELECT (date '0001-01-01' + (random() * 3652058)::int)::text FROM generate_series(1, 2000)
                      UNION ALL VALUES ('2024-02-29'), ('2000-02-29'), ('0044-03-15 BC'), ('infinity'), ('9999-12-31')"),
            ("timestamp", "SELECT (timestamp '0001-01-01' + random() * interval '3652058 days')::text FROM generate_series(1, 2000)
                           UNION ALL VALUES ('2000-01-01 00:00:00'), ('1999-12-31 23:59:59.999999'), ('2024-02-29 12:00:00.5')"),
            ("timestamptz", "SELECT (timestamptz '0001-01-01 00:00:00+00' + random() * interval '3652058 days')::text FROM generate_series(1, 2000)
                             UNION ALL VALUES ('2024-07-01 23:59:59.999999+05:45'), ('1999-12-31 19:00:00-05'), ('2000-01-01 00:00:00-00:00:01')"),
        ];
        for (type_name, sql) in samples {
            let type_oid = Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{type_name}'::regtype::oid")).unwrap().unwrap();
            let canonical = super::super::write::Canonical::of(type_oid, -1).expect("a type read canonically");
            let texts: Vec<String> = Spi::connect(|c| c.select(sql, None, &[]).unwrap().map(|r| r.get::<String>(1).unwrap().unwrap()).collect());
            let mut read = 0;
            for text in &texts {
                let Some(datum) = canonical.read(text) else { continue };
                read += 1;
                let expected = read_by_input_function(type_oid, text);
                assert_eq!(datum.value(), expected.value(), "{type_name} {text:?}");
            }
            assert!(read * 100 >= texts.len() * 95, "{type_name}: {read} of {} read canonically", texts.len());
        }
    }

    /// What the input function of `type_oid` returns for `text`.
    fn read_by_input_function(type_oid: pg_sys::Oid, text: &str) -> pg_sys::Datum {
        let text = std::ffi::CString::new(text).unwrap();
        let (mut function, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
        // SAFETY: catalog lookups of an existing type; the input function
        // reads a NUL-terminated string alive for the call.
        unsafe {
            pg_sys::getTypeInputInfo(type_oid, &mut function, &mut ioparam);
            pg_sys::OidInputFunctionCall(function, text.as_ptr().cast_mut(), ioparam, -1)
        }
    }
}
