//! Kept plans of the statements edgesync runs once per row (apply's
//! per-table inserts, updates and deletes; the conflict trigger's key,
//! tombstone and lookup queries): prepared on first use in a backend and
//! kept for its life, so a row costs an execution, not a parse and plan.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::pg_sys::PgOid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};

thread_local! {
    /// Plans of the per-table statements of the apply path, kept for the
    /// backend's life (PostgreSQL revalidates them after DDL). Keyed by text.
    static PLANS: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// The kept plan for `sql`, prepared on first use.
pub(crate) fn plan_for(client: &SpiClient<'_>, sql: &str, args: &[PgOid], mutating: bool) -> pgrx::spi::Result<Rc<OwnedPreparedStatement>> {
    if let Some(plan) = PLANS.with(|plans| plans.borrow().get(sql).cloned()) {
        return Ok(plan);
    }
    let stmt = if mutating { client.prepare_mut(sql, args)? } else { client.prepare(sql, args)? };
    let plan = Rc::new(stmt.keep());
    PLANS.with(|plans| plans.borrow_mut().insert(sql.to_string(), plan.clone()));
    Ok(plan)
}
