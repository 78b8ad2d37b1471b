//! Settling conflicts by hand: `resolve_conflict`, `resolve_conflicts`, and
//! tombstone upkeep.
//!
//! A resolution is a new local write with a fresh version, so it wins and
//! replicates. Its previous version is the conflict's remote version: on the
//! node the remote change came from, that is the row it holds, so the write
//! arrives there as the next change, not as a new conflict.
//!
//! Settling one conflict goes: load the pending conflict (locked), find its
//! table, check the caller may settle it, compute the row to keep for the
//! chosen resolution, write it (or delete the row), mark the conflict resolved.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiTupleTable;
use pgrx::{JsonB, PgSqlErrorCode};

use crate::conflict::{row_by_key, ResolutionWrite, VERSION_COLUMN};
use crate::error::raise;
use crate::guc;
use crate::model::conflict::lww::Resolution;
use crate::model::conflict::version::{RowStamp, Version};
use crate::privilege::{as_extension_owner, current_user, has_privs_of};
use crate::quote::quote_ident;

type Row = serde_json::Map<String, serde_json::Value>;

/// A conflict_log row, read and locked for settling.
struct Pending {
    id: i64,
    schema: String,
    table: String,
    status: String,
    key: JsonB,
    local_row: Option<JsonB>,
    remote_row: Option<JsonB>,
    local_version: Option<Vec<Option<i64>>>,
    remote_version: Option<Vec<Option<i64>>>,
}

/// The table a conflict is about, as it is now.
struct ConflictTable {
    qualified: String,
    relid: pg_sys::Oid,
    owner: pg_sys::Oid,
}

/// The first row `sql` finds, as `read` reads it (None: it found none).
fn first_row<T>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    read: impl FnOnce(&SpiTupleTable<'_>) -> pgrx::spi::Result<T>,
) -> pgrx::spi::Result<Option<T>> {
    // `update`, not `select`: a read-only SPI call refuses FOR UPDATE, and
    // pgrx runs `select` read-only while the transaction has written nothing
    Spi::connect_mut(|client| {
        let found = client.update(sql, Some(1), args)?;
        if found.is_empty() {
            return Ok(None);
        }
        read(&found.first()).map(Some)
    })
}

/// A column that is never NULL: a NULL means the read went wrong.
fn not_null<T>(value: Option<T>, read: &str, column: &str) -> T {
    value.unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: {read}: {column} is NULL")))
}

fn load(id: i64) -> Pending {
    let reading = format!("reading conflict {id}");
    let row = as_extension_owner(|| {
        first_row(
            "SELECT schema_name::text, table_name::text, status, key, local_row, remote_row, remote_version, local_version
               FROM edgesync.conflict_log WHERE id = $1 FOR UPDATE",
            &[id.into()],
            |r| {
                Ok(Pending {
                    id,
                    schema: not_null(r.get(1)?, &reading, "schema_name"),
                    table: not_null(r.get(2)?, &reading, "table_name"),
                    status: not_null(r.get(3)?, &reading, "status"),
                    key: not_null(r.get(4)?, &reading, "key"),
                    local_row: r.get(5)?,
                    remote_row: r.get(6)?,
                    remote_version: r.get(7)?,
                    local_version: r.get(8)?,
                })
            },
        )
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: {reading}: {e}")));
    row.unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("edgesync: conflict {id} does not exist")))
}

/// The members of a jsonb object (none for anything else).
fn members(value: &serde_json::Value) -> Row {
    match value {
        serde_json::Value::Object(m) => m.clone(),
        _ => Row::new(),
    }
}

fn object(row: &Option<JsonB>) -> Row {
    match row {
        Some(j) => members(&j.0),
        None => Row::new(),
    }
}

