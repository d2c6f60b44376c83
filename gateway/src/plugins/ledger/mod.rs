//! The spend ledger behind the `reserve` / `settle` / `spent` host imports.
//!
//! Once the gateway has opened its store, the ledger is the store's (`palisade_store::ledger`):
//! a reservation of several scopes is one transaction, atomic across every replica on the
//! database, and holds for at most [`RESERVATION_TTL`] so a dead replica's holds expire (the
//! gateway sweeps them, see `app.rs`). Before that (and in benches and unit tests that have no
//! store) an in-process [`memory::MemoryLedger`] serves.

pub mod memory;

use std::sync::OnceLock;
use std::time::Duration;

use palisade_store::{Reservation, Store};

use crate::plugins::bindings::{Amount, Exceeded, ReserveError, Unit, Window};
pub use memory::{MemoryLedger, window_start};

/// How long a reservation holds before an expiry sweep frees it; longer than any call.
pub const RESERVATION_TTL: Duration = Duration::from_secs(15 * 60);

/// The ledger the host imports use.
#[derive(Default)]
pub struct Ledger {
    memory: MemoryLedger,
    store: OnceLock<Store>,
}

fn unit_to_store(u: Unit) -> palisade_store::Unit {
    match u {
        Unit::MicroUsd => palisade_store::Unit::MicroUsd,
        Unit::Tokens => palisade_store::Unit::Tokens,
    }
}

fn unit_from_store(u: palisade_store::Unit) -> Unit {
    match u {
        palisade_store::Unit::MicroUsd => Unit::MicroUsd,
        palisade_store::Unit::Tokens => Unit::Tokens,
    }
}

fn window_to_store(w: Window) -> palisade_store::Window {
    match w {
        Window::Hour => palisade_store::Window::Hour,
        Window::Day => palisade_store::Window::Day,
        Window::Month => palisade_store::Window::Month,
        Window::Total => palisade_store::Window::Total,
    }
}

fn window_from_store(w: palisade_store::Window) -> Window {
    match w {
        palisade_store::Window::Hour => Window::Hour,
        palisade_store::Window::Day => Window::Day,
        palisade_store::Window::Month => Window::Month,
        palisade_store::Window::Total => Window::Total,
    }
}

impl Ledger {
    /// Move onto the store's shared ledger (once; later calls are ignored).
    pub fn use_store(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// The store behind the ledger, if it is shared.
    pub fn store(&self) -> Option<&Store> {
        self.store.get()
    }

    /// Hold every amount or none.
    pub async fn reserve(&self, amounts: &[Amount]) -> Result<u64, ReserveError> {
        let Some(store) = self.store.get() else {
            return self.memory.reserve(amounts);
        };
        let amounts: Vec<palisade_store::Amount> = amounts
            .iter()
            .map(|a| palisade_store::Amount {
                scope: a.scope.clone(),
                unit: unit_to_store(a.unit),
                window: window_to_store(a.window),
                amount: a.amount,
                limit: a.limit,
            })
            .collect();
        match store.reserve(&amounts, RESERVATION_TTL).await {
            Ok(Reservation::Held(id)) => u64::try_from(id)
                .map_err(|_| ReserveError::Unavailable("bad reservation id".into())),
            Ok(Reservation::Exceeded(e)) => Err(ReserveError::Exceeded(Exceeded {
                scope: e.scope,
                unit: unit_from_store(e.unit),
                window: window_from_store(e.window),
                spent: e.spent,
                reserved: e.reserved,
                limit: e.limit,
            })),
            Err(e) => {
                tracing::warn!("ledger reserve failed: {e}");
                Err(ReserveError::Unavailable(format!(
                    "ledger unavailable: {e}"
                )))
            }
        }
    }

    /// Replace a reservation with the real spend.
    pub async fn settle(&self, id: u64, micro_usd: u64, tokens: u64) -> Result<(), String> {
        let Some(store) = self.store.get() else {
            return self.memory.settle(id, micro_usd, tokens);
        };
        let id = i64::try_from(id).map_err(|_| format!("no open reservation {id}"))?;
        store
            .settle(id, micro_usd, tokens)
            .await
            .map_err(|e| e.to_string())
    }

    /// Drop a reservation without spending. On the store this runs in the background (it is
    /// called where the call ends, which cannot wait); should it fail, the TTL frees the hold.
    pub fn release(&self, id: u64) {
        let Some(store) = self.store.get() else {
            self.memory.release(id);
            return;
        };
        let (Ok(id), Ok(rt)) = (i64::try_from(id), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let store = store.clone();
        rt.spawn(async move {
            if let Err(e) = store.release(id).await {
                tracing::warn!("ledger release of reservation {id} failed (it will expire): {e}");
            }
        });
    }

    /// Settled spend of a scope in the current window.
    pub async fn spent(&self, scope: &str, unit: Unit, window: Window) -> Result<u64, String> {
        let Some(store) = self.store.get() else {
            return Ok(self.memory.spent(scope, unit, window));
        };
        store
            .spent(scope, unit_to_store(unit), window_to_store(window))
            .await
            .map_err(|e| e.to_string())
    }
}
