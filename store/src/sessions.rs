//! MCP agent sessions ended with `DELETE /mcp`. The sessions themselves live in their sealed
//! ids (any replica can open one); only their end needs sharing, so a session ended on one
//! replica is refused by all. Rows are kept until the id would have expired anyway.

use crate::{Store, StoreError, on_pool};

impl Store {
    /// Remember that the session with this nonce ended; `until_ms` is when its id expires.
    /// Also forgets sessions whose ids expired before `now_ms`.
    pub async fn end_mcp_session(
        &self,
        nonce: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mcp_ended_sessions (nonce, until_ms) VALUES ($1, $2) \
                 ON CONFLICT (nonce) DO NOTHING",
            )
            .bind(nonce)
            .bind(until_ms)
            .execute(pool)
            .await?;
            sqlx::query("DELETE FROM mcp_ended_sessions WHERE until_ms < $1")
                .bind(now_ms)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Whether the session with this nonce was ended.
    pub async fn mcp_session_ended(&self, nonce: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = on_pool!(self, |pool| {
            sqlx::query_scalar("SELECT until_ms FROM mcp_ended_sessions WHERE nonce = $1")
                .bind(nonce)
                .fetch_optional(pool)
                .await?
        });
        Ok(found.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ended_sessions_are_remembered_until_they_expire() {
        let s = Store::connect("sqlite::memory:").await.expect("store");
        assert!(!s.mcp_session_ended("n1").await.unwrap());
        s.end_mcp_session("n1", 2_000, 1_000).await.unwrap();
        s.end_mcp_session("n1", 2_000, 1_000).await.unwrap();
        assert!(s.mcp_session_ended("n1").await.unwrap());
        // Ending another session later sweeps n1, whose id has expired by then.
        s.end_mcp_session("n2", 9_000, 3_000).await.unwrap();
        assert!(!s.mcp_session_ended("n1").await.unwrap());
        assert!(s.mcp_session_ended("n2").await.unwrap());
    }
}
