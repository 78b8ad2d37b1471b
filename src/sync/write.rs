//! Writing a run of changes to one table the way PostgreSQL's own apply
//! worker writes them (`worker.c`, `execReplication.c`), with no SQL
//! planned or run per row: each value is read with its column's type input
//! function under the column's modifier; the row an update or delete names
//! is found by primary key in a dirty snapshot and locked; and rows are
//! written with `ExecSimpleRelationInsert`, `...Update` and `...Delete`,
//! which fire the table's row triggers (the conflict trigger among them),
//! compute its generated columns, check its constraints and keep its
//! indexes. A column the sender does not have gets its default here.
//!
//! One [`TableWriter`] serves one run, as the table's owner (the caller
//! switches to it): the table is opened, its executor state, slots and
//! input functions set up once, and the privileges each kind of write
//! needs checked on its first use. (A table whose row-level security binds
//! its owner is written with SQL instead, [`super::write_sql`]: the
//! executor's single-row writes know no policies.) Each row is its own
//! command, in a fresh snapshot, as each statement was: a row sees the rows
//! written before it. Values read for a row live in the executor's per-row
//! memory, emptied after the row. AFTER row triggers fire when the run
//! ends, as at the end of a statement.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use super::target::Target;
use crate::conflict::{KeyAbsent, KeyFinder, RemoteDeleteStamp, RowLock};
use crate::error::raise;
use crate::model::conflict::delete_stamp::DeleteStamp;
use crate::model::sync::pgoutput::Field;

