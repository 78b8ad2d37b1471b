//! The parsers of untrusted bytes from `src/model/`, compiled on their own
//! (they use no pgrx) so that the fuzz targets can call them. `model`
//! re-creates the paths the files use (`crate::model::...`, `super::...`).

#[path = "../../src/model/sync/batch.rs"]
pub mod batch;
#[path = "../../src/model/sync/capture.rs"]
pub mod capture;
#[path = "../../src/model/conflict/delete_stamp.rs"]
pub mod delete_stamp;
#[path = "../../src/model/sync/pack.rs"]
pub mod pack;
#[path = "../../src/model/sync/pgoutput.rs"]
pub mod pgoutput;
#[path = "../../src/model/conflict/version.rs"]
pub mod version;

pub mod model {
    pub mod conflict {
        pub use crate::{delete_stamp, version};
    }
    pub mod sync {
        pub use crate::{batch, capture, pack, pgoutput};
    }
}
