//! Downstreams that vanish: a standby streaming without a replication slot
//! (or any walsender client) leaves no trace on its upstream once it
//! disconnects, so `edgesync.health` remembers every one it saw and judges
//! how long each has been gone against the lag-seconds thresholds.
//!
//! Nothing here reads the database: the glue in `health/downstreams.rs`
//! hands over what `pg_stat_replication` and `edgesync.downstream` hold.

use super::checks::{classify, Check, Status, Thresholds};

/// Walsender clients that are not downstreams of their own and would be
/// reported missing for good once they end: PostgreSQL's table-sync
/// workers (`pg_<subid>_sync_<relid>_<sysid>`, gone when the copy is done),
/// `pg_basebackup`, and a standby's slot-sync worker (the standby itself is
/// remembered under its own name). An empty name cannot be told apart
/// across reconnections.
pub fn worth_remembering(application_name: &str) -> bool {
    !(application_name.is_empty()
        || application_name == "pg_basebackup"
        || application_name.ends_with("slotsync worker")
        || is_table_sync_worker(application_name))
}

fn is_table_sync_worker(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("pg_") else { return false };
    let parts: Vec<&str> = rest.split('_').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    matches!(parts.as_slice(), [sub, "sync", rel, sys] if digits(sub) && digits(rel) && digits(sys))
}

/// One row of `edgesync.downstream`, with whether it is connected now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RememberedDownstream {
    /// Its `application_name`.
    pub name: String,
    /// `physical` (a standby, pg_receivewal) or `logical` (a subscriber).
    pub kind: String,
    pub slot_name: Option<String>,
    pub client_addr: Option<String>,
    /// When a health check last saw it connected, as text for the message.
    pub last_seen: String,
    pub seconds_since_seen: f64,
    pub connected: bool,
}

impl RememberedDownstream {
    /// "physical standby \"s1\" from 10.0.0.5 (no slot)", for messages.
    fn describe(&self) -> String {
        let what = if self.kind == "logical" { "logical subscriber" } else { "physical standby" };
        let from = self.client_addr.as_deref().unwrap_or("a local socket");
        let slot = match &self.slot_name {
            Some(slot) => format!("slot {slot:?}"),
            None => "no slot".to_string(),
        };
        format!("{what} {:?} from {from} ({slot})", self.name)
    }
}

/// Connected: ok. Gone: how long since it was last seen, against the
/// lag-seconds levels; the message says what it was and how to retire it.
pub fn downstream_check(d: &RememberedDownstream, t: &Thresholds) -> Check {
    let missing = if d.connected { 0.0 } else { d.seconds_since_seen.max(0.0) };
    let status = classify(Some(missing), t.warning_seconds, t.critical_seconds);
    let detail = match status {
        _ if d.connected => format!("{} is connected", d.describe()),
        Status::Ok => format!(
            "{} not connected since {} ({missing:.0} s), below the warning level {:.0} s",
            d.describe(),
            d.last_seen,
            t.warning_seconds
        ),
        _ => format!(
            "{} missing: not connected since {} ({missing:.0} s); if it was retired on purpose, run SELECT edgesync.forget_downstream({})",
            d.describe(),
            d.last_seen,
            sql_literal(&d.name)
        ),
    };
    Check {
        component: "downstream",
        object: d.name.clone(),
        status,
        metric: "missing_seconds",
        value: Some(missing),
        threshold: Some(if status == Status::Critical { t.critical_seconds } else { t.warning_seconds }),
        detail,
    }
}

