//! A transaction the peer refuses: finding which one it is, and keeping it
//! readable once a DBA sets it aside.
//!
//! The receiver applies a batch whole or not at all, so a refused batch of
//! many transactions says only that one of them is refused. Halving the
//! refused run finds it in at most about 2·log2(n) round trips; every part
//! the peer applies on the way is confirmed, so the transactions before the
//! culprit go through, and a run refused only as a whole (too large for the
//! peer) goes through in parts. A skipped transaction is kept in `edgesync.skipped_transaction`
//! as JSON, one entry per change.

use std::collections::HashMap;
use std::ops::Range;

use serde_json::{json, Map, Value as Json};

use super::batch::{Batch, Transaction};
use super::pgoutput::{self, Message, Relation, Value};

/// What the peer did with a run of transactions sent as one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<E> {
    Applied,
    Refused(E),
}

/// Send `count` transactions, in order, through `send` (which sends the
/// given run as one batch); when a run is refused, find the first
/// transaction the peer refuses.
///
/// `suspect_first`: the first transaction is the one found refused last
/// time, so it goes alone first (one round trip, not a halving).
/// Returns None when all were applied, or the index of the refused
/// transaction (all before it applied; it was itself sent alone and
/// refused) and that refusal; `Err` (a lost link) stops at once.
pub fn send_narrowing<E, X>(
    count: usize,
    suspect_first: bool,
    mut send: impl FnMut(Range<usize>) -> Result<Answer<E>, X>,
) -> Result<Option<(usize, E)>, X> {
    let mut start = 0;
    if suspect_first && count > 1 {
        match send(0..1)? {
            Answer::Applied => start = 1,
            Answer::Refused(e) => return Ok(Some((0, e))),
        }
    }
    while start < count {
        let error = match send(start..count)? {
            Answer::Applied => return Ok(None),
            Answer::Refused(e) => e,
        };
        match narrow(start..count, error, &mut send)? {
            Narrowed::Refused(index, e) => return Ok(Some((index, e))),
            // refused only as a whole: the rest goes next
            Narrowed::AppliedTo(end) => start = end,
        }
    }
    Ok(None)
}

/// What halving a refused run found.
enum Narrowed<E> {
    /// This transaction, sent alone, was refused; all before it applied.
    Refused(usize, E),
    /// Every transaction up to here (excluded) applied, in parts.
    AppliedTo(usize),
}

/// Halve `refused` (a run that was sent and refused with `error`): the
/// first half goes; if the peer takes it, the second half goes, and only a
/// run that was itself sent and refused is halved again (a refusal says
/// nothing about a run not sent itself).
fn narrow<E, X>(
    refused: Range<usize>,
    mut error: E,
    send: &mut impl FnMut(Range<usize>) -> Result<Answer<E>, X>,
) -> Result<Narrowed<E>, X> {
    let (mut lo, mut hi) = (refused.start, refused.end);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        (lo, hi, error) = match send(lo..mid)? {
            Answer::Refused(e) => (lo, mid, e),
            Answer::Applied => match send(mid..hi)? {
                Answer::Refused(e) => (mid, hi, e),
                Answer::Applied => return Ok(Narrowed::AppliedTo(hi)),
            },
        };
    }
    Ok(Narrowed::Refused(lo, error))
}

/// The transactions `range` of `b` as a batch of their own: the relation
/// descriptions they use that came earlier in `b` go first, so that the
/// part decodes alone.
pub fn part_of(b: &Batch, range: Range<usize>) -> Batch {
    let mut known: HashMap<u32, &Vec<u8>> = HashMap::new();
    for t in &b.transactions[..range.start] {
        for m in &t.messages {
            if let Ok(Message::Relation(r)) = pgoutput::parse(m) {
                known.insert(r.id, m);
            }
        }
    }
    let mut transactions: Vec<Transaction> = b.transactions[range].to_vec();
    let used = used_relations(&transactions);
    let mut earlier: Vec<(u32, Vec<u8>)> =
        known.into_iter().filter(|(id, _)| used.contains(id)).map(|(id, m)| (id, m.clone())).collect();
    earlier.sort_by_key(|(id, _)| *id);
    if let Some(first) = transactions.first_mut() {
        first.messages.splice(0..0, earlier.into_iter().map(|(_, m)| m));
    }
    Batch { sender: b.sender.clone(), transactions }
}

