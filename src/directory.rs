//! The node directory, `edgesync.node_directory`: the name each node id
//! stands for, so that row versions and conflicts name the nodes behind
//! them. This node is in it from `create_node`; the cloud records each edge
//! that says `hello` (sql/directory.sql) and hands its directory back; an
//! edge's forwarder merges it (`sync::forwarder`). The naming rules are in
//! `model::directory`; this is the SQL face of them.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::error::raise;
use crate::model::directory::{node_label, timestamp_of};
use crate::privilege::as_extension_owner;

/// Does this database's edgesync have the directory? Not while the
/// library is newer than the extension's objects: between installing
/// 0.4.0 and `ALTER EXTENSION edgesync UPDATE`, nodes read as their ids.
pub(crate) fn has_directory(client: &pgrx::spi::SpiClient<'_>) -> pgrx::spi::Result<bool> {
    let found = client.select("SELECT pg_catalog.to_regclass('edgesync.node_directory') IS NOT NULL", Some(1), &[])?;
    Ok(found.first().get_one::<bool>()?.unwrap_or(false))
}

/// The name the directory gives `node_id`, if any. Read as the extension's
/// owner: the conflict trigger that asks runs as a table's owner.
pub(crate) fn name_of(node_id: i32) -> Option<String> {
    if node_id <= 0 {
        // ids are positive: 0 is the zero version's, and nothing is stored for it
        return None;
    }
    let found = as_extension_owner(|| {
        Spi::connect(|client| {
            if !has_directory(&client)? {
                return Ok(None);
            }
            let rows = client.select("SELECT name FROM edgesync.node_directory WHERE node_id = $1", Some(1), &[node_id.into()])?;
            match rows.into_iter().next() {
                Some(row) => row.get::<String>(1),
                None => Ok(None),
            }
        })
    });
    found.unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: cannot read edgesync.node_directory: {e}")))
}

/// The node a node id stands for: its name in the directory, `initial` for
/// 0 (the zero version's: rows from before conflict handling), else
/// `node <id>`. Parallel restricted: it reads as the extension's owner,
/// which a parallel worker may not switch to.
#[pg_extern(stable, strict, parallel_restricted)]
fn node_name(node_id: i32) -> String {
    node_label(node_id, name_of(node_id).as_deref())
}