/// The writes a run of changes makes to its table, whichever way the
/// table is written; what they mean for conflicts is the caller's.
pub(super) trait RowWrites {
    /// Run `write`, the writes of one change.
    fn row<R>(&mut self, write: impl FnOnce(&mut Self) -> R) -> R;
    /// Insert `new`; false when the table has no conflict policy and
    /// already holds a row with its key (which stays).
    fn insert(&mut self, new: &[Field<'_>]) -> bool;
    /// Update the row whose key `key_row` holds with the columns `new`
    /// sends; false when no such row is here.
    fn update(&mut self, key_row: &[Field<'_>], new: &[Field<'_>]) -> bool;
    /// Delete the row whose key `old` holds, handing the conflict trigger
    /// the delete's versions from `stamp` (taken when the row is met);
    /// false when no such row is here.
    fn delete(&mut self, old: &[Field<'_>], stamp: &mut Option<(serde_json::Value, DeleteStamp)>) -> bool;
}

impl RowWrites for TableWriter<'_> {
    fn row<R>(&mut self, write: impl FnOnce(&mut Self) -> R) -> R {
        self.in_own_command(write)
    }

    fn insert(&mut self, new: &[Field<'_>]) -> bool {
        self.store_row(new);
        let taken = self.find(RowLock::None);
        if !self.target.has_policy {
            if !taken {
                self.insert_stored();
            }
            return !taken;
        }
        // the conflict trigger judges the insert; it need not look for the key again
        let _absent = (!taken).then(|| KeyAbsent::set(self.target.relid));
        self.insert_stored();
        true
    }

    fn update(&mut self, key_row: &[Field<'_>], new: &[Field<'_>]) -> bool {
        self.require(pg_sys::ACL_SELECT);
        self.store_key(key_row);
        let found = self.find(RowLock::Exclusive);
        if found {
            self.update_found(new);
        }
        found
    }

    fn delete(&mut self, old: &[Field<'_>], stamp: &mut Option<(serde_json::Value, DeleteStamp)>) -> bool {
        self.require(pg_sys::ACL_SELECT);
        self.store_key(old);
        let found = self.find(RowLock::Exclusive);
        if found {
            // the trigger takes the versions, whether it then lets the delete through or skips it
            let _versions = stamp.take().map(|(key, s)| RemoteDeleteStamp::set(self.target.relid, key, s.stamp));
            self.delete_found();
        }
        found
    }
}

/// A column's type input function and what it is called with.
struct Input {
    function: pg_sys::FmgrInfo,
    ioparam: pg_sys::Oid,
    typmod: i32,
}

/// The open table a run writes, and the executor state that writes it.
pub(super) struct TableWriter<'t> {
    target: &'t Target,
    rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    relinfo: *mut pg_sys::ResultRelInfo,
    /// Boxed: the executor keeps pointers to it during a write.
    recheck: Box<pg_sys::EPQState>,
    /// The row as it arrived (or just its key), in the table's row type.
    remote: *mut pg_sys::TupleTableSlot,
    /// The row found here.
    local: *mut pg_sys::TupleTableSlot,
    /// The primary-key scan rows are found with.
    finder: KeyFinder,
    /// Per sender column: how its values are read (None: not written here).
    inputs: Vec<Option<Input>>,
    /// Attributes the sender has no column for, with their default.
    defaults: Vec<(usize, *mut pg_sys::ExprState)>,
    /// The privileges already checked (ACL_* bits).
    checked: pg_sys::AclMode,
    /// The sender columns the last update set (for `UPDATE OF` triggers).
    updated: Vec<bool>,
    /// A value's text with the NUL the input functions read up to.
    text: Vec<u8>,
}

impl<'t> TableWriter<'t> {
    /// Open `target`'s table for a run of writes by the current user.
    pub(super) fn open(target: &'t Target) -> TableWriter<'t> {
        // SAFETY: in a transaction; Target::resolve locked the table, so it
        // is there with the columns it read until commit. Everything is
        // allocated in the executor state's memory, freed in `close`.
        unsafe {
            let rel = pg_sys::table_open(target.relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            let estate = crate::compat::executor_state_for(rel);
            let outer = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
            let relinfo = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>()).cast::<pg_sys::ResultRelInfo>();
            (*relinfo).type_ = pg_sys::NodeTag::T_ResultRelInfo;
            pg_sys::InitResultRelInfo(relinfo, rel, 1, std::ptr::null_mut(), 0);
            // where the trigger machinery looks the table's ResultRelInfo up
            (*estate).es_opened_result_relations = pg_sys::lappend((*estate).es_opened_result_relations, relinfo.cast());
            pg_sys::ExecOpenIndices(relinfo, false);
            let mut recheck = Box::new(std::mem::zeroed::<pg_sys::EPQState>());
            crate::compat::eval_plan_qual_init(&mut *recheck, estate);
            let remote = pg_sys::ExecInitExtraTupleSlot(estate, (*rel).rd_att, &pg_sys::TTSOpsVirtual);
            let local = pg_sys::table_slot_create(rel, &mut (*estate).es_tupleTable);
            let inputs = target.columns.iter().map(|c| c.as_ref().map(|c| input_for(c.type_oid, c.typmod))).collect();
            let defaults = defaults_of(target, rel);
            let finder = KeyFinder::open(rel).unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: applying to {}: {e}", target.qualified)));
            pg_sys::MemoryContextSwitchTo(outer);
            pg_sys::AfterTriggerBeginQuery();
            TableWriter {
                target,
                rel,
                estate,
                relinfo,
                recheck,
                remote,
                local,
                finder,
                inputs,
                defaults,
                checked: 0,
                updated: Vec::new(),
                text: Vec::new(),
            }
        }
    }

    /// End the run: the AFTER triggers its rows queued fire now (as at the
    /// end of a statement), and the executor state is freed; the table
    /// stays locked until commit.
    pub(super) fn close(mut self) {
        self.finder.close();
        // SAFETY: everything here was set up by `open`, and is released once.
        unsafe {
            pg_sys::EvalPlanQualEnd(&mut *self.recheck);
            pg_sys::ExecCloseIndices(self.relinfo);
            pg_sys::AfterTriggerEndQuery(self.estate);
            pg_sys::ExecResetTupleTable((*self.estate).es_tupleTable, false);
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }

    /// Run `write`, the writes of one change, as a command of its own in a
    /// fresh snapshot that sees the rows written before it.
    fn in_own_command<R>(&mut self, write: impl FnOnce(&mut Self) -> R) -> R {
        // SAFETY: in a transaction; the snapshot pushed is popped below
        // (an error aborts the transaction, which pops it); the per-row
        // memory holds only values read for this row.
        unsafe {
            pg_sys::CommandCounterIncrement();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            pg_sys::UpdateActiveSnapshotCommandId();
            (*self.estate).es_output_cid = pg_sys::GetCurrentCommandId(true);
        }
        let result = write(self);
        // SAFETY: as above; the local slot lets go of the row (and its buffer).
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::ExecClearTuple(self.local);
            pg_sys::ExecClearTuple(self.remote);
            pg_sys::MemoryContextReset((*self.per_row_context()).ecxt_per_tuple_memory);
        }
        result
    }

    /// The executor's per-row expression context (made on first use).
    fn per_row_context(&self) -> *mut pg_sys::ExprContext {
        // SAFETY: `estate` is live; MakePerTupleExprContext makes it once
        // (what the GetPerTupleExprContext macro does).
        unsafe {
            if (*self.estate).es_per_tuple_exprcontext.is_null() {
                pg_sys::MakePerTupleExprContext(self.estate)
            } else {
                (*self.estate).es_per_tuple_exprcontext
            }
        }
    }

    /// Put `row` in the remote slot, whole: the columns it sends, and the
    /// defaults of those it has none for (what an insert writes).
    fn store_row(&mut self, row: &[Field<'_>]) {
        self.store(row, StoreWhat::Row);
    }

    /// Put the key of `row` in the remote slot (what a row is found by).
    fn store_key(&mut self, row: &[Field<'_>]) {
        self.store(row, StoreWhat::Key);
    }

    fn store(&mut self, row: &[Field<'_>], what: StoreWhat) {
        let econtext = self.per_row_context();
        // SAFETY: `remote` has the table's row type, whose attribute numbers
        // the target's columns and the defaults name; values are read into
        // per-row memory.
        unsafe {
            let outer = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
            let slot = self.remote;
            pg_sys::ExecClearTuple(slot);
            let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
            let values = std::slice::from_raw_parts_mut((*slot).tts_values, natts);
            let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, natts);
            values.fill(pg_sys::Datum::from(0));
            nulls.fill(true);
            match what {
                StoreWhat::Row => {
                    for i in 0..row.len() {
                        self.read_into(i, &row[i], values, nulls);
                    }
                    for &(at, default) in &self.defaults {
                        values[at] = pg_sys::ExecEvalExpr(default, econtext, &mut nulls[at]);
                    }
                }
                StoreWhat::Key => {
                    for &k in &self.target.key {
                        self.read_into(k, &row[k], values, nulls);
                    }
                }
            }
            pg_sys::ExecStoreVirtualTuple(slot);
            pg_sys::MemoryContextSwitchTo(outer);
        }
    }

    /// Read sender column `i`'s value into the attribute it is written to
    /// (none: not written here). A TOASTed value left unchanged is NULL in
    /// a row stored whole; an update keeps the value here instead.
    fn read_into(&mut self, i: usize, value: &Field<'_>, values: &mut [pg_sys::Datum], nulls: &mut [bool]) {
        let (Some(column), Some(input)) = (&self.target.columns[i], &mut self.inputs[i]) else { return };
        let at = column.attnum as usize - 1;
        let text = match value {
            Field::Text(s) => {
                if s.as_bytes().contains(&0) {
                    raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, "edgesync: refused batch: a value holds a NUL byte".to_string());
                }
                self.text.clear();
                self.text.extend_from_slice(s.as_bytes());
                self.text.push(0);
                self.text.as_mut_ptr().cast::<std::ffi::c_char>()
            }
            // NULL goes through the input function too: a domain's NOT NULL
            // refuses it there (a plain type's input, strict, is not called)
            Field::Null | Field::Unchanged => std::ptr::null_mut(),
        };
        // SAFETY: `text` is NUL-terminated (or NULL) and outlives the call;
        // the function, its I/O parameter and modifier are the column's.
        values[at] = unsafe { pg_sys::InputFunctionCall(&mut input.function, text, input.ioparam, input.typmod) };
        nulls[at] = text.is_null();
    }

    /// Find the row here with the key in the remote slot, into the local
    /// slot; locked when it is to be updated or deleted (which read the
    /// table as an UPDATE or DELETE with a WHERE clause does: the caller
    /// checks SELECT; an insert's look for its key needs none, as ON
    /// CONFLICT DO NOTHING needs none).
    fn find(&mut self, lock: RowLock) -> bool {
        // SAFETY: both slots are of the open table's row type.
        unsafe { self.finder.find(self.remote, self.local, lock) }
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("edgesync: applying to {}: {e}", self.target.qualified)))
    }

    /// Insert the row in the remote slot.
    fn insert_stored(&mut self) {
        self.require(pg_sys::ACL_INSERT);
        // SAFETY: the remote slot holds a whole row of the table, whose
        // indexes are open; the executor state is the one `relinfo` is in.
        unsafe { pg_sys::ExecSimpleRelationInsert(self.relinfo, self.estate, self.remote) };
    }

    /// Update the row found (locked) with the columns `new` sends; the
    /// others, and TOASTed ones it left unchanged, keep their value here.
    fn update_found(&mut self, new: &[Field<'_>]) {
        self.require(pg_sys::ACL_UPDATE);
        self.set_updated_columns(new);
        let econtext = self.per_row_context();
        // SAFETY: `local` holds the locked row, `remote` is of the same row
        // type; the copied values point into `local`'s row, alive until the
        // update is done; new values are read into per-row memory.
        unsafe {
            let outer = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
            let (slot, local) = (self.remote, self.local);
            pg_sys::ExecClearTuple(slot);
            pg_sys::slot_getallattrs(local);
            let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
            std::ptr::copy_nonoverlapping((*local).tts_values, (*slot).tts_values, natts);
            std::ptr::copy_nonoverlapping((*local).tts_isnull, (*slot).tts_isnull, natts);
            let values = std::slice::from_raw_parts_mut((*slot).tts_values, natts);
            let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, natts);
            for (i, value) in new.iter().enumerate() {
                if *value != Field::Unchanged {
                    self.read_into(i, value, values, nulls);
                }
            }
            pg_sys::ExecStoreVirtualTuple(slot);
            pg_sys::MemoryContextSwitchTo(outer);
            self.recheck.origslot = slot;
            pg_sys::ExecSimpleRelationUpdate(self.relinfo, self.estate, &mut *self.recheck, local, slot);
        }
    }

    /// Delete the row found (locked).
    fn delete_found(&mut self) {
        self.require(pg_sys::ACL_DELETE);
        // SAFETY: `local` holds the locked row of the open table.
        unsafe {
            self.recheck.origslot = self.local;
            pg_sys::ExecSimpleRelationDelete(self.relinfo, self.estate, &mut *self.recheck, self.local);
        }
    }

    /// Tell the executor which columns an update sets (column triggers
    /// fire by them), when they differ from the last update's.
    fn set_updated_columns(&mut self, new: &[Field<'_>]) {
        let sets = |i: usize| self.target.columns[i].is_some() && new[i] != Field::Unchanged;
        if self.updated.len() == new.len() && (0..new.len()).all(|i| self.updated[i] == sets(i)) {
            return;
        }
        self.updated = (0..new.len()).map(sets).collect();
        // SAFETY: the bitmap is built in the executor state's memory, where
        // the range table entry it is hung on lives.
        unsafe {
            let outer = pg_sys::MemoryContextSwitchTo((*self.estate).es_query_cxt);
            let mut columns = std::ptr::null_mut();
            for (i, column) in self.target.columns.iter().enumerate() {
                if let (Some(c), true) = (column, self.updated[i]) {
                    columns = pg_sys::bms_add_member(columns, c.attnum as i32 - pg_sys::FirstLowInvalidHeapAttributeNumber);
                }
            }
            crate::compat::set_updated_columns(self.estate, columns);
            pg_sys::MemoryContextSwitchTo(outer);
        }
    }

    /// Raise unless the current user holds `privilege` on the table (as
    /// PostgreSQL's apply checks, once per run and kind of write).
    fn require(&mut self, privilege: u32) {
        let privilege = privilege as pg_sys::AclMode;
        if self.checked & privilege != 0 {
            return;
        }
        // SAFETY: catalog lookups of the open table, in a transaction;
        // aclcheck_error raises.
        unsafe {
            let relid = self.target.relid;
            let result = pg_sys::pg_class_aclcheck(relid, pg_sys::GetUserId(), privilege);
            if result != pg_sys::AclResult::ACLCHECK_OK {
                pg_sys::aclcheck_error(result, pg_sys::get_relkind_objtype((*(*self.rel).rd_rel).relkind), pg_sys::get_rel_name(relid));
            }
        }
        self.checked |= privilege;
    }
}

#[derive(Clone, Copy)]
enum StoreWhat {
    Row,
    Key,
}

/// The input function of type `type_oid` (a domain's checks its
/// constraints), for values read under modifier `typmod`.
///
/// # Safety
/// In a transaction; the function's cache lives in the current memory context.
unsafe fn input_for(type_oid: pg_sys::Oid, typmod: i32) -> Input {
    let (mut function_oid, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
    // SAFETY: catalog lookups of an existing type and its input function,
    // filling locals and a zeroed FmgrInfo.
    unsafe {
        pg_sys::getTypeInputInfo(type_oid, &mut function_oid, &mut ioparam);
        let mut function: pg_sys::FmgrInfo = std::mem::zeroed();
        pg_sys::fmgr_info_cxt(function_oid, &mut function, pg_sys::CurrentMemoryContext);
        Input { function, ioparam, typmod }
    }
}

/// The attributes of `rel` no sender column is written to (0-based), each
/// with its default ready to evaluate; a column without a default is NULL,
/// a generated one is computed by the insert itself.
///
/// # Safety
/// `rel` must be open; the expressions are built in the current memory context.
unsafe fn defaults_of(target: &Target, rel: pg_sys::Relation) -> Vec<(usize, *mut pg_sys::ExprState)> {
    let written: Vec<i16> = target.columns.iter().flatten().map(|c| c.attnum).collect();
    // SAFETY: `rd_att` is the open table's descriptor; build_column_default
    // reads the catalogs, and the planner and executor prepare what it returns.
    unsafe {
        let tupdesc = pgrx::PgTupleDesc::from_pg_unchecked((*rel).rd_att);
        let mut defaults = Vec::new();
        for (i, att) in tupdesc.iter().enumerate() {
            let attnum = (i + 1) as i16;
            if att.attisdropped || att.attgenerated != 0 || written.contains(&attnum) {
                continue;
            }
            let expression = pg_sys::build_column_default(rel, attnum as i32);
            if !expression.is_null() {
                let planned = pg_sys::expression_planner(expression.cast());
                defaults.push((i, pg_sys::ExecInitExpr(planned, std::ptr::null_mut())));
            }
        }
        defaults
    }
}
