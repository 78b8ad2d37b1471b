//! The pull half of a round: bring down what the cloud's feed holds for
//! this node (`sync::feed` serves it) and apply it here.
//!
//! This node's position in the feed is the progress of the replication
//! origin named for the peer (`edgesync_<peer>`), which the apply of each
//! pulled batch moves in the same transaction as its rows: a crash before
//! the commit pulls the batch again, one after it pulls what follows. So
//! the cloud keeps nothing per edge. A node that never pulled starts at the
//! feed's start (`edgesync.feed_start`): what was committed before is its
//! initial copy, not the feed's. Pulled rows are applied under that
//! origin, so they are never pushed back.


use super::{Forwarder, PeerConfig};
use crate::guc;
use crate::model::sync::batch::{self, Decoded};
use crate::model::sync::feed::decode_hex_bytea;
use crate::model::sync::lsn::{format_lsn, parse_lsn};
use crate::sync::apply::{self, Direction};
use crate::sync::launcher::in_transaction;
use crate::sync::status::{self, Activity};
use crate::model::node::OBJECT_PREFIX;
use crate::model::sync::forwarder::Mode;
use crate::sync::feed::{FEED_CHANNEL, RESYNC_NEEDED};
use crate::sync::transport::{Connection, Param};

/// What the cloud answered one pull with.
struct Answer {
    /// The batch, as its hex text (None: nothing new).
    batch: Option<String>,
    feed_head: u64,
    /// Feed transactions after the position pulled from.
    waiting: i64,
}

impl Forwarder {
    /// Pull and apply until the feed holds nothing more for this node.
    /// Returns the rows applied.
    pub(super) fn pull(&mut self, peer: &PeerConfig, node: &str) -> Result<i64, String> {
        let conn = self.pull_connection(peer, node)?;
        if matches!(peer.mode, Mode::Realtime) && !conn.is_listening() {
            // told when the feed has news instead of asking every second
            conn.listen(FEED_CHANNEL, Self::timeout());
        }
        status::update(self.index, |s| s.activity = Activity::Pulling as u8);
        let mut position = self.pull_position(peer, node)?;
        let mut received = 0i64;
        loop {
            let mut answer = self.ask(peer, node, position).inspect_err(|e| self.note_resync(e))?;
            let Some(hex) = answer.batch.take() else {
                self.record_pull(position, &answer, 0);
                return Ok(received);
            };
            let encoded = decode_hex_bytea(&hex)?;
            let decoded = decode_pulled(&encoded, &peer.name)?;
            self.learn_names_for(&decoded, node);
            self.hold_at("pull_before_apply");
            let (reached, rows, transactions) = apply_pulled(&decoded)?;
            self.hold_at("pull_after_apply");
            received += rows;
            status::update(self.index, |s| {
                s.rows_received += rows;
                s.transactions_received += transactions;
                s.bytes_received_compressed += encoded.len() as i64;
            });
            self.record_pull(reached, &answer, transactions);
            if reached <= position {
                return Err(format!("the peer's feed did not move this node past {}", format_lsn(position)));
            }
            position = reached;
            if position >= answer.feed_head {
                return Ok(received);
            }
        }
    }

    /// Whether the pull connection listens for the feed's news, and whether
    /// news came: read from what its socket holds, without waiting. A
    /// broken link is dropped here; the next round finds out why.
    pub(super) fn feed_news(&mut self, peer: &PeerConfig) -> (bool, bool) {
        let conn = match (&peer.pull_conninfo, &mut self.pull_conn, &mut self.conn) {
            (Some(_), Some((conn, _)), _) | (None, _, Some(conn)) => conn,
            _ => return (false, false),
        };
        if !conn.is_listening() {
            return (false, false);
        }
        match conn.notified() {
            Ok(news) => (true, news),
            Err(_) => {
                self.disconnect();
                (false, true)
            }
        }
    }

    /// The connection pulls go through: the push connection, or one to the
    /// peer's pull conninfo (a hot standby serves the feed as well, and
    /// takes no hello: it records nothing).
    fn pull_connection(&mut self, peer: &PeerConfig, node: &str) -> Result<&mut Connection, String> {
        let Some(pull_conninfo) = &peer.pull_conninfo else {
            if self.conn.is_none() {
                self.connect(peer, node)?;
            }
            return self.conn.as_mut().ok_or_else(|| "the connection to the peer was closed".to_string());
        };
        if self.pull_conn.as_ref().is_some_and(|(_, opened_with)| opened_with != pull_conninfo) {
            self.pull_conn = None;
        }
        if self.pull_conn.is_none() {
            let conn = Connection::open(pull_conninfo, &format!("{OBJECT_PREFIX}{node}"), Self::timeout())?;
            self.pull_conn = Some((conn, pull_conninfo.clone()));
        }
        self.pull_conn.as_mut().map(|(conn, _)| conn).ok_or_else(|| "the pull connection was closed".to_string())
    }