/// The wall-clock time of an HLC reading (its milliseconds; the counter
/// is left out); NULL for 0, the zero version's, written at no known time.
#[pg_extern(immutable, strict, parallel_safe)]
fn hlc_time(hlc: i64) -> Option<TimestampWithTimeZone> {
    timestamp_of(hlc).and_then(|micros| TimestampWithTimeZone::try_from(micros).ok())
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn text(sql: &str) -> Option<String> {
        Spi::get_one::<String>(sql).unwrap()
    }

    #[pg_test]
    fn a_node_is_in_its_own_directory_and_others_read_as_their_ids() {
        Spi::run("SELECT edgesync.create_node('test_node', 7)").unwrap();
        assert_eq!(text("SELECT edgesync.node_name(7)").as_deref(), Some("test_node"));
        assert_eq!(text("SELECT edgesync.node_name(8)").as_deref(), Some("node 8"));
        assert_eq!(text("SELECT edgesync.node_name(0)").as_deref(), Some("initial"));
        assert_eq!(text("SELECT edgesync.node_name(NULL)"), None);
    }

    /// One name per id, the newest learned wins; what others say never
    /// renames this node; a re-created node's old id keeps its name.
    #[pg_test]
    fn learning_names_keeps_the_newest_and_never_renames_this_node() {
        Spi::run("SELECT edgesync.create_node('test_node', 7)").unwrap();
        let learn = |id: i32, name: &str, at: &str| {
            Spi::get_one::<bool>(&format!("SELECT edgesync._learn_node({id}, '{name}', '{at}')")).unwrap().unwrap()
        };
        assert!(learn(8, "store_1", "2030-01-01 00:00:00+00"));
        assert!(!learn(8, "store_old", "2029-01-01 00:00:00+00"), "an older name loses");
        assert!(!learn(8, "store_1", "2031-01-01 00:00:00+00"), "the same name again changes nothing");
        assert!(learn(8, "store_new", "2031-01-01 00:00:00+00"), "a newer name wins");
        assert!(!learn(7, "impostor", "2099-01-01 00:00:00+00"), "this node knows its own name");
        assert!(!learn(9, "bad name", "2030-01-01 00:00:00+00"), "not a node name");
        assert!(!learn(-3, "store_3", "2030-01-01 00:00:00+00"), "not a node id");
        assert!(learn(10, "store_new", "2032-01-01 00:00:00+00"), "the name re-created under a new id");
        assert_eq!(
            text("SELECT string_agg(node_id || '=' || name, ' ' ORDER BY node_id) FROM edgesync.node_directory").as_deref(),
            Some("7=test_node 8=store_new 10=store_new")
        );
    }

    /// What the cloud's hello hands out, merged on an edge.
    #[pg_test]
    fn a_directory_is_handed_out_and_merged_whole() {
        Spi::run("SELECT edgesync.create_node('test_node', 7); SELECT edgesync._learn_node(8, 'store_1', now())").unwrap();
        let handed = text("SELECT edgesync._node_directory()::text").unwrap();
        assert!(handed.contains("\"name\": \"store_1\"") && handed.contains("\"node_id\": 7"), "{handed}");
        let merged = Spi::get_one::<i32>(
            "SELECT edgesync._learn_nodes('[{\"node_id\": 7, \"name\": \"cloud\", \"learned_at\": \"2099-01-01T00:00:00+00:00\"},
                                            {\"node_id\": 20, \"name\": \"cloud\", \"learned_at\": \"2020-01-01T00:00:00+00:00\"},
                                            {\"node_id\": 21, \"name\": \"store_2\", \"learned_at\": \"2020-01-01T00:00:00+00:00\"},
                                            {\"node_id\": 22, \"learned_at\": \"2020-01-01T00:00:00+00:00\"}]')",
        )
        .unwrap();
        assert_eq!(merged, Some(2), "this node's own entry and the one without a name are left out");
        assert_eq!(text("SELECT edgesync.node_name(21)").as_deref(), Some("store_2"));
        assert_eq!(text("SELECT edgesync.node_name(7)").as_deref(), Some("test_node"));
        assert_eq!(Spi::get_one::<i32>("SELECT edgesync._learn_nodes('{\"not\": \"a list\"}')").unwrap(), Some(0));
    }

    /// hello records the caller's node id (once its login is checked) and
    /// hands back the directory, itself included.
    #[pg_test]
    fn hello_records_the_callers_id_and_answers_with_the_directory() {
        Spi::run(
            "SELECT edgesync.create_node('cloud', 100);
             CREATE ROLE es_store LOGIN; SELECT edgesync.register_edge('store_1', 'es_store')",
        )
        .unwrap();
        let directory = text("SELECT directory::text FROM edgesync.hello('store_1', 42, 5)").unwrap();
        assert!(directory.contains("\"name\": \"store_1\"") && directory.contains("\"name\": \"cloud\""), "{directory}");
        assert_eq!(text("SELECT edgesync.node_name(5)").as_deref(), Some("store_1"));
        // an older edge says no id: nothing is recorded, hello still answers
        let old = Spi::get_one::<i32>("SELECT batch_format FROM edgesync.hello('store_1', 42)").unwrap();
        assert!(old.is_some());
        assert_eq!(text("SELECT edgesync.node_name(100)").as_deref(), Some("cloud"));
    }

    #[pg_test(error = "edgesync: node_id must be positive, not 0")]
    fn hello_refuses_a_bad_node_id() {
        Spi::run("CREATE ROLE es_store LOGIN; SELECT edgesync.register_edge('store_1', 'es_store')").unwrap();
        Spi::run("SELECT * FROM edgesync.hello('store_1', 42, 0)").unwrap();
    }

    #[pg_test]
    fn a_version_reads_as_times_and_node_names() {
        Spi::run("SELECT edgesync.create_node('test_node', 7); SELECT edgesync._learn_node(8, 'store_1', now())").unwrap();
        // 2023-11-14 22:13:20.123 UTC counter 5 by node 8, on top of 22:13:19.000 counter 0 by node 7
        let hlc = (1_700_000_000_123i64 << 16) + 5;
        let prev = 1_699_999_999_000i64 << 16;
        let described = text(&format!(
            "SET LOCAL TimeZone = 'UTC';
             SELECT format('%s %s %s %s | %s %s %s %s', d.written_at, d.counter, d.node_id, d.node_name,
                           d.prev_written_at, d.prev_counter, d.prev_node_id, d.prev_node_name) FROM edgesync.describe_version('{{{hlc},8,{prev},7}}'::bigint[]) d"
        ));
        assert_eq!(
            described.as_deref(),
            Some("2023-11-14 22:13:20.123+00 5 8 store_1 | 2023-11-14 22:13:19+00 0 7 test_node")
        );
        let from_bytes = text(&format!(
            "SELECT d.node_name || ' ' || d.prev_node_name
               FROM edgesync.describe_version(edgesync.make_row_version('{{{hlc},8,{prev},7}}')) d"
        ));
        assert_eq!(from_bytes.as_deref(), Some("store_1 test_node"), "the bytea column reads the same");
        // an insert replaced nothing; the zero version is a row from before conflict handling
        assert_eq!(text(&format!("SELECT d.node_name FROM edgesync.describe_version('{{{hlc},9,0,0}}'::bigint[]) d")).as_deref(), Some("node 9"));
        let prev_empty = Spi::get_one::<bool>(&format!(
            "SELECT num_nulls(d.prev_written_at, d.prev_counter, d.prev_node_id, d.prev_node_name) = 4
               FROM edgesync.describe_version('{{{hlc},9,0,0}}'::bigint[]) d"
        ))
        .unwrap();
        assert_eq!(prev_empty, Some(true));
        let zero = text("SELECT coalesce(d.written_at::text, 'no time') || ' ' || d.node_name FROM edgesync.describe_version('{0,0,0,0}'::bigint[]) d");
        assert_eq!(zero.as_deref(), Some("no time initial"));
    }

    #[pg_test(error = "edgesync: edgesync_version must have 4 elements, not 2")]
    fn describe_version_refuses_a_malformed_version() {
        Spi::run("SELECT * FROM edgesync.describe_version('{1,2}'::bigint[])").unwrap();
    }

    /// Pending conflicts read each side's version as a time and a node,
    /// through the directory as it is now.
    #[pg_test]
    fn the_conflicts_view_names_each_sides_writer() {
        Spi::run(
            "SELECT edgesync.create_node('test_node', 7);
             INSERT INTO edgesync.conflict_log (schema_name, table_name, conflict_type, resolution, key, local_version, remote_version, status)
             VALUES ('public', 't', 'update_origin_differs', 'pending', '{\"k\": 1}',
                     ARRAY[(1700000000123::bigint << 16) + 1, 7, 0, 0], ARRAY[1700000000456::bigint << 16, 8, 0, 0], 'pending')",
        )
        .unwrap();
        let read = || text("SET LOCAL TimeZone = 'UTC'; SELECT format('%s %s | %s %s', local_written_at, local_node, remote_written_at, remote_node) FROM edgesync.conflicts");
        assert_eq!(read().as_deref(), Some("2023-11-14 22:13:20.123+00 test_node | 2023-11-14 22:13:20.456+00 node 8"));
        Spi::run("SELECT edgesync.learn_node(8, 'store_8')").unwrap();
        assert_eq!(read().as_deref(), Some("2023-11-14 22:13:20.123+00 test_node | 2023-11-14 22:13:20.456+00 store_8"), "named once learned");
    }

    #[pg_test(error = "edgesync: node id 7 is this node's own")]
    fn learn_node_refuses_this_nodes_own_id() {
        Spi::run("SELECT edgesync.create_node('test_node', 7); SELECT edgesync.learn_node(7, 'other')").unwrap();
    }

    #[pg_test]
    fn an_hlc_reading_is_a_time() {
        let t = text("SET LOCAL TimeZone = 'UTC'; SELECT edgesync.hlc_time((1700000000123::bigint << 16) + 9)::text");
        assert_eq!(t.as_deref(), Some("2023-11-14 22:13:20.123+00"));
        assert_eq!(text("SELECT edgesync.hlc_time(0)::text"), None);
    }
}
