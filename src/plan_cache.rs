//! Kept plans of the statements edgesync runs once per row (the conflict
//! trigger's key, tombstone and lookup queries): prepared on first use in a
//! backend and kept for its life, so a row costs an execution, not a parse
//! and plan.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::pg_sys::PgOid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};

thread_local! {
    /// Plans of the per-row statements of the conflict trigger, kept for
    /// the backend's life (PostgreSQL revalidates them after DDL). Keyed by text.
    static PLANS: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// At most this many plans are kept per backend. The statement texts
/// depend on the tables written (one key statement per table), so the
/// cache is bounded; when it is full it starts over (a handful of hot
/// statements are prepared again at once).
pub(crate) const MAX_PLANS: usize = 1024;

/// The number of plans this backend keeps.
#[cfg(any(test, feature = "pg_test"))]
pub(crate) fn kept_plans() -> usize {
    PLANS.with(|plans| plans.borrow().len())
}

/// The kept plan for `sql`, prepared on first use.
pub(crate) fn plan_for(client: &SpiClient<'_>, sql: &str, args: &[PgOid], mutating: bool) -> pgrx::spi::Result<Rc<OwnedPreparedStatement>> {
    if let Some(plan) = PLANS.with(|plans| plans.borrow().get(sql).cloned()) {
        return Ok(plan);
    }
    let stmt = if mutating { client.prepare_mut(sql, args)? } else { client.prepare(sql, args)? };
    let plan = Rc::new(stmt.keep());
    PLANS.with(|plans| {
        let mut plans = plans.borrow_mut();
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(sql.to_string(), plan.clone());
    });
    Ok(plan)
}
