//! Agents' API keys. Palisade generates each key, hands it out once ([`NewKey::secret`]) and
//! keeps only its SHA-256 and a short prefix for listings. A key is live until its `revoked_at`
//! time; rotation may leave the old key a grace period by revoking it in the future.

use std::time::Duration;

use serde::Serialize;

use crate::agents::{AGENT_COLUMNS, Agent, AgentRow, AgentSource, AgentStatus};
use crate::error::is_unique_violation;
use crate::secret::{display_prefix, generate, hash_secret, new_id, normalize_sha256};
use crate::time::now_ms;
use crate::{BeginWrite, Store, StoreError, on_pool};

/// What agent keys start with.
pub const AGENT_KEY_PREFIX: &str = "pk_";

/// A freshly generated key. `secret` exists only here: show it once, the store cannot.
#[derive(Clone, Serialize)]
pub struct NewKey {
    pub id: String,
    pub agent_id: String,
    pub secret: String,
    /// The first characters of the secret, as listings show it.
    pub prefix: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("id", &self.id)
            .field("agent_id", &self.agent_id)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A stored key, as listings show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub agent_id: String,
    pub prefix: String,
    /// `config` for keys synced from `key_sha256` in `palisade.toml`, else `api`.
    pub source: AgentSource,
    pub created_at: i64,
    /// When the key stops (or stopped) working; `None` while it has not been revoked.
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl KeyInfo {
    /// Whether the key works at `now` (unix ms).
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none_or(|t| t > now)
    }
}

/// A key that matched: its agent (whatever its status) and the key's id.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyAuth {
    pub agent: Agent,
    pub key_id: String,
}

impl KeyAuth {
    /// Whether the agent may call (a suspended agent's keys match but must be refused).
    pub fn is_active(&self) -> bool {
        self.agent.status == AgentStatus::Active
    }
}

const KEY_COLUMNS: &str = "id, agent_id, prefix, source, created_at, revoked_at, last_used_at";

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    agent_id: String,
    prefix: String,
    source: String,
    created_at: i64,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

impl KeyRow {
    fn into_info(self) -> KeyInfo {
        KeyInfo {
            source: if self.source == "config" {
                AgentSource::Config
            } else {
                AgentSource::Api
            },
            id: self.id,
            agent_id: self.agent_id,
            prefix: self.prefix,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct AuthRow {
    key_id: String,
    key_revoked_at: Option<i64>,
    #[sqlx(flatten)]
    agent: AgentRow,
}

fn is_fk_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_foreign_key_violation())
}

const INSERT_KEY: &str = "INSERT INTO agent_keys (id, agent_id, key_hash, prefix, source, \
     created_at) VALUES ($1, $2, $3, $4, $5, $6)";

impl Store {
    /// Generate a key for an agent. NotFound if there is no such agent.
    pub async fn create_key(&self, agent_id: &str) -> Result<NewKey, StoreError> {
        let secret = generate(AGENT_KEY_PREFIX);
        let key = NewKey {
            id: new_id("key_"),
            agent_id: agent_id.to_string(),
            prefix: display_prefix(&secret),
            secret,
        };
        let done = on_pool!(self, |pool| {
            sqlx::query(INSERT_KEY)
                .bind(&key.id)
                .bind(agent_id)
                .bind(hash_secret(&key.secret))
                .bind(&key.prefix)
                .bind(AgentSource::Api.as_str())
                .bind(now_ms())
                .execute(pool)
                .await
                .map(|_| ())
        });
        match done {
            Ok(_) => Ok(key),
            Err(e) if is_fk_violation(&e) => Err(StoreError::not_found("agent", agent_id)),
            Err(e) => Err(e.into()),
        }
    }

