//! Applying a batch on the receiving node: `edgesync.apply_batch`.
//!
//! Whole source transactions, in order, inside a replication-origin session
//! named for the sender (`edgesync_<sender>`). PostgreSQL tags the rows with
//! that origin (so they are never sent back to where they came from) and,
//! when the caller's transaction commits, records how far into the sender's
//! WAL it has applied. A transaction at or below that mark was applied
//! before and is skipped: a batch sent twice is applied once. Several source
//! transactions share the caller's transaction; row versions travel inside
//! the rows, so that changes no outcome of the conflict engine.
//!
//! Each table is written as its owner (as PostgreSQL's own apply does since
//! 16), with `search_path` pinned; only tables enrolled for the direction a
//! batch travels in may be changed, or the whole batch is refused.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::CString;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgOid;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

use crate::conflict::{log_conflict, plan_for, ConflictRecord, TableFlag};
use crate::model::sync::batch::{self, Batch};
use crate::model::conflict::lww::{ConflictType, Resolution};
use crate::model::sync::pgoutput::{self, Message, Relation, Value};
use crate::model::sql_text::quote_ident;
use crate::error::raise;
use crate::privilege::{as_extension_owner, as_role};

/// The largest decompressed batch a node accepts (a bytea holds at most 1 GB).
const MAX_BATCH_RAW: usize = 1 << 30;

/// Which way a batch travels, which says which enrolled tables it may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Pushed up by an edge: tables enrolled `up` or `both` here.
    Up,
}

impl Direction {
    fn accepts(self, enrolled: &str) -> bool {
        matches!((self, enrolled), (_, "both") | (Direction::Up, "up"))
    }
}

/// Apply a batch pushed by a peer; returns the sender LSN now applied
/// (through `edgesync.apply_batch`, which grants and types it).
#[pg_extern(volatile, parallel_unsafe)]
fn _apply_batch(batch: &[u8]) -> i64 {
    let decoded = batch::decode(batch, MAX_BATCH_RAW)
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, format!("edgesync: refused batch: {e}")));
    apply(decoded, Direction::Up) as i64
}

/// The current format of batches this node reads and writes.
#[pg_extern(immutable, parallel_safe)]
fn _batch_format() -> i32 {
    batch::FORMAT as i32
}

/// Apply `b` in the caller's transaction; returns the highest sender LSN
/// applied so far (this batch's last transaction, or the earlier mark).
pub fn apply(b: Batch, direction: Direction) -> u64 {
    if !crate::model::node::is_node_name(&b.sender) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("edgesync: refused batch: sender {:?} is not a node name", b.sender),
        );
    }
    for pair in b.transactions.windows(2) {
        if pair[1].end_lsn <= pair[0].end_lsn {
            raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, "edgesync: refused batch: transactions out of order".to_string());
        }
    }
    begin_origin_session(&b.sender);
    let done = unsafe { pg_sys::replorigin_session_get_progress(false) };
    // the answer is only given once it is durable: this commit waits for its flush
    unsafe {
        pg_sys::set_config_option(
            c"synchronous_commit".as_ptr(),
            c"on".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            pgrx::PgLogLevel::ERROR as i32,
            false,
        );
    }

    let mut definitions: HashMap<u32, Relation> = HashMap::new();
    let mut targets: HashMap<u32, Target> = HashMap::new();
    let mut run: Vec<Message> = Vec::new();
    let mut run_rel = 0u32;
    let mut last: Option<(u64, i64)> = None;
    for t in b.transactions {
        // relation messages count even in a transaction applied before: later ones need them
        let skip = t.end_lsn <= done;
        for raw in &t.messages {
            let msg = pgoutput::parse(raw)
                .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, format!("edgesync: refused batch: {e}")));
            match msg {
                Message::Relation(r) => {
                    if !run.is_empty() && run_rel == r.id {
                        flush(&mut run, &targets[&run_rel]);
                    }
                    targets.remove(&r.id);
                    definitions.insert(r.id, r);
                }
                change @ (Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. }) if !skip => {
                    let rel = change.relation().expect("row changes name their relation");
                    if !targets.contains_key(&rel) {
                        let def = definitions.get(&rel).unwrap_or_else(|| {
                            raise(
                                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                                format!("edgesync: refused batch: a change to relation {rel} comes before its description"),
                            )
                        });
                        targets.insert(rel, Target::resolve(&b.sender, def, direction));
                    }
                    let width = targets[&rel].columns.len();
                    let rows_fit = match &change {
                        Message::Insert { new, .. } => new.len() == width,
                        Message::Update { old, new, .. } => new.len() == width && old.as_ref().is_none_or(|o| o.len() == width),
                        Message::Delete { old, .. } => old.len() == width,
                        _ => true,
                    };
                    if !rows_fit {
                        raise(
                            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                            format!("edgesync: refused batch: a row of relation {rel} does not have the {width} columns its description says"),
                        );
                    }
                    if !run.is_empty() && run_rel != rel {
                        flush(&mut run, &targets[&run_rel]);
                    }
                    run_rel = rel;
                    run.push(change);
                }
                Message::Truncate { .. } if !skip => raise(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "edgesync: refused batch: it carries a TRUNCATE, which edgesync does not forward".to_string(),
                ),
                _ => {}
            }
        }
        if !skip {
            last = Some((t.end_lsn, t.commit_time));
        }
    }
    if !run.is_empty() {
        flush(&mut run, &targets[&run_rel]);
    }
    match last {
        Some((lsn, time)) => {
            // recorded as the origin's progress when the caller's transaction commits
            unsafe {
                pg_sys::replorigin_session_origin_lsn = lsn;
                pg_sys::replorigin_session_origin_timestamp = time;
            }
            lsn.max(done)
        }
        None => done,
    }
}

