//! Any bytes as one pgoutput message: an error or a message, never a
//! panic; read in place as a row change, the same.
#![no_main]

use edgesync_fuzz::pgoutput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pgoutput::parse(data);
    let _ = pgoutput::change(data);
});
