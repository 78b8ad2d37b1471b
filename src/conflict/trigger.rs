//! The conflict trigger: a BEFORE ROW trigger on every table under conflict
//! handling, `ENABLE ALWAYS` so that it also fires in apply workers.
//!
//! - A local write (no replication-origin session) is stamped with a fresh
//!   row version and goes on; a local delete leaves a tombstone.
//! - A remote change keeps the version it came with; `model::lww::decide`
//!   says whether it conflicts with what this node holds and which row stays.
//!   Conflicts are written to `edgesync.conflict_log`.
//!
//! Trigger arguments (written by `set_conflict_policy`): policy, handler
//! (or ''), then the primary-key columns.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, Ordering};

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{JsonB, PgRelation};

use crate::conflict::clock;
use crate::guc;
use crate::model::conflict::lww::{decide, Action, ConflictType, Decision, Local, Policy, Remote, Resolution};
use crate::model::sql_text::quote_ident;
use crate::model::conflict::version::{RowStamp, Version};
use crate::privilege::as_extension_owner;

/// The column every table under conflict handling carries: a 24-byte
/// `bytea` (see `model::version`).
pub const VERSION_COLUMN: &str = "edgesync_version";

/// The table edgesync is writing a row of to settle a conflict inside the
/// apply path (0: none): that row already carries the version it must keep.
static PASS_THROUGH: AtomicU32 = AtomicU32::new(0);

/// The table a DBA's resolution is being written to (0: none), and the
/// previous version to put in its fresh stamp (the other node's version, so
/// the write is the next change there, not a new conflict).
static RESOLUTION_RELID: AtomicU32 = AtomicU32::new(0);
static RESOLUTION_PREV_HLC: AtomicI64 = AtomicI64::new(0);
static RESOLUTION_PREV_NODE: AtomicI32 = AtomicI32::new(0);

/// While alive, `flag` names table `relid` (so the trigger treats its rows
/// specially); cleared on drop, on unwind too.
pub struct TableFlag(&'static AtomicU32);

impl TableFlag {
    fn set(flag: &'static AtomicU32, relid: pg_sys::Oid) -> TableFlag {
        flag.store(relid.to_u32(), Ordering::Relaxed);
        TableFlag(flag)
    }

    /// The trigger lets rows of `relid` through unchanged.
    pub fn pass_through(relid: pg_sys::Oid) -> TableFlag {
        TableFlag::set(&PASS_THROUGH, relid)
    }

    /// Remote inserts into `relid` are judged as updates of a missing row.
    pub fn missing_row_update(relid: pg_sys::Oid) -> TableFlag {
        TableFlag::set(&MISSING_ROW_UPDATE, relid)
    }
}

impl Drop for TableFlag {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// The table whose missing row edgesync's apply is inserting in place of a
/// remote update (0: none): the trigger judges that insert as the update it
/// is (update_missing, or update_deleted against a tombstone).
static MISSING_ROW_UPDATE: AtomicU32 = AtomicU32::new(0);

/// While alive, local stamps of rows of `relid` use `prev` as their previous
/// version (writes that cascade to other tables are stamped normally).
pub struct ResolutionWrite(());

impl ResolutionWrite {
    pub fn begin(relid: pg_sys::Oid, prev: Option<Version>) -> ResolutionWrite {
        if let Some(p) = prev {
            RESOLUTION_PREV_HLC.store(p.hlc, Ordering::Relaxed);
            RESOLUTION_PREV_NODE.store(p.node, Ordering::Relaxed);
            RESOLUTION_RELID.store(relid.to_u32(), Ordering::Relaxed);
        }
        ResolutionWrite(())
    }
}

impl Drop for ResolutionWrite {
    fn drop(&mut self) {
        RESOLUTION_RELID.store(0, Ordering::Relaxed);
    }
}

fn relid_of(trigger: &PgTrigger<'_>) -> u32 {
    unsafe { (*trigger.trigger_data().tg_relation).rd_id.to_u32() }
}

fn resolution_prev(trigger: &PgTrigger<'_>) -> Option<Version> {
    let target = RESOLUTION_RELID.load(Ordering::Relaxed);
    (target != 0 && target == relid_of(trigger))
        .then(|| Version::new(RESOLUTION_PREV_HLC.load(Ordering::Relaxed), RESOLUTION_PREV_NODE.load(Ordering::Relaxed)))
}

#[derive(Debug)]
pub struct ConflictError(String);

impl std::fmt::Display for ConflictError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "edgesync: {}", self.0)
    }
}

impl std::error::Error for ConflictError {}

