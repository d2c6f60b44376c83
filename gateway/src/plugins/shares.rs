//! Fair shares of plugin instances between agents.
//!
//! The engine has `[plugin_host] max_instances` instance slots for every plugin together, and
//! a call keeps an instance for as long as its plugin has hooks left (a plugin with `on-text`
//! for a whole stream). Without shares, one agent holding hundreds of slow streams takes every
//! slot and every other agent's call fails with `plugin_unavailable`. Here each instance a
//! call checks out takes a ticket for its agent first:
//!
//! - an agent never holds more than `[limits] instances_per_agent` (default: half the pool);
//! - while other agents wait, an agent at or above its fair share (`max_instances` divided by
//!   the agents holding or waiting, at least 1) gets no more, so the next instance freed goes
//!   to an agent below its share;
//! - with the pool full, a call waits (up to [`WAIT`]) for an instance to be freed, instead of
//!   failing at once; past that it fails with `plugin_unavailable`, naming the share.
//!
//! Tickets are counted per checked-out instance, not per idle pooled one; the engine's
//! semaphore still bounds how many instances exist.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::core::error::PluginFault;

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

    /// A ticket for one instance for `agent`, waiting up to `wait` for its share.
    pub async fn acquire(
        self: &Arc<Self>,
        agent: &Arc<str>,
        wait: Duration,
    ) -> Result<Ticket, PluginFault> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut waiting = false;
        loop {
            // Registered before the check, so a release between the check and the wait is
            // not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let (held, limit) = {
                let mut st = self.lock();
                let held = st.held.get(agent).copied().unwrap_or(0);
                let limit = self.limit_for(&st, agent);
                let room = st.in_use < self.total.load(Ordering::Relaxed);
                if held < limit && room {
                    *st.held.entry(agent.clone()).or_default() += 1;
                    st.in_use += 1;
                    if waiting {
                        unwait(&mut st, agent);
                    }
                    return Ok(Ticket {
                        shares: self.clone(),
                        agent: agent.clone(),
                    });
                }
                if !waiting {
                    *st.waiting.entry(agent.clone()).or_default() += 1;
                    waiting = true;
                }
                (held, limit)
            };
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                unwait(&mut self.lock(), agent);
                // Others waiting may now be entitled to more.
                self.freed.notify_waiters();
                return Err(PluginFault::Unavailable(format!(
                    "agent '{agent}' holds {held} plugin instances, its share now being {limit} \
                     (or every instance is in use), and none was freed within {} s; raise \
                     [limits] instances_per_agent or [plugin_host] max_instances",
                    wait.as_secs()
                )));
            }
        }
    }
}

fn unwait(st: &mut State, agent: &Arc<str>) {
    if let Some(n) = st.waiting.get_mut(agent) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            st.waiting.remove(agent);
        }
    }
}

#[cfg(test)]
mod tests {
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
}
