//! A sender's relation matched to a local table, once per batch: which
//! table it is, whether a batch travelling this way may change it, which
//! sender columns are written here and which hold the key, and the
//! statements that write it. Every mismatch refuses the whole batch, saying
//! which table and column.

use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, PgSqlErrorCode};

use super::apply::Direction;
use crate::conflict::key_of;
use crate::error::{raise, raise_with_hint};
use crate::model::sql_text::quote_ident;
use crate::model::sync::pgoutput::{Relation, Value};
use crate::privilege::as_extension_owner;

/// A sender's relation matched to a local table.
pub(super) struct Target {
    pub(super) relid: pg_sys::Oid,
    pub(super) owner: pg_sys::Oid,
    pub(super) schema: String,
    pub(super) name: String,
    pub(super) qualified: String,
    pub(super) has_policy: bool,
    /// Per sender column: the local column and its type (None: not written here).
    pub(super) columns: Vec<Option<(String, String)>>,
    /// The sender columns that hold the local primary key.
    pub(super) key: Vec<usize>,
    /// The names of the local primary key's columns, in the order of `key`.
    key_names: Vec<String>,
    /// The sender columns written here, in order.
    pub(super) written: Vec<usize>,
    /// Statements for this table, composed once per batch.
    pub(super) insert_sql: String,
    pub(super) bulk_insert_sql: String,
    pub(super) delete_sql: String,
}

/// The local table named like the sender's relation, as the catalogs say.
struct LocalTable {
    relid: pg_sys::Oid,
    owner: pg_sys::Oid,
    qualified: String,
    /// Its `sync_table` direction (None: not enrolled).
    enrolled: Option<String>,
    has_policy: bool,
}

/// A column of the local table: its type, and whether it is generated
/// (then it is computed here, never written).
struct LocalColumn {
    type_name: String,
    generated: bool,
}

impl Target {
    /// Match the sender's relation `def` to the local table of the same
    /// name, or refuse the batch saying why.
    pub(super) fn resolve(sender: &str, def: &Relation, direction: Direction) -> Target {
        let what = format!("{}.{}", def.namespace, def.name);
        let (table, local_columns, primary_key) = as_extension_owner(|| {
            Spi::connect(|client| {
                let table = find_table(client, sender, def, &what)?;
                check_enrolled(sender, &what, &table, direction);
                let local_columns = read_columns(client, table.relid, &what)?;
                let primary_key = read_primary_key(client, table.relid, &what)?;
                Ok::<_, pgrx::spi::Error>((table, local_columns, primary_key))
            })
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading table {what}: {e}")))
        });
        let columns = match_columns(sender, &what, def, &local_columns);
        let key = key_positions(sender, &what, &table.qualified, def, &primary_key, &columns);
        Target::compose(def, table, columns, primary_key, key)
    }

    /// The target, with its statements composed.
    fn compose(
        def: &Relation,
        table: LocalTable,
        columns: Vec<Option<(String, String)>>,
        key_names: Vec<String>,
        key: Vec<usize>,
    ) -> Target {
        let written = (0..columns.len()).filter(|&i| columns[i].is_some()).collect();
        let mut t = Target {
            relid: table.relid,
            owner: table.owner,
            schema: def.namespace.clone(),
            name: def.name.clone(),
            qualified: table.qualified,
            has_policy: table.has_policy,
            columns,
            key,
            key_names,
            written,
            insert_sql: String::new(),
            bulk_insert_sql: String::new(),
            delete_sql: String::new(),
        };
        t.insert_sql = t.compose_insert();
        t.bulk_insert_sql = t.compose_bulk_insert();
        t.delete_sql = t.compose_delete();
        t
    }

