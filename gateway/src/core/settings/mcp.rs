//! The `[mcp]` and `[[mcp_servers]]` sections of `palisade.toml`: raw as in the file, resolved
//! into [`McpSettings`] (credentials read from the environment, names checked).
//!
//! ```toml
//! [mcp]
//! prefix = "always"            # always (default) | conditional (only with >1 server) | never
//! timeout_ms = 60000           # per upstream request
//! catalog_ttl_ms = 300000      # lists are refetched at the latest after this (0: every time);
//!                              # sooner when a server announces a change
//!
//! [[mcp_servers]]
//! name = "everything"
//! transport = "http"
//! url = "http://127.0.0.1:3901/mcp"
//! headers_env = { Authorization = "EVERYTHING_AUTH" }   # header -> env var holding its value
//!
//! [[mcp_servers]]
//! name = "fs"
//! transport = "stdio"
//! command = "node"
//! args = ["server.js", "/srv/files"]
//! env = { LOG_LEVEL = "info" }          # literal variables for the child
//! env_from = { API_TOKEN = "FS_TOKEN" } # child variable -> gateway env var
//! ```
//! A stdio child gets only `PATH` and what is configured here, never the gateway's environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    pub prefix: Option<PrefixMode>,
    pub timeout_ms: Option<u64>,
    pub catalog_ttl_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpServer {
    pub name: String,
    pub transport: Transport,
    pub url: Option<String>,
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    pub command: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub env_from: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
}

/// How exposed tool names are built from server and tool names.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PrefixMode {
    /// `server__tool`, always (default): names never change when a server is added.
    #[default]
    Always,
    /// Prefixed only when more than one server is configured.
    Conditional,
    /// Bare tool names; a name offered by two servers is dropped from the catalog.
    Never,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Http,
    Stdio,
}

/// The resolved MCP settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct McpSettings {
    pub prefix: PrefixMode,
    pub timeout: Duration,
    /// How long a fetched list is used before it is fetched again (zero: never cached).
    pub catalog_ttl: Duration,
    pub servers: Vec<ServerSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub name: String,
    pub kind: ServerKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerKind {
    Http {
        url: String,
        /// Headers Palisade adds (credentials it holds), values read from the environment.
        headers: Vec<(String, String)>,
    },
    Stdio {
        command: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<PathBuf>,
    },
}

impl McpSettings {
    /// Whether exposed names carry the `server__` prefix.
    pub fn prefixed(&self) -> bool {
        match self.prefix {
            PrefixMode::Always => true,
            PrefixMode::Conditional => self.servers.len() > 1,
            PrefixMode::Never => false,
        }
    }
}

/// Resolve the raw sections; `path` makes relative paths absolute (from the config's folder).
pub fn resolve(
    raw: RawMcp,
    servers: Vec<RawMcpServer>,
    path: &dyn Fn(&Path) -> PathBuf,
) -> Result<McpSettings, String> {
    let mut out = Vec::new();
    for s in servers {
        let name = s.name.clone();
        let ok_name = !name.is_empty()
            && name.len() <= 32
            && !name.contains("__")
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok_name {
            return Err(format!(
                "mcp_servers: name '{name}' must be 1-32 of [a-z0-9_-] without '__'"
            ));
        }
        if out.iter().any(|o: &ServerSettings| o.name == name) {
            return Err(format!("mcp_servers: '{name}' is declared twice"));
        }
        let from_env = |var: &str, what: &str| {
            std::env::var(var).map_err(|_| {
                format!("mcp_servers '{name}': {what} names env var {var}, which is not set")
            })
        };
        let kind = match s.transport {
            Transport::Http => {
                let url = s
                    .url
                    .ok_or_else(|| format!("mcp_servers '{name}': http needs `url`"))?;
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    return Err(format!(
                        "mcp_servers '{name}': url '{url}' must start with http:// or https://"
                    ));
                }
                if s.command.is_some() || !s.args.is_empty() {
                    return Err(format!(
                        "mcp_servers '{name}': `command`/`args` are for transport = \"stdio\""
                    ));
                }
                let mut headers = Vec::new();
                for (h, var) in &s.headers_env {
                    headers.push((h.clone(), from_env(var, "headers_env")?));
                }
                ServerKind::Http { url, headers }
            }
            Transport::Stdio => {
                let command = s
                    .command
                    .ok_or_else(|| format!("mcp_servers '{name}': stdio needs `command`"))?;
                // A bare program name is looked up on PATH; a path is taken from the config's folder.
                let command = if command.components().count() > 1 {
                    path(&command)
                } else {
                    command
                };
                let mut env: Vec<(String, String)> = s.env.into_iter().collect();
                for (k, var) in &s.env_from {
                    env.push((k.clone(), from_env(var, "env_from")?));
                }
                ServerKind::Stdio {
                    command,
                    args: s.args,
                    env,
                    cwd: s.cwd.as_deref().map(path),
                }
            }
        };
        out.push(ServerSettings { name, kind });
    }
    Ok(McpSettings {
        prefix: raw.prefix.unwrap_or_default(),
        timeout: Duration::from_millis(raw.timeout_ms.unwrap_or(60_000).max(1)),
        catalog_ttl: Duration::from_millis(raw.catalog_ttl_ms.unwrap_or(300_000)),
        servers: out,
    })
}
