//! Per-target circuit breakers. A target that failed `failures` times within `window` opens:
//! calls skip it for `open_for`, then one call at a time is let through as a half-open probe;
//! a success closes it, a failure opens it again. Time is tokio's, so tests run on paused time.
//!
//! Failures are what failover reacts to (connect error, timeout, 429, 5xx, a stream broken
//! before its first content); a 4xx the agent caused is not the target's fault and not counted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::config::BreakerSettings;

/// What a breaker is doing, as shown in `/admin/status` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
    /// The value of the `palisade_breaker_state` gauge.
    pub fn gauge(self) -> u8 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

#[derive(Debug)]
struct Inner {
    failures: VecDeque<Instant>,
    opened_at: Option<Instant>,
    /// A half-open probe is out.
    probing: bool,
    opened_count: u64,
}

/// One target's breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: Mutex<BreakerSettings>,
    inner: Mutex<Inner>,
}

/// Whether a call may use the target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go.
    Yes,
    /// Half-open: go, as the one probe.
    Probe,
    /// Open (or a probe is already out): skip the target.
    No,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings: Mutex::new(settings),
            inner: Mutex::new(Inner {
                failures: VecDeque::new(),
                opened_at: None,
                probing: false,
                opened_count: 0,
            }),
        }
    }

    fn settings(&self) -> BreakerSettings {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> State {
        let s = self.settings();
        let inner = self.lock();
        match inner.opened_at {
            None => State::Closed,
            Some(at) if inner.probing || at.elapsed() >= s.open_for => State::HalfOpen,
            Some(_) => State::Open,
        }
    }

    /// How many times it opened since the gateway started.
    pub fn opened_count(&self) -> u64 {
        self.lock().opened_count
    }

    /// Ask to use the target. A `Probe` must be followed by `success` or `failure`.
    pub fn admit(&self) -> Admit {
        let s = self.settings();
        let mut inner = self.lock();
        match inner.opened_at {
            None => Admit::Yes,
            Some(at) if at.elapsed() >= s.open_for && !inner.probing => {
                inner.probing = true;
                Admit::Probe
            }
            Some(_) => Admit::No,
        }
    }

    pub fn success(&self) {
        let mut inner = self.lock();
        inner.failures.clear();
        inner.opened_at = None;
        inner.probing = false;
    }

    pub fn failure(&self) {
        let s = self.settings();
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.opened_at.is_some() {
            // A failed probe (or a call admitted before it opened): open afresh.
            inner.opened_at = Some(now);
            inner.probing = false;
            return;
        }
        inner.failures.push_back(now);
        while inner
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > s.window)
        {
            inner.failures.pop_front();
        }
        if inner.failures.len() >= s.failures as usize {
            inner.failures.clear();
            inner.opened_at = Some(now);
            inner.opened_count += 1;
            tracing::warn!("circuit breaker opened");
        }
    }

    /// A probe that ended without a verdict on the target (e.g. the agent went away).
    pub fn release_probe(&self) {
        self.lock().probing = false;
    }
}

/// The breakers of every target seen, by `provider/model`; kept across reloads.
#[derive(Debug, Default)]
pub struct Breakers {
    map: Mutex<HashMap<String, Arc<Breaker>>>,
}

impl Breakers {
    /// The breaker of a target, created on first use; its settings follow the current config.
    pub fn get(&self, target: &str, settings: BreakerSettings) -> Arc<Breaker> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let b = map
            .entry(target.to_string())
            .or_insert_with(|| Arc::new(Breaker::new(settings)))
            .clone();
        *b.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
        b
    }

    /// Every target's breaker, sorted by target.
    pub fn all(&self) -> Vec<(String, Arc<Breaker>)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.iter().map(|(k, b)| (k.clone(), b.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_n_failures_in_window_then_probes_and_closes() {
        let b = Breaker::new(settings());
        b.failure();
        b.failure();
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.admit(), Admit::Yes);
        b.failure();
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit(), Admit::No);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.admit(), Admit::No, "still open before open_for");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::No, "one probe at a time");
        b.success();
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.admit(), Admit::Yes);
        assert_eq!(b.opened_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again() {
        let b = Breaker::new(settings());
        for _ in 0..3 {
            b.failure();
        }
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.admit(), Admit::Probe);
        b.failure();
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            b.admit(),
            Admit::No,
            "open_for counts from the failed probe"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(b.admit(), Admit::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_add_up() {
        let b = Breaker::new(settings());
        b.failure();
        b.failure();
        tokio::time::advance(Duration::from_secs(11)).await;
        b.failure();
        assert_eq!(b.state(), State::Closed);
        b.failure();
        b.failure();
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_count() {
        let b = Breaker::new(settings());
        b.failure();
        b.failure();
        b.success();
        b.failure();
        b.failure();
        assert_eq!(b.state(), State::Closed);
    }
}
