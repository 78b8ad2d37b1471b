//! Who may do what: running a piece of edgesync's bookkeeping with the
//! rights of the role that owns the extension, whoever the caller is (an
//! apply worker running as a table owner, a table owner settling a
//! conflict), and the checks the SQL API makes of its callers.

use std::sync::atomic::{AtomicU32, Ordering};

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::error::{raise, raise_with_hint};

/// The owner of schema `edgesync`, once read in this backend (0: not yet).
static OWNER: AtomicU32 = AtomicU32::new(0);

fn extension_owner() -> pg_sys::Oid {
    let cached = OWNER.load(Ordering::Relaxed);
    if cached != 0 {
        return pg_sys::Oid::from(cached);
    }
    // a read-only `select`: pgrx's `get_one` would take a transaction id,
    // and add_peer creates a slot, which needs a transaction without one
    let found = Spi::connect(|client| {
        client.select("SELECT nspowner FROM pg_catalog.pg_namespace WHERE nspname = 'edgesync'", Some(1), &[])?.first().get_one::<pg_sys::Oid>()
    });
    let owner = match found {
        Ok(Some(owner)) => owner,
        // no row: the schema is gone
        Ok(None) | Err(pgrx::spi::Error::InvalidPosition) => {
            raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "edgesync: schema edgesync not found")
        }
        Err(e) => raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: cannot read the owner of schema edgesync: {e}")),
    };
    OWNER.store(owner.to_u32(), Ordering::Relaxed);
    owner
}

struct RestoreUser {
    user: pg_sys::Oid,
    context: i32,
    guc_level: i32,
}

impl Drop for RestoreUser {
    fn drop(&mut self) {
        // On an error the transaction (or subtransaction) abort pops the
        // setting; popping it here during unwinding would do it twice.
        if !std::thread::panicking() {
            // SAFETY: `guc_level` came from NewGUCNestLevel in `as_role`, in
            // this backend, and has not been popped (no error unwound it).
            // `false`: every setting changed in there is undone, so code run
            // as another role (a table owner's trigger) cannot leave one behind.
            unsafe { pg_sys::AtEOXact_GUC(false, self.guc_level) };
        }
        // SAFETY: restores the user and security context read from this
        // backend by GetUserIdAndSecContext in `as_role`.
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
    }
}

/// Run `f` as the extension's owner, with `search_path` pinned to
/// `pg_catalog, pg_temp` (as a SECURITY DEFINER function with a SET clause
/// would): no function or operator of the caller's schemas can run with
/// the owner's rights. The caller's identity and settings come back
/// afterwards, on error too.
pub fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    as_role(extension_owner(), f)
}

/// Run `f` as `role`, with `search_path` pinned the same way (edgesync's
/// apply writes each table as its owner, as PostgreSQL's own apply does);
/// every setting changed in there is undone at the end.
pub fn as_role<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut user = pg_sys::Oid::INVALID;
    let mut context = 0;
    // SAFETY: reads this backend's current user and security context into
    // two locals.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut context) };
    // SAFETY: opens a GUC nest level in a backend inside a transaction;
    // `RestoreUser` pops it (or the abort does).
    let guc_level = unsafe { pg_sys::NewGUCNestLevel() };
    let _restore = RestoreUser { user, context, guc_level };
    // SAFETY: a local user-id change (SECURITY_LOCAL_USERID_CHANGE, as
    // SECURITY DEFINER does), undone by `RestoreUser` on every exit.
    unsafe { pg_sys::SetUserIdAndSecContext(role, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32) };
    pin_search_path();
    f()
}

/// Set `search_path` to `pg_catalog, pg_temp` at the current GUC nest level
/// (`as_role` opened it and pops it after).
fn pin_search_path() {
    crate::guc::set_for(crate::guc::Scope::NestLevel, c"search_path", c"pg_catalog, pg_temp");
}

/// The role calling right now.
pub fn current_user() -> pg_sys::Oid {
    // SAFETY: reads this backend's current user id (set once a session has a user).
    unsafe { pg_sys::GetUserId() }
}

/// Does `role` have the privileges of `of` (membership, or superuser)?
pub fn has_privs_of(role: pg_sys::Oid, of: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup by two role oids, in a backend inside a transaction.
    unsafe { pg_sys::has_privs_of_role(role, of) }
}

/// Raise unless the caller is a superuser: a forwarder connects with the
/// server's own credentials (passfile, certificates, local trust), so
/// choosing where it connects is a superuser's call.
#[pg_extern(volatile, parallel_safe)]
fn _require_superuser_for_conninfo() {
    // SAFETY: a catalog lookup by role oid, in a backend inside a transaction.
    if !unsafe { pg_sys::superuser_arg(current_user()) } {
        raise_with_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "edgesync: only a superuser may set a peer's conninfo",
            "The forwarder connects with this server's credentials (passfile, certificates, local trust).",
        );
    }
}

