//! The in-process ledger: scoped counters in micro-USD and tokens over hour, day, month
//! (calendar, UTC) and total windows, for a gateway without a store (benches, unit tests).
//!
//! A reservation of several amounts is all or nothing: under one lock every scope is checked
//! against spent plus already-reserved, then all are held. Settling replaces a reservation with
//! the real spend; the host releases what a call left unsettled when it ends. It serves one
//! process only; the gateway uses the store's ledger (shared by replicas) once the store is open.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::plugins::bindings::{Amount, Exceeded, ReserveError, Unit, Window};

/// (scope, unit, window, window start); units and windows as small codes since the generated
/// WIT enums are not `Hash`.
type Key = (String, u8, u8, u64);

fn key(scope: &str, unit: Unit, window: Window, now: u64) -> Key {
    let w = match window {
        Window::Hour => 0,
        Window::Day => 1,
        Window::Month => 2,
        Window::Total => 3,
    };
    (scope.to_string(), unit as u8, w, window_start(window, now))
}

#[derive(Default)]
struct Inner {
    spent: HashMap<Key, u64>,
    reserved: HashMap<Key, u64>,
    open: HashMap<u64, Vec<(Key, u64)>>,
    next_id: u64,
}

/// The in-process ledger.
#[derive(Default)]
pub struct MemoryLedger {
    inner: Mutex<Inner>,
}

/// Start of the window containing `now` (seconds since the epoch); 0 for `total`.
pub fn window_start(window: Window, now_secs: u64) -> u64 {
    match window {
        Window::Hour => now_secs - now_secs % 3600,
        Window::Day => now_secs - now_secs % 86_400,
        Window::Month => {
            let days = now_secs / 86_400;
            let (y, m, _) = civil_from_days(days as i64);
            days_from_civil(y, m, 1) as u64 * 86_400
        }
        Window::Total => 0,
    }
}

// Howard Hinnant's calendar algorithms (public domain), for month windows without a date crate.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl MemoryLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hold every amount or none.
    pub fn reserve(&self, amounts: &[Amount]) -> Result<u64, ReserveError> {
        let now = now_secs();
        let mut inner = self.lock();
        let keys: Vec<(Key, u64)> = amounts
            .iter()
            .map(|a| (key(&a.scope, a.unit, a.window, now), a.amount))
            .collect();
        for (a, (key, amount)) in amounts.iter().zip(&keys) {
            let spent = inner.spent.get(key).copied().unwrap_or(0);
            let reserved = inner.reserved.get(key).copied().unwrap_or(0);
            if spent.saturating_add(reserved).saturating_add(*amount) > a.limit {
                return Err(ReserveError::Exceeded(Exceeded {
                    scope: a.scope.clone(),
                    unit: a.unit,
                    window: a.window,
                    spent,
                    reserved,
                    limit: a.limit,
                }));
            }
        }
        for (key, amount) in &keys {
            *inner.reserved.entry(key.clone()).or_default() += amount;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.open.insert(id, keys);
        Ok(id)
    }

    fn unhold(inner: &mut Inner, id: u64) -> Option<Vec<(Key, u64)>> {
        let keys = inner.open.remove(&id)?;
        for (key, amount) in &keys {
            if let Some(r) = inner.reserved.get_mut(key) {
                *r = r.saturating_sub(*amount);
            }
        }
        Some(keys)
    }

    /// Replace a reservation with the real spend.
    pub fn settle(&self, id: u64, micro_usd: u64, tokens: u64) -> Result<(), String> {
        let mut inner = self.lock();
        let keys =
            Self::unhold(&mut inner, id).ok_or_else(|| format!("no open reservation {id}"))?;
        for (key, _) in keys {
            let v = if key.1 == Unit::MicroUsd as u8 {
                micro_usd
            } else {
                tokens
            };
            *inner.spent.entry(key).or_default() += v;
        }
        Ok(())
    }

    /// Drop a reservation without spending (the call ended without settling it).
    pub fn release(&self, id: u64) {
        Self::unhold(&mut self.lock(), id);
    }

    /// Settled spend of a scope in the current window.
    pub fn spent(&self, scope: &str, unit: Unit, window: Window) -> u64 {
        let key = key(scope, unit, window, now_secs());
        self.lock().spent.get(&key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(scope: &str, amount: u64, limit: u64) -> Amount {
        Amount {
            scope: scope.into(),
            unit: Unit::MicroUsd,
            window: Window::Day,
            amount,
            limit,
        }
    }

    #[test]
    fn reserve_is_all_or_nothing() {
        let l = MemoryLedger::default();
        let id = l.reserve(&[amount("a", 60, 100)]).unwrap();
        let err = l
            .reserve(&[amount("b", 10, 100), amount("a", 50, 100)])
            .unwrap_err();
        match err {
            ReserveError::Exceeded(e) => {
                assert_eq!((e.scope.as_str(), e.reserved, e.limit), ("a", 60, 100))
            }
            other => panic!("{other:?}"),
        }
        // Nothing was held for "b".
        assert!(l.reserve(&[amount("b", 100, 100)]).is_ok());
        l.settle(id, 30, 0).unwrap();
        assert_eq!(l.spent("a", Unit::MicroUsd, Window::Day), 30);
        assert!(l.reserve(&[amount("a", 70, 100)]).is_ok());
        assert!(l.settle(id, 1, 0).is_err(), "settling twice is refused");
    }

    #[test]
    fn release_frees_the_hold() {
        let l = MemoryLedger::default();
        let id = l.reserve(&[amount("a", 100, 100)]).unwrap();
        assert!(l.reserve(&[amount("a", 1, 100)]).is_err());
        l.release(id);
        assert!(l.reserve(&[amount("a", 100, 100)]).is_ok());
    }

    #[test]
    fn month_window_starts_on_the_first() {
        // 2026-03-15T12:00:00Z -> 2026-03-01T00:00:00Z
        assert_eq!(window_start(Window::Month, 1_773_576_000), 1_772_323_200);
        assert_eq!(window_start(Window::Day, 1_773_576_000), 1_773_532_800);
    }
}