    fn compose_insert(&self) -> String {
        let cols: Vec<_> = self.columns.iter().flatten().collect();
        let names = cols.iter().map(|(n, _)| quote_ident(n)).collect::<Vec<_>>().join(", ");
        let values = cols.iter().enumerate().map(|(i, (_, t))| format!("${}::{t}", i + 1)).collect::<Vec<_>>().join(", ");
        format!("INSERT INTO {} ({names}) OVERRIDING SYSTEM VALUE VALUES ({values})", self.qualified)
    }

    fn compose_bulk_insert(&self) -> String {
        let cols: Vec<_> = self.columns.iter().flatten().collect();
        let names = cols.iter().map(|(n, _)| quote_ident(n)).collect::<Vec<_>>().join(", ");
        let aliases = (1..=cols.len()).map(|i| format!("c{i}")).collect::<Vec<_>>().join(", ");
        let casts = cols.iter().enumerate().map(|(i, (_, t))| format!("c{}::{t}", i + 1)).collect::<Vec<_>>().join(", ");
        let arrays = (1..=cols.len()).map(|i| format!("pg_catalog.unnest(${i}::pg_catalog.text[])")).collect::<Vec<_>>().join(", ");
        format!(
            "INSERT INTO {} ({names}) OVERRIDING SYSTEM VALUE SELECT {casts} FROM ROWS FROM ({arrays}) WITH ORDINALITY AS u({aliases}, n) ORDER BY n",
            self.qualified
        )
    }

    fn key_condition(&self, first_param: usize) -> String {
        self.key
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let (n, t) = self.columns[k].as_ref().expect("key columns are plain columns");
                format!("{} = ${}::{t}", quote_ident(n), first_param + i)
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// `UPDATE ... SET` the columns `set` (sender indexes) `WHERE` key.
    pub(super) fn update_sql(&self, set: &[usize]) -> String {
        let assignments = set
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let (n, t) = self.columns[c].as_ref().expect("only written columns are set");
                format!("{} = ${}::{t}", quote_ident(n), i + 1)
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!("UPDATE {} SET {assignments} WHERE {}", self.qualified, self.key_condition(set.len() + 1))
    }

    fn compose_delete(&self) -> String {
        format!("DELETE FROM {} WHERE {}", self.qualified, self.key_condition(1))
    }

    /// The key of a sender row, as the conflict log records keys.
    pub(super) fn key_json(&self, row: &[Value]) -> JsonB {
        key_of(&self.row_json(row), &self.key_names)
    }

    /// The columns of a sender row written here (TOASTed columns it left
    /// unchanged are not in it), as jsonb.
    pub(super) fn row_json(&self, row: &[Value]) -> JsonB {
        let mut m = serde_json::Map::new();
        for (c, v) in self.columns.iter().zip(row) {
            if let (Some((n, _)), false) = (c, *v == Value::Unchanged) {
                m.insert(n.clone(), text_json(v));
            }
        }
        JsonB(serde_json::Value::Object(m))
    }
}

fn text_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Text(s) => serde_json::Value::String(s.clone()),
        _ => serde_json::Value::Null,
    }
}

/// A catalog column that is never NULL: a NULL means the read went wrong.
fn not_null<T>(value: Option<T>, what: &str, column: &str) -> T {
    value.unwrap_or_else(|| {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading table {what}: {column} is NULL"))
    })
}

/// The local table named as the sender names it, with its enrolment.
fn find_table(client: &SpiClient<'_>, sender: &str, def: &Relation, what: &str) -> pgrx::spi::Result<LocalTable> {
    let found = client.select(
        "SELECT c.oid, c.relowner, format('%I.%I', n.nspname, c.relname), s.direction, ct.relid IS NOT NULL
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN edgesync.sync_table s ON s.relid = c.oid
           LEFT JOIN edgesync.conflict_table ct ON ct.relid = c.oid
          WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'r'",
        None,
        &[def.namespace.as_str().into(), def.name.as_str().into()],
    )?;
    if found.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("edgesync: refused batch from {sender}: table {what} does not exist here"),
        );
    }
    let row = found.first();
    Ok(LocalTable {
        relid: not_null(row.get::<pg_sys::Oid>(1)?, what, "its oid"),
        owner: not_null(row.get::<pg_sys::Oid>(2)?, what, "its owner"),
        qualified: not_null(row.get::<String>(3)?, what, "its name"),
        enrolled: row.get::<String>(4)?,
        has_policy: not_null(row.get::<bool>(5)?, what, "whether it has a conflict policy"),
    })
}

