//! `edgesync.diagnose()`: check a node's settings for replication and say
//! how to fix each finding. The glue in `health/diagnose.rs` takes a
//! snapshot of the node; this module only reasons about it.

use crate::model::sql_text::{quote_ident, quote_literal};
use crate::model::sync::feed::FEED_SLOT;

/// What `diagnose()` looks at, read from the server in one go.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeSnapshot {
    pub server_version_num: i32,
    pub wal_level: String,
    pub track_commit_timestamp: bool,
    pub shared_preload_libraries: String,
    pub max_replication_slots: i32,
    pub replication_slots_used: i32,
    pub max_wal_senders: i32,
    pub wal_senders_used: i32,
    pub max_logical_replication_workers: i32,
    pub max_worker_processes: i32,
    pub subscriptions_enabled: i32,
    /// `max_slot_wal_keep_size` in MB; -1 means unlimited.
    pub max_slot_wal_keep_size_mb: i64,
    /// `idle_replication_slot_timeout` in seconds (PostgreSQL 18+); None before 18.
    pub idle_replication_slot_timeout_s: Option<i64>,
    pub slots: Vec<SlotSnapshot>,
    pub subscriptions: Vec<SubscriptionSnapshot>,
    /// Retained WAL above which an inactive slot is reported (`edgesync.lag_warning_bytes`).
    pub inactive_slot_warning_bytes: i64,
    /// The cloud's feed, read in the same go.
    pub feed: FeedSnapshot,
}

