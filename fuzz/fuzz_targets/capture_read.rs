//! Any sequence of messages (length-prefixed in the input) through the
//! capture reader and the batch packer: errors, never panics; what packs
//! encodes and decodes.
#![no_main]

use edgesync_fuzz::{batch, capture, pack};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut messages = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        messages.push(tail[..n].to_vec());
        rest = &tail[n..];
    }
    let mut reader = capture::Reader::default();
    if let Ok(txns) = reader.read(messages) {
        for b in pack::pack("fuzz", txns, pack::Limits { max_rows: 3, max_bytes: 256 }) {
            let bytes = batch::encode(&b, None).expect("encodes");
            assert_eq!(batch::decode(&bytes, 1 << 24).expect("decodes").to_batch(), b);
        }
    }
});
