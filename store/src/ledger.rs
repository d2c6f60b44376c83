//! The spend ledger, shared by every gateway process on the database: counters of micro-USD and
//! tokens per scope over hour, day, month (calendar, UTC) and total windows.
//!
//! A call first reserves what it may spend ([`Store::reserve`]): in one transaction every
//! amount is checked against its limit, counting what is spent and what other calls hold, and
//! either all are held or none. When the call ends it settles ([`Store::settle`]), replacing
//! the hold with the real spend, or releases it ([`Store::release`]). The check and the hold are
//! one conditional `UPDATE` per counter (`... WHERE spent + reserved + amount <= limit`), so
//! concurrent reservations, from any number of processes, cannot overspend a limit beyond what
//! is already held. A reservation that its process never ended (a crash) expires:
//! [`Store::expire_reservations`] frees it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lease::{clamp, unsigned};
use crate::time::{civil_from_days, days_from_civil, now_ms};
use crate::{BeginWrite, Store, StoreError, on_pool};

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    MicroUsd,
    Tokens,
    /// Requests (rate limits: one per call).
    Requests,
    /// Calls in flight (concurrency limits: held while a call runs, never spent).
    Calls,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::MicroUsd => "micro_usd",
            Unit::Tokens => "tokens",
            Unit::Requests => "requests",
            Unit::Calls => "calls",
        }
    }

    /// What settling a call charges a counter of this unit that held `held` for it: the
    /// call's cost or tokens, the one request it was, or nothing for a call in flight (its
    /// hold simply ends).
    pub fn charge(self, held: u64, micro_usd: u64, tokens: u64) -> u64 {
        match self {
            Unit::MicroUsd => micro_usd,
            Unit::Tokens => tokens,
            Unit::Requests => held,
            Unit::Calls => 0,
        }
    }

    fn parse(s: &str) -> Result<Unit, StoreError> {
        match s {
            "micro_usd" => Ok(Unit::MicroUsd),
            "tokens" => Ok(Unit::Tokens),
            "requests" => Ok(Unit::Requests),
            "calls" => Ok(Unit::Calls),
            _ => Err(StoreError::Corrupt(format!("unknown ledger unit {s:?}"))),
        }
    }
}

/// The span a counter covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// The clock minute, UTC (rate limits).
    Minute,
    Hour,
    Day,
    /// The calendar month, UTC.
    Month,
    /// Since the beginning.
    Total,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
            Window::Total => "total",
        }
    }

    fn parse(s: &str) -> Result<Window, StoreError> {
        match s {
            "minute" => Ok(Window::Minute),
            "hour" => Ok(Window::Hour),
            "day" => Ok(Window::Day),
            "month" => Ok(Window::Month),
            "total" => Ok(Window::Total),
            _ => Err(StoreError::Corrupt(format!("unknown ledger window {s:?}"))),
        }
    }
}

/// Start (unix ms) of the `window` containing `now_ms`; 0 for `Total`.
pub fn window_start(window: Window, now_ms: i64) -> i64 {
    const MINUTE: i64 = 60_000;
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 86_400_000;
    match window {
        Window::Minute => now_ms - now_ms.rem_euclid(MINUTE),
        Window::Hour => now_ms - now_ms.rem_euclid(HOUR),
        Window::Day => now_ms - now_ms.rem_euclid(DAY),
        Window::Month => {
            let (y, m, _) = civil_from_days(now_ms.div_euclid(DAY));
            days_from_civil(y, m, 1) * DAY
        }
        Window::Total => 0,
    }
}

/// One amount to hold against one limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    /// What the counter belongs to, such as `agent:chatbot` or `team:support`.
    pub scope: String,
    pub unit: Unit,
    pub window: Window,
    pub amount: u64,
    pub limit: u64,
}

/// The limit a reservation would have passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exceeded {
    pub scope: String,
    pub unit: Unit,
    pub window: Window,
    pub spent: u64,
    pub reserved: u64,
    pub limit: u64,
}

/// The outcome of [`Store::reserve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Reservation {
    /// All amounts are held under this id.
    Held(i64),
    /// Nothing is held: this limit would have been passed (the first one found).
    Exceeded(Exceeded),
}

/// One counter, as the spend view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spend {
    pub scope: String,
    pub unit: Unit,
    pub window: Window,
    pub window_start_ms: i64,
    /// Settled spend in the window.
    pub spent: u64,
    /// Held by reservations of calls in flight.
    pub reserved: u64,
}

/// Minute counters are kept this many minutes after their own (for the spend view), then
/// deleted by the expiry sweep.
const MINUTES_KEPT: i64 = 10;

/// A counter's key: (scope, unit, window, window start).
type Key = (String, &'static str, &'static str, i64);

use crate::lease::{ENSURE_COUNTER, READ_COUNTER};
const HOLD: &str = "UPDATE ledger_counters SET reserved = reserved + $5 \
     WHERE scope = $1 AND unit = $2 AND window_kind = $3 AND window_start = $4 \
     AND spent + reserved + $5 <= $6";
