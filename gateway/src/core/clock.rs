//! The wall clock the gateway stamps events with (the store's, so both agree).

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    palisade_store::time::now_ms()
}