fn fail(what: impl std::fmt::Display) -> ConflictError {
    ConflictError(what.to_string())
}

type Row<'a> = PgHeapTuple<'a, pgrx::AllocatedByPostgres>;

thread_local! {
    /// Where `edgesync_version` sat in the table seen last (relid, attnum);
    /// checked against the tuple descriptor on every use, so a re-added
    /// column is found again.
    static VERSION_ATTNUM: std::cell::Cell<(pg_sys::Oid, i16)> = const { std::cell::Cell::new((pg_sys::InvalidOid, 0)) };
}

/// The attribute number of `edgesync_version` in the trigger's table.
fn version_attnum(trigger: &PgTrigger<'_>) -> Result<i16, ConflictError> {
    unsafe {
        let rel = trigger.trigger_data().tg_relation;
        let relid = (*rel).rd_id;
        let tupdesc = pgrx::PgTupleDesc::from_pg_unchecked((*rel).rd_att);
        let is_version = |attnum: i16| {
            attnum > 0
                && tupdesc.get(attnum as usize - 1).is_some_and(|a| {
                    !a.attisdropped && std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == VERSION_COLUMN.as_bytes()
                })
        };
        let (cached_rel, cached_attnum) = VERSION_ATTNUM.with(|c| c.get());
        if cached_rel == relid && is_version(cached_attnum) {
            return Ok(cached_attnum);
        }
        let attnum = pg_sys::get_attnum(relid, c"edgesync_version".as_ptr());
        if !is_version(attnum) {
            return Err(fail(format!("{VERSION_COLUMN} is missing: re-run edgesync.set_conflict_policy")));
        }
        VERSION_ATTNUM.with(|c| c.set((relid, attnum)));
        Ok(attnum)
    }
}

/// The stamp in a trigger slot (old or new row) without copying the tuple.
fn slot_stamp(trigger: &PgTrigger<'_>, slot: *mut pg_sys::TupleTableSlot) -> Result<RowStamp, ConflictError> {
    let attnum = version_attnum(trigger)?;
    unsafe {
        let mut isnull = false;
        let datum = pg_sys::slot_getattr(slot, attnum as i32, &mut isnull);
        if isnull {
            return Ok(RowStamp::ZERO);
        }
        let bytes = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
        let data = pgrx::varlena::varlena_to_byte_slice(bytes);
        RowStamp::from_bytes(data).map_err(fail)
    }
}

/// The trigger's tuple with its version set to `stamp`: one
/// `heap_modify_tuple_by_cols`.
fn stamped<'a>(trigger: &'a PgTrigger<'a>, tuple: *mut pg_sys::HeapTupleData, stamp: RowStamp) -> Result<Row<'a>, ConflictError> {
    let attnum = version_attnum(trigger)?;
    unsafe {
        let rel = trigger.trigger_data().tg_relation;
        let bytes = stamp.to_bytes();
        let value = pgrx::varlena::rust_byte_slice_to_bytea(&bytes);
        let mut columns = [attnum as std::ffi::c_int];
        let mut values = [pg_sys::Datum::from(value.into_pg())];
        let mut nulls = [false];
        let tupdesc = (*rel).rd_att;
        let modified = pg_sys::heap_modify_tuple_by_cols(tuple, tupdesc, 1, columns.as_mut_ptr(), values.as_mut_ptr(), nulls.as_mut_ptr());
        Ok(PgHeapTuple::from_heap_tuple(pgrx::PgTupleDesc::from_pg_unchecked(tupdesc), modified))
    }
}

/// Everything the remote path needs to know about the table.
struct Table {
    relid: pg_sys::Oid,
    rowtype: pg_sys::Oid,
    qualified: String,
    schema: String,
    name: String,
    handler: Option<String>,
    keys: Vec<String>,
}

impl Table {
    fn from_trigger(trigger: &PgTrigger<'_>) -> Result<Table, ConflictError> {
        let args = trigger.extra_args().map_err(fail)?;
        if args.len() < 3 {
            return Err(fail("the conflict trigger needs (policy, handler, key columns...): re-run edgesync.set_conflict_policy"));
        }
        let rel: PgRelation = trigger.relation().map_err(fail)?;
        let schema = rel.namespace().to_string();
        let name = rel.name().to_string();
        Ok(Table {
            relid: rel.oid(),
            rowtype: unsafe { (*rel.rd_rel).reltype },
            qualified: format!("{}.{}", quote_ident(&schema), quote_ident(&name)),
            schema,
            name,
            handler: (!args[1].is_empty()).then(|| args[1].clone()),
            keys: args[2..].to_vec(),
        })
    }
}

