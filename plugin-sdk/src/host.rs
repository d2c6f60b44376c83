//! What the gateway offers a plugin: log, clock, the spend ledger, a key-value store, and a way to
//! declare the plugin stateless so the gateway reuses its instances.
//!
//! Inside the gateway these call the host; in a native `cargo test` they go to the thread's
//! [`crate::testing::TestHost`], so the same plugin code runs in both.

use crate::{Amount, CallKind, Level, ReserveError, Unit, Window};

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

/// Declare that this plugin keeps nothing from one call to the next, so the gateway reuses an
/// instance for later calls (one at a time) instead of instantiating the plugin and running
/// `init` for every call: a few microseconds per plugin per call. Call it from
/// [`crate::Plugin::init`]; the gateway reads it when it loads the plugin, and the operator's
/// `instances = "fresh"` still wins.
///
/// The plugin value then lives across calls: a plugin that keeps fields for one call (a stream's
/// carried text, a reservation id) must reset them when a new call starts, i.e. when
/// `call.request_id` changes. A plugin that never calls this keeps a fresh instance per call, and
/// its component does not even import the function, so it loads on gateways older than
/// `palisade:policy@0.1.1`.
pub fn declare_stateless() {
    imp::declare_stateless()
}

/// Declare the kinds of call this plugin decides about: the gateway then runs none of its hooks
/// for calls of other kinds (passed over as allowed, with no audit note), saving a guest entry
/// per call. Call it from [`crate::Plugin::init`] once the config says what the plugin acts on;
/// an empty list (or never calling it) means every kind. Since `palisade:policy@0.1.2`.
pub fn declare_kinds(kinds: &[CallKind]) {
    imp::declare_kinds(kinds)
}
