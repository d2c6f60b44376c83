//! The replica's ledger: reserve and settle in memory against leases of headroom taken from the
//! shared store, so a governed call pays no store transaction of its own.
//!
//! For each counter a call reserves on, the replica holds a lease (`palisade_store::lease`): an
//! amount counted in the counter's `reserved` for every replica to see. A reservation that fits
//! in the lease's free room (`held - reserved - pending`) is admitted under a mutex in
//! microseconds; a settle moves the call's real cost into `pending`; the audit writer commits the
//! pending spend in its batch transaction (this module is its [`Journal`]), so spend is exactly
//! as durable as the audit events. A lease that lacks room grows by a quarter of what the counter
//! has free (at least this call's need, at most [`CHUNK_CALLS`] calls' worth); once fewer than
//! [`LAST_SLICE_CALLS`] calls' worth is free it gives its idle room back and the call reserves
//! directly in the store, exact to the cent. Leases idle for [`IDLE_MS`] go back, and all go back
//! on shutdown ([`Leased::close`]). While the replica lives its leases and direct reservations are
//! renewed, so a stream longer than the TTL keeps its hold; a dead replica's expire.
//!
//! Overspend across replicas is bounded by construction: every admitted amount is inside a lease
//! or a direct reservation, and both were taken under the limit in the store. What a call costs
//! beyond its reservation (an overrun) is still charged, and counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use palisade_store::{
    CounterKey, LeaseChange, LeaseOutcome, LeaseReport, LeaseSync, LeaseTarget, Reservation, Store,
};

use super::{to_store_amount, unit_to_store, window_to_store};
use crate::audit::{Journal, JournalTxn};
use crate::plugins::bindings::{Amount, Exceeded, ReserveError, Unit, Window};

/// A lease grows by at most this many calls' worth at a time.
pub const CHUNK_CALLS: u64 = 64;
/// With less than this many calls' worth free, calls reserve directly in the store.
pub const LAST_SLICE_CALLS: u64 = 8;
/// A lease nobody reserved on for this long goes back to the counter.
pub const IDLE_MS: i64 = 1_000;

/// One counter as this replica sees it.
#[derive(Debug, Default, Clone)]
struct Counter {
    lease: Option<i64>,
    /// What the lease holds in the store.
    held: u64,
    /// Held by this replica's calls in flight.
    reserved: u64,
    /// Settled here, not yet committed to the store (still inside `held`).
    pending: u64,
    /// The limit the lease was last grown under; a lower one re-checks in the store.
    limit: u64,
    last_used: i64,
    /// A sync may shrink the lease: no call is admitted on it until the sync is done.
    frozen: bool,
}

impl Counter {
    fn room(&self) -> u64 {
        self.held
            .saturating_sub(self.reserved.saturating_add(self.pending))
    }
}

enum Open {
    /// Admitted against leases: the amount per counter.
    Local(Vec<(CounterKey, u64)>),
    /// Reserved directly in the store under this id, with the amount per counter.
    Direct(i64, Vec<(CounterKey, u64)>),
}

#[derive(Default)]
struct State {
    counters: HashMap<CounterKey, Counter>,
    open: HashMap<u64, Open>,
    next_id: u64,
}

/// The leased ledger of one replica.
pub struct Leased {
    store: Store,
    replica: String,
    ttl_ms: AtomicU64,
    /// Added to the wall clock: tests move time forward with it.
    skew_ms: AtomicI64,
    state: Mutex<State>,
    /// One store sync at a time, so lease sizes are only changed by its holder.
    ops: Arc<tokio::sync::Mutex<()>>,
    last_heartbeat: AtomicI64,
    overruns: AtomicU64,
    syncs: AtomicU64,
    /// Releases of direct reservations still running in the background ([`Leased::close`]
    /// waits for them).
    releasing: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Why a reservation in store terms was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// This limit would have been passed (the store's figures).
    Exceeded(palisade_store::Exceeded),
    /// The store could not be reached.
    Unavailable(String),
}

/// Per call, the amounts by counter (amounts on the same counter summed, the lowest limit).
type Wanted = BTreeMap<CounterKey, (u64, u64)>;

