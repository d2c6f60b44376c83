//! The audit sink: one event per call and per admin action, written to the store's hash-chained
//! log by one writer task, in batches, off the request path.
//!
//! `durability = "batched"` (default): a call hands its event to the queue and answers at once;
//! the writer commits batches every `flush_ms` or `batch_max` events. `durability = "sync"`: the
//! call waits until its batch is committed, so every answered call is on disk even if the process
//! is killed the next instant.
//!
//! A failing store never drops events silently: the writer keeps the batch and retries with
//! backoff, the queue holds the rest, and with `on_failure = "refuse"` (default) the gateway
//! refuses new calls with 503 `audit_unavailable` until writes succeed again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_store::{NewAuditEvent, Store};
use tokio::sync::{mpsc, oneshot};

use crate::config::{AuditSettings, Durability, OnAuditFailure};
use crate::error::CallError;

struct Job {
    /// `None`: a flush marker, acknowledged once everything queued before it is committed.
    event: Option<NewAuditEvent>,
    ack: Option<oneshot::Sender<()>>,
}

/// The handle calls use to record events.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Job>,
    healthy: Arc<AtomicBool>,
    settings: AuditSettings,
}

/// How long a sync call waits for its event to commit before it is answered with an error.
const SYNC_WAIT: Duration = Duration::from_secs(10);

impl AuditSink {
    /// Start the writer task.
    pub fn start(store: Store, settings: AuditSettings) -> AuditSink {
        let (tx, rx) = mpsc::channel(settings.queue);
        let healthy = Arc::new(AtomicBool::new(true));
        tokio::spawn(writer(store, rx, healthy.clone(), settings.clone()));
        AuditSink {
            tx,
            healthy,
            settings,
        }
    }

    pub fn settings(&self) -> &AuditSettings {
        &self.settings
    }

    /// Whether new calls may start: refused while the log cannot be written (or its queue is
    /// nearly full) and the config says to refuse rather than run unaudited.
    pub fn admit(&self) -> Result<(), CallError> {
        if self.settings.on_failure == OnAuditFailure::Continue {
            return Ok(());
        }
        let nearly_full = self.tx.capacity() < self.settings.queue / 20;
        if !self.healthy.load(Ordering::Relaxed) || nearly_full {
            return Err(CallError::AuditUnavailable);
        }
        Ok(())
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Record an event. With sync durability, returns once it is committed.
    pub async fn record(&self, event: NewAuditEvent) -> Result<(), CallError> {
        let sync = self.settings.durability == Durability::Sync;
        let (ack, done) = if sync {
            let (a, d) = oneshot::channel();
            (Some(a), Some(d))
        } else {
            (None, None)
        };
        // A full queue waits (back-pressure) rather than dropping the event.
        if self
            .tx
            .send(Job {
                event: Some(event),
                ack,
            })
            .await
            .is_err()
        {
            tracing::error!(target: "palisade::audit", "audit writer is gone; event not recorded");
            return Err(CallError::AuditUnavailable);
        }
        if let Some(done) = done {
            match tokio::time::timeout(SYNC_WAIT, done).await {
                Ok(Ok(())) => {}
                _ => return Err(CallError::AuditUnavailable),
            }
        }
        Ok(())
    }
}

impl AuditSink {
    /// Return once every event queued before this call is committed.
    pub async fn flush(&self) -> Result<(), CallError> {
        let (ack, done) = oneshot::channel();
        let job = Job {
            event: None,
            ack: Some(ack),
        };
        if self.tx.send(job).await.is_err() {
            return Err(CallError::AuditUnavailable);
        }
        done.await.map_err(|_| CallError::AuditUnavailable)
    }
}

async fn writer(
    store: Store,
    mut rx: mpsc::Receiver<Job>,
    healthy: Arc<AtomicBool>,
    settings: AuditSettings,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(settings.batch_max);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        // Gather what else is queued, waiting at most `flush` for more in batched mode.
        let deadline = tokio::time::Instant::now() + settings.flush;
        while batch.len() < settings.batch_max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Sync callers are waiting: commit what we have now.
                    if batch.iter().any(|j| j.ack.is_some()) {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(job)) => batch.push(job),
                        _ => break,
                    }
                }
            }
        }
        let events: Vec<NewAuditEvent> = batch.iter().filter_map(|j| j.event.clone()).collect();
        let mut backoff = Duration::from_millis(50);
        while !events.is_empty() {
            match store.append_audit(&events).await {
                Ok(_) => {
                    if !healthy.swap(true, Ordering::Relaxed) {
                        tracing::warn!(target: "palisade::audit", "audit log writable again");
                    }
                    break;
                }
                Err(e) => {
                    if healthy.swap(false, Ordering::Relaxed) {
                        tracing::error!(
                            target: "palisade::audit",
                            "cannot write the audit log ({e}); {} events held, retrying",
                            events.len()
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        let mut seen: HashMap<&str, i64> = HashMap::new();
        for e in &events {
            if let Some(a) = e.agent.as_deref()
                && e.kind != "admin"
            {
                let t = seen.entry(a).or_insert(e.time_ms);
                *t = (*t).max(e.time_ms);
            }
        }
        for (agent, at) in seen {
            if let Err(e) = store.touch_last_seen(agent, at).await {
                tracing::debug!("cannot update last_seen of {agent}: {e}");
            }
        }
        for job in batch.drain(..) {
            if let Some(ack) = job.ack {
                let _ = ack.send(());
            }
        }
    }
}
