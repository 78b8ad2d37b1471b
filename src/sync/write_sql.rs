//! Tables whose row-level security binds their owner (FORCE ROW LEVEL
//! SECURITY) are written with SQL statements, one per row, for the
//! policies to hold for the rows a peer sends: a row a policy refuses
//! refuses the batch, and a row its USING clause hides is not there to be
//! updated or deleted. The executor's single-row writes that every other
//! table gets ([`super::write`]) know no policies.
//!
//! Values are passed as text and cast to the column's type without its
//! modifier (`character varying`, not `character varying(10)`): the
//! assignment to the column then applies the modifier, refusing a value too
//! long for the column where an explicit cast would cut it.

use std::ffi::CStr;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;

use super::target::{base_type, Target};
use super::write::RowWrites;
use crate::conflict::RemoteDeleteStamp;
use crate::error::raise;
use crate::model::conflict::delete_stamp::DeleteStamp;
use crate::model::sync::pgoutput::Field;
use crate::plan_cache::plan_for;

/// Does row-level security apply to the current user (the table's owner)
/// on table `relid`? (With `row_security` off it raises, as a statement would.)
pub(super) fn binds_the_owner(relid: pg_sys::Oid) -> bool {
    // SAFETY: a catalog check of an existing table for the current user, in a transaction.
    let applies = unsafe { pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, false) };
    applies == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
}

/// A run's statements for a table bound by row-level security.
pub(super) struct SqlWriter<'a, 'c> {
    client: &'a mut SpiClient<'c>,
    t: &'a Target,
    /// Per sender column, the type its text is cast to (empty: not written here).
    casts: Vec<String>,
}

impl<'a, 'c> SqlWriter<'a, 'c> {
    pub(super) fn new(client: &'a mut SpiClient<'c>, t: &'a Target) -> Self {
        let casts = t.columns.iter().map(|c| c.as_ref().map(|c| type_without_modifier(base_type(c.type_oid, c.typmod).0)).unwrap_or_default()).collect();
        SqlWriter { client, t, casts }
    }

    /// `column = $n::type` for each sender column of `columns`, `$n` from `first`.
    fn assignments(&self, columns: &[usize], first: usize, separator: &str) -> String {
        let column = |c: usize| &self.t.columns[c].as_ref().expect("only written columns are named").quoted;
        let parts: Vec<String> = columns.iter().enumerate().map(|(i, &c)| format!("{} = ${}::{}", column(c), first + i, self.casts[c])).collect();
        parts.join(separator)
    }

    /// Run `sql` with the texts of `values`; the number of rows it wrote.
    fn run(&mut self, sql: &str, values: Vec<&Field<'_>>) -> usize {
        let written = plan_for(self.client, sql, &vec![PgOid::from(pg_sys::TEXTOID); values.len()], true).and_then(|plan| {
            let args: Vec<DatumWithOid<'_>> = values.into_iter().map(text_arg).collect();
            self.client.update(&*plan, None, &args).map(|written| written.len())
        });
        written.unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: applying to {}: {e}", self.t.qualified)))
    }

    /// Is there a row with the key `key_row` holds (one the policies let this user see)?
    fn row_is_here(&mut self, key_row: &[Field<'_>]) -> bool {
        let sql = format!("SELECT 1 FROM {} WHERE {}", self.t.qualified, self.assignments(&self.t.key, 1, " AND "));
        let types = vec![PgOid::from(pg_sys::TEXTOID); self.t.key.len()];
        let found = plan_for(self.client, &sql, &types, false).and_then(|plan| {
            let args: Vec<DatumWithOid<'_>> = self.t.key.iter().map(|&k| text_arg(&key_row[k])).collect();
            self.client.select(&*plan, Some(1), &args).map(|rows| !rows.is_empty())
        });
        found.unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: applying to {}: {e}", self.t.qualified)))
    }
}

impl RowWrites for SqlWriter<'_, '_> {
    fn row<R>(&mut self, write: impl FnOnce(&mut Self) -> R) -> R {
        write(self)
    }

    fn insert(&mut self, new: &[Field<'_>]) -> bool {
        let written: Vec<usize> = (0..new.len()).filter(|&i| self.t.columns[i].is_some()).collect();
        let names: Vec<&str> = written.iter().map(|&i| self.t.columns[i].as_ref().map_or("", |c| c.quoted.as_str())).collect();
        let values: Vec<String> = written.iter().enumerate().map(|(n, &i)| format!("${}::{}", n + 1, self.casts[i])).collect();
        // without a policy a key that exists keeps its row; under one the conflict trigger settles it
        let keep_existing = if self.t.has_policy { "" } else { " ON CONFLICT DO NOTHING" };
        let sql = format!(
            "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({}){keep_existing}",
            self.t.qualified,
            names.join(", "),
            values.join(", ")
        );
        self.run(&sql, written.iter().map(|&i| &new[i]).collect()) > 0 || self.t.has_policy
    }

    fn update(&mut self, key_row: &[Field<'_>], new: &[Field<'_>]) -> bool {
        let set: Vec<usize> = (0..new.len()).filter(|&i| self.t.columns[i].is_some() && new[i] != Field::Unchanged).collect();
        let sql = format!(
            "UPDATE {} SET {} WHERE {}",
            self.t.qualified,
            self.assignments(&set, 1, ", "),
            self.assignments(&self.t.key, set.len() + 1, " AND ")
        );
        let values = set.iter().map(|&i| &new[i]).chain(self.t.key.iter().map(|&k| &key_row[k])).collect();
        // under a policy the trigger may have kept the row here (and logged why)
        self.run(&sql, values) > 0 || (self.t.has_policy && self.row_is_here(key_row))
    }

    fn delete(&mut self, old: &[Field<'_>], stamp: &mut Option<(serde_json::Value, DeleteStamp)>) -> bool {
        let sql = format!("DELETE FROM {} WHERE {}", self.t.qualified, self.assignments(&self.t.key, 1, " AND "));
        let versions = stamp.as_ref().map(|(key, s)| RemoteDeleteStamp::set(self.t.relid, key.clone(), s.stamp));
        // a delete the trigger skipped (an older delete) deletes nothing either, but the row is there
        let deleted = self.run(&sql, self.t.key.iter().map(|&k| &old[k]).collect()) > 0;
        let met = versions.is_some_and(|v| v.met_a_row());
        if met {
            stamp.take();
        }
        deleted || met
    }
}

fn text_arg<'a>(v: &Field<'a>) -> DatumWithOid<'a> {
    match v {
        Field::Text(s) => (*s).into(),
        _ => Option::<&str>::None.into(),
    }
}

/// A type's name in SQL text, schema-qualified, without a modifier, as
/// `format_type(oid, -1)` spells it: `bpchar`, not `character`, which a
/// cast would read as `character(1)`.
fn type_without_modifier(type_oid: pg_sys::Oid) -> String {
    let flags = (pg_sys::FORMAT_TYPE_TYPEMOD_GIVEN | pg_sys::FORMAT_TYPE_FORCE_QUALIFY) as pg_sys::bits16;
    // SAFETY: a catalog lookup of an existing type, in a transaction;
    // format_type_extended returns a palloc'd NUL-terminated string, copied
    // here before it is freed.
    unsafe {
        let name = pg_sys::format_type_extended(type_oid, -1, flags);
        let text = CStr::from_ptr(name).to_string_lossy().into_owned();
        pg_sys::pfree(name.cast());
        text
    }
}
