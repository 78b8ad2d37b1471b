//! What a delete carries beside the key pgoutput sends: the delete's own
//! version and the row version it removed, with the deleted row's key as
//! the deleting node's trigger spelled it. The conflict trigger emits it as
//! a transactional logical decoding message just before the delete's own
//! WAL record, so it reaches the peer inside the same source transaction
//! and just before the delete it stamps.
//!
//! Layout of the message's content: format (1 byte), the table's oid on
//! the deleting node (4, big-endian: pgoutput's relation id), the stamp (24
//! bytes: delete version, then the version it removed), the key object
//! (jsonb text, the rest).

use super::version::{RowStamp, STAMP_BYTES};

/// The prefix of edgesync's delete messages.
pub const PREFIX: &str = "edgesync.delete";
/// `PREFIX` as the C string the message is written with.
pub const PREFIX_C: &std::ffi::CStr = c"edgesync.delete";

const FORMAT: u8 = 1;
const HEADER: usize = 1 + 4 + STAMP_BYTES;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteStamp {
    /// The table's oid on the deleting node (pgoutput's relation id).
    pub relation: u32,
    /// `version`: the delete's; `prev`: the row version it removed.
    pub stamp: RowStamp,
    /// The deleted row's key object, as jsonb text.
    pub key: String,
}

impl DeleteStamp {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.key.len());
        out.push(FORMAT);
        out.extend_from_slice(&self.relation.to_be_bytes());
        out.extend_from_slice(&self.stamp.to_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out
    }

    /// Read a message's content; anything but what `encode` writes is an error.
    pub fn decode(content: &[u8]) -> Result<DeleteStamp, String> {
        if content.len() < HEADER {
            return Err(format!("a delete stamp of {} bytes is shorter than its {HEADER}-byte header", content.len()));
        }
        if content[0] != FORMAT {
            return Err(format!("a delete stamp of format {} (this node reads {FORMAT})", content[0]));
        }
        let relation = u32::from_be_bytes(content[1..5].try_into().expect("4 bytes"));
        let stamp = RowStamp::from_bytes(&content[5..HEADER]).map_err(|e| format!("a delete stamp's versions: {e}"))?;
        let key = std::str::from_utf8(&content[HEADER..]).map_err(|_| "a delete stamp's key is not UTF-8".to_string())?;
        if key.is_empty() {
            return Err("a delete stamp without a key".to_string());
        }
        Ok(DeleteStamp { relation, stamp, key: key.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::conflict::version::Version;

    fn sample() -> DeleteStamp {
        DeleteStamp {
            relation: 16_385,
            stamp: RowStamp { version: Version::new(300 << 16, 2), prev: Version::new(200 << 16, 1) },
            key: r#"{"sku": "A"}"#.to_string(),
        }
    }

    #[test]
    fn the_two_spellings_of_the_prefix_agree() {
        assert_eq!(PREFIX_C.to_str(), Ok(PREFIX));
    }

    #[test]
    fn round_trips() {
        let s = sample();
        let bytes = s.encode();
        assert_eq!(bytes.len(), HEADER + s.key.len());
        assert_eq!(DeleteStamp::decode(&bytes), Ok(s));
    }

    #[test]
    fn anything_else_is_an_error_not_a_panic() {
        let good = sample().encode();
        for cut in 0..=HEADER {
            assert!(DeleteStamp::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong_format = good.clone();
        wrong_format[0] = 9;
        assert!(DeleteStamp::decode(&wrong_format).unwrap_err().contains("format 9"));
        let mut not_utf8 = good.clone();
        not_utf8.push(0xff);
        assert!(DeleteStamp::decode(&not_utf8).is_err());
    }
}
