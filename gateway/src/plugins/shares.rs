//! Fair shares of plugin instances between agents.
//!
//! The engine has `[plugin_host] max_instances` instance slots for every plugin together, and
//! a call keeps an instance for as long as its plugin has hooks left (a plugin with `on-text`
//! for a whole stream). Without shares, one agent holding hundreds of slow streams takes every
//! slot and every other agent's call fails with `plugin_unavailable`. Here every instance a
//! call checks out counts in its agent's share, and a call is admitted into the share when it
//! checks out its first instance:
//!
//! - an agent's call is not admitted while the agent holds `[limits] instances_per_agent`
//!   instances (default: half the pool);
//! - while other agents wait, an agent at or above its fair share (`max_instances` divided by
//!   the agents holding or waiting, at least 1) gets no more, so the next instance freed goes
//!   to an agent below its share;
//! - with the pool full, a call waits (up to [`WAIT`]) for an instance to be freed, instead of
//!   failing at once; past that it is refused with 429 `plugin_instance_limit`, which no
//!   plugin's `on_error = "allow"` turns into a skipped plugin (else an agent could make its
//!   own plugins be skipped by keeping streams open).
//!
//! A call's later instances ([`Ticket::another`]) count too but never wait: a call holding
//! instances that waited for its agent's share would wait on the agent's other calls doing the
//! same, and all of them on each other, until they failed. So an agent may hold more than its
//! cap by the instances its admitted calls take after their first; a call that gave back all
//! of its instances (held for approval) is admitted again for the next one.
//!
//! Tickets are counted per checked-out instance, not per idle pooled one (which still holds an
//! engine slot); the engine's semaphore still bounds how many instances exist.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::core::error::{CallError, Limit};

/// How long a call waits for its agent's share before failing.
pub const WAIT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    held: HashMap<Arc<str>, usize>,
    waiting: HashMap<Arc<str>, usize>,
    in_use: usize,
}

/// The tickets of every agent; one per gateway (in `HostServices`).
pub struct Shares {
    total: AtomicUsize,
    per_agent: AtomicUsize,
    state: Mutex<State>,
    freed: Notify,
}

impl Default for Shares {
    fn default() -> Self {
        Shares {
            total: AtomicUsize::new(usize::MAX),
            per_agent: AtomicUsize::new(usize::MAX),
            state: Mutex::default(),
            freed: Notify::new(),
        }
    }
}

/// One checked-out instance's place in its agent's share; dropping it frees the place.
pub struct Ticket {
    shares: Arc<Shares>,
    agent: Arc<str>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({})", self.agent)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let wake = {
            let mut st = self.shares.lock();
            st.in_use = st.in_use.saturating_sub(1);
            if let Some(n) = st.held.get_mut(&self.agent) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.held.remove(&self.agent);
                }
            }
            // A waiter registers under this lock before it waits: none registered, none to
            // wake (the common case costs no wake-up).
            !st.waiting.is_empty()
        };
        if wake {
            self.shares.freed.notify_waiters();
        }
    }
}

impl Shares {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool size (`max_instances`, fixed until restart) and each agent's cap (reloadable).
    pub fn configure(&self, total: Option<usize>, per_agent: usize) {
        if let Some(t) = total {
            self.total.store(t.max(1), Ordering::Relaxed);
        }
        self.per_agent.store(per_agent.max(1), Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    /// Instances `agent` may hold now.
    fn limit_for(&self, st: &State, agent: &Arc<str>) -> usize {
        let cap = self.per_agent.load(Ordering::Relaxed);
        let others_wait = st.waiting.iter().any(|(a, n)| a != agent && *n > 0);
        if !others_wait {
            return cap;
        }
        let mut active: HashSet<&Arc<str>> = st.held.keys().chain(st.waiting.keys()).collect();
        active.insert(agent);
        let total = self.total.load(Ordering::Relaxed);
        cap.min((total / active.len()).max(1))
    }

    /// Checked-out instances of `agent` (tests and status).
    pub fn held_by(&self, agent: &str) -> usize {
        self.lock().held.get(agent).copied().unwrap_or(0)
    }

    /// A ticket for the first instance a call of `agent` checks out, waiting up to `wait` for the
    /// agent's share and a free place in the pool. The call's later instances take
    /// [`Ticket::another`] instead: a call that holds instances never waits here, so an agent's
    /// calls cannot each hold some and wait for one another. Past `wait` the call is refused
    /// with [`Limit::PluginInstances`], which fails it closed whatever the plugin's `on_error`.
    pub async fn acquire(
        self: &Arc<Self>,
        agent: &Arc<str>,
        wait: Duration,
    ) -> Result<Ticket, CallError> {
        let deadline = tokio::time::Instant::now() + wait;
        // Unregisters on every way out, a dropped (cancelled) future included.
        let mut waiting = Waiting {
            shares: self,
            agent,
            registered: false,
        };
        loop {
            // Registered before the check, so a release between the check and the wait is
            // not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let refusal = {
                let mut st = self.lock();
                let held = st.held.get(agent).copied().unwrap_or(0);
                let limit = self.limit_for(&st, agent);
                let total = self.total.load(Ordering::Relaxed);
                if held < limit && st.in_use < total {
                    *st.held.entry(agent.clone()).or_default() += 1;
                    st.in_use += 1;
                    drop(st);
                    return Ok(Ticket {
                        shares: self.clone(),
                        agent: agent.clone(),
                    });
                }
                if !waiting.registered {
                    *st.waiting.entry(agent.clone()).or_default() += 1;
                    waiting.registered = true;
                }
                if held >= limit {
                    (format!("agent {agent}"), limit)
                } else {
                    ("all agents".to_string(), total)
                }
            };
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                let (scope, max) = refusal;
                return Err(CallError::Limited {
                    limit: Limit::PluginInstances,
                    scope,
                    max: max as u64,
                    retry_after: 1,
                });
            }
        }
    }