/// What the cloud's feed needs (`sync/feed.rs`): edges registered here
/// make this node a cloud, whose feed worker decodes its WAL into the feed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeedSnapshot {
    /// The node is a hot standby: it keeps no feed (its primary does).
    pub in_recovery: bool,
    /// Rows of `edgesync.edge`.
    pub edges_registered: i64,
    /// A process of backend type `edgesync feed` runs in this database.
    pub worker_running: bool,
    /// The feed's slot (`edgesync_feed`) exists for this database.
    pub slot_here: bool,
    /// `edgesync.database`; None where edgesync is not preloaded (the
    /// setting is only defined then).
    pub edgesync_database: Option<String>,
    pub current_database: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlotSnapshot {
    pub name: String,
    pub active: bool,
    pub retained_wal_bytes: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscriptionSnapshot {
    pub name: String,
    pub enabled: bool,
    pub worker_running: bool,
    pub error_count: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One row of `diagnose()`.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    /// The setting or the object (`slot:NAME`, `subscription:NAME`) concerned.
    pub subject: String,
    pub finding: String,
    /// SQL that fixes it, ready to run.
    pub fix: String,
}

fn finding(severity: Severity, subject: impl Into<String>, text: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { severity, subject: subject.into(), finding: text.into(), fix: fix.into() }
}

fn alter_system(setting: &str, value: &str) -> String {
    format!("ALTER SYSTEM SET {setting} = {};", quote_literal(value))
}

fn alter_system_and_reload(setting: &str, value: &str) -> String {
    format!("{} SELECT pg_reload_conf();", alter_system(setting, value))
}

/// The headroom kept free for a rising count (one more standby, one more edge).
fn headroom_finding(setting: &str, max: i32, used: i32, what: &str) -> Option<Finding> {
    if max == 0 {
        return Some(finding(
            Severity::Critical,
            setting,
            format!("{setting} is 0: no {what} can be created (restart required after the fix)"),
            alter_system(setting, "10"),
        ));
    }
    if used >= max {
        Some(finding(
            Severity::Critical,
            setting,
            format!("all {max} {what} are in use: a new standby, subscriber or peer will fail (restart required after the fix)"),
            alter_system(setting, &(max * 2).max(10).to_string()),
        ))
    } else if max - used < 2 {
        Some(finding(
            Severity::Warning,
            setting,
            format!("{used} of {max} {what} in use: little headroom left (restart required after the fix)"),
            alter_system(setting, &(max * 2).max(10).to_string()),
        ))
    } else {
        None
    }
}

/// Every finding for this node, most severe first (findings of equal
/// severity keep the order of the rule families below).
pub fn diagnose(n: &NodeSnapshot) -> Vec<Finding> {
    let mut out = Vec::new();
    out.extend(wal_level_finding(n));
    out.extend(preload_finding(n));
    out.extend(commit_timestamp_finding(n));
    out.extend(headroom_findings(n));
    out.extend(slot_retention_findings(n));
    out.extend(inactive_slot_findings(n));
    out.extend(subscription_findings(n));
    out.extend(feed_findings(n));
    out.sort_by_key(|f| f.severity);
    out
}

fn wal_level_finding(n: &NodeSnapshot) -> Option<Finding> {
    (n.wal_level != "logical").then(|| {
        finding(
            Severity::Critical,
            "wal_level",
            format!(
                "wal_level is {:?}: logical decoding, native logical replication and edgesync need 'logical' (restart required after the fix)",
                n.wal_level
            ),
            alter_system("wal_level", "logical"),
        )
    })
}

fn preload_finding(n: &NodeSnapshot) -> Option<Finding> {
    if preloaded(n) {
        return None;
    }
    Some(finding(
        Severity::Warning,
        "shared_preload_libraries",
        "edgesync is not in shared_preload_libraries: its background workers and shared clock cannot start (restart required after the fix)",
        preload_fix(n),
    ))
}

fn preloaded(n: &NodeSnapshot) -> bool {
    n.shared_preload_libraries
        .split(',')
        .map(|l| l.trim().trim_matches('"'))
        .any(|l| l == "edgesync" || l.ends_with("/edgesync") || l == "edgesync.so")
}

/// The fix extends the list already set: other preloaded libraries stay.
fn preload_fix(n: &NodeSnapshot) -> String {
    let mut libs: Vec<&str> = n.shared_preload_libraries.split(',').map(str::trim).filter(|l| !l.is_empty()).collect();
    libs.push("edgesync");
    alter_system("shared_preload_libraries", &libs.join(","))
}

/// A warning from 18 on, where the subscriber's own conflict detection needs
/// commit times; before that only information.
fn commit_timestamp_finding(n: &NodeSnapshot) -> Option<Finding> {
    if n.track_commit_timestamp {
        return None;
    }
    Some(if n.server_version_num >= 180000 {
        finding(
            Severity::Warning,
            "track_commit_timestamp",
            "track_commit_timestamp is off: PostgreSQL 18's own conflict detection on a subscriber (update_origin_differs, delete_origin_differs) needs it (restart required after the fix)",
            alter_system("track_commit_timestamp", "on"),
        )
    } else {
        finding(
            Severity::Info,
            "track_commit_timestamp",
            "track_commit_timestamp is off: commit times of replicated rows are not recorded (restart required after the fix)",
            alter_system("track_commit_timestamp", "on"),
        )
    })
}

/// Slots, WAL senders and, when subscriptions run, apply workers and the
/// worker processes they are taken from.
fn headroom_findings(n: &NodeSnapshot) -> Vec<Finding> {
    let mut out = Vec::new();
    out.extend(headroom_finding("max_replication_slots", n.max_replication_slots, n.replication_slots_used, "replication slots"));
    out.extend(headroom_finding("max_wal_senders", n.max_wal_senders, n.wal_senders_used, "WAL senders"));
    if n.subscriptions_enabled > 0 {
        out.extend(headroom_finding(
            "max_logical_replication_workers",
            n.max_logical_replication_workers,
            n.subscriptions_enabled,
            "logical replication workers",
        ));
        out.extend(worker_processes_finding(n));
    }
    out
}

fn worker_processes_finding(n: &NodeSnapshot) -> Option<Finding> {
    (n.max_worker_processes < n.max_logical_replication_workers + 2).then(|| {
        finding(
            Severity::Warning,
            "max_worker_processes",
            format!(
                "max_worker_processes ({}) leaves no room beside max_logical_replication_workers ({}) for the launchers and edgesync's workers (restart required after the fix)",
                n.max_worker_processes, n.max_logical_replication_workers
            ),
            alter_system("max_worker_processes", &(n.max_logical_replication_workers + 8).to_string()),
        )
    })
}

/// Limits on the WAL that slots may hold, worth setting once slots exist.
fn slot_retention_findings(n: &NodeSnapshot) -> Vec<Finding> {
    let mut out = Vec::new();
    if !n.slots.is_empty() && n.max_slot_wal_keep_size_mb < 0 {
        out.push(finding(
            Severity::Warning,
            "max_slot_wal_keep_size",
            format!(
                "{} replication slot(s) exist and max_slot_wal_keep_size is unlimited: a downstream that stays away can fill the disk",
                n.slots.len()
            ),
            alter_system_and_reload("max_slot_wal_keep_size", "10GB"),
        ));
    }
    if n.idle_replication_slot_timeout_s == Some(0) && !n.slots.is_empty() {
        out.push(finding(
            Severity::Info,
            "idle_replication_slot_timeout",
            "idle_replication_slot_timeout is off: slots of downstreams that never come back are kept until dropped by hand",
            alter_system_and_reload("idle_replication_slot_timeout", "2d"),
        ));
    }
    out
}

/// Inactive slots holding at least the warning level of WAL. The feed's
/// slot is left to the feed rules: it is inactive between the feed
/// worker's reads, and dropping it while edges are registered would lose
/// their changes.
fn inactive_slot_findings(n: &NodeSnapshot) -> Vec<Finding> {
    n.slots
        .iter()
        .filter(|s| !s.active && s.name != FEED_SLOT)
        .filter_map(|slot| {
            let retained = slot.retained_wal_bytes.unwrap_or(0);
            (retained >= n.inactive_slot_warning_bytes).then(|| {
                finding(
                    Severity::Warning,
                    format!("slot:{}", slot.name),
                    format!(
                        "inactive replication slot {:?} retains {retained} bytes of WAL: reconnect its consumer, or drop it if that is gone for good",
                        slot.name
                    ),
                    format!("SELECT pg_drop_replication_slot({});", quote_literal(&slot.name)),
                )
            })
        })
        .collect()
}

/// Per subscription: its worker state first, then its error count.
fn subscription_findings(n: &NodeSnapshot) -> Vec<Finding> {
    n.subscriptions
        .iter()
        .flat_map(|sub| subscription_worker_finding(sub).into_iter().chain(subscription_errors_finding(sub)))
        .collect()
}

fn subscription_worker_finding(sub: &SubscriptionSnapshot) -> Option<Finding> {
    let subject = format!("subscription:{}", sub.name);
    if !sub.enabled {
        Some(finding(
            Severity::Warning,
            subject,
            format!("subscription {:?} is disabled: it receives nothing", sub.name),
            format!("ALTER SUBSCRIPTION {} ENABLE;", quote_ident(&sub.name)),
        ))
    } else if !sub.worker_running {
        Some(finding(
            Severity::Critical,
            subject,
            format!("subscription {:?} is enabled but has no apply worker: the publisher is unreachable or apply fails (see the server log)", sub.name),
            format!("ALTER SUBSCRIPTION {0} DISABLE; ALTER SUBSCRIPTION {0} ENABLE;", quote_ident(&sub.name)),
        ))
    } else {
        None
    }
}

fn subscription_errors_finding(sub: &SubscriptionSnapshot) -> Option<Finding> {
    (sub.error_count > 0).then(|| {
        finding(
            Severity::Warning,
            format!("subscription:{}", sub.name),
            format!("subscription {:?} had {} apply or sync error(s) (see the server log)", sub.name, sub.error_count),
            format!(
                "SELECT pg_stat_reset_subscription_stats(oid) FROM pg_subscription WHERE subname = {};",
                quote_literal(&sub.name)
            ),
        )
    })
}

/// The cloud's feed: with edges registered, a feed worker must run and
/// decode this node's WAL; with none, its slot must not stay behind. A
/// standby has no feed of its own: its primary's `diagnose()` judges it.
fn feed_findings(n: &NodeSnapshot) -> Vec<Finding> {
    let feed = &n.feed;
    if feed.in_recovery {
        return Vec::new();
    }
    if feed.edges_registered == 0 {
        return left_feed_slot_finding(feed).into_iter().collect();
    }
    let mut out = Vec::new();
    if n.wal_level != "logical" {
        out.push(finding(
            Severity::Critical,
            "feed",
            format!(
                "{} edge(s) are registered but wal_level is {:?}: the feed worker cannot decode this node's WAL, so edges pull nothing (restart required after the fix)",
                feed.edges_registered, n.wal_level
            ),
            alter_system("wal_level", "logical"),
        ));
    }
    out.extend(feed_worker_finding(n));
    out
}

/// Edges are registered and no feed worker runs: say why, from what is
/// known (not preloaded, another database named, or the server log).
fn feed_worker_finding(n: &NodeSnapshot) -> Option<Finding> {
    let feed = &n.feed;
    if feed.worker_running {
        return None;
    }
    let edges = format!("{} edge(s) are registered but no feed worker runs for this database, so edges pull nothing", feed.edges_registered);
    let (why, fix) = if !preloaded(n) {
        ("edgesync is not in shared_preload_libraries".to_string(), preload_fix(n))
    } else if feed.edgesync_database.as_deref() != Some(feed.current_database.as_str()) {
        (
            format!(
                "the feed worker runs in the database named by edgesync.database ({}), not in this one ({})",
                feed.edgesync_database.as_deref().unwrap_or("unset"),
                feed.current_database
            ),
            alter_system("edgesync.database", &feed.current_database),
        )
    } else {
        (
            "the launcher starts it within seconds of a registration, so the server log says why it did not: most often no background worker slot was free".to_string(),
            alter_system("max_worker_processes", &(n.max_worker_processes + 8).to_string()),
        )
    };
    Some(finding(Severity::Critical, "feed", format!("{edges}: {why} (restart required after the fix)"), fix))
}

/// The feed worker drops its slot once no edge is registered; a slot left
/// while it does not run holds WAL for nobody.
fn left_feed_slot_finding(feed: &FeedSnapshot) -> Option<Finding> {
    (feed.slot_here && !feed.worker_running).then(|| {
        finding(
            Severity::Warning,
            format!("slot:{FEED_SLOT}"),
            format!(
                "the feed's replication slot {FEED_SLOT:?} is left with no edge registered: it holds WAL for nobody (the feed worker drops it after the last edge goes, and did not run since)"
            ),
            format!("SELECT pg_drop_replication_slot({});", quote_literal(FEED_SLOT)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> NodeSnapshot {
        NodeSnapshot {
            server_version_num: 180006,
            wal_level: "logical".into(),
            track_commit_timestamp: true,
            shared_preload_libraries: "edgesync".into(),
            max_replication_slots: 10,
            replication_slots_used: 1,
            max_wal_senders: 10,
            wal_senders_used: 1,
            max_logical_replication_workers: 4,
            max_worker_processes: 8,
            subscriptions_enabled: 1,
            max_slot_wal_keep_size_mb: 10240,
            idle_replication_slot_timeout_s: Some(3600),
            slots: vec![SlotSnapshot { name: "s".into(), active: true, retained_wal_bytes: Some(100) }],
            subscriptions: vec![SubscriptionSnapshot { name: "sub".into(), enabled: true, worker_running: true, error_count: 0 }],
            inactive_slot_warning_bytes: 1024,
            feed: FeedSnapshot::default(),
        }
    }

    /// A cloud with its feed running.
    fn cloud() -> NodeSnapshot {
        let feed = FeedSnapshot {
            in_recovery: false,
            edges_registered: 2,
            worker_running: true,
            slot_here: true,
            edgesync_database: Some("iot".into()),
            current_database: "iot".into(),
        };
        let mut n = NodeSnapshot { feed, ..healthy() };
        n.slots.push(SlotSnapshot { name: FEED_SLOT.into(), active: false, retained_wal_bytes: Some(1 << 30) });
        n
    }

    fn subjects(n: &NodeSnapshot) -> Vec<String> {
        diagnose(n).into_iter().map(|f| f.subject).collect()
    }

    #[test]
    fn healthy_node_has_no_findings() {
        assert!(diagnose(&healthy()).is_empty(), "{:?}", diagnose(&healthy()));
    }

    #[test]
    fn wal_level_replica() {
        let n = NodeSnapshot { wal_level: "replica".into(), ..healthy() };
        let f = diagnose(&n);
        assert_eq!(f[0].subject, "wal_level");
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].fix, "ALTER SYSTEM SET wal_level = 'logical';");
    }

    #[test]
    fn preload_list_is_extended_not_replaced() {
        let n = NodeSnapshot { shared_preload_libraries: "pg_stat_statements, auto_explain".into(), ..healthy() };
        let f = diagnose(&n).into_iter().find(|f| f.subject == "shared_preload_libraries").unwrap();
        assert_eq!(f.fix, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements,auto_explain,edgesync';");
        let n = NodeSnapshot { shared_preload_libraries: "pg_stat_statements,edgesync".into(), ..healthy() };
        assert!(!subjects(&n).contains(&"shared_preload_libraries".to_string()));
    }

    #[test]
    fn commit_timestamp_matters_on_18() {
        let n = NodeSnapshot { track_commit_timestamp: false, ..healthy() };
        assert_eq!(diagnose(&n)[0].severity, Severity::Warning);
        let n = NodeSnapshot { track_commit_timestamp: false, server_version_num: 150018, idle_replication_slot_timeout_s: None, ..healthy() };
        assert_eq!(diagnose(&n)[0].severity, Severity::Info);
    }

    #[test]
    fn headroom() {
        let n = NodeSnapshot { replication_slots_used: 10, ..healthy() };
        let f = diagnose(&n);
        assert_eq!(f[0].subject, "max_replication_slots");
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].fix, "ALTER SYSTEM SET max_replication_slots = '20';");
        let n = NodeSnapshot { wal_senders_used: 9, ..healthy() };
        assert_eq!(diagnose(&n)[0].severity, Severity::Warning);
        let n = NodeSnapshot { max_worker_processes: 4, ..healthy() };
        assert_eq!(subjects(&n), vec!["max_worker_processes".to_string()]);
    }

    #[test]
    fn headroom_edges_and_fixes() {
        let f = diagnose(&NodeSnapshot { wal_senders_used: 9, ..healthy() });
        assert_eq!(f[0].fix, "ALTER SYSTEM SET max_wal_senders = '20';", "twice the current maximum");
        assert!(diagnose(&NodeSnapshot { wal_senders_used: 8, ..healthy() }).is_empty(), "two free is enough");
        // worker processes: the apply workers plus two, with room to spare in the fix
        let f = diagnose(&NodeSnapshot { max_worker_processes: 5, ..healthy() });
        assert_eq!(f[0].fix, "ALTER SYSTEM SET max_worker_processes = '12';");
        assert!(diagnose(&NodeSnapshot { max_worker_processes: 6, ..healthy() }).is_empty());
        // no subscription runs: apply workers are not needed
        let none = NodeSnapshot { subscriptions_enabled: 0, max_worker_processes: 1, max_logical_replication_workers: 0, subscriptions: vec![], ..healthy() };
        assert!(diagnose(&none).is_empty(), "{:?}", diagnose(&none));
    }

    #[test]
    fn severities_read_as_diagnose_shows_them() {
        let names = [(Severity::Critical, "critical"), (Severity::Warning, "warning"), (Severity::Info, "info")];
        for (s, name) in names {
            assert_eq!(s.as_str(), name);
        }
    }

    #[test]
    fn preloaded_under_any_spelling() {
        for libs in ["$libdir/edgesync", "edgesync.so", "pg_stat_statements, \"edgesync\""] {
            let n = NodeSnapshot { shared_preload_libraries: libs.into(), ..healthy() };
            assert!(diagnose(&n).is_empty(), "{libs}");
        }
    }

    #[test]
    fn slots_without_a_cap() {
        let n = NodeSnapshot { max_slot_wal_keep_size_mb: -1, ..healthy() };
        let f = diagnose(&n);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].fix, "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf();");
        let n = NodeSnapshot { max_slot_wal_keep_size_mb: 0, ..healthy() };
        assert!(diagnose(&n).is_empty(), "0 MB is a cap: slots keep no more than max_wal_size");
        let n = NodeSnapshot { max_slot_wal_keep_size_mb: -1, slots: vec![], ..healthy() };
        assert!(diagnose(&n).is_empty());
        let n = NodeSnapshot { idle_replication_slot_timeout_s: Some(0), ..healthy() };
        assert_eq!(subjects(&n), vec!["idle_replication_slot_timeout".to_string()]);
    }

    #[test]
    fn inactive_slot_holding_wal() {
        let mut n = healthy();
        n.slots.push(SlotSnapshot { name: "old'edge".into(), active: false, retained_wal_bytes: Some(4096) });
        n.slots.push(SlotSnapshot { name: "idle".into(), active: false, retained_wal_bytes: Some(10) });
        let f = diagnose(&n);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].subject, "slot:old'edge");
        assert_eq!(f[0].fix, "SELECT pg_drop_replication_slot('old''edge');");
    }

    #[test]
    fn subscriptions() {
        let mut n = healthy();
        n.subscriptions = vec![
            SubscriptionSnapshot { name: "Off".into(), enabled: false, worker_running: false, error_count: 0 },
            SubscriptionSnapshot { name: "down".into(), enabled: true, worker_running: false, error_count: 3 },
        ];
        let f = diagnose(&n);
        assert_eq!(f.len(), 3, "{f:?}");
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].subject, "subscription:down");
        assert!(f.iter().any(|f| f.fix == "ALTER SUBSCRIPTION \"Off\" ENABLE;"));
        assert!(f.iter().any(|f| f.fix.contains("pg_stat_reset_subscription_stats") && f.fix.contains("'down'")));
    }

    #[test]
    fn a_cloud_with_its_feed_running_has_no_findings() {
        assert!(diagnose(&cloud()).is_empty(), "{:?}", diagnose(&cloud()));
    }

    #[test]
    fn the_feed_slot_inactive_between_reads_is_not_an_inactive_slot() {
        let n = cloud();
        assert!(n.slots.iter().any(|s| s.name == FEED_SLOT && !s.active && s.retained_wal_bytes > Some(n.inactive_slot_warning_bytes)));
        assert!(!subjects(&n).contains(&format!("slot:{FEED_SLOT}")), "never a fix that drops it while edges are registered");
    }

    #[test]
    fn edges_without_logical_wal_are_a_feed_finding() {
        let n = NodeSnapshot { wal_level: "replica".into(), ..cloud() };
        let f: Vec<_> = diagnose(&n).into_iter().filter(|f| f.subject == "feed").collect();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].severity, f[0].fix.as_str()), (Severity::Critical, "ALTER SYSTEM SET wal_level = 'logical';"));
        assert!(f[0].finding.starts_with("2 edge(s) are registered but wal_level is \"replica\""), "{}", f[0].finding);
    }

    #[test]
    fn edges_without_a_feed_worker_say_why() {
        let stopped = |n: NodeSnapshot| NodeSnapshot { feed: FeedSnapshot { worker_running: false, ..n.feed.clone() }, ..n };
        let feed_finding = |n: &NodeSnapshot| diagnose(n).into_iter().find(|f| f.subject == "feed").expect("a feed finding");
        // not preloaded: the preload fix, keeping the other libraries
        let n = stopped(NodeSnapshot { shared_preload_libraries: "pg_stat_statements".into(), ..cloud() });
        let f = feed_finding(&n);
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.fix, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements,edgesync';");
        assert!(f.finding.contains("edgesync is not in shared_preload_libraries"), "{}", f.finding);
        // preloaded for another database
        let mut n = stopped(cloud());
        n.feed.edgesync_database = Some("postgres".into());
        let f = feed_finding(&n);
        assert_eq!(f.fix, "ALTER SYSTEM SET edgesync.database = 'iot';");
        assert!(f.finding.contains("edgesync.database (postgres), not in this one (iot)"), "{}", f.finding);
        n.feed.edgesync_database = None;
        assert!(feed_finding(&n).finding.contains("edgesync.database (unset)"));
        // the right database: the log says why, most often no worker slot
        let f = feed_finding(&stopped(cloud()));
        assert_eq!(f.fix, "ALTER SYSTEM SET max_worker_processes = '16';");
        assert!(f.finding.starts_with("2 edge(s) are registered but no feed worker runs for this database"), "{}", f.finding);
        assert!(f.finding.ends_with("(restart required after the fix)"), "{}", f.finding);
    }

    #[test]
    fn a_feed_slot_left_without_edges_is_dropped_when_no_worker_will() {
        let left = |worker_running: bool, slot_here: bool| {
            let feed = FeedSnapshot { edges_registered: 0, worker_running, slot_here, ..cloud().feed };
            let n = NodeSnapshot { feed, ..cloud() };
            diagnose(&n).into_iter().filter(|f| f.subject == format!("slot:{FEED_SLOT}")).collect::<Vec<_>>()
        };
        let f = left(false, true);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].severity, f[0].fix.as_str()), (Severity::Warning, "SELECT pg_drop_replication_slot('edgesync_feed');"));
        assert!(left(true, true).is_empty(), "the running worker is about to drop it");
        assert!(left(false, false).is_empty(), "the slot is another database's, or gone");
        // without edges, no worker is wanted
        let n = NodeSnapshot { feed: FeedSnapshot { edges_registered: 0, worker_running: false, slot_here: false, ..cloud().feed }, ..cloud() };
        assert!(diagnose(&n).iter().all(|f| f.subject != "feed"));
    }

    #[test]
    fn a_standby_leaves_the_feed_to_its_primary() {
        let mut n = NodeSnapshot { wal_level: "replica".into(), ..cloud() };
        n.feed.in_recovery = true;
        n.feed.worker_running = false;
        assert!(diagnose(&n).iter().all(|f| f.subject != "feed"), "{:?}", diagnose(&n));
        n.feed.edges_registered = 0;
        assert!(diagnose(&n).iter().all(|f| !f.subject.ends_with(FEED_SLOT)));
    }
}