const UNHOLD: &str = "UPDATE ledger_counters SET \
     reserved = CASE WHEN reserved > $5 THEN reserved - $5 ELSE 0 END, spent = spent + $6 \
     WHERE scope = $1 AND unit = $2 AND window_kind = $3 AND window_start = $4";
const HOLDS: &str = "SELECT scope, unit, window_kind, window_start, amount FROM ledger_holds \
     WHERE reservation_id = $1 ORDER BY scope, unit, window_kind, window_start";

/// What ending a reservation does with what it held.
#[derive(Clone, Copy)]
enum End {
    Release,
    Settle { micro_usd: i64, tokens: i64 },
}

impl Store {
    /// Hold every amount, or none: see the module doc. The hold lasts until settled, released,
    /// or `ttl` runs out and [`Store::expire_reservations`] frees it.
    pub async fn reserve(
        &self,
        amounts: &[Amount],
        ttl: Duration,
    ) -> Result<Reservation, StoreError> {
        self.reserve_at(amounts, now_ms(), ttl).await
    }

    /// [`Store::reserve`] at the time `now` (unix ms): the windows and the expiry count from it.
    pub async fn reserve_at(
        &self,
        amounts: &[Amount],
        now: i64,
        ttl: Duration,
    ) -> Result<Reservation, StoreError> {
        let expires_at = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        // Counters are locked in one order by every transaction, so two cannot deadlock.
        let mut holds: Vec<(Key, i64, i64)> = amounts
            .iter()
            .map(|a| {
                let key = (
                    crate::safe::text(&a.scope).into_owned(),
                    a.unit.as_str(),
                    a.window.as_str(),
                    window_start(a.window, now),
                );
                (key, clamp(a.amount), clamp(a.limit))
            })
            .collect();
        holds.sort_by(|a, b| a.0.cmp(&b.0));

        self.detached(move |store| async move {
            on_pool!(store, |pool| {
                let mut tx = pool.begin_write().await?;
                for ((scope, unit, window, start), amount, limit) in &holds {
                    sqlx::query(ENSURE_COUNTER)
                        .bind(scope)
                        .bind(*unit)
                        .bind(*window)
                        .bind(*start)
                        .execute(&mut *tx)
                        .await?;
                    let held = sqlx::query(HOLD)
                        .bind(scope)
                        .bind(*unit)
                        .bind(*window)
                        .bind(*start)
                        .bind(*amount)
                        .bind(*limit)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if held == 0 {
                        let (spent, reserved): (i64, i64) = sqlx::query_as(READ_COUNTER)
                            .bind(scope)
                            .bind(*unit)
                            .bind(*window)
                            .bind(*start)
                            .fetch_one(&mut *tx)
                            .await?;
                        tx.rollback().await?;
                        return Ok(Reservation::Exceeded(Exceeded {
                            scope: scope.clone(),
                            unit: Unit::parse(unit)?,
                            window: Window::parse(window)?,
                            spent: unsigned(spent),
                            reserved: unsigned(reserved),
                            limit: unsigned(*limit),
                        }));
                    }
                }
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO ledger_reservations (created_at, expires_at) VALUES ($1, $2) \
                 RETURNING id",
                )
                .bind(now)
                .bind(expires_at)
                .fetch_one(&mut *tx)
                .await?;
                for ((scope, unit, window, start), amount, _) in &holds {
                    sqlx::query(
                        "INSERT INTO ledger_holds (reservation_id, scope, unit, window_kind, \
                     window_start, amount) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(id)
                    .bind(scope)
                    .bind(*unit)
                    .bind(*window)
                    .bind(*start)
                    .bind(*amount)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Reservation::Held(id))
            })
        })
        .await
    }

    /// Replace reservation `id`'s holds with what the call really spent: each counter it held
    /// gains `micro_usd` or `tokens` by its unit, in the window it was reserved in. NotFound if
    /// the reservation is not open (settled, released or expired).
    pub async fn settle(&self, id: i64, micro_usd: u64, tokens: u64) -> Result<(), StoreError> {
        let end = End::Settle {
            micro_usd: clamp(micro_usd),
            tokens: clamp(tokens),
        };
        if self.end_reservation(id, end).await? {
            Ok(())
        } else {
            Err(StoreError::not_found("reservation", id.to_string()))
        }
    }

    /// Free reservation `id`'s holds without spending. Unknown or ended reservations are
    /// ignored.
    pub async fn release(&self, id: i64) -> Result<(), StoreError> {
        self.end_reservation(id, End::Release).await.map(|_| ())
    }

    /// Free every reservation and return every lease whose time ran out; how many there were.
    pub async fn expire_reservations(&self) -> Result<u64, StoreError> {
        self.expire_reservations_at(now_ms()).await
    }

