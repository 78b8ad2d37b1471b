//! Settling conflicts by hand: `resolve_conflict`, `resolve_conflicts`, and
//! tombstone upkeep.
//!
//! A resolution is a new local write with a fresh version, so it wins and
//! replicates. Its previous version is the conflict's remote version: on the
//! node the remote change came from, that is the row it holds, so the write
//! arrives there as the next change, not as a new conflict.

use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

use crate::conflict::{row_by_key, ResolutionWrite, VERSION_COLUMN};
use crate::guc;
use crate::model::conflict::lww::Resolution;
use crate::model::sql_text::quote_ident;
use crate::model::conflict::version::RowStamp;
use crate::error::raise;
use crate::privilege::{as_extension_owner, current_user, has_privs_of};

struct Pending {
    schema: String,
    table: String,
    status: String,
    key: JsonB,
    local_row: Option<JsonB>,
    remote_row: Option<JsonB>,
    local_version: Option<Vec<Option<i64>>>,
    remote_version: Option<Vec<Option<i64>>>,
}

fn load(id: i64) -> Pending {
    let row = as_extension_owner(|| {
        Spi::connect(|client| {
            let t = client.select(
                "SELECT schema_name::text, table_name::text, status, key, local_row, remote_row, remote_version, local_version
                   FROM edgesync.conflict_log WHERE id = $1 FOR UPDATE",
                None,
                &[id.into()],
            )?;
            if t.is_empty() {
                return Ok(None);
            }
            let r = t.first();
            Ok::<_, pgrx::spi::Error>(Some(Pending {
                schema: r.get(1)?.unwrap_or_default(),
                table: r.get(2)?.unwrap_or_default(),
                status: r.get(3)?.unwrap_or_default(),
                key: r.get(4)?.unwrap_or(JsonB(serde_json::Value::Null)),
                local_row: r.get(5)?,
                remote_row: r.get(6)?,
                remote_version: r.get(7)?,
                local_version: r.get(8)?,
            }))
        })
    })
    .unwrap_or_else(|e| error!("edgesync: reading conflict {id}: {e}"));
    row.unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("edgesync: conflict {id} does not exist")))
}

fn object(row: &Option<JsonB>) -> serde_json::Map<String, serde_json::Value> {
    match row.as_ref().map(|j| &j.0) {
        Some(serde_json::Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
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
        t.map(|r| r.get::<String>(1).map(|c| c.unwrap_or_default())).collect::<Result<Vec<_>, _>>()
    })
    .unwrap_or_else(|e| error!("edgesync: reading columns: {e}"))
}

