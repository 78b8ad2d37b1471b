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
//! The checksum covers the uncompressed payload.
//!
//! A batch comes from a peer and is hostile until checked: the sizes and
//! counts it declares are claims, never allocations. `raw_len` is checked
//! against the receiver's limit before anything else; decompression streams
//! and stops at `raw_len`, and at `MAX_EXPANSION` times the bytes that
//! actually arrived (a few kilobytes of compressed zeros cannot become a
//! gigabyte); counts are checked against the bytes left before anything is
//! read for them. The sender sends a batch uncompressed in the rare case
//! that it compresses better than `MAX_EXPANSION`, so the cap never refuses
//! an honest batch.

use std::borrow::Cow;
use std::fmt;

pub const MAGIC: [u8; 4] = *b"EDGB";
pub const FORMAT: u16 = 1;
pub const HEADER_LEN: usize = 16;
const COMPRESSED: u16 = 1;
const NO_ORIGIN: u16 = u16::MAX;
/// A compressed body may decompress to at most this many times its size.
pub const MAX_EXPANSION: usize = 256;
/// The fewest payload bytes a transaction takes (end LSN, commit time,
/// origin length, message count).
const MIN_TRANSACTION_LEN: usize = 8 + 8 + 2 + 4;
/// The fewest payload bytes a message takes: its length and a type byte.
const MIN_MESSAGE_LEN: usize = 4 + 1;

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
    /// A compressed body that grows past `MAX_EXPANSION` times its size.
    Expands { received: usize },
    /// A count larger than the bytes left could hold.
    CountTooLarge { what: &'static str, count: u64 },
    EmptyMessage,
    OutOfOrder,
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
            BatchError::Expands { received } => {
                write!(f, "a compressed body of {received} bytes decompresses to more than {MAX_EXPANSION} times its size")
            }
            BatchError::CountTooLarge { what, count } => write!(f, "{what} {count} is more than the batch's bytes can hold"),
            BatchError::EmptyMessage => write!(f, "an empty message (a pgoutput message has at least its type byte)"),
            BatchError::OutOfOrder => write!(f, "transactions out of order"),
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
    let compressed = match zstd_level {
        Some(level) => Some(zstd::bulk::compress(&raw, level).map_err(|e| BatchError::Decompress(e.to_string()))?),
        None => None,
    };
    // a receiver refuses a body that expands past MAX_EXPANSION: send such a rare one plain
    let (flags, body) = match compressed {
        Some(c) if c.len().saturating_mul(MAX_EXPANSION) >= raw.len() => (COMPRESSED, c),
        _ => (0, raw.clone()),
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
    /// Refuse `count` items of at least `min_len` bytes each when the bytes
    /// left cannot hold them (before anything is allocated for them).
    fn check_count(&self, what: &'static str, count: u32, min_len: usize) -> Result<(), BatchError> {
        let left = self.data.len() - self.at;
        if (count as usize).saturating_mul(min_len) > left {
            return Err(BatchError::CountTooLarge { what, count: count as u64 });
        }
        Ok(())
    }
    fn text(&mut self, len: u16, what: &'static str) -> Result<&'a str, BatchError> {
        let bytes = self.take(len as usize, what)?;
        std::str::from_utf8(bytes).map_err(|_| BatchError::BadText(what))
    }
}

/// Decode and verify a batch; refuses payloads larger than `max_raw_len`.
/// Memory stays within the payload's size (at most `max_raw_len`, and at
/// most `MAX_EXPANSION` times the bytes received), whatever the batch
/// claims: the payload is checked whole and then read in place, with no
/// allocation per transaction or message. A plain body is not even copied.
pub fn decode(data: &[u8], max_raw_len: usize) -> Result<Decoded<'_>, BatchError> {
    let (compressed, raw_len, crc) = read_header(data, max_raw_len)?;
    let body = &data[HEADER_LEN..];
    let raw = if compressed { Cow::Owned(inflate(body, raw_len)?) } else { Cow::Borrowed(body) };
    if raw.len() != raw_len {
        return Err(BatchError::LengthMismatch { expected: raw_len, found: raw.len() });
    }
    let found = crc32c::crc32c(&raw);
    if found != crc {
        return Err(BatchError::Checksum { expected: crc, found });
    }
    Decoded::checked(raw)
}

/// The header's claims, checked: whether the body is compressed, the
/// payload's length (within `max_raw_len`) and its checksum.
fn read_header(data: &[u8], max_raw_len: usize) -> Result<(bool, usize, u32), BatchError> {
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
    Ok((flags & COMPRESSED != 0, raw_len, crc))
}

/// Decompress `body`, streaming: the output grows only as bytes actually
/// come out, and stops one byte past `raw_len` or past MAX_EXPANSION times
/// the body, whichever is less.
fn inflate(body: &[u8], raw_len: usize) -> Result<Vec<u8>, BatchError> {
    use std::io::Read;
    let cap = body.len().saturating_mul(MAX_EXPANSION);
    let limit = raw_len.min(cap);
    let decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(|e| BatchError::Decompress(e.to_string()))?;
    let mut raw = Vec::new();
    decoder.take(limit as u64 + 1).read_to_end(&mut raw).map_err(|e| BatchError::Decompress(e.to_string()))?;
    if raw.len() > limit && limit == cap && cap < raw_len {
        return Err(BatchError::Expands { received: body.len() });
    }
    Ok(raw)
}

/// A batch checked whole and read in place: its sender, and its
/// transactions and their messages as slices of the payload.
#[derive(Debug)]
pub struct Decoded<'a> {
    raw: Cow<'a, [u8]>,
    /// Where the transaction count starts (after the sender).
    sender_end: usize,
    ntxn: u32,
}

