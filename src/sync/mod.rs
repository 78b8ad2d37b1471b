//! Moving changes between nodes. A change travels through four stages, one
//! file each, and the workers that drive them:
//!
//! ```text
//!  sending node                                          receiving node
//!  capture.rs ──► model/sync/pack.rs ──► transport.rs ──► apply.rs (+ target.rs, write*.rs)
//!  read the slot   whole transactions     libpq, latch-    apply_batch: origin session,
//!  (slot_stream.rs, into batches          aware waits      exactly once, tables as owners
//!   or peek)
//!        ▲
//!  launcher.rs starts one forwarder.rs per peer; status.rs is what they show
//!  (edgesync.peers); peers.rs holds the SQL functions that act on them (sync_now);
//!  skipped.rs keeps the transactions a DBA set aside (skip_transaction).
//! ```
//!
//! On the receiving node, `edges.rs` checks which login may push and pull
//! as which edge, and `edge_activity.rs` remembers when each last did
//! (`edgesync.edges`).
//!
//! The pure halves live in `model/sync/` under the same names (`capture`
//! reads pgoutput messages into transactions, `pack`, `batch` the wire
//! format, `forwarder` the state machine). The pull side (a cloud's feed of
//! transactions that edges pull) belongs here too, as `feed.rs` (the cloud's
//! feed worker and `pull_batch`) and `pull.rs` (the edge applying what it
//! pulled through `apply.rs`).

pub mod apply;
pub mod capture;
pub mod edge_activity;
pub mod edges;
pub mod feed;
pub mod forwarder;
pub mod launcher;
mod libpq;
pub mod local_decoding;
pub mod peers;
pub mod skipped;
pub mod slot_stream;
pub mod status;
pub mod target;
pub mod transport;
mod write;
mod write_sql;

#[cfg(any(test, feature = "pg_test"))]
mod tests;