    /// Register a key the caller already holds, by its hex SHA-256 (for example `key_sha256`
    /// from a config). Conflict if that hash is already a key.
    pub async fn add_key_hash(
        &self,
        agent_id: &str,
        sha256_hex: &str,
    ) -> Result<KeyInfo, StoreError> {
        let hash = normalize_sha256(sha256_hex)
            .ok_or_else(|| StoreError::Invalid("a key hash must be 64 hex digits".into()))?;
        let id = new_id("key_");
        let done = on_pool!(self, |pool| {
            sqlx::query(INSERT_KEY)
                .bind(&id)
                .bind(agent_id)
                .bind(&hash)
                .bind(format!("sha256:{}", display_prefix(&hash)))
                .bind(AgentSource::Api.as_str())
                .bind(now_ms())
                .execute(pool)
                .await
                .map(|_| ())
        });
        match done {
            Ok(_) => self.get_key(&id).await,
            Err(e) if is_fk_violation(&e) => Err(StoreError::not_found("agent", agent_id)),
            Err(e) if is_unique_violation(&e) => Err(StoreError::conflict(
                "agent",
                agent_id,
                "that key is already registered",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Replace one of an agent's keys with a new one. The old key stops working after `grace`
    /// (`Duration::ZERO`: at once). NotFound if the key is not this agent's; Conflict if it is
    /// already revoked.
    pub async fn rotate_key(
        &self,
        agent_id: &str,
        old_key_id: &str,
        grace: Duration,
    ) -> Result<NewKey, StoreError> {
        let now = now_ms();
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let revoke_at = now.saturating_add(grace_ms);
        let secret = generate(AGENT_KEY_PREFIX);
        let key = NewKey {
            id: new_id("key_"),
            agent_id: agent_id.to_string(),
            prefix: display_prefix(&secret),
            secret,
        };
        let (agent_id, old_key_id) = (agent_id.to_string(), old_key_id.to_string());
        let (key_id, key_prefix, key_hash) =
            (key.id.clone(), key.prefix.clone(), hash_secret(&key.secret));
        self.detached(move |store| async move {
            let (agent_id, old_key_id) = (agent_id.as_str(), old_key_id.as_str());
            on_pool!(store, |pool| {
                let mut tx = pool.begin_exclusive().await?;
                let old: Option<Option<i64>> = sqlx::query_scalar(
                    "SELECT revoked_at FROM agent_keys WHERE id = $1 AND agent_id = $2",
                )
                .bind(old_key_id)
                .bind(agent_id)
                .fetch_optional(&mut *tx)
                .await?;
                match old {
                    None => return Err(StoreError::not_found("key", old_key_id)),
                    Some(Some(t)) if t <= now => {
                        return Err(StoreError::conflict("key", old_key_id, "already revoked"));
                    }
                    Some(_) => {}
                }
                sqlx::query(
                    "UPDATE agent_keys SET revoked_at = $1 \
                         WHERE id = $2 AND (revoked_at IS NULL OR revoked_at > $1)",
                )
                .bind(revoke_at)
                .bind(old_key_id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(INSERT_KEY)
                    .bind(&key_id)
                    .bind(agent_id)
                    .bind(&key_hash)
                    .bind(&key_prefix)
                    .bind(AgentSource::Api.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            });
            Ok(())
        })
        .await?;
        Ok(key)
    }

    /// Revoke a key now. Revoking a revoked key changes nothing; NotFound if there is no such
    /// key.
    pub async fn revoke_key(&self, key_id: &str) -> Result<KeyInfo, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE agent_keys SET revoked_at = $1 \
                 WHERE id = $2 AND (revoked_at IS NULL OR revoked_at > $1)",
            )
            .bind(now_ms())
            .bind(key_id)
            .execute(pool)
            .await?;
        });
        self.get_key(key_id).await
    }

    /// One key's listing entry.
    pub async fn get_key(&self, key_id: &str) -> Result<KeyInfo, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM agent_keys WHERE id = $1");
        let row: Option<KeyRow> = on_pool!(self, |pool| {
            sqlx::query_as(&sql)
                .bind(key_id)
                .fetch_optional(pool)
                .await?
        });
        row.map(KeyRow::into_info)
            .ok_or_else(|| StoreError::not_found("key", key_id))
    }

    /// An agent's keys, oldest first, revoked ones included. NotFound if there is no such agent.
    pub async fn list_keys(&self, agent_id: &str) -> Result<Vec<KeyInfo>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM agent_keys WHERE agent_id = $1 ORDER BY created_at, id"
        );
        let (exists, rows): (Option<String>, Vec<KeyRow>) = on_pool!(self, |pool| {
            let exists = sqlx::query_scalar("SELECT id FROM agents WHERE id = $1")
                .bind(agent_id)
                .fetch_optional(pool)
                .await?;
            let rows = sqlx::query_as(&sql).bind(agent_id).fetch_all(pool).await?;
            (exists, rows)
        });
        if exists.is_none() {
            return Err(StoreError::not_found("agent", agent_id));
        }
        Ok(rows.into_iter().map(KeyRow::into_info).collect())
    }

    /// The agent holding `secret`, if it is a live key. The agent comes back whatever its
    /// status, so the caller can tell "suspended" from "unknown key"; check
    /// [`KeyAuth::is_active`]. Unknown and revoked keys give `None`.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<KeyAuth>, StoreError> {
        let agent_cols: Vec<String> = AGENT_COLUMNS
            .split(',')
            .map(|c| format!("a.{}", c.trim()))
            .collect();
        let sql = format!(
            "SELECT k.id AS key_id, k.revoked_at AS key_revoked_at, {} \
             FROM agent_keys k JOIN agents a ON a.id = k.agent_id WHERE k.key_hash = $1",
            agent_cols.join(", ")
        );
        let hash = hash_secret(secret);
        let row: Option<AuthRow> = on_pool!(self, |pool| {
            sqlx::query_as(&sql)
                .bind(&hash)
                .fetch_optional(pool)
                .await?
        });
        let Some(row) = row else { return Ok(None) };
        if row.key_revoked_at.is_some_and(|t| t <= now_ms()) {
            return Ok(None);
        }
        Ok(Some(KeyAuth {
            agent: row.agent.into_agent()?,
            key_id: row.key_id,
        }))
    }

    /// The hashes of every key that may still authenticate (not revoked, or revoked later than
    /// now: a rotation's grace), for a gateway's directory of known keys.
    pub async fn live_key_hashes(&self) -> Result<Vec<String>, StoreError> {
        let now = now_ms();
        let hashes: Vec<String> = on_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT key_hash FROM agent_keys WHERE revoked_at IS NULL OR revoked_at > $1",
            )
            .bind(now)
            .fetch_all(pool)
            .await?
        });
        Ok(hashes)
    }

    /// Record that a key was used at `at` (unix ms); never moves the time backwards.
    pub async fn touch_key_used(&self, key_id: &str, at: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE agent_keys SET last_used_at = $1 \
                 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
            )
            .bind(at)
            .bind(key_id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}
