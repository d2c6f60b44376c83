//! `palisade.toml`: read in two stages. [`RawConfig`] is exactly the file (serde, unknown keys
//! refused so a typo is an error, not a silently ignored setting); [`Settings`] is the resolved
//! form the gateway runs on (paths made absolute, defaults filled, keys hashed).

pub mod approvals;
pub mod limits;
pub mod mcp;
pub mod providers;
pub mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Output tokens assumed when an agent sets no `max_tokens`.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4096;

/// A config that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `sqlite://palisade.db` (relative to the config's folder; the default) or
    /// `postgres://user@host/db` for replicas sharing one state.
    pub database: Option<String>,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub server: RawServer,
    /// The single-provider shorthand (OpenAI-compatible); optional once `[[providers]]` exist.
    pub upstream: Option<RawUpstream>,
    /// Providers by name (see `providers::config`).
    #[serde(default)]
    pub providers: Vec<providers::RawProvider>,
    /// Model aliases: `[routes.<alias>] targets = ["provider/model", ...]`.
    #[serde(default)]
    pub routes: BTreeMap<String, providers::RawRoute>,
    #[serde(default)]
    pub breaker: providers::RawBreaker,
    #[serde(default)]
    pub plugin_host: RawPluginHost,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub agents: Vec<RawAgent>,
    #[serde(default)]
    pub plugins: Vec<RawPlugin>,
    #[serde(default)]
    pub chain: RawChain,
    /// Prices per `provider/model` (or bare model), USD per million tokens.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    /// `[mcp]`: the `/mcp` endpoint (tool name prefixes, timeouts).
    #[serde(default)]
    pub mcp: mcp::RawMcp,
    /// `[[mcp_servers]]`: the upstream MCP servers behind `/mcp`.
    #[serde(default)]
    pub mcp_servers: Vec<mcp::RawMcpServer>,
    /// `[approvals]`: holding calls for human approval.
    #[serde(default)]
    pub approvals: approvals::RawApprovals,
    /// `[limits]`: rate and concurrency limits, fair shares, MCP caps.
    #[serde(default)]
    pub limits: limits::RawLimits,
}

/// `[chain]`: the delegation chain token.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawChain {
    /// Env var holding the signing key (default `PALISADE_CHAIN_KEY`). Named explicitly and
    /// unset is an error; left default and unset, a random per-process key is used (and
    /// replicas will not accept each other's tokens).
    pub key_env: Option<String>,
    /// Env var holding the previous key, still accepted for verification during a rotation.
    pub previous_key_env: Option<String>,
    /// How long a token is accepted after it was issued (default 3600).
    pub max_age_secs: Option<u64>,
}

/// One model's price, USD per million tokens.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Price of cached input tokens (default: the input price).
    pub cached_input_per_mtok: Option<f64>,
}

impl Price {
    /// Micro-USD for this many tokens, rounded up.
    pub fn cost(&self, input: u64, cached: u64, output: u64) -> u64 {
        let cached = cached.min(input);
        // USD per Mtok is exactly micro-USD per token.
        let micro = (input - cached) as f64 * self.input_per_mtok
            + cached as f64 * self.cached_input_per_mtok.unwrap_or(self.input_per_mtok)
            + output as f64 * self.output_per_mtok;
        if micro.is_finite() && micro > 0.0 {
            micro.ceil().min(u64::MAX as f64) as u64
        } else {
            0
        }
    }
}

/// The resolved `[chain]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSettings {
    /// `None`: no key configured; the gateway uses its per-process random key.
    pub key: Option<Vec<u8>>,
    pub previous_key: Option<Vec<u8>>,
    pub max_age: Duration,
    /// Whether `key_env` was named explicitly.
    pub key_configured: bool,
}

pub use server::RawServer;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// A name for logs, errors and the `palisade-provider` header.
    pub name: Option<String>,
    /// Base URL of an OpenAI-compatible server, e.g. `http://127.0.0.1:8081`.
    pub base_url: String,
    /// Name of the environment variable holding the provider key.
    pub api_key_env: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPluginHost {
    pub deadline_ms: Option<u64>,
    pub memory_mb: Option<usize>,
    pub max_instances: Option<u32>,
    pub cache_dir: Option<PathBuf>,
    pub watch: Option<bool>,
    pub stream_overrun: Option<StreamOverrun>,
    pub stream_reserve_output_tokens: Option<u32>,
}

