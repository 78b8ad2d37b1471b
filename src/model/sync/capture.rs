//! From the messages a read of a slot returns to whole source transactions,
//! each knowing the relation messages its changes need (`pack` cuts them
//! into batches).

use std::collections::HashMap;

use super::pgoutput::{self, Message};
use crate::model::conflict::delete_stamp;

/// One whole source transaction read from the slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceTxn {
    pub end_lsn: u64,
    pub commit_time: i64,
    pub origin: Option<String>,
    /// Its messages between Begin and Commit, relation messages included.
    pub messages: Vec<Vec<u8>>,
    /// Relation messages the changes need that were sent before this
    /// transaction, as known when it was read.
    pub needs: Vec<(u32, Vec<u8>)>,
    pub rows: usize,
    pub bytes: usize,
}

/// Reads peeked messages into transactions; remembers relation messages
/// across peeks of one slot.
#[derive(Default)]
pub struct Reader {
    relations: HashMap<u32, Vec<u8>>,
    open: Option<SourceTxn>,
    defined: Vec<u32>,
    /// The end of the last commit read: commits come in order.
    last_commit: u64,
}

impl Reader {
    /// Feed the messages of one peek, in order. Returns the transactions
    /// they complete. A peek returns whole transactions only, so a
    /// transaction left open is an error.
    pub fn read(&mut self, messages: impl IntoIterator<Item = Vec<u8>>) -> Result<Vec<SourceTxn>, String> {
        // each peek starts at a transaction boundary: forget what a failed read left open
        self.open = None;
        self.defined.clear();
        self.last_commit = 0;
        let mut done = Vec::new();
        for raw in messages {
            done.extend(self.take(raw)?);
        }
        if self.open.is_some() {
            return Err("the peek ended inside a transaction".to_string());
        }
        Ok(done)
    }

    /// Feed one message of a stream; returns the transaction it completes.
    /// A stream's transactions span reads: what is open stays open.
    pub fn take(&mut self, raw: Vec<u8>) -> Result<Option<SourceTxn>, String> {
        // most messages are row changes: route them by their head, unparsed
        // (the receiver parses every message whole before it applies any)
        if let Some(relation) = pgoutput::row_change_relation(&raw) {
            self.change(&[relation], raw)?;
            return Ok(None);
        }
        match pgoutput::parse(&raw)? {
            Message::Begin { commit_time, .. } => self.begin(commit_time)?,
            Message::Commit { end_lsn, commit_time } => {
                let mut t = self.open.take().ok_or("Commit outside a transaction")?;
                // a receiver refuses a batch out of order: so does the reader
                if end_lsn <= self.last_commit {
                    return Err(format!("a commit at {end_lsn:#x} after one at {:#x}", self.last_commit));
                }
                self.last_commit = end_lsn;
                t.end_lsn = end_lsn;
                t.commit_time = commit_time;
                return Ok(Some(t));
            }
            Message::Origin { name } => self.open.as_mut().ok_or("Origin outside a transaction")?.origin = Some(name),
            Message::Relation(r) => self.relation(r.id, raw)?,
            Message::Logical { prefix, .. } if prefix == delete_stamp::PREFIX => self.stamp(raw)?,
            Message::Other { .. } | Message::Logical { .. } => {}
            Message::Truncate { relations } => self.change(&relations, raw)?,
            change => self.change(&change.relation().into_iter().collect::<Vec<_>>(), raw)?,
        }
        Ok(None)
    }

    /// A transaction is open (its Commit not read yet).
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    fn begin(&mut self, commit_time: i64) -> Result<(), String> {
        if self.open.is_some() {
            return Err("Begin inside a transaction".to_string());
        }
        self.defined.clear();
        self.open = Some(SourceTxn {
            end_lsn: 0,
            commit_time,
            origin: None,
            messages: Vec::new(),
            needs: Vec::new(),
            rows: 0,
            bytes: 0,
        });
        Ok(())
    }

    /// Relation messages come inside a transaction, just before first use.
    fn relation(&mut self, id: u32, raw: Vec<u8>) -> Result<(), String> {
        let t = self.open.as_mut().ok_or("Relation outside a transaction")?;
        self.relations.insert(id, raw.clone());
        self.defined.push(id);
        t.bytes += raw.len();
        t.messages.push(raw);
        Ok(())
    }

    /// A delete's versions (the conflict trigger's message): they travel
    /// in place, just before the delete they stamp.
    fn stamp(&mut self, raw: Vec<u8>) -> Result<(), String> {
        let t = self.open.as_mut().ok_or("a delete stamp outside a transaction")?;
        t.bytes += raw.len();
        t.messages.push(raw);
        Ok(())
    }

