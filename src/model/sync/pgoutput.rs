//! pgoutput messages, as logical decoding hands them out
//! (`pg_logical_slot_peek_binary_changes`), read into edgesync's own types.
//!
//! The byte-level parsing is the `pg_walstream` crate's (built without its
//! network client or async runtime: a plain, stateless parser that returns
//! errors, never panics, for protocol versions 1 to 4). This module keeps
//! what edgesync needs from each message and nothing from that crate leaks
//! out of it. The one exception is apply's hot path: inserts, updates and
//! deletes are read in place by [`change`] (their layout is three lines of
//! the protocol), each value a slice of the batch rather than a copy; the
//! tests hold it to what `parse` reads, and it is fuzzed with it. Protocol version 1 is what edgesync asks for: it is what
//! every supported server speaks, and whole transactions need nothing newer.

use pg_walstream::{ColumnData, LogicalReplicationMessage as Wire, LogicalReplicationParser, TupleData};

/// The protocol version edgesync requests from pgoutput.
pub const PROTOCOL_VERSION: u32 = 1;

/// One column value of a row image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the update did not change: the sender did not send it.
    Unchanged,
    /// The value in the type's text form.
    Text(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// Part of the replica identity (the primary key, for edgesync's tables).
    pub key: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// The relation's oid on the sender: meaningful only there.
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub columns: Vec<Column>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Begin { final_lsn: u64, commit_time: i64 },
    Commit { end_lsn: u64, commit_time: i64 },
    /// The transaction came from this replication origin on the sender.
    Origin { name: String },
    Relation(Relation),
    Insert { relation: u32, new: Vec<Value> },
    /// `old`: the old key (or whole old row) when the sender sent one: when
    /// the key changed, or under REPLICA IDENTITY FULL.
    Update { relation: u32, old: Option<Vec<Value>>, new: Vec<Value> },
    Delete { relation: u32, old: Vec<Value> },
    Truncate { relations: Vec<u32> },
    /// A logical decoding message emitted inside the transaction
    /// (`pg_logical_emit_message(true, ...)`); only with the option `messages`.
    Logical { prefix: String, content: Vec<u8> },
    /// Type, non-transactional messages and anything else edgesync does not act on.
    Other { tag: u8 },
}

impl Message {
    /// The sender relation a row change or relation message is about.
    pub fn relation(&self) -> Option<u32> {
        match self {
            Message::Relation(r) => Some(r.id),
            Message::Insert { relation, .. } | Message::Update { relation, .. } | Message::Delete { relation, .. } => Some(*relation),
            _ => None,
        }
    }

    /// Is this a row change (what `max_batch_rows` counts)?
    pub fn is_change(&self) -> bool {
        matches!(self, Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. } | Message::Truncate { .. })
    }
}

fn value(c: &ColumnData) -> Result<Value, String> {
    if c.is_null() {
        Ok(Value::Null)
    } else if c.is_unchanged() {
        Ok(Value::Unchanged)
    } else if c.is_text() {
        c.as_str().map(|s| Value::Text(s.into_owned())).ok_or_else(|| "a column value is not UTF-8".to_string())
    } else {
        Err("binary column values are not supported (edgesync asks for text)".to_string())
    }
}

fn row(t: &TupleData) -> Result<Vec<Value>, String> {
    t.columns.iter().map(value).collect()
}

