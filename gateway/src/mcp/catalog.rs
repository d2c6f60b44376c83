//! The catalog: what all configured servers offer (tools, prompts, resources and resource
//! templates) as one list of each, named `server__tool` / `server__prompt` and
//! `server+uri` (or bare, as the prefix mode says), and the way back from an exposed name to
//! its server. Lists are fetched through Palisade's own upstream session with each server and
//! cached until the server announces a change (`notifications/*/list_changed`, see
//! [`Changes`]), a stdio server restarts, a reload rebuilds the hub, or `[mcp] catalog_ttl_ms`
//! passes. A reload that changes `[[mcp_servers]]` builds a new [`Hub`] (see `crate::app::Upstreams`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::changes::{Changes, Listing};
use super::jsonrpc::METHOD_NOT_FOUND;
use super::session::Ended;
use super::settings::{McpSettings, PrefixMode};
use super::upstream::{Server, UpstreamError};

/// Separator between server and tool (or prompt) names.
pub const SEPARATOR: &str = "__";
/// Separator between server name and resource URI (`server+file:///a`): a URI scheme may hold
/// `+`, and server names never do.
pub const URI_SEPARATOR: char = '+';
/// The upstream session key under which Palisade lists what a server offers.
pub const CATALOG_SESSION: &str = "palisade:catalog";
/// Most pages read from one server's listing.
const MAX_PAGES: usize = 50;
/// An unknown name refetches the catalog at most this often.
const MISS_REFETCH: Duration = Duration::from_secs(1);

/// One item as the agent sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub server: usize,
    /// The name (or URI) the server knows it by.
    pub original: String,
    /// The item object with its exposed name.
    pub json: Value,
}

