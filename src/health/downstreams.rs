//! Downstreams remembered across disconnections: each health check records
//! the walsender clients it sees into `edgesync.downstream` (as the
//! extension's owner, so that a role with only `pg_monitor` can read
//! `edgesync.health`), then judges every remembered one that is gone with
//! `model::health::downstreams`.
//!
//! Recording is skipped, never failed, where it cannot write or should not
//! wait: on a standby (read-only; its copy of the list would be its
//! primary's anyway), in a read-only transaction, and while another
//! transaction is recording (a monitoring session idle in its transaction
//! must not block every other reader of health).

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;

use super::read_rows;
use crate::error::raise;
use crate::model::health::checks::{Check, Thresholds};
use crate::model::health::downstreams::{self as model, RememberedDownstream};
use crate::privilege::as_extension_owner;

/// The advisory lock (two-int4 key space) that one recorder at a time holds
/// until its transaction ends: 0x65730008, "es" and section 8.
const RECORDING_LOCK: (i32, i32) = (0x6573_0008, 1);

/// Record the downstreams connected now; see the module note for when not.
pub(super) fn record_connected() {
    // asked as the caller, before anything runs as the owner: finding the
    // owner may assign a transaction id, which a standby refuses
    if !Spi::connect(may_record) {
        return;
    }
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            let names: Vec<String> = read_rows(client, "SELECT DISTINCT name FROM edgesync.streaming_replication", |r| {
                Ok(r.get::<String>(1)?.unwrap_or_default())
            })
            .into_iter()
            .filter(|n| model::worth_remembering(n))
            .collect();
            if !names.is_empty() {
                upsert(client, names);
            }
        })
    })
}

/// A primary, a writable transaction, and no other recorder in flight.
fn may_record(client: &SpiClient<'_>) -> bool {
    let sql = format!(
        "SELECT CASE WHEN pg_catalog.pg_is_in_recovery()
                       OR pg_catalog.current_setting('transaction_read_only')::bool THEN false
                     ELSE pg_catalog.pg_try_advisory_xact_lock({}, {}) END",
        RECORDING_LOCK.0, RECORDING_LOCK.1
    );
    client
        .select(&sql, None, &[])
        .and_then(|t| t.first().get_one::<bool>())
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: deciding whether to record downstreams failed: {e}")))
        .unwrap_or(false)
}

/// One row per name (two clients under one name are one downstream to a
/// reader who can only tell them apart by name), in name order so that
/// concurrent recorders could never deadlock.
fn upsert(client: &mut SpiClient<'_>, names: Vec<String>) {
    let sql = "INSERT INTO edgesync.downstream AS d (name, kind, slot_name, client_addr, first_seen, last_seen)
               SELECT DISTINCT ON (r.name) r.name, r.kind, r.slot_name::text, r.client_addr, pg_catalog.now(), pg_catalog.now()
                 FROM edgesync.streaming_replication r
                WHERE r.name OPERATOR(pg_catalog.=) ANY ($1)
                ORDER BY r.name, r.slot_name NULLS LAST, r.pid
               ON CONFLICT (name) DO UPDATE
                  SET kind = excluded.kind, slot_name = excluded.slot_name,
                      client_addr = excluded.client_addr, last_seen = excluded.last_seen";
    client
        .update(sql, None, &[names.into()])
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: recording downstreams failed: {e}")));
}

/// Every remembered downstream judged; on a standby, the one row that says
/// nothing is tracked there.
pub(super) fn downstream_checks(client: &SpiClient<'_>, t: &Thresholds, node: impl FnOnce() -> String) -> Vec<Check> {
    if in_recovery(client) {
        return vec![model::not_tracked_on_a_standby(&node())];
    }
    read_rows(
        client,
        "SELECT d.name, d.kind, d.slot_name, host(d.client_addr), to_char(d.last_seen, 'YYYY-MM-DD HH24:MI:SSOF'),
                extract(epoch FROM now() - d.last_seen)::float8,
                EXISTS (SELECT 1 FROM edgesync.streaming_replication r WHERE r.name = d.name)
           FROM edgesync.downstream d ORDER BY 1",
        |r| {
            Ok(RememberedDownstream {
                name: r.get(1)?.unwrap_or_default(),
                kind: r.get(2)?.unwrap_or_default(),
                slot_name: r.get(3)?,
                client_addr: r.get(4)?,
                last_seen: r.get(5)?.unwrap_or_default(),
                seconds_since_seen: r.get(6)?.unwrap_or(0.0),
                connected: r.get(7)?.unwrap_or(false),
            })
        },
    )
    .iter()
    .map(|d| model::downstream_check(d, t))
    .collect()
}

fn in_recovery(client: &SpiClient<'_>) -> bool {
    client
        .select("SELECT pg_catalog.pg_is_in_recovery()", None, &[])
        .and_then(|t| t.first().get_one::<bool>())
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading the recovery state failed: {e}")))
        .unwrap_or(false)
}
