//! Moving changes between nodes: capture → pack → transport → apply.
pub mod apply;
pub mod capture;
pub mod forwarder;
pub mod launcher;
mod libpq;
pub mod peers;
pub mod status;
pub mod target;
pub mod transport;

#[cfg(any(test, feature = "pg_test"))]
mod tests;
