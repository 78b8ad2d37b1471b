//! The forwarder's state machine (groundwork for the worker): what a
//! forwarder does next, and how long it may sleep before that. Pure: the
//! worker feeds it events and the clock, and carries out its actions.
//!
//! ```text
//!   Idle ──due──► Connecting ──ok──► Pushing ──done──► Pulling ──done──► Idle
//!     ▲              │ fail            │ fail             │ fail
//!     │              ▼                 ▼                  ▼
//!     └──timer── Backoff(attempt) ◄────┴──────────────────┘
//!   any ──pause──► Paused ──resume──► Idle
//! ```
//! A round (push then pull) is due: in `realtime` as soon as changes wait,
//! in `batch` when the interval passed or the batch is full, in `on_demand`
//! only when asked (`sync_now`). Failures back off exponentially, capped,
//! with jitter so that thousands of edges do not retry in step.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Realtime,
    Batch { interval: Duration, max_rows: u64, max_bytes: u64 },
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
    Connecting,
    Pushing,
    Pulling,
    /// Waiting until `until_ms` after `attempt` consecutive failures.
    Backoff { attempt: u32, until_ms: u64 },
    Paused,
}

/// What the forwarder knows when it wakes up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub now_ms: u64,
    pub pending_rows: u64,
    pub pending_bytes: u64,
    /// When the last round succeeded (None: never).
    pub last_round_ms: Option<u64>,
    /// `sync_now` was called since the last round.
    pub sync_requested: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The latch was set or the timeout passed: look at `Observed`.
    Wake,
    Connected,
    Succeeded,
    Failed,
    Pause,
    Resume,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Connect,
    Push,
    Pull,
    /// Drop the connection (after a failure or a pause).
    Disconnect,
    /// Sleep on the latch at most this long.
    Wait(Duration),
}

/// How long an idle forwarder may sleep before it must look again.
const IDLE_POLL: Duration = Duration::from_millis(100);

fn round_due(mode: Mode, o: &Observed) -> bool {
    if o.sync_requested {
        return true;
    }
    match mode {
        Mode::Realtime => o.pending_rows > 0,
        Mode::OnDemand => false,
        Mode::Batch { interval, max_rows, max_bytes } => {
            let full = o.pending_rows >= max_rows || o.pending_bytes >= max_bytes;
            let elapsed = o.last_round_ms.is_none_or(|t| o.now_ms.saturating_sub(t) >= interval.as_millis() as u64);
            o.pending_rows > 0 && (full || elapsed)
        }
    }
}