/// The relations the changes of `transactions` touch, in order of first use.
fn used_relations(transactions: &[Transaction]) -> Vec<u32> {
    let mut used = Vec::new();
    for m in transactions.iter().flat_map(|t| &t.messages) {
        let ids = match pgoutput::parse(m) {
            Ok(Message::Truncate { relations }) => relations,
            Ok(change) if change.is_change() => change.relation().into_iter().collect(),
            _ => continue,
        };
        for id in ids {
            if !used.contains(&id) {
                used.push(id);
            }
        }
    }
    used
}

/// The tables the changes of a self-contained batch touch, as
/// `schema.table`, in order of first use.
pub fn tables_of(b: &Batch) -> Vec<String> {
    let mut names: HashMap<u32, String> = HashMap::new();
    for m in b.transactions.iter().flat_map(|t| &t.messages) {
        if let Ok(Message::Relation(r)) = pgoutput::parse(m) {
            names.insert(r.id, qualified(&r));
        }
    }
    used_relations(&b.transactions)
        .into_iter()
        .map(|id| names.get(&id).cloned().unwrap_or_else(|| format!("relation {id}")))
        .collect()
}

fn qualified(r: &Relation) -> String {
    format!("{}.{}", r.namespace, r.name)
}

/// A row image as a JSON object of column name to text value (NULL:
/// null); a TOASTed value the sender left out is not there.
fn row_json(r: &Relation, row: &[Value], keys_only: bool) -> Json {
    let mut out = Map::new();
    for (c, v) in r.columns.iter().zip(row) {
        if keys_only && !c.key {
            continue;
        }
        match v {
            Value::Text(s) => out.insert(c.name.clone(), Json::String(s.clone())),
            Value::Null => out.insert(c.name.clone(), Json::Null),
            Value::Unchanged => None,
        };
    }
    Json::Object(out)
}

