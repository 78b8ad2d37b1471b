//! Running a piece of edgesync's bookkeeping with the rights of the role
//! that owns the extension, whoever the caller is (an apply worker running
//! as a table owner, a table owner settling a conflict).

use std::sync::atomic::{AtomicU32, Ordering};

use pgrx::prelude::*;

static OWNER: AtomicU32 = AtomicU32::new(0);

fn extension_owner() -> pg_sys::Oid {
    let cached = OWNER.load(Ordering::Relaxed);
    if cached != 0 {
        return pg_sys::Oid::from(cached);
    }
    let owner = Spi::get_one::<pg_sys::Oid>("SELECT nspowner FROM pg_catalog.pg_namespace WHERE nspname = 'edgesync'")
        .ok()
        .flatten()
        .unwrap_or_else(|| error!("edgesync: schema edgesync not found"));
    OWNER.store(owner.to_u32(), Ordering::Relaxed);
    owner
}

struct RestoreUser {
    user: pg_sys::Oid,
    context: i32,
}

impl Drop for RestoreUser {
    fn drop(&mut self) {
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
    }
}

/// Run `f` as the extension's owner; the caller's identity comes back
/// afterwards, on error too.
pub fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = extension_owner();
    let mut user = pg_sys::Oid::INVALID;
    let mut context = 0;
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut context) };
    let _restore = RestoreUser { user, context };
    unsafe { pg_sys::SetUserIdAndSecContext(owner, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32) };
    f()
}

/// The role calling right now.
pub fn current_user() -> pg_sys::Oid {
    unsafe { pg_sys::GetUserId() }
}

/// Does `role` have the privileges of `of` (membership, or superuser)?
pub fn has_privs_of(role: pg_sys::Oid, of: pg_sys::Oid) -> bool {
    unsafe { pg_sys::has_privs_of_role(role, of) }
}