/// The columns of the table that a row may set.
fn columns(relid: pg_sys::Oid) -> Vec<String> {
    Spi::connect(|client| {
        let t = client.select(
            "SELECT attname::text FROM pg_catalog.pg_attribute
              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            None,
            &[relid.into()],
        )?;
        t.map(|r| r.get::<String>(1).map(|c| not_null(c, "reading columns", "attname"))).collect::<Result<Vec<_>, _>>()
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading columns: {e}")))
}

/// Settle one conflict: `apply_remote` writes the remote row, `keep_local`
/// re-writes the local row so that it wins everywhere, `merge` fills the
/// local row's NULL columns from the remote row, `custom` writes `row_data`
/// (over the local row). Returns the row kept (NULL when it was deleted).
#[pg_extern(volatile)]
fn resolve_conflict(id: i64, resolution: &str, row_data: default!(Option<JsonB>, "NULL")) -> Option<JsonB> {
    let caller = current_user();
    let choice = parse_choice(resolution, &row_data);
    let c = load(id);
    let table = table_of(&c);
    check_may_settle(caller, &table);
    if c.status != "pending" {
        raise(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("edgesync: conflict {id} is already resolved"));
    }
    let keys = key_columns(table.relid, &c.key);

    // the local row as it is now (it may have changed since the conflict)
    let current = row_by_key(&table.qualified, &keys, &c.key)
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading the current row: {e}")));
    let now_version = version_of(&current);
    let local = current.or_else(|| c.local_row.as_ref().map(|j| JsonB(j.0.clone())));

    let kept = kept_row(choice, &c, &local, row_data, &table);
    let prev = previous_version(now_version, &c);
    let written = write_kept(&table, prev, kept, &keys, &c.key);
    mark_resolved(id, choice, &written, caller);
    written
}

/// The resolution chosen; `row_data` goes only with `custom`.
fn parse_choice(resolution: &str, row_data: &Option<JsonB>) -> Resolution {
    let choice = Resolution::parse_choice(resolution)
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("edgesync: {e}")));
    if choice != Resolution::Custom && row_data.is_some() {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("edgesync: row_data is only used with resolution custom, not {resolution}"));
    }
    choice
}

/// The conflict's table, which must still exist.
fn table_of(c: &Pending) -> ConflictTable {
    let qualified = format!("{}.{}", quote_ident(&c.schema), quote_ident(&c.table));
    let id = c.id;
    let reading = format!("reading table {qualified} of conflict {id}");
    let found = first_row(
        "SELECT c.oid, c.relowner FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)",
        &[qualified.as_str().into()],
        |r| Ok((not_null(r.get::<pg_sys::Oid>(1)?, &reading, "oid"), not_null(r.get::<pg_sys::Oid>(2)?, &reading, "relowner"))),
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: {reading}: {e}")));
    let Some((relid, owner)) = found else {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, format!("edgesync: table {qualified} of conflict {id} no longer exists"));
    };
    ConflictTable { qualified, relid, owner }
}

/// Only the table's owner and members of edgesync_admin settle its conflicts.
fn check_may_settle(caller: pg_sys::Oid, table: &ConflictTable) {
    let admin = first_row("SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'edgesync_admin'", &[], |r| r.get::<pg_sys::Oid>(1))
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading role edgesync_admin: {e}")))
        .flatten();
    if !(has_privs_of(caller, table.owner) || admin.is_some_and(|a| has_privs_of(caller, a))) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("edgesync: only members of edgesync_admin or the owner of {} may settle its conflicts", table.qualified),
        );
    }
}

