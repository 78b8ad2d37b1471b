//! The `edge` rows of `edgesync.health`, on the cloud: an edge not heard
//! from for long (`silent_seconds`), and one whose pull position the feed's
//! retention has purged past (`feed_position`: it must be copied again).
//!
//! What an edge did is kept in shared memory and lost at a restart
//! (`model::sync::edge_activity`): an edge with nothing recorded is judged
//! silent since the later of the server's start and its registration.

use super::checks::{classify, show, Check, Status};
use crate::model::sync::edge_activity::EDGE_SLOTS;

/// Silence of this many times `edgesync.edge_silence_warning` is critical:
/// long enough past the warning that a brief outage a DBA was warned of
/// does not page anyone, short enough to matter before the feed's
/// retention (a week by default) runs out.
pub const SILENCE_CRITICAL_FACTOR: f64 = 4.0;

/// One registered edge, from `edgesync.edges`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Edge {
    pub name: String,
    /// Seconds since its last push, pull or hello here; None: none
    /// recorded since the server started.
    pub heard_seconds_ago: Option<f64>,
    /// Seconds since the later of the server's start and the edge's
    /// registration: how long it could have been heard from.
    pub watched_seconds: f64,
    /// Nothing is recorded for it and the activity table is full: it is
    /// not tracked, so its silence says nothing.
    pub untracked: bool,
    /// Its pull position (as text), None: no pull recorded.
    pub pull_position: Option<String>,
    /// The feed's purge mark (as text).
    pub purged_through: String,
    /// Its pull position is below the purge mark: resync needed.
    pub beyond_retention: bool,
    /// The feed's head minus its pull position.
    pub behind_bytes: Option<f64>,
}

/// Where the health read runs: a hot standby hears only the pulls it
/// serves, so an edge never heard there is another server's to judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Primary,
    Standby,
}

/// The rows of one edge: its silence (left out on a standby that never
/// heard from it), then its feed position.
pub fn edge_checks(e: &Edge, silence_warning_seconds: f64, server: Server) -> Vec<Check> {
    let mut checks = Vec::new();
    if server == Server::Primary || e.heard_seconds_ago.is_some() {
        checks.push(silence_check(e, silence_warning_seconds));
    }
    checks.push(feed_position_check(e));
    checks
}

fn silence_check(e: &Edge, warning: f64) -> Check {
    let critical = warning * SILENCE_CRITICAL_FACTOR;
    let levels = format!("edgesync.edge_silence_warning {} s, critical at {} s", show(warning), show(critical));
    let check = |status: Status, value: Option<f64>, detail: String| Check {
        component: "edge",
        object: e.name.clone(),
        status,
        metric: "silent_seconds",
        value,
        threshold: Some(if status == Status::Critical { critical } else { warning }),
        detail,
    };
    if e.untracked {
        return check(
            Status::Warning,
            None,
            format!(
                "not tracked: every slot of the edge activity table is taken ({EDGE_SLOTS} edges per server); drop the edges that are gone (edgesync.drop_edge) or restart the server"
            ),
        );
    }
    let silent = e.heard_seconds_ago.unwrap_or(e.watched_seconds);
    let status = classify(Some(silent), warning, critical);
    let heard = match e.heard_seconds_ago {
        Some(s) => format!("last heard from {} s ago (a push, a pull or a hello)", show(s)),
        None => format!("not heard from in {} s, since the server started or the edge was registered (whichever is later)", show(silent)),
    };
    let detail = match status {
        Status::Ok => format!("{heard} ({levels})"),
        _ => format!("{heard}: is the edge or its link down? ({levels})"),
    };
    check(status, Some(silent), detail)
}