thread_local! {
    /// The origin this backend's current transaction applies as (0: none).
    static SESSION_ORIGIN: Cell<u16> = const { Cell::new(0) };
}

/// Set up the sender's origin session for the rest of this transaction.
/// It must last until COMMIT (which records the progress), so it is torn
/// down by a commit/abort callback, not on return.
fn begin_origin_session(sender: &str) {
    let name = CString::new(crate::model::node::origin_name(sender)).expect("node names have no NUL");
    let id = as_extension_owner(|| unsafe {
        match pg_sys::replorigin_by_name(name.as_ptr(), true) {
            0 => pg_sys::replorigin_create(name.as_ptr()),
            id => id,
        }
    });
    if unsafe { pg_sys::GetCurrentTransactionNestLevel() } > 1 {
        // the origin's progress would outlive a rolled-back savepoint
        raise(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            "edgesync: apply_batch cannot run inside a savepoint or an exception block".to_string(),
        );
    }
    let active = SESSION_ORIGIN.with(|s| s.get());
    if active == id {
        // progress is read as committed: a second batch here could apply twice
        raise(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            "edgesync: one batch per transaction: commit before applying the next".to_string(),
        );
    }
    if active != 0 || unsafe { pg_sys::replorigin_session_origin } != 0 {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            "edgesync: this transaction already applies changes of another origin".to_string(),
        );
    }
    unsafe {
        crate::compat::replorigin_session_setup(id);
        pg_sys::replorigin_session_origin = id;
    }
    SESSION_ORIGIN.with(|s| s.set(id));
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, end_origin_session);
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, end_origin_session);
}

fn end_origin_session() {
    if SESSION_ORIGIN.with(|s| s.replace(0)) != 0 {
        unsafe {
            pg_sys::replorigin_session_reset();
            pg_sys::replorigin_session_origin = 0;
            pg_sys::replorigin_session_origin_lsn = 0;
            pg_sys::replorigin_session_origin_timestamp = 0;
        }
    }
}

/// A sender's relation matched to a local table.
struct Target {
    relid: pg_sys::Oid,
    owner: pg_sys::Oid,
    schema: String,
    name: String,
    qualified: String,
    has_policy: bool,
    /// Per sender column: the local column and its type (None: not written here).
    columns: Vec<Option<(String, String)>>,
    /// The sender columns that hold the local primary key.
    key: Vec<usize>,
    /// The sender columns written here, in order.
    written: Vec<usize>,
    /// Statements for this table, composed once per batch.
    insert_sql: String,
    bulk_insert_sql: String,
    delete_sql: String,
}

