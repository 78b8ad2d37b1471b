//! The receiving node's register of the nodes that push to it: each sender
//! name belongs to one login (`edgesync.edge`, kept by `register_edge` and
//! `drop_edge`). `hello` and `apply_batch` serve a caller only as the
//! sender its login is registered for, so one store can neither push as
//! another nor read another's progress, and no replication origin is ever
//! created for a name nobody registered.
//!
//! The login is the session's (`session_user`): the role the connection
//! authenticated as, which neither `SET ROLE` nor the SECURITY DEFINER
//! functions it calls change. Superusers may act as any sender.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::error::{raise, raise_with_hint};
use crate::privilege::as_extension_owner;

/// Raise unless the session's login is registered for `sender` (or is a
/// superuser). Called by `hello`.
#[pg_extern(stable, parallel_safe)]
fn _require_edge_login(sender: &str) {
    require_edge_login(sender)
}

/// The check behind `_require_edge_login`; `apply_batch` makes it before
/// anything of a batch is applied (an origin created, a row written).
pub(crate) fn require_edge_login(sender: &str) {
    // SAFETY: reads this backend's session user id, set once a session has a user.
    let login = unsafe { pg_sys::GetSessionUserId() };
    // SAFETY: a catalog lookup by role oid, in a backend inside a transaction.
    if unsafe { pg_sys::superuser_arg(login) } {
        return;
    }
    let registered = registered_login(sender);
    let caller = role_name(login);
    match registered {
        Some(owner) if owner == caller => {}
        Some(owner) => raise_with_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("edgesync: login {caller:?} may not act as node {sender:?}: that node is registered to another login"),
            &format!("Connect as {owner:?}, or, if the node moved to this login on purpose, on this node: SELECT edgesync.register_edge('{sender}', login => '{caller}');"),
        ),
        None => raise_with_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("edgesync: node {sender:?} is not registered here"),
            &format!("On this node, as an edgesync_admin: SELECT edgesync.register_edge('{sender}', login => '{caller}');"),
        ),
    }
}

/// Whether `sender` is a registered edge, asked after `require_edge_login`
/// let the caller through: a login other than a superuser's gets past it
/// only as a registered edge (no lookup then); a superuser may act under
/// any name.
pub(crate) fn is_registered_after_login_check(sender: &str) -> bool {
    // SAFETY: reads this backend's session user id, set once a session has a user.
    let login = unsafe { pg_sys::GetSessionUserId() };
    // SAFETY: a catalog lookup by role oid, in a backend inside a transaction.
    if !unsafe { pg_sys::superuser_arg(login) } {
        return true;
    }
    registered_login(sender).is_some()
}

/// The login `sender` is registered to, if any (`edgesync.edge` is read as
/// the extension's owner: the caller may not read it).
fn registered_login(sender: &str) -> Option<String> {
    as_extension_owner(|| {
        Spi::connect(|client| {
            let found = client.select("SELECT login::text FROM edgesync.edge WHERE name = $1", Some(1), &[sender.into()])?;
            if found.is_empty() {
                return Ok(None);
            }
            found.first().get_one::<String>()
        })
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading the edge register failed: {e}")))
}

/// The name of role `role`.
fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: a catalog lookup by role oid (`true`: no error if it is gone);
    // the result is NULL or a palloc'd C string, read once here.
    let name = unsafe { pg_sys::GetUserNameFromId(role, true) };
    if name.is_null() {
        return format!("{}", role.to_u32());
    }
    // SAFETY: non-null, NUL-terminated, from GetUserNameFromId just above.
    unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy().into_owned()
}
