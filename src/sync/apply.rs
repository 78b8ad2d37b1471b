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
//!
//! The shape follows PostgreSQL's `apply_dispatch` (worker.c): the batch is
//! checked as a whole first (sender name, transaction order), then each
//! pgoutput message is parsed and handed to the handler of its kind
//! (`handle_relation`, `handle_change`, `refuse_truncate`), with what they
//! share kept in one [`BatchApply`]: the sender's relation descriptions,
//! the local tables matched to them ([`super::target`]), the run of
//! changes not yet written, and the last transaction applied. Consecutive
//! changes to one table are written together, as that table's owner.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::CString;

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use super::target::Target;
use super::write::{RowWrites, TableWriter};
use super::write_sql::{self, SqlWriter};
use crate::conflict::{log_conflict, missing_row_deleted, ConflictRecord, TableFlag};
use crate::error::raise;
use crate::model::conflict::delete_stamp::{self, DeleteStamp};
use crate::model::conflict::lww::{ConflictType, Resolution};
use crate::model::directory::source_of_transaction;
use crate::model::sync::batch::{self, Decoded, TransactionView};
use crate::model::sync::pgoutput::{self, Change, Field, Message, Relation};
use crate::privilege::{as_extension_owner, as_role};


/// Which way a batch travels, which says which enrolled tables it may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Pushed up by an edge: tables enrolled `up` or `both` here.
    Up,
    /// Pulled down from the cloud's feed: tables enrolled `down` or `both` here.
    Down,
}

impl Direction {
    pub(super) fn accepts(self, enrolled: &str) -> bool {
        matches!((self, enrolled), (_, "both") | (Direction::Up, "up") | (Direction::Down, "down"))
    }
}

/// Apply a batch pushed by a peer; returns the sender LSN now applied
/// (through `edgesync.apply_batch`, which grants and types it).
#[pg_extern(volatile, parallel_unsafe)]
fn _apply_batch(batch: &[u8]) -> i64 {
    let decoded = batch::decode(batch, crate::guc::max_batch_size())
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, format!("edgesync: refused batch: {e}")));
    let confirmed = apply(&decoded, Direction::Up);
    super::edge_activity::record(decoded.sender(), crate::model::sync::edge_activity::Event::Push { position: confirmed });
    confirmed as i64
}

/// The current format of batches this node reads and writes.
#[pg_extern(immutable, parallel_safe)]
fn _batch_format() -> i32 {
    batch::FORMAT as i32
}

/// Apply `b` in the caller's transaction; returns the highest sender LSN
/// applied so far (this batch's last transaction, or the earlier mark).
pub fn apply(b: &Decoded<'_>, direction: Direction) -> u64 {
    check_batch(b);
    if direction == Direction::Up {
        super::edges::require_edge_login(b.sender());
    }
    if b.transaction_count() == 0 {
        // nothing to apply: no origin is created for it (origins are a
        // cluster-wide, limited resource), the sender only learns where it stands
        return committed_progress(b.sender());
    }
    begin_origin_session(b.sender());
    let done = applied_mark();
    require_durable_commit();
    apply_as_replica();
    // values arrive as text printed under these settings: read them the same way
    crate::guc::pin_value_text(crate::guc::Scope::Transaction);
    let mut state = BatchApply::new(b.sender(), direction);
    for t in b.transactions() {
        state.apply_transaction(&t, done);
    }
    state.flush_run();
    crate::conflict::done_applying();
    record_progress(state.last_applied, done)
}

/// Refuse a batch whose sender is not a node name, before anything of it is
/// applied (`batch::decode` has checked the transactions' order).
fn check_batch(b: &Decoded<'_>) {
    if !crate::model::node::is_node_name(b.sender()) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("edgesync: refused batch: sender {:?} is not a node name", b.sender()),
        );
    }
}

/// How far into the sender's WAL this node has applied, as committed.
fn applied_mark() -> u64 {
    // SAFETY: begin_origin_session has just set up this backend's origin
    // session, which is what the progress is read from (PostgreSQL takes
    // the session's lock itself); `false`: no local WAL flush is wanted.
    unsafe { pg_sys::replorigin_session_get_progress(false) }
}