impl Target {
    fn resolve(sender: &str, def: &Relation, direction: Direction) -> Target {
        let what = format!("{}.{}", def.namespace, def.name);
        as_extension_owner(|| {
            Spi::connect(|client| {
                let found = client.select(
                    "SELECT c.oid, c.relowner, format('%I.%I', n.nspname, c.relname), s.direction, ct.relid IS NOT NULL
                       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                       LEFT JOIN edgesync.sync_table s ON s.relid = c.oid
                       LEFT JOIN edgesync.conflict_table ct ON ct.relid = c.oid
                      WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'r'",
                    None,
                    &[def.namespace.as_str().into(), def.name.as_str().into()],
                )?;
                if found.is_empty() {
                    raise(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                        format!("edgesync: refused batch from {sender}: table {what} does not exist here"),
                    );
                }
                let row = found.first();
                let relid = row.get::<pg_sys::Oid>(1)?.expect("oid");
                let owner = row.get::<pg_sys::Oid>(2)?.expect("owner");
                let qualified = row.get::<String>(3)?.expect("name");
                let enrolled = row.get::<String>(4)?;
                let has_policy = row.get::<bool>(5)?.unwrap_or(false);
                if !enrolled.as_deref().is_some_and(|e| direction.accepts(e)) {
                    let wanted = match direction {
                        Direction::Up => "up or both",
                    };
                    ereport!(
                        PgLogLevel::ERROR,
                        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                        format!("edgesync: refused batch from {sender}: table {what} is not enrolled here to receive these changes"),
                        format!("Enrol it on this node with edgesync.add_table('{qualified}', sync => ...) as {wanted}.")
                    );
                }
                let mut local: HashMap<String, (String, bool)> = HashMap::new();
                for c in client.select(
                    "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod), attgenerated <> ''
                       FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                    None,
                    &[relid.into()],
                )? {
                    let name = c.get::<String>(1)?.expect("attname");
                    local.insert(name, (c.get::<String>(2)?.expect("type"), c.get::<bool>(3)?.unwrap_or(false)));
                }
                let mut pk = Vec::new();
                for k in client.select(
                    "SELECT a.attname::text FROM pg_catalog.pg_index i
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
                      WHERE i.indrelid = $1 AND i.indisprimary",
                    None,
                    &[relid.into()],
                )? {
                    pk.push(k.get::<String>(1)?.expect("attname"));
                }
                let mut columns = Vec::with_capacity(def.columns.len());
                for c in &def.columns {
                    match local.get(&c.name) {
                        Some((_, true)) => columns.push(None),
                        Some((ty, false)) => columns.push(Some((c.name.clone(), ty.clone()))),
                        None => raise(
                            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                            format!("edgesync: refused batch from {sender}: column {:?} of {what} does not exist here", c.name),
                        ),
                    }
                }
                if pk.is_empty() {
                    raise(
                        PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION,
                        format!("edgesync: table {qualified} has no primary key here"),
                    );
                }
                let key: Vec<usize> = pk
                    .iter()
                    .map(|k| {
                        def.columns.iter().position(|c| &c.name == k).unwrap_or_else(|| {
                            raise(
                                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                                format!("edgesync: refused batch from {sender}: the key column {k:?} of {what} is not sent"),
                            )
                        })
                    })
                    .collect();
                if key.iter().any(|&k| columns[k].is_none()) {
                    raise(
                        PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION,
                        format!("edgesync: refused batch from {sender}: a key column of {what} is generated here"),
                    );
                }
                let written = (0..columns.len()).filter(|&i| columns[i].is_some()).collect();
                let mut t = Target {
                    relid,
                    owner,
                    schema: def.namespace.clone(),
                    name: def.name.clone(),
                    qualified,
                    has_policy,
                    columns,
                    key,
                    written,
                    insert_sql: String::new(),
                    bulk_insert_sql: String::new(),
                    delete_sql: String::new(),
                };
                t.insert_sql = t.compose_insert();
                t.bulk_insert_sql = t.compose_bulk_insert();
                t.delete_sql = t.compose_delete();
                Ok::<_, pgrx::spi::Error>(t)
            })
            .unwrap_or_else(|e| error!("edgesync: reading table {what}: {e}"))
        })
    }

    fn compose_insert(&self) -> String {
        let cols: Vec<_> = self.columns.iter().flatten().collect();
        let names = cols.iter().map(|(n, _)| quote_ident(n)).collect::<Vec<_>>().join(", ");
        let values = cols.iter().enumerate().map(|(i, (_, t))| format!("${}::{t}", i + 1)).collect::<Vec<_>>().join(", ");
        format!("INSERT INTO {} ({names}) OVERRIDING SYSTEM VALUE VALUES ({values})", self.qualified)
    }

