//! Every `edgesync.*` setting: its name, default, unit, doc text and context.
//!
//! The lag thresholds are per session (`USERSET`): they only change what a
//! reader of `edgesync.health` is told, so a monitoring role may set its own.

use std::ffi::CString;

use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting};

use crate::model::health::checks::Thresholds;

/// Stored in kB (GUC_UNIT_KB) so that values up to terabytes fit in an int;
/// users write '64MB', '1GB'.
pub static LAG_WARNING_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);
pub static LAG_CRITICAL_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
pub static LAG_WARNING_SECONDS: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static LAG_CRITICAL_SECONDS: GucSetting<i32> = GucSetting::<i32>::new(300);
/// Seconds; a week.
pub static TOMBSTONE_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);
/// Milliseconds added to the wall clock that row versions are read from.
pub static CLOCK_OFFSET_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// The database the forwarder workers run in (one per cluster).
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Seconds a forwarder waits for its peer: to connect (unless the
/// conninfo's connect_timeout says otherwise) and for each answer.
pub static PEER_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(60);
/// Milliseconds of clock skew to a peer at which edgesync.health warns.
pub static MAX_CLOCK_SKEW_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
/// A point in a forwarder's round where it holds still (fault-injection tests).
pub static FAULT_POINT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Milliseconds past the local wall clock a remote clock reading may move
/// this node's clock; a change stamped further ahead is held.
pub static MAX_CLOCK_DRIFT_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);
/// zstd level of batches.
pub static COMPRESSION_LEVEL: GucSetting<i32> = GucSetting::<i32>::new(3);
/// The largest batch payload (after decompression) this node applies, in kB.
pub static MAX_BATCH_SIZE_KB: GucSetting<i32> = GucSetting::<i32>::new(256 * 1024);
/// Seconds the cloud's feed keeps a transaction for pulling edges (a week).
pub static FEED_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);
/// The most the feed may hold, in kB (compressed; 1 GB).
pub static FEED_MAX_SIZE_KB: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
/// Seconds an edge may go unheard on the cloud before edgesync.health warns (an hour).
pub static EDGE_SILENCE_WARNING: GucSetting<i32> = GucSetting::<i32>::new(3600);

/// Define every `edgesync.*` setting (at library load).
pub fn define() {
    define_forwarder_settings();
    define_health_thresholds();
    define_conflict_settings();
    define_clock_drift_bound();
    define_feed_settings();
}

/// Whether the library is being loaded through shared_preload_libraries.
fn preloading() -> bool {
    // SAFETY: a plain bool global of PostgreSQL's, written only by the
    // library loader of this same single-threaded process: reading it cannot race.
    unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress }
}

