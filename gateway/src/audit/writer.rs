//! The audit writer task: gathers queued events into batches and commits them, telling the two
//! kinds of store failure apart.
//!
//! - **Transient** (connection lost, database locked or busy, pool timeout, or anything not
//!   known to be the rows' fault): the batch is kept and retried with backoff (50 ms doubling
//!   to 2 s), and the sink reports itself unhealthy while it lasts.
//! - **Data** ([`StoreError::is_data`]: the database refuses the values): retrying cannot help,
//!   so the batch is split in halves, down to single events, each part written on its own; an
//!   event that still fails alone is quarantined in the store's dead-letter table
//!   (`audit_dead_letter`), counted (`palisade_audit_quarantined_total`), logged at error
//!   level, and the writer goes on. Events keep their order in the chain.
//!
//! A flush is a message through the same queue: its ack is sent once every event queued before
//! it is committed or quarantined.
//!
//! The ledger's [`Journal`] rides along: each batch's transaction also carries the spend the
//! replica settled in memory since the last one (a [`LeaseSync`]), so a call's spend commits
//! with (or before) its audit event. When no events come for [`JOURNAL_TICK`] the writer still
//! asks the journal, which renews its leases and hands idle ones back.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use palisade_store::{LeaseReport, LeaseSync, NewAuditEvent, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::core::settings::AuditSettings;

/// What the queue carries.
// Events are the traffic; boxing them to shrink the rare flush would cost an allocation a call.
#[allow(clippy::large_enum_variant)]
pub(super) enum Msg {
    /// An event, with an ack for a caller that waits for its commit (sync durability).
    Event {
        event: NewAuditEvent,
        ack: Option<oneshot::Sender<()>>,
    },
    /// Ack once everything queued before is committed or quarantined.
    Flush(oneshot::Sender<()>),
}

/// Ledger work committed in the same transaction as each audit batch: the spend settled in
/// memory (the plugins' ledger implements it).
pub trait Journal: Send + Sync + 'static {
    /// What to commit now, if anything. The journal stays locked until the returned
    /// [`JournalTxn`] is committed or dropped (dropped: nothing happened, it is offered again).
    fn begin(&self) -> BoxFuture<'_, Option<Box<dyn JournalTxn>>>;
}

/// One batch's share of ledger work.
pub trait JournalTxn: Send {
    fn sync(&self) -> LeaseSync;
    /// The transaction committed with these results.
    fn committed(self: Box<Self>, report: LeaseReport);
}

/// How long the writer waits for events before it asks the journal anyway.
pub const JOURNAL_TICK: Duration = Duration::from_secs(1);

