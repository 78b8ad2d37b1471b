//! What the conflict trigger knows of the table it fires on: its arguments
//! (written by `set_conflict_policy`: policy, handler or '', then the
//! primary-key columns) and the table's names. The cheap paths read only
//! the policy; the rest is read once a path needs it.

use pgrx::prelude::*;
use pgrx::PgRelation;

use super::error::{fail, ConflictError};
use crate::model::conflict::lww::Policy;
use crate::quote::quote_ident;

const MISSING_ARGUMENTS: &str = "the conflict trigger needs (policy, handler, key columns...): re-run edgesync.set_conflict_policy";

/// Everything the remote path needs to know about the table.
pub(super) struct Table {
    pub relid: pg_sys::Oid,
    pub rowtype: pg_sys::Oid,
    pub qualified: String,
    pub schema: String,
    pub name: String,
    pub handler: Option<String>,
    pub keys: Vec<String>,
}

impl Table {
    pub fn from_trigger(trigger: &PgTrigger<'_>) -> Result<Table, ConflictError> {
        let args = trigger.extra_args().map_err(fail)?;
        if args.len() < 3 {
            return Err(fail(MISSING_ARGUMENTS));
        }
        let rel: PgRelation = trigger.relation().map_err(fail)?;
        let schema = rel.namespace().to_string();
        let name = rel.name().to_string();
        // SAFETY: `rel` is the trigger's open relation; its `rd_rel` (the
        // pg_class row) is valid while it is open.
        let rowtype = unsafe { (*rel.rd_rel).reltype };
        Ok(Table {
            relid: rel.oid(),
            rowtype,
            qualified: format!("{}.{}", quote_ident(&schema), quote_ident(&name)),
            schema,
            name,
            handler: (!args[1].is_empty()).then(|| args[1].clone()),
            keys: args[2..].to_vec(),
        })
    }
}

/// The table, read from the trigger only when a path needs more than the policy.
pub(super) struct LazyTable<'t> {
    trigger: &'t PgTrigger<'t>,
    table: std::cell::OnceCell<Table>,
}

impl<'t> LazyTable<'t> {
    pub fn new(trigger: &'t PgTrigger<'t>) -> Self {
        LazyTable { trigger, table: std::cell::OnceCell::new() }
    }

    pub fn get(&self) -> Result<&Table, ConflictError> {
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        let t = Table::from_trigger(self.trigger)?;
        Ok(self.table.get_or_init(|| t))
    }
}

/// The oid of the table the trigger fires on.
pub(super) fn relid_of(trigger: &PgTrigger<'_>) -> pg_sys::Oid {
    // SAFETY: PostgreSQL hands a row trigger the open relation it fires
    // on in `tg_relation`, valid for the whole call.
    unsafe { (*trigger.trigger_data().tg_relation).rd_id }
}

/// The policy, the trigger's first argument, read without copying the others.
pub(super) fn policy_of(trigger: &PgTrigger<'_>) -> Result<Policy, ConflictError> {
    let t = trigger.trigger();
    if t.tgnargs < 3 || t.tgargs.is_null() {
        return Err(fail(MISSING_ARGUMENTS));
    }
    // SAFETY: `tgargs` is not null and holds `tgnargs` (at least one)
    // NUL-terminated strings owned by the relation's trigger descriptor.
    let first = unsafe { std::ffi::CStr::from_ptr(*t.tgargs) };
    first.to_str().map_err(fail)?.parse().map_err(fail)
}
