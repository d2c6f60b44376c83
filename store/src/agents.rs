//! The agent registry: who each agent is, who owns it, what it may reach, and whether it may
//! call at all.
//!
//! Agents come from two places, recorded in [`Agent::source`]: the admin API
//! ([`Store::create_agent`]) and `palisade.toml` ([`Store::sync_config_agents`], run at start
//! and on reload). The config owns its agents: the API may suspend or reactivate one (a kill
//! switch) but not edit it, and a sync never touches an agent the API created. An agent that
//! disappears from the config is suspended, not deleted, so its audit trail keeps a subject; it
//! comes back active if it is declared again, unless an admin suspended it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sqlx::types::Json;

use crate::error::is_unique_violation;
use crate::secret::{display_prefix, new_id, normalize_sha256};
use crate::time::now_ms;
use crate::{BeginWrite, Store, StoreError, on_pool};

/// Whether an agent may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Active,
    Suspended,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Suspended => "suspended",
        }
    }
}

impl std::str::FromStr for AgentStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(AgentStatus::Active),
            "suspended" => Ok(AgentStatus::Suspended),
            _ => Err(StoreError::Invalid(format!(
                "agent status must be active or suspended, got {s:?}"
            ))),
        }
    }
}

/// Where an agent was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentSource {
    /// `palisade.toml`, synced by [`Store::sync_config_agents`].
    Config,
    /// The admin API, [`Store::create_agent`].
    Api,
}

impl AgentSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentSource::Config => "config",
            AgentSource::Api => "api",
        }
    }

    fn parse(s: &str) -> Result<AgentSource, StoreError> {
        match s {
            "config" => Ok(AgentSource::Config),
            "api" => Ok(AgentSource::Api),
            _ => Err(StoreError::Corrupt(format!("unknown agent source {s:?}"))),
        }
    }
}

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub name: String,
    /// The person accountable for it.
    pub owner: String,
    pub team: String,
    pub description: String,
    pub purpose: String,
    pub status: AgentStatus,
    pub labels: BTreeMap<String, String>,
    /// Models it may use (an empty list leaves the decision to the policy plugins).
    pub models: Vec<String>,
    /// Tools it may use.
    pub tools: Vec<String>,
    /// Budgets and limits, as the policy plugins read them (a JSON object).
    pub budgets: serde_json::Value,
    /// Rate and concurrency limits the gateway enforces for it.
    pub limits: AgentLimits,
    pub source: AgentSource,
    pub created_at: i64,
    pub updated_at: i64,
    /// When it last called, as reported by [`Store::touch_last_seen`].
    pub last_seen_at: Option<i64>,
}

/// An agent to register: everything but what the store fills in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewAgent {
    pub id: String,
    /// Defaults to the id when empty.
    pub name: String,
    pub owner: String,
    pub team: String,
    pub description: String,
    pub purpose: String,
    pub labels: BTreeMap<String, String>,
    pub models: Vec<String>,
    pub tools: Vec<String>,
    /// A JSON object; `null` is stored as `{}`.
    pub budgets: serde_json::Value,
    pub limits: AgentLimits,
}

/// An agent's own rate and concurrency limits (each unset: only the team's and the global
/// ones apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentLimits {
    /// Requests per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute (input estimated at admission, real usage charged at the end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Calls in flight at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<u64>,
}

/// An agent as `palisade.toml` declares it, with the SHA-256 (hex) of each key it may use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigAgent {
    pub agent: NewAgent,
    pub key_sha256: Vec<String>,
}

/// Changes to an API-created agent; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentUpdate {
    pub name: Option<String>,
    pub owner: Option<String>,
    pub team: Option<String>,
    pub description: Option<String>,
    pub purpose: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub models: Option<Vec<String>>,
    pub tools: Option<Vec<String>>,
    pub budgets: Option<serde_json::Value>,
    pub limits: Option<AgentLimits>,
}

