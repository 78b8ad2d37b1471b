//! A sender's relation matched to a local table, once per batch: which
//! table it is, whether a batch travelling this way may change it, and
//! which sender columns are written here (to which attribute, of which
//! type) and which hold the key. Every mismatch refuses the whole batch,
//! saying which table and column. The table is locked as it is matched, so
//! that what was read of it holds until the batch commits.
//!
//! Values arrive as text and are read with the column's type input
//! function under the column's modifier, as PostgreSQL's own apply reads
//! them ([`super::write`]): a value too long for the column is refused,
//! never cut to fit. A refused value is reported naming the table and,
//! where it can be told, the column.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, PgSqlErrorCode};

use super::apply::{Direction, Queued};
use crate::conflict::key_of;
use crate::error::{raise, raise_with_hint};
use crate::model::sync::length_limit::LengthLimit;
use crate::model::sync::pgoutput::{Field, Relation};
use crate::privilege::as_extension_owner;
use crate::quote::quote_ident;

/// A sender's relation matched to a local table.
pub(super) struct Target {
    pub(super) relid: pg_sys::Oid,
    pub(super) owner: pg_sys::Oid,
    pub(super) schema: String,
    pub(super) name: String,
    pub(super) qualified: String,
    pub(super) has_policy: bool,
    /// Per sender column: the local column it is written to (None: not written here).
    pub(super) columns: Vec<Option<Column>>,
    /// The sender columns that hold the local primary key.
    pub(super) key: Vec<usize>,
    /// The names of the local primary key's columns, in the order of `key`.
    key_names: Vec<String>,
}

/// A local column that a sender column is written to.
pub(super) struct Column {
    /// Its name, as the sender and this node spell it.
    pub(super) name: String,
    /// Its name in SQL text.
    pub(super) quoted: String,
    /// Its attribute number here.
    pub(super) attnum: i16,
    /// Its type here (a domain, if it is one) and that type's modifier:
    /// what a value's text is read as.
    pub(super) type_oid: pg_sys::Oid,
    pub(super) typmod: i32,
    /// The length its type's modifier allows, when it limits one.
    limit: Option<LengthLimit>,
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
    attnum: i16,
    type_oid: pg_sys::Oid,
    typmod: i32,
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
                lock_for_apply(table.relid);
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

    /// The target, from what was read of the local table.
    fn compose(
        def: &Relation,
        table: LocalTable,
        columns: Vec<Option<Column>>,
        key_names: Vec<String>,
        key: Vec<usize>,
    ) -> Target {
        Target {
            relid: table.relid,
            owner: table.owner,
            schema: def.namespace.clone(),
            name: def.name.clone(),
            qualified: table.qualified,
            has_policy: table.has_policy,
            columns,
            key,
            key_names,
        }
    }

