//! The audit sink: one event per call and per admin action, written to the store's hash-chained
//! log by one writer task, in batches, off the request path.
//!
//! `durability = "batched"` (default): a call hands its event to the queue and answers at once;
//! the writer commits batches every `flush_ms` or `batch_max` events. `durability = "sync"`: the
//! call waits until its batch is committed, so every answered call is on disk even if the process
//! is killed the next instant.
//!
//! A failing store never drops events silently: while the database is unreachable or busy the
//! writer keeps the batch and retries with backoff, the queue holds the rest, and with
//! `on_failure = "refuse"` (default) the gateway refuses new calls with 503 `audit_unavailable`
//! until writes succeed again. An event the database refuses outright is quarantined in the
//! dead-letter table instead of blocking the log ([`writer`] says how).
//!
//! [`AuditSink::flush`] waits until everything queued before it is written: graceful shutdown
//! and tests use it instead of sleeping.

mod writer;

pub use writer::{JOURNAL_TICK, Journal, JournalTxn};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use palisade_store::{NewAuditEvent, Store};
use tokio::sync::{mpsc, oneshot};

use crate::core::error::CallError;
use crate::core::settings::{AuditSettings, Durability, OnAuditFailure};
use writer::{Msg, Writer};

/// The handle calls use to record events.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Msg>,
    healthy: Arc<AtomicBool>,
    /// Events quarantined since start (the metrics read the same counter).
    quarantined: Arc<AtomicU64>,
    settings: AuditSettings,
}

/// How long a sync call waits for its event to commit before it is answered with an error.
const SYNC_WAIT: Duration = Duration::from_secs(10);

impl AuditSink {
    /// Start the writer task. It adds each quarantined event to `quarantined` (the counter
    /// behind `palisade_audit_quarantined_total`).
    /// `journal`'s ledger work is committed with each batch (see [`Journal`]).
    pub fn start(
        store: Store,
        settings: AuditSettings,
        quarantined: Arc<AtomicU64>,
        journal: Option<Arc<dyn Journal>>,
    ) -> AuditSink {
        let (tx, rx) = mpsc::channel(settings.queue);
        let healthy = Arc::new(AtomicBool::new(true));
        let writer = Writer {
            target: store,
            healthy: healthy.clone(),
            quarantined: quarantined.clone(),
            settings: settings.clone(),
            journal,
        };
        tokio::spawn(writer.run(rx));
        AuditSink {
            tx,
            healthy,
            quarantined,
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

    /// Events the database refused since start, kept in the dead-letter table instead.
    pub fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Return once every event queued before this call is committed (or quarantined). Waits as
    /// long as the store is unreachable; wrap it in a timeout where that matters.
    pub async fn flush(&self) -> Result<(), CallError> {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).await.is_err() {
            return Err(CallError::AuditUnavailable);
        }
        done.await.map_err(|_| CallError::AuditUnavailable)
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
        if self.tx.send(Msg::Event { event, ack }).await.is_err() {
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