impl Leased {
    pub fn new(store: Store, ttl: Duration) -> Leased {
        Leased {
            store,
            replica: crate::core::ids::new_id("replica"),
            ttl_ms: AtomicU64::new(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            skew_ms: AtomicI64::new(0),
            state: Mutex::default(),
            ops: Arc::default(),
            last_heartbeat: AtomicI64::new(0),
            overruns: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            releasing: Mutex::default(),
        }
    }

    fn now(&self) -> i64 {
        crate::core::clock::now_ms().saturating_add(self.skew_ms.load(Ordering::Relaxed))
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    pub fn set_ttl(&self, ttl: Duration) {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.ttl_ms.store(ms, Ordering::Relaxed);
    }

    /// Move this ledger's clock forward (tests of expiry and renewal).
    pub fn skew_clock(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.skew_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The current time as this ledger sees it (unix ms).
    pub fn now_ms(&self) -> i64 {
        self.now()
    }

    /// Settlements that charged more than their reservation held.
    pub fn overruns(&self) -> u64 {
        self.overruns.load(Ordering::Relaxed)
    }

    /// Store transactions this ledger ran on its own (lease growth), not counting the audit
    /// batches it rides in.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wanted(amounts: &[palisade_store::Amount], now: i64) -> Wanted {
        let mut w = Wanted::new();
        for a in amounts {
            let key = CounterKey {
                scope: a.scope.clone(),
                unit: a.unit,
                window: a.window,
                window_start: palisade_store::ledger::window_start(a.window, now),
            };
            let e = w.entry(key).or_insert((0, u64::MAX));
            e.0 = e.0.saturating_add(a.amount);
            e.1 = e.1.min(a.limit);
        }
        w
    }

    /// Admit against the leases if every counter has room; else the counters that lack it.
    fn try_local(&self, wanted: &Wanted, now: i64) -> Result<u64, Vec<CounterKey>> {
        // Leases not renewed for half the TTL may have expired: ask the store first.
        let ttl_ms = i64::try_from(self.ttl_ms.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        if now.saturating_sub(self.last_heartbeat.load(Ordering::Relaxed)) >= ttl_ms / 2 {
            return Err(wanted.keys().cloned().collect());
        }
        let mut st = self.lock();
        let missing: Vec<CounterKey> = wanted
            .iter()
            .filter(|(k, (amount, limit))| {
                st.counters.get(*k).is_none_or(|c| {
                    c.frozen || c.lease.is_none() || *limit < c.limit || c.room() < *amount
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        let mut holds = Vec::with_capacity(wanted.len());
        for (k, (amount, _)) in wanted {
            if let Some(c) = st.counters.get_mut(k) {
                c.reserved = c.reserved.saturating_add(*amount);
                c.last_used = now;
            }
            holds.push((k.clone(), *amount));
        }
        st.next_id += 1;
        let id = st.next_id;
        st.open.insert(id, Open::Local(holds));
        Ok(id)
    }

    /// Hold every amount or none (the plugins' `reserve`).
    pub async fn reserve(&self, amounts: &[Amount]) -> Result<u64, ReserveError> {
        let amounts: Vec<palisade_store::Amount> = amounts.iter().map(to_store_amount).collect();
        match self.reserve_counters(&amounts).await {
            Ok(id) => Ok(id),
            Err(Refused::Exceeded(e)) => Err(ReserveError::Exceeded(Exceeded {
                scope: e.scope,
                unit: super::unit_from_store(e.unit),
                window: super::window_from_store(e.window),
                spent: e.spent,
                reserved: e.reserved,
                limit: e.limit,
            })),
            Err(Refused::Unavailable(m)) => Err(ReserveError::Unavailable(m)),
        }
    }

    /// Hold every amount or none, in the store's terms (any unit and window, the host's own
    /// rate and concurrency limits included).
    pub async fn reserve_counters(
        &self,
        amounts: &[palisade_store::Amount],
    ) -> Result<u64, Refused> {
        let now = self.now();
        let wanted = Self::wanted(amounts, now);
        // Calls in flight are never spent, so a lease on them would only go back once this
        // replica had no call in flight at all: a busy replica would keep its share of the
        // limit for good while the others are refused. They are held in the store, exactly.
        if amounts
            .iter()
            .any(|a| a.unit == palisade_store::Unit::Calls)
        {
            return self.direct(amounts, &wanted, now).await;
        }
        for _ in 0..3 {
            let missing = match self.try_local(&wanted, now) {
                Ok(id) => return Ok(id),
                Err(missing) => missing,
            };
            let ops = self.ops.lock().await;
            // Another call may have grown the leases while this one waited.
            let missing = match self.try_local(&wanted, now) {
                Ok(id) => return Ok(id),
                Err(_) => missing,
            };
            let (sync, pending) = {
                let mut st = self.lock();
                let mut changes = Vec::with_capacity(missing.len());
                let mut pending = Vec::with_capacity(missing.len());
                for k in missing {
                    let (amount, limit) = wanted.get(&k).copied().unwrap_or((0, u64::MAX));
                    let c = st.counters.entry(k.clone()).or_default();
                    c.frozen = true;
                    let c = c.clone();
                    let after_spend = c.held.saturating_sub(c.pending);
                    let need = c
                        .reserved
                        .saturating_add(amount)
                        .saturating_sub(after_spend);
                    changes.push(LeaseChange {
                        key: k.clone(),
                        lease: c.lease,
                        spend: c.pending,
                        target: LeaseTarget::Grow {
                            need,
                            want: need.max(amount.saturating_mul(CHUNK_CALLS)),
                            floor: amount.saturating_mul(LAST_SLICE_CALLS),
                            limit,
                            in_use: c.reserved,
                        },
                    });
                    pending.push((k, c.pending, Some(limit)));
                }
                drop(st);
                (self.sync_of(changes, now), pending)
            };
            self.syncs.fetch_add(1, Ordering::Relaxed);
            let now_synced = sync.now_ms;
            let report = match self.store.sync_leases(sync).await {
                Ok(r) => r,
                Err(e) => {
                    self.unfreeze(&pending);
                    drop(ops);
                    return Err(Refused::Unavailable(format!("ledger unavailable: {e}")));
                }
            };
            let scarce = report
                .results
                .iter()
                .any(|r| matches!(r.outcome, LeaseOutcome::Scarce { .. }));
            self.apply(&pending, &report, now_synced);
            drop(ops);
            if scarce {
                return self.direct(amounts, &wanted, now).await;
            }
        }
        self.direct(amounts, &wanted, now).await
    }

    /// Reserve in the store itself, exact: near a limit, or when leases keep racing.
    async fn direct(
        &self,
        amounts: &[palisade_store::Amount],
        wanted: &Wanted,
        now: i64,
    ) -> Result<u64, Refused> {
        match self.reserve_in_store(amounts, now).await {
            Ok(Reservation::Held(sid)) => {
                let mut st = self.lock();
                st.next_id += 1;
                let id = st.next_id;
                let holds = wanted.iter().map(|(k, (a, _))| (k.clone(), *a)).collect();
                st.open.insert(id, Open::Direct(sid, holds));
                Ok(id)
            }
            Ok(Reservation::Exceeded(e)) => Err(Refused::Exceeded(e)),
            Err(e) => {
                tracing::warn!("ledger reserve failed: {e}");
                Err(Refused::Unavailable(format!("ledger unavailable: {e}")))
            }
        }
    }

    /// The store reservation behind [`Leased::direct`], run in a task of its own: a caller
    /// cancelled while the store works (the client hung up, the hook hit its bound) would
    /// otherwise leave a hold nobody records, taken until the TTL. When the asker is gone by
    /// the time the store answers, the task gives the hold back itself.
    async fn reserve_in_store(
        &self,
        amounts: &[palisade_store::Amount],
        now: i64,
    ) -> Result<Reservation, palisade_store::StoreError> {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return self.store.reserve_at(amounts, now, self.ttl()).await;
        };
        let (store, amounts, ttl) = (self.store.clone(), amounts.to_vec(), self.ttl());
        let (tx, rx) = tokio::sync::oneshot::channel();
        rt.spawn(async move {
            let r = store.reserve_at(&amounts, now, ttl).await;
            if let Err(Ok(Reservation::Held(sid))) = tx.send(r)
                && let Err(e) = store.release(sid).await
            {
                tracing::warn!("releasing a reservation its call left behind failed: {e}");
            }
        });
        rx.await
            .unwrap_or(Err(palisade_store::StoreError::Cancelled))
    }

    fn sync_of(&self, changes: Vec<LeaseChange>, now: i64) -> LeaseSync {
        let st = self.lock();
        let renew = st
            .open
            .values()
            .filter_map(|o| match o {
                Open::Direct(sid, _) => Some(*sid),
                Open::Local(_) => None,
            })
            .collect();
        LeaseSync {
            replica: self.replica.clone(),
            changes,
            renew,
            now_ms: now,
            ttl: self.ttl(),
        }
    }

    fn unfreeze(&self, pending: &[(CounterKey, u64, Option<u64>)]) {
        let mut st = self.lock();
        for (k, _, _) in pending {
            if let Some(c) = st.counters.get_mut(k) {
                c.frozen = false;
            }
        }
    }

    /// Take a committed sync's report: `pending` is, per change, the spend it committed and
    /// the limit it grew under; every lease was renewed at `now`.
    fn apply(&self, pending: &[(CounterKey, u64, Option<u64>)], report: &LeaseReport, now: i64) {
        let mut st = self.lock();
        // A lease the sync did not renew expired while this replica stalled: it holds nothing.
        for (k, c) in st.counters.iter_mut() {
            if let Some(id) = c.lease
                && report.alive.binary_search(&id).is_err()
                && !pending.iter().any(|(p, _, _)| p == k)
            {
                tracing::warn!(
                    scope = %k.scope,
                    "a ledger lease of this replica expired before it was renewed (the replica \
                     stalled longer than the reservation TTL); its spend is still charged"
                );
                c.lease = None;
                c.held = 0;
            }
        }
        self.last_heartbeat.fetch_max(now, Ordering::Relaxed);
        for r in &report.results {
            // Matched by key: the store runs the changes in its own (key) order.
            let Some((k, spent, limit)) = pending.iter().find(|(k, _, _)| *k == r.key) else {
                continue;
            };
            let c = st.counters.entry(k.clone()).or_default();
            c.pending = c.pending.saturating_sub(*spent);
            c.frozen = false;
            c.lease = r.lease;
            c.held = r.held;
            if r.lost {
                tracing::warn!(
                    scope = %k.scope,
                    "a ledger lease of this replica expired before it was renewed (the replica \
                     stalled longer than the reservation TTL); its spend is still charged"
                );
            }
            if let (Some(limit), LeaseOutcome::Done) = (limit, r.outcome) {
                c.limit = *limit;
            }
            if c.lease.is_none() && c.reserved == 0 && c.pending == 0 {
                st.counters.remove(k);
            }
        }
    }

    /// Replace a reservation with the real spend.
    pub async fn settle(&self, id: u64, micro_usd: u64, tokens: u64) -> Result<(), String> {
        let open = self.lock().open.remove(&id);
        match open {
            None => Err(format!("no open reservation {id}")),
            Some(Open::Local(holds)) => {
                let mut st = self.lock();
                let mut over = false;
                for (k, amount) in holds {
                    let spend = k.unit.charge(amount, micro_usd, tokens);
                    over |= spend > amount;
                    let c = st.counters.entry(k).or_default();
                    c.reserved = c.reserved.saturating_sub(amount);
                    c.pending = c.pending.saturating_add(spend);
                }
                if over {
                    self.overruns.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Some(Open::Direct(sid, holds)) => {
                if let Err(e) = self.store.settle(sid, micro_usd, tokens).await {
                    if e.is_transient() {
                        // A database blip must not leave the hold to expire (a concurrency
                        // place would stay taken for the TTL): try again in the background.
                        self.retry_in_background(move |store| async move {
                            store.settle(sid, micro_usd, tokens).await
                        });
                    }
                    return Err(e.to_string());
                }
                // An overrun used headroom this replica's leases on the same counters may be
                // counting on (the stream guard grows a call with further reservations, which
                // can be leased, and charges the whole cost here): their next admission asks
                // the store again.
                let mut st = self.lock();
                let mut over = false;
                for (k, amount) in holds {
                    let spend = k.unit.charge(amount, micro_usd, tokens);
                    if spend > amount {
                        over = true;
                        if let Some(c) = st.counters.get_mut(&k) {
                            c.limit = u64::MAX;
                        }
                    }
                }
                if over {
                    self.overruns.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        }
    }

    /// Drop a reservation without spending.
    pub fn release(&self, id: u64) {
        let open = self.lock().open.remove(&id);
        match open {
            None => {}
            Some(Open::Local(holds)) => {
                let mut st = self.lock();
                for (k, amount) in holds {
                    if let Some(c) = st.counters.get_mut(&k) {
                        c.reserved = c.reserved.saturating_sub(amount);
                    }
                }
            }
            Some(Open::Direct(sid, _)) => {
                self.retry_in_background(move |store| async move { store.release(sid).await });
            }
        }
    }

    /// Run a store write that ends a direct reservation in the background, trying again with
    /// backoff (about 12 s in all) if the database fails, so a blip does not leave the hold
    /// to expire with the TTL. [`Leased::close`] waits for these.
    fn retry_in_background<F, Fut>(&self, op: F)
    where
        F: Fn(Store) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), palisade_store::StoreError>> + Send,
    {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let task = rt.spawn(async move {
            let mut delay = Duration::from_millis(100);
            for attempt in 1..=5 {
                match op(store.clone()).await {
                    Ok(()) => return,
                    // Only a failure of the database itself can pass (not "no such hold").
                    Err(e) if attempt == 5 || !e.is_transient() => {
                        tracing::warn!(
                            "ledger write failed {attempt} times (the hold expires): {e}"
                        );
                    }
                    Err(_) => {
                        tokio::time::sleep(delay).await;
                        delay *= 3;
                    }
                }
            }
        });
        let mut releasing = self.releasing.lock().unwrap_or_else(|p| p.into_inner());
        releasing.retain(|t| !t.is_finished());
        releasing.push(task);
    }

    /// Settled spend of a scope in the current window, this replica's uncommitted part included.
    pub async fn spent(&self, scope: &str, unit: Unit, window: Window) -> Result<u64, String> {
        let (unit, window) = (unit_to_store(unit), window_to_store(window));
        let now = self.now();
        let key = CounterKey {
            scope: scope.to_string(),
            unit,
            window,
            window_start: palisade_store::ledger::window_start(window, now),
        };
        let local = self.lock().counters.get(&key).map_or(0, |c| c.pending);
        let stored = self
            .store
            .spent(scope, unit, window)
            .await
            .map_err(|e| e.to_string())?;
        Ok(stored.saturating_add(local))
    }

    /// The work of the next sync, holding the ops lock; `None` when there is none. `closing`
    /// gives every lease without calls in flight back.
    async fn begin_sync(self: &Arc<Self>, closing: bool) -> Option<SyncTxn> {
        let guard = self.ops.clone().lock_owned().await;
        let now = self.now();
        let ttl_ms = i64::try_from(self.ttl_ms.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let heartbeat_due =
            now.saturating_sub(self.last_heartbeat.load(Ordering::Relaxed)) >= (ttl_ms / 4).max(1);
        let mut changes = Vec::new();
        let mut pending = Vec::new();
        {
            let mut st = self.lock();
            for (k, c) in st.counters.iter_mut() {
                let stale = k.window_start != palisade_store::ledger::window_start(k.window, now);
                let idle = c.reserved == 0
                    && (closing || stale || now.saturating_sub(c.last_used) >= IDLE_MS);
                let give_back = idle && c.held > 0;
                if c.pending == 0 && !give_back {
                    continue;
                }
                c.frozen |= give_back;
                changes.push(LeaseChange {
                    key: k.clone(),
                    lease: c.lease,
                    spend: c.pending,
                    target: if idle {
                        LeaseTarget::ShrinkTo(0)
                    } else {
                        LeaseTarget::Keep
                    },
                });
                pending.push((k.clone(), c.pending, None));
            }
        }
        if changes.is_empty() && !heartbeat_due && !closing {
            return None;
        }
        let sync = self.sync_of(changes, now);
        Some(SyncTxn {
            ledger: self.clone(),
            sync,
            pending,
            done: false,
            _guard: guard,
        })
    }

    /// Commit what is pending and renew, in a transaction of its own (the audit writer does it
    /// with each batch; tests and shutdown call this).
    pub async fn sync(self: &Arc<Self>) -> Result<(), String> {
        self.sync_now(false).await
    }

    /// On shutdown, after the last call: commit what is pending and give every lease back.
    /// Direct reservations released just before are ended first.
    pub async fn close(self: &Arc<Self>) -> Result<(), String> {
        let releasing =
            std::mem::take(&mut *self.releasing.lock().unwrap_or_else(|p| p.into_inner()));
        for task in releasing {
            let _ = task.await;
        }
        self.sync_now(true).await
    }

    async fn sync_now(self: &Arc<Self>, closing: bool) -> Result<(), String> {
        let Some(txn) = self.begin_sync(closing).await else {
            return Ok(());
        };
        let report = self
            .store
            .sync_leases(txn.sync.clone())
            .await
            .map_err(|e| e.to_string())?;
        Box::new(txn).committed(report);
        Ok(())
    }
}

/// One sync's work while it is committed; dropped uncommitted, nothing changed.
struct SyncTxn {
    ledger: Arc<Leased>,
    sync: LeaseSync,
    pending: Vec<(CounterKey, u64, Option<u64>)>,
    done: bool,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for SyncTxn {
    fn drop(&mut self) {
        if !self.done {
            self.ledger.unfreeze(&self.pending);
        }
    }
}

impl JournalTxn for SyncTxn {
    fn sync(&self) -> LeaseSync {
        self.sync.clone()
    }
    fn committed(mut self: Box<Self>, report: LeaseReport) {
        self.ledger.apply(&self.pending, &report, self.sync.now_ms);
        self.done = true;
    }
}

/// The audit writer commits the leased ledger's work with each batch.
pub struct LeaseJournal(pub Arc<Leased>);

impl Journal for LeaseJournal {
    fn begin(&self) -> BoxFuture<'_, Option<Box<dyn JournalTxn>>> {
        Box::pin(async move {
            let txn = self.0.begin_sync(false).await?;
            Some(Box::new(txn) as Box<dyn JournalTxn>)
        })
    }
}
