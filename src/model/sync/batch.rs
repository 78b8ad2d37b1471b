//! The batch wire format: whole source transactions, moved in one round
//! trip between nodes (groundwork for the forwarder).
//!
//! A transaction travels as its commit metadata plus the raw pgoutput
//! messages logical decoding produced for it: the edge does not re-encode
//! what PostgreSQL already encoded compactly, and the receiver parses them
//! with the same parser it would use for any pgoutput stream.
//!
//! ```text
//! header  magic "EDGB" | format u16 | flags u16 | raw_len u32 | crc32c u32   (16 bytes, big-endian)
//! body    zstd(payload) when flags & COMPRESSED, else payload
//! payload sender str | ntxn u32 | ntxn × (end_lsn u64 | commit_time i64 | origin str? | nmsg u32 | nmsg × bytes)
//! str     len u16 + UTF-8;  str? = 0xFFFF for none;  bytes = len u32 + data
//! ```
//! The checksum covers the uncompressed payload; `raw_len` is checked
//! before decompressing, against a limit the receiver chooses.

use std::fmt;

pub const MAGIC: [u8; 4] = *b"EDGB";
pub const FORMAT: u16 = 1;
pub const HEADER_LEN: usize = 16;
const COMPRESSED: u16 = 1;
const NO_ORIGIN: u16 = u16::MAX;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The source's end LSN of the commit: what the receiver confirms.
    pub end_lsn: u64,
    /// Commit time on the source, microseconds since 2000-01-01 (PostgreSQL's epoch).
    pub commit_time: i64,
    /// The replication origin the change came from on the source, if any.
    pub origin: Option<String>,
    /// The transaction's pgoutput messages, in order.
    pub messages: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub sender: String,
    pub transactions: Vec<Transaction>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BatchError {
    TooShort(usize),
    BadMagic,
    UnsupportedFormat(u16),
    UnknownFlags(u16),
    TooLarge { raw_len: usize, limit: usize },
    Decompress(String),
    LengthMismatch { expected: usize, found: usize },
    Checksum { expected: u32, found: u32 },
    Truncated(&'static str),
    BadText(&'static str),
    TrailingBytes(usize),
    FieldTooLong(&'static str),
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::TooShort(n) => write!(f, "batch too short: {n} bytes, a header is {HEADER_LEN}"),
            BatchError::BadMagic => write!(f, "not an edgesync batch (bad magic)"),
            BatchError::UnsupportedFormat(v) => write!(f, "unsupported batch format {v} (this node reads {FORMAT})"),
            BatchError::UnknownFlags(x) => write!(f, "unknown batch flags {x:#x}"),
            BatchError::TooLarge { raw_len, limit } => write!(f, "batch of {raw_len} bytes exceeds the limit of {limit}"),
            BatchError::Decompress(e) => write!(f, "batch does not decompress: {e}"),
            BatchError::LengthMismatch { expected, found } => write!(f, "batch payload is {found} bytes, header says {expected}"),
            BatchError::Checksum { expected, found } => write!(f, "batch checksum mismatch: header {expected:#010x}, payload {found:#010x}"),
            BatchError::Truncated(what) => write!(f, "batch truncated in {what}"),
            BatchError::BadText(what) => write!(f, "batch {what} is not UTF-8"),
            BatchError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the last transaction"),
            BatchError::FieldTooLong(what) => write!(f, "{what} too long for the batch format"),
        }
    }
}

impl std::error::Error for BatchError {}

fn put_str(out: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), BatchError> {
    let len = u16::try_from(s.len()).ok().filter(|&l| l != NO_ORIGIN).ok_or(BatchError::FieldTooLong(what))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn payload(batch: &Batch) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    put_str(&mut out, &batch.sender, "sender")?;
    let ntxn = u32::try_from(batch.transactions.len()).map_err(|_| BatchError::FieldTooLong("transaction count"))?;
    out.extend_from_slice(&ntxn.to_be_bytes());
    for t in &batch.transactions {
        out.extend_from_slice(&t.end_lsn.to_be_bytes());
        out.extend_from_slice(&t.commit_time.to_be_bytes());
        match &t.origin {
            Some(o) => put_str(&mut out, o, "origin")?,
            None => out.extend_from_slice(&NO_ORIGIN.to_be_bytes()),
        }
        let nmsg = u32::try_from(t.messages.len()).map_err(|_| BatchError::FieldTooLong("message count"))?;
        out.extend_from_slice(&nmsg.to_be_bytes());
        for m in &t.messages {
            let len = u32::try_from(m.len()).map_err(|_| BatchError::FieldTooLong("message"))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(m);
        }
    }
    Ok(out)
}

/// Encode a batch; `zstd_level` None sends it uncompressed.
pub fn encode(batch: &Batch, zstd_level: Option<i32>) -> Result<Vec<u8>, BatchError> {
    encode_measured(batch, zstd_level).map(|(bytes, _)| bytes)
}

/// Encode a batch; also returns the size of its payload before compression.
pub fn encode_measured(batch: &Batch, zstd_level: Option<i32>) -> Result<(Vec<u8>, usize), BatchError> {
    let raw = payload(batch)?;
    let raw_len = u32::try_from(raw.len()).map_err(|_| BatchError::FieldTooLong("batch"))?;
    let (flags, body) = match zstd_level {
        Some(level) => (COMPRESSED, zstd::bulk::compress(&raw, level).map_err(|e| BatchError::Decompress(e.to_string()))?),
        None => (0, raw.clone()),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&raw_len.to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&raw).to_be_bytes());
    out.extend_from_slice(&body);
    Ok((out, raw.len()))
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], BatchError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len()).ok_or(BatchError::Truncated(what))?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, BatchError> {
        Ok(u16::from_be_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, BatchError> {
        Ok(u32::from_be_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, BatchError> {
        Ok(u64::from_be_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn text(&mut self, len: u16, what: &'static str) -> Result<String, BatchError> {
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| BatchError::BadText(what))
    }
}

/// Decode and verify a batch; refuses payloads larger than `max_raw_len`.
pub fn decode(data: &[u8], max_raw_len: usize) -> Result<Batch, BatchError> {
    if data.len() < HEADER_LEN {
        return Err(BatchError::TooShort(data.len()));
    }
    if data[0..4] != MAGIC {
        return Err(BatchError::BadMagic);
    }
    let mut header = Reader { data: &data[4..HEADER_LEN], at: 0 };
    let format = header.u16("header")?;
    if format != FORMAT {
        return Err(BatchError::UnsupportedFormat(format));
    }
    let flags = header.u16("header")?;
    if flags & !COMPRESSED != 0 {
        return Err(BatchError::UnknownFlags(flags));
    }
    let raw_len = header.u32("header")? as usize;
    let crc = header.u32("header")?;
    if raw_len > max_raw_len {
        return Err(BatchError::TooLarge { raw_len, limit: max_raw_len });
    }
    let body = &data[HEADER_LEN..];
    let raw = if flags & COMPRESSED != 0 {
        zstd::bulk::decompress(body, raw_len).map_err(|e| BatchError::Decompress(e.to_string()))?
    } else {
        body.to_vec()
    };
    if raw.len() != raw_len {
        return Err(BatchError::LengthMismatch { expected: raw_len, found: raw.len() });
    }
    let found = crc32c::crc32c(&raw);
    if found != crc {
        return Err(BatchError::Checksum { expected: crc, found });
    }

    let mut r = Reader { data: &raw, at: 0 };
    let len = r.u16("sender")?;
    let sender = r.text(len, "sender")?;
    let ntxn = r.u32("transaction count")?;
    let mut transactions = Vec::new();
    for _ in 0..ntxn {
        let end_lsn = r.u64("transaction")?;
        let commit_time = r.u64("transaction")? as i64;
        let origin = match r.u16("origin")? {
            NO_ORIGIN => None,
            len => Some(r.text(len, "origin")?),
        };
        let nmsg = r.u32("message count")?;
        let mut messages = Vec::new();
        for _ in 0..nmsg {
            let len = r.u32("message")? as usize;
            messages.push(r.take(len, "message")?.to_vec());
        }
        transactions.push(Transaction { end_lsn, commit_time, origin, messages });
    }
    if r.at != raw.len() {
        return Err(BatchError::TrailingBytes(raw.len() - r.at));
    }
    Ok(Batch { sender, transactions })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Batch {
        Batch {
            sender: "store_042".into(),
            transactions: vec![
                Transaction { end_lsn: 0x1_0000_0028, commit_time: 817_000_000_000, origin: None, messages: vec![b"B...".to_vec(), vec![b'I'; 300], b"C".to_vec()] },
                Transaction { end_lsn: 0x1_0000_0100, commit_time: 817_000_000_500, origin: Some("edgesync_cloud".into()), messages: vec![] },
            ],
        }
    }

    #[test]
    fn round_trip_compressed_and_plain() {
        for level in [Some(3), None] {
            let wire = encode(&sample(), level).unwrap();
            assert_eq!(decode(&wire, 1 << 20), Ok(sample()), "{level:?}");
        }
        let plain = encode(&sample(), None).unwrap();
        let packed = encode(&sample(), Some(3)).unwrap();
        assert!(packed.len() < plain.len(), "repetitive rows compress");
    }

    #[test]
    fn every_corruption_is_refused_with_its_reason() {
        let wire = encode(&sample(), Some(3)).unwrap();
        assert_eq!(decode(&wire[..10], 1 << 20), Err(BatchError::TooShort(10)));
        let mut bad = wire.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad, 1 << 20), Err(BatchError::BadMagic));
        let mut bad = wire.clone();
        bad[5] = 9;
        assert_eq!(decode(&bad, 1 << 20), Err(BatchError::UnsupportedFormat(9)));
        let mut bad = wire.clone();
        bad[7] |= 4;
        assert!(matches!(decode(&bad, 1 << 20), Err(BatchError::UnknownFlags(_))));
        assert!(matches!(decode(&wire, 10), Err(BatchError::TooLarge { .. })));
        assert!(matches!(decode(&wire[..wire.len() - 3], 1 << 20), Err(BatchError::Decompress(_))));
        let mut bad = wire.clone();
        bad[12] ^= 0xff;
        assert!(matches!(decode(&bad, 1 << 20), Err(BatchError::Checksum { .. })));
        // a plain body with a flipped bit: the checksum catches it
        let mut plain = encode(&sample(), None).unwrap();
        let last = plain.len() - 1;
        plain[last] ^= 1;
        assert!(matches!(decode(&plain, 1 << 20), Err(BatchError::Checksum { .. })));
    }

    #[test]
    fn lengths_inside_a_valid_checksum_are_still_checked() {
        // a payload that claims more transactions than it has, with a correct checksum
        let mut raw = Vec::new();
        put_str(&mut raw, "x", "sender").unwrap();
        raw.extend_from_slice(&5u32.to_be_bytes());
        let mut wire = MAGIC.to_vec();
        wire.extend_from_slice(&FORMAT.to_be_bytes());
        wire.extend_from_slice(&0u16.to_be_bytes());
        wire.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        wire.extend_from_slice(&crc32c::crc32c(&raw).to_be_bytes());
        wire.extend_from_slice(&raw);
        assert_eq!(decode(&wire, 1 << 20), Err(BatchError::Truncated("transaction")));
    }

    /// A plain (uncompressed) batch around `raw`, with a correct checksum.
    fn plain_wire(raw: &[u8]) -> Vec<u8> {
        let mut wire = MAGIC.to_vec();
        wire.extend_from_slice(&FORMAT.to_be_bytes());
        wire.extend_from_slice(&0u16.to_be_bytes());
        wire.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        wire.extend_from_slice(&crc32c::crc32c(raw).to_be_bytes());
        wire.extend_from_slice(raw);
        wire
    }

    #[test]
    fn the_limit_and_the_header_length_are_inclusive() {
        // a payload exactly at the receiver's limit is accepted
        let (wire, raw_len) = encode_measured(&sample(), Some(3)).unwrap();
        assert_eq!(decode(&wire, raw_len), Ok(sample()));
        assert_eq!(decode(&wire, raw_len - 1), Err(BatchError::TooLarge { raw_len, limit: raw_len - 1 }));
        // a bare header is long enough to be read: what is missing is its body
        let plain = encode(&sample(), None).unwrap();
        assert_eq!(decode(&plain[..HEADER_LEN], 1 << 20), Err(BatchError::LengthMismatch { expected: raw_len, found: 0 }));
        assert_eq!(decode(&plain[..HEADER_LEN - 1], 1 << 20), Err(BatchError::TooShort(HEADER_LEN - 1)));
    }

    #[test]
    fn trailing_bytes_are_counted() {
        let wire = encode(&sample(), None).unwrap();
        let mut raw = wire[HEADER_LEN..].to_vec();
        raw.extend_from_slice(b"xyz");
        assert_eq!(decode(&plain_wire(&raw), 1 << 20), Err(BatchError::TrailingBytes(3)));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases = [
            (BatchError::TooShort(3), "batch too short: 3 bytes, a header is 16"),
            (BatchError::UnsupportedFormat(9), "unsupported batch format 9 (this node reads 1)"),
            (BatchError::TooLarge { raw_len: 20, limit: 10 }, "batch of 20 bytes exceeds the limit of 10"),
            (BatchError::Checksum { expected: 1, found: 0xabc }, "batch checksum mismatch: header 0x00000001, payload 0x00000abc"),
            (BatchError::Truncated("origin"), "batch truncated in origin"),
            (BatchError::TrailingBytes(3), "3 unexpected bytes after the last transaction"),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // a cheap stand-in for the fuzzer: every prefix and many bit flips
        let wire = encode(&sample(), None).unwrap();
        for n in 0..wire.len() {
            let _ = decode(&wire[..n], 1 << 20);
        }
        for i in 0..wire.len() {
            for bit in 0..8 {
                let mut w = wire.clone();
                w[i] ^= 1 << bit;
                let _ = decode(&w, 1 << 20);
            }
        }
    }
}
