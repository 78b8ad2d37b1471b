//! The forwarder's state machine: what a forwarder does next, and how long
//! it may sleep before that. Pure: the forwarder worker
//! (`sync/forwarder.rs`) feeds it events and the clock, and carries out its
//! actions.
//!
//! ```text
//!   Idle ──due──► Round ──ok──► Idle
//!     ▲             │ fail
//!     │             ▼
//!     └──timer── Backoff(failures) ──timer──► Round
//!   any ──pause──► Paused ──resume──► Idle
//! ```
//! A round (connect if needed, push, then pull from the peer's feed) is
//! due: in `realtime` as soon as WAL waits to be read or the peer notifies
//! that its feed has news, and every `REALTIME_PULL_POLL` (while it cannot
//! listen) to look at the feed; in `batch` when the interval
//! passed or a batch worth of WAL waits; in `on_demand` only when asked
//! (`sync_now`); `sync_now` makes a round due in every mode. Failures back off
//! exponentially, capped, with jitter so that thousands of edges do not
//! retry in step.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Realtime,
    Batch { interval: Duration, max_bytes: u64 },
    OnDemand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { first: Duration::from_secs(1), max: Duration::from_secs(300) }
    }
}

impl Backoff {
    /// The wait after `attempt` consecutive failures (1-based), before jitter.
    pub fn base(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(30)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// With jitter: `noise` (any u32, e.g. random) moves the wait within ±20 %.
    pub fn wait(&self, attempt: u32, noise: u32) -> Duration {
        let base = self.base(attempt).as_millis() as u64;
        let spread = base / 5;
        let offset = if spread == 0 { 0 } else { noise as u64 % (2 * spread + 1) };
        Duration::from_millis(base - spread + offset)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Idle,
    /// A round is running.
    Round,
    /// Waiting until `until_ms` after consecutive failures.
    Backoff { until_ms: u64 },
    Paused,
}

/// What the forwarder knows when it wakes up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub now_ms: u64,
    /// WAL written since the slot was last read up to (bytes).
    pub pending_bytes: u64,
    /// When the last round succeeded (None: never).
    pub last_round_ms: Option<u64>,
    /// `sync_now` was called since the last round.
    pub sync_requested: bool,
    /// Consecutive failed rounds, this one included when the event is `Failed`.
    pub failures: u32,
    /// The peer told (a notification on the pull connection) that its feed
    /// has something new.
    pub feed_news: bool,
    /// The pull connection listens for the feed's notifications.
    pub listening: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The latch was set or the timeout passed: look at `Observed`.
    Wake,
    Succeeded,
    Failed,
    Pause,
    Resume,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    RunRound,
    /// Drop the connection (after a failure or a pause).
    Disconnect,
    /// Sleep on the latch at most this long.
    Wait(Duration),
}

/// How long an idle realtime forwarder may sleep before it looks for new WAL.
pub const REALTIME_POLL: Duration = Duration::from_millis(50);
/// The least time between the end of one realtime round and the start of
/// the next: each round costs the edge and the cloud a few milliseconds
/// whatever it carries (catalog reads, a flush, a commit on the cloud), so
/// under a steady stream of commits rounds that follow each other at once
/// carry a few hundred rows each and those costs dominate. This adds at
/// most its length to the delay of a change.
pub const REALTIME_ROUND_GAP: Duration = Duration::from_millis(20);
/// How often an idle realtime forwarder asks the peer's feed for changes
/// when it cannot listen for them (a hot standby takes no LISTEN): one
/// short query, which the feed answers from an index.
pub const REALTIME_PULL_POLL: Duration = Duration::from_secs(1);
/// How often it asks anyway while it listens (a notification lost with a
/// connection is caught up on by then).
pub const REALTIME_PULL_POLL_LISTENING: Duration = Duration::from_secs(30);

fn round_due(mode: Mode, o: &Observed) -> bool {
    if o.sync_requested {
        return true;
    }
    let elapsed = |interval: Duration| o.last_round_ms.is_none_or(|t| o.now_ms.saturating_sub(t) >= interval.as_millis() as u64);
    match mode {
        Mode::Realtime => {
            let poll = if o.listening { REALTIME_PULL_POLL_LISTENING } else { REALTIME_PULL_POLL };
            (o.pending_bytes > 0 && elapsed(REALTIME_ROUND_GAP)) || o.feed_news || elapsed(poll)
        }
        Mode::OnDemand => false,
        // every interval, to pull if nothing is to be pushed
        Mode::Batch { interval, max_bytes } => (o.pending_bytes > 0 && o.pending_bytes >= max_bytes) || elapsed(interval),
    }
}

fn idle_wait(mode: Mode, o: &Observed) -> Duration {
    match mode {
        // something waits: until the gap after the last round has passed
        Mode::Realtime if o.pending_bytes > 0 => {
            let since = o.last_round_ms.map(|t| o.now_ms.saturating_sub(t)).unwrap_or(u64::MAX);
            Duration::from_millis((REALTIME_ROUND_GAP.as_millis() as u64).saturating_sub(since).max(1))
        }
        Mode::Realtime => REALTIME_POLL,
        // woken by the latch for sync_now; look now and then for pause/drop
        Mode::OnDemand => Duration::from_secs(1),
        Mode::Batch { interval, .. } => {
            let since = o.last_round_ms.map(|t| o.now_ms.saturating_sub(t)).unwrap_or(0);
            // look at the backlog at least every second: a full batch goes early
            Duration::from_millis((interval.as_millis() as u64).saturating_sub(since)).clamp(REALTIME_POLL, Duration::from_secs(1))
        }
    }
}

/// One step: the next state and what to do. `noise` feeds the jitter.
pub fn step(state: State, event: Event, mode: Mode, backoff: Backoff, o: &Observed, noise: u32) -> (State, Action) {
    use Action::*;
    match (state, event) {
        (_, Event::Pause) => (State::Paused, Disconnect),
        (State::Paused, Event::Resume) => (State::Idle, Wait(Duration::ZERO)),
        (State::Paused, _) => (State::Paused, Wait(Duration::from_secs(1))),

        (State::Round, Event::Failed) => {
            let wait = backoff.wait(o.failures.max(1), noise);
            (State::Backoff { until_ms: o.now_ms + wait.as_millis() as u64 }, Disconnect)
        }
        (State::Round, Event::Succeeded) => (State::Idle, Wait(Duration::ZERO)),
        // a DBA's sync_now is answered at once, backoff or not
        (State::Backoff { until_ms }, Event::Wake) if o.now_ms < until_ms && !o.sync_requested => {
            (State::Backoff { until_ms }, Wait(Duration::from_millis(until_ms - o.now_ms)))
        }
        (State::Backoff { .. }, Event::Wake) => (State::Round, RunRound),

        (State::Idle, Event::Wake) if round_due(mode, o) => (State::Round, RunRound),
        (State::Idle, _) => (State::Idle, Wait(idle_wait(mode, o))),
        // anything else (a stray event) changes nothing
        (s, _) => (s, Wait(REALTIME_POLL)),
    }
}

/// `d` as a wait's timeout in milliseconds, rounded up: the 0.9 ms left of
/// a wait must not become a timeout of 0, which returns at once (a loop
/// meant to pause would spin instead).
pub fn wait_millis(d: Duration) -> i64 {
    d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_never_shortened_to_nothing() {
        assert_eq!(wait_millis(Duration::ZERO), 0);
        assert_eq!(wait_millis(Duration::from_micros(1)), 1);
        assert_eq!(wait_millis(Duration::from_micros(999)), 1);
        assert_eq!(wait_millis(Duration::from_millis(1)), 1);
        assert_eq!(wait_millis(Duration::from_micros(1001)), 2);
        assert_eq!(wait_millis(Duration::from_secs(u64::MAX)), i32::MAX as i64);
    }

    fn at(now_ms: u64, pending_bytes: u64) -> Observed {
        Observed { now_ms, pending_bytes, last_round_ms: Some(0), ..Observed::default() }
    }

    fn batch() -> Mode {
        Mode::Batch { interval: Duration::from_secs(60), max_bytes: 1 << 20 }
    }

    #[test]
    fn a_full_round() {
        let b = Backoff::default();
        let o = at(30, 5);
        let (s, a) = step(State::Idle, Event::Wake, Mode::Realtime, b, &at(5, 5), 0);
        assert_eq!((s, a), (State::Idle, Action::Wait(Duration::from_millis(15))), "waits out the gap after the last round");
        let (s, a) = step(s, Event::Wake, Mode::Realtime, b, &o, 0);
        assert_eq!((s, a), (State::Round, Action::RunRound));
        let (s, a) = step(s, Event::Succeeded, Mode::Realtime, b, &o, 0);
        assert_eq!((s, a), (State::Idle, Action::Wait(Duration::ZERO)));
        let (s, a) = step(s, Event::Wake, Mode::Realtime, b, &at(20, 0), 0);
        assert_eq!((s, a), (State::Idle, Action::Wait(REALTIME_POLL)));
    }

    #[test]
    fn when_a_round_is_due() {
        let b = Backoff::default();
        let due = |mode, o: Observed| step(State::Idle, Event::Wake, mode, b, &o, 0).0 == State::Round;
        assert!(!due(Mode::Realtime, at(10, 1)), "too soon after the last round");
        assert!(due(Mode::Realtime, at(20, 1)), "the gap after the last round passed");
        assert!(due(Mode::Realtime, Observed { last_round_ms: None, ..at(1, 1) }), "the first round goes at once");
        assert!(!due(Mode::Realtime, at(10, 0)));
        assert!(due(Mode::Realtime, at(1_000, 0)), "time to look at the peer's feed");
        assert!(due(Mode::Realtime, Observed { feed_news: true, listening: true, ..at(10, 0) }), "the peer told of news");
        assert!(!due(Mode::Realtime, Observed { listening: true, ..at(1_000, 0) }), "listening: no need to ask");
        assert!(due(Mode::Realtime, Observed { listening: true, ..at(30_000, 0) }), "but now and then all the same");
        assert!(!due(batch(), at(10, 5)), "batch waits for the interval");
        assert!(due(batch(), at(60_000, 5)), "the interval passed");
        assert!(due(batch(), at(10, 1 << 20)), "the batch is full");
        assert!(due(batch(), at(120_000, 0)), "nothing to send, but the feed may have something");
        assert!(!due(Mode::OnDemand, at(999_999, 5_000)));
        assert!(due(Mode::OnDemand, Observed { sync_requested: true, ..at(10, 0) }));
        assert!(due(batch(), Observed { sync_requested: true, ..at(10, 0) }));
        // an idle batch forwarder looks again within a second
        let (_, a) = step(State::Idle, Event::Wake, batch(), b, &at(20_000, 5), 0);
        assert_eq!(a, Action::Wait(Duration::from_secs(1)));
        let (_, a) = step(State::Idle, Event::Wake, batch(), b, &at(59_700, 5), 0);
        assert_eq!(a, Action::Wait(Duration::from_millis(300)));
    }

    #[test]
    fn failures_back_off_exponentially_capped_with_jitter() {
        let b = Backoff::default();
        assert_eq!(b.base(1), Duration::from_secs(1));
        assert_eq!(b.base(4), Duration::from_secs(8));
        assert_eq!(b.base(40), Duration::from_secs(300), "capped");
        for noise in [0, 1, 7_777, u32::MAX] {
            let w = b.wait(4, noise);
            assert!(w >= Duration::from_millis(6_400) && w <= Duration::from_millis(9_600), "{w:?}");
        }
        assert_ne!(b.wait(4, 1), b.wait(4, 2_000), "noise spreads retries");
        // the whole ±20 % is used: 8 s spreads over 6.4 s ..= 9.6 s, by the millisecond
        assert_eq!(b.wait(4, 0), Duration::from_millis(6_400));
        assert_eq!(b.wait(4, 1), Duration::from_millis(6_401));
        assert_eq!(b.wait(4, 3_200), Duration::from_millis(9_600));
        assert_eq!(b.wait(4, 3_201), Duration::from_millis(6_400), "and wraps around");

        let failed = |now, failures| Observed { failures, ..at(now, 5) };
        let (s, a) = step(State::Round, Event::Failed, Mode::Realtime, b, &failed(1_000, 1), 0);
        assert_eq!(a, Action::Disconnect);
        let State::Backoff { until_ms } = s else { panic!("{s:?}") };
        assert!((1_800..=2_200).contains(&until_ms), "{until_ms}");
        // woken early: keep waiting for the rest
        let (s2, a) = step(s, Event::Wake, Mode::Realtime, b, &at(1_100, 5), 0);
        assert_eq!(s2, s);
        assert_eq!(a, Action::Wait(Duration::from_millis(until_ms - 1_100)));
        // time is up: try again; the third failure in a row waits about 4 s
        let asked = Observed { sync_requested: true, ..at(1_200, 5) };
        assert_eq!(step(s, Event::Wake, Mode::Realtime, b, &asked, 0).1, Action::RunRound, "sync_now cuts a backoff short");
        let (s3, a) = step(s, Event::Wake, Mode::OnDemand, b, &at(until_ms, 0), 0);
        assert_eq!((s3, a), (State::Round, Action::RunRound), "a retry does not wait for the mode");
        let (s4, _) = step(State::Round, Event::Failed, Mode::Realtime, b, &failed(10_000, 3), 0);
        let State::Backoff { until_ms } = s4 else { panic!("{s4:?}") };
        assert!((13_200..=14_800).contains(&until_ms), "{until_ms}");
    }

    #[test]
    fn pause_and_resume() {
        let b = Backoff::default();
        let o = at(10, 5);
        for s in [State::Idle, State::Round, State::Backoff { until_ms: 99 }] {
            assert_eq!(step(s, Event::Pause, Mode::Realtime, b, &o, 0), (State::Paused, Action::Disconnect));
        }
        assert_eq!(step(State::Paused, Event::Wake, Mode::Realtime, b, &o, 0).0, State::Paused);
        assert_eq!(step(State::Paused, Event::Resume, Mode::Realtime, b, &o, 0).0, State::Idle);
    }
}
