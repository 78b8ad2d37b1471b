//! The judgement behind `edgesync.health`: given what the statistics views
//! report, decide `ok` / `warning` / `critical` for each check.
//!
//! Inputs are plain structs that the glue in `health/checks.rs` fills from the
//! `edgesync.*` views; nothing here reads the database.

use std::fmt;

use crate::model::sync::feed::FEED_SLOT;

/// Outcome of one check. Ordered: `Ok < Warning < Critical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Warning and critical levels for lag, from the `edgesync.lag_*` settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub warning_bytes: f64,
    pub critical_bytes: f64,
    pub warning_seconds: f64,
    pub critical_seconds: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warning_bytes: 64.0 * 1024.0 * 1024.0,
            critical_bytes: 1024.0 * 1024.0 * 1024.0,
            warning_seconds: 60.0,
            critical_seconds: 300.0,
        }
    }
}

/// One row of `edgesync.health`.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub component: &'static str,
    pub object: String,
    pub status: Status,
    pub metric: &'static str,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub detail: String,
}

/// A metric against its warning and critical levels. An unknown value
/// (NULL: nothing measured yet) is not a finding.
pub fn classify(value: Option<f64>, warning: f64, critical: f64) -> Status {
    match value {
        Some(v) if v >= critical => Status::Critical,
        Some(v) if v >= warning => Status::Warning,
        _ => Status::Ok,
    }
}

/// The threshold a status is about: the one crossed, or the warning level when none is.
fn threshold_for(status: Status, warning: f64, critical: f64) -> f64 {
    if status == Status::Critical { critical } else { warning }
}

fn metric_check(
    component: &'static str,
    object: &str,
    metric: &'static str,
    value: Option<f64>,
    warning: f64,
    critical: f64,
    what: &str,
) -> Check {
    let status = classify(value, warning, critical);
    let detail = match (status, value) {
        (_, None) => format!("{what}: not measured"),
        (Status::Ok, Some(v)) => format!("{what} {} is below the warning level {}", show(v), show(warning)),
        (Status::Warning, Some(v)) => format!("{what} {} reached the warning level {}", show(v), show(warning)),
        (Status::Critical, Some(v)) => format!("{what} {} reached the critical level {}", show(v), show(critical)),
    };
    Check {
        component,
        object: object.to_string(),
        status,
        metric,
        value,
        threshold: Some(threshold_for(status, warning, critical)),
        detail,
    }
}

/// A number as a detail shows it: whole numbers without decimals.
pub(super) fn show(v: f64) -> String {
    if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.3}") }
}

/// A standby (or a logical walsender) as seen from its upstream, from `edgesync.streaming_replication`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Standby {
    pub name: String,
    pub kind: String,
    pub state: Option<String>,
    pub replay_lag_bytes: Option<f64>,
    pub replay_lag_seconds: Option<f64>,
}

pub fn standby_checks(s: &Standby, t: &Thresholds) -> Vec<Check> {
    let component = if s.kind == "logical" { "logical_walsender" } else { "streaming_replication" };
    let state = s.state.clone().unwrap_or_default();
    let state_status = match state.as_str() {
        "streaming" => Status::Ok,
        // catching up or starting: transient, worth a look if it lasts
        "catchup" | "startup" | "backup" => Status::Warning,
        _ => Status::Critical,
    };
    vec![
        Check {
            component,
            object: s.name.clone(),
            status: state_status,
            metric: "state",
            value: None,
            threshold: None,
            detail: format!("walsender state is {state:?}"),
        },
        metric_check(component, &s.name, "replay_lag_bytes", s.replay_lag_bytes, t.warning_bytes, t.critical_bytes, "replay lag (bytes)"),
        metric_check(component, &s.name, "replay_lag_seconds", s.replay_lag_seconds, t.warning_seconds, t.critical_seconds, "replay lag (seconds)"),
    ]
}

/// This node's WAL receiver, from `edgesync.wal_receiver` (only on a standby).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WalReceiver {
    pub sender: String,
    pub status: String,
    pub replay_delay_seconds: Option<f64>,
}