/// A standby is read-only and its copy of the list belongs to its primary:
/// nothing is remembered or judged there, and the row says so.
pub fn not_tracked_on_a_standby(node: &str) -> Check {
    Check {
        component: "downstream",
        object: node.to_string(),
        status: Status::Ok,
        metric: "tracking",
        value: None,
        threshold: None,
        detail: "this node is a standby: downstreams streaming from it (cascading standbys) are not remembered, \
                 so one that disconnects is not reported here; watch them on the standbys themselves"
            .to_string(),
    }
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Thresholds {
        Thresholds { warning_bytes: 100.0, critical_bytes: 1000.0, warning_seconds: 10.0, critical_seconds: 60.0 }
    }

    fn gone_for(seconds: f64) -> RememberedDownstream {
        RememberedDownstream {
            name: "standby1".into(),
            kind: "physical".into(),
            slot_name: None,
            client_addr: Some("10.0.0.5".into()),
            last_seen: "2025-01-02 03:04:05+00".into(),
            seconds_since_seen: seconds,
            connected: false,
        }
    }

    #[test]
    fn missing_time_moves_through_the_lag_seconds_levels() {
        assert_eq!(downstream_check(&gone_for(0.0), &t()).status, Status::Ok);
        assert_eq!(downstream_check(&gone_for(9.99), &t()).status, Status::Ok);
        assert_eq!(downstream_check(&gone_for(10.0), &t()).status, Status::Warning, "the warning level itself warns");
        assert_eq!(downstream_check(&gone_for(59.99), &t()).status, Status::Warning);
        let c = downstream_check(&gone_for(60.0), &t());
        assert_eq!((c.status, c.threshold, c.value), (Status::Critical, Some(60.0), Some(60.0)));
        assert_eq!(downstream_check(&gone_for(30.0), &t()).threshold, Some(10.0));
    }

    #[test]
    fn a_connected_downstream_is_ok_however_old_its_record() {
        let c = downstream_check(&RememberedDownstream { connected: true, ..gone_for(1e6) }, &t());
        assert_eq!((c.status, c.value), (Status::Ok, Some(0.0)));
        assert_eq!(c.detail, "physical standby \"standby1\" from 10.0.0.5 (no slot) is connected");
    }

    #[test]
    fn a_clock_step_back_never_reads_as_negative_absence() {
        let c = downstream_check(&gone_for(-5.0), &t());
        assert_eq!((c.status, c.value), (Status::Ok, Some(0.0)));
    }

    #[test]
    fn the_message_names_kind_address_slot_last_seen_and_the_way_out() {
        let c = downstream_check(&gone_for(61.0), &t());
        assert_eq!((c.component, c.object.as_str(), c.metric), ("downstream", "standby1", "missing_seconds"));
        assert_eq!(
            c.detail,
            "physical standby \"standby1\" from 10.0.0.5 (no slot) missing: not connected since 2025-01-02 03:04:05+00 (61 s); \
             if it was retired on purpose, run SELECT edgesync.forget_downstream('standby1')"
        );
        let sub = RememberedDownstream { name: "o'sub".into(), kind: "logical".into(), slot_name: Some("o'sub".into()), client_addr: None, ..gone_for(11.0) };
        let c = downstream_check(&sub, &t());
        assert!(c.detail.starts_with("logical subscriber \"o'sub\" from a local socket (slot \"o'sub\") missing"), "{}", c.detail);
        assert!(c.detail.ends_with("forget_downstream('o''sub')"), "the name is quoted as a literal: {}", c.detail);
        assert!(downstream_check(&gone_for(3.0), &t()).detail.ends_with("(3 s), below the warning level 10 s"));
    }

    #[test]
    fn transient_walsender_clients_are_not_remembered() {
        for name in ["standby1", "walreceiver", "readings_sub", "pg_receivewal", "pg_16389_sync", "pg_1_sync_2_x", "pg_a_sync_2_3"] {
            assert!(worth_remembering(name), "{name}");
        }
        for name in ["", "pg_basebackup", "pg_16389_sync_16384_7345209473051926137", "standby1_slotsync worker", "slotsync worker"] {
            assert!(!worth_remembering(name), "{name}");
        }
    }

    #[test]
    fn a_standby_says_it_does_not_track() {
        let c = not_tracked_on_a_standby("postgres");
        assert_eq!((c.component, c.status, c.metric), ("downstream", Status::Ok, "tracking"));
        assert!(c.detail.contains("not remembered"));
    }
}