/// Refuse the batch unless the table is enrolled for the way it travels.
fn check_enrolled(sender: &str, what: &str, table: &LocalTable, direction: Direction) {
    if table.enrolled.as_deref().is_some_and(|e| direction.accepts(e)) {
        return;
    }
    let wanted = match direction {
        Direction::Up => "up or both",
    };
    raise_with_hint(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("edgesync: refused batch from {sender}: table {what} is not enrolled here to receive these changes"),
        &format!("Enrol it on this node with edgesync.add_table('{}', sync => ...) as {wanted}.", table.qualified),
    );
}

/// The local table's columns, by name.
fn read_columns(client: &SpiClient<'_>, relid: pg_sys::Oid, what: &str) -> pgrx::spi::Result<HashMap<String, LocalColumn>> {
    let mut local = HashMap::new();
    for c in client.select(
        "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod), attgenerated <> ''
           FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
        None,
        &[relid.into()],
    )? {
        let name = not_null(c.get::<String>(1)?, what, "a column name");
        let type_name = not_null(c.get::<String>(2)?, what, "the type of a column");
        let generated = not_null(c.get::<bool>(3)?, what, "whether a column is generated");
        local.insert(name, LocalColumn { type_name, generated });
    }
    Ok(local)
}

/// The names of the local primary key's columns (empty: it has none).
fn read_primary_key(client: &SpiClient<'_>, relid: pg_sys::Oid, what: &str) -> pgrx::spi::Result<Vec<String>> {
    let mut pk = Vec::new();
    for k in client.select(
        "SELECT a.attname::text FROM pg_catalog.pg_index i
           JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
          WHERE i.indrelid = $1 AND i.indisprimary",
        None,
        &[relid.into()],
    )? {
        pk.push(not_null(k.get::<String>(1)?, what, "a primary key column name"));
    }
    Ok(pk)
}

/// Per sender column, the local column it is written to and its type (None:
/// generated here, so not written); a column missing here refuses the batch.
fn match_columns(
    sender: &str,
    what: &str,
    def: &Relation,
    local: &HashMap<String, LocalColumn>,
) -> Vec<Option<(String, String)>> {
    def.columns
        .iter()
        .map(|c| match local.get(&c.name) {
            Some(LocalColumn { generated: true, .. }) => None,
            Some(LocalColumn { type_name, generated: false }) => Some((c.name.clone(), type_name.clone())),
            None => raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("edgesync: refused batch from {sender}: column {:?} of {what} does not exist here", c.name),
            ),
        })
        .collect()
}

/// The sender columns holding the local primary key: there must be one,
/// every column of it sent, and none generated here.
fn key_positions(
    sender: &str,
    what: &str,
    qualified: &str,
    def: &Relation,
    primary_key: &[String],
    columns: &[Option<(String, String)>],
) -> Vec<usize> {
    if primary_key.is_empty() {
        raise(PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION, format!("edgesync: table {qualified} has no primary key here"));
    }
    let key: Vec<usize> = primary_key
        .iter()
        .map(|k| {
            def.columns.iter().position(|c| &c.name == k).unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!("edgesync: refused batch from {sender}: the key column {k:?} of {what} is not sent"),
                )
            })
        })
        .collect();
    if key.iter().any(|&k| columns[k].is_none()) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION,
            format!("edgesync: refused batch from {sender}: a key column of {what} is generated here"),
        );
    }
    key
}