fn idle_wait(mode: Mode, o: &Observed) -> Duration {
    match mode {
        Mode::Realtime => IDLE_POLL,
        // woken by the latch for sync_now; look now and then for pause/drop
        Mode::OnDemand => Duration::from_secs(1),
        Mode::Batch { interval, .. } => {
            let since = o.last_round_ms.map(|t| o.now_ms.saturating_sub(t)).unwrap_or(0);
            Duration::from_millis((interval.as_millis() as u64).saturating_sub(since)).clamp(IDLE_POLL, interval.max(IDLE_POLL))
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

        (State::Connecting | State::Pushing | State::Pulling, Event::Failed) => {
            let attempt = 1;
            let wait = backoff.wait(attempt, noise);
            (State::Backoff { attempt, until_ms: o.now_ms + wait.as_millis() as u64 }, Disconnect)
        }
        (State::Backoff { attempt, until_ms }, Event::Wake) if o.now_ms < until_ms => {
            (State::Backoff { attempt, until_ms }, Wait(Duration::from_millis(until_ms - o.now_ms)))
        }
        (State::Backoff { .. }, Event::Wake) => (State::Connecting, Connect),
        (State::Backoff { attempt, .. }, Event::Failed) => {
            let attempt = attempt.saturating_add(1);
            let wait = backoff.wait(attempt, noise);
            (State::Backoff { attempt, until_ms: o.now_ms + wait.as_millis() as u64 }, Disconnect)
        }

        (State::Idle, Event::Wake) if round_due(mode, o) => (State::Connecting, Connect),
        (State::Idle, _) => (State::Idle, Wait(idle_wait(mode, o))),
        (State::Connecting, Event::Connected) => (State::Pushing, Push),
        (State::Pushing, Event::Succeeded) => (State::Pulling, Pull),
        (State::Pulling, Event::Succeeded) => (State::Idle, Wait(Duration::ZERO)),
        // anything else (a stray wake-up mid-round) changes nothing
        (s, _) => (s, Wait(IDLE_POLL)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(now_ms: u64, pending_rows: u64) -> Observed {
        Observed { now_ms, pending_rows, pending_bytes: pending_rows * 100, last_round_ms: Some(0), sync_requested: false }
    }

    fn batch() -> Mode {
        Mode::Batch { interval: Duration::from_secs(60), max_rows: 1000, max_bytes: 1 << 20 }
    }

    #[test]
    fn a_full_round() {
        let b = Backoff::default();
        let o = at(10, 5);
        let (s, a) = step(State::Idle, Event::Wake, Mode::Realtime, b, &o, 0);
        assert_eq!((s, a), (State::Connecting, Action::Connect));
        let (s, a) = step(s, Event::Connected, Mode::Realtime, b, &o, 0);
        assert_eq!((s, a), (State::Pushing, Action::Push));
        let (s, a) = step(s, Event::Succeeded, Mode::Realtime, b, &o, 0);
        assert_eq!((s, a), (State::Pulling, Action::Pull));
        let (s, _) = step(s, Event::Succeeded, Mode::Realtime, b, &o, 0);
        assert_eq!(s, State::Idle);
    }

    #[test]
    fn when_a_round_is_due() {
        let b = Backoff::default();
        let due = |mode, o: Observed| step(State::Idle, Event::Wake, mode, b, &o, 0).0 == State::Connecting;
        assert!(due(Mode::Realtime, at(10, 1)));
        assert!(!due(Mode::Realtime, at(10, 0)));
        assert!(!due(batch(), at(10, 5)), "batch waits for the interval");
        assert!(due(batch(), at(60_000, 5)), "the interval passed");
        assert!(due(batch(), at(10, 1000)), "the batch is full");
        assert!(!due(batch(), at(120_000, 0)), "nothing to send");
        assert!(!due(Mode::OnDemand, at(999_999, 5_000)));
        assert!(due(Mode::OnDemand, Observed { sync_requested: true, ..at(10, 0) }));
        // an idle batch forwarder sleeps until the interval ends
        let (_, a) = step(State::Idle, Event::Wake, batch(), b, &at(20_000, 5), 0);
        assert_eq!(a, Action::Wait(Duration::from_secs(40)));
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

        let o = at(1_000, 5);
        let (s, a) = step(State::Pushing, Event::Failed, Mode::Realtime, b, &o, 0);
        assert_eq!(a, Action::Disconnect);
        let State::Backoff { attempt: 1, until_ms } = s else { panic!("{s:?}") };
        // woken early: keep waiting for the rest
        let (s2, a) = step(s, Event::Wake, Mode::Realtime, b, &at(1_100, 5), 0);
        assert_eq!(s2, s);
        assert_eq!(a, Action::Wait(Duration::from_millis(until_ms - 1_100)));
        // time is up: reconnect; failing again doubles the wait
        let (s3, a) = step(s, Event::Wake, Mode::Realtime, b, &at(until_ms, 5), 0);
        assert_eq!((s3, a), (State::Connecting, Action::Connect));
        let (s4, _) = step(State::Backoff { attempt: 1, until_ms }, Event::Failed, Mode::Realtime, b, &at(until_ms, 5), 0);
        assert!(matches!(s4, State::Backoff { attempt: 2, .. }));
    }

    #[test]
    fn pause_and_resume() {
        let b = Backoff::default();
        let o = at(10, 5);
        for s in [State::Idle, State::Pushing, State::Backoff { attempt: 3, until_ms: 99 }] {
            assert_eq!(step(s, Event::Pause, Mode::Realtime, b, &o, 0), (State::Paused, Action::Disconnect));
        }
        assert_eq!(step(State::Paused, Event::Wake, Mode::Realtime, b, &o, 0).0, State::Paused);
        assert_eq!(step(State::Paused, Event::Resume, Mode::Realtime, b, &o, 0).0, State::Idle);
    }
}
