//! The parsers of untrusted bytes from `src/model/`, compiled on their own
//! (they use no pgrx) so that the fuzz targets can call them.

#[path = "../../src/model/batch.rs"]
pub mod batch;
#[path = "../../src/model/capture.rs"]
pub mod capture;
#[path = "../../src/model/pgoutput.rs"]
pub mod pgoutput;