/// One source transaction of a decoded batch.
#[derive(Clone, Copy, Debug)]
pub struct TransactionView<'a> {
    pub end_lsn: u64,
    pub commit_time: i64,
    pub origin: Option<&'a str>,
    nmsg: u32,
    /// The messages, each `len u32 + data`.
    body: &'a [u8],
}

impl<'a> Decoded<'a> {
    /// Check every length, count, text and the transactions' order, without
    /// keeping anything but the payload.
    fn checked(raw: Cow<'a, [u8]>) -> Result<Decoded<'a>, BatchError> {
        let mut r = Reader { data: &raw, at: 0 };
        let len = r.u16("sender")?;
        r.text(len, "sender")?;
        let sender_end = r.at;
        let ntxn = r.u32("transaction count")?;
        r.check_count("transaction count", ntxn, MIN_TRANSACTION_LEN)?;
        let mut last_lsn = None;
        for _ in 0..ntxn {
            let t = read_transaction(&mut r)?;
            if last_lsn.is_some_and(|before| t.end_lsn <= before) {
                return Err(BatchError::OutOfOrder);
            }
            last_lsn = Some(t.end_lsn);
        }
        if r.at != raw.len() {
            return Err(BatchError::TrailingBytes(raw.len() - r.at));
        }
        Ok(Decoded { sender_end, ntxn, raw })
    }

    pub fn sender(&self) -> &str {
        // checked UTF-8 in `checked`
        std::str::from_utf8(&self.raw[2..self.sender_end]).unwrap_or_default()
    }

    pub fn transaction_count(&self) -> usize {
        self.ntxn as usize
    }

    /// The transactions, in order.
    pub fn transactions(&self) -> impl Iterator<Item = TransactionView<'_>> {
        let mut r = Reader { data: &self.raw, at: self.sender_end + 4 };
        // every read succeeds: `checked` read the same bytes the same way
        (0..self.ntxn).map_while(move |_| read_transaction(&mut r).ok())
    }

    /// The batch as owned values (tests and tools; apply reads in place).
    pub fn to_batch(&self) -> Batch {
        let transactions = self
            .transactions()
            .map(|t| Transaction {
                end_lsn: t.end_lsn,
                commit_time: t.commit_time,
                origin: t.origin.map(str::to_string),
                messages: t.messages().map(<[u8]>::to_vec).collect(),
            })
            .collect();
        Batch { sender: self.sender().to_string(), transactions }
    }
}

impl<'a> TransactionView<'a> {
    /// The transaction's pgoutput messages, in order.
    pub fn messages(&self) -> impl Iterator<Item = &'a [u8]> {
        let mut r = Reader { data: self.body, at: 0 };
        (0..self.nmsg).map_while(move |_| {
            let len = r.u32("message").ok()? as usize;
            r.take(len, "message").ok()
        })
    }

    pub fn message_count(&self) -> usize {
        self.nmsg as usize
    }
}