/// What happens when a stream's spend outruns what its budget plugins reserved and a limit
/// refuses to hold more.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StreamOverrun {
    /// Cut the stream with a `budget_exceeded` error event (default).
    #[default]
    Cut,
    /// Let it finish; the real cost is settled afterwards and may pass the limit.
    Finish,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Name of the environment variable holding the first admin's API token (created at start
    /// if no user of that name exists). Default `PALISADE_ADMIN_TOKEN`.
    pub bootstrap_token_env: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub durability: Option<Durability>,
    pub on_failure: Option<OnAuditFailure>,
    pub store_bodies: Option<bool>,
    pub batch_max: Option<usize>,
    pub flush_ms: Option<u64>,
    pub queue: Option<usize>,
}

/// When a call's audit event must be committed.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Written in batches off the request path (default).
    #[default]
    Batched,
    /// The response waits until its event is committed.
    Sync,
}

/// What the gateway does when the audit log cannot be written.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnAuditFailure {
    /// Refuse new calls (503 `audit_unavailable`) until it can (default).
    #[default]
    Refuse,
    /// Keep serving; events wait in the queue, and the log says so loudly.
    Continue,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub id: String,
    pub name: Option<String>,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub purpose: String,
    /// Models it may use (for the inventory; `model-allow` enforces).
    #[serde(default)]
    pub models: Vec<String>,
    /// Tools it may use (for the inventory; `tool-acl` enforces).
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub budgets: toml::Table,
    /// Rate and concurrency limits of this agent (`{ rpm, tpm, concurrent }`).
    #[serde(default)]
    pub limits: limits::RawLimitSet,
    /// Refuse calls without a `palisade-chain` token (agents only ever invoked by others).
    #[serde(default)]
    pub require_chain: bool,
    /// The agent's key in clear (demo and tests only).
    pub key: Option<String>,
    /// The hex SHA-256 of the agent's key (what to commit to a repository).
    pub key_sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub name: String,
    pub path: PathBuf,
    pub on_error: Option<OnError>,
    pub instances: Option<Instances>,
    pub max_calls: Option<u32>,
    pub deadline_ms: Option<u64>,
    pub memory_mb: Option<usize>,
    #[serde(default)]
    pub config: toml::Table,
}

/// What a plugin failure does to the call.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed: the call is refused (default).
    #[default]
    Deny,
    /// Fail open: the plugin is skipped for this call, and the audit says so.
    Allow,
}

/// How a plugin's instances live. Unset in `palisade.toml`, the plugin decides: pooled if it
/// declared itself stateless (`host.declare-stateless` in `init`), fresh otherwise.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Instances {
    /// A fresh instance per call: nothing leaks between calls.
    Fresh,
    /// Reused one call at a time; recycled after a trap, `max_calls`, or past its memory cap.
    Pooled,
}

/// The resolved config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file it came from.
    pub path: PathBuf,
    pub database: String,
    pub audit: AuditSettings,
    pub admin_bootstrap_env: String,
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// `[server] drain_secs`: a graceful shutdown's wait for calls in flight.
    pub drain: Duration,
    /// The rest of `[server]`: timeouts, the connection cap, TLS, `/metrics` access.
    pub server: server::ServerSettings,
    /// The default provider: `[upstream]`, or the first `[[providers]]` entry.
    pub upstream: UpstreamSettings,
    /// Whether `[upstream]` is in the file (then it is a provider of its own).
    pub upstream_declared: bool,
    /// `[[providers]]`, resolved (without `[upstream]`; see [`Settings::provider_list`]).
    pub providers: Vec<providers::ProviderSettings>,
    pub routes: BTreeMap<String, providers::RouteSettings>,
    pub breaker: providers::BreakerSettings,
    pub host: PluginHostSettings,
    pub agents: Vec<AgentSettings>,
    pub plugins: Vec<PluginSettings>,
    pub chain: ChainSettings,
    pub prices: BTreeMap<String, Price>,
    pub mcp: mcp::McpSettings,
    pub approvals: approvals::ApprovalSettings,
    pub limits: limits::LimitSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub durability: Durability,
    pub on_failure: OnAuditFailure,
    pub store_bodies: bool,
    pub batch_max: usize,
    pub flush: Duration,
    pub queue: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub name: String,
    pub base_url: String,
    /// Kept out of `Debug` output.
    pub api_key: Option<providers::Secret>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct PluginHostSettings {
    pub deadline: Duration,
    pub memory_bytes: usize,
    pub max_instances: u32,
    pub cache_dir: PathBuf,
    pub watch: bool,
    pub stream_overrun: StreamOverrun,
    /// For streams: the output tokens a call's `max-output-tokens` (and so its `max-cost`, what
    /// budget plugins reserve) counts up front instead of `max_tokens`; the reservations grow
    /// as the stream runs. `None`: the worst case.
    pub stream_reserve_output_tokens: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub team: String,
    pub labels: Vec<(String, String)>,
    pub description: String,
    pub purpose: String,
    pub models: Vec<String>,
    pub tools: Vec<String>,
    pub budgets: serde_json::Value,
    pub limits: limits::LimitSet,
    pub require_chain: bool,
    pub key_sha256: [u8; 32],
}