    /// A row change (or truncate): it needs its relations described first,
    /// earlier in this transaction or, remembered, in an earlier one.
    fn change(&mut self, relations: &[u32], raw: Vec<u8>) -> Result<(), String> {
        let t = self.open.as_mut().ok_or("a change outside a transaction")?;
        for &rel in relations {
            if !self.defined.contains(&rel) {
                let def = self.relations.get(&rel).ok_or_else(|| format!("a change to relation {rel} before its Relation message"))?;
                t.needs.push((rel, def.clone()));
                self.defined.push(rel);
            }
        }
        t.rows += 1;
        t.bytes += raw.len();
        t.messages.push(raw);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::sync::pgoutput::tests::{begin_msg, commit_msg, insert_msg, relation_msg};

    /// The messages of one transaction with `rows` inserts into relation 1.
    pub(crate) fn txn(rel: Option<Vec<u8>>, rows: u32, end: u64) -> Vec<Vec<u8>> {
        let mut m = vec![begin_msg(end - 10, end as i64)];
        m.extend(rel);
        for i in 0..rows {
            m.push(insert_msg(1, &[Some(&i.to_string())]));
        }
        m.push(commit_msg(end, end as i64));
        m
    }

    #[test]
    fn a_failed_read_does_not_poison_the_next() {
        let mut r = Reader::default();
        assert!(r.read(vec![begin_msg(1, 1)]).is_err());
        let next = r.read(txn(Some(relation_msg(1, "t", &[("id", 20, true)])), 1, 100)).unwrap();
        assert_eq!(next.len(), 1);
    }

    #[test]
    fn rows_and_bytes_count_the_changes_and_relations_carried() {
        let rel = relation_msg(1, "t", &[("id", 20, true)]);
        let msgs = txn(Some(rel.clone()), 3, 100);
        let change_bytes: usize = msgs[2..5].iter().map(Vec::len).sum();
        let mut r = Reader::default();
        let t = r.read(msgs).unwrap();
        assert_eq!((t[0].rows, t[0].bytes), (3, rel.len() + change_bytes), "the inline relation message counts");
        // a later transaction: its relation is a need, not a message of its own
        let t = r.read(txn(None, 3, 200)).unwrap();
        assert_eq!((t[0].rows, t[0].bytes), (3, change_bytes));
        assert_eq!(t[0].needs, vec![(1, rel)]);
    }

    #[test]
    fn delete_stamps_travel_in_place_and_other_messages_do_not() {
        use crate::model::sync::pgoutput::tests::logical_msg;
        let mut msgs = txn(Some(relation_msg(1, "t", &[("id", 20, true)])), 1, 100);
        let stamp = logical_msg(delete_stamp::PREFIX, b"stamp");
        msgs.insert(2, logical_msg("someone.else", b"not ours"));
        msgs.insert(3, stamp.clone());
        let t = Reader::default().read(msgs).unwrap();
        assert_eq!(t[0].messages.len(), 3, "relation, stamp, insert");
        assert_eq!(t[0].messages[1], stamp);
        assert_eq!(t[0].rows, 1, "a stamp is not a row");
    }

    #[test]
    fn broken_streams_are_errors() {
        let mut r = Reader::default();
        assert!(r.read(vec![insert_msg(1, &[Some("1")])]).is_err(), "change outside a transaction");
        let mut r = Reader::default();
        assert!(r.read(vec![begin_msg(1, 1), insert_msg(1, &[Some("1")]), commit_msg(20, 1)]).is_err(), "unknown relation");
        let mut r = Reader::default();
        assert!(r.read(vec![begin_msg(1, 1)]).is_err(), "unfinished");
        // commits in a read go forward (the fuzzer found a stream that did not)
        let mut r = Reader::default();
        let twice = vec![begin_msg(1, 1), commit_msg(40, 1), begin_msg(1, 2), commit_msg(40, 2)];
        assert_eq!(r.read(twice).unwrap_err(), "a commit at 0x28 after one at 0x28");
        let back = vec![begin_msg(1, 1), commit_msg(40, 1), begin_msg(1, 2), commit_msg(32, 2)];
        assert!(Reader::default().read(back).is_err(), "a commit before the one read");
    }

    #[test]
    fn a_stream_keeps_a_transaction_open_across_reads() {
        let mut r = Reader::default();
        let mut msgs = txn(Some(relation_msg(1, "t", &[("id", 20, true)])), 2, 100).into_iter();
        let mut done = Vec::new();
        for m in msgs.by_ref().take(2) {
            done.extend(r.take(m).unwrap());
        }
        assert!(done.is_empty() && r.in_transaction(), "half a transaction stays open");
        for m in msgs {
            done.extend(r.take(m).unwrap());
        }
        assert_eq!((done.len(), done[0].rows, done[0].end_lsn, r.in_transaction()), (1, 2, 100, false));
        // the next transaction needs the relation remembered, and must commit later
        let next = r.take(begin_msg(1, 1)).and_then(|_| r.take(insert_msg(1, &[Some("9")]))).and_then(|_| r.take(commit_msg(90, 1)));
        assert!(next.unwrap_err().contains("after one at"));
    }
}