    /// Where this node stands in the peer's feed; on its first pull, the
    /// feed's start, recorded as the origin's progress.
    fn pull_position(&mut self, peer: &PeerConfig, node: &str) -> Result<u64, String> {
        let known = in_transaction(|| Ok(apply::progress_of(&peer.name)))?;
        if known > 0 {
            return Ok(known);
        }
        let conn = self.pull_connection(peer, node)?;
        let rows = conn.query("SELECT edgesync.feed_start()::text", &[], Self::timeout())?;
        let start = rows.first().and_then(|r| r.first().cloned().flatten()).as_deref().and_then(parse_lsn);
        let start = start.ok_or_else(|| format!("the peer answered feed_start for {node:?} without a position"))?;
        in_transaction(|| Ok(apply::start_progress(&peer.name, start)))?;
        Ok(start)
    }

    /// One `pull_batch` call.
    fn ask(&mut self, peer: &PeerConfig, node: &str, after: u64) -> Result<Answer, String> {
        let conn = self.pull_connection(peer, node)?;
        let (after, max_rows, max_bytes) = (format_lsn(after), peer.limits.max_rows.to_string(), peer.limits.max_bytes.to_string());
        let rows = conn.query(
            "SELECT batch, feed_head::text, waiting::text FROM edgesync.pull_batch($1, $2::pg_lsn, $3::int, $4::bigint)",
            &[Param::Text(node), Param::Text(&after), Param::Text(&max_rows), Param::Text(&max_bytes)],
            Self::timeout(),
        )?;
        let row = rows.first().ok_or("the peer answered pull_batch with no row")?;
        let field = |i: usize| row.get(i).cloned().flatten();
        Ok(Answer {
            batch: field(0),
            feed_head: field(1).as_deref().and_then(parse_lsn).unwrap_or(0),
            waiting: field(2).and_then(|w| w.parse().ok()).unwrap_or(0),
        })
    }

    /// Show whether the peer refused the pull for a position its feed no
    /// longer holds (its own words: `feed::serve_pull`), until a pull succeeds.
    fn note_resync(&self, error: &str) {
        let refused = error.contains(RESYNC_NEEDED);
        status::update(self.index, |s| s.resync_needed = refused);
    }

    /// Show where the pull stands.
    fn record_pull(&self, position: u64, answer: &Answer, transactions: i64) {
        let waiting = (answer.waiting - transactions).max(0);
        status::update(self.index, |s| {
            s.resync_needed = false;
            s.last_pull = status::now();
            s.pull_position = position;
            s.feed_head = answer.feed_head;
            s.pull_waiting = waiting;
        });
    }
}

/// Check a pulled batch whole, and that it comes from the peer.
fn decode_pulled<'b>(encoded: &'b [u8], peer: &str) -> Result<Decoded<'b>, String> {
    let decoded = batch::decode(encoded, guc::max_batch_size()).map_err(|e| format!("the peer sent a batch that does not decode: {e}"))?;
    if decoded.sender() != peer {
        return Err(format!(
            "the peer calls itself {:?} but is named {peer:?} here: name the peer after its node (edgesync.drop_peer, edgesync.add_peer)",
            decoded.sender()
        ));
    }
    Ok(decoded)
}

/// Apply a pulled batch in a transaction of its own, under the peer's
/// origin. Returns the feed position reached, the rows and transactions.
fn apply_pulled(decoded: &Decoded<'_>) -> Result<(u64, i64, i64), String> {
    // a pull's last transaction may be an empty one that only moves this node past its own
    let transactions = decoded.transactions().filter(|t| t.message_count() > 0).count() as i64;
    let rows: i64 = decoded.transactions().map(|t| t.messages().filter(|m| m.first() != Some(&b'R')).count() as i64).sum();
    let reached = in_transaction(|| Ok(apply::apply(decoded, Direction::Down)))?;
    Ok((reached, rows, transactions))
}