pub fn wal_receiver_checks(w: &WalReceiver, t: &Thresholds) -> Vec<Check> {
    let status = if w.status == "streaming" { Status::Ok } else { Status::Critical };
    vec![
        Check {
            component: "wal_receiver",
            object: w.sender.clone(),
            status,
            metric: "status",
            value: None,
            threshold: None,
            detail: if status == Status::Ok {
                "receiving WAL from the primary".to_string()
            } else {
                format!("WAL receiver is {:?}: this standby is not connected to its primary", w.status)
            },
        },
        metric_check("wal_receiver", &w.sender, "replay_delay_seconds", w.replay_delay_seconds, t.warning_seconds, t.critical_seconds, "replay delay (seconds)"),
    ]
}

/// A replication slot, from `edgesync.replication_slots`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slot {
    pub name: String,
    pub slot_type: String,
    pub active: bool,
    pub retained_wal_bytes: Option<f64>,
    pub wal_status: Option<String>,
    pub inactive_seconds: Option<f64>,
    /// Read in rounds by one of edgesync's own workers, so inactive
    /// between them: a peer's slot (its forwarder's; the peer checks judge
    /// it), or the cloud's feed slot while edges are registered (the feed
    /// worker's; the edge checks and `diagnose()` judge it).
    pub peer_slot: bool,
}

pub fn slot_checks(s: &Slot, t: &Thresholds) -> Vec<Check> {
    let consumer = if s.slot_type == "physical" { "standby" } else { "subscriber" };
    let connected = if s.peer_slot { peer_slot_check(s) } else { connected_check(s, consumer) };
    let mut retained = metric_check(
        "replication_slot",
        &s.name,
        "retained_wal_bytes",
        s.retained_wal_bytes,
        t.warning_bytes,
        t.critical_bytes,
        "WAL retained (bytes)",
    );
    if !s.active && !s.peer_slot && retained.status == Status::Critical {
        retained.detail.push_str("; the slot is inactive: the disk is at risk");
    }
    vec![connected, retained, wal_status_check(s)]
}

/// A peer's slot is read by its forwarder, and the feed slot by the feed
/// worker, a peek at a time: being inactive between peeks is their normal
/// state, not a downstream gone.
fn peer_slot_check(s: &Slot) -> Check {
    let detail = if s.name == FEED_SLOT {
        "read by edgesync's feed worker in rounds: the edge checks say whether edges keep up, edgesync.diagnose() whether the worker runs"
    } else {
        "read by edgesync's forwarder in rounds: its peer's checks say whether it keeps up"
    };
    Check {
        component: "replication_slot",
        object: s.name.clone(),
        status: Status::Ok,
        metric: "inactive_seconds",
        value: if s.active { Some(0.0) } else { s.inactive_seconds },
        threshold: None,
        detail: detail.to_string(),
    }
}

fn connected_check(s: &Slot, consumer: &str) -> Check {
    Check {
        component: "replication_slot",
        object: s.name.clone(),
        // A slot nobody reads is a downstream that is down, and WAL piling up.
        status: if s.active { Status::Ok } else { Status::Critical },
        metric: "inactive_seconds",
        value: if s.active { Some(0.0) } else { s.inactive_seconds },
        threshold: None,
        detail: if s.active {
            format!("its {consumer} is connected")
        } else {
            format!("no {consumer} is connected: the downstream is down or was removed (drop the slot if it is gone for good)")
        },
    }
}

fn wal_status_check(s: &Slot) -> Check {
    let wal_status = s.wal_status.clone().unwrap_or_default();
    Check {
        component: "replication_slot",
        object: s.name.clone(),
        status: match wal_status.as_str() {
            "reserved" | "" => Status::Ok,
            "extended" => Status::Warning,
            _ => Status::Critical, // unreserved, lost
        },
        metric: "wal_status",
        value: None,
        threshold: None,
        detail: match wal_status.as_str() {
            "reserved" | "" => "required WAL is within max_wal_size".to_string(),
            "extended" => "required WAL exceeds max_wal_size but is still kept".to_string(),
            "unreserved" => "required WAL will be removed at the next checkpoint: the slot is about to be lost".to_string(),
            other => format!("wal_status is {other:?}: the slot can no longer be used; recreate the downstream"),
        },
    }
}