/// Where the forwarders run, how long they wait, how they compress, and
/// the fault-injection point they stop at.
fn define_forwarder_settings() {
    GucRegistry::define_int_guc(
        c"edgesync.max_batch_size",
        c"The largest batch this node applies, after decompression.",
        c"A batch that claims more is refused before anything is read from it; a peer's max_batch_bytes must stay below it (a larger single transaction is sent whole).",
        &MAX_BATCH_SIZE_KB,
        1024,
        1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    // a server-start setting can only be defined while preloading (and
    // forwarders only run then)
    if preloading() {
        GucRegistry::define_string_guc(
            c"edgesync.database",
            c"The database whose edgesync peers the forwarder workers serve.",
            c"One database per cluster runs forwarders; create the extension and the peers there.",
            &DATABASE,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_string_guc(
        c"edgesync.fault_point",
        c"For fault-injection tests: a point where forwarders or the feed worker hold still.",
        c"Leave empty in production. before_send, before_advance, pull_before_apply, pull_after_apply: forwarders (state held); feed_before_write, feed_before_advance: the feed worker. Each waits there until the setting changes.",
        &FAULT_POINT,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"edgesync.peer_timeout",
        c"How long a forwarder waits for its peer to connect or to answer.",
        c"A connect_timeout in the peer's conninfo takes precedence for connecting.",
        &PEER_TIMEOUT,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"edgesync.compression_level",
        c"zstd level of the batches a forwarder sends.",
        c"Higher levels save bandwidth for CPU on the sending node; 0 means zstd's default.",
        &COMPRESSION_LEVEL,
        -7,
        19,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

/// The levels at which `edgesync.health` warns or turns critical: per
/// session (`USERSET`), see the module note.
fn define_health_thresholds() {
    GucRegistry::define_int_guc(
        c"edgesync.max_clock_skew",
        c"Clock difference to a peer at which edgesync.health reports a warning.",
        c"Measured by each forwarder when it connects.",
        &MAX_CLOCK_SKEW_MS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    define_lag_bytes_thresholds();
    define_lag_seconds_thresholds();
}

fn define_lag_bytes_thresholds() {
    GucRegistry::define_int_guc(
        c"edgesync.lag_warning_bytes",
        c"Replication lag or retained WAL at which edgesync.health reports a warning.",
        c"Applies to standby replay lag, subscription walsender lag and WAL retained by replication slots.",
        &LAG_WARNING_BYTES,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"edgesync.lag_critical_bytes",
        c"Replication lag or retained WAL at which edgesync.health reports critical.",
        c"An inactive replication slot retaining this much WAL puts the disk at risk.",
        &LAG_CRITICAL_BYTES,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_KB,
    );
}

fn define_lag_seconds_thresholds() {
    GucRegistry::define_int_guc(
        c"edgesync.lag_warning_seconds",
        c"Replication delay at which edgesync.health reports a warning.",
        c"Applies to standby write/flush/replay lag, standby replay delay and time since a subscription last heard from its publisher.",
        &LAG_WARNING_SECONDS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"edgesync.lag_critical_seconds",
        c"Replication delay at which edgesync.health reports critical.",
        c"",
        &LAG_CRITICAL_SECONDS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
}

/// How conflicts are decided: how long deletes win, and the clock that
/// stamps row versions.
fn define_conflict_settings() {
    GucRegistry::define_int_guc(
        c"edgesync.tombstone_retention",
        c"How long a deleted row's tombstone is kept.",
        c"A remote change older than a delete loses to it while the tombstone lasts; keep it longer than the longest expected outage.",
        &TOMBSTONE_RETENTION,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"edgesync.clock_offset",
        c"Offset added to the wall clock that row versions are read from.",
        c"For tests and for nodes with a known clock error. The hybrid logical clock stays monotonic whatever this is set to.",
        &CLOCK_OFFSET_MS,
        -86_400_000,
        86_400_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
}

/// The same for every backend (`SIGHUP`): a session must not widen what
/// its own apply lets into the clock.
fn define_clock_drift_bound() {
    GucRegistry::define_int_guc(
        c"edgesync.max_clock_drift",
        c"How far past the wall clock a remote row version may move this node's clock.",
        c"A remote change stamped further ahead is held as a pending clock_drift conflict and the clock does not follow it.",
        &MAX_CLOCK_DRIFT_MS,
        1000,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
}

/// The feed's retention, read by the feed worker (`SIGHUP`): an edge
/// offline longer than it, or behind by more than the size, resyncs; and
/// how long the cloud lets an edge go unheard before health warns.
fn define_feed_settings() {
    GucRegistry::define_int_guc(
        c"edgesync.feed_retention",
        c"How long the cloud's change feed keeps a transaction for the edges that pull it.",
        c"An edge whose position is older than what the feed keeps must resync.",
        &FEED_RETENTION,
        60,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"edgesync.feed_max_size",
        c"The most the cloud's change feed may hold (compressed); the oldest transactions go first.",
        c"An edge whose position is older than what the feed keeps must resync.",
        &FEED_MAX_SIZE_KB,
        1024,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    // the same for every reader: how long an edge may be away is the
    // site's decision, not one monitoring session's
    GucRegistry::define_int_guc(
        c"edgesync.edge_silence_warning",
        c"How long the cloud may go without hearing from an edge (push, pull or hello) before edgesync.health warns.",
        c"Four times this is critical. Set it above the longest quiet spell of edges that sync in batch or on demand.",
        &EDGE_SILENCE_WARNING,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

/// The thresholds in force in this session, in bytes and seconds.
pub fn thresholds() -> Thresholds {
    Thresholds {
        warning_bytes: LAG_WARNING_BYTES.get() as f64 * 1024.0,
        critical_bytes: LAG_CRITICAL_BYTES.get() as f64 * 1024.0,
        warning_seconds: LAG_WARNING_SECONDS.get() as f64,
        critical_seconds: LAG_CRITICAL_SECONDS.get() as f64,
    }
}

/// How long a setting made by [`set_for`] lasts.
#[derive(Clone, Copy)]
pub enum Scope {
    /// Until the current GUC nest level is popped (`AtEOXact_GUC`).
    NestLevel,
    /// Until the end of the current transaction, like `SET LOCAL`.
    Transaction,
    /// For the rest of the session, like `SET` (once its transaction commits).
    Session,
}

/// Set a server setting for a while, as a session would with `SET` (a
/// refused value raises an ERROR).
pub fn set_for(scope: Scope, name: &std::ffi::CStr, value: &std::ffi::CStr) {
    let action = match scope {
        Scope::NestLevel => pg_sys::GucAction::GUC_ACTION_SAVE,
        Scope::Transaction => pg_sys::GucAction::GUC_ACTION_LOCAL,
        Scope::Session => pg_sys::GucAction::GUC_ACTION_SET,
    };
    // SAFETY: name and value are NUL-terminated and outlive the call (the
    // GUC machinery copies them); called in a backend inside a transaction;
    // with elevel ERROR a refused setting raises instead of returning.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            pgrx::PgLogLevel::ERROR as i32,
            false,
        );
    }
}

/// Whether `edgesync.fault_point` names `point` (fault-injection tests).
pub fn fault_point_is(point: &str) -> bool {
    FAULT_POINT.get().is_some_and(|p| p.to_bytes() == point.as_bytes())
}

/// `edgesync.max_batch_size` in bytes.
pub fn max_batch_size() -> usize {
    MAX_BATCH_SIZE_KB.get().max(1) as usize * 1024
}

/// The settings that change how a value prints as text or reads back from
/// it, at the values PostgreSQL's own logical replication uses (its
/// walreceiver connects with DateStyle ISO, IntervalStyle postgres and
/// extra_float_digits 3), the others at their defaults, spelled out.
pub(crate) const VALUE_TEXT_SETTINGS: [(&std::ffi::CStr, &std::ffi::CStr); 7] = [
    (c"DateStyle", c"ISO"),
    (c"IntervalStyle", c"postgres"),
    // the fewest digits that read back as the same float
    (c"extra_float_digits", c"3"),
    (c"bytea_output", c"hex"),
    // money prints and reads by the locale's rules: the same on both sides
    (c"lc_monetary", c"C"),
    (c"xmloption", c"content"),
    // timestamptz prints with its offset and reads back anywhere; explicit all the same
    (c"TimeZone", c"UTC"),
];

/// Pin, for `scope`, every setting that changes a value's text: values
/// travel between nodes as text, printed by one node and read by another,
/// whatever a database or role default says on either.
pub fn pin_value_text(scope: Scope) {
    for (name, value) in VALUE_TEXT_SETTINGS {
        set_for(scope, name, value);
    }
}