/// Raise unless the caller may enrol `relation`: its owner (or a member of
/// the owning role, or a superuser), and never a system catalog.
#[pg_extern(volatile, parallel_safe)]
fn _require_table_owner(relation: pg_sys::Oid) {
    let found = Spi::get_two_with_args::<pg_sys::Oid, String>(
        "SELECT c.relowner, n.nspname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[relation.into()],
    );
    let (owner, schema) = match found {
        Ok((Some(o), Some(s))) => (o, s),
        // no row: no such relation
        Ok(_) | Err(pgrx::spi::Error::InvalidPosition) => {
            raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, format!("edgesync: relation {relation:?} does not exist"))
        }
        Err(e) => raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: cannot look relation {relation:?} up: {e}")),
    };
    if schema == "pg_catalog" || schema == "information_schema" || schema.starts_with("pg_toast") {
        raise(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, "edgesync: system catalogs do not sync");
    }
    if !has_privs_of(current_user(), owner) {
        raise_with_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "edgesync: only the table's owner may enrol it in sync",
            "Enrolling a table lets peers read (up) or write (cloud side) it.",
        );
    }
}

/// The steps of the SQL API that write edgesync's own tables (or create a
/// slot) on behalf of a caller who passed the step's check. The public
/// functions are SECURITY INVOKER and call `_api_step`, so the caller it
/// checks is the current user: a SECURITY DEFINER function could only see
/// the session's outer role, which is not who called when another definer
/// function sits in between.
#[derive(Clone, Copy, Debug)]
enum ApiStep {
    AddTable,
    RemoveTable,
    SetConflictPolicy,
    DropConflictPolicy,
    AddPeer,
    AlterPeer,
}

impl ApiStep {
    fn named(name: &str) -> ApiStep {
        match name {
            "add_table" => ApiStep::AddTable,
            "remove_table" => ApiStep::RemoveTable,
            "set_conflict_policy" => ApiStep::SetConflictPolicy,
            "drop_conflict_policy" => ApiStep::DropConflictPolicy,
            "add_peer" => ApiStep::AddPeer,
            "alter_peer" => ApiStep::AlterPeer,
            other => raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("edgesync: no API step {other:?}")),
        }
    }

    /// The internal function that does the step: `$1` is the table (or
    /// NULL), `$2` the step's other arguments as text.
    fn sql(self) -> &'static str {
        match self {
            ApiStep::AddTable => "SELECT edgesync._add_table($1::regclass, $2[1])",
            ApiStep::RemoveTable => "SELECT edgesync._remove_table($1::regclass)",
            ApiStep::SetConflictPolicy => "SELECT edgesync._set_conflict_policy($1::regclass, $2[1], $2[2]::oid::regproc)",
            ApiStep::DropConflictPolicy => "SELECT edgesync._drop_conflict_policy($1::regclass, $2[1]::boolean)",
            ApiStep::AddPeer => {
                "SELECT edgesync._add_peer($2[1], $2[2], $2[3], $2[4]::interval, $2[5]::integer, $2[6]::bigint, $2[7])"
            }
            ApiStep::AlterPeer => {
                "SELECT edgesync._alter_peer($2[1], $2[2], $2[3], $2[4]::interval, $2[5]::integer, $2[6]::bigint, $2[7])"
            }
        }
    }

    /// Raise unless the current user may take this step.
    fn check(self, relation: Option<pg_sys::Oid>, args: &[Option<String>]) {
        match self {
            ApiStep::AddTable | ApiStep::RemoveTable | ApiStep::SetConflictPolicy | ApiStep::DropConflictPolicy => {
                let Some(relation) = relation else {
                    raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "edgesync: the table must not be NULL")
                };
                _require_table_owner(relation)
            }
            ApiStep::AddPeer => _require_superuser_for_conninfo(),
            // a conninfo or pull_conninfo given (the second or seventh argument) is a new place to connect to
            ApiStep::AlterPeer if [1, 6].iter().any(|&i| args.get(i).is_some_and(Option::is_some)) => _require_superuser_for_conninfo(),
            ApiStep::AlterPeer => {}
        }
    }
}

/// Check the caller for `step` of the SQL API, then run the step's internal
/// function as the extension's owner. Called by `add_table`,
/// `remove_table`, `set_conflict_policy`, `drop_conflict_policy`,
/// `add_peer` and `alter_peer`.
#[pg_extern(volatile)]
fn _api_step(step: &str, relation: Option<pg_sys::Oid>, args: Option<Vec<Option<String>>>) {
    let step = ApiStep::named(step);
    let args = args.unwrap_or_default();
    step.check(relation, &args);
    // `select`, not `update`: pgrx's update takes a transaction id first,
    // and add_peer's slot cannot be created in a transaction that has one
    as_extension_owner(|| Spi::connect(|client| client.select(step.sql(), None, &[relation.into(), args.into()]).map(|_| ())))
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: {step:?} failed: {e}")));
}
