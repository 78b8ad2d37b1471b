//! Learning node names from the peer (the cloud), so that this node's
//! conflicts and versions name every node (`sql/directory.sql`). The peer
//! hands out its directory with `hello`, at each connection, and this node
//! merges it. A pulled batch from a node this node has no name for yet (an
//! edge that first reached the cloud after this node connected) makes it
//! ask again before applying, so the conflicts that batch meets name it.

use std::collections::BTreeSet;

use pgrx::prelude::*;

use super::Forwarder;
use crate::model::directory::source_of_transaction;
use crate::model::sync::batch::Decoded;
use crate::sync::launcher::in_transaction;
use crate::sync::transport::{Connection, Param};

/// hello's answer: confirmed_lsn, clock_ms, batch_format, directory.
pub(super) type HelloRow = Vec<Option<String>>;

/// This node's id, as it says hello with it.
pub(super) fn own_node_id() -> Result<i32, String> {
    in_transaction(|| Ok(crate::conflict::clock::node_id()))
}

/// Say hello to the peer as node `node`: which database this is and its
/// node id (which the peer enters in its directory). Returns the one row.
pub(super) fn say_hello(conn: &mut Connection, node: &str, node_id: i32) -> Result<HelloRow, String> {
    // which database this is: the peer refuses another one under our name
    // SAFETY: reads the system identifier from this cluster's control
    // data, set at startup.
    let system_identifier = (unsafe { pg_sys::GetSystemIdentifier() } as i64).to_string();
    let node_id = node_id.to_string();
    let rows = conn.query(
        "SELECT confirmed_lsn::text, clock_ms, batch_format, directory::text FROM edgesync.hello($1, $2::bigint, $3::integer)",
        &[Param::Text(node), Param::Text(&system_identifier), Param::Text(&node_id)],
        Forwarder::timeout(),
    )?;
    rows.into_iter().next().ok_or_else(|| "the peer did not answer hello".to_string())
}

/// Merge the directory hello brought (jsonb as text) into this node's, in
/// a transaction of its own. Names are for readers: a directory that does
/// not merge is logged, and sync goes on.
pub(super) fn merge_directory(directory: Option<&str>) {
    let Some(directory) = directory else { return };
    let merged = in_transaction(|| {
        Spi::get_one_with_args::<i32>("SELECT edgesync._learn_nodes($1::jsonb)", &[directory.into()]).map_err(|e| e.to_string())
    });
    match merged {
        Ok(Some(changed)) if changed > 0 => debug1!("edgesync: learned {changed} node names from the peer"),
        Ok(_) => {}
        Err(e) => warning!("edgesync: could not merge the peer's node directory: {e}"),
    }
}

/// The nodes among `sources` this node's directory has no name for.
fn unnamed(sources: Vec<String>) -> Result<Vec<String>, String> {
    in_transaction(|| {
        Spi::get_one_with_args::<Vec<String>>(
            "SELECT coalesce(array_agg(s ORDER BY s), '{}') FROM pg_catalog.unnest($1::text[]) AS s
              WHERE NOT EXISTS (SELECT FROM edgesync.node_directory d WHERE d.name = s)",
            &[sources.into()],
        )
        .map(Option::unwrap_or_default)
        .map_err(|e| e.to_string())
    })
}

impl Forwarder {
    /// Before a pulled batch is applied: when one of its transactions comes
    /// from a node this node cannot name, ask the peer's directory again
    /// through the push connection. Each node is looked at once per
    /// connection (hello brings the whole directory anew at the next).
    pub(super) fn learn_names_for(&mut self, batch: &Decoded<'_>, node: &str) {
        let sources: BTreeSet<String> =
            batch.transactions().filter_map(|t| source_of_transaction(t.origin, batch.sender())).collect();
        let new: Vec<String> = sources.into_iter().filter(|s| !self.sources_checked.contains(s)).collect();
        if new.is_empty() {
            return;
        }
        self.sources_checked.extend(new.iter().cloned());
        let unknown = match unnamed(new) {
            Ok(unknown) => unknown,
            Err(e) => {
                warning!("edgesync: could not look up node names: {e}");
                return;
            }
        };
        if unknown.is_empty() {
            return;
        }
        let asked = own_node_id().and_then(|id| match self.conn.as_mut() {
            Some(conn) => say_hello(conn, node, id),
            None => Err("no connection to the peer".to_string()),
        });
        match asked {
            Ok(row) => merge_directory(row.get(3).cloned().flatten().as_deref()),
            Err(e) => warning!("edgesync: could not ask the peer for node names: {e}"),
        }
    }
}