/// The table's key columns as enrolled, or else the members of the conflict's key.
fn key_columns(relid: pg_sys::Oid, key: &JsonB) -> Vec<String> {
    let enrolled = as_extension_owner(|| {
        first_row("SELECT key_columns FROM edgesync.conflict_table WHERE relid = $1", &[relid.into()], |r| {
            r.get::<Vec<Option<String>>>(1)
        })
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading the key columns: {e}")))
    .flatten();
    match enrolled {
        Some(columns) => columns.into_iter().flatten().collect(),
        None => members(&key.0).keys().cloned().collect(),
    }
}

/// The version stamped on a row now, if it carries one.
fn version_of(row: &Option<JsonB>) -> Option<Version> {
    row.as_ref()
        .and_then(|row| row.0.get(VERSION_COLUMN).and_then(|v| v.as_str()).and_then(|t| RowStamp::from_hex(t).ok()))
        .map(|s| s.version)
}

/// The row to keep under `choice` (None: the row is deleted).
fn kept_row(choice: Resolution, c: &Pending, local: &Option<JsonB>, row_data: Option<JsonB>, table: &ConflictTable) -> Option<Row> {
    match choice {
        Resolution::ApplyRemote => c.remote_row.as_ref().map(|j| members(&j.0)),
        Resolution::KeepLocal => local.as_ref().map(|j| members(&j.0)),
        Resolution::Merge => Some(merged_row(c, local)),
        Resolution::Custom => Some(custom_row(c, local, row_data, table)),
        Resolution::Pending => unreachable!("not a choice"),
    }
}

/// The local row with its NULL columns filled from the remote row.
fn merged_row(c: &Pending, local: &Option<JsonB>) -> Row {
    if local.is_none() || c.remote_row.is_none() {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("edgesync: conflict {} lacks a local or a remote row: merge needs both", c.id),
        );
    }
    let remote = object(&c.remote_row);
    let mut merged = object(local);
    for (col, value) in merged.iter_mut() {
        if value.is_null() {
            if let Some(r) = remote.get(col) {
                *value = r.clone();
            }
        }
    }
    merged
}

/// `row_data` over the local row; it may name only the table's columns and
/// may not change the key.
fn custom_row(c: &Pending, local: &Option<JsonB>, row_data: Option<JsonB>, table: &ConflictTable) -> Row {
    let Some(JsonB(serde_json::Value::Object(given))) = row_data else {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "edgesync: resolution custom needs row_data, a jsonb object of the row to keep".to_string());
    };
    let cols = columns(table.relid);
    let unknown: Vec<&String> = given.keys().filter(|k| !cols.contains(k)).collect();
    if !unknown.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("edgesync: row_data has columns {unknown:?} that {} does not have", table.qualified),
        );
    }
    let key = members(&c.key.0);
    for (k, v) in &key {
        if given.get(k).is_some_and(|g| g != v) {
            raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("edgesync: row_data may not change key column {k}"));
        }
    }
    let mut row = object(local);
    row.extend(key);
    row.extend(given);
    row
}

/// The version the resolution writes on top of. On the other node the row
/// is the conflict's remote row: written on top of it, the resolution
/// arrives there as the next change. If the local row moved on since the
/// conflict (a later change, another resolution), the resolution is an
/// ordinary write on top of what is here now.
fn previous_version(now_version: Option<Version>, c: &Pending) -> Option<Version> {
    let stamp = |v: &Option<Vec<Option<i64>>>| v.as_deref().and_then(|v| RowStamp::from_array(v).ok()).map(|s| s.version);
    if now_version.is_none() || now_version == stamp(&c.local_version) {
        stamp(&c.remote_version)
    } else {
        None
    }
}

/// Write the kept row (or delete the row) as a resolution whose previous
/// version is `prev`; returns the row as written.
fn write_kept(table: &ConflictTable, prev: Option<Version>, kept: Option<Row>, keys: &[String], key: &JsonB) -> Option<JsonB> {
    let _resolution = ResolutionWrite::begin(table.relid, prev);
    match kept {
        Some(mut row) => {
            row.remove(VERSION_COLUMN);
            let row = JsonB(serde_json::Value::Object(row));
            Spi::run_with_args(
                "SELECT edgesync._write_row($1::regclass, $2, $3)",
                &[table.relid.into(), JsonB(row.0.clone()).into(), keys.to_vec().into()],
            )
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: writing the kept row: {e}")));
            row_by_key(&table.qualified, keys, &row)
                .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading the kept row: {e}")))
        }
        None => {
            Spi::run_with_args("SELECT edgesync._delete_row($1::regclass, $2)", &[table.relid.into(), JsonB(key.0.clone()).into()])
                .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: deleting the row: {e}")));
            None
        }
    }
}