/// How far `sender`'s changes were applied here, as committed (0: never),
/// read without setting up (or creating) its origin.
fn committed_progress(sender: &str) -> u64 {
    match find_origin(&origin_name_of(sender)) {
        0 => 0,
        // SAFETY: `id` names an existing origin; we are in a transaction;
        // `false`: no local WAL flush is wanted.
        id => unsafe { pg_sys::replorigin_get_progress(id, false) },
    }
}

/// How far `sender`'s changes were applied here (0: never); for a peer
/// this node pulls from, its position in the peer's feed.
pub fn progress_of(sender: &str) -> u64 {
    committed_progress(sender)
}

/// Record that this node starts receiving `sender`'s changes after `lsn`
/// (its first pull from the peer's feed): creates the origin, sets its progress.
pub fn start_progress(sender: &str, lsn: u64) {
    origin_of(sender);
    let name = crate::model::node::origin_name(sender);
    let set = as_extension_owner(|| {
        Spi::connect(|client| {
            client.select(
                "SELECT pg_catalog.pg_replication_origin_advance($1, $2::pg_lsn)",
                None,
                &[name.as_str().into(), crate::model::sync::lsn::format_lsn(lsn).into()],
            )?;
            Ok::<_, pgrx::spi::Error>(())
        })
    });
    if let Err(e) = set {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: could not set the progress of {name}: {e}"));
    }
}

/// Apply as PostgreSQL's own apply worker does: only `ENABLE REPLICA` and
/// `ENABLE ALWAYS` triggers fire (the conflict trigger is one), so audit or
/// aggregate triggers do not run twice across the fleet, and foreign keys
/// are not checked again (the sender checked them).
fn apply_as_replica() {
    crate::guc::set_for(crate::guc::Scope::Transaction, c"session_replication_role", c"replica");
}

/// The answer is only given once it is durable: this commit waits for its flush.
fn require_durable_commit() {
    crate::guc::set_for(crate::guc::Scope::Transaction, c"synchronous_commit", c"on");
}

thread_local! {
    /// The sender LSN and commit time to record as the origin's progress
    /// when this transaction commits ((0, 0): none).
    static PROGRESS_AT_COMMIT: Cell<(u64, i64)> = const { Cell::new((0, 0)) };
}

/// Record the last transaction applied as the origin's progress when the
/// caller's transaction commits; returns the highest sender LSN applied.
///
/// The session's progress is set only just before COMMIT: PostgreSQL also
/// records it when a transaction with an origin aborts (RecordTransactionAbort),
/// so set any earlier it would mark rows that were rolled back as applied (a
/// client's ROLLBACK after apply_batch, a deferred constraint failing at
/// commit) and the batch would be skipped for good.
fn record_progress(last_applied: Option<(u64, i64)>, done: u64) -> u64 {
    match last_applied {
        Some((lsn, time)) => {
            // a transaction without an id commits without a record, and the
            // origin's progress travels in that record: a batch that wrote
            // nothing (its changes all lost to local rows, or a pull's empty
            // transaction that steps past the puller's own) still moves it
            // SAFETY: in the caller's transaction, outside any parallel mode.
            unsafe { pg_sys::GetCurrentTransactionId() };
            PROGRESS_AT_COMMIT.with(|p| p.set((lsn, time)));
            lsn.max(done)
        }
        None => done,
    }
}

/// At PRE_COMMIT, after the deferred triggers: hand the progress to the origin session.
fn set_progress_for_commit() {
    let (lsn, time) = PROGRESS_AT_COMMIT.with(|p| p.replace((0, 0)));
    if lsn != 0 {
        // SAFETY: backend-local globals of the origin session this backend
        // set up for this transaction; RecordTransactionCommit reads them next.
        unsafe {
            pg_sys::replorigin_session_origin_lsn = lsn;
            pg_sys::replorigin_session_origin_timestamp = time;
        }
    }
}

/// What applying one batch keeps between its messages.
struct BatchApply<'b> {
    sender: &'b str,
    direction: Direction,
    /// The sender's relation descriptions, by the sender's relation id.
    definitions: HashMap<u32, Relation>,
    /// The local tables they were matched to, on their first change.
    targets: HashMap<u32, Target>,
    /// Consecutive changes to one relation, not yet written (read in
    /// place: they borrow the batch's bytes).
    run: Vec<Queued<'b>>,
    /// The relation `run` changes.
    run_relation: u32,
    /// The end LSN and commit time of the last transaction applied.
    last_applied: Option<(u64, i64)>,
    /// The sender's delete stamp just read (its relation, and its content),
    /// for the change right after it if that is a delete of that relation.
    pending_stamp: Option<(u32, Vec<u8>)>,
    /// The node the transaction being applied came from, as the conflict
    /// log names it (None before the first; Some(None): no node it can name).
    source: Option<Option<String>>,
}

