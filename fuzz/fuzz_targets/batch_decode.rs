//! Any bytes given to apply_batch: decode never panics, and whatever
//! decodes encodes back to a batch that decodes the same.
//!
//! Random bytes rarely pass the magic number and the checksum, so most
//! inputs are framed first: the target writes a valid header (and, when the
//! first byte says so, compresses) around the fuzzed payload, so that the
//! payload's own parsing is what gets explored. One input in five is given
//! to the decoder as it is, header included, and one in five is a bomb: a
//! few kilobytes of compressed zeros (256 MB of them) behind a header whose
//! claims come from the input. Run under a memory limit
//! (`-rss_limit_mb`, `-malloc_limit_mb`; `make fuzz` does), a decoder that
//! trusted a claim, or allocated per message, fails the run.
#![no_main]

use std::sync::OnceLock;

use edgesync_fuzz::batch;
use libfuzzer_sys::fuzz_target;

/// The most payload bytes a run lets the decoder take (as `max_batch_size`).
const LIMIT: usize = 1 << 24;

/// `payload` behind a header that the checks before the payload accept.
fn framed(payload: &[u8], compress: bool) -> Vec<u8> {
    let body = if compress { zstd::bulk::compress(payload, 1).expect("zstd compresses") } else { payload.to_vec() };
    header(&body, compress, payload.len() as u32, crc32c::crc32c(payload))
}

fn header(body: &[u8], compressed: bool, raw_len: u32, crc: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch::HEADER_LEN + body.len());
    out.extend_from_slice(&batch::MAGIC);
    out.extend_from_slice(&batch::FORMAT.to_be_bytes());
    out.extend_from_slice(&u16::from(compressed).to_be_bytes());
    out.extend_from_slice(&raw_len.to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// 256 MB of zeros, compressed (a few kilobytes), made once, a megabyte at
/// a time (so that making it stays within the run's memory limits too).
fn zero_bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        use std::io::Write;
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 19).expect("zstd compresses");
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            encoder.write_all(&zeros).expect("zstd compresses");
        }
        encoder.finish().expect("zstd compresses")
    })
}

/// The bomb behind a header claiming what the input says (a raw length,
/// and a limit the decoder is given, both from the input's first bytes).
fn bomb(claims: &[u8]) -> (Vec<u8>, usize) {
    let mut word = [0u8; 4];
    for (w, c) in word.iter_mut().zip(claims) {
        *w = *c;
    }
    let raw_len = u32::from_be_bytes(word);
    let limit = if claims.get(4).is_some_and(|b| b & 1 == 1) { usize::MAX } else { LIMIT };
    (header(zero_bomb(), true, raw_len, 0), limit)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (input, limit) = match mode % 5 {
        0 => (rest.to_vec(), LIMIT),
        1 => (framed(rest, true), LIMIT),
        2 => bomb(rest),
        _ => (framed(rest, false), LIMIT),
    };
    if let Ok(d) = batch::decode(&input, limit) {
        let b = d.to_batch();
        let again = batch::encode(&b, Some(1)).expect("a decoded batch encodes");
        assert_eq!(batch::decode(&again, LIMIT).expect("and decodes").to_batch(), b);
    }
});
