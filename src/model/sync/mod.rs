//! Moving changes between nodes, stage by stage: `capture` reads a slot's
//! pgoutput messages (`pgoutput`) into whole source transactions, `pack`
//! cuts them into batches, `batch` is the wire format, `forwarder` is the
//! worker's state machine, `blocked` finds a transaction the peer refuses
//! and reads one set aside; `feed` decides what a pull from the cloud's
//! feed hands over, `edge_activity` what the cloud remembers of each
//! edge's pushes and pulls; `lsn` and `secrets` are
//! shared helpers, `length_limit` tells which column refused a value on
//! apply, and `canonical` reads the commonest values' printed form there.

pub mod batch;
pub mod blocked;
pub mod canonical;
pub mod capture;
pub mod edge_activity;
pub mod feed;
pub mod forwarder;
pub mod length_limit;
pub mod lsn;
pub mod pack;
pub mod pgoutput;
pub mod secrets;