/// Settle one conflict: `apply_remote` writes the remote row, `keep_local`
/// re-writes the local row so that it wins everywhere, `merge` fills the
/// local row's NULL columns from the remote row, `custom` writes `row_data`
/// (over the local row). Returns the row kept (NULL when it was deleted).
#[pg_extern(volatile)]
fn resolve_conflict(id: i64, resolution: &str, row_data: default!(Option<JsonB>, "NULL")) -> Option<JsonB> {
    let caller = current_user();
    let choice = Resolution::parse_choice(resolution)
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("edgesync: {e}")));
    if choice != Resolution::Custom && row_data.is_some() {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("edgesync: row_data is only used with resolution custom, not {resolution}"));
    }
    let c = load(id);
    let qualified = format!("{}.{}", quote_ident(&c.schema), quote_ident(&c.table));
    let (relid, owner) = Spi::get_two_with_args::<pg_sys::Oid, pg_sys::Oid>(
        "SELECT c.oid, c.relowner FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)",
        &[qualified.as_str().into()],
    )
    .unwrap_or((None, None));
    let (Some(relid), Some(owner)) = (relid, owner) else {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, format!("edgesync: table {qualified} of conflict {id} no longer exists"));
    };
    let admin = Spi::get_one::<pg_sys::Oid>("SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'edgesync_admin'").ok().flatten();
    if !(has_privs_of(caller, owner) || admin.is_some_and(|a| has_privs_of(caller, a))) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("edgesync: only members of edgesync_admin or the owner of {qualified} may settle its conflicts"),
        );
    }
    if c.status != "pending" {
        raise(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("edgesync: conflict {id} is already resolved"));
    }
    let keys: Vec<String> = as_extension_owner(|| {
        Spi::get_one_with_args::<Vec<Option<String>>>("SELECT key_columns FROM edgesync.conflict_table WHERE relid = $1", &[relid.into()])
    })
    .ok()
    .flatten()
    .map(|v| v.into_iter().flatten().collect())
    .unwrap_or_else(|| object(&Some(JsonB(c.key.0.clone()))).keys().cloned().collect());

    // the local row as it is now (it may have changed since the conflict)
    let current = row_by_key(&qualified, &keys, &c.key).unwrap_or_else(|e| error!("edgesync: reading the current row: {e}"));
    let now_version = current
        .as_ref()
        .and_then(|row| row.0.get(VERSION_COLUMN).and_then(|v| v.as_str()).and_then(|t| RowStamp::from_hex(t).ok()))
        .map(|s| s.version);
    let local = current.or(c.local_row);

    let kept: Option<serde_json::Map<String, serde_json::Value>> = match choice {
        Resolution::ApplyRemote => c.remote_row.as_ref().map(|_| object(&c.remote_row)),
        Resolution::KeepLocal => local.as_ref().map(|_| object(&local)),
        Resolution::Merge => {
            if local.is_none() || c.remote_row.is_none() {
                raise(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("edgesync: conflict {id} lacks a local or a remote row: merge needs both"));
            }
            let remote = object(&c.remote_row);
            let mut merged = object(&local);
            for (col, value) in merged.iter_mut() {
                if value.is_null() {
                    if let Some(r) = remote.get(col) {
                        *value = r.clone();
                    }
                }
            }
            Some(merged)
        }
        Resolution::Custom => {
            let Some(JsonB(serde_json::Value::Object(given))) = row_data else {
                raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "edgesync: resolution custom needs row_data, a jsonb object of the row to keep".to_string());
            };
            let cols = columns(relid);
            let unknown: Vec<&String> = given.keys().filter(|k| !cols.contains(k)).collect();
            if !unknown.is_empty() {
                raise(PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN, format!("edgesync: row_data has columns {unknown:?} that {qualified} does not have"));
            }
            let key = object(&Some(JsonB(c.key.0.clone())));
            for (k, v) in &key {
                if given.get(k).is_some_and(|g| g != v) {
                    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("edgesync: row_data may not change key column {k}"));
                }
            }
            let mut row = object(&local);
            row.extend(key);
            row.extend(given);
            Some(row)
        }
        Resolution::Pending => unreachable!("not a choice"),
    };

    // On the other node the row is the conflict's remote row: written on top
    // of it, the resolution arrives there as the next change. If the local
    // row moved on since the conflict (a later change, another resolution),
    // the resolution is an ordinary write on top of what is here now.
    let stamp = |v: &Option<Vec<Option<i64>>>| v.as_deref().and_then(|v| RowStamp::from_array(v).ok()).map(|s| s.version);
    let prev = if now_version.is_none() || now_version == stamp(&c.local_version) { stamp(&c.remote_version) } else { None };
    let written = {
        let _resolution = ResolutionWrite::begin(relid, prev);
        match &kept {
            Some(row) => {
                let mut row = row.clone();
                row.remove(VERSION_COLUMN);
                let row = JsonB(serde_json::Value::Object(row));
                Spi::run_with_args("SELECT edgesync._write_row($1::regclass, $2, $3)", &[relid.into(), JsonB(row.0.clone()).into(), keys.clone().into()])
                    .unwrap_or_else(|e| error!("edgesync: writing the kept row: {e}"));
                row_by_key(&qualified, &keys, &row).unwrap_or_else(|e| error!("edgesync: reading the kept row: {e}"))
            }
            None => {
                Spi::run_with_args("SELECT edgesync._delete_row($1::regclass, $2)", &[relid.into(), JsonB(c.key.0.clone()).into()])
                    .unwrap_or_else(|e| error!("edgesync: deleting the row: {e}"));
                None
            }
        }
    };

    let caller_name = unsafe { std::ffi::CStr::from_ptr(pg_sys::GetUserNameFromId(caller, false)) }.to_string_lossy().into_owned();
    as_extension_owner(|| {
        Spi::run_with_args(
            "UPDATE edgesync.conflict_log SET status = 'resolved', resolution = $2, kept_row = $3,
                    resolved_at = now(), resolved_by = $4
              WHERE id = $1",
            &[id.into(), choice.as_str().into(), written.as_ref().map(|j| JsonB(j.0.clone())).into(), caller_name.as_str().into()],
        )
    })
    .unwrap_or_else(|e| error!("edgesync: recording the resolution: {e}"));
    written
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
    let (schema, table) = Spi::get_two_with_args::<String, String>(
        "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[relation.into()],
    )
    .unwrap_or((None, None));
    let (Some(schema), Some(table)) = (schema, table) else {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, format!("edgesync: relation {relation:?} does not exist"));
    };
    let ids: Vec<i64> = as_extension_owner(|| {
        Spi::connect(|client| {
            let t = client.select(
                "SELECT id FROM edgesync.conflict_log
                  WHERE status = 'pending' AND schema_name = $1 AND table_name = $2
                    AND ($3::interval IS NULL OR detected_at < now() - $3::interval)
                  ORDER BY id",
                None,
                &[schema.as_str().into(), table.as_str().into(), older_than.into()],
            )?;
            t.map(|r| r.get::<i64>(1).map(|v| v.unwrap_or_default())).collect::<Result<Vec<_>, _>>()
        })
    })
    .unwrap_or_else(|e| error!("edgesync: listing conflicts: {e}"));
    for id in &ids {
        resolve_conflict(*id, resolution, None);
    }
    ids.len() as i64
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
    .unwrap_or_else(|e| error!("edgesync: purging tombstones: {e}"))
    .unwrap_or(0)
}
