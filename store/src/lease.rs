//! Ledger leases: headroom a replica takes from a shared counter so it can reserve and settle
//! in memory, and the one transaction that brings a replica's leases up to date.
//!
//! A lease of `amount` on a counter is counted in the counter's `reserved`, exactly like a
//! reservation, so every replica (and every direct reservation) sees it and nothing can be
//! reserved past the limit. The replica then admits calls against the lease in memory; what
//! they spend is moved from the lease into `spent` by [`Store::sync_leases`], which the gateway
//! runs inside the audit writer's batch transaction ([`Store::append_audit_with`]), so settled
//! spend is exactly as durable as the audit events that mention it.
//!
//! A sync, for each counter it names: renews the replica's leases (`expires_at`), moves settled
//! spend into `spent`, and then keeps the lease, shrinks it (giving headroom back), or grows it
//! by a share of what remains (a quarter of the free headroom, at least what the caller needs,
//! at most what it wants), refusing to grow when less than the caller's `floor` remains: near
//! the limit the caller reserves directly, one call at a time, so the last slice is exact.
//! A lease whose replica stops renewing it expires and [`Store::expire_reservations`] returns
//! it; should the replica come back, its spend still lands in `spent` (the lease is "lost").

use std::time::Duration;

use crate::ledger::{Unit, Window};
use crate::{BeginWrite, Store, StoreError, on_pool};

/// A growing lease takes this share of the counter's free headroom.
const SHARE: u64 = 4;

/// Amounts are kept below this, so sums in SQL cannot overflow.
pub(crate) const MAX_AMOUNT: u64 = 1 << 60;

/// One counter: (scope, unit, window, window start).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    pub scope: String,
    pub unit: Unit,
    pub window: Window,
    /// Start (unix ms) of the window the counter covers; see [`crate::ledger::window_start`].
    pub window_start: i64,
}

/// What a sync does with one of the replica's leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseTarget {
    /// Keep what the lease holds.
    Keep,
    /// Hold at most this much: the rest goes back to the counter.
    ShrinkTo(u64),
    /// Hold at least `need` more than now, ideally up to `want` more, but only if at least
    /// `floor` (and `need`) of the counter is free under `limit`; otherwise the lease shrinks to
    /// `in_use` and the result is [`LeaseOutcome::Scarce`].
    Grow {
        need: u64,
        want: u64,
        floor: u64,
        limit: u64,
        in_use: u64,
    },
}

/// One counter's change in a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseChange {
    pub key: CounterKey,
    /// The replica's lease on the counter, if it has one.
    pub lease: Option<i64>,
    /// Settled spend to add to `spent` (taken out of the lease, which held room for it).
    pub spend: u64,
    pub target: LeaseTarget,
}

/// Everything one sync does, in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseSync {
    /// The replica whose leases these are (renewed all together).
    pub replica: String,
    pub changes: Vec<LeaseChange>,
    /// Direct reservations of calls still running, kept from expiring.
    pub renew: Vec<i64>,
    /// The time the leases and reservations are renewed from (unix ms).
    pub now_ms: i64,
    /// How long they hold from `now_ms`.
    pub ttl: Duration,
}

/// How a change went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// Done as asked.
    Done,
    /// Too little is free to grow: the lease shrank to what is in use.
    Scarce { spent: u64, reserved: u64 },
}

/// One change's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseResult {
    /// The counter it is about (a sync runs its changes in key order, not the caller's).
    pub key: CounterKey,
    /// The lease now (None when it holds nothing).
    pub lease: Option<i64>,
    /// What it holds.
    pub held: u64,
    /// The lease had expired and been returned before this sync (its replica stalled).
    pub lost: bool,
    pub outcome: LeaseOutcome,
}

pub(crate) fn clamp(v: u64) -> i64 {
    i64::try_from(v.min(MAX_AMOUNT)).unwrap_or(i64::MAX)
}

pub(crate) fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseReport {
    /// Per change, in key order.
    pub results: Vec<LeaseResult>,
    /// The replica's leases renewed or made by the sync (ids of leases a change deleted may
    /// be among them): a lease the replica holds on a counter the sync did not change that is
    /// missing here expired (the replica stalled past the TTL) and holds nothing any more.
    pub alive: Vec<i64>,
}

/// How much a growing lease takes: see [`LeaseTarget::Grow`]. `None` when too little is free.
pub fn grant(free: u64, need: u64, want: u64, floor: u64) -> Option<u64> {
    if free < need.max(floor) {
        return None;
    }
    Some((free / SHARE).min(want).max(need).min(free)).filter(|g| *g > 0)
}