/// A native subscription on this node, from `edgesync.subscriptions`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Subscription {
    pub name: String,
    pub enabled: bool,
    pub worker_running: bool,
    pub seconds_since_last_message: Option<f64>,
    pub error_count: i64,
    pub conflict_count: Option<i64>,
}

/// The worker, then (while it runs) the time since the publisher was last
/// heard, then the error count, then the conflict count where the server has one.
pub fn subscription_checks(s: &Subscription, t: &Thresholds) -> Vec<Check> {
    let mut checks = vec![subscription_worker_check(s)];
    if s.enabled && s.worker_running {
        checks.push(metric_check(
            "subscription",
            &s.name,
            "seconds_since_last_message",
            s.seconds_since_last_message,
            t.warning_seconds,
            t.critical_seconds,
            "time since the last message from the publisher (seconds)",
        ));
    }
    checks.push(subscription_errors_check(s));
    checks.extend(s.conflict_count.map(|conflicts| subscription_conflicts_check(s, conflicts)));
    checks
}

fn subscription_worker_check(s: &Subscription) -> Check {
    let (status, detail) = match (s.enabled, s.worker_running) {
        (false, _) => (Status::Warning, "subscription is disabled: no changes are received".to_string()),
        (true, true) => (Status::Ok, "apply worker is running".to_string()),
        (true, false) => (
            Status::Critical,
            "subscription is enabled but no apply worker runs: the publisher is unreachable or apply keeps failing (see the server log)".to_string(),
        ),
    };
    Check {
        component: "subscription",
        object: s.name.clone(),
        status,
        metric: "worker",
        value: None,
        threshold: None,
        detail,
    }
}

fn subscription_errors_check(s: &Subscription) -> Check {
    Check {
        component: "subscription",
        object: s.name.clone(),
        status: if s.error_count > 0 { Status::Warning } else { Status::Ok },
        metric: "error_count",
        value: Some(s.error_count as f64),
        threshold: Some(1.0),
        detail: if s.error_count > 0 {
            "apply or table-sync errors happened (see the server log); reset the counter with pg_stat_reset_subscription_stats(subid)".to_string()
        } else {
            "no apply or table-sync errors".to_string()
        },
    }
}

fn subscription_conflicts_check(s: &Subscription, conflicts: i64) -> Check {
    Check {
        component: "subscription",
        object: s.name.clone(),
        status: if conflicts > 0 { Status::Warning } else { Status::Ok },
        metric: "conflict_count",
        value: Some(conflicts as f64),
        threshold: Some(1.0),
        detail: if conflicts > 0 {
            "the apply worker met conflicts (see edgesync.subscriptions confl_* columns)".to_string()
        } else {
            "no conflicts detected by the apply worker".to_string()
        },
    }
}

/// Conflicts of one table waiting for a DBA (`edgesync.conflicts`).
pub fn pending_conflicts_check(relation: &str, pending: i64, oldest_seconds: Option<f64>) -> Check {
    Check {
        component: "conflicts",
        object: relation.to_string(),
        status: if pending > 0 { Status::Warning } else { Status::Ok },
        metric: "pending",
        value: Some(pending as f64),
        threshold: Some(1.0),
        detail: match oldest_seconds {
            Some(age) if pending > 0 => format!(
                "{pending} conflict(s) wait for a DBA, the oldest for {age:.0} s: see edgesync.conflicts and edgesync.resolve_conflict()"
            ),
            _ => "no pending conflicts".to_string(),
        },
    }
}