    /// The key of a sender row, as the conflict log records keys.
    pub(super) fn key_json(&self, row: &[Field<'_>]) -> JsonB {
        key_of(&self.row_json(row), &self.key_names)
    }

    /// The columns of a sender row written here (TOASTed columns it left
    /// unchanged are not in it), as jsonb.
    pub(super) fn row_json(&self, row: &[Field<'_>]) -> JsonB {
        let mut m = serde_json::Map::new();
        for (c, v) in self.columns.iter().zip(row) {
            if let (Some(c), false) = (c, *v == Field::Unchanged) {
                m.insert(c.name.clone(), text_json(v));
            }
        }
        JsonB(serde_json::Value::Object(m))
    }
}

impl Target {
    /// Run `write`, which writes `changes` to this table. A value
    /// PostgreSQL refuses (a data exception, SQLSTATE class 22) is reported
    /// naming this table and, for a value beyond the length its column
    /// allows, the column; other errors pass unchanged.
    pub(super) fn naming_refused_values<R>(&self, changes: &[Queued<'_>], write: impl FnOnce() -> R) -> R {
        PgTryBuilder::new(AssertUnwindSafe(write)).catch_others(|e| self.refuse_value(e, changes)).execute()
    }

    fn refuse_value(&self, caught: CaughtError, changes: &[Queued<'_>]) -> ! {
        let CaughtError::PostgresError(report) = &caught else { caught.rethrow() };
        let code = report.sql_error_code();
        if !is_data_exception(code) {
            caught.rethrow()
        }
        // only a length error is blamed on the column whose value is too long:
        // another error may come from an earlier value of another column
        let length_error = matches!(
            code,
            PgSqlErrorCode::ERRCODE_STRING_DATA_RIGHT_TRUNCATION | PgSqlErrorCode::ERRCODE_STRING_DATA_LENGTH_MISMATCH
        );
        let place = match self.column_refusing(changes).filter(|_| length_error) {
            Some(c) => format!("column {} of {}", c.quoted, self.qualified),
            None => self.qualified.clone(),
        };
        let detail = report.detail().map(|d| format!(" ({d})")).unwrap_or_default();
        raise(code, format!("edgesync: applying to {place}: {}{detail}", report.message()))
    }

    /// The first written column holding, in the first of `changes` that
    /// has one, a value beyond the length its type allows.
    fn column_refusing(&self, changes: &[Queued<'_>]) -> Option<&Column> {
        changes.iter().filter_map(Queued::written_row).find_map(|row| {
            self.columns.iter().zip(row).find_map(|(column, value)| match (column, value) {
                (Some(c @ Column { limit: Some(limit), .. }), Field::Text(text)) if limit.refuses(text) => Some(c),
                _ => None,
            })
        })
    }
}

impl Column {
    fn of(name: &str, local: &LocalColumn) -> Column {
        let (base, base_typmod) = base_type(local.type_oid, local.typmod);
        Column {
            name: name.to_string(),
            quoted: quote_ident(name),
            attnum: local.attnum,
            type_oid: local.type_oid,
            typmod: local.typmod,
            limit: length_limit(base, base_typmod),
        }
    }
}

/// Lock the table as a write to it would (ROW EXCLUSIVE, until commit)
/// before its columns are read: no ALTER TABLE can change them under the
/// batch after that.
fn lock_for_apply(relid: pg_sys::Oid) {
    // SAFETY: a lock by oid, in a transaction; a table dropped meanwhile
    // is refused when it is opened.
    unsafe { pg_sys::LockRelationOid(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
}

/// The type under a domain (through every level) and the modifier the
/// domain gives it; any other type is its own base.
pub(super) fn base_type(type_oid: pg_sys::Oid, typmod: i32) -> (pg_sys::Oid, i32) {
    let mut base_typmod = typmod;
    // SAFETY: a type-cache lookup of a type read from pg_attribute, in a
    // transaction; it writes only `base_typmod`, a live local.
    let base = unsafe { pg_sys::getBaseTypeAndTypmod(type_oid, &mut base_typmod) };
    (base, base_typmod)
}

/// The length a (base) type's modifier allows, for the types whose
/// modifier is a length.
fn length_limit(base: pg_sys::Oid, typmod: i32) -> Option<LengthLimit> {
    let chars = typmod - pg_sys::VARHDRSZ as i32;
    match base {
        pg_sys::VARCHAROID | pg_sys::BPCHAROID if chars >= 0 => Some(LengthLimit::Chars(chars as usize)),
        pg_sys::BITOID if typmod > 0 => Some(LengthLimit::BitsExactly(typmod as usize)),
        pg_sys::VARBITOID if typmod > 0 => Some(LengthLimit::Bits(typmod as usize)),
        _ => None,
    }
}

/// Is `code` in SQLSTATE class 22, data exception (`ERRCODE_TO_CATEGORY`)?
fn is_data_exception(code: PgSqlErrorCode) -> bool {
    const CLASS_BITS: isize = (1 << 12) - 1;
    (code as isize & CLASS_BITS) == (PgSqlErrorCode::ERRCODE_DATA_EXCEPTION as isize & CLASS_BITS)
}

fn text_json(v: &Field<'_>) -> serde_json::Value {
    match v {
        Field::Text(s) => serde_json::Value::String(s.to_string()),
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
        Direction::Down => "down or both",
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
        "SELECT attname::text, attnum, atttypid, atttypmod, attgenerated <> ''
           FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
        None,
        &[relid.into()],
    )? {
        let name = not_null(c.get::<String>(1)?, what, "a column name");
        let attnum = not_null(c.get::<i16>(2)?, what, "the number of a column");
        let type_oid = not_null(c.get::<pg_sys::Oid>(3)?, what, "the type of a column");
        let typmod = not_null(c.get::<i32>(4)?, what, "the type modifier of a column");
        let generated = not_null(c.get::<bool>(5)?, what, "whether a column is generated");
        local.insert(name, LocalColumn { attnum, type_oid, typmod, generated });
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
) -> Vec<Option<Column>> {
    def.columns
        .iter()
        .map(|c| match local.get(&c.name) {
            Some(LocalColumn { generated: true, .. }) => None,
            Some(l) => Some(Column::of(&c.name, l)),
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
    columns: &[Option<Column>],
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