/// The changes of one transaction as JSON, one entry per change:
/// `{table, operation, key, row}` (`old` too when an update carried the old
/// row). `messages` are the transaction's pgoutput messages, preceded by the
/// relation descriptions it needs from earlier.
pub fn changes_json<'m>(messages: impl IntoIterator<Item = &'m [u8]>) -> Result<Json, String> {
    let mut relations: HashMap<u32, Relation> = HashMap::new();
    let mut changes = Vec::new();
    for raw in messages {
        let msg = pgoutput::parse(raw)?;
        let rel = |id: &u32| relations.get(id).ok_or_else(|| format!("a change to relation {id} before its description"));
        let entry = match &msg {
            Message::Relation(r) => {
                relations.insert(r.id, r.clone());
                continue;
            }
            Message::Insert { relation, new } => {
                let r = rel(relation)?;
                json!({"table": qualified(r), "operation": "insert", "key": row_json(r, new, true), "row": row_json(r, new, false)})
            }
            Message::Update { relation, old, new } => {
                let r = rel(relation)?;
                let mut e = json!({"table": qualified(r), "operation": "update",
                                   "key": row_json(r, old.as_deref().unwrap_or(new), true), "row": row_json(r, new, false)});
                if let Some(old) = old {
                    e["old"] = row_json(r, old, false);
                }
                e
            }
            Message::Delete { relation, old } => {
                let r = rel(relation)?;
                json!({"table": qualified(r), "operation": "delete", "key": row_json(r, old, true), "row": row_json(r, old, false)})
            }
            Message::Truncate { relations: ids } => {
                for id in ids {
                    changes.push(json!({"table": qualified(rel(id)?), "operation": "truncate"}));
                }
                continue;
            }
            _ => continue,
        };
        changes.push(entry);
    }
    Ok(Json::Array(changes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sync::capture::tests::txn;
    use crate::model::sync::capture::Reader;
    use crate::model::sync::pack::{pack, Limits};
    use crate::model::sync::pgoutput::tests::{begin_msg, commit_msg, insert_msg, relation_msg, tuple, wire};
    use pg_walstream::LogicalReplicationMessage as Wire;

    /// A peer that refuses any run holding transaction `bad`; counts the sends.
    fn peer_refusing(bad: Option<usize>, applied: &mut Vec<usize>, sends: &mut usize, run: Range<usize>) -> Result<Answer<String>, ()> {
        peer_refusing_longer_than(usize::MAX, bad, applied, sends, run)
    }

    /// Also refuses any run of more than `longest` transactions (a batch too large for it).
    fn peer_refusing_longer_than(
        longest: usize,
        bad: Option<usize>,
        applied: &mut Vec<usize>,
        sends: &mut usize,
        run: Range<usize>,
    ) -> Result<Answer<String>, ()> {
        *sends += 1;
        if bad.is_some_and(|b| run.contains(&b)) || run.len() > longest {
            return Ok(Answer::Refused(format!("refused {run:?}")));
        }
        applied.extend(run);
        Ok(Answer::Applied)
    }

    #[test]
    fn halving_finds_the_refused_transaction_and_applies_all_before_it() {
        for n in 1..=40usize {
            for bad in 0..n {
                let (mut applied, mut sends) = (Vec::new(), 0);
                let found = send_narrowing(n, false, |r| peer_refusing(Some(bad), &mut applied, &mut sends, r)).unwrap();
                assert_eq!(found.map(|f| f.0), Some(bad), "n={n}");
                assert_eq!(applied, (0..bad).collect::<Vec<_>>(), "the ones before go through, in order, once");
                let bound = 1 + 2 * (usize::BITS - n.leading_zeros()) as usize;
                assert!(sends <= bound, "n={n} bad={bad}: {sends} sends, bound {bound}");
            }
            let (mut applied, mut sends) = (Vec::new(), 0);
            assert_eq!(send_narrowing(n, false, |r| peer_refusing(None, &mut applied, &mut sends, r)).unwrap(), None);
            assert_eq!((applied.len(), sends), (n, 1), "a batch the peer takes goes once, whole");
        }
    }

    #[test]
    fn a_run_refused_only_as_a_whole_goes_through_in_parts() {
        for n in 2..=40usize {
            let (mut applied, mut sends) = (Vec::new(), 0);
            let found = send_narrowing(n, false, |r| peer_refusing_longer_than(3, None, &mut applied, &mut sends, r)).unwrap();
            assert_eq!(found, None, "n={n}: no single transaction is refused");
            assert_eq!(applied, (0..n).collect::<Vec<_>>(), "all of them, in order, once");
        }
        let (mut applied, mut sends) = (Vec::new(), 0);
        let found = send_narrowing(9, false, |r| peer_refusing_longer_than(1, None, &mut applied, &mut sends, r)).unwrap();
        assert_eq!(found, None);
        assert_eq!(applied.len(), 9);
        for bad in 0..20 {
            let (mut applied, mut sends) = (Vec::new(), 0);
            let found = send_narrowing(20, false, |r| peer_refusing_longer_than(3, Some(bad), &mut applied, &mut sends, r)).unwrap();
            assert_eq!(found.map(|f| f.0), Some(bad), "a refused one behind runs too large is still found");
            assert_eq!(applied, (0..bad).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_known_culprit_goes_alone_first_and_a_lost_link_stops_the_search() {
        let (mut applied, mut sends) = (Vec::new(), 0);
        let found = send_narrowing(1000, true, |r| peer_refusing(Some(0), &mut applied, &mut sends, r)).unwrap();
        assert_eq!((found.map(|f| f.0), sends), (Some(0), 1), "still refused: one round trip");
        let (mut applied, mut sends) = (Vec::new(), 0);
        assert_eq!(send_narrowing(1000, true, |r| peer_refusing(None, &mut applied, &mut sends, r)).unwrap(), None);
        assert_eq!((applied.len(), sends), (1000, 2), "accepted now: it, then the rest");
        let mut calls = 0;
        let lost = send_narrowing(8, false, |_| {
            calls += 1;
            if calls == 1 { Ok(Answer::Refused("no")) } else { Err("link down") }
        });
        assert_eq!((lost, calls), (Err("link down"), 2));
    }

    /// Three transactions over two tables; the second table is described
    /// only in the first transaction.
    fn three_transactions() -> Batch {
        let mut reader = Reader::default();
        let mut msgs = txn(Some(relation_msg(1, "t", &[("id", 20, true)])), 1, 100);
        msgs.splice(1..1, [relation_msg(2, "u", &[("k", 25, true), ("v", 25, false)]), insert_msg(2, &[Some("a"), Some("x")])]);
        msgs.extend(txn(None, 2, 200));
        msgs.extend([begin_msg(290, 3), insert_msg(2, &[Some("b"), None]), commit_msg(300, 3)]);
        let txns = reader.read(msgs).unwrap();
        let mut batches = pack("edge1", txns, Limits { max_rows: 100, max_bytes: 1 << 20 });
        assert_eq!(batches.len(), 1);
        batches.pop().unwrap()
    }

    #[test]
    fn a_part_of_a_batch_decodes_alone_and_names_its_tables() {
        let b = three_transactions();
        let last = part_of(&b, 2..3);
        assert_eq!(last.transactions.len(), 1);
        assert_eq!(last.transactions[0].end_lsn, 300);
        assert_eq!(tables_of(&last), vec!["public.u".to_string()], "only the tables its changes touch");
        let json = changes_json(last.transactions[0].messages.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(json, json!([{"table": "public.u", "operation": "insert", "key": {"k": "b"}, "row": {"k": "b", "v": null}}]));
        let middle = part_of(&b, 1..2);
        assert_eq!(tables_of(&middle), vec!["public.t".to_string()]);
        assert_eq!(changes_json(middle.transactions[0].messages.iter().map(Vec::as_slice)).unwrap().as_array().unwrap().len(), 2);
        assert_eq!(tables_of(&part_of(&b, 0..3)), vec!["public.u".to_string(), "public.t".to_string()]);
        assert_eq!(part_of(&b, 0..3), b, "the whole batch is itself");
    }

    #[test]
    fn every_kind_of_change_reads_as_json() {
        let rel = relation_msg(9, "inv", &[("sku", 25, true), ("qty", 23, false)]);
        let upd = wire(&Wire::Update { relation_id: 9, old_tuple: Some(tuple(&[Some("A"), None])), new_tuple: tuple(&[Some("B"), Some("3")]), key_type: Some('K') });
        let del = wire(&Wire::Delete { relation_id: 9, old_tuple: tuple(&[Some("C"), None]), key_type: 'K' });
        let trunc = wire(&Wire::Truncate { relation_ids: vec![9], flags: 0 });
        let msgs = [rel, upd, del, trunc];
        let json = changes_json(msgs.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(json[0]["operation"], "update");
        assert_eq!(json[0]["key"], json!({"sku": "A"}), "an update that moved its key is found by the old one");
        assert_eq!(json[0]["row"], json!({"sku": "B", "qty": "3"}));
        assert_eq!(json[1], json!({"table": "public.inv", "operation": "delete", "key": {"sku": "C"}, "row": {"sku": "C", "qty": null}}));
        assert_eq!(json[2], json!({"table": "public.inv", "operation": "truncate"}));
        assert!(changes_json([insert_msg(5, &[Some("1")]).as_slice()]).is_err(), "a change with no description");
    }
}