/// Changes of one node (`node`: its name, or `node <id>`, as
/// `model::directory::node_label` reads it) held because their versions
/// were further past this node's wall clock than `edgesync.max_clock_drift`
/// (`bound_seconds`): critical, since that node's writes stop arriving
/// until a DBA acts.
pub fn clock_drift_check(node: &str, held: i64, latest_ahead_seconds: f64, bound_seconds: f64) -> Check {
    Check {
        component: "clock",
        object: node.to_string(),
        status: Status::Critical,
        metric: "drift_seconds",
        value: Some(latest_ahead_seconds),
        threshold: Some(bound_seconds),
        detail: format!(
            "{held} changes held from {node}: its latest version was {} s past this node's wall clock, beyond edgesync.max_clock_drift ({} s); \
             fix that node's clock, then settle them (edgesync.conflicts, conflict_type clock_drift)",
            show(latest_ahead_seconds),
            show(bound_seconds)
        ),
    }
}

/// A peer this node pushes to, from `edgesync.peers`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Peer {
    pub name: String,
    pub state: String,
    pub consecutive_failures: i64,
    /// Seconds since the last successful round (None: never succeeded).
    pub since_success_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub pending_bytes: Option<f64>,
    pub lag_seconds: Option<f64>,
    pub clock_skew_seconds: Option<f64>,
}

/// Unreachable for how long, backlog, lag and clock skew of one peer.
/// `max_skew_seconds` (edgesync.max_clock_skew) is the skew warning level;
/// ten times it is critical.
pub fn peer_checks(p: &Peer, t: &Thresholds, max_skew_seconds: f64) -> Vec<Check> {
    let mut checks = Vec::new();
    let (status, detail) = match p.state.as_str() {
        "paused" => (Status::Warning, "paused: changes wait in the replication slot (edgesync.resume_peer)".to_string()),
        "stopped" => (
            Status::Critical,
            "no forwarder runs: is edgesync in shared_preload_libraries and edgesync.database this database? see the server log".to_string(),
        ),
        "resync_needed" => (
            Status::Critical,
            "resync needed: the peer's feed no longer holds this node's position (retention purged it); nothing more arrives from the peer until this node is copied again".to_string(),
        ),
        state => (Status::Ok, format!("forwarder {state}")),
    };
    checks.push(Check { component: "peer", object: p.name.clone(), status, metric: "forwarder", value: None, threshold: None, detail });
    if p.consecutive_failures > 0 {
        let error = p.last_error.clone().unwrap_or_default();
        let mut c = metric_check("peer", &p.name, "unreachable_seconds", p.since_success_seconds, t.warning_seconds, t.critical_seconds, "unreachable for");
        if p.since_success_seconds.is_none() {
            c.status = Status::Warning;
        }
        c.detail = format!("{}; {} failed round(s) in a row, last error: {error}", c.detail, p.consecutive_failures);
        checks.push(c);
    }
    checks.push(metric_check("peer", &p.name, "pending_bytes", p.pending_bytes, t.warning_bytes, t.critical_bytes, "WAL not yet sent"));
    checks.push(metric_check("peer", &p.name, "lag_seconds", p.lag_seconds, t.warning_seconds, t.critical_seconds, "oldest unsent change age"));
    if let Some(skew) = p.clock_skew_seconds {
        let mut c = metric_check("peer", &p.name, "clock_skew_seconds", Some(skew.abs()), max_skew_seconds, max_skew_seconds * 10.0, "clock skew");
        c.value = Some(skew);
        checks.push(c);
    }
    checks
}

/// A peer whose forwarder is stuck on a transaction the peer refuses,
/// from `edgesync.peers` (`blocked_*`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BlockedPeer {
    pub name: String,
    /// The transaction's end LSN, as text.
    pub lsn: String,
    pub tables: String,
    pub error: String,
    pub blocked_seconds: Option<f64>,
}

/// Critical while the peer refuses a transaction: nothing after it moves
/// and the slot holds WAL until a DBA retries or skips it.
pub fn blocked_peer_check(b: &BlockedPeer) -> Check {
    Check {
        component: "peer",
        object: b.name.clone(),
        status: Status::Critical,
        metric: "blocked_seconds",
        value: b.blocked_seconds,
        threshold: None,
        detail: format!(
            "the peer refuses the transaction at {} ({}): {}; fix the cause and run edgesync.sync_now('{}'), or set it aside with edgesync.skip_transaction('{}', '{}')",
            b.lsn, b.tables, b.error, b.name, b.name, b.lsn
        ),
    }
}

