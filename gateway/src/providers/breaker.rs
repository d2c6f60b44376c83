//! Per-target circuit breakers. A target that failed `failures` times within `window` opens:
//! calls skip it for `open_for`, then one call at a time is let through as a half-open probe;
//! a success closes it, a failure opens it again. Time is tokio's, so tests run on paused time.
//!
//! Each call's use of a target is a [`Permit`] that ends in a verdict; a permit dropped without
//! one (a cancelled call) frees the probe slot, so nothing but a verdict moves the state.
//!
//! Failures are what failover reacts to (connect error, timeout, 429, 5xx, a stream broken
//! before its first content); a 4xx the agent caused is not the target's fault and not counted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::config::{BreakerSettings, Target};
use crate::core::settings::Settings;

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
    /// The half-open probe that is out, by its number, so only that probe's end frees the slot.
    probe: Option<u64>,
    /// Numbers the probes.
    probes: u64,
    opened_count: u64,
}

/// One target's breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: Mutex<BreakerSettings>,
    inner: Mutex<Inner>,
}

/// Leave to use a target now, from [`Breaker::admit`]. Its end is the call's verdict on the
/// target: [`Permit::success`] or [`Permit::failure`]. Dropped without one (the call was
/// cancelled, its deadline passed before sending, its request could not be encoded), it says
/// nothing about the target; if it was the half-open probe, the next call may probe instead,
/// so a cancelled probe cannot leave the target skipped until a restart.
#[derive(Debug)]
#[must_use = "a dropped permit is a call that gave no verdict on the target"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    /// The probe's number, if this call is the half-open probe.
    probe: Option<u64>,
}