fn feed_position_check(e: &Edge) -> Check {
    let (status, detail) = match (&e.pull_position, e.beyond_retention) {
        (None, _) => (Status::Ok, "no pull recorded since the server started".to_string()),
        (Some(p), true) => (
            Status::Critical,
            format!(
                "resync needed: it pulls from {p}, but the feed keeps only what follows {} (edgesync.feed_retention, edgesync.feed_max_size): its pulls are refused until the edge is copied again",
                e.purged_through
            ),
        ),
        (Some(p), false) => {
            (Status::Ok, format!("pulls from {p}, {} bytes behind the feed's head", show(e.behind_bytes.unwrap_or(0.0))))
        }
    };
    Check { component: "edge", object: e.name.clone(), status, metric: "feed_position", value: e.behind_bytes, threshold: None, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(seconds_ago: f64) -> Edge {
        Edge {
            name: "store_1".into(),
            heard_seconds_ago: Some(seconds_ago),
            watched_seconds: 100_000.0,
            pull_position: Some("0/3000100".into()),
            purged_through: "0/2000000".into(),
            behind_bytes: Some(256.0),
            ..Default::default()
        }
    }

    fn by(checks: &[Check], metric: &str) -> Check {
        checks.iter().find(|c| c.metric == metric).unwrap_or_else(|| panic!("no {metric} in {checks:?}")).clone()
    }

    #[test]
    fn silence_moves_from_ok_to_warning_to_critical_at_four_times() {
        let at = |s: f64| by(&edge_checks(&heard(s), 60.0, Server::Primary), "silent_seconds");
        let ok = at(59.0);
        assert_eq!((ok.component, ok.object.as_str(), ok.status, ok.value, ok.threshold), ("edge", "store_1", Status::Ok, Some(59.0), Some(60.0)));
        assert_eq!(ok.detail, "last heard from 59 s ago (a push, a pull or a hello) (edgesync.edge_silence_warning 60 s, critical at 240 s)");
        let warning = at(60.0);
        assert_eq!((warning.status, warning.threshold), (Status::Warning, Some(60.0)));
        assert!(warning.detail.contains("is the edge or its link down?"), "{}", warning.detail);
        assert_eq!(at(239.5).status, Status::Warning);
        let critical = at(240.0);
        assert_eq!((critical.status, critical.threshold), (Status::Critical, Some(240.0)));
    }

    #[test]
    fn an_edge_never_heard_from_is_silent_since_the_start_or_its_registration() {
        let e = Edge { heard_seconds_ago: None, watched_seconds: 90.0, pull_position: None, behind_bytes: None, ..heard(0.0) };
        let c = by(&edge_checks(&e, 60.0, Server::Primary), "silent_seconds");
        assert_eq!((c.status, c.value), (Status::Warning, Some(90.0)));
        assert!(c.detail.starts_with("not heard from in 90 s, since the server started or the edge was registered"), "{}", c.detail);
        let fresh = Edge { watched_seconds: 5.0, ..e.clone() };
        assert_eq!(by(&edge_checks(&fresh, 60.0, Server::Primary), "silent_seconds").status, Status::Ok);
        // what was heard counts, not how long it could have been
        let heard_lately = Edge { heard_seconds_ago: Some(1.0), ..e };
        assert_eq!(by(&edge_checks(&heard_lately, 60.0, Server::Primary), "silent_seconds").value, Some(1.0));
    }

    #[test]
    fn an_untracked_edge_is_a_warning_that_says_why() {
        let e = Edge { heard_seconds_ago: None, untracked: true, ..heard(0.0) };
        let c = by(&edge_checks(&e, 60.0, Server::Primary), "silent_seconds");
        assert_eq!((c.status, c.value), (Status::Warning, None));
        assert!(c.detail.starts_with("not tracked: every slot of the edge activity table is taken"), "{}", c.detail);
    }

    #[test]
    fn a_standby_judges_only_the_edges_it_heard_from() {
        let never = Edge { heard_seconds_ago: None, ..heard(0.0) };
        let rows = edge_checks(&never, 60.0, Server::Standby);
        assert_eq!(rows.iter().map(|c| c.metric).collect::<Vec<_>>(), vec!["feed_position"]);
        let pulls_here = edge_checks(&heard(500.0), 60.0, Server::Standby);
        assert_eq!(by(&pulls_here, "silent_seconds").status, Status::Critical);
        assert_eq!(edge_checks(&never, 60.0, Server::Primary).len(), 2);
    }

    #[test]
    fn a_position_the_feed_no_longer_keeps_is_critical() {
        let behind = Edge { beyond_retention: true, pull_position: Some("0/1000000".into()), ..heard(1.0) };
        let c = by(&edge_checks(&behind, 60.0, Server::Primary), "feed_position");
        assert_eq!((c.status, c.value, c.threshold), (Status::Critical, Some(256.0), None));
        assert!(c.detail.starts_with("resync needed: it pulls from 0/1000000, but the feed keeps only what follows 0/2000000"), "{}", c.detail);
        let within = by(&edge_checks(&heard(1.0), 60.0, Server::Primary), "feed_position");
        assert_eq!((within.status, within.detail.as_str()), (Status::Ok, "pulls from 0/3000100, 256 bytes behind the feed's head"));
        let never_pulled = Edge { pull_position: None, behind_bytes: None, ..heard(1.0) };
        let c = by(&edge_checks(&never_pulled, 60.0, Server::Primary), "feed_position");
        assert_eq!((c.status, c.detail.as_str()), (Status::Ok, "no pull recorded since the server started"));
    }
}