    /// Calls registered as waiting for a share (tests and status).
    pub fn waiting(&self) -> usize {
        self.lock().waiting.values().sum()
    }
}

impl Ticket {
    /// A ticket for another instance of the same call: counted in the agent's share and the
    /// pool like the first, but never refused or waited for, since the call already has its
    /// place (the engine's slots still bound how many instances exist).
    pub fn another(&self) -> Ticket {
        let mut st = self.shares.lock();
        *st.held.entry(self.agent.clone()).or_default() += 1;
        st.in_use += 1;
        Ticket {
            shares: self.shares.clone(),
            agent: self.agent.clone(),
        }
    }
}

/// A waiting call's registration in [`State::waiting`], removed when it is dropped.
struct Waiting<'a> {
    shares: &'a Shares,
    agent: &'a Arc<str>,
    registered: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.registered {
            return;
        }
        let wake = {
            let mut st = self.shares.lock();
            if let Some(n) = st.waiting.get_mut(self.agent) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.waiting.remove(self.agent);
                }
            }
            !st.waiting.is_empty()
        };
        // With one waiter fewer, the others' fair shares may have grown.
        if wake {
            self.shares.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    #[tokio::test]
    async fn a_greedy_agent_is_held_to_its_share_and_others_get_theirs() {
        let shares = Arc::new(Shares::default());
        shares.configure(Some(4), 3);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let short = Duration::from_millis(20);
        let mut a_tickets = Vec::new();
        for _ in 0..3 {
            a_tickets.push(shares.acquire(&a, short).await.unwrap());
        }
        // `a` is at its cap even though one instance is free.
        assert!(shares.acquire(&a, short).await.is_err());
        // `b` gets the free one, and with the pool full waits until `a` lets one go, which
        // then goes to `b` (below its fair share of 2), not to `a`.
        let _b1 = shares.acquire(&b, short).await.unwrap();
        let waiter = {
            let (shares, b) = (shares.clone(), b.clone());
            tokio::spawn(async move { shares.acquire(&b, Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        a_tickets.pop();
        let b2 = waiter.await.unwrap().unwrap();
        assert_eq!((shares.held_by("a"), shares.held_by("b")), (2, 2));
        drop(b2);
        assert_eq!(shares.held_by("b"), 1);
    }

    /// The reviewer's case: a pool of 4, a cap of 2, and two calls of one agent through a
    /// chain of two plugins, each holding its first plugin's instance before it asks for the
    /// second. Counted per instance and waited for one by one, both waited for the other until
    /// one failed after [`WAIT`]; now the second instances come at once.
    #[tokio::test]
    async fn two_calls_of_one_agent_through_two_plugins_do_not_wait_for_each_other() {
        let shares = Arc::new(Shares::default());
        shares.configure(Some(4), 2);
        let a: Arc<str> = Arc::from("a");
        let both_hold_one = Arc::new(tokio::sync::Barrier::new(2));
        let call = |shares: Arc<Shares>, a: Arc<str>, barrier: Arc<tokio::sync::Barrier>| async move {
            let first = shares.acquire(&a, WAIT).await?;
            barrier.wait().await;
            let second = first.another();
            Ok::<_, CallError>((first, second))
        };
        let started = tokio::time::Instant::now();
        let (one, two) = tokio::join!(
            tokio::spawn(call(shares.clone(), a.clone(), both_hold_one.clone())),
            tokio::spawn(call(shares.clone(), a.clone(), both_hold_one.clone())),
        );
        let (one, two) = (one.unwrap().unwrap(), two.unwrap().unwrap());
        assert!(started.elapsed() < WAIT / 2, "{:?}", started.elapsed());
        assert_eq!(shares.held_by("a"), 4);
        // A third call of the agent is not admitted past its cap, and is refused as a limit.
        let refused = shares
            .acquire(&a, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), "plugin_instance_limit");
        assert_eq!(refused.status(), 429);
        assert!(refused.to_string().contains("agent a"), "{refused}");
        drop((one, two));
        assert_eq!(shares.held_by("a"), 0);
        assert_eq!(shares.waiting(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_acquire_leaves_no_waiting_registration() {
        let shares = Arc::new(Shares::default());
        shares.configure(Some(9), 4);
        let agent = |n: &str| -> Arc<str> { Arc::from(n) };
        let (a, b, c) = (agent("a"), agent("b"), agent("c"));
        let short = Duration::from_millis(20);
        let mut held = Vec::new();
        for (who, n) in [(&a, 4), (&b, 3), (&c, 1)] {
            for _ in 0..n {
                held.push(shares.acquire(who, short).await.unwrap());
            }
        }
        // `a`, at its cap, waits; its caller gives up (the client hung up) while it does.
        let mut waiter = Box::pin(shares.acquire(&a, WAIT));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(waiter.as_mut().poll(&mut cx).is_pending());
        assert_eq!(shares.waiting(), 1);
        drop(waiter);
        assert_eq!(shares.waiting(), 0);
        // Nobody waits, so `b` is held to its cap (4), not to a fair share of 9 / 3.
        held.push(shares.acquire(&b, short).await.unwrap());
        assert_eq!(shares.held_by("b"), 4);
    }
}