impl<'b> BatchApply<'b> {
    fn new(sender: &'b str, direction: Direction) -> Self {
        BatchApply {
            sender,
            direction,
            definitions: HashMap::new(),
            targets: HashMap::new(),
            run: Vec::new(),
            run_relation: 0,
            last_applied: None,
            pending_stamp: None,
            source: None,
        }
    }

    /// Apply one source transaction, unless it was applied before (`done`
    /// is the origin's committed progress).
    fn apply_transaction(&mut self, t: &TransactionView<'b>, done: u64) {
        // relation messages count even in a transaction applied before: later ones need them
        let applied_before = t.end_lsn <= done;
        self.pending_stamp = None;
        self.came_from(source_of_transaction(t.origin, self.sender));
        let refuse = |e: String| -> ! { raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, format!("edgesync: refused batch: {e}")) };
        for raw in t.messages() {
            // rows are read in place, every other message into its own values
            if pgoutput::is_row_change(raw) {
                let change = pgoutput::change(raw).unwrap_or_else(|e| refuse(e));
                if !applied_before {
                    self.handle_change(change);
                }
            } else {
                self.dispatch(pgoutput::parse(raw).unwrap_or_else(|e| refuse(e)), applied_before);
            }
        }
        if !applied_before {
            self.last_applied = Some((t.end_lsn, t.commit_time));
        }
    }

    /// The changes that follow came from `source`: the conflicts they meet
    /// name it. A run written later than its changes were read (runs go
    /// on across transactions) is written first if it came from elsewhere.
    fn came_from(&mut self, source: Option<String>) {
        if self.source.as_ref() == Some(&source) {
            return;
        }
        self.flush_run();
        crate::conflict::applying_from(source.clone());
        self.source = Some(source);
    }

    /// Hand each kind of message but row changes to its handler; begin,
    /// commit, origin and other messages need nothing (the batch carries
    /// transaction bounds).
    fn dispatch(&mut self, msg: Message, applied_before: bool) {
        match msg {
            Message::Relation(r) => self.handle_relation(r),
            Message::Truncate { .. } if !applied_before => refuse_truncate(),
            Message::Logical { prefix, content } if !applied_before && prefix == delete_stamp::PREFIX => {
                self.pending_stamp = Some((read_delete_stamp(&content).0.relation, content));
            }
            _ => {}
        }
    }

    /// A relation description: changes after it follow it, so the run
    /// written under the old one is written first, and the table matched again.
    fn handle_relation(&mut self, r: Relation) {
        check_relation_limits(&r, self.definitions.len(), self.definitions.contains_key(&r.id));
        if !self.run.is_empty() && self.run_relation == r.id {
            self.flush_run();
        }
        self.targets.remove(&r.id);
        self.definitions.insert(r.id, r);
    }

    /// An insert, update or delete: checked against its table, then added to
    /// the run (a change to another table writes the run first).
    fn handle_change(&mut self, change: Change<'b>) {
        let relation = change.relation();
        let width = self.target(relation).columns.len();
        if !row_fits(&change, width) {
            raise(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!("edgesync: refused batch: a row of relation {relation} does not have the {width} columns its description says"),
            );
        }
        if !self.run.is_empty() && self.run_relation != relation {
            self.flush_run();
        }
        self.run_relation = relation;
        // a delete's versions travel just before it, in its run
        match self.pending_stamp.take() {
            Some((stamped, stamp)) if stamped == relation && matches!(change, Change::Delete { .. }) => {
                self.run.push(Queued::DeleteStamp(stamp))
            }
            _ => {}
        }
        self.run.push(Queued::Change(change));
        // parsed rows take more memory than their bytes: write them in
        // bounded runs, not a whole batch's worth at once
        if self.run.len() >= MAX_RUN_ROWS {
            self.flush_run();
        }
    }

    /// The local table of a sender relation, matched on its first change.
    fn target(&mut self, relation: u32) -> &Target {
        let (sender, direction, definitions) = (self.sender, self.direction, &self.definitions);
        self.targets.entry(relation).or_insert_with(|| {
            let def = definitions.get(&relation).unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                    format!("edgesync: refused batch: a change to relation {relation} comes before its description"),
                )
            });
            Target::resolve(sender, def, direction)
        })
    }

    /// Write the run of changes, if any, to its table.
    fn flush_run(&mut self) {
        if !self.run.is_empty() {
            write_run(std::mem::take(&mut self.run), &self.targets[&self.run_relation]);
        }
    }
}