    fn compose_bulk_insert(&self) -> String {
        let cols: Vec<_> = self.columns.iter().flatten().collect();
        let names = cols.iter().map(|(n, _)| quote_ident(n)).collect::<Vec<_>>().join(", ");
        let aliases = (1..=cols.len()).map(|i| format!("c{i}")).collect::<Vec<_>>().join(", ");
        let casts = cols.iter().enumerate().map(|(i, (_, t))| format!("c{}::{t}", i + 1)).collect::<Vec<_>>().join(", ");
        let arrays = (1..=cols.len()).map(|i| format!("pg_catalog.unnest(${i}::pg_catalog.text[])")).collect::<Vec<_>>().join(", ");
        format!(
            "INSERT INTO {} ({names}) OVERRIDING SYSTEM VALUE SELECT {casts} FROM ROWS FROM ({arrays}) WITH ORDINALITY AS u({aliases}, n) ORDER BY n",
            self.qualified
        )
    }

    fn key_condition(&self, first_param: usize) -> String {
        self.key
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let (n, t) = self.columns[k].as_ref().expect("key columns are plain columns");
                format!("{} = ${}::{t}", quote_ident(n), first_param + i)
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// `UPDATE ... SET` the columns `set` (sender indexes) `WHERE` key.
    fn update_sql(&self, set: &[usize]) -> String {
        let assignments = set
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let (n, t) = self.columns[c].as_ref().expect("only written columns are set");
                format!("{} = ${}::{t}", quote_ident(n), i + 1)
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!("UPDATE {} SET {assignments} WHERE {}", self.qualified, self.key_condition(set.len() + 1))
    }

    fn compose_delete(&self) -> String {
        format!("DELETE FROM {} WHERE {}", self.qualified, self.key_condition(1))
    }

    fn key_json(&self, row: &[Value]) -> JsonB {
        let mut m = serde_json::Map::new();
        for &k in &self.key {
            let name = self.columns[k].as_ref().map(|(n, _)| n.clone()).unwrap_or_default();
            m.insert(name, text_json(&row[k]));
        }
        JsonB(serde_json::Value::Object(m))
    }

    fn row_json(&self, row: &[Value]) -> JsonB {
        let mut m = serde_json::Map::new();
        for (c, v) in self.columns.iter().zip(row) {
            if let (Some((n, _)), false) = (c, *v == Value::Unchanged) {
                m.insert(n.clone(), text_json(v));
            }
        }
        JsonB(serde_json::Value::Object(m))
    }
}

fn text_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Text(s) => serde_json::Value::String(s.clone()),
        _ => serde_json::Value::Null,
    }
}

fn text_arg(v: &Value) -> DatumWithOid<'_> {
    match v {
        Value::Text(s) => s.as_str().into(),
        _ => Option::<&str>::None.into(),
    }
}

fn text_types(n: usize) -> Vec<PgOid> {
    vec![PgOid::from(pg_sys::TEXTOID); n]
}

/// Apply a run of changes to one table, as its owner.
/// Consecutive plain inserts go in one statement of at most this many rows.
const BULK_INSERT_ROWS: usize = 1000;

fn is_plain_insert(change: &Message) -> bool {
    matches!(change, Message::Insert { new, .. } if !new.contains(&Value::Unchanged))
}

fn flush(run: &mut Vec<Message>, target: &Target) {
    let changes = std::mem::take(run);
    as_role(target.owner, || {
        Spi::connect_mut(|client| {
            let mut rest = &changes[..];
            while !rest.is_empty() {
                let inserts = rest.iter().take(BULK_INSERT_ROWS).take_while(|c| is_plain_insert(c)).count();
                if inserts > 1 {
                    bulk_insert(client, target, &rest[..inserts])?;
                    rest = &rest[inserts..];
                } else {
                    apply_change(client, target, &rest[0])?;
                    rest = &rest[1..];
                }
            }
            Ok::<_, pgrx::spi::Error>(())
        })
        .unwrap_or_else(|e| error!("edgesync: applying to {}: {e}", target.qualified))
    });
}