/// One transaction, checked: its metadata, and its messages walked (each
/// length within the bytes left, none empty) but not copied.
fn read_transaction<'a>(r: &mut Reader<'a>) -> Result<TransactionView<'a>, BatchError> {
    let end_lsn = r.u64("transaction")?;
    let commit_time = r.u64("transaction")? as i64;
    let origin = match r.u16("origin")? {
        NO_ORIGIN => None,
        len => Some(r.text(len, "origin")?),
    };
    let nmsg = r.u32("message count")?;
    r.check_count("message count", nmsg, MIN_MESSAGE_LEN)?;
    let start = r.at;
    for _ in 0..nmsg {
        let len = r.u32("message")? as usize;
        if len == 0 {
            return Err(BatchError::EmptyMessage);
        }
        r.take(len, "message")?;
    }
    Ok(TransactionView { end_lsn, commit_time, origin, nmsg, body: &r.data[start..r.at] })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode to owned values, to compare with what was encoded.
    fn dec(wire: &[u8], max_raw_len: usize) -> Result<Batch, BatchError> {
        decode(wire, max_raw_len).map(|d| d.to_batch())
    }

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
            assert_eq!(dec(&wire, 1 << 20), Ok(sample()), "{level:?}");
        }
        let plain = encode(&sample(), None).unwrap();
        let packed = encode(&sample(), Some(3)).unwrap();
        assert!(packed.len() < plain.len(), "repetitive rows compress");
    }

    #[test]
    fn every_corruption_is_refused_with_its_reason() {
        let wire = encode(&sample(), Some(3)).unwrap();
        assert_eq!(dec(&wire[..10], 1 << 20), Err(BatchError::TooShort(10)));
        let mut bad = wire.clone();
        bad[0] = b'X';
        assert_eq!(dec(&bad, 1 << 20), Err(BatchError::BadMagic));
        let mut bad = wire.clone();
        bad[5] = 9;
        assert_eq!(dec(&bad, 1 << 20), Err(BatchError::UnsupportedFormat(9)));
        let mut bad = wire.clone();
        bad[7] |= 4;
        assert!(matches!(dec(&bad, 1 << 20), Err(BatchError::UnknownFlags(_))));
        assert!(matches!(dec(&wire, 10), Err(BatchError::TooLarge { .. })));
        assert!(matches!(dec(&wire[..wire.len() - 3], 1 << 20), Err(BatchError::Decompress(_))));
        let mut bad = wire.clone();
        bad[12] ^= 0xff;
        assert!(matches!(dec(&bad, 1 << 20), Err(BatchError::Checksum { .. })));
        // a plain body with a flipped bit: the checksum catches it
        let mut plain = encode(&sample(), None).unwrap();
        let last = plain.len() - 1;
        plain[last] ^= 1;
        assert!(matches!(dec(&plain, 1 << 20), Err(BatchError::Checksum { .. })));
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
        assert_eq!(dec(&wire, 1 << 20), Err(BatchError::CountTooLarge { what: "transaction count", count: 5 }));
    }

    /// A plain (uncompressed) batch around `raw`, with a correct checksum.
    fn plain_wire(raw: &[u8]) -> Vec<u8> {
        framed(raw, false, raw.len() as u32, crc32c::crc32c(raw))
    }

    #[test]
    fn the_limit_and_the_header_length_are_inclusive() {
        // a payload exactly at the receiver's limit is accepted
        let (wire, raw_len) = encode_measured(&sample(), Some(3)).unwrap();
        assert_eq!(dec(&wire, raw_len), Ok(sample()));
        assert_eq!(dec(&wire, raw_len - 1), Err(BatchError::TooLarge { raw_len, limit: raw_len - 1 }));
        // a bare header is long enough to be read: what is missing is its body
        let plain = encode(&sample(), None).unwrap();
        assert_eq!(dec(&plain[..HEADER_LEN], 1 << 20), Err(BatchError::LengthMismatch { expected: raw_len, found: 0 }));
        assert_eq!(dec(&plain[..HEADER_LEN - 1], 1 << 20), Err(BatchError::TooShort(HEADER_LEN - 1)));
    }

    #[test]
    fn trailing_bytes_are_counted() {
        let wire = encode(&sample(), None).unwrap();
        let mut raw = wire[HEADER_LEN..].to_vec();
        raw.extend_from_slice(b"xyz");
        assert_eq!(dec(&plain_wire(&raw), 1 << 20), Err(BatchError::TrailingBytes(3)));
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
            let _ = dec(&wire[..n], 1 << 20);
        }
        for i in 0..wire.len() {
            for bit in 0..8 {
                let mut w = wire.clone();
                w[i] ^= 1 << bit;
                let _ = dec(&w, 1 << 20);
            }
        }
    }

    /// `body` behind a header that claims `raw_len` payload bytes and `crc`.
    fn framed(body: &[u8], compressed: bool, raw_len: u32, crc: u32) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT.to_be_bytes());
        out.extend_from_slice(&u16::from(compressed).to_be_bytes());
        out.extend_from_slice(&raw_len.to_be_bytes());
        out.extend_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_compressed_bomb_is_refused_at_its_expansion_cap() {
        // 64 MB of zeros compress to a few kilobytes; the header tells the truth
        let zeros = vec![0u8; 64 << 20];
        let body = zstd::bulk::compress(&zeros, 3).unwrap();
        assert!(body.len() * MAX_EXPANSION < zeros.len());
        let bomb = framed(&body, true, zeros.len() as u32, crc32c::crc32c(&zeros));
        assert_eq!(dec(&bomb, 1 << 30), Err(BatchError::Expands { received: body.len() }));
    }

    #[test]
    fn counts_are_checked_against_the_bytes_that_arrived() {
        // a sender, then a claim of four billion transactions in a few bytes
        let mut payload = vec![0, 1, b'e'];
        payload.extend_from_slice(&u32::MAX.to_be_bytes());
        payload.extend_from_slice(&[0; 40]);
        let wire = framed(&payload, false, payload.len() as u32, crc32c::crc32c(&payload));
        assert_eq!(dec(&wire, 1 << 20), Err(BatchError::CountTooLarge { what: "transaction count", count: u32::MAX as u64 }));
        // one transaction claiming four billion messages
        let mut payload = vec![0, 1, b'e', 0, 0, 0, 1];
        payload.extend_from_slice(&[0; 16]);
        payload.extend_from_slice(&NO_ORIGIN.to_be_bytes());
        payload.extend_from_slice(&u32::MAX.to_be_bytes());
        let wire = framed(&payload, false, payload.len() as u32, crc32c::crc32c(&payload));
        assert_eq!(dec(&wire, 1 << 20), Err(BatchError::CountTooLarge { what: "message count", count: u32::MAX as u64 }));
    }

    #[test]
    fn empty_messages_and_disordered_transactions_are_refused() {
        let mut b = sample();
        b.transactions[0].messages.push(Vec::new());
        assert_eq!(dec(&encode(&b, None).unwrap(), 1 << 20), Err(BatchError::EmptyMessage));
        let mut b = sample();
        b.transactions[1].end_lsn = b.transactions[0].end_lsn;
        assert_eq!(dec(&encode(&b, Some(3)).unwrap(), 1 << 20), Err(BatchError::OutOfOrder));
    }

    #[test]
    fn a_batch_that_compresses_too_well_travels_plain() {
        let b = Batch {
            sender: "edge".into(),
            transactions: vec![Transaction { end_lsn: 1, commit_time: 1, origin: None, messages: vec![vec![b'I'; 1 << 20]] }],
        };
        let wire = encode(&b, Some(3)).unwrap();
        assert_eq!(u16::from_be_bytes([wire[6], wire[7]]) & COMPRESSED, 0, "sent uncompressed");
        assert_eq!(dec(&wire, 1 << 21).unwrap(), b);
    }

    #[test]
    fn a_batch_is_read_in_place() {
        let wire = encode(&sample(), None).unwrap();
        let d = decode(&wire, 1 << 20).unwrap();
        assert!(matches!(d.raw, Cow::Borrowed(_)), "a plain body is not copied");
        assert_eq!((d.sender(), d.transaction_count()), ("store_042", 2));
        let t: Vec<_> = d.transactions().collect();
        assert_eq!(t[0].messages().collect::<Vec<_>>(), vec![&b"B..."[..], &[b'I'; 300][..], &b"C"[..]]);
        assert_eq!((t[0].message_count(), t[1].message_count(), t[1].origin), (3, 0, Some("edgesync_cloud")));
        // where the payload's bytes are inside the input
        let body = &wire[HEADER_LEN..];
        let first = t[0].messages().next().unwrap();
        assert!(body.as_ptr_range().contains(&first.as_ptr()), "messages are slices of what arrived");
    }

    #[test]
    fn millions_of_tiny_messages_cost_their_bytes() {
        // 2 M one-byte messages: checked and read without a copy or an allocation each
        let messages = vec![b"X".to_vec(); 2_000_000];
        let b = Batch { sender: "e".into(), transactions: vec![Transaction { end_lsn: 1, commit_time: 0, origin: None, messages }] };
        let wire = encode(&b, None).unwrap();
        let d = decode(&wire, 1 << 30).unwrap();
        assert_eq!(d.transactions().map(|t| t.messages().count()).sum::<usize>(), 2_000_000);
    }
}