/// Refuse a relation description beyond what a table can be (more columns
/// than PostgreSQL allows), or one more relation than a batch may describe:
/// descriptions are kept for the whole batch, so their number is bounded.
fn check_relation_limits(r: &Relation, described: usize, known: bool) {
    if r.columns.len() > MAX_COLUMNS {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("edgesync: refused batch: relation {} has {} columns, more than a table can have ({MAX_COLUMNS})", r.id, r.columns.len()),
        );
    }
    if !known && described >= MAX_RELATIONS {
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("edgesync: refused batch: it describes more than {MAX_RELATIONS} relations"),
        );
    }
}

/// Does each row of a change have the width of its relation's description?
fn row_fits(change: &Change<'_>, width: usize) -> bool {
    match change {
        Change::Insert { new, .. } => new.len() == width,
        Change::Update { old, new, .. } => new.len() == width && old.as_ref().is_none_or(|o| o.len() == width),
        Change::Delete { old, .. } => old.len() == width,
    }
}

/// What a run holds: a change to write, or the versions the sender sent
/// for the delete after it.
pub(super) enum Queued<'a> {
    Change(Change<'a>),
    DeleteStamp(Vec<u8>),
}

impl Queued<'_> {
    /// The row it writes (a delete writes none).
    pub(super) fn written_row(&self) -> Option<&[Field<'_>]> {
        match self {
            Queued::Change(Change::Insert { new, .. } | Change::Update { new, .. }) => Some(new),
            _ => None,
        }
    }
}

fn refuse_truncate() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        "edgesync: refused batch: it carries a TRUNCATE, which edgesync does not forward".to_string(),
    )
}

thread_local! {
    /// The origin this backend's current transaction applies as (0: none).
    static SESSION_ORIGIN: Cell<u16> = const { Cell::new(0) };
}

/// Set up the sender's origin session for the rest of this transaction.
/// It must last until COMMIT (which records the progress), so it is torn
/// down by a commit/abort callback, not on return.
fn begin_origin_session(sender: &str) {
    let id = origin_of(sender);
    check_session_free(id);
    // SAFETY: `id` exists (found or created by origin_of) and no session is
    // set up here (check_session_free; PostgreSQL raises an ERROR if one
    // were); replorigin_session_origin is this backend's own global.
    unsafe {
        crate::compat::replorigin_session_setup(id);
        pg_sys::replorigin_session_origin = id;
    }
    SESSION_ORIGIN.with(|s| s.set(id));
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::PreCommit, set_progress_for_commit);
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, end_origin_session);
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, end_origin_session);
}

/// The replication origin's name for `sender` (check_batch let only node
/// names through, and they have no NUL).
fn origin_name_of(sender: &str) -> CString {
    CString::new(crate::model::node::origin_name(sender)).expect("node names have no NUL")
}

/// The origin called `name` (0, InvalidRepOriginId, when there is none).
fn find_origin(name: &CString) -> pg_sys::RepOriginId {
    // SAFETY: `name` is NUL-terminated and outlives the call; we are in a
    // transaction; with missing_ok an absent origin is 0, not an error.
    unsafe { pg_sys::replorigin_by_name(name.as_ptr(), true) }
}

/// The replication origin of `sender`'s changes, created on its first batch.
fn origin_of(sender: &str) -> pg_sys::RepOriginId {
    let name = origin_name_of(sender);
    match find_origin(&name) {
        // SAFETY: `name` is NUL-terminated and outlives the call; adding to
        // pg_replication_origin needs the owner's rights and a transaction.
        0 => as_extension_owner(|| unsafe { pg_sys::replorigin_create(name.as_ptr()) }),
        id => id,
    }
}