    /// [`Store::expire_reservations`] as of `now` (unix ms).
    pub async fn expire_reservations_at(&self, now: i64) -> Result<u64, StoreError> {
        let ids: Vec<i64> = on_pool!(self, |pool| {
            sqlx::query_scalar("SELECT id FROM ledger_reservations WHERE expires_at <= $1")
                .bind(now)
                .fetch_all(pool)
                .await?
        });
        let mut n = self.expire_leases_at(now).await?;
        for id in ids {
            if self.end_reservation(id, End::Release).await? {
                n += 1;
            }
        }
        self.forget_old_minutes(now).await?;
        Ok(n)
    }

    /// Delete rate-limit counters of minutes long past that nothing holds any more: one row
    /// per scope and minute would otherwise pile up for ever.
    async fn forget_old_minutes(&self, now: i64) -> Result<(), StoreError> {
        let before = window_start(Window::Minute, now).saturating_sub(MINUTES_KEPT * 60_000);
        on_pool!(self, |pool| {
            sqlx::query(
                "DELETE FROM ledger_counters WHERE window_kind = 'minute' \
                 AND window_start < $1 AND reserved = 0",
            )
            .bind(before)
            .execute(pool)
            .await
            .map(|_| ())?
        });
        Ok(())
    }

    /// Spent so far in the current `window` (held amounts not included).
    pub async fn spent(&self, scope: &str, unit: Unit, window: Window) -> Result<u64, StoreError> {
        let scope = crate::safe::text(scope);
        let start = window_start(window, now_ms());
        let row: Option<(i64, i64)> = on_pool!(self, |pool| {
            sqlx::query_as(READ_COUNTER)
                .bind(&*scope)
                .bind(unit.as_str())
                .bind(window.as_str())
                .bind(start)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map_or(0, |(spent, _)| unsigned(spent)))
    }

    /// Every counter of the current `window` whose scope starts with `prefix` (all where
    /// empty), by scope and unit: the spend view.
    pub async fn spend(&self, window: Window, prefix: &str) -> Result<Vec<Spend>, StoreError> {
        let start = window_start(window, now_ms());
        // `LIKE` with the prefix's own wildcards escaped.
        let pattern = format!(
            "{}%",
            crate::safe::text(prefix)
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let rows: Vec<(String, String, i64, i64)> = on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT scope, unit, spent, reserved FROM ledger_counters \
                 WHERE window_kind = $1 AND window_start = $2 AND scope LIKE $3 ESCAPE '\\' \
                 ORDER BY scope, unit LIMIT 10000",
            )
            .bind(window.as_str())
            .bind(start)
            .bind(&pattern)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(scope, unit, spent, reserved)| {
                Ok(Spend {
                    scope,
                    unit: Unit::parse(&unit)?,
                    window,
                    window_start_ms: start,
                    spent: unsigned(spent),
                    reserved: unsigned(reserved),
                })
            })
            .collect()
    }

    /// End a reservation; whether it was open.
    async fn end_reservation(&self, id: i64, end: End) -> Result<bool, StoreError> {
        self.detached(move |store| async move {
            on_pool!(store, |pool| {
                let mut tx = pool.begin_write().await?;
                // A reservation's holds never change once written.
                let holds: Vec<(String, String, String, i64, i64)> =
                    sqlx::query_as(HOLDS).bind(id).fetch_all(&mut *tx).await?;
                // Deleting the reservation claims it (its holds go with it): of two concurrent ends,
                // the second deletes nothing and changes nothing.
                let open = sqlx::query("DELETE FROM ledger_reservations WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if open == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                for (scope, unit, window, start, amount) in &holds {
                    let spend = match end {
                        End::Release => 0,
                        End::Settle { micro_usd, tokens } => {
                            let charge = Unit::parse(unit)?.charge(
                                unsigned(*amount),
                                unsigned(micro_usd),
                                unsigned(tokens),
                            );
                            clamp(charge)
                        }
                    };
                    sqlx::query(UNHOLD)
                        .bind(scope)
                        .bind(unit)
                        .bind(window)
                        .bind(*start)
                        .bind(*amount)
                        .bind(spend)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(true)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339_ms;

    #[test]
    fn windows_start_where_the_calendar_says() {
        let t = parse_rfc3339_ms("2026-03-15T12:34:56.789Z").unwrap();
        let at = |s: &str| parse_rfc3339_ms(s).unwrap();
        assert_eq!(window_start(Window::Hour, t), at("2026-03-15T12:00:00Z"));
        assert_eq!(
            window_start(Window::Minute, at("2026-03-15T12:34:56.789Z")),
            at("2026-03-15T12:34:00Z")
        );
        assert_eq!(window_start(Window::Day, t), at("2026-03-15"));
        assert_eq!(window_start(Window::Month, t), at("2026-03-01"));
        assert_eq!(window_start(Window::Total, t), 0);
        assert_eq!(
            window_start(Window::Month, at("2024-02-29T23:59:59.999Z")),
            at("2024-02-01")
        );
        assert_eq!(
            window_start(Window::Month, at("2026-01-01")),
            at("2026-01-01")
        );
    }
}
