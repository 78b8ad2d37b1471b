//! Any bytes given to apply_batch: decode never panics, and whatever
//! decodes encodes back to a batch that decodes the same.
//!
//! Random bytes rarely pass the magic number and the checksum, so most
//! inputs are framed first: the target writes a valid header (and, when the
//! first byte says so, compresses) around the fuzzed payload, so that the
//! payload's own parsing is what gets explored. One input in four is given
//! to the decoder as it is, header included.
#![no_main]

use edgesync_fuzz::batch;
use libfuzzer_sys::fuzz_target;

/// `payload` behind a header that the checks before the payload accept.
fn framed(payload: &[u8], compress: bool) -> Vec<u8> {
    let body = if compress { zstd::bulk::compress(payload, 1).expect("zstd compresses") } else { payload.to_vec() };
    let mut out = Vec::with_capacity(batch::HEADER_LEN + body.len());
    out.extend_from_slice(&batch::MAGIC);
    out.extend_from_slice(&batch::FORMAT.to_be_bytes());
    out.extend_from_slice(&u16::from(compress).to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let input = match mode % 4 {
        0 => rest.to_vec(),
        1 => framed(rest, true),
        _ => framed(rest, false),
    };
    if let Ok(b) = batch::decode(&input, 1 << 24) {
        let again = batch::encode(&b, Some(1)).expect("a decoded batch encodes");
        assert_eq!(batch::decode(&again, 1 << 24).expect("and decodes"), b);
    }
});