/// Refuse to apply in a savepoint, a second batch in this transaction, or
/// on top of another origin's session.
fn check_session_free(id: pg_sys::RepOriginId) {
    // SAFETY: reads this backend's transaction state; we are in a transaction.
    if unsafe { pg_sys::GetCurrentTransactionNestLevel() } > 1 {
        // the origin's progress would outlive a rolled-back savepoint
        raise(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            "edgesync: apply_batch cannot run inside a savepoint or an exception block".to_string(),
        );
    }
    // SAFETY: reads this backend's isolation level for the running transaction.
    if unsafe { pg_sys::XactIsoLevel } == pg_sys::XACT_SERIALIZABLE as i32 {
        // a serialization failure is raised after PRE_COMMIT, and an abort
        // records the origin's progress too: the batch would count as applied
        raise(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            "edgesync: apply_batch cannot run in a SERIALIZABLE transaction: use READ COMMITTED or REPEATABLE READ",
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
    // SAFETY: a backend-local global, read in the backend that owns it.
    if active != 0 || unsafe { pg_sys::replorigin_session_origin } != 0 {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            "edgesync: this transaction already applies changes of another origin".to_string(),
        );
    }
}

fn end_origin_session() {
    PROGRESS_AT_COMMIT.with(|p| p.set((0, 0)));
    crate::conflict::done_applying();
    if SESSION_ORIGIN.with(|s| s.replace(0)) != 0 {
        // SAFETY: SESSION_ORIGIN was set, so begin_origin_session set up the
        // session this resets; the globals are this backend's own.
        unsafe {
            pg_sys::replorigin_session_reset();
            pg_sys::replorigin_session_origin = 0;
            pg_sys::replorigin_session_origin_lsn = 0;
            pg_sys::replorigin_session_origin_timestamp = 0;
        }
    }
}

/// Parsed changes held before they are written: runs are written in
/// pieces of at most this many (parsed rows take more memory than their bytes).
const MAX_RUN_ROWS: usize = 4000;
/// The most columns a table can have (PostgreSQL's MaxHeapAttributeNumber).
const MAX_COLUMNS: usize = 1600;
/// The most relations one batch may describe.
const MAX_RELATIONS: usize = 10_000;

/// Apply a run of changes to one table, as its owner, row by row as
/// PostgreSQL's own apply does ([`TableWriter`]); a table whose row-level
/// security binds its owner with SQL statements ([`SqlWriter`]).
fn write_run(changes: Vec<Queued<'_>>, target: &Target) {
    target.naming_refused_values(&changes, || {
        as_role(target.owner, || {
            if write_sql::binds_the_owner(target.relid) {
                Spi::connect_mut(|client| apply_changes(&mut SqlWriter::new(client, target), target, &changes));
            } else {
                let mut writer = TableWriter::open(target);
                apply_changes(&mut writer, target, &changes);
                writer.close();
            }
        })
    });
}

fn apply_changes(w: &mut impl RowWrites, t: &Target, changes: &[Queued<'_>]) {
    let mut stamp = None;
    for change in changes {
        apply_change(w, t, change, &mut stamp);
    }
}

/// Apply one change; a delete stamp is kept in `stamp` for the delete after it.
fn apply_change(w: &mut impl RowWrites, t: &Target, change: &Queued<'_>, stamp: &mut Option<(serde_json::Value, DeleteStamp)>) {
    match change {
        Queued::Change(Change::Insert { new, .. }) => w.row(|w| insert(w, t, new)),
        Queued::Change(Change::Update { old, new, .. }) => w.row(|w| update(w, t, old.as_deref(), new)),
        Queued::Change(Change::Delete { old, .. }) => {
            let mut stamp = stamp.take();
            w.row(|w| delete(w, t, old, &mut stamp))
        }
        Queued::DeleteStamp(content) => {
            let (s, key) = read_delete_stamp(content);
            *stamp = Some((key, s));
        }
    }
}

/// A sender's delete stamp and its key object, or the batch is refused.
fn read_delete_stamp(content: &[u8]) -> (DeleteStamp, serde_json::Value) {
    let refuse = |e: String| -> ! { raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, format!("edgesync: refused batch: {e}")) };
    let stamp = DeleteStamp::decode(content).unwrap_or_else(|e| refuse(e));
    match serde_json::from_str::<serde_json::Value>(&stamp.key) {
        Ok(key @ serde_json::Value::Object(_)) => (stamp, key),
        _ => refuse("a delete stamp's key is not a JSON object".to_string()),
    }
}

/// Insert `new`. On a table without a conflict policy a key that exists
/// here keeps its row (logged as insert_exists): a duplicate key would
/// otherwise stop the sender's batches for good. Under a policy the
/// conflict trigger settles it.
fn insert(w: &mut impl RowWrites, t: &Target, new: &[Field<'_>]) {
    if !w.insert(new) {
        log_if_kept_existing(t, new);
    }
}

/// Update the row its old key, or else its new row, names: the columns the
/// update sent (TOASTed ones it left unchanged keep their value here). Under
/// a conflict policy the trigger judges it (and may keep the row here).
fn update(w: &mut impl RowWrites, t: &Target, old: Option<&[Field<'_>]>, new: &[Field<'_>]) {
    if !w.update(old.unwrap_or(new), new) {
        update_of_missing_row(w, t, new);
    }
}

/// Delete the row the old key names, handing the delete's versions (when
/// the sender sent them) to the conflict trigger. A row already gone is
/// logged (delete_missing); under a conflict policy the delete's tombstone
/// is recorded all the same.
fn delete(w: &mut impl RowWrites, t: &Target, old: &[Field<'_>], stamp: &mut Option<(serde_json::Value, DeleteStamp)>) {
    if w.delete(old, stamp) {
        return;
    }
    match stamp.take() {
        Some((key, s)) if t.has_policy => missing_row_deleted(t.relid, &t.schema, &t.name, pgrx::JsonB(key), s.stamp)
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string())),
        _ => log(t, ConflictType::DeleteMissing, Resolution::KeepLocal, old, None, None),
    }
}

/// The row a remote update names is not here. Under a conflict policy the
/// trigger judges the row as that update (a tombstone newer than it wins:
/// update_deleted); otherwise the remote row is put back and logged.
fn update_of_missing_row(w: &mut impl RowWrites, t: &Target, new: &[Field<'_>]) {
    if new.contains(&Field::Unchanged) {
        let note = "the update left TOASTed columns unchanged; their values are not here, so the row was not recreated";
        log(t, ConflictType::UpdateMissing, Resolution::KeepLocal, new, Some(new), Some(note));
        return;
    }
    if t.has_policy {
        let _as_update = TableFlag::missing_row_update(t.relid);
        return insert(w, t, new);
    }
    insert(w, t, new);
    log(t, ConflictType::UpdateMissing, Resolution::ApplyRemote, new, Some(new), None);
}

/// After an insert met a row with `new`'s key: if that row was not written
/// by this transaction, log insert_exists with both rows (the row here
/// stays); one this batch wrote is its own earlier change.
fn log_if_kept_existing(t: &Target, new: &[Field<'_>]) {
    let key = t.key_json(new);
    let key_column = |&k: &usize| &t.columns[k].as_ref().expect("key columns are written").quoted;
    let cond = t.key.iter().map(key_column).map(|k| format!("t.{k} = r.{k}")).collect::<Vec<_>>().join(" AND ");
    let sql = format!(
        "SELECT pg_catalog.to_jsonb(t) FROM {q} AS t, pg_catalog.jsonb_populate_record(NULL::{q}, $1) AS r
          WHERE {cond} AND t.xmin OPERATOR(pg_catalog.<>) pg_catalog.pg_current_xact_id()::pg_catalog.xid",
        q = t.qualified
    );
    let found = Spi::connect(|client| {
        let rows = client.select(&sql, None, &[key.into()])?;
        rows.into_iter().next().map(|r| r.get::<pgrx::JsonB>(1)).transpose().map(Option::flatten)
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: applying to {}: {e}", t.qualified)));
    if let Some(local) = found {
        log_insert_exists(t, new, local);
    }
}

fn log_insert_exists(t: &Target, new: &[Field<'_>], local: pgrx::JsonB) {
    log_conflict(ConflictRecord {
        table_schema: &t.schema,
        table_name: &t.name,
        conflict: ConflictType::InsertExists,
        resolution: Resolution::KeepLocal,
        key: t.key_json(new),
        kept_row: Some(pgrx::JsonB(local.0.clone())),
        local_row: Some(local),
        remote_row: Some(t.row_json(new)),
        local_version: None,
        remote_version: None,
        note: Some("no conflict policy on this table: the row already here is kept".to_string()),
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
}

fn log(t: &Target, conflict: ConflictType, resolution: Resolution, key_row: &[Field<'_>], remote: Option<&[Field<'_>]>, note: Option<&str>) {
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
        note: note.map(str::to_string),
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
}