/// Run a [`LeaseSync`] on an open write transaction `$tx` (either backend); evaluates to
/// `Result<Vec<LeaseResult>, StoreError>`.
macro_rules! sync_in_tx {
    ($tx:expr, $sync:expr) => {{
        let sync: &$crate::lease::LeaseSync = $sync;
        let expires = sync
            .now_ms
            .saturating_add(i64::try_from(sync.ttl.as_millis()).unwrap_or(i64::MAX));
        let mut results = Vec::with_capacity(sync.changes.len());
        // Renewing first locks this replica's lease rows, so a concurrent expiry sweep waits
        // for this transaction and then finds them alive.
        let mut alive: Vec<i64> = sqlx::query_scalar(
            "UPDATE ledger_leases SET expires_at = $1 WHERE replica = $2 RETURNING id",
        )
        .bind(expires)
        .bind(&sync.replica)
        .fetch_all(&mut *$tx)
        .await?;
        for id in &sync.renew {
            sqlx::query("UPDATE ledger_reservations SET expires_at = $1 WHERE id = $2")
                .bind(expires)
                .bind(*id)
                .execute(&mut *$tx)
                .await?;
        }
        // Counters are visited in key order (the caller sorts), like every other transaction.
        for change in &sync.changes {
            let k = &change.key;
            let scope = $crate::safe::text(&k.scope).into_owned();
            let (unit, window) = (k.unit.as_str(), k.window.as_str());
            sqlx::query($crate::lease::ENSURE_COUNTER)
                .bind(&scope)
                .bind(unit)
                .bind(window)
                .bind(k.window_start)
                .execute(&mut *$tx)
                .await?;
            let current: Option<i64> = match change.lease {
                Some(id) => {
                    sqlx::query_scalar("SELECT amount FROM ledger_leases WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *$tx)
                        .await?
                }
                None => None,
            };
            let lost = change.lease.is_some() && current.is_none();
            let mut held = current.map_or(0, $crate::lease::unsigned);
            // Spend moves out of the lease into `spent`; beyond what the lease holds (a call
            // that cost more than it reserved, or a lost lease) it is added all the same.
            let spend = change.spend.min($crate::lease::MAX_AMOUNT);
            let moved = spend.min(held);
            held -= moved;
            let mut give_back = moved;
            // A grant moves the spend itself (TAKE); otherwise MOVE below does.
            let mut granted_now = false;
            let mut outcome = $crate::lease::LeaseOutcome::Done;
            match &change.target {
                $crate::lease::LeaseTarget::Keep => {}
                $crate::lease::LeaseTarget::ShrinkTo(to) => {
                    if held > *to {
                        give_back += held - to;
                        held = *to;
                    }
                }
                $crate::lease::LeaseTarget::Grow {
                    need,
                    want,
                    floor,
                    limit,
                    in_use,
                } => {
                    let (spent, reserved): (i64, i64) = sqlx::query_as($crate::lease::READ_COUNTER)
                        .bind(&scope)
                        .bind(unit)
                        .bind(window)
                        .bind(k.window_start)
                        .fetch_one(&mut *$tx)
                        .await?;
                    // As the counter will be once this change's spend is moved.
                    let spent = $crate::lease::unsigned(spent).saturating_add(spend);
                    let reserved = $crate::lease::unsigned(reserved).saturating_sub(moved);
                    let free = limit.saturating_sub(spent.saturating_add(reserved));
                    let granted = $crate::lease::grant(free, *need, *want, *floor);
                    // Conditional, like a reservation: another replica may have taken headroom
                    // since the read.
                    let took = match granted {
                        Some(g) => {
                            sqlx::query($crate::lease::TAKE)
                                .bind(&scope)
                                .bind(unit)
                                .bind(window)
                                .bind(k.window_start)
                                .bind($crate::lease::clamp(g))
                                .bind($crate::lease::clamp(*limit))
                                .bind($crate::lease::clamp(spend))
                                .bind($crate::lease::clamp(moved))
                                .execute(&mut *$tx)
                                .await?
                                .rows_affected()
                                == 1
                        }
                        None => false,
                    };
                    match (took, granted) {
                        (true, Some(g)) => {
                            held += g;
                            granted_now = true;
                        }
                        _ => {
                            if held > *in_use {
                                give_back += held - in_use;
                                held = *in_use;
                            }
                            outcome = $crate::lease::LeaseOutcome::Scarce { spent, reserved };
                        }
                    }
                }
            }
            // Unless a grant already did, move the spend and give headroom back.
            if !granted_now && (spend > 0 || give_back > 0) {
                sqlx::query($crate::lease::MOVE)
                    .bind(&scope)
                    .bind(unit)
                    .bind(window)
                    .bind(k.window_start)
                    .bind($crate::lease::clamp(give_back))
                    .bind($crate::lease::clamp(spend))
                    .execute(&mut *$tx)
                    .await?;
            }
            let lease = match (change.lease.filter(|_| !lost), held) {
                (Some(id), 0) => {
                    sqlx::query("DELETE FROM ledger_leases WHERE id = $1")
                        .bind(id)
                        .execute(&mut *$tx)
                        .await?;
                    None
                }
                (Some(id), h) => {
                    sqlx::query("UPDATE ledger_leases SET amount = $1 WHERE id = $2")
                        .bind($crate::lease::clamp(h))
                        .bind(id)
                        .execute(&mut *$tx)
                        .await?;
                    Some(id)
                }
                (None, 0) => None,
                (None, h) => {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO ledger_leases (replica, scope, unit, window_kind, \
                         window_start, amount, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         RETURNING id",
                    )
                    .bind(&sync.replica)
                    .bind(&scope)
                    .bind(unit)
                    .bind(window)
                    .bind(k.window_start)
                    .bind($crate::lease::clamp(h))
                    .bind(expires)
                    .fetch_one(&mut *$tx)
                    .await?;
                    Some(id)
                }
            };
            results.push($crate::lease::LeaseResult {
                key: k.clone(),
                lease,
                held,
                lost,
                outcome,
            });
        }
        alive.extend(results.iter().filter_map(|r| r.lease));
        alive.sort_unstable();
        alive.dedup();
        Ok::<_, StoreError>($crate::lease::LeaseReport { results, alive })
    }};
}
pub(crate) use sync_in_tx;

pub(crate) const ENSURE_COUNTER: &str = "INSERT INTO ledger_counters (scope, unit, window_kind, \
     window_start, spent, reserved) VALUES ($1, $2, $3, $4, 0, 0) ON CONFLICT DO NOTHING";
pub(crate) const READ_COUNTER: &str = "SELECT spent, reserved FROM ledger_counters \
     WHERE scope = $1 AND unit = $2 AND window_kind = $3 AND window_start = $4";
/// Grow a lease by $5 under limit $6, moving spend $7 out of the lease's $8 at the same time.
pub(crate) const TAKE: &str = "UPDATE ledger_counters SET \
     reserved = CASE WHEN reserved > $8 THEN reserved - $8 ELSE 0 END + $5, spent = spent + $7 \
     WHERE scope = $1 AND unit = $2 AND window_kind = $3 AND window_start = $4 \
     AND spent + $7 + (CASE WHEN reserved > $8 THEN reserved - $8 ELSE 0 END) + $5 <= $6";
/// Give back $5 of `reserved` and add $6 to `spent`.
pub(crate) const MOVE: &str = "UPDATE ledger_counters SET \
     reserved = CASE WHEN reserved > $5 THEN reserved - $5 ELSE 0 END, spent = spent + $6 \
     WHERE scope = $1 AND unit = $2 AND window_kind = $3 AND window_start = $4";

impl Store {
    /// Run one [`LeaseSync`] in its own transaction: see the module doc.
    pub async fn sync_leases(&self, sync: LeaseSync) -> Result<LeaseReport, StoreError> {
        let mut sync = sync;
        sync.changes.sort_by(|a, b| a.key.cmp(&b.key));
        self.detached(move |store| async move {
            on_pool!(store, |pool| {
                let mut tx = pool.begin_write().await?;
                let results = sync_in_tx!(tx, &sync)?;
                tx.commit().await?;
                Ok(results)
            })
        })
        .await
    }

    /// Return every lease whose time ran out (its replica stopped renewing it) at `now_ms`;
    /// how many.
    pub(crate) async fn expire_leases_at(&self, now_ms: i64) -> Result<u64, StoreError> {
        let ids: Vec<i64> = on_pool!(self, |pool| {
            sqlx::query_scalar("SELECT id FROM ledger_leases WHERE expires_at <= $1")
                .bind(now_ms)
                .fetch_all(pool)
                .await?
        });
        let mut n = 0;
        for id in ids {
            let returned = self
                .detached(move |store| async move {
                    on_pool!(store, |pool| {
                        let mut tx = pool.begin_write().await?;
                        // Deleting claims it: a renewal that won the race keeps it alive.
                        let row: Option<(String, String, String, i64, i64)> = sqlx::query_as(
                            "DELETE FROM ledger_leases WHERE id = $1 AND expires_at <= $2 \
                             RETURNING scope, unit, window_kind, window_start, amount",
                        )
                        .bind(id)
                        .bind(now_ms)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some((scope, unit, window, start, amount)) = row else {
                            tx.rollback().await?;
                            return Ok(false);
                        };
                        sqlx::query(MOVE)
                            .bind(&scope)
                            .bind(&unit)
                            .bind(&window)
                            .bind(start)
                            .bind(amount)
                            .bind(0_i64)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        Ok::<_, StoreError>(true)
                    })
                })
                .await?;
            if returned {
                n += 1;
            }
        }
        Ok(n)
    }
}