/// The row a node with nothing to watch still reports, so that an empty
/// result never reads as "the check did not run".
pub fn nothing_to_check(node: &str) -> Check {
    Check {
        component: "node",
        object: node.to_string(),
        status: Status::Ok,
        metric: "replication_objects",
        value: Some(0.0),
        threshold: None,
        detail: "no standbys, WAL receiver, replication slots or subscriptions on this node".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Thresholds {
        Thresholds { warning_bytes: 100.0, critical_bytes: 1000.0, warning_seconds: 10.0, critical_seconds: 60.0 }
    }

    fn status_of(checks: &[Check], metric: &str) -> Status {
        checks.iter().find(|c| c.metric == metric).unwrap_or_else(|| panic!("no {metric}")).status
    }

    #[test]
    fn classify_edges() {
        assert_eq!(classify(None, 1.0, 2.0), Status::Ok);
        assert_eq!(classify(Some(0.99), 1.0, 2.0), Status::Ok);
        assert_eq!(classify(Some(1.0), 1.0, 2.0), Status::Warning);
        assert_eq!(classify(Some(2.0), 1.0, 2.0), Status::Critical);
        assert!(Status::Ok < Status::Warning && Status::Warning < Status::Critical);
    }

    #[test]
    fn statuses_read_as_the_health_view_shows_them() {
        for (s, name) in [(Status::Ok, "ok"), (Status::Warning, "warning"), (Status::Critical, "critical")] {
            assert_eq!(s.as_str(), name);
            assert_eq!(s.to_string(), name);
        }
    }

    #[test]
    fn details_show_the_value_and_the_level() {
        let s = Standby { name: "s1".into(), kind: "physical".into(), state: Some("streaming".into()), replay_lag_bytes: Some(500.0), replay_lag_seconds: Some(0.25) };
        let c = standby_checks(&s, &t());
        assert_eq!(c[0].status, Status::Ok, "streaming is the healthy state");
        assert_eq!(c[0].detail, "walsender state is \"streaming\"");
        assert_eq!(c[1].detail, "replay lag (bytes) 500 reached the warning level 100");
        assert_eq!(c[2].detail, "replay lag (seconds) 0.250 is below the warning level 10");
        let c = standby_checks(&Standby { replay_lag_bytes: Some(5000.0), replay_lag_seconds: None, ..s }, &t());
        assert_eq!(c[1].detail, "replay lag (bytes) 5000 reached the critical level 1000");
        assert_eq!(c[2].detail, "replay lag (seconds): not measured");
    }

    #[test]
    fn standby_lag_moves_through_levels() {
        let mut s = Standby { name: "s1".into(), kind: "physical".into(), state: Some("streaming".into()), ..Default::default() };
        s.replay_lag_bytes = Some(50.0);
        let c = standby_checks(&s, &t());
        assert_eq!(status_of(&c, "replay_lag_bytes"), Status::Ok);
        assert_eq!(c[1].threshold, Some(100.0));
        s.replay_lag_bytes = Some(500.0);
        assert_eq!(status_of(&standby_checks(&s, &t()), "replay_lag_bytes"), Status::Warning);
        s.replay_lag_bytes = Some(5000.0);
        let c = standby_checks(&s, &t());
        assert_eq!(status_of(&c, "replay_lag_bytes"), Status::Critical);
        assert_eq!(c[1].threshold, Some(1000.0));
        s.replay_lag_seconds = Some(61.0);
        assert_eq!(status_of(&standby_checks(&s, &t()), "replay_lag_seconds"), Status::Critical);
        s.state = Some("catchup".into());
        assert_eq!(status_of(&standby_checks(&s, &t()), "state"), Status::Warning);
        s.state = Some("stopping".into());
        assert_eq!(status_of(&standby_checks(&s, &t()), "state"), Status::Critical);
        s.kind = "logical".into();
        assert_eq!(standby_checks(&s, &t())[0].component, "logical_walsender");
    }

    #[test]
    fn inactive_slot_is_critical_and_its_wal_is_judged() {
        let mut s = Slot {
            name: "sb".into(),
            slot_type: "physical".into(),
            active: true,
            retained_wal_bytes: Some(10.0),
            wal_status: Some("reserved".into()),
            inactive_seconds: None,
            peer_slot: false,
        };
        assert!(slot_checks(&s, &t()).iter().all(|c| c.status == Status::Ok));
        s.active = false;
        let c = slot_checks(&s, &t());
        assert_eq!(status_of(&c, "inactive_seconds"), Status::Critical);
        assert_eq!(status_of(&c, "retained_wal_bytes"), Status::Ok);
        s.retained_wal_bytes = Some(2000.0);
        let c = slot_checks(&s, &t());
        assert_eq!(status_of(&c, "retained_wal_bytes"), Status::Critical);
        assert!(c[1].detail.contains("disk is at risk"));
        // the disk is at risk only when both: inactive, and the retained WAL critical
        s.active = true;
        assert!(!slot_checks(&s, &t())[1].detail.contains("disk is at risk"), "a consumer is reading");
        s.active = false;
        s.retained_wal_bytes = Some(10.0);
        assert!(!slot_checks(&s, &t())[1].detail.contains("disk is at risk"), "little WAL retained");
        // who the consumer is, by the slot's type
        assert!(slot_checks(&s, &t())[0].detail.starts_with("no standby is connected"));
        s.slot_type = "logical".into();
        assert!(slot_checks(&s, &t())[0].detail.starts_with("no subscriber is connected"));
        s.active = true;
        assert_eq!(slot_checks(&s, &t())[0].detail, "its subscriber is connected");
        s.slot_type = "physical".into();
        assert_eq!(slot_checks(&s, &t())[0].detail, "its standby is connected");
        for (ws, want) in [("extended", Status::Warning), ("unreserved", Status::Critical), ("lost", Status::Critical)] {
            s.wal_status = Some(ws.into());
            assert_eq!(status_of(&slot_checks(&s, &t()), "wal_status"), want, "{ws}");
        }
    }

    #[test]
    fn a_peer_slot_between_peeks_is_not_a_downstream_gone() {
        let mut s = Slot {
            name: "edgesync_cloud".into(),
            slot_type: "logical".into(),
            active: false,
            retained_wal_bytes: Some(2000.0),
            wal_status: Some("lost".into()),
            inactive_seconds: Some(3.0),
            peer_slot: true,
        };
        let c = slot_checks(&s, &t());
        assert_eq!((status_of(&c, "inactive_seconds"), c[0].value), (Status::Ok, Some(3.0)), "its forwarder reads it in rounds");
        assert!(c[0].detail.contains("forwarder"));
        // its WAL is judged as any slot's
        assert_eq!(status_of(&c, "retained_wal_bytes"), Status::Critical);
        assert!(!c[1].detail.contains("disk is at risk"));
        assert_eq!(status_of(&c, "wal_status"), Status::Critical);
        s.peer_slot = false;
        assert_eq!(status_of(&slot_checks(&s, &t()), "inactive_seconds"), Status::Critical);
    }

    #[test]
    fn the_feed_slot_between_the_feed_workers_reads_is_not_a_downstream_gone() {
        let mut s = Slot {
            name: FEED_SLOT.into(),
            slot_type: "logical".into(),
            active: false,
            retained_wal_bytes: Some(10.0),
            wal_status: Some("reserved".into()),
            inactive_seconds: Some(0.2),
            peer_slot: true,
        };
        let c = slot_checks(&s, &t());
        assert!(c.iter().all(|c| c.status == Status::Ok), "{c:?}");
        assert!(c[0].detail.starts_with("read by edgesync's feed worker in rounds"), "{}", c[0].detail);
        // with no edge registered it is judged as any slot (the glue says
        // so): nobody reads it
        s.peer_slot = false;
        assert_eq!(status_of(&slot_checks(&s, &t()), "inactive_seconds"), Status::Critical);
    }

    #[test]
    fn subscription_states() {
        let mut s = Subscription { name: "sub".into(), enabled: true, worker_running: true, seconds_since_last_message: Some(1.0), error_count: 0, conflict_count: Some(0) };
        let c = subscription_checks(&s, &t());
        assert!(c.iter().all(|c| c.status == Status::Ok), "{c:?}");
        assert_eq!(c.len(), 4);
        s.worker_running = false;
        let c = subscription_checks(&s, &t());
        assert_eq!(status_of(&c, "worker"), Status::Critical);
        assert!(c.iter().all(|c| c.metric != "seconds_since_last_message"));
        s.enabled = false;
        assert_eq!(status_of(&subscription_checks(&s, &t()), "worker"), Status::Warning);
        s.enabled = true;
        s.worker_running = true;
        s.seconds_since_last_message = Some(30.0);
        s.error_count = 2;
        s.conflict_count = None;
        let c = subscription_checks(&s, &t());
        assert_eq!(status_of(&c, "seconds_since_last_message"), Status::Warning);
        assert_eq!(status_of(&c, "error_count"), Status::Warning);
        assert_eq!(c.len(), 3, "no conflict row when the server has no counters");
    }

    #[test]
    fn subscription_errors_and_conflicts_warn_when_any() {
        let mut s = Subscription { name: "sub".into(), enabled: true, worker_running: true, seconds_since_last_message: Some(1.0), error_count: 0, conflict_count: Some(0) };
        let by = |s: &Subscription, m: &str| subscription_checks(s, &t()).into_iter().find(|c| c.metric == m).unwrap();
        assert_eq!(by(&s, "error_count").detail, "no apply or table-sync errors");
        assert_eq!((by(&s, "conflict_count").status, by(&s, "conflict_count").detail), (Status::Ok, "no conflicts detected by the apply worker".to_string()));
        s.error_count = 1;
        s.conflict_count = Some(3);
        assert!(by(&s, "error_count").detail.starts_with("apply or table-sync errors happened"));
        let c = by(&s, "conflict_count");
        assert_eq!((c.status, c.value), (Status::Warning, Some(3.0)));
        assert!(c.detail.starts_with("the apply worker met conflicts"), "{}", c.detail);
    }

    #[test]
    fn pending_conflicts_warn() {
        let c = pending_conflicts_check("public.inventory", 2, Some(30.0));
        assert_eq!(c.status, Status::Warning);
        assert!(c.detail.contains("resolve_conflict"));
        assert_eq!(pending_conflicts_check("public.inventory", 0, None).status, Status::Ok);
        assert_eq!(c.detail, "2 conflict(s) wait for a DBA, the oldest for 30 s: see edgesync.conflicts and edgesync.resolve_conflict()");
        // none pending: whatever age is passed, nothing waits
        assert_eq!(pending_conflicts_check("public.inventory", 0, Some(30.0)).detail, "no pending conflicts");
    }

    #[test]
    fn held_clock_drift_is_critical_and_names_the_node() {
        let c = clock_drift_check("store_7", 2, 86_400.5, 60.0);
        assert_eq!((c.component, c.object.as_str(), c.status, c.metric), ("clock", "store_7", Status::Critical, "drift_seconds"));
        assert_eq!((c.value, c.threshold), (Some(86_400.5), Some(60.0)));
        assert!(c.detail.starts_with("2 changes held from store_7: its latest version was 86400.500 s past"), "{}", c.detail);
        assert_eq!(clock_drift_check("node 8", 1, 61.0, 60.0).object, "node 8");
    }

    #[test]
    fn wal_receiver_down_is_critical() {
        let w = WalReceiver { sender: "primary:5432".into(), status: "stopped".into(), replay_delay_seconds: None };
        assert_eq!(status_of(&wal_receiver_checks(&w, &t()), "status"), Status::Critical);
        let w = WalReceiver { status: "streaming".into(), replay_delay_seconds: Some(11.0), ..w };
        let c = wal_receiver_checks(&w, &t());
        assert_eq!(status_of(&c, "status"), Status::Ok);
        assert_eq!(status_of(&c, "replay_delay_seconds"), Status::Warning);
    }

    #[test]
    fn a_peer_whose_feed_purged_this_nodes_position_is_critical() {
        let p = Peer { name: "cloud".into(), state: "resync_needed".into(), ..Peer::default() };
        let c = &peer_checks(&p, &Thresholds::default(), 30.0)[0];
        assert_eq!((c.status, c.metric), (Status::Critical, "forwarder"));
        assert!(c.detail.starts_with("resync needed"), "{}", c.detail);
    }

    #[test]
    fn a_blocked_peer_is_critical_and_says_how_to_get_past() {
        let b = BlockedPeer { name: "cloud".into(), lsn: "0/1A2B3C".into(), tables: "public.readings".into(), error: "check constraint".into(), blocked_seconds: Some(3.0) };
        let c = blocked_peer_check(&b);
        assert_eq!((c.status, c.metric, c.value), (Status::Critical, "blocked_seconds", Some(3.0)));
        for part in ["0/1A2B3C", "public.readings", "check constraint", "edgesync.sync_now('cloud')", "edgesync.skip_transaction('cloud', '0/1A2B3C')"] {
            assert!(c.detail.contains(part), "{part} missing from {}", c.detail);
        }
    }

    #[test]
    fn peers_judged_on_reachability_backlog_lag_and_skew() {
        let healthy = Peer {
            name: "cloud".into(),
            state: "idle".into(),
            since_success_seconds: Some(1.0),
            pending_bytes: Some(0.0),
            lag_seconds: Some(0.0),
            clock_skew_seconds: Some(-0.2),
            ..Default::default()
        };
        let checks = peer_checks(&healthy, &t(), 5.0);
        assert!(checks.iter().all(|c| c.status == Status::Ok), "{checks:?}");
        assert_eq!(checks.len(), 4);

        let down = Peer { consecutive_failures: 3, since_success_seconds: Some(90.0), last_error: Some("connection refused".into()), state: "backoff".into(), ..healthy.clone() };
        let c = peer_checks(&down, &t(), 5.0).into_iter().find(|c| c.metric == "unreachable_seconds").unwrap();
        assert_eq!(c.status, Status::Critical);
        assert!(c.detail.contains("connection refused") && c.detail.contains("3 failed"), "{}", c.detail);
        let never = Peer { since_success_seconds: None, ..down.clone() };
        assert_eq!(peer_checks(&never, &t(), 5.0).into_iter().find(|c| c.metric == "unreachable_seconds").unwrap().status, Status::Warning);

        let behind = Peer { pending_bytes: Some(500.0), lag_seconds: Some(61.0), clock_skew_seconds: Some(-60.0), ..healthy.clone() };
        let by = |m: &str| peer_checks(&behind, &t(), 5.0).into_iter().find(|c| c.metric == m).unwrap();
        assert_eq!(by("pending_bytes").status, Status::Warning);
        assert_eq!(by("lag_seconds").status, Status::Critical);
        assert_eq!(by("clock_skew_seconds").status, Status::Critical, "a clock a minute behind is ten times the limit");
        assert_eq!(by("clock_skew_seconds").value, Some(-60.0), "the sign is kept");
        // warning from the limit, critical from ten times it
        let skewed = |skew: f64| {
            let p = Peer { clock_skew_seconds: Some(skew), ..healthy.clone() };
            peer_checks(&p, &t(), 5.0).into_iter().find(|c| c.metric == "clock_skew_seconds").unwrap()
        };
        assert_eq!(skewed(20.0).status, Status::Warning);
        assert_eq!(skewed(49.9).status, Status::Warning);
        assert_eq!((skewed(50.0).status, skewed(50.0).threshold), (Status::Critical, Some(50.0)));

        assert_eq!(peer_checks(&Peer { state: "stopped".into(), ..healthy.clone() }, &t(), 5.0)[0].status, Status::Critical);
        assert_eq!(peer_checks(&Peer { state: "paused".into(), ..healthy }, &t(), 5.0)[0].status, Status::Warning);
    }
}
