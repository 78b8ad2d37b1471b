//! Key objects: the primary-key columns of a row, by name, as a jsonb
//! object (`{"id": 7}`). `conflict_log.key` and `tombstone.key` hold them,
//! and a row is found again by one (`row_by_key`).
//!
//! One rule, "a key object is the key columns of a row, by name", with two
//! spellings: `key_of` picks them from a row already in jsonb; `key_json`
//! builds them in SQL from a composite, the way `to_jsonb` builds the row,
//! so both spellings of a key compare equal.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgOid;
use pgrx::prelude::*;
use pgrx::JsonB;

use super::error::{fail, ConflictError};
use super::table::Table;
use crate::model::sql_text::quote_literal;
use crate::plan_cache::plan_for;
use crate::quote::quote_ident;

/// The key object of `row` (a jsonb object of a whole row): its members
/// named in `keys`, a key column the row lacks as null.
pub(crate) fn key_of<K: AsRef<str>>(row: &JsonB, keys: &[K]) -> JsonB {
    let mut key = serde_json::Map::new();
    for k in keys {
        let k = k.as_ref();
        key.insert(k.to_string(), row.0.get(k).cloned().unwrap_or(serde_json::Value::Null));
    }
    JsonB(serde_json::Value::Object(key))
}

/// `jsonb_build_object('k1', (ROW).k1, ...)`: the key object, built the way
/// `to_jsonb` builds the row, so both spellings of a key compare equal.
fn key_expression(table: &Table, row: &str) -> String {
    let parts: Vec<String> = table.keys.iter().map(|k| format!("{}, ({row}).{}", quote_literal(k), quote_ident(k))).collect();
    format!("pg_catalog.jsonb_build_object({})", parts.join(", "))
}

/// The key object of `row` (a composite of the table's type), built with
/// the caller's rights: the key's types may have casts of their owner's.
pub(super) fn key_json(table: &Table, row: DatumWithOid<'_>) -> Result<JsonB, ConflictError> {
    let sql = format!("SELECT {}", key_expression(table, &format!("$1::{}", table.qualified)));
    let args = [PgOid::from(table.rowtype)];
    Spi::connect(|client| {
        let plan = plan_for(client, &sql, &args, false)?;
        client.select(&*plan, None, &[row])?.first().get_one::<JsonB>()
    })
    .map_err(fail)?
    .ok_or_else(|| fail("row has no key"))
}
