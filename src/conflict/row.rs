//! Whole rows as the conflict path handles them: the trigger's tuples (as
//! the table's composite type, as jsonb), a row looked up by its key, and
//! the write of a whole row that settles a conflict.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;

use super::error::{fail, ConflictError};
use super::flags::TableFlag;
use super::table::Table;
use crate::quote::quote_ident;

/// A row the trigger returns (PostgreSQL's own tuple, or a modified copy).
pub(super) type Row<'a> = PgHeapTuple<'a, pgrx::AllocatedByPostgres>;

/// One of the trigger's tuples, named after PostgreSQL's fields.
#[derive(Clone, Copy)]
pub(super) enum Tuple {
    /// `tg_trigtuple`: the row the trigger fires for (the inserted or the
    /// deleted row, an update's old row).
    Trig,
    /// `tg_newtuple`: an update's new row.
    New,
}

impl Tuple {
    /// Why the trigger lacks this tuple (a trigger fired for the wrong event).
    fn missing(self) -> &'static str {
        match self {
            Tuple::Trig => "the trigger has no row: it must be a row-level trigger",
            Tuple::New => "the trigger has no new row: only an UPDATE has one",
        }
    }
}

/// The trigger's tuple `which`; an error when the operation has none
/// (only an update has a new tuple).
pub(super) fn tuple_of(trigger: &PgTrigger<'_>, which: Tuple) -> Result<*mut pg_sys::HeapTupleData, ConflictError> {
    let td = trigger.trigger_data();
    let tuple = match which {
        Tuple::Trig => td.tg_trigtuple,
        Tuple::New => td.tg_newtuple,
    };
    if tuple.is_null() {
        return Err(fail(which.missing()));
    }
    Ok(tuple)
}

/// The slot holding the trigger's tuple `which`; an error when the
/// operation has none.
pub(super) fn slot_of(trigger: &PgTrigger<'_>, which: Tuple) -> Result<*mut pg_sys::TupleTableSlot, ConflictError> {
    let td = trigger.trigger_data();
    let slot = match which {
        Tuple::Trig => td.tg_trigslot,
        Tuple::New => td.tg_newslot,
    };
    if slot.is_null() {
        return Err(fail(which.missing()));
    }
    Ok(slot)
}

/// A tuple of the trigger as a composite value typed as the table's row type.
pub(super) fn composite<'a>(trigger: &PgTrigger<'_>, which: Tuple) -> Result<DatumWithOid<'a>, ConflictError> {
    let tuple = tuple_of(trigger, which)?;
    let rel = trigger.trigger_data().tg_relation;
    // SAFETY: `rel` is the open relation the trigger fires on and `tuple`
    // (not null) one of its rows, so `rd_att` describes it; the copy is
    // made in the current memory context and typed with the table's row type.
    unsafe {
        let datum = pg_sys::heap_copy_tuple_as_datum(tuple, (*rel).rd_att);
        Ok(DatumWithOid::new(datum, (*(*rel).rd_rel).reltype))
    }
}

/// A composite value as jsonb (`to_jsonb`, the form `conflict_log` keeps rows in).
pub(super) fn to_json(tuple: DatumWithOid<'_>) -> Result<JsonB, ConflictError> {
    Spi::get_one_with_args::<JsonB>("SELECT pg_catalog.to_jsonb($1)", &[tuple])
        .map_err(fail)?
        .ok_or_else(|| fail("row has no jsonb form"))
}

/// The trigger's tuple `which` as jsonb.
pub(super) fn row_json(trigger: &PgTrigger<'_>, which: Tuple) -> Result<JsonB, ConflictError> {
    to_json(composite(trigger, which)?)
}

/// The row of `qualified` whose key columns `keys` match the jsonb `key`
/// (extra members are ignored), as jsonb; None when there is none.
pub fn row_by_key(qualified: &str, keys: &[String], key: &JsonB) -> pgrx::spi::Result<Option<JsonB>> {
    let cond = keys.iter().map(|k| format!("t.{0} = r.{0}", quote_ident(k))).collect::<Vec<_>>().join(" AND ");
    let sql = format!(
        "SELECT pg_catalog.to_jsonb(t) FROM {qualified} AS t, pg_catalog.jsonb_populate_record(NULL::{qualified}, $1) AS r WHERE {cond}"
    );
    Spi::connect(|client| {
        let t = client.select(&sql, None, &[JsonB(key.0.clone()).into()])?;
        if t.is_empty() {
            return Ok(None);
        }
        t.first().get_one::<JsonB>()
    })
}

/// Write a whole row (jsonb) as edgesync's own settling write: it keeps the version it carries.
pub(super) fn write_row_through(table: &Table, row: &JsonB) -> Result<(), ConflictError> {
    let _through = TableFlag::pass_through(table.relid);
    Spi::run_with_args(
        "SELECT edgesync._write_row($1::regclass, $2, $3)",
        &[table.relid.into(), JsonB(row.0.clone()).into(), table.keys.clone().into()],
    )
    .map_err(fail)
}
