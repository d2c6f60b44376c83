//! The audit dead-letter table: audit events the database refused to store, kept outside the
//! hash chain with the reason.
//!
//! The gateway's audit writer splits a batch that fails with a data error
//! ([`StoreError::is_data`]) down to the single event that cannot be written and quarantines it
//! here, so one bad row neither blocks the log nor disappears. A quarantined event has no `seq`
//! and is not in the chain (`palisade audit verify` does not see it); `event_sha256` is the
//! SHA-256 of the stored `event` text, so a copy kept elsewhere can be matched to it.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::time::now_ms;
use crate::{NewAuditEvent, Store, StoreError, on_pool};

/// Longest refusal reason kept: a database message may quote the whole refused value.
const MAX_REASON: usize = 4096;

/// One quarantined event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    /// When it was quarantined, unix milliseconds.
    pub time_ms: i64,
    pub request_id: String,
    /// The event as JSON text, NULs replaced as in the audit log ([`crate::safe`]).
    pub event: String,
    /// Lowercase hex SHA-256 of `event`.
    pub event_sha256: String,
    /// Why the database refused it.
    pub reason: String,
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Store {
    /// Keep `event`, which the database refused for `reason`, in the dead-letter table; its id.
    pub async fn quarantine_audit(
        &self,
        event: &NewAuditEvent,
        reason: &str,
    ) -> Result<i64, StoreError> {
        let mut event = event.clone();
        crate::safe::audit_event(&mut event);
        let text = serde_json::to_string(&event)
            .map_err(|e| StoreError::Invalid(format!("audit event JSON: {e}")))?;
        let sha = hex::encode(Sha256::digest(text.as_bytes()));
        let reason = crate::safe::text(truncate(reason, MAX_REASON)).into_owned();
        let now = now_ms();
        Ok(on_pool!(self, |pool| {
            sqlx::query_scalar(
                "INSERT INTO audit_dead_letter (time_ms, request_id, event, event_sha256, reason) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(now)
            .bind(&event.request_id)
            .bind(&text)
            .bind(&sha)
            .bind(&reason)
            .fetch_one(pool)
            .await?
        }))
    }

    /// The most recent quarantined events, newest first, at most `limit`.
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT id, time_ms, request_id, event, event_sha256, reason \
                 FROM audit_dead_letter ORDER BY id DESC LIMIT $1",
            )
            .bind(limit.max(0))
            .fetch_all(pool)
            .await?
        }))
    }

    /// How many events are quarantined in all.
    pub async fn dead_letter_count(&self) -> Result<i64, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_dead_letter")
                .fetch_one(pool)
                .await?
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("aé", 3), "aé");
    }
}