/// A tuple of the trigger as a composite value typed as the table's row type.
fn composite<'a>(tuple: *mut pg_sys::HeapTupleData, trigger: &PgTrigger<'_>) -> DatumWithOid<'a> {
    unsafe {
        let rel = trigger.trigger_data().tg_relation;
        let datum = pg_sys::heap_copy_tuple_as_datum(tuple, (*rel).rd_att);
        DatumWithOid::new(datum, (*(*rel).rd_rel).reltype)
    }
}

/// The table, read from the trigger only when a path needs more than the policy.
struct LazyTable<'t> {
    trigger: &'t PgTrigger<'t>,
    table: std::cell::OnceCell<Table>,
}

impl<'t> LazyTable<'t> {
    fn new(trigger: &'t PgTrigger<'t>) -> Self {
        LazyTable { trigger, table: std::cell::OnceCell::new() }
    }

    fn get(&self) -> Result<&Table, ConflictError> {
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        let t = Table::from_trigger(self.trigger)?;
        Ok(self.table.get_or_init(|| t))
    }
}

/// The policy, the trigger's first argument, read without copying the others.
fn policy_of(trigger: &PgTrigger<'_>) -> Result<Policy, ConflictError> {
    let t = trigger.trigger();
    if t.tgnargs < 3 || t.tgargs.is_null() {
        return Err(fail("the conflict trigger needs (policy, handler, key columns...): re-run edgesync.set_conflict_policy"));
    }
    let first = unsafe { std::ffi::CStr::from_ptr(*t.tgargs) };
    first.to_str().map_err(fail)?.parse().map_err(fail)
}

fn to_json(tuple: DatumWithOid<'_>) -> Result<JsonB, ConflictError> {
    Spi::get_one_with_args::<JsonB>("SELECT pg_catalog.to_jsonb($1)", &[tuple])
        .map_err(fail)?
        .ok_or_else(|| fail("row has no jsonb form"))
}

fn key_of(row: &JsonB, keys: &[String]) -> JsonB {
    let mut key = serde_json::Map::new();
    for k in keys {
        key.insert(k.clone(), row.0.get(k).cloned().unwrap_or(serde_json::Value::Null));
    }
    JsonB(serde_json::Value::Object(key))
}

fn stamp_json(stamp: RowStamp) -> Vec<i64> {
    stamp.to_array().to_vec()
}

/// The trigger function behind every `edgesync_conflict` trigger.
#[pg_trigger]
fn conflict_trigger<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>, ConflictError> {
    match fire(trigger) {
        Ok(row) => Ok(row),
        // a plain ERROR with a SQLSTATE, not pgrx's "Trigger function panic"
        Err(e) => {
            ereport!(PgLogLevel::ERROR, pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string());
            unreachable!()
        }
    }
}

fn fire<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<Row<'a>>, ConflictError> {
    let op = trigger.op().map_err(fail)?;
    let through = PASS_THROUGH.load(Ordering::Relaxed);
    if through != 0 && through == relid_of(trigger) {
        return Ok(current(trigger, &op));
    }
    let remote = unsafe { pg_sys::replorigin_session_origin } != 0;
    if remote {
        remote_change(trigger, op)
    } else {
        local_write(trigger, op)
    }
}

fn current<'a>(trigger: &'a PgTrigger<'a>, op: &PgTriggerOperation) -> Option<Row<'a>> {
    match op {
        PgTriggerOperation::Delete => trigger.old(),
        _ => trigger.new(),
    }
}

/// The cheap path, on every local write: stamp and go.
fn local_write<'a>(trigger: &'a PgTrigger<'a>, op: PgTriggerOperation) -> Result<Option<Row<'a>>, ConflictError> {
    let td = trigger.trigger_data();
    match op {
        PgTriggerOperation::Insert => {
            let node = clock::node_id();
            let stamp = RowStamp::local(clock::tick(), node, resolution_prev(trigger).unwrap_or(Version::ZERO));
            Ok(Some(stamped(trigger, td.tg_trigtuple, stamp)?))
        }
        PgTriggerOperation::Update => {
            let node = clock::node_id();
            let prev = match resolution_prev(trigger) {
                Some(p) => p,
                None => slot_stamp(trigger, td.tg_trigslot)?.version,
            };
            let stamp = RowStamp::local(clock::tick(), node, prev);
            Ok(Some(stamped(trigger, td.tg_newtuple, stamp)?))
        }
        PgTriggerOperation::Delete => {
            let node = clock::node_id();
            let table = Table::from_trigger(trigger)?;
            let old = trigger.old().ok_or_else(|| fail("DELETE without an old row"))?;
            let deleted = RowStamp { version: Version::new(clock::tick(), node), prev: slot_stamp(trigger, td.tg_trigslot)?.version };
            record_tombstone(&table, composite(td.tg_trigtuple, trigger), deleted)?;
            Ok(Some(old))
        }
        PgTriggerOperation::Truncate => Ok(None),
    }
}