/// The relation a row change (Insert, Update, Delete) is to, read from its
/// head alone: the tag, then the relation id (the same in every protocol
/// version edgesync asks for). None: not a row change, or too short.
/// For a sender that only routes a message; whoever applies it parses it
/// whole (`parse`) and refuses what does not read.
pub fn row_change_relation(data: &[u8]) -> Option<u32> {
    match data {
        [b'I' | b'U' | b'D', a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Parse one pgoutput message.
pub fn parse(data: &[u8]) -> Result<Message, String> {
    let mut parser = LogicalReplicationParser::with_protocol_version(PROTOCOL_VERSION);
    let parsed = parser.parse_wal_message(data).map_err(|e| format!("bad pgoutput message: {e}"))?;
    if parsed.is_streaming {
        return Err("streamed (in-progress) transactions are not supported".to_string());
    }
    Ok(match parsed.message {
        Wire::Begin { final_lsn, timestamp, .. } => Message::Begin { final_lsn, commit_time: timestamp },
        Wire::Commit { end_lsn, timestamp, .. } => Message::Commit { end_lsn, commit_time: timestamp },
        Wire::Origin { origin_name, .. } => Message::Origin { name: origin_name },
        Wire::Relation { relation_id, namespace, relation_name, columns, .. } => Message::Relation(Relation {
            id: relation_id,
            namespace: namespace.to_string(),
            name: relation_name.to_string(),
            columns: columns
                .iter()
                .map(|c| Column { name: c.name.to_string(), type_oid: c.type_id, key: c.is_key() })
                .collect(),
        }),
        Wire::Insert { relation_id, tuple } => Message::Insert { relation: relation_id, new: row(&tuple)? },
        Wire::Update { relation_id, old_tuple, new_tuple, .. } => Message::Update {
            relation: relation_id,
            old: old_tuple.as_ref().map(row).transpose()?,
            new: row(&new_tuple)?,
        },
        Wire::Delete { relation_id, old_tuple, .. } => Message::Delete { relation: relation_id, old: row(&old_tuple)? },
        Wire::Truncate { relation_ids, .. } => Message::Truncate { relations: relation_ids },
        // flags bit 1: transactional (the only kind decoded in its transaction's place)
        Wire::Message { flags, prefix, content, .. } if flags & 1 == 1 => Message::Logical { prefix, content: content.to_vec() },
        _ => Message::Other { tag: data[0] },
    })
}

/// A column value of a row change, read in place from its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field<'a> {
    Null,
    /// A TOASTed value the update did not change: the sender did not send it.
    Unchanged,
    /// The value in the type's text form.
    Text(&'a str),
}

/// An insert, update or delete read in place from its pgoutput message:
/// what apply reads for every row, without a copy of any value (every
/// other message goes through [`parse`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    Insert { relation: u32, new: Vec<Field<'a>> },
    /// `old`: the old key (or whole old row) when the sender sent one.
    Update { relation: u32, old: Option<Vec<Field<'a>>>, new: Vec<Field<'a>> },
    Delete { relation: u32, old: Vec<Field<'a>> },
}

impl Change<'_> {
    /// The sender relation it changes.
    pub fn relation(&self) -> u32 {
        match self {
            Change::Insert { relation, .. } | Change::Update { relation, .. } | Change::Delete { relation, .. } => *relation,
        }
    }
}

/// Is `data` an insert, update or delete message (what [`change`] reads)?
pub fn is_row_change(data: &[u8]) -> bool {
    matches!(data.first(), Some(b'I' | b'U' | b'D'))
}

/// Read an insert, update or delete message in place: the protocol 1
/// layout `parse` reads, a value a slice of `data`. Every length is checked
/// against the bytes there, and nothing may follow the message.
pub fn change(data: &[u8]) -> Result<Change<'_>, String> {
    let bad = |what: &str| format!("bad pgoutput message: {what}");
    let mut r = InPlace { data, at: 0 };
    let tag = r.u8()?;
    let relation = r.u32()?;
    let change = match tag {
        b'I' => match r.u8()? {
            b'N' => Change::Insert { relation, new: r.tuple()? },
            _ => return Err(bad("an insert without its new row")),
        },
        b'U' => {
            let mut row_tag = r.u8()?;
            let old = match row_tag {
                b'K' | b'O' => {
                    let old = r.tuple()?;
                    row_tag = r.u8()?;
                    Some(old)
                }
                _ => None,
            };
            if row_tag != b'N' {
                return Err(bad("an update without its new row"));
            }
            Change::Update { relation, old, new: r.tuple()? }
        }
        b'D' => match r.u8()? {
            b'K' | b'O' => Change::Delete { relation, old: r.tuple()? },
            _ => return Err(bad("a delete without its old key")),
        },
        _ => return Err(bad("not an insert, update or delete")),
    };
    if r.at != data.len() {
        return Err(bad("bytes after the end of a row change"));
    }
    Ok(change)
}

/// A cursor over one message's bytes.
struct InPlace<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> InPlace<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("bad pgoutput message: truncated")?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("two bytes")))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("four bytes")))
    }

    /// A row: its column count, then each value (n: NULL, u: unchanged
    /// TOAST, t: text with its length).
    fn tuple(&mut self) -> Result<Vec<Field<'a>>, String> {
        let count = self.u16()? as usize;
        // a column takes at least one byte: a count beyond what is left is not believed
        let mut row = Vec::with_capacity(count.min(self.data.len() - self.at));
        for _ in 0..count {
            row.push(match self.u8()? {
                b'n' => Field::Null,
                b'u' => Field::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    let text = std::str::from_utf8(self.take(len)?).map_err(|_| "a column value is not UTF-8".to_string())?;
                    Field::Text(text)
                }
                b'b' => return Err("binary column values are not supported (edgesync asks for text)".to_string()),
                other => return Err(format!("bad pgoutput message: unknown column kind {:?}", other as char)),
            });
        }
        Ok(row)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use pg_walstream::{encode_message_to_bytes, ColumnInfo};

    pub fn wire(m: &Wire) -> Vec<u8> {
        encode_message_to_bytes(m, PROTOCOL_VERSION as u8).to_vec()
    }

    pub fn relation_msg(id: u32, name: &str, cols: &[(&str, u32, bool)]) -> Vec<u8> {
        wire(&Wire::Relation {
            relation_id: id,
            namespace: "public".into(),
            relation_name: name.into(),
            replica_identity: b'd',
            columns: cols.iter().map(|(n, t, k)| ColumnInfo::new(u8::from(*k), n.to_string(), *t, -1)).collect(),
        })
    }

    pub fn tuple(values: &[Option<&str>]) -> TupleData {
        TupleData::new(
            values
                .iter()
                .map(|v| match v {
                    Some(s) => ColumnData::text(s.as_bytes().to_vec()),
                    None => ColumnData::null(),
                })
                .collect(),
        )
    }

    pub fn insert_msg(rel: u32, values: &[Option<&str>]) -> Vec<u8> {
        wire(&Wire::Insert { relation_id: rel, tuple: tuple(values) })
    }

    /// A transactional logical decoding message.
    pub fn logical_msg(prefix: &str, content: &[u8]) -> Vec<u8> {
        wire(&Wire::Message { flags: 1, lsn: 1, prefix: prefix.into(), content: content.to_vec().into() })
    }

    pub fn begin_msg(final_lsn: u64, ts: i64) -> Vec<u8> {
        wire(&Wire::Begin { final_lsn, timestamp: ts, xid: 7 })
    }

    pub fn commit_msg(end_lsn: u64, ts: i64) -> Vec<u8> {
        wire(&Wire::Commit { flags: 0, commit_lsn: end_lsn - 8, end_lsn, timestamp: ts })
    }

    #[test]
    fn a_row_change_names_its_relation_in_its_head() {
        let insert = insert_msg(0x01020304, &[Some("1"), None]);
        assert_eq!(row_change_relation(&insert), Some(0x01020304));
        assert_eq!(parse(&insert).unwrap().relation(), Some(0x01020304), "the same as a whole parse");
        let update = wire(&Wire::Update { relation_id: 9, key_type: None, old_tuple: None, new_tuple: tuple(&[Some("2")]) });
        assert_eq!(row_change_relation(&update), Some(9));
        assert_eq!(row_change_relation(&begin_msg(1, 1)), None);
        assert_eq!(row_change_relation(&relation_msg(5, "t", &[("id", 20, true)])), None);
        assert_eq!(row_change_relation(b"I\x00\x01"), None, "too short");
        assert_eq!(row_change_relation(b""), None);
    }

    #[test]
    fn reads_every_message_edgesync_acts_on() {
        assert_eq!(parse(&begin_msg(100, 5)).unwrap(), Message::Begin { final_lsn: 100, commit_time: 5 });
        assert_eq!(parse(&commit_msg(200, 6)).unwrap(), Message::Commit { end_lsn: 200, commit_time: 6 });
        let Message::Relation(r) = parse(&relation_msg(16384, "readings", &[("id", 20, true), ("v", 701, false)])).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!((r.id, r.namespace.as_str(), r.name.as_str()), (16384, "public", "readings"));
        assert_eq!(r.columns[0], Column { name: "id".into(), type_oid: 20, key: true });
        assert!(!r.columns[1].key);
        assert_eq!(
            parse(&insert_msg(16384, &[Some("1"), None])).unwrap(),
            Message::Insert { relation: 16384, new: vec![Value::Text("1".into()), Value::Null] }
        );
        let upd = wire(&Wire::Update {
            relation_id: 9,
            old_tuple: Some(tuple(&[Some("1")])),
            new_tuple: TupleData::new(vec![ColumnData::text(b"2".to_vec()), ColumnData::unchanged()]),
            key_type: Some('K'),
        });
        assert_eq!(
            parse(&upd).unwrap(),
            Message::Update {
                relation: 9,
                old: Some(vec![Value::Text("1".into())]),
                new: vec![Value::Text("2".into()), Value::Unchanged]
            }
        );
        let del = wire(&Wire::Delete { relation_id: 9, old_tuple: tuple(&[Some("1")]), key_type: 'K' });
        assert_eq!(parse(&del).unwrap(), Message::Delete { relation: 9, old: vec![Value::Text("1".into())] });
        let origin = wire(&Wire::Origin { origin_lsn: 1, origin_name: "edgesync_cloud".into() });
        assert_eq!(parse(&origin).unwrap(), Message::Origin { name: "edgesync_cloud".into() });
        let trunc = wire(&Wire::Truncate { relation_ids: vec![1, 2], flags: 0 });
        assert_eq!(parse(&trunc).unwrap(), Message::Truncate { relations: vec![1, 2] });
        assert_eq!(parse(&logical_msg("edgesync.delete", b"x")).unwrap(), Message::Logical { prefix: "edgesync.delete".into(), content: b"x".to_vec() });
        let outside = wire(&Wire::Message { flags: 0, lsn: 1, prefix: "p".into(), content: b"c".to_vec().into() });
        assert_eq!(parse(&outside).unwrap(), Message::Other { tag: b'M' }, "a non-transactional message belongs to no transaction");
    }

    #[test]
    fn which_messages_are_changes_and_of_which_relation() {
        let rel = parse(&relation_msg(16384, "t", &[("id", 20, true)])).unwrap();
        assert_eq!(rel.relation(), Some(16384));
        assert!(!rel.is_change());
        let ins = parse(&insert_msg(16385, &[Some("1")])).unwrap();
        assert_eq!(ins.relation(), Some(16385));
        let del = parse(&wire(&Wire::Delete { relation_id: 9, old_tuple: tuple(&[Some("1")]), key_type: 'K' })).unwrap();
        assert_eq!(del.relation(), Some(9));
        let trunc = parse(&wire(&Wire::Truncate { relation_ids: vec![1, 2], flags: 0 })).unwrap();
        assert_eq!(trunc.relation(), None, "a truncate names several");
        for change in [&ins, &del, &trunc] {
            assert!(change.is_change(), "{change:?}");
        }
        for other in [parse(&begin_msg(1, 1)).unwrap(), parse(&commit_msg(20, 1)).unwrap(), Message::Origin { name: "o".into() }] {
            assert!(!other.is_change(), "{other:?}");
            assert_eq!(other.relation(), None);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(&[]).is_err());
        assert!(parse(b"Z").is_err());
        let good = insert_msg(1, &[Some("hello"), Some("world")]);
        for cut in 1..good.len() {
            assert!(parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        // a pseudo-random walk over bytes behind every tag
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            let mut buf = vec![b"BCORIUDTYM"[(x % 10) as usize]];
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                buf.push(x as u8);
            }
            let _ = parse(&buf);
            // read in place, a row change is what `parse` reads, or an error
            if let Ok(c) = change(&buf) {
                assert_eq!(parse(&buf).ok(), Some(owned(c)), "{buf:?}");
            }
            x = x.wrapping_mul(2_654_435_761).wrapping_add(1);
        }
    }

    fn owned_row(row: Vec<Field<'_>>) -> Vec<Value> {
        row.into_iter()
            .map(|f| match f {
                Field::Null => Value::Null,
                Field::Unchanged => Value::Unchanged,
                Field::Text(t) => Value::Text(t.to_string()),
            })
            .collect()
    }

    fn owned(c: Change<'_>) -> Message {
        match c {
            Change::Insert { relation, new } => Message::Insert { relation, new: owned_row(new) },
            Change::Update { relation, old, new } => Message::Update { relation, old: old.map(owned_row), new: owned_row(new) },
            Change::Delete { relation, old } => Message::Delete { relation, old: owned_row(old) },
        }
    }

    #[test]
    fn a_row_change_read_in_place_is_what_parse_reads() {
        let unchanged = TupleData::new(vec![ColumnData::text(b"2".to_vec()), ColumnData::unchanged(), ColumnData::null()]);
        let messages = [
            insert_msg(16_384, &[Some("1"), None, Some(""), Some("naïve ✓"), Some("a\nb 'quoted'")]),
            insert_msg(7, &[]),
            wire(&Wire::Update { relation_id: 9, old_tuple: None, new_tuple: tuple(&[Some("1"), None]), key_type: None }),
            wire(&Wire::Update { relation_id: 9, old_tuple: Some(tuple(&[Some("1")])), new_tuple: unchanged.clone(), key_type: Some('K') }),
            wire(&Wire::Update { relation_id: 9, old_tuple: Some(tuple(&[Some("1"), Some("x")])), new_tuple: unchanged, key_type: Some('O') }),
            wire(&Wire::Delete { relation_id: 9, old_tuple: tuple(&[Some("1")]), key_type: 'K' }),
            wire(&Wire::Delete { relation_id: 9, old_tuple: tuple(&[Some("1"), None]), key_type: 'O' }),
        ];
        for m in &messages {
            assert!(is_row_change(m));
            let c = change(m).unwrap_or_else(|e| panic!("{e}: {m:?}"));
            assert_eq!(Some(c.relation()), parse(m).unwrap().relation());
            assert_eq!(owned(c), parse(m).unwrap());
            for cut in 1..m.len() {
                assert!(change(&m[..cut]).is_err(), "cut at {cut} of {m:?}");
            }
            let mut longer = m.clone();
            longer.push(0);
            assert!(change(&longer).is_err(), "a byte after the message");
        }
        for other in [begin_msg(1, 1), commit_msg(20, 1), relation_msg(1, "t", &[("id", 20, true)]), logical_msg("p", b"c")] {
            assert!(!is_row_change(&other));
            assert!(change(&other).is_err());
        }
        let binary = wire(&Wire::Insert { relation_id: 1, tuple: TupleData::new(vec![ColumnData::binary(vec![0, 1])]) });
        assert!(change(&binary).unwrap_err().contains("binary"));
        let mut latin1 = insert_msg(1, &[Some("x")]);
        *latin1.last_mut().unwrap() = 0xE9;
        assert!(change(&latin1).unwrap_err().contains("UTF-8"));
    }
}