impl Entry {
    /// The exposed name (or URI, or URI template).
    pub fn exposed(&self, l: Listing) -> &str {
        self.json
            .get(l.name_field())
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

struct Cached {
    generation: u64,
    fetched: Instant,
    /// The catalog TTL, or [`INCOMPLETE_TTL`] when a server failed to answer.
    ttl: Duration,
    entries: Arc<Vec<Entry>>,
}

/// A list missing a failed server's part is kept this long, so one server that is down does
/// not make every request wait for it, and its items come back soon after it does.
const INCOMPLETE_TTL: Duration = Duration::from_secs(5);

/// The servers of one config, and what they offer.
pub struct Hub {
    pub settings: McpSettings,
    pub servers: Vec<Arc<Server>>,
    pub changes: Arc<Changes>,
    cache: Mutex<HashMap<Listing, Cached>>,
    pub ended: Ended,
}

impl Hub {
    pub fn new(settings: McpSettings) -> Hub {
        let changes = Arc::new(Changes::default());
        let servers = settings
            .servers
            .iter()
            .map(|s| Arc::new(Server::new(s, settings.timeout, changes.clone())))
            .collect();
        Hub {
            settings,
            servers,
            changes,
            cache: Mutex::new(HashMap::new()),
            ended: Ended::default(),
        }
    }

    fn exposed(&self, l: Listing, server: &str, name: &str) -> String {
        if !self.settings.prefixed() {
            return name.to_string();
        }
        match l {
            Listing::Tools | Listing::Prompts => format!("{server}{SEPARATOR}{name}"),
            Listing::Resources | Listing::Templates => format!("{server}{URI_SEPARATOR}{name}"),
        }
    }

    /// What every server offers of one kind, from the cache while it is current.
    pub async fn list(&self, l: Listing) -> Arc<Vec<Entry>> {
        self.list_fresh(l, None).await
    }

    /// `list`, refetching if the cache is older than `max_age`.
    async fn list_fresh(&self, l: Listing, max_age: Option<Duration>) -> Arc<Vec<Entry>> {
        let generation = self.changes.generation(l);
        let ttl = self.settings.catalog_ttl;
        let max_age = max_age.map_or(ttl, |m| m.min(ttl));
        if let Some(c) = self.lock().get(&l)
            && c.generation == generation
            && c.fetched.elapsed() < max_age.min(c.ttl)
        {
            return c.entries.clone();
        }
        let (entries, complete) = self.fetch(l).await;
        let entries = Arc::new(entries);
        if !ttl.is_zero() {
            // The generation read before fetching: a change announced meanwhile refetches.
            self.lock().insert(
                l,
                Cached {
                    generation,
                    fetched: Instant::now(),
                    ttl: if complete {
                        ttl
                    } else {
                        ttl.min(INCOMPLETE_TTL)
                    },
                    entries: entries.clone(),
                },
            );
        }
        entries
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Listing, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every server's listing, all pages, the servers asked at once; `false` if a server
    /// failed (it is left out, and logged, so one broken server does not hide the others).
    async fn fetch(&self, l: Listing) -> (Vec<Entry>, bool) {
        let mut all: Vec<Entry> = Vec::new();
        let mut complete = true;
        let answers =
            futures_util::future::join_all(self.servers.iter().map(|s| list_server(s, l))).await;
        for (i, (server, answer)) in self.servers.iter().zip(answers).enumerate() {
            match answer {
                Ok(items) => {
                    for mut t in items {
                        let Some(name) = t
                            .get(l.name_field())
                            .and_then(Value::as_str)
                            .map(str::to_string)
                        else {
                            continue;
                        };
                        t[l.name_field()] = json!(self.exposed(l, server.name(), &name));
                        all.push(Entry {
                            server: i,
                            original: name,
                            json: t,
                        });
                    }
                }
                // A server without prompts or resources says so: nothing to list.
                Err(UpstreamError::Rpc { code, .. }) if code == METHOD_NOT_FOUND => {}
                Err(e) => {
                    complete = false;
                    tracing::warn!(server = server.name(), "{} failed: {e}", l.method());
                }
            }
        }
        if self.settings.prefix == PrefixMode::Never {
            // A bare name two servers offer cannot be routed: drop both.
            let mut count: HashMap<String, usize> = HashMap::new();
            for e in &all {
                *count.entry(e.exposed(l).to_string()).or_default() += 1;
            }
            all.retain(|e| count.get(e.exposed(l)) == Some(&1));
        }
        (all, complete)
    }

    /// The tool or prompt behind an exposed name, refetching once (at most every second) if it
    /// is not known.
    pub async fn resolve(&self, l: Listing, name: &str) -> Option<Entry> {
        let find = |list: &[Entry]| list.iter().find(|e| e.exposed(l) == name).cloned();
        if let Some(e) = find(&self.list(l).await) {
            return Some(e);
        }
        find(&self.list_fresh(l, Some(MISS_REFETCH)).await)
    }

    /// The server and original URI behind an exposed resource URI. Prefixed URIs name their
    /// server; bare ones are looked up among the listed resources, then matched against the
    /// listed templates' fixed beginnings.
    /// URIs with dot segments or encoded separators are unknown: a policy glob such as
    /// `resource:fs+file:///srv/docs/*` must not be climbed out of.
    pub async fn resolve_resource(&self, uri: &str) -> Option<(usize, String)> {
        if !plain_uri(uri) {
            return None;
        }
        if self.settings.prefixed() {
            let (server, rest) = uri.split_once(URI_SEPARATOR)?;
            let i = self.servers.iter().position(|s| s.name() == server)?;
            return (!rest.is_empty()).then(|| (i, rest.to_string()));
        }
        if let Some(e) = self.resolve(Listing::Resources, uri).await {
            return Some((e.server, e.original));
        }
        self.list(Listing::Templates)
            .await
            .iter()
            .find(|t| {
                let fixed = t.original.split('{').next().unwrap_or_default();
                !fixed.is_empty() && uri.starts_with(fixed)
            })
            .map(|t| (t.server, uri.to_string()))
    }

    /// The listed template a read of `original` on `server` falls under, unless the URI is a
    /// listed resource itself: its read must pass the template's decision too (list parity).
    pub async fn template_for(&self, server: usize, original: &str) -> Option<Entry> {
        let listed = self.list(Listing::Resources).await;
        if listed
            .iter()
            .any(|e| e.server == server && e.original == original)
        {
            return None;
        }
        self.list(Listing::Templates)
            .await
            .iter()
            .find(|t| {
                let fixed = t.original.split('{').next().unwrap_or_default();
                t.server == server && !fixed.is_empty() && original.starts_with(fixed)
            })
            .cloned()
    }

    /// A server's URI as agents see it (`server+uri` when prefixed).
    pub fn exposed_uri(&self, server: usize, uri: &str) -> String {
        match self.servers.get(server) {
            Some(s) => self.exposed(Listing::Resources, s.name(), uri),
            None => uri.to_string(),
        }
    }

    /// End what the servers hold for an agent session.
    pub async fn end_session(&self, session: &str) {
        for s in &self.servers {
            s.end_session(session).await;
        }
    }
}

/// No dot segments, no encoded dots, slashes or backslashes.
fn plain_uri(uri: &str) -> bool {
    let lower = uri.to_ascii_lowercase();
    let encoded = ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e));
    let dots = uri
        .split(['/', '\\', '?', '#'])
        .any(|segment| segment == ".." || segment == ".");
    !encoded && !dots && !uri.contains('\\')
}

async fn list_server(server: &Server, l: Listing) -> Result<Vec<Value>, UpstreamError> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let result = server
            .request(CATALOG_SESSION, l.method(), params, None)
            .await?;
        if let Some(Value::Array(page)) = result.get(l.key()) {
            items.extend(page.iter().cloned());
        }
        cursor = result
            .get("nextCursor")
            .and_then(Value::as_str)
            .map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::plain_uri;

    #[test]
    fn uris_that_could_climb_out_of_a_glob_are_not_plain() {
        assert!(plain_uri("fs+file:///srv/docs/a.txt"));
        assert!(plain_uri("desk+desk://tickets/42?x=1"));
        for bad in [
            "fs+file:///srv/docs/../../etc/passwd",
            "fs+file:///srv/docs/./a",
            "fs+file:///srv/docs/%2E%2E/etc",
            "fs+file:///srv/docs/..%2fetc",
            "fs+file:///srv/docs\\..\\etc",
            "fs+file:///srv/docs/..",
        ] {
            assert!(!plain_uri(bad), "{bad}");
        }
    }
}