thread_local! {
    /// Plans of the per-table statements of the apply path, kept for the
    /// backend's life (PostgreSQL revalidates them after DDL). Keyed by text.
    static PLANS: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// The kept plan for `sql`, prepared on first use.
pub(crate) fn plan_for(client: &SpiClient<'_>, sql: &str, args: &[PgOid], mutating: bool) -> pgrx::spi::Result<Rc<OwnedPreparedStatement>> {
    if let Some(plan) = PLANS.with(|plans| plans.borrow().get(sql).cloned()) {
        return Ok(plan);
    }
    let stmt = if mutating { client.prepare_mut(sql, args)? } else { client.prepare(sql, args)? };
    let plan = Rc::new(stmt.keep());
    PLANS.with(|plans| plans.borrow_mut().insert(sql.to_string(), plan.clone()));
    Ok(plan)
}

/// `jsonb_build_object('k1', (ROW).k1, ...)`: the key object, built the way
/// `to_jsonb` builds the row, so both spellings of a key compare equal.
fn key_expression(table: &Table, row: &str) -> String {
    let parts: Vec<String> = table
        .keys
        .iter()
        .map(|k| format!("{}, ({row}).{}", crate::model::sql_text::quote_literal(k), quote_ident(k)))
        .collect();
    format!("pg_catalog.jsonb_build_object({})", parts.join(", "))
}

/// The key object of `row` (a composite of the table's type), built with
/// the caller's rights: the key's types may have casts of their owner's.
fn key_json(table: &Table, row: DatumWithOid<'_>) -> Result<JsonB, ConflictError> {
    let sql = format!("SELECT {}", key_expression(table, &format!("$1::{}", table.qualified)));
    let args = [PgOid::from(table.rowtype)];
    Spi::connect(|client| {
        let plan = plan_for(client, &sql, &args, false)?;
        client.select(&*plan, None, &[row])?.first().get_one::<JsonB>()
    })
    .map_err(fail)?
    .ok_or_else(|| fail("row has no key"))
}

/// Record that the row `row` (a composite of the table's type) was deleted.
fn record_tombstone(table: &Table, row: DatumWithOid<'_>, stamp: RowStamp) -> Result<(), ConflictError> {
    let key = key_json(table, row)?;
    const SQL: &str = "INSERT INTO edgesync.tombstone AS t (relid, key, version) VALUES ($1, $2, $3)
                       ON CONFLICT (relid, key) DO UPDATE SET version = EXCLUDED.version, deleted_at = now()";
    let args = [PgOid::from(pg_sys::OIDOID), PgOid::from(pg_sys::JSONBOID), PgOid::from(pg_sys::INT8ARRAYOID)];
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            let plan = plan_for(client, SQL, &args, true)?;
            client.update(&*plan, None, &[table.relid.into(), key.into(), stamp_json(stamp).into()]).map(|_| ())
        })
    })
    .map_err(fail)?;
    clock::tombstone_written();
    Ok(())
}

/// How to look a table's primary key up: found once per table from the
/// catalogs, rebuilt when the primary-key index changes.
#[derive(Clone)]
struct KeyProbe {
    index: pg_sys::Oid,
    heap_attnums: Vec<i16>,
    procs: Vec<pg_sys::RegProcedure>,
    collations: Vec<pg_sys::Oid>,
}

thread_local! {
    static KEY_PROBES: RefCell<HashMap<pg_sys::Oid, KeyProbe>> = RefCell::new(HashMap::new());
}

const BT_EQUAL_STRATEGY: u16 = 3;