#[derive(Debug, Clone)]
pub struct PluginSettings {
    pub name: String,
    pub path: PathBuf,
    pub on_error: OnError,
    /// The operator's `instances`; `None` follows the plugin's declaration (see [`Instances`]).
    pub instances: Option<Instances>,
    pub max_calls: u32,
    pub deadline: Duration,
    pub memory_bytes: usize,
    /// The plugin's config table as JSON, handed to `init`.
    pub config_json: String,
}

/// SHA-256 of an API key, as stored and compared.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Settings {
    /// The price of a `provider/model` target (or of the bare model).
    pub fn price(&self, provider: &str, model: &str) -> Option<&Price> {
        self.prices
            .get(&format!("{provider}/{model}"))
            .or_else(|| self.prices.get(model))
    }

    /// Every provider: `[upstream]` (an OpenAI-compatible provider, first, where declared) and
    /// the `[[providers]]` entries.
    pub fn provider_list(&self) -> Vec<providers::ProviderSettings> {
        let mut list = Vec::with_capacity(self.providers.len() + 1);
        if self.upstream_declared {
            let u = &self.upstream;
            list.push(providers::ProviderSettings {
                name: u.name.clone(),
                dialect: providers::Dialect::OpenAi,
                base_url: u.base_url.clone(),
                api_key: u.api_key.clone(),
                connect_timeout: u.connect_timeout,
                first_byte_timeout: u.timeout,
                stream_idle_timeout: Duration::from_millis(providers::DEFAULT_STREAM_IDLE_MS),
                timeout: u.timeout,
            });
        }
        list.extend(self.providers.iter().cloned());
        list
    }

    /// Whether this agent must call within a delegation chain.
    pub fn requires_chain(&self, agent: &str) -> bool {
        self.agents.iter().any(|a| a.id == agent && a.require_chain)
    }

    /// Read and resolve a config file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::from_toml(path, &text)
    }

    /// Resolve config text that was read from `path` (relative paths are taken from its folder).
    pub fn from_toml(path: &Path, text: &str) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };

        let host = PluginHostSettings {
            deadline: Duration::from_millis(raw.plugin_host.deadline_ms.unwrap_or(20)),
            memory_bytes: raw.plugin_host.memory_mb.unwrap_or(32) << 20,
            max_instances: raw.plugin_host.max_instances.unwrap_or(1000),
            cache_dir: resolve(
                raw.plugin_host
                    .cache_dir
                    .as_deref()
                    .unwrap_or(Path::new(".palisade/cache")),
            ),
            watch: raw.plugin_host.watch.unwrap_or(true),
            stream_overrun: raw.plugin_host.stream_overrun.unwrap_or_default(),
            stream_reserve_output_tokens: raw.plugin_host.stream_reserve_output_tokens,
        };
        if host.max_instances == 0 {
            return Err(invalid(
                "plugin_host.max_instances must be at least 1".into(),
            ));
        }

        let env = |var: &Option<String>, what: &str| -> Result<Option<String>, ConfigError> {
            match var {
                None => Ok(None),
                Some(v) => std::env::var(v)
                    .map(Some)
                    .map_err(|_| invalid(format!("{what} names env var {v}, which is not set"))),
            }
        };

        let upstream_declared = raw.upstream.is_some();
        let upstream_name = raw
            .upstream
            .as_ref()
            .map(|u| u.name.clone().unwrap_or_else(|| "openai".into()));
        let providers = providers::resolve_providers(raw.providers, &dir, upstream_name.as_deref())
            .map_err(invalid)?;
        let upstream = match raw.upstream {
            Some(up) => {
                let base_url = up.base_url.trim_end_matches('/').to_string();
                if !base_url.starts_with("http://") && !base_url.starts_with("https://") {
                    return Err(invalid(format!(
                        "upstream.base_url '{base_url}' must start with http://"
                    )));
                }
                UpstreamSettings {
                    name: upstream_name.unwrap_or_default(),
                    base_url,
                    api_key: env(&up.api_key_env, "upstream.api_key_env")?
                        .map(providers::Secret::new),
                    connect_timeout: Duration::from_millis(up.connect_timeout_ms.unwrap_or(2000)),
                    timeout: Duration::from_millis(up.timeout_ms.unwrap_or(120_000)),
                }
            }
            None => {
                let first = providers.first().ok_or_else(|| {
                    invalid("no provider: add [upstream] or at least one [[providers]]".into())
                })?;
                UpstreamSettings {
                    name: first.name.clone(),
                    base_url: first.base_url.clone(),
                    api_key: first.api_key.clone(),
                    connect_timeout: first.connect_timeout,
                    timeout: first.timeout,
                }
            }
        };
        let mut known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
        if upstream_declared {
            known.insert(0, upstream.name.as_str());
        }
        let routes = providers::resolve_routes(raw.routes, &known).map_err(invalid)?;
        let breaker = providers::resolve_breaker(raw.breaker);

        let mut agents = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for a in raw.agents {
            if !seen.insert(a.id.clone()) {
                return Err(invalid(format!("agent '{}' is declared twice", a.id)));
            }
            let key_sha256 = match (&a.key, &a.key_sha256) {
                (Some(k), None) => hash_key(k),
                (None, Some(h)) => hex::decode(h.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        invalid(format!("agent '{}': key_sha256 is not 64 hex digits", a.id))
                    })?,
                _ => {
                    return Err(invalid(format!(
                        "agent '{}' needs exactly one of `key` or `key_sha256`",
                        a.id
                    )));
                }
            };
            let budgets = serde_json::to_value(&a.budgets)
                .map_err(|e| invalid(format!("agent '{}' budgets: {e}", a.id)))?;
            let agent_limits = limits::check_set(&format!("agent '{}' limits", a.id), a.limits)
                .map_err(invalid)?;
            agents.push(AgentSettings {
                name: a.name.unwrap_or_else(|| a.id.clone()),
                description: a.description,
                purpose: a.purpose,
                models: a.models,
                tools: a.tools,
                budgets,
                limits: agent_limits,
                require_chain: a.require_chain,
                id: a.id,
                owner: a.owner,
                team: a.team,
                labels: a.labels.into_iter().collect(),
                key_sha256,
            });
        }

        let mut plugins = Vec::new();
        let mut names = std::collections::HashSet::new();
        for p in raw.plugins {
            if !names.insert(p.name.clone()) {
                return Err(invalid(format!("plugin '{}' is listed twice", p.name)));
            }
            let config_json = serde_json::to_string(&p.config)
                .map_err(|e| invalid(format!("plugin '{}' config: {e}", p.name)))?;
            plugins.push(PluginSettings {
                path: resolve(&p.path),
                on_error: p.on_error.unwrap_or_default(),
                instances: p.instances,
                max_calls: p.max_calls.unwrap_or(1000).max(1),
                deadline: p
                    .deadline_ms
                    .map(Duration::from_millis)
                    .unwrap_or(host.deadline),
                memory_bytes: p.memory_mb.map(|m| m << 20).unwrap_or(host.memory_bytes),
                config_json,
                name: p.name,
            });
        }
        if let Some(p) = plugins.iter().find(|p| p.memory_bytes > host.memory_bytes) {
            return Err(invalid(format!(
                "plugin '{}' memory_mb is above plugin_host.memory_mb",
                p.name
            )));
        }

        let database = match raw.database {
            None => format!("sqlite://{}", dir.join("palisade.db").display()),
            Some(url) => match url.strip_prefix("sqlite://") {
                Some(file) if !file.starts_with('/') && !file.starts_with(":memory:") => {
                    format!("sqlite://{}", dir.join(file).display())
                }
                _ => url,
            },
        };
        let audit = AuditSettings {
            durability: raw.audit.durability.unwrap_or_default(),
            on_failure: raw.audit.on_failure.unwrap_or_default(),
            store_bodies: raw.audit.store_bodies.unwrap_or(false),
            batch_max: raw.audit.batch_max.unwrap_or(256).max(1),
            flush: Duration::from_millis(raw.audit.flush_ms.unwrap_or(20)),
            queue: raw.audit.queue.unwrap_or(10_000).max(16),
        };

        let chain_key = |var: Option<&String>, default: Option<&str>, what: &str| {
            let (name, explicit) = match (var, default) {
                (Some(v), _) => (v.as_str(), true),
                (None, Some(d)) => (d, false),
                (None, None) => return Ok(None),
            };
            match std::env::var(name) {
                Ok(k) if k.len() >= 16 => Ok(Some(k.into_bytes())),
                Ok(_) => Err(invalid(format!(
                    "{what}: ${name} must hold at least 16 bytes"
                ))),
                Err(_) if explicit => Err(invalid(format!(
                    "{what} names env var {name}, which is not set"
                ))),
                Err(_) => Ok(None),
            }
        };
        let chain = ChainSettings {
            key: chain_key(
                raw.chain.key_env.as_ref(),
                Some("PALISADE_CHAIN_KEY"),
                "chain.key_env",
            )?,
            previous_key: chain_key(
                raw.chain.previous_key_env.as_ref(),
                None,
                "chain.previous_key_env",
            )?,
            max_age: Duration::from_secs(raw.chain.max_age_secs.unwrap_or(3600).max(1)),
            key_configured: raw.chain.key_env.is_some(),
        };
        for (model, p) in &raw.prices {
            let ok = |v: f64| v.is_finite() && v >= 0.0;
            if !ok(p.input_per_mtok)
                || !ok(p.output_per_mtok)
                || !p.cached_input_per_mtok.is_none_or(ok)
            {
                return Err(invalid(format!(
                    "prices.\"{model}\": prices must be non-negative numbers"
                )));
            }
        }
        let approvals = raw.approvals.resolve().map_err(invalid)?;
        let drain = match raw.server.drain_secs {
            None => Duration::from_secs(20),
            Some(s) if s.is_finite() && (0.0..=3600.0).contains(&s) => Duration::from_secs_f64(s),
            Some(_) => {
                return Err(invalid(
                    "server.drain_secs must be a number of seconds from 0 to 3600".into(),
                ));
            }
        };

        let listen = raw
            .server
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let server = server::resolve(&raw.server, &resolve).map_err(invalid)?;
        let mcp = mcp::resolve(raw.mcp, raw.mcp_servers, &resolve).map_err(invalid)?;
        let limits = limits::resolve(raw.limits, host.max_instances).map_err(invalid)?;
        Ok(Settings {
            server,
            mcp,
            limits,
            approvals,
            chain,
            prices: raw.prices,
            path: path.to_path_buf(),
            database,
            audit,
            admin_bootstrap_env: raw
                .admin
                .bootstrap_token_env
                .unwrap_or_else(|| "PALISADE_ADMIN_TOKEN".into()),
            listen,
            max_body_bytes: raw.server.max_body_bytes.unwrap_or(4 << 20),
            drain,
            upstream,
            upstream_declared,
            providers,
            routes,
            breaker,
            host,
            agents,
            plugins,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors() {
        let e = Settings::from_toml(
            Path::new("/x/palisade.toml"),
            "[upstream]\nbase_url='http://a'\nbase_ulr='x'",
        )
        .unwrap_err();
        assert!(e.to_string().contains("base_ulr"), "{e}");
    }

    #[test]
    fn paths_resolve_from_the_config_folder() {
        let s = Settings::from_toml(
            Path::new("/etc/palisade/palisade.toml"),
            "[upstream]\nbase_url='http://a/'\n[[plugins]]\nname='m'\npath='p/m.wasm'\n[plugins.config]\nx=1",
        )
        .unwrap();
        assert_eq!(s.plugins[0].path, Path::new("/etc/palisade/p/m.wasm"));
        assert_eq!(s.plugins[0].config_json, r#"{"x":1}"#);
        assert_eq!(s.upstream.base_url, "http://a");
        assert_eq!(s.host.deadline, Duration::from_millis(20));
        assert_eq!(s.host.memory_bytes, 32 << 20);
    }

    #[test]
    fn prices_and_chain_settings() {
        let s = Settings::from_toml(
            Path::new("p.toml"),
            "[upstream]\nbase_url='http://a'\n[chain]\nmax_age_secs=60\n[prices.\"mock/m\"]\ninput_per_mtok=0.15\noutput_per_mtok=0.6",
        )
        .unwrap();
        assert_eq!(s.chain.max_age, Duration::from_secs(60));
        let p = s.price("mock", "m").unwrap();
        // 1000 input tokens at 0.15 $/Mtok = 150 micro-USD; 100 output at 0.6 = 60.
        assert_eq!(p.cost(1000, 0, 100), 210);
        assert_eq!(p.cost(1, 0, 0), 1, "rounded up");
        assert!(s.price("other", "m").is_none());
        let e = Settings::from_toml(
            Path::new("p.toml"),
            "[upstream]\nbase_url='http://a'\n[chain]\nkey_env='PALISADE_TEST_UNSET_VAR_X'",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not set"), "{e}");
    }

    #[test]
    fn agent_needs_one_key() {
        let e = Settings::from_toml(
            Path::new("p.toml"),
            "[upstream]\nbase_url='http://a'\n[[agents]]\nid='a'",
        )
        .unwrap_err();
        assert!(e.to_string().contains("exactly one of"), "{e}");
    }
}
