//! How the conflict trigger's steps report a failure: a `ConflictError`
//! passed up to `conflict_trigger`, which raises it as one ERROR with a
//! SQLSTATE (not pgrx's "Trigger function panic").

#[derive(Debug)]
pub struct ConflictError(String);

impl std::fmt::Display for ConflictError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "edgesync: {}", self.0)
    }
}

impl std::error::Error for ConflictError {}

/// A `ConflictError` saying `what` went wrong.
pub(super) fn fail(what: impl std::fmt::Display) -> ConflictError {
    ConflictError(what.to_string())
}