unsafe fn key_probe(rel: pg_sys::Relation) -> Result<KeyProbe, ConflictError> {
    unsafe {
        let relid = (*rel).rd_id;
        let index = crate::compat::primary_key_index(rel);
        if index == pg_sys::InvalidOid {
            return Err(fail("the table lost its primary key: re-run edgesync.set_conflict_policy"));
        }
        if let Some(p) = KEY_PROBES.with(|c| c.borrow().get(&relid).cloned()) {
            if p.index == index {
                return Ok(p);
            }
        }
        let idxrel = pg_sys::index_open(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let nkeys = (*(*idxrel).rd_index).indnkeyatts as usize;
        let indkey = (*(*idxrel).rd_index).indkey.values.as_ptr();
        let mut probe = KeyProbe { index, heap_attnums: vec![], procs: vec![], collations: vec![] };
        for i in 0..nkeys {
            let opfamily = *(*idxrel).rd_opfamily.add(i);
            let opcintype = *(*idxrel).rd_opcintype.add(i);
            let op = pg_sys::get_opfamily_member(opfamily, opcintype, opcintype, BT_EQUAL_STRATEGY as i16);
            if op == pg_sys::InvalidOid {
                pg_sys::index_close(idxrel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
                return Err(fail("the primary key has no equality operator"));
            }
            probe.heap_attnums.push(*indkey.add(i));
            probe.procs.push(pg_sys::get_opcode(op));
            probe.collations.push(*(*idxrel).rd_indcollation.add(i));
        }
        pg_sys::index_close(idxrel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        KEY_PROBES.with(|c| c.borrow_mut().insert(relid, probe.clone()));
        Ok(probe)
    }
}

/// The stamp of the local row with the new row's key: one primary-key
/// lookup in the apply worker's snapshot, with scan keys prepared once per
/// table (no SQL, no catalog lookups per row). A row inserted by a local
/// transaction still in progress is not seen: the apply worker's own insert
/// then waits for it and retries the change if it committed.
fn probe_existing(trigger: &PgTrigger<'_>) -> Result<Option<RowStamp>, ConflictError> {
    let td = trigger.trigger_data();
    unsafe {
        let rel = td.tg_relation;
        let probe = key_probe(rel)?;
        let n = probe.heap_attnums.len();
        let search = td.tg_trigslot;
        let mut keys: Vec<pg_sys::ScanKeyData> = vec![std::mem::zeroed(); n];
        for (i, key) in keys.iter_mut().enumerate() {
            let mut isnull = false;
            let value = pg_sys::slot_getattr(search, probe.heap_attnums[i] as i32, &mut isnull);
            if isnull {
                return Ok(None); // a NULL key matches nothing (the insert will fail on its own)
            }
            pg_sys::ScanKeyEntryInitialize(
                key,
                0,
                (i + 1) as pg_sys::AttrNumber,
                BT_EQUAL_STRATEGY,
                pg_sys::InvalidOid,
                probe.collations[i],
                probe.procs[i],
                value,
            );
        }
        let snapshot = if pg_sys::ActiveSnapshotSet() { pg_sys::GetActiveSnapshot() } else { pg_sys::GetTransactionSnapshot() };
        let idxrel = pg_sys::index_open(probe.index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scan = crate::compat::index_beginscan(rel, idxrel, snapshot, n as i32);
        pg_sys::index_rescan(scan, keys.as_mut_ptr(), n as i32, std::ptr::null_mut(), 0);
        let out = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let found = pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, out);
        let stamp = if found { Some(slot_stamp(trigger, out)) } else { None };
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(out);
        pg_sys::index_close(idxrel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        stamp.transpose()
    }
}

thread_local! {
    static TOMBSTONE_RELID: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
    /// `clock::tombstones_written()` when this backend last found the
    /// tombstone table empty (-1: not known to be empty).
    static EMPTY_AT: std::cell::Cell<i64> = const { std::cell::Cell::new(-1) };
}

/// No tombstone at all in this database (the tombstone table has no pages):
/// the common case of append-only tables, where the lookup is skipped. The
/// table is looked at again only after some backend wrote a tombstone.
fn no_tombstones() -> bool {
    let written = clock::tombstones_written();
    if EMPTY_AT.with(|c| c.get()) == written {
        return true;
    }
    let relid = TOMBSTONE_RELID.with(|c| c.get());
    let relid = if relid == pg_sys::InvalidOid {
        let found = Spi::get_one::<pg_sys::Oid>("SELECT 'edgesync.tombstone'::regclass::oid").ok().flatten().unwrap_or(pg_sys::InvalidOid);
        TOMBSTONE_RELID.with(|c| c.set(found));
        found
    } else {
        relid
    };
    if relid == pg_sys::InvalidOid {
        return false;
    }
    let empty = unsafe {
        let rel = PgRelation::with_lock(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        pg_sys::RelationGetNumberOfBlocksInFork(rel.as_ptr(), pg_sys::ForkNumber::MAIN_FORKNUM) == 0
    };
    EMPTY_AT.with(|c| c.set(if empty { written } else { -1 }));
    empty
}

/// What this node holds for the key of the row being inserted: the row's
/// stamp, or the unexpired tombstone's delete version.
fn local_state_for<'d>(table: &LazyTable<'_>, trigger: &PgTrigger<'_>, new_row: impl FnOnce() -> DatumWithOid<'d>) -> Result<Local, ConflictError> {
    if let Some(stamp) = probe_existing(trigger)? {
        return Ok(Local::Row(stamp));
    }
    if no_tombstones() {
        return Ok(Local::Absent);
    }
    let table = table.get()?;
    let key = key_json(table, new_row())?;
    const SQL: &str = "SELECT version FROM edgesync.tombstone
                        WHERE relid = $1 AND key = $2 AND deleted_at > now() - make_interval(secs => $3)";
    let args = [PgOid::from(pg_sys::OIDOID), PgOid::from(pg_sys::JSONBOID), PgOid::from(pg_sys::FLOAT8OID)];
    let retention = guc::TOMBSTONE_RETENTION.get() as f64;
    let tomb = as_extension_owner(|| {
        Spi::connect(|client| {
            let plan = plan_for(client, SQL, &args, false)?;
            let t = client.select(&*plan, None, &[table.relid.into(), key.into(), retention.into()])?;
            if t.is_empty() {
                return Ok(None);
            }
            t.first().get_one::<Vec<Option<i64>>>()
        })
    })
    .map_err(fail)?;
    Ok(match tomb {
        Some(t) => Local::Deleted(RowStamp::from_array(&t).map_err(fail)?.version),
        None => Local::Absent,
    })
}

/// The row of `qualified` whose key columns `keys` match the jsonb `key`
/// (extra members are ignored), as jsonb; None when there is none.
pub fn row_by_key(qualified: &str, keys: &[String], key: &JsonB) -> pgrx::spi::Result<Option<JsonB>> {
    let cond = keys.iter().map(|k| format!("t.{0} = r.{0}", quote_ident(k))).collect::<Vec<_>>().join(" AND ");
    let sql = format!(
        "SELECT pg_catalog.to_jsonb(t) FROM {qualified} AS t, pg_catalog.jsonb_populate_record(NULL::{qualified}, $1) AS r WHERE {cond}"
    );
    Spi::connect(|client| {
        let t = client.select(&sql, None, &[JsonB(key.0.clone()).into()])?;
        if t.is_empty() {
            return Ok(None);
        }
        t.first().get_one::<JsonB>()
    })
}

pub(crate) fn origin_name() -> String {
    unsafe {
        let origin = pg_sys::replorigin_session_origin;
        let mut name: *mut std::ffi::c_char = std::ptr::null_mut();
        if pg_sys::replorigin_by_oid(origin, true, &mut name) && !name.is_null() {
            std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned()
        } else {
            format!("origin {origin}")
        }
    }
}

/// One conflict_log row.
pub struct ConflictRecord<'r> {
    pub table_schema: &'r str,
    pub table_name: &'r str,
    pub conflict: ConflictType,
    pub resolution: Resolution,
    pub key: JsonB,
    pub local_row: Option<JsonB>,
    pub remote_row: Option<JsonB>,
    pub kept_row: Option<JsonB>,
    pub local_version: Option<RowStamp>,
    pub remote_version: Option<RowStamp>,
    pub remote_origin: String,
    pub note: Option<String>,
}

pub(crate) fn log_conflict(c: ConflictRecord<'_>) -> Result<(), ConflictError> {
    let status = if c.resolution == Resolution::Pending { "pending" } else { "resolved" };
    let local_origin = c.local_version.map(|s| {
        if s.version == Version::ZERO {
            "initial".to_string()
        } else if s.version.node == clock::node_id() {
            "local".to_string()
        } else {
            format!("node {}", s.version.node)
        }
    });
    as_extension_owner(|| {
        Spi::run_with_args(
            "INSERT INTO edgesync.conflict_log (schema_name, table_name, conflict_type, resolution, key, local_row, remote_row,
                                                kept_row, local_version, remote_version, local_origin, remote_origin, status, note)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                c.table_schema.into(),
                c.table_name.into(),
                c.conflict.as_str().into(),
                c.resolution.as_str().into(),
                c.key.into(),
                c.local_row.into(),
                c.remote_row.into(),
                c.kept_row.into(),
                c.local_version.map(stamp_json).into(),
                c.remote_version.map(stamp_json).into(),
                local_origin.into(),
                c.remote_origin.into(),
                status.into(),
                c.note.into(),
            ],
        )
    })
    .map_err(fail)
}

/// Write a whole row (jsonb) as edgesync's own settling write: it keeps the version it carries.
fn write_row_through(table: &Table, row: &JsonB) -> Result<(), ConflictError> {
    let _through = TableFlag::pass_through(table.relid);
    Spi::run_with_args(
        "SELECT edgesync._write_row($1::regclass, $2, $3)",
        &[table.relid.into(), JsonB(row.0.clone()).into(), table.keys.clone().into()],
    )
    .map_err(fail)
}

/// What the custom handler chose: Ok(Some(row)) to keep that row,
/// Ok(None) to keep the local one, Err(message) when it failed.
fn ask_handler(table: &Table, conflict: ConflictType, local: &Option<JsonB>, remote: &Option<JsonB>) -> Result<Option<JsonB>, String> {
    let handler = table.handler.clone().ok_or_else(|| "policy custom without a handler".to_string())?;
    let result = Spi::connect(|client| {
        let t = client.select(
            "SELECT ok, kept_row, error FROM edgesync._call_conflict_handler($1::regprocedure::regproc, $2::regclass, $3, $4, $5)",
            None,
            &[
                handler.as_str().into(),
                table.relid.into(),
                conflict.as_str().into(),
                local.as_ref().map(|j| JsonB(j.0.clone())).into(),
                remote.as_ref().map(|j| JsonB(j.0.clone())).into(),
            ],
        )?;
        let row = t.first();
        Ok::<_, pgrx::spi::Error>((row.get::<bool>(1)?, row.get::<JsonB>(2)?, row.get::<String>(3)?))
    });
    match result {
        Ok((Some(true), kept, _)) => match kept {
            None => Ok(None),
            Some(j) if j.0.is_null() => Ok(None),
            Some(j) if j.0.is_object() => Ok(Some(j)),
            Some(j) => Err(format!("the handler returned {}, not a jsonb object or NULL", j.0)),
        },
        Ok((_, _, error)) => Err(error.unwrap_or_else(|| "handler failed".to_string())),
        Err(e) => Err(e.to_string()),
    }
}

/// A row the handler returned, completed from the base row and given the
/// newer of the two versions, so that both nodes end with the same row.
fn settled_row(base: &Option<JsonB>, chosen: JsonB, keep: RowStamp) -> JsonB {
    let mut row = match base.as_ref().map(|b| b.0.clone()) {
        Some(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    if let serde_json::Value::Object(m) = chosen.0 {
        row.extend(m);
    }
    row.insert(VERSION_COLUMN.to_string(), serde_json::Value::String(keep.to_hex()));
    JsonB(serde_json::Value::Object(row))
}

/// A change that arrived through replication (native apply worker or edgesync's own apply).
fn remote_change<'a>(trigger: &'a PgTrigger<'a>, op: PgTriggerOperation) -> Result<Option<Row<'a>>, ConflictError> {
    let policy = policy_of(trigger)?;
    let table = LazyTable::new(trigger);
    let me = clock::node_id();
    let td = trigger.trigger_data();
    match op {
        PgTriggerOperation::Update => {
            let new = trigger.new().ok_or_else(|| fail("UPDATE without a new row"))?;
            let (l, r) = (slot_stamp(trigger, td.tg_trigslot)?, slot_stamp(trigger, td.tg_newslot)?);
            clock::observe(r.version.hlc);
            let decision = decide(Local::Row(l), Remote::Update(r), policy, me);
            if decision.conflict.is_none() {
                return Ok(match decision.action {
                    Action::ApplyRemote => Some(new),
                    _ => None,
                });
            }
            let local_row = Some(to_json(composite(td.tg_trigtuple, trigger))?);
            let remote_row = Some(to_json(composite(td.tg_newtuple, trigger))?);
            let key = key_of(local_row.as_ref().unwrap(), &table.get()?.keys);
            let outcome = settle(table.get()?, decision, key, local_row, remote_row, Some(l), Some(r))?;
            Ok(match outcome {
                Outcome::Remote => Some(new),
                Outcome::Skip => None,
            })
        }
        PgTriggerOperation::Insert => {
            let new = trigger.new().ok_or_else(|| fail("INSERT without a new row"))?;
            let r = slot_stamp(trigger, td.tg_trigslot)?;
            clock::observe(r.version.hlc);
            let local = local_state_for(&table, trigger, || composite(td.tg_trigtuple, trigger))?;
            let as_update = MISSING_ROW_UPDATE.load(Ordering::Relaxed) == relid_of(trigger);
            let remote = if as_update { Remote::Update(r) } else { Remote::Insert(r) };
            let decision = decide(local, remote, policy, me);
            if decision.conflict.is_none() {
                return match (decision.action, local) {
                    // written on top of the row we hold (a resolution that re-inserted it there): an update here
                    (Action::ApplyRemote, Local::Row(_)) => {
                        let remote_row = to_json(composite(td.tg_trigtuple, trigger))?;
                        write_row_through(table.get()?, &remote_row)?;
                        Ok(None)
                    }
                    (Action::ApplyRemote, _) => Ok(Some(new)),
                    _ => Ok(None),
                };
            }
            let remote_row = to_json(composite(td.tg_trigtuple, trigger))?;
            let key = key_of(&remote_row, &table.get()?.keys);
            let (local_row, local_stamp) = match local {
                Local::Row(stamp) => {
                    let t = table.get()?;
                    (row_by_key(&t.qualified, &t.keys, &key).map_err(fail)?, Some(stamp))
                }
                _ => (None, None),
            };
            let row_exists = local_row.is_some();
            let outcome = settle(table.get()?, decision, key, local_row, Some(JsonB(remote_row.0.clone())), local_stamp, Some(r))?;
            match outcome {
                // the key exists: the insert becomes an update of that row
                Outcome::Remote if row_exists => {
                    write_row_through(table.get()?, &remote_row)?;
                    Ok(None)
                }
                Outcome::Remote => Ok(Some(new)),
                Outcome::Skip => Ok(None),
            }
        }
        PgTriggerOperation::Delete => {
            let old = trigger.old().ok_or_else(|| fail("DELETE without an old row"))?;
            let l = slot_stamp(trigger, td.tg_trigslot)?;
            let decision = decide(Local::Row(l), Remote::Delete { seen: None, version: None }, policy, me);
            let outcome = if decision.conflict.is_none() {
                match decision.action {
                    Action::ApplyRemote => Outcome::Remote,
                    _ => Outcome::Skip,
                }
            } else {
                let local_row = to_json(composite(td.tg_trigtuple, trigger))?;
                let key = key_of(&local_row, &table.get()?.keys);
                settle(table.get()?, decision, key, Some(local_row), None, Some(l), None)?
            };
            match outcome {
                Outcome::Remote => {
                    // what the deleting node removed is unknown here; the row's
                    // version is the delete's lower bound
                    record_tombstone(table.get()?, composite(td.tg_trigtuple, trigger), RowStamp { version: l.version, prev: l.version })?;
                    Ok(Some(old))
                }
                Outcome::Skip => Ok(None),
            }
        }
        PgTriggerOperation::Truncate => Ok(None),
    }
}

enum Outcome {
    /// let the remote change through
    Remote,
    /// drop it (the local row stays, or edgesync wrote the row to keep)
    Skip,
}

/// Carry out a conflict's decision and log it.
fn settle(
    table: &Table,
    decision: Decision,
    key: JsonB,
    local_row: Option<JsonB>,
    remote_row: Option<JsonB>,
    local_version: Option<RowStamp>,
    remote_version: Option<RowStamp>,
) -> Result<Outcome, ConflictError> {
    let conflict = decision.conflict.expect("settle is only called for conflicts");
    let mut resolution = decision.resolution();
    let mut note = None;
    let (outcome, kept_row) = match decision.action {
        Action::ApplyRemote => (Outcome::Remote, remote_row.as_ref().map(|j| JsonB(j.0.clone()))),
        Action::KeepLocal => (Outcome::Skip, local_row.as_ref().map(|j| JsonB(j.0.clone()))),
        Action::AskHandler => match ask_handler(table, conflict, &local_row, &remote_row) {
            Ok(Some(chosen)) => {
                // Both nodes must end with the same row: complete the
                // handler's columns from the newer row, not from each
                // node's own, and give it the newer version.
                let remote_newer = match (local_version, remote_version) {
                    (Some(l), Some(r)) => r.version > l.version,
                    (None, _) => true,
                    (Some(_), None) => false,
                };
                let newest = if remote_newer { remote_version } else { local_version }.unwrap_or(RowStamp::ZERO);
                let base = if remote_newer && remote_row.is_some() { &remote_row } else { &local_row };
                let row = settled_row(base, chosen, newest);
                write_row_through(table, &row)?;
                (Outcome::Skip, Some(row))
            }
            Ok(None) => (Outcome::Skip, local_row.as_ref().map(|j| JsonB(j.0.clone()))),
            Err(error) => {
                resolution = Resolution::Pending;
                note = Some(format!("custom handler failed, local row kept: {error}"));
                (Outcome::Skip, local_row.as_ref().map(|j| JsonB(j.0.clone())))
            }
        },
    };
    log_conflict(ConflictRecord {
        table_schema: &table.schema,
        table_name: &table.name,
        conflict,
        resolution,
        key,
        local_row,
        remote_row,
        kept_row,
        local_version,
        remote_version,
        remote_origin: origin_name(),
        note,
    })?;
    Ok(outcome)
}
