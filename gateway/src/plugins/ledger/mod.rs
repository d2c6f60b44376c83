//! The spend ledger behind the `reserve` / `settle` / `spent` host imports.
//!
//! Once the gateway has opened its store, the ledger is this replica's [`lease::Leased`]:
//! reservations and settlements in memory against leases of headroom from the store's shared
//! counters (`palisade_store::lease`), committed with the audit batches, exact near a limit.
//! Before that (and in benches and unit tests that have no store) an in-process
//! [`memory::MemoryLedger`] serves.

pub mod lease;
pub mod memory;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use palisade_store::Store;

use crate::plugins::bindings::{Amount, ReserveError, Unit, Window};
pub use lease::{LeaseJournal, Leased, Refused};
pub use memory::{MemoryLedger, window_start};

/// How long a lease or a direct reservation holds without renewal: a replica renews its own
/// while it lives (a stream may run longer), so only a dead replica's run out.
pub const RESERVATION_TTL: Duration = Duration::from_secs(15 * 60);

/// The ledger the host imports use.
#[derive(Default)]
pub struct Ledger {
    memory: MemoryLedger,
    leased: OnceLock<Arc<Leased>>,
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
        // Requests and calls in flight are the host's own limits; plugins never reserve them.
        palisade_store::Unit::Tokens
        | palisade_store::Unit::Requests
        | palisade_store::Unit::Calls => Unit::Tokens,
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
        // Plugins cannot name minute windows (the WIT has none); only the host's own rate
        // limits use them, and they never come back through the plugins' `reserve`.
        palisade_store::Window::Minute => Window::Hour,
        palisade_store::Window::Hour => Window::Hour,
        palisade_store::Window::Day => Window::Day,
        palisade_store::Window::Month => Window::Month,
        palisade_store::Window::Total => Window::Total,
    }
}

fn to_store_amount(a: &Amount) -> palisade_store::Amount {
    palisade_store::Amount {
        scope: a.scope.clone(),
        unit: unit_to_store(a.unit),
        window: window_to_store(a.window),
        amount: a.amount,
        limit: a.limit,
    }
}

impl Ledger {
    /// Move onto the store's shared ledger (once; later calls are ignored).
    pub fn use_store(&self, store: Store) {
        let _ = self
            .leased
            .set(Arc::new(Leased::new(store, RESERVATION_TTL)));
    }

    /// This replica's leased ledger, once the store is open.
    pub fn leased(&self) -> Option<&Arc<Leased>> {
        self.leased.get()
    }

    /// Hold every amount or none.
    pub async fn reserve(&self, amounts: &[Amount]) -> Result<u64, ReserveError> {
        match self.leased.get() {
            Some(l) => l.reserve(amounts).await,
            None => self.memory.reserve(amounts),
        }
    }

    /// Replace a reservation with the real spend.
    pub async fn settle(&self, id: u64, micro_usd: u64, tokens: u64) -> Result<(), String> {
        match self.leased.get() {
            Some(l) => l.settle(id, micro_usd, tokens).await,
            None => self.memory.settle(id, micro_usd, tokens),
        }
    }

    /// Drop a reservation without spending (called where the call ends, which cannot wait).
    pub fn release(&self, id: u64) {
        match self.leased.get() {
            Some(l) => l.release(id),
            None => self.memory.release(id),
        }
    }

    /// Settled spend of a scope in the current window.
    pub async fn spent(&self, scope: &str, unit: Unit, window: Window) -> Result<u64, String> {
        match self.leased.get() {
            Some(l) => l.spent(scope, unit, window).await,
            None => Ok(self.memory.spent(scope, unit, window)),
        }
    }

    /// Commit pending spend and give every lease back (shutdown, after the last call).
    pub async fn close(&self) -> Result<(), String> {
        match self.leased.get() {
            Some(l) => l.close().await,
            None => Ok(()),
        }
    }
}
