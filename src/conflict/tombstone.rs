//! Tombstones: what this node remembers of a deleted row (its key and the
//! delete's version, in `edgesync.tombstone`), so that a remote change
//! arriving after the delete is judged against it (update_deleted), and
//! the cheap check that skips the lookup while there is no tombstone at all.
//! A local delete also tells peers its versions (`announce_delete`), and a
//! remote delete of a row already gone here still leaves its tombstone
//! (`missing_row_deleted`).

use std::cell::Cell;

use pgrx::pg_sys::PgOid;
use pgrx::prelude::*;
use pgrx::{JsonB, PgRelation};

use super::clock;
use super::error::{fail, ConflictError};
use super::log::{log_conflict, ConflictRecord};
use super::stamp::stamp_array;
use crate::guc;
use crate::model::conflict::delete_stamp::{DeleteStamp, PREFIX_C};
use crate::model::conflict::lww::{decide, Local, Policy, Remote};
use crate::model::conflict::version::{RowStamp, Version};
use crate::plan_cache::plan_for;
use crate::privilege::as_extension_owner;

thread_local! {
    static TOMBSTONE_RELID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// `clock::tombstones_written()` when this backend last found the
    /// tombstone table empty (-1: not known to be empty).
    static EMPTY_AT: Cell<i64> = const { Cell::new(-1) };
}

/// Record that the row with key object `key` of table `relid` was deleted
/// by the write `stamp`. A tombstone the key already has keeps the newer
/// delete (arrays compare as versions do: clock, then node).
pub(super) fn record_tombstone(relid: pg_sys::Oid, key: JsonB, stamp: RowStamp) -> Result<(), ConflictError> {
    const SQL: &str = "INSERT INTO edgesync.tombstone AS t (relid, key, version) VALUES ($1, $2, $3)
                       ON CONFLICT (relid, key) DO UPDATE
                       SET version = GREATEST(t.version, EXCLUDED.version), deleted_at = now()";
    let args = [PgOid::from(pg_sys::OIDOID), PgOid::from(pg_sys::JSONBOID), PgOid::from(pg_sys::INT8ARRAYOID)];
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            let plan = plan_for(client, SQL, &args, true)?;
            client.update(&*plan, None, &[relid.into(), key.into(), stamp_array(stamp).into()]).map(|_| ())
        })
    })
    .map_err(fail)?;
    clock::tombstone_written();
    Ok(())
}

/// No tombstone at all in this database (the tombstone table has no pages):
/// the common case of append-only tables, where the lookup is skipped. The
/// table is looked at again only after some backend wrote a tombstone.
pub(super) fn no_tombstones() -> Result<bool, ConflictError> {
    let written = clock::tombstones_written();
    if EMPTY_AT.with(|c| c.get()) == written {
        return Ok(true);
    }
    let relid = tombstone_relid()?;
    if relid == pg_sys::InvalidOid {
        return Ok(false);
    }
    // SAFETY: opened with AccessShareLock (a lock of its own, not NoLock);
    // `edgesync.tombstone` is a table, so counting its main fork's blocks is
    // meaningful, and `rel` stays open (closed on drop) while they are counted.
    let empty = unsafe {
        let rel = PgRelation::with_lock(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        pg_sys::RelationGetNumberOfBlocksInFork(rel.as_ptr(), pg_sys::ForkNumber::MAIN_FORKNUM) == 0
    };
    EMPTY_AT.with(|c| c.set(if empty { written } else { -1 }));
    Ok(empty)
}

/// The oid of `edgesync.tombstone`, looked up once per backend.
fn tombstone_relid() -> Result<pg_sys::Oid, ConflictError> {
    let cached = TOMBSTONE_RELID.with(|c| c.get());
    if cached != pg_sys::InvalidOid {
        return Ok(cached);
    }
    let found = Spi::get_one::<pg_sys::Oid>("SELECT 'edgesync.tombstone'::regclass::oid")
        .map_err(|e| fail(format!("cannot look edgesync.tombstone up: {e}")))?
        .unwrap_or(pg_sys::InvalidOid);
    TOMBSTONE_RELID.with(|c| c.set(found));
    Ok(found)
}

/// The delete version of the unexpired tombstone of `key` in `table`;
/// None when the key has none.
pub(super) fn deleted_version(relid: pg_sys::Oid, key: JsonB) -> Result<Option<Version>, ConflictError> {
    const SQL: &str = "SELECT version FROM edgesync.tombstone
                        WHERE relid = $1 AND key = $2 AND deleted_at > now() - make_interval(secs => $3)";
    let args = [PgOid::from(pg_sys::OIDOID), PgOid::from(pg_sys::JSONBOID), PgOid::from(pg_sys::FLOAT8OID)];
    let retention = guc::TOMBSTONE_RETENTION.get() as f64;
    let tomb = as_extension_owner(|| {
        Spi::connect(|client| {
            let plan = plan_for(client, SQL, &args, false)?;
            let t = client.select(&*plan, None, &[relid.into(), key.into(), retention.into()])?;
            if t.is_empty() {
                return Ok(None);
            }
            t.first().get_one::<Vec<Option<i64>>>()
        })
    })
    .map_err(fail)?;
    match tomb {
        Some(t) => Ok(Some(RowStamp::from_array(&t).map_err(fail)?.version)),
        None => Ok(None),
    }
}

/// Tell peers what a local delete removed and when: a transactional
/// logical decoding message just before the delete's own WAL record, read
/// by the forwarder with the delete (see `model::conflict::delete_stamp`).
pub(super) fn announce_delete(relid: pg_sys::Oid, key: &JsonB, stamp: RowStamp) {
    let message = DeleteStamp { relation: relid.to_u32(), stamp, key: key.0.to_string() };
    crate::compat::emit_transactional_message(PREFIX_C, &message.encode());
}

/// A remote delete that came with its versions (`stamp`) found no row of
/// `key` (the deleting node's key object) in table `relid`: its tombstone
/// is recorded all the same (keeping the newer delete), so that an update
/// older than the delete that arrives later loses to it. Without an
/// earlier tombstone here it is logged `delete_missing`.
pub(crate) fn missing_row_deleted(relid: pg_sys::Oid, schema: &str, name: &str, key: JsonB, stamp: RowStamp) -> Result<(), ConflictError> {
    if let Err(drift) = clock::observe(stamp.version.hlc) {
        // a tombstone this far ahead would beat every later write of the key: held instead
        let held = super::drift::Held { table_schema: schema, table_name: name, key, remote: stamp, drift };
        return super::drift::log_held(held, None, None, None);
    }
    let local = match deleted_version(relid, JsonB(key.0.clone()))? {
        Some(version) => Local::Deleted(version),
        None => Local::Absent,
    };
    // a delete meeting no row is judged the same under every policy
    let remote = Remote::Delete { seen: Some(stamp.prev), version: Some(stamp.version) };
    let decision = decide(local, remote, Policy::LastWriterWins, clock::node_id());
    record_tombstone(relid, JsonB(key.0.clone()), stamp)?;
    let Some(conflict) = decision.conflict else { return Ok(()) };
    log_conflict(ConflictRecord {
        table_schema: schema,
        table_name: name,
        conflict,
        resolution: decision.resolution(),
        key,
        local_row: None,
        remote_row: None,
        kept_row: None,
        local_version: None,
        remote_version: Some(stamp),
        note: None,
    })
}
