//! Sync health: judging metrics against thresholds, and diagnosing settings.

pub mod checks;
pub mod diagnose;
pub mod downstreams;
pub mod edges;