impl Permit<'_> {
    /// Whether this call is the one probe of a half-open breaker.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// The target answered: close the breaker.
    pub fn success(mut self) {
        self.probe = None;
        self.breaker.success();
    }

    /// The target failed: count it, or open again if this was the probe.
    pub fn failure(mut self) {
        let probe = self.probe.take();
        self.breaker.failure(probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.probe {
            let mut inner = self.breaker.lock();
            if inner.probe == Some(n) {
                inner.probe = None;
            }
        }
    }
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings: Mutex::new(settings),
            inner: Mutex::new(Inner {
                failures: VecDeque::new(),
                opened_at: None,
                probe: None,
                probes: 0,
                opened_count: 0,
            }),
        }
    }

    fn settings(&self) -> BreakerSettings {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_settings(&self, settings: BreakerSettings) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> State {
        let s = self.settings();
        let inner = self.lock();
        match inner.opened_at {
            None => State::Closed,
            Some(at) if inner.probe.is_some() || at.elapsed() >= s.open_for => State::HalfOpen,
            Some(_) => State::Open,
        }
    }

    /// How many times it opened since the gateway started (a failed probe opens it again).
    pub fn opened_count(&self) -> u64 {
        self.lock().opened_count
    }

    /// Ask to use the target: a permit when closed, or as the one probe once `open_for` has
    /// passed; `None` while open or while another call is the probe.
    pub fn admit(&self) -> Option<Permit<'_>> {
        let s = self.settings();
        let mut inner = self.lock();
        match inner.opened_at {
            None => Some(Permit {
                breaker: self,
                probe: None,
            }),
            Some(at) if at.elapsed() >= s.open_for && inner.probe.is_none() => {
                inner.probes += 1;
                let n = inner.probes;
                inner.probe = Some(n);
                Some(Permit {
                    breaker: self,
                    probe: Some(n),
                })
            }
            Some(_) => None,
        }
    }

    fn success(&self) {
        let mut inner = self.lock();
        inner.failures.clear();
        inner.opened_at = None;
        inner.probe = None;
    }

    fn failure(&self, probe: Option<u64>) {
        let s = self.settings();
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.opened_at.is_some() {
            if probe.is_some() && inner.probe == probe {
                // The probe failed: the target opens again, and that is an opening too.
                inner.probe = None;
                inner.opened_count += 1;
                tracing::warn!("circuit breaker opened again: its probe failed");
            }
            // A failed probe, or a call admitted before it opened: open_for counts from now.
            inner.opened_at = Some(now);
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
}

/// The breakers of one loaded config, built at load and never on a call: one per target a
/// route names, and one per provider for every other model on it (a model string an agent
/// chose must not create state or a metric series). A reload builds a new set that carries
/// over, by key, the breakers of targets that still exist, state and all.
#[derive(Debug, Default)]
pub struct Breakers {
    map: HashMap<String, Arc<Breaker>>,
}

impl Breakers {
    /// The breakers for `settings`, keeping those of `previous` whose key is still configured.
    pub fn for_config(settings: &Settings, previous: Option<&Breakers>) -> Breakers {
        let providers = settings
            .provider_list()
            .into_iter()
            .map(|p| p.name)
            .chain(std::iter::once(settings.upstream.name.clone()));
        let targets = settings
            .routes
            .values()
            .flat_map(|r| r.targets.iter().map(ToString::to_string));
        let map = providers
            .chain(targets)
            .map(|key| {
                let kept = previous.and_then(|p| p.map.get(&key)).cloned();
                let b = match kept {
                    Some(b) => {
                        b.set_settings(settings.breaker);
                        b
                    }
                    None => Arc::new(Breaker::new(settings.breaker)),
                };
                (key, b)
            })
            .collect();
        Breakers { map }
    }

    /// A target's breaker and the key it goes by (also its metric label): the target itself
    /// if a route names it, else its provider. `None` for a provider this config lacks.
    pub fn get(&self, target: &Target) -> Option<(&str, &Arc<Breaker>)> {
        self.map
            .get_key_value(&target.to_string())
            .or_else(|| self.map.get_key_value(&target.provider))
            .map(|(k, b)| (k.as_str(), b))
    }

    /// Every breaker, sorted by key.
    pub fn all(&self) -> Vec<(String, Arc<Breaker>)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every breaker as `/metrics` shows it.
    pub fn gauges(&self) -> Vec<crate::metrics::BreakerGauge> {
        self.all()
            .into_iter()
            .map(|(target, b)| crate::metrics::BreakerGauge {
                target,
                state: b.state().gauge(),
                opened: b.opened_count(),
            })
            .collect()
    }

    /// How many there are (bounded by the config, whatever the calls ask for).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
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

    /// A call that was let through and failed.
    fn fail(b: &Breaker) {
        b.admit().expect("admitted").failure();
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_n_failures_in_window_then_probes_and_closes() {
        let b = Breaker::new(settings());
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), State::Closed);
        assert!(b.admit().is_some_and(|p| !p.is_probe()));
        fail(&b);
        assert_eq!(b.state(), State::Open);
        assert!(b.admit().is_none());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(b.admit().is_none(), "still open before open_for");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.state(), State::HalfOpen);
        let probe = b.admit().expect("the probe");
        assert!(probe.is_probe());
        assert!(b.admit().is_none(), "one probe at a time");
        probe.success();
        assert_eq!(b.state(), State::Closed);
        assert!(b.admit().is_some_and(|p| !p.is_probe()));
        assert_eq!(b.opened_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again_and_counts_as_an_opening() {
        let b = Breaker::new(settings());
        for _ in 0..3 {
            fail(&b);
        }
        assert_eq!(b.opened_count(), 1);
        tokio::time::advance(Duration::from_secs(6)).await;
        b.admit().expect("the probe").failure();
        assert_eq!(b.state(), State::Open);
        assert_eq!(
            b.opened_count(),
            2,
            "palisade_breaker_opened_total counts the reopen"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(b.admit().is_none(), "open_for counts from the failed probe");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(b.admit().is_some_and(|p| p.is_probe()));
    }

    // Issue 14: a probe whose call was dropped used to leave `probing` set for good.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_lets_the_next_call_probe() {
        let b = Breaker::new(settings());
        for _ in 0..3 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_secs(6)).await;
        let probe = b.admit().expect("the probe");
        assert!(b.admit().is_none(), "one probe at a time");
        drop(probe);
        assert_eq!(b.state(), State::HalfOpen);
        let again = b.admit().expect("a new probe after the dropped one");
        assert!(again.is_probe());
        again.success();
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.opened_count(), 1, "a dropped probe is no verdict");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_call_from_before_the_opening_does_not_free_the_probe_slot() {
        let b = Breaker::new(settings());
        let early = b.admit().expect("closed");
        for _ in 0..3 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_secs(6)).await;
        let probe = b.admit().expect("the probe");
        early.failure();
        assert!(b.admit().is_none(), "the probe is still out");
        assert_eq!(b.opened_count(), 1, "a late failure is not an opening");
        drop(probe);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(b.admit().is_some_and(|p| p.is_probe()));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_add_up() {
        let b = Breaker::new(settings());
        fail(&b);
        fail(&b);
        tokio::time::advance(Duration::from_secs(11)).await;
        fail(&b);
        assert_eq!(b.state(), State::Closed);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_count() {
        let b = Breaker::new(settings());
        fail(&b);
        fail(&b);
        b.admit().expect("closed").success();
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), State::Closed);
    }

    fn config(routes: &str) -> Settings {
        Settings::from_toml(
            std::path::Path::new("p.toml"),
            &format!(
                "[upstream]\nname = \"mock\"\nbase_url = \"http://a\"\n[[providers]]\n\
                 name = \"backup\"\nbase_url = \"http://b\"\n{routes}"
            ),
        )
        .expect("config")
    }

    fn target(s: &str) -> Target {
        Target::parse(s).expect("provider/model")
    }

    #[test]
    fn only_configured_targets_and_providers_have_breakers() {
        let b = Breakers::for_config(&config("[routes.smart]\ntargets = [\"backup/m2\"]"), None);
        assert_eq!(b.len(), 3, "{:?}", b.all());
        assert_eq!(
            b.get(&target("backup/m2")).map(|(k, _)| k),
            Some("backup/m2")
        );
        // A model no route names shares its provider's breaker, and makes nothing new.
        for m in ["mock/gpt-x", "mock/anything/at-all", "backup/other"] {
            let (key, _) = b.get(&target(m)).expect("its provider's");
            assert_eq!(key, m.split('/').next().unwrap_or_default());
        }
        assert!(b.get(&target("ghost/m")).is_none());
        assert_eq!(b.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_the_state_of_targets_that_still_exist() {
        let one = Breakers::for_config(
            &config("[routes.a]\ntargets = [\"backup/m2\", \"mock/m1\"]"),
            None,
        );
        let (_, b) = one.get(&target("backup/m2")).expect("configured");
        for _ in 0..5 {
            fail(b);
        }
        assert_eq!(b.state(), State::Open);
        let two =
            Breakers::for_config(&config("[routes.b]\ntargets = [\"backup/m2\"]"), Some(&one));
        let (_, kept) = two.get(&target("backup/m2")).expect("still configured");
        assert!(Arc::ptr_eq(b, kept), "the same breaker, state and all");
        assert_eq!(kept.state(), State::Open);
        assert_eq!(two.get(&target("mock/m1")).map(|(k, _)| k), Some("mock"));
        assert_eq!(two.len(), 3);
    }
}
