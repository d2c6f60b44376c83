//! The catalog: the tools of all configured servers as one list, named `server__tool` (or as the
//! prefix mode says), and the way back from an exposed name to its server and tool. The
//! catalog is fetched from the servers on every `tools/list` (so a server's
//! `notifications/tools/list_changed` is reflected at the next listing) and cached for call-time
//! lookups; a name not in the cache triggers one refresh before it is called unknown. [`Hubs`]
//! rebuilds the servers when a reload changes `[[mcp_servers]]`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde_json::{Value, json};

use super::session::Ended;
use super::settings::{McpSettings, PrefixMode};
use super::upstream::{Server, UpstreamError};

/// Separator between server and tool names.
pub const SEPARATOR: &str = "__";
/// Most pages read from one server's `tools/list`.
const MAX_PAGES: usize = 50;

/// One tool as the agent sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub server: usize,
    /// The name the server knows it by.
    pub tool: String,
    /// The tool object with its exposed name.
    pub json: Value,
}

/// The servers of one config, and what they offer.
pub struct Hub {
    pub settings: McpSettings,
    pub servers: Vec<Arc<Server>>,
    cache: Mutex<HashMap<String, Entry>>,
    pub ended: Ended,
}

impl Hub {
    pub fn new(settings: McpSettings) -> Hub {
        let servers = settings
            .servers
            .iter()
            .map(|s| Arc::new(Server::new(s, settings.timeout)))
            .collect();
        Hub {
            settings,
            servers,
            cache: Mutex::new(HashMap::new()),
            ended: Ended::default(),
        }
    }

    fn exposed(&self, server: &str, name: &str) -> String {
        if self.settings.prefixed() {
            format!("{server}{SEPARATOR}{name}")
        } else {
            name.to_string()
        }
    }

    /// Every server's `tools/list`, all pages. A server that fails is left out (and logged), so
    /// one broken server does not hide the others' tools.
    pub async fn list(&self, session: &str, chain: Option<&str>) -> Vec<Entry> {
        let mut all: Vec<Entry> = Vec::new();
        for (i, server) in self.servers.iter().enumerate() {
            match list_server(server, session, chain).await {
                Ok(tools) => {
                    for mut t in tools {
                        let Some(name) = t.get("name").and_then(Value::as_str).map(str::to_string)
                        else {
                            continue;
                        };
                        let exposed = self.exposed(server.name(), &name);
                        t["name"] = json!(exposed);
                        all.push(Entry {
                            server: i,
                            tool: name,
                            json: t,
                        });
                    }
                }
                Err(e) => tracing::warn!(server = server.name(), "tools/list failed: {e}"),
            }
        }
        if self.settings.prefix == PrefixMode::Never {
            // A bare name two servers offer cannot be routed: drop both.
            let mut count: HashMap<String, usize> = HashMap::new();
            for e in &all {
                *count.entry(exposed_name(e)).or_default() += 1;
            }
            all.retain(|e| count.get(&exposed_name(e)) == Some(&1));
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.clear();
        for e in &all {
            cache.insert(exposed_name(e), e.clone());
        }
        all
    }

    /// The catalog entry for an exposed name, refreshing the catalog once if it is not known.
    pub async fn resolve(&self, session: &str, chain: Option<&str>, name: &str) -> Option<Entry> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        if cached.is_some() {
            return cached;
        }
        self.list(session, chain)
            .await
            .into_iter()
            .find(|e| exposed_name(e) == name)
    }

    /// End what the servers hold for an agent session.
    pub async fn end_session(&self, session: &str) {
        for s in &self.servers {
            s.end_session(session).await;
        }
    }
}

fn exposed_name(e: &Entry) -> String {
    e.json
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

async fn list_server(
    server: &Server,
    session: &str,
    chain: Option<&str>,
) -> Result<Vec<Value>, UpstreamError> {
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let result = server.request(session, "tools/list", params, chain).await?;
        if let Some(Value::Array(page)) = result.get("tools") {
            tools.extend(page.iter().cloned());
        }
        cursor = result
            .get("nextCursor")
            .and_then(Value::as_str)
            .map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    Ok(tools)
}

/// The hub for the current config, rebuilt when a reload changes the MCP settings.
pub struct Hubs {
    current: ArcSwap<Hub>,
    build: Mutex<()>,
}

impl Hubs {
    pub fn new(settings: &McpSettings) -> Hubs {
        Hubs {
            current: ArcSwap::from_pointee(Hub::new(settings.clone())),
            build: Mutex::new(()),
        }
    }

    pub fn get(&self, settings: &McpSettings) -> Arc<Hub> {
        let current = self.current.load_full();
        if current.settings == *settings {
            return current;
        }
        let _one = self.build.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current.load_full();
        if current.settings == *settings {
            return current;
        }
        let fresh = Arc::new(Hub::new(settings.clone()));
        self.current.store(fresh.clone());
        fresh
    }
}
