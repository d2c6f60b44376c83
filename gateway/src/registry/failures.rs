//! Failed authentications, counted instead of audited. A request with a missing, unknown or
//! suspended key never becomes a call: writing a hash-chained audit row for each would let
//! anyone on the network grow the audit log (and its database) without limit. Instead each
//! refusal adds one to a counter by reason (`palisade_auth_failures_total` on `/metrics`), and
//! the log gets at most one warning per [`LOG_EVERY`] saying how many there were.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one warning per this long, however many refusals.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MissingKey,
    UnknownKey,
    Suspended,
}

impl Reason {
    pub const ALL: [Reason; 3] = [Reason::MissingKey, Reason::UnknownKey, Reason::Suspended];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::MissingKey => "missing_key",
            Reason::UnknownKey => "unknown_key",
            Reason::Suspended => "suspended",
        }
    }
}

#[derive(Default)]
pub struct AuthFailures {
    counts: [AtomicU64; 3],
    lookups: AtomicU64,
    /// When the last warning went out, and refusals since.
    log: Mutex<Option<(Instant, u64)>>,
}

impl AuthFailures {
    /// Count one refusal, and warn if none was logged for [`LOG_EVERY`].
    pub fn note(&self, reason: Reason) {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        match log.as_mut() {
            Some((at, since)) if at.elapsed() < LOG_EVERY => *since += 1,
            _ => {
                let since = log.map_or(0, |(_, n)| n);
                tracing::warn!(
                    reason = reason.label(),
                    suppressed = since,
                    "authentication failed ({} more since the last warning; every one is counted in palisade_auth_failures_total)",
                    since
                );
                *log = Some((Instant::now(), 0));
            }
        }
    }

    /// Refusals for this reason since start.
    pub fn count(&self, reason: Reason) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }

    /// One key looked up in the store (a cache miss).
    pub fn looked_up(&self) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
    }

    /// Store lookups of keys since start.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason() {
        let f = AuthFailures::default();
        for _ in 0..3 {
            f.note(Reason::UnknownKey);
        }
        f.note(Reason::MissingKey);
        assert_eq!(f.count(Reason::UnknownKey), 3);
        assert_eq!(f.count(Reason::MissingKey), 1);
        assert_eq!(f.count(Reason::Suspended), 0);
        let suppressed = f.log.lock().unwrap().map(|(_, n)| n);
        assert_eq!(suppressed, Some(3), "one warning, the rest counted");
    }
}
