//! The parsers of untrusted bytes from `src/model/sync/`, compiled on their
//! own (they use no pgrx) so that the fuzz targets can call them.

#[path = "../../src/model/sync/batch.rs"]
pub mod batch;
#[path = "../../src/model/sync/capture.rs"]
pub mod capture;
#[path = "../../src/model/sync/pack.rs"]
pub mod pack;
#[path = "../../src/model/sync/pgoutput.rs"]
pub mod pgoutput;
