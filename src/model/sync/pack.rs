//! Packing whole source transactions into batches, cut at `max_batch_rows`
//! / `max_batch_bytes`, each batch carrying the relation messages its
//! changes need.
//!
//! pgoutput describes a relation once per decoding session, before its first
//! change (and again after its definition changes). A batch may start in the
//! middle of such a session, so each batch re-announces what its receiver
//! needs: every batch decodes on its own.

use std::collections::HashMap;

use super::batch::{Batch, Transaction};
use super::capture::SourceTxn;
use super::pgoutput::{self, Message};

/// Bounds of one batch. A single transaction larger than them travels alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_rows: usize,
    pub max_bytes: usize,
}

/// Cut transactions into batches within `limits`, in order.
pub fn pack(sender: &str, txns: Vec<SourceTxn>, limits: Limits) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut current: Vec<Transaction> = Vec::new();
    let mut announced: HashMap<u32, Vec<u8>> = HashMap::new();
    let (mut rows, mut bytes) = (0usize, 0usize);
    for t in txns {
        let full = rows + t.rows > limits.max_rows || bytes + t.bytes > limits.max_bytes;
        if full && !current.is_empty() {
            batches.push(Batch { sender: sender.to_string(), transactions: std::mem::take(&mut current) });
            announced.clear();
            rows = 0;
            bytes = 0;
        }
        let mut messages = Vec::with_capacity(t.needs.len() + t.messages.len());
        for (rel, def) in t.needs {
            if announced.get(&rel) != Some(&def) {
                bytes += def.len();
                announced.insert(rel, def.clone());
                messages.push(def);
            }
        }
        for m in t.messages {
            if m.first() == Some(&b'R') {
                if let Ok(Message::Relation(r)) = pgoutput::parse(&m) {
                    announced.insert(r.id, m.clone());
                }
            }
            messages.push(m);
        }
        rows += t.rows;
        bytes += t.bytes;
        current.push(Transaction { end_lsn: t.end_lsn, commit_time: t.commit_time, origin: t.origin, messages });
    }
    if !current.is_empty() {
        batches.push(Batch { sender: sender.to_string(), transactions: current });
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sync::capture::tests::txn;
    use crate::model::sync::capture::Reader;
    use crate::model::sync::pgoutput::tests::relation_msg;

    /// Replays a batch the way a receiver would: every change's relation
    /// must have been announced earlier in the same batch.
    fn self_contained(b: &Batch) -> bool {
        let mut known = std::collections::HashSet::new();
        b.transactions.iter().flat_map(|t| &t.messages).all(|m| match pgoutput::parse(m).unwrap() {
            Message::Relation(r) => known.insert(r.id) || true,
            other => other.relation().is_none_or(|r| known.contains(&r)),
        })
    }

    #[test]
    fn whole_transactions_cut_at_the_limits_each_batch_self_contained() {
        let rel = relation_msg(1, "readings", &[("id", 20, true)]);
        let mut r = Reader::default();
        let mut msgs = txn(Some(rel.clone()), 3, 100);
        msgs.extend(txn(None, 3, 200));
        msgs.extend(txn(None, 3, 300));
        let txns = r.read(msgs).unwrap();
        assert_eq!(txns.iter().map(|t| (t.end_lsn, t.rows)).collect::<Vec<_>>(), vec![(100, 3), (200, 3), (300, 3)]);
        assert!(txns[0].needs.is_empty(), "its relation message is inline");
        assert_eq!(txns[1].needs.len(), 1);

        let batches = pack("edge", txns, Limits { max_rows: 6, max_bytes: 1 << 20 });
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].transactions.len(), 2);
        assert_eq!(batches[1].transactions.len(), 1);
        assert!(batches.iter().all(self_contained));
        // the second batch re-announces the relation, the first does not repeat it
        assert_eq!(batches[0].transactions.iter().flat_map(|t| &t.messages).filter(|m| m[0] == b'R').count(), 1);
        assert_eq!(batches[1].transactions[0].messages[0], rel);
    }

    #[test]
    fn a_relation_known_from_an_earlier_peek_is_announced() {
        let mut r = Reader::default();
        r.read(txn(Some(relation_msg(1, "t", &[("id", 20, true)])), 1, 100)).unwrap();
        let later = r.read(txn(None, 2, 200)).unwrap();
        let b = pack("edge", later, Limits { max_rows: 100, max_bytes: 1 << 20 });
        assert!(self_contained(&b[0]));
    }

    #[test]
    fn an_oversized_transaction_travels_alone_and_origins_are_kept() {
        let mut r = Reader::default();
        let mut msgs = txn(Some(relation_msg(1, "t", &[("id", 20, true)])), 10, 100);
        let mut second = txn(None, 1, 200);
        second.insert(1, pg_walstream_origin("edgesync_cloud"));
        msgs.extend(second);
        let txns = r.read(msgs).unwrap();
        assert_eq!(txns[1].origin.as_deref(), Some("edgesync_cloud"));
        let b = pack("edge", txns, Limits { max_rows: 4, max_bytes: 1 << 20 });
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].transactions[0].messages.len(), 11);
    }

    /// Transactions per batch.
    fn shape(batches: &[Batch]) -> Vec<usize> {
        batches.iter().map(|b| b.transactions.len()).collect()
    }

    #[test]
    fn cut_at_the_byte_limit_counting_re_announced_relations() {
        let rel = relation_msg(1, "readings", &[("id", 20, true)]);
        let mut msgs = txn(Some(rel.clone()), 3, 100);
        for end in [200, 300, 400] {
            msgs.extend(txn(None, 3, end));
        }
        let txns = Reader::default().read(msgs).unwrap();
        let (first, next) = (txns[0].bytes, txns[1].bytes);
        assert_eq!(first, next + rel.len());
        let rows = 1000;

        // exactly the first two fit: a batch may be full to the byte
        let b = pack("edge", txns.clone(), Limits { max_rows: rows, max_bytes: first + next });
        assert_eq!(shape(&b), vec![2, 2]);
        assert!(b.iter().all(self_contained));
        // the re-announced relation counts: with it, two transactions no longer fit
        let b = pack("edge", txns.clone(), Limits { max_rows: rows, max_bytes: 2 * next });
        assert_eq!(shape(&b), vec![1, 1, 1, 1]);
        // rows too: exactly at the limit fits
        let b = pack("edge", txns, Limits { max_rows: 6, max_bytes: 1 << 20 });
        assert_eq!(shape(&b), vec![2, 2]);
    }

    fn pg_walstream_origin(name: &str) -> Vec<u8> {
        crate::model::sync::pgoutput::tests::wire(&pg_walstream::LogicalReplicationMessage::Origin { origin_lsn: 0, origin_name: name.into() })
    }
}
