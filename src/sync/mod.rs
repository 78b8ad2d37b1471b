//! Moving changes between nodes: capture → pack → transport → apply.
pub mod apply;
pub mod capture;
pub mod peers;
pub mod status;
pub mod transport;
pub mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod tests;
