//! The key-value store plugins share across calls (`kv-*` host imports): in memory, namespaced
//! per plugin, with TTLs, and bounded so a plugin cannot grow the host's memory without limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys held at once; past it, expired keys are swept and then new keys are refused.
const MAX_KEYS: usize = 100_000;
/// Largest value a plugin may store.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// A value and when it expires (never: `None`).
type Entry = (Vec<u8>, Option<Instant>);

#[derive(Default)]
pub struct Kv {
    map: Mutex<HashMap<String, Entry>>,
}

fn live(entry: &Entry, now: Instant) -> bool {
    entry.1.is_none_or(|t| t > now)
}

fn expiry(ttl_secs: u32, now: Instant) -> Option<Instant> {
    (ttl_secs > 0).then(|| now + Duration::from_secs(u64::from(ttl_secs)))
}

impl Kv {
    fn key(ns: &str, key: &str) -> String {
        format!("{ns}\u{0}{key}")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts).
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn room(map: &mut HashMap<String, Entry>, now: Instant) -> bool {
        if map.len() < MAX_KEYS {
            return true;
        }
        map.retain(|_, e| live(e, now));
        map.len() < MAX_KEYS
    }

    pub fn get(&self, ns: &str, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.lock()
            .get(&Self::key(ns, key))
            .filter(|e| live(e, now))
            .map(|e| e.0.clone())
    }

    /// Returns false if the value was refused (too large, store full).
    pub fn set(&self, ns: &str, key: &str, value: &[u8], ttl_secs: u32) -> bool {
        if value.len() > MAX_VALUE_BYTES {
            return false;
        }
        let now = Instant::now();
        let mut map = self.lock();
        let k = Self::key(ns, key);
        if !map.contains_key(&k) && !Self::room(&mut map, now) {
            return false;
        }
        map.insert(k, (value.to_vec(), expiry(ttl_secs, now)));
        true
    }

    pub fn incr(&self, ns: &str, key: &str, delta: i64, ttl_secs: u32) -> i64 {
        let now = Instant::now();
        let mut map = self.lock();
        let k = Self::key(ns, key);
        let current = map.get(&k).filter(|e| live(e, now)).cloned();
        let (value, exp) = match current {
            Some((v, exp)) => {
                let n = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok());
                (n.unwrap_or(0).saturating_add(delta), exp)
            }
            None => {
                if !Self::room(&mut map, now) {
                    return delta;
                }
                (delta, expiry(ttl_secs, now))
            }
        };
        map.insert(k, (value.to_string().into_bytes(), exp));
        value
    }

    pub fn delete(&self, ns: &str, key: &str) {
        self.lock().remove(&Self::key(ns, key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_do_not_mix() {
        let kv = Kv::default();
        assert!(kv.set("a", "k", b"1", 0));
        assert_eq!(kv.get("b", "k"), None);
        assert_eq!(kv.get("a", "k").as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn counters_count_and_values_are_bounded() {
        let kv = Kv::default();
        assert_eq!(kv.incr("p", "c", 2, 0), 2);
        assert_eq!(kv.incr("p", "c", 3, 0), 5);
        assert!(!kv.set("p", "big", &vec![0; MAX_VALUE_BYTES + 1], 0));
        kv.delete("p", "c");
        assert_eq!(kv.get("p", "c"), None);
    }
}
