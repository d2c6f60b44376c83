//! What the gateway offers a plugin: log, clock, the spend ledger and a key-value store.
//!
//! Inside the gateway these call the host; in a native `cargo test` they go to the thread's
//! [`crate::testing::TestHost`], so the same plugin code runs in both.

use crate::{Amount, Level, ReserveError, Unit, Window};

#[cfg(target_arch = "wasm32")]
use crate::bindings::palisade::policy::host as imp;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::native as imp;

/// Write to the gateway's log (tagged with the plugin and request id).
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// Reserve every amount or none; returns the reservation id to [`settle`].
pub fn reserve(amounts: &[Amount]) -> Result<u64, ReserveError> {
    imp::reserve(amounts)
}

/// Replace a reservation with what was really spent.
pub fn settle(reservation: u64, micro_usd: u64, tokens: u64) -> Result<(), String> {
    imp::settle(reservation, micro_usd, tokens)
}

/// Settled spend of a scope in a window.
pub fn spent(scope: &str, unit: Unit, window: Window) -> Result<u64, String> {
    imp::spent(scope, unit, window)
}

/// Read a key of this plugin's key-value namespace.
pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    imp::kv_get(key)
}

/// Set a key; it expires after `ttl_secs` (0: never).
pub fn kv_set(key: &str, value: &[u8], ttl_secs: u32) {
    imp::kv_set(key, value, ttl_secs)
}

/// Add to a counter and return its new value.
pub fn kv_incr(key: &str, delta: i64, ttl_secs: u32) -> i64 {
    imp::kv_incr(key, delta, ttl_secs)
}

/// Remove a key.
pub fn kv_delete(key: &str) {
    imp::kv_delete(key)
}
