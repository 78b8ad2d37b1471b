//! Any bytes given to apply_batch: decode never panics, and whatever
//! decodes encodes back to a batch that decodes the same.
#![no_main]

use edgesync_fuzz::batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = batch::decode(data, 1 << 24) {
        let again = batch::encode(&b, Some(1)).expect("a decoded batch encodes");
        assert_eq!(batch::decode(&again, 1 << 24).expect("and decodes"), b);
    }
});
