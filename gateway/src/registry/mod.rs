//! The agent registry: who may call. Agents and their keys live in the store; agents declared
//! in `palisade.toml` are synced into it at start and on every reload (GitOps), the rest are
//! managed through the admin API.
//!
//! Keys are looked up by their SHA-256 only, with a short-lived cache in front of the store so a
//! call does not pay a database round trip. Changes made through this gateway clear the cache at
//! once; changes made through another replica are seen within [`CACHE_TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use palisade_store::{ConfigAgent, KeyAuth, NewAgent, Store, StoreError, SyncReport};

use crate::core::error::CallError;
use crate::core::settings::AgentSettings;

/// How long a key lookup is trusted before the store is asked again.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
const CACHE_MAX: usize = 50_000;

/// A registered agent, as the plugins' `call.agent` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub team: String,
    pub labels: Vec<(String, String)>,
    /// Its own rate and concurrency limits (the host enforces them; plugins do not see them).
    #[serde(skip)]
    pub limits: palisade_store::AgentLimits,
}

/// The label under which plugins see the budgets the registry holds for an agent (set with
/// the admin API or `[[agents]] budgets`), as JSON in the `budget` plugin's limits format,
/// e.g. `{"usd":{"day":0.01}}`. The `budget` plugin enforces them.
pub const BUDGETS_LABEL: &str = "palisade.budgets";

impl From<&palisade_store::Agent> for Agent {
    fn from(a: &palisade_store::Agent) -> Self {
        let mut labels: Vec<(String, String)> = a
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != BUDGETS_LABEL)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if a.budgets.as_object().is_some_and(|o| !o.is_empty()) {
            labels.push((BUDGETS_LABEL.to_string(), a.budgets.to_string()));
        }
        Agent {
            id: a.id.clone(),
            name: a.name.clone(),
            owner: a.owner.clone(),
            team: a.team.clone(),
            labels,
            limits: a.limits,
        }
    }
}

/// A key's lookup, with the plugins' view of its agent built once (labels, registry budgets),
/// not on every call.
type Cached = (Instant, Option<(KeyAuth, std::sync::Arc<Agent>)>);

pub struct Registry {
    store: Store,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Registry {
    pub fn new(store: Store) -> Registry {
        Registry {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Forget cached lookups (after a change to agents or keys).
    pub fn invalidate(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The active agent holding this key, or why not.
    pub async fn authenticate(
        &self,
        key: &str,
    ) -> Result<(std::sync::Arc<Agent>, String), CallError> {
        let hash = palisade_store::hash_secret(key);
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(&hash)
                .filter(|(at, _)| at.elapsed() < CACHE_TTL)
                .map(|(_, a)| a.clone())
        };
        let auth = match cached {
            Some(a) => a,
            None => {
                let found =
                    self.store.authenticate(key).await.map_err(|e| {
                        CallError::Internal(format!("agent registry unavailable: {e}"))
                    })?;
                let found = found.map(|a| {
                    let view = std::sync::Arc::new(Agent::from(&a.agent));
                    (a, view)
                });
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(hash, (Instant::now(), found.clone()));
                found
            }
        };
        match auth {
            None => Err(CallError::Unauthorized("unknown or revoked agent key")),
            Some((a, _)) if !a.is_active() => Err(CallError::Unauthorized("agent is suspended")),
            Some((a, view)) => Ok((view, a.agent.id.clone())),
        }
    }

    /// Make the store's config-declared agents match the config.
    pub async fn sync_config(&self, agents: &[AgentSettings]) -> Result<SyncReport, StoreError> {
        let declared: Vec<ConfigAgent> = agents
            .iter()
            .map(|a| ConfigAgent {
                agent: NewAgent {
                    id: a.id.clone(),
                    name: a.name.clone(),
                    owner: a.owner.clone(),
                    team: a.team.clone(),
                    description: a.description.clone(),
                    purpose: a.purpose.clone(),
                    labels: a.labels.iter().cloned().collect(),
                    models: a.models.clone(),
                    tools: a.tools.clone(),
                    budgets: a.budgets.clone(),
                    limits: palisade_store::AgentLimits {
                        rpm: a.limits.rpm,
                        tpm: a.limits.tpm,
                        concurrent: a.limits.concurrent,
                    },
                },
                key_sha256: vec![hex::encode(a.key_sha256)],
            })
            .collect();
        let report = self.store.sync_config_agents(&declared).await?;
        self.invalidate();
        Ok(report)
    }
}