/// Insert rows in order with one statement: one text array per column,
/// unnested and cast. Row triggers fire per row, in order, as they would
/// for single inserts.
fn bulk_insert(client: &mut pgrx::spi::SpiClient<'_>, t: &Target, inserts: &[Message]) -> pgrx::spi::Result<()> {
    let written = &t.written;
    let mut columns: Vec<Vec<Option<&str>>> = vec![Vec::with_capacity(inserts.len()); written.len()];
    for change in inserts {
        let Message::Insert { new, .. } = change else { unreachable!("only inserts are bulked") };
        for (slot, &i) in columns.iter_mut().zip(written) {
            slot.push(match &new[i] {
                Value::Text(s) => Some(s.as_str()),
                _ => None,
            });
        }
    }
    let plan = plan_for(client, &t.bulk_insert_sql, &vec![PgOid::from(pg_sys::TEXTARRAYOID); written.len()], true)?;
    let args: Vec<DatumWithOid<'_>> = columns.into_iter().map(|c| c.into()).collect();
    client.update(&*plan, None, &args)?;
    Ok(())
}

fn apply_change(client: &mut pgrx::spi::SpiClient<'_>, t: &Target, change: &Message) -> pgrx::spi::Result<()> {
    match change {
        Message::Insert { new, .. } => insert(client, t, new),
        Message::Update { old, new, .. } => {
            let set: Vec<usize> = (0..new.len()).filter(|&i| t.columns[i].is_some() && new[i] != Value::Unchanged).collect();
            let key_row = old.as_deref().unwrap_or(new);
            let sql = t.update_sql(&set);
            let plan = plan_for(client, &sql, &text_types(set.len() + t.key.len()), true)?;
            let args: Vec<DatumWithOid<'_>> =
                set.iter().map(|&i| text_arg(&new[i])).chain(t.key.iter().map(|&k| text_arg(&key_row[k]))).collect();
            if client.update(&*plan, None, &args)?.len() > 0 {
                return Ok(());
            }
            update_of_missing_row(client, t, new)
        }
        Message::Delete { old, .. } => {
            let plan = plan_for(client, &t.delete_sql, &text_types(t.key.len()), true)?;
            let args: Vec<DatumWithOid<'_>> = t.key.iter().map(|&k| text_arg(&old[k])).collect();
            if client.update(&*plan, None, &args)?.len() == 0 {
                log(t, ConflictType::DeleteMissing, Resolution::KeepLocal, old, None, None);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn insert(client: &mut pgrx::spi::SpiClient<'_>, t: &Target, new: &[Value]) -> pgrx::spi::Result<()> {
    let plan = plan_for(client, &t.insert_sql, &text_types(t.written.len()), true)?;
    let args: Vec<DatumWithOid<'_>> = t.written.iter().map(|&i| text_arg(&new[i])).collect();
    client.update(&*plan, None, &args)?;
    Ok(())
}

/// The row a remote update names is not here. Under a conflict policy the
/// trigger judges the row as that update (a tombstone newer than it wins:
/// update_deleted); otherwise the remote row is put back and logged.
fn update_of_missing_row(client: &mut pgrx::spi::SpiClient<'_>, t: &Target, new: &[Value]) -> pgrx::spi::Result<()> {
    if new.contains(&Value::Unchanged) {
        let note = "the update left TOASTed columns unchanged; their values are not here, so the row was not recreated";
        log(t, ConflictType::UpdateMissing, Resolution::KeepLocal, new, Some(new), Some(note));
        return Ok(());
    }
    if t.has_policy {
        let _as_update = TableFlag::missing_row_update(t.relid);
        return insert(client, t, new);
    }
    insert(client, t, new)?;
    log(t, ConflictType::UpdateMissing, Resolution::ApplyRemote, new, Some(new), None);
    Ok(())
}

fn log(t: &Target, conflict: ConflictType, resolution: Resolution, key_row: &[Value], remote: Option<&[Value]>, note: Option<&str>) {
    let remote_row = remote.map(|r| t.row_json(r));
    let kept_row = if resolution == Resolution::ApplyRemote { remote.map(|r| t.row_json(r)) } else { None };
    log_conflict(ConflictRecord {
        table_schema: &t.schema,
        table_name: &t.name,
        conflict,
        resolution,
        key: t.key_json(key_row),
        local_row: None,
        remote_row,
        kept_row,
        local_version: None,
        remote_version: None,
        remote_origin: crate::conflict::origin_name(),
        note: note.map(str::to_string),
    })
    .unwrap_or_else(|e| error!("{e}"));
}