/// Where the writer puts events: the store, or in tests one that fails on demand.
pub(super) trait Target: Send + Sync + 'static {
    fn append(
        &self,
        events: &[NewAuditEvent],
        sync: Option<LeaseSync>,
    ) -> impl Future<Output = Result<LeaseReport, StoreError>> + Send;
    fn quarantine(
        &self,
        event: &NewAuditEvent,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn touch_last_seen(
        &self,
        agent: &str,
        at: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl Target for Store {
    async fn append(
        &self,
        events: &[NewAuditEvent],
        sync: Option<LeaseSync>,
    ) -> Result<LeaseReport, StoreError> {
        self.append_audit_with(events, sync).await.map(|(_, r)| r)
    }
    async fn quarantine(&self, event: &NewAuditEvent, reason: &str) -> Result<(), StoreError> {
        self.quarantine_audit(event, reason).await.map(|_| ())
    }
    async fn touch_last_seen(&self, agent: &str, at: i64) -> Result<(), StoreError> {
        Store::touch_last_seen(self, agent, at).await
    }
}

/// Backoff between retries of a transient failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(super) struct Writer<T> {
    pub target: T,
    pub healthy: Arc<AtomicBool>,
    pub quarantined: Arc<AtomicU64>,
    pub settings: AuditSettings,
    pub journal: Option<Arc<dyn Journal>>,
}

impl<T: Target> Writer<T> {
    /// Run until every sender is gone.
    pub async fn run(self, mut rx: mpsc::Receiver<Msg>) {
        let mut events: Vec<NewAuditEvent> = Vec::with_capacity(self.settings.batch_max);
        let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let first = match tokio::time::timeout(JOURNAL_TICK, rx.recv()).await {
                Ok(Some(first)) => first,
                Ok(None) => return,
                Err(_) => {
                    // Idle: the journal may still have leases to renew or give back.
                    self.commit(&[]).await;
                    continue;
                }
            };
            take(first, &mut events, &mut acks);
            // Gather what else is queued, waiting at most `flush` for more, unless someone
            // waits for the commit (a sync caller or a flush): then commit what we have now.
            let deadline = tokio::time::Instant::now() + self.settings.flush;
            while events.len() < self.settings.batch_max && acks.is_empty() {
                match rx.try_recv() {
                    Ok(msg) => take(msg, &mut events, &mut acks),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(msg)) => take(msg, &mut events, &mut acks),
                            _ => break,
                        }
                    }
                }
            }
            self.commit(&events).await;
            self.touch_agents(&events).await;
            events.clear();
            for ack in acks.drain(..) {
                // The waiter may have given up; nothing to tell then.
                let _ = ack.send(());
            }
        }
    }

    /// Write `events` in order: every one ends up in the log or in the dead-letter table. The
    /// journal's work goes with the first part written (or alone, if none is).
    pub async fn commit(&self, events: &[NewAuditEvent]) {
        let mut txn = match &self.journal {
            Some(j) => j.begin().await,
            None => None,
        };
        // A stack of ranges still to write; the first half is pushed last so it goes first.
        let mut pending: Vec<Range<usize>> = Vec::new();
        pending.push(0..events.len());
        while let Some(range) = pending.pop() {
            let part = &events[range.clone()];
            if part.is_empty() {
                continue;
            }
            match self.append_retrying(part, &mut txn).await {
                Ok(()) => {}
                Err(e) => match part {
                    [one] => self.quarantine(one, &e).await,
                    _ => {
                        let mid = range.start + part.len() / 2;
                        pending.push(mid..range.end);
                        pending.push(range.start..mid);
                    }
                },
            }
        }
        if txn.is_some()
            && let Err(e) = self.append_retrying(&[], &mut txn).await
        {
            // Never the rows' fault (amounts are clamped); the spend stays in memory, offered
            // again with the next batch.
            tracing::error!(target: "palisade::audit", "the ledger sync was refused: {e}");
        }
    }

    /// Append `part`, retrying with backoff for as long as the failure is not the rows' fault;
    /// the data error otherwise.
    /// With a journal transaction, it is committed in the same transaction and taken.
    async fn append_retrying(
        &self,
        part: &[NewAuditEvent],
        txn: &mut Option<Box<dyn JournalTxn>>,
    ) -> Result<(), StoreError> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let sync = txn.as_ref().map(|t| t.sync());
            match self.target.append(part, sync).await {
                Ok(results) => {
                    if let Some(t) = txn.take() {
                        t.committed(results);
                    }
                    self.set_healthy();
                    return Ok(());
                }
                Err(e) if e.is_data() => return Err(e),
                Err(e) => {
                    self.set_unhealthy(&e, part.len());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Set aside one event the database refuses, so the log goes on without it.
    async fn quarantine(&self, event: &NewAuditEvent, refused: &StoreError) {
        let reason = refused.to_string();
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.target.quarantine(event, &reason).await {
                Ok(()) => {
                    self.quarantined.fetch_add(1, Ordering::Relaxed);
                    self.set_healthy();
                    tracing::error!(
                        target: "palisade::audit",
                        request_id = %event.request_id,
                        kind = %event.kind,
                        "the database refused an audit event ({reason}); it is quarantined in \
                         audit_dead_letter and the log goes on"
                    );
                    return;
                }
                Err(e) if e.is_data() => {
                    // Even the dead-letter row is refused: this line is the last record of it.
                    self.quarantined.fetch_add(1, Ordering::Relaxed);
                    let json = serde_json::to_string(event).unwrap_or_default();
                    tracing::error!(
                        target: "palisade::audit",
                        request_id = %event.request_id,
                        event = %json,
                        "the database refused an audit event ({reason}) and its dead-letter \
                         row ({e}); the event is kept only in this log line"
                    );
                    return;
                }
                Err(e) => {
                    self.set_unhealthy(&e, 1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Note each agent's latest call (the registry's `last_seen`); best effort.
    async fn touch_agents(&self, events: &[NewAuditEvent]) {
        let mut seen: HashMap<&str, i64> = HashMap::new();
        for e in events {
            if let Some(a) = e.agent.as_deref()
                && e.kind != "admin"
            {
                let t = seen.entry(a).or_insert(e.time_ms);
                *t = (*t).max(e.time_ms);
            }
        }
        for (agent, at) in seen {
            if let Err(e) = self.target.touch_last_seen(agent, at).await {
                tracing::debug!("cannot update last_seen of {agent}: {e}");
            }
        }
    }

    fn set_healthy(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::warn!(target: "palisade::audit", "audit log writable again");
        }
    }

    fn set_unhealthy(&self, e: &StoreError, held: usize) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::error!(
                target: "palisade::audit",
                "cannot write the audit log ({e}); {held} events held, retrying"
            );
        }
    }
}

fn take(msg: Msg, events: &mut Vec<NewAuditEvent>, acks: &mut Vec<oneshot::Sender<()>>) {
    match msg {
        Msg::Event { event, ack } => {
            events.push(event);
            acks.extend(ack);
        }
        Msg::Flush(ack) => acks.push(ack),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::core::settings::{Durability, OnAuditFailure};

    /// Refuses (as a data error) any batch holding an event whose target is "bad", fails the
    /// first `transient` appends as unreachable, and records what it wrote and quarantined.
    #[derive(Default)]
    struct Fake {
        transient: Mutex<u32>,
        written: Mutex<Vec<String>>,
        quarantined: Mutex<Vec<(String, String)>>,
        appends: Mutex<u32>,
    }

    impl Target for Arc<Fake> {
        async fn append(
            &self,
            events: &[NewAuditEvent],
            _: Option<LeaseSync>,
        ) -> Result<LeaseReport, StoreError> {
            *self.appends.lock().unwrap() += 1;
            {
                let mut t = self.transient.lock().unwrap();
                if *t > 0 {
                    *t -= 1;
                    // Transient, like a lost connection.
                    return Err(StoreError::Cancelled);
                }
            }
            if events.iter().any(|e| e.target == "bad") {
                return Err(StoreError::Invalid("refused".into()));
            }
            let mut w = self.written.lock().unwrap();
            w.extend(events.iter().map(|e| e.target.clone()));
            Ok(LeaseReport::default())
        }
        async fn quarantine(&self, event: &NewAuditEvent, reason: &str) -> Result<(), StoreError> {
            let mut q = self.quarantined.lock().unwrap();
            q.push((event.request_id.clone(), reason.to_string()));
            Ok(())
        }
        async fn touch_last_seen(&self, _: &str, _: i64) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn settings() -> AuditSettings {
        AuditSettings {
            durability: Durability::Batched,
            on_failure: OnAuditFailure::Refuse,
            store_bodies: false,
            batch_max: 64,
            flush: Duration::from_millis(5),
            queue: 100,
        }
    }

    fn writer(fake: &Arc<Fake>) -> Writer<Arc<Fake>> {
        Writer {
            target: fake.clone(),
            healthy: Arc::new(AtomicBool::new(true)),
            quarantined: Arc::new(AtomicU64::new(0)),
            settings: settings(),
            journal: None,
        }
    }

    fn event(i: usize, target: &str) -> NewAuditEvent {
        NewAuditEvent {
            request_id: format!("r{i}"),
            kind: "llm".into(),
            target: target.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_refused_row_is_quarantined_and_the_rest_written_in_order() {
        let fake = Arc::new(Fake::default());
        let w = writer(&fake);
        let events: Vec<_> = (0..10)
            .map(|i| event(i, if i == 3 || i == 7 { "bad" } else { "ok" }))
            .collect();
        w.commit(&events).await;
        assert_eq!(fake.written.lock().unwrap().len(), 8);
        let q = fake.quarantined.lock().unwrap().clone();
        let ids: Vec<_> = q.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["r3", "r7"]);
        assert!(q[0].1.contains("refused"), "{q:?}");
        assert_eq!(w.quarantined.load(Ordering::Relaxed), 2);
        assert!(w.healthy.load(Ordering::Relaxed));
        // Halving: at most a few appends per bad row, not one per event.
        assert!(*fake.appends.lock().unwrap() <= 14);
    }

    #[tokio::test]
    async fn order_is_kept_around_a_quarantined_row() {
        let fake = Arc::new(Fake::default());
        let w = writer(&fake);
        let events: Vec<_> = (0..5)
            .map(|i| event(i, if i == 2 { "bad" } else { "ok" }))
            .enumerate()
            .map(|(i, mut e)| {
                if e.target == "ok" {
                    e.target = format!("ok{i}");
                }
                e
            })
            .collect();
        w.commit(&events).await;
        assert_eq!(*fake.written.lock().unwrap(), ["ok0", "ok1", "ok3", "ok4"]);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_not_quarantined() {
        let fake = Arc::new(Fake::default());
        *fake.transient.lock().unwrap() = 2;
        let w = writer(&fake);
        let healthy = w.healthy.clone();
        w.commit(&[event(0, "ok"), event(1, "ok")]).await;
        assert_eq!(fake.written.lock().unwrap().len(), 2);
        assert!(fake.quarantined.lock().unwrap().is_empty());
        assert_eq!(*fake.appends.lock().unwrap(), 3);
        assert!(healthy.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn flush_acks_after_everything_before_it() {
        let fake = Arc::new(Fake::default());
        let (tx, rx) = mpsc::channel(100);
        tokio::spawn(writer(&fake).run(rx));
        for i in 0..20 {
            let target = if i == 5 { "bad" } else { "ok" };
            let msg = Msg::Event {
                event: event(i, target),
                ack: None,
            };
            assert!(tx.send(msg).await.is_ok());
        }
        let (ack, done) = oneshot::channel();
        assert!(tx.send(Msg::Flush(ack)).await.is_ok());
        assert!(done.await.is_ok());
        assert_eq!(fake.written.lock().unwrap().len(), 19);
        assert_eq!(fake.quarantined.lock().unwrap().len(), 1);
    }
}
