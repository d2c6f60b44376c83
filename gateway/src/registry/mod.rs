//! The agent registry: who may call, found by the hash of their key. For now agents come from
//! `palisade.toml`; keys are compared only as SHA-256 hashes and never logged.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{AgentSettings, hash_key};

/// A registered agent, as the plugins' `call.agent` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub team: String,
    pub labels: Vec<(String, String)>,
}

#[derive(Default)]
pub struct Registry {
    by_key: HashMap<[u8; 32], Arc<Agent>>,
}

impl Registry {
    pub fn from_settings(agents: &[AgentSettings]) -> Registry {
        let by_key = agents
            .iter()
            .map(|a| {
                let agent = Agent {
                    id: a.id.clone(),
                    name: a.name.clone(),
                    owner: a.owner.clone(),
                    team: a.team.clone(),
                    labels: a.labels.clone(),
                };
                (a.key_sha256, Arc::new(agent))
            })
            .collect();
        Registry { by_key }
    }

    /// The agent holding this key, if any.
    pub fn authenticate(&self, key: &str) -> Option<Arc<Agent>> {
        self.by_key.get(&hash_key(key)).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}