/// What [`Store::sync_config_agents`] did, by agent id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub created: Vec<String>,
    /// Declared agents whose fields changed.
    pub updated: Vec<String>,
    /// Config agents no longer declared, now suspended.
    pub suspended: Vec<String>,
    /// Agents suspended for having left the config that are declared again, now active.
    pub reactivated: Vec<String>,
    /// Declared ids that belong to API-created agents, left alone.
    pub skipped: Vec<String>,
    /// Config keys added and revoked, over all agents.
    pub keys_added: usize,
    pub keys_revoked: usize,
}

pub(crate) const AGENT_COLUMNS: &str = "id, name, owner, team, description, purpose, status, \
     labels, models, tools, budgets, limits, source, removed_from_config, created_at, \
     updated_at, last_seen_at";

#[derive(sqlx::FromRow)]
pub(crate) struct AgentRow {
    id: String,
    name: String,
    owner: String,
    team: String,
    description: String,
    purpose: String,
    status: String,
    labels: Json<BTreeMap<String, String>>,
    models: Json<Vec<String>>,
    tools: Json<Vec<String>>,
    budgets: Json<serde_json::Value>,
    limits: Json<AgentLimits>,
    source: String,
    removed_from_config: bool,
    created_at: i64,
    updated_at: i64,
    last_seen_at: Option<i64>,
}

impl AgentRow {
    pub(crate) fn into_agent(self) -> Result<Agent, StoreError> {
        Ok(Agent {
            status: self
                .status
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("agent {:?} status", self.id)))?,
            source: AgentSource::parse(&self.source)?,
            id: self.id,
            name: self.name,
            owner: self.owner,
            team: self.team,
            description: self.description,
            purpose: self.purpose,
            labels: self.labels.0,
            models: self.models.0,
            tools: self.tools.0,
            budgets: self.budgets.0,
            limits: self.limits.0,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_seen_at: self.last_seen_at,
        })
    }

    /// Whether the stored descriptive fields equal `a`'s.
    fn same_fields(&self, a: &NewAgent) -> bool {
        self.name == a.name
            && self.owner == a.owner
            && self.team == a.team
            && self.description == a.description
            && self.purpose == a.purpose
            && self.labels.0 == a.labels
            && self.models.0 == a.models
            && self.tools.0 == a.tools
            && self.budgets.0 == a.budgets
            && self.limits.0 == a.limits
    }
}

/// Check an agent's fields and fill in defaults (name from id, `{}` budgets).
fn normalize(mut a: NewAgent) -> Result<NewAgent, StoreError> {
    validate_id(&a.id)?;
    if a.name.trim().is_empty() {
        a.name = a.id.clone();
    }
    normalize_lists(&a.id, &a.models, &a.tools, &a.budgets)?;
    let l = a.limits;
    if [l.rpm, l.tpm, l.concurrent].contains(&Some(0)) {
        return Err(StoreError::Invalid(format!(
            "agent {:?}: limits rpm, tpm and concurrent must be at least 1 (leave one out for \
             no limit)",
            a.id
        )));
    }
    if a.budgets.is_null() {
        a.budgets = serde_json::Value::Object(Default::default());
    }
    Ok(a)
}

fn normalize_lists(
    id: &str,
    models: &[String],
    tools: &[String],
    budgets: &serde_json::Value,
) -> Result<(), StoreError> {
    if models.iter().chain(tools).any(|s| s.trim().is_empty()) {
        return Err(StoreError::Invalid(format!(
            "agent {id:?}: model and tool names must not be empty"
        )));
    }
    if !(budgets.is_object() || budgets.is_null()) {
        return Err(StoreError::Invalid(format!(
            "agent {id:?}: budgets must be a JSON object"
        )));
    }
    Ok(())
}

/// Agent ids: 1 to 128 characters, no whitespace or control characters.
pub(crate) fn validate_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty()
        || id.chars().count() > 128
        || id.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(StoreError::Invalid(format!(
            "agent id must be 1 to 128 characters without spaces, got {id:?}"
        )));
    }
    Ok(())
}

