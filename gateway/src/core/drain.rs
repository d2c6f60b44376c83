//! Graceful shutdown: what the gateway's tasks need to know about it, and how the binary waits
//! for them.
//!
//! Every piece of work that ends in an audit event (a call, a stream relay, the finish of a call
//! whose future was dropped) runs as a task spawned through [`Drain::spawn`], so a shutdown can
//! wait until they are all over. A shutdown has two stages:
//!
//! 1. **Draining** ([`Drain::start_draining`]): `/health` answers 503, the listener stops
//!    accepting, running calls and streams go on to their natural end.
//! 2. **Cut** ([`Drain::cut`]), once `[server] drain_secs` have passed: streams end with a
//!    `gateway_draining` error event, calls still waiting (for a provider, an approval) are
//!    stopped and audited as 503 `gateway_draining`.
//!
//! Either way every call's finish (on-complete, settlement, audit event) runs before the binary
//! flushes the audit queue and exits.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// Shared by the server, the call pipeline and the binary.
#[derive(Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

struct Inner {
    draining: watch::Sender<bool>,
    running: AtomicUsize,
    idle: Notify,
    cut: watch::Sender<bool>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("draining", &self.is_draining())
            .field("cut", &self.is_cut())
            .field("running", &self.running())
            .finish()
    }
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            inner: Arc::new(Inner {
                draining: watch::Sender::new(false),
                running: AtomicUsize::new(0),
                idle: Notify::new(),
                cut: watch::Sender::new(false),
            }),
        }
    }
}

/// Counts one tracked task while it lives.
struct Tracked(Arc<Inner>);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Spawn `work` as a task the shutdown waits for.
    pub fn spawn<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        let tracked = Tracked(self.inner.clone());
        tokio::spawn(async move {
            let _tracked = tracked;
            work.await
        })
    }

    /// Tracked tasks still running.
    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::Acquire)
    }

    /// Stage 1: stop taking new work.
    pub fn start_draining(&self) {
        self.inner.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Resolves once draining starts (at once if it has).
    pub async fn draining_signal(&self) {
        let mut rx = self.inner.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Stage 2: end what is still running.
    pub fn cut(&self) {
        self.start_draining();
        self.inner.cut.send_replace(true);
    }

    pub fn is_cut(&self) -> bool {
        *self.inner.cut.borrow()
    }

    /// Resolves once [`Drain::cut`] is called (at once if it was).
    pub async fn cut_signal(&self) {
        let mut rx = self.inner.cut.subscribe();
        let _ = rx.wait_for(|cut| *cut).await;
    }

    /// Wait until no tracked task runs, or `limit` passes; true if they all ended.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let idle = async {
            loop {
                let notified = self.inner.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.running() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, idle).await.is_ok()
    }
}

/// Set when the agent's side of a call went away (hyper dropped the request's future before it
/// was answered); travels in the request's extensions to the call's finish.
#[derive(Clone, Default)]
pub struct ClientGone(Arc<AtomicBool>);

impl ClientGone {
    pub fn is_gone(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// A guard that marks the client gone when dropped before [`Watch::answered`].
    pub fn watch(&self) -> Watch {
        Watch(Some(self.0.clone()))
    }
}

/// See [`ClientGone::watch`].
pub struct Watch(Option<Arc<AtomicBool>>);

impl Watch {
    /// The answer was handed to the connection: the client did not hang up first.
    pub fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_tracked_tasks_and_cuts() {
        let d = Drain::default();
        assert!(d.wait_idle(Duration::from_millis(1)).await);
        let d2 = d.clone();
        d.spawn(async move { d2.cut_signal().await });
        d.spawn(tokio::time::sleep(Duration::from_secs(3)));
        assert_eq!(d.running(), 2);
        assert!(!d.wait_idle(Duration::from_secs(1)).await);
        assert!(!d.is_draining());
        d.cut();
        assert!(d.is_draining() && d.is_cut());
        assert!(d.wait_idle(Duration::from_secs(5)).await);
        assert_eq!(d.running(), 0);
    }

    #[test]
    fn a_dropped_watch_marks_the_client_gone() {
        let g = ClientGone::default();
        g.watch().answered();
        assert!(!g.is_gone());
        drop(g.watch());
        assert!(g.is_gone());
    }
}