/// Record in the conflict log how the conflict was settled, and by whom.
fn mark_resolved(id: i64, choice: Resolution, written: &Option<JsonB>, caller: pg_sys::Oid) {
    // SAFETY: called in a transaction; with noerr false an unknown role
    // raises an ERROR, so the result is a valid palloc'd C string.
    let caller_name = unsafe { std::ffi::CStr::from_ptr(pg_sys::GetUserNameFromId(caller, false)) }.to_string_lossy().into_owned();
    as_extension_owner(|| {
        Spi::run_with_args(
            "UPDATE edgesync.conflict_log SET status = 'resolved', resolution = $2, kept_row = $3,
                    resolved_at = now(), resolved_by = $4
              WHERE id = $1",
            &[id.into(), choice.as_str().into(), written.as_ref().map(|j| JsonB(j.0.clone())).into(), caller_name.as_str().into()],
        )
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: recording the resolution: {e}")));
}

/// Settle every pending conflict of a table (detected longer ago than
/// `older_than`, when given) the same way. Returns how many.
/// SQL: `edgesync.resolve_conflicts(regclass, text, interval)` calls this.
#[pg_extern(volatile, name = "_resolve_conflicts")]
fn resolve_conflicts_of(relation: pg_sys::Oid, resolution: &str, older_than: default!(Option<pgrx::datum::Interval>, "NULL")) -> i64 {
    let choice = Resolution::parse_choice(resolution)
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("edgesync: {e}")));
    if choice == Resolution::Custom {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "edgesync: custom needs a row per conflict: use resolve_conflict(id, 'custom', row_data)".to_string());
    }
    let (schema, table) = table_name(relation);
    let ids = pending_conflicts(&schema, &table, older_than);
    for id in &ids {
        resolve_conflict(*id, resolution, None);
    }
    ids.len() as i64
}

/// The schema and name of `relation`, which must exist.
fn table_name(relation: pg_sys::Oid) -> (String, String) {
    let reading = format!("reading relation {relation:?}");
    first_row(
        "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[relation.into()],
        |r| Ok((not_null(r.get::<String>(1)?, &reading, "nspname"), not_null(r.get::<String>(2)?, &reading, "relname"))),
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: {reading}: {e}")))
    .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, format!("edgesync: relation {relation:?} does not exist")))
}

/// The pending conflicts of a table (detected longer ago than `older_than`, when given), oldest first.
fn pending_conflicts(schema: &str, table: &str, older_than: Option<pgrx::datum::Interval>) -> Vec<i64> {
    as_extension_owner(|| {
        Spi::connect(|client| {
            let t = client.select(
                "SELECT id FROM edgesync.conflict_log
                  WHERE status = 'pending' AND schema_name = $1 AND table_name = $2
                    AND ($3::interval IS NULL OR detected_at < now() - $3::interval)
                  ORDER BY id",
                None,
                &[schema.into(), table.into(), older_than.into()],
            )?;
            t.map(|r| r.get::<i64>(1).map(|v| not_null(v, "listing conflicts", "id"))).collect::<Result<Vec<_>, _>>()
        })
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: listing conflicts: {e}")))
}

/// Delete tombstones older than `edgesync.tombstone_retention`; returns how many.
#[pg_extern(volatile)]
fn purge_tombstones() -> i64 {
    let retention = guc::TOMBSTONE_RETENTION.get() as f64;
    as_extension_owner(|| {
        Spi::get_one_with_args::<i64>(
            "WITH gone AS (DELETE FROM edgesync.tombstone WHERE deleted_at < now() - make_interval(secs => $1) RETURNING 1)
             SELECT count(*) FROM gone",
            &[retention.into()],
        )
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: purging tombstones: {e}")))
    .unwrap_or(0)
}