const INSERT_AGENT: &str = "INSERT INTO agents (id, name, owner, team, description, purpose, \
     status, labels, models, tools, budgets, source, removed_from_config, created_at, updated_at, \
     limits) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, FALSE, $13, $13, $14)";

const UPDATE_AGENT_FIELDS: &str = "UPDATE agents SET name = $2, owner = $3, team = $4, \
     description = $5, purpose = $6, labels = $7, models = $8, tools = $9, budgets = $10, \
     status = $11, removed_from_config = FALSE, updated_at = $12, limits = $13 WHERE id = $1";

impl Store {
    /// Register an agent through the API (source `api`, status active). Conflict if the id is
    /// taken.
    pub async fn create_agent(&self, agent: NewAgent) -> Result<Agent, StoreError> {
        let a = normalize(agent)?;
        let now = now_ms();
        let inserted = on_pool!(self, |pool| {
            sqlx::query(INSERT_AGENT)
                .bind(&a.id)
                .bind(&a.name)
                .bind(&a.owner)
                .bind(&a.team)
                .bind(&a.description)
                .bind(&a.purpose)
                .bind(AgentStatus::Active.as_str())
                .bind(Json(&a.labels))
                .bind(Json(&a.models))
                .bind(Json(&a.tools))
                .bind(Json(&a.budgets))
                .bind(AgentSource::Api.as_str())
                .bind(now)
                .bind(Json(&a.limits))
                .execute(pool)
                .await
                .map(|_| ())
        });
        match inserted {
            Ok(_) => self.get_agent(&a.id).await,
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::conflict("agent", a.id, "already exists"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One agent; NotFound if there is none with this id.
    pub async fn get_agent(&self, id: &str) -> Result<Agent, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1");
        let row: Option<AgentRow> = on_pool!(self, |pool| {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?
        });
        row.ok_or_else(|| StoreError::not_found("agent", id))?
            .into_agent()
    }

    /// Every agent, by id.
    pub async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY id");
        let rows: Vec<AgentRow> =
            on_pool!(self, |pool| sqlx::query_as(&sql).fetch_all(pool).await?);
        rows.into_iter().map(AgentRow::into_agent).collect()
    }

    /// Suspend or reactivate an agent, from either source. A suspension by this call survives
    /// config syncs.
    pub async fn set_agent_status(
        &self,
        id: &str,
        status: AgentStatus,
    ) -> Result<Agent, StoreError> {
        let sql = "UPDATE agents SET status = $1, removed_from_config = FALSE, updated_at = $2 \
                   WHERE id = $3";
        let now = now_ms();
        let done = on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(status.as_str())
                .bind(now)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::not_found("agent", id));
        }
        self.get_agent(id).await
    }

    /// Change an API-created agent's descriptive fields. Conflict for a config agent: its
    /// declaration in `palisade.toml` is what to edit.
    pub async fn update_agent(&self, id: &str, update: AgentUpdate) -> Result<Agent, StoreError> {
        let select = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1");
        let now = now_ms();
        let owned_id = id.to_string();
        self.detached(move |store| async move {
            let id = owned_id.as_str();
            on_pool!(store, |pool| {
                let mut tx = pool.begin_exclusive().await?;
                let row: Option<AgentRow> = sqlx::query_as(&select)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let current = row
                    .ok_or_else(|| StoreError::not_found("agent", id))?
                    .into_agent()?;
                if current.source == AgentSource::Config {
                    return Err(StoreError::conflict(
                        "agent",
                        id,
                        "is declared in the config file; change it there",
                    ));
                }
                let merged = normalize(NewAgent {
                    id: current.id,
                    name: update.name.unwrap_or(current.name),
                    owner: update.owner.unwrap_or(current.owner),
                    team: update.team.unwrap_or(current.team),
                    description: update.description.unwrap_or(current.description),
                    purpose: update.purpose.unwrap_or(current.purpose),
                    labels: update.labels.unwrap_or(current.labels),
                    models: update.models.unwrap_or(current.models),
                    tools: update.tools.unwrap_or(current.tools),
                    budgets: update.budgets.unwrap_or(current.budgets),
                    limits: update.limits.unwrap_or(current.limits),
                })?;
                sqlx::query(UPDATE_AGENT_FIELDS)
                    .bind(&merged.id)
                    .bind(&merged.name)
                    .bind(&merged.owner)
                    .bind(&merged.team)
                    .bind(&merged.description)
                    .bind(&merged.purpose)
                    .bind(Json(&merged.labels))
                    .bind(Json(&merged.models))
                    .bind(Json(&merged.tools))
                    .bind(Json(&merged.budgets))
                    .bind(current.status.as_str())
                    .bind(now)
                    .bind(Json(&merged.limits))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            });
            Ok(())
        })
        .await?;
        self.get_agent(id).await
    }

    /// Record that an agent called at `at` (unix ms). Never moves the time backwards; unknown
    /// ids are ignored.
    pub async fn touch_last_seen(&self, agent_id: &str, at: i64) -> Result<(), StoreError> {
        let sql = "UPDATE agents SET last_seen_at = $1 \
                   WHERE id = $2 AND (last_seen_at IS NULL OR last_seen_at < $1)";
        // The id comes from an audit event; PostgreSQL would refuse a NUL even in a WHERE.
        let agent_id = crate::safe::text(agent_id);
        on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(at)
                .bind(&*agent_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Make the stored config agents match `declared`, in one transaction:
    /// - a declared agent that is not stored is created (source `config`, active);
    /// - a declared config agent gets the declared fields; if it had been suspended for leaving
    ///   the config it is active again (an admin's suspension stays);
    /// - a declared id that belongs to an API-created agent is skipped, untouched;
    /// - a stored config agent that is no longer declared is suspended, never deleted;
    /// - each declared agent's config keys become exactly `key_sha256`: missing hashes are
    ///   added, config keys no longer listed are revoked. API-created keys are left alone, and a
    ///   revoked key stays revoked even if it is listed again (a revoked secret is burnt: declare
    ///   a new one).
    ///
    /// Duplicate ids, a malformed hash, or a hash that is another agent's key are errors, and
    /// nothing is changed.
    pub async fn sync_config_agents(
        &self,
        declared: &[ConfigAgent],
    ) -> Result<SyncReport, StoreError> {
        let mut agents = Vec::with_capacity(declared.len());
        let mut seen = HashSet::new();
        for c in declared {
            let a = normalize(c.agent.clone())?;
            if !seen.insert(a.id.clone()) {
                return Err(StoreError::Invalid(format!(
                    "agent {:?} is declared twice",
                    a.id
                )));
            }
            let mut hashes = Vec::with_capacity(c.key_sha256.len());
            for h in &c.key_sha256 {
                let h = normalize_sha256(h).ok_or_else(|| {
                    StoreError::Invalid(format!(
                        "agent {:?}: key_sha256 must be 64 hex digits",
                        a.id
                    ))
                })?;
                if !hashes.contains(&h) {
                    hashes.push(h);
                }
            }
            agents.push((a, hashes));
        }

        let select = format!("SELECT {AGENT_COLUMNS} FROM agents");
        let now = now_ms();
        let mut report = SyncReport::default();
        self.detached(move |store| async move {
            on_pool!(store, |pool| {
                let mut tx = pool.begin_exclusive().await?;
                let rows: Vec<AgentRow> = sqlx::query_as(&select).fetch_all(&mut *tx).await?;
                let mut stored: HashMap<String, AgentRow> =
                    rows.into_iter().map(|r| (r.id.clone(), r)).collect();

                for (a, hashes) in &agents {
                    match stored.remove(&a.id) {
                        None => {
                            sqlx::query(INSERT_AGENT)
                                .bind(&a.id)
                                .bind(&a.name)
                                .bind(&a.owner)
                                .bind(&a.team)
                                .bind(&a.description)
                                .bind(&a.purpose)
                                .bind(AgentStatus::Active.as_str())
                                .bind(Json(&a.labels))
                                .bind(Json(&a.models))
                                .bind(Json(&a.tools))
                                .bind(Json(&a.budgets))
                                .bind(AgentSource::Config.as_str())
                                .bind(now)
                                .bind(Json(&a.limits))
                                .execute(&mut *tx)
                                .await?;
                            report.created.push(a.id.clone());
                        }
                        Some(row) if row.source != AgentSource::Config.as_str() => {
                            tracing::warn!(
                                agent = %a.id,
                                "config declares an agent created through the API; left as it is"
                            );
                            report.skipped.push(a.id.clone());
                            continue;
                        }
                        Some(row) => {
                            if row.removed_from_config || !row.same_fields(a) {
                                let status = if row.removed_from_config {
                                    AgentStatus::Active.as_str()
                                } else {
                                    row.status.as_str()
                                };
                                sqlx::query(UPDATE_AGENT_FIELDS)
                                    .bind(&a.id)
                                    .bind(&a.name)
                                    .bind(&a.owner)
                                    .bind(&a.team)
                                    .bind(&a.description)
                                    .bind(&a.purpose)
                                    .bind(Json(&a.labels))
                                    .bind(Json(&a.models))
                                    .bind(Json(&a.tools))
                                    .bind(Json(&a.budgets))
                                    .bind(status)
                                    .bind(now)
                                    .bind(Json(&a.limits))
                                    .execute(&mut *tx)
                                    .await?;
                                if row.removed_from_config {
                                    report.reactivated.push(a.id.clone());
                                }
                                if !row.same_fields(a) {
                                    report.updated.push(a.id.clone());
                                }
                            }
                        }
                    }

                    // The agent's keys: (id, agent, hash, source, revoked at).
                    let keys: Vec<(String, String, String, String, Option<i64>)> = sqlx::query_as(
                        "SELECT id, agent_id, key_hash, source, revoked_at FROM agent_keys \
                             WHERE agent_id = $1",
                    )
                    .bind(&a.id)
                    .fetch_all(&mut *tx)
                    .await?;
                    for h in hashes {
                        if keys.iter().any(|k| &k.2 == h) {
                            continue;
                        }
                        let owner: Option<String> = sqlx::query_scalar(
                            "SELECT agent_id FROM agent_keys WHERE key_hash = $1",
                        )
                        .bind(h)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if let Some(other) = owner {
                            return Err(StoreError::conflict(
                                "agent",
                                a.id.clone(),
                                format!(
                                    "a declared key_sha256 is already a key of agent {other:?}"
                                ),
                            ));
                        }
                        sqlx::query(
                            "INSERT INTO agent_keys (id, agent_id, key_hash, prefix, source, \
                                 created_at) VALUES ($1, $2, $3, $4, 'config', $5)",
                        )
                        .bind(new_id("key_"))
                        .bind(&a.id)
                        .bind(h)
                        .bind(format!("sha256:{}", display_prefix(h)))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        report.keys_added += 1;
                    }
                    for (key_id, _, hash, source, revoked_at) in &keys {
                        let live = revoked_at.is_none_or(|t| t > now);
                        if source == "config" && live && !hashes.contains(hash) {
                            sqlx::query("UPDATE agent_keys SET revoked_at = $1 WHERE id = $2")
                                .bind(now)
                                .bind(key_id)
                                .execute(&mut *tx)
                                .await?;
                            report.keys_revoked += 1;
                        }
                    }
                }

                // Whatever config agents are left were not declared: suspend them.
                let mut gone: Vec<&AgentRow> = stored
                    .values()
                    .filter(|r| r.source == AgentSource::Config.as_str() && !r.removed_from_config)
                    .collect();
                gone.sort_by(|a, b| a.id.cmp(&b.id));
                for row in gone {
                    sqlx::query(
                        "UPDATE agents SET status = 'suspended', removed_from_config = TRUE, \
                             updated_at = $1 WHERE id = $2",
                    )
                    .bind(now)
                    .bind(&row.id)
                    .execute(&mut *tx)
                    .await?;
                    report.suspended.push(row.id.clone());
                }
                tx.commit().await?;
            });
            Ok(report)
        })
        .await
    }
}
