//! SQL functions behind `edgesync.health` and `edgesync.diagnose()`: read the
//! statistics views, hand plain structs to `model::health::checks` /
//! `model::health::diagnose`.
//!
//! - `checks`: the rows of `edgesync.health` and `edgesync.thresholds()`, the
//!   levels they are judged against.
//! - `diagnose`: `edgesync.diagnose()`, from a snapshot of the node's settings.
//! - `downstreams`: the walsender clients health remembers, so that one that
//!   vanishes from `pg_stat_replication` is still reported.

use pgrx::spi::{SpiClient, SpiHeapTupleData};
use pgrx::PgSqlErrorCode;

use crate::error::raise;

mod checks;
mod diagnose;
mod downstreams;

/// Run a read-only query and map each row; an SPI failure becomes an ERROR.
fn read_rows<T>(client: &SpiClient<'_>, sql: &str, map: impl Fn(&SpiHeapTupleData) -> pgrx::spi::Result<T>) -> Vec<T> {
    let table = client
        .select(sql, None, &[])
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: reading statistics failed: {e}")));
    table
        .map(|row| {
            map(&row).unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: unexpected statistics row: {e}")))
        })
        .collect()
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;
