//! The routing part of `palisade.toml`: `[[providers]]`, `[routes.<alias>]` and `[breaker]`,
//! raw (as written) and resolved. `config.rs` owns the file; this module owns what these tables
//! mean, so the call path and the config agree on one spelling.
//!
//! ```toml
//! [[providers]]
//! name = "anthropic"
//! kind = "anthropic"            # openai (default) | anthropic | gemini
//! base_url = "https://api.anthropic.com"
//! api_key_env = "ANTHROPIC_API_KEY"   # or api_key_file = "/run/secrets/anthropic"
//! connect_timeout_ms = 2000
//! first_byte_timeout_ms = 15000       # response head, and for streams the first token
//! stream_idle_timeout_ms = 60000       # a stream silent this long after its first token is cut
//! timeout_ms = 120000                 # a whole non-streamed answer
//!
//! [routes.smart]
//! targets = ["anthropic/claude-sonnet-4", "openai/gpt-4o"]
//! retries = 2          # extra attempts after the first (default: one per further target)
//! deadline_ms = 30000  # no new attempt starts after this
//! backoff_ms = 100     # base of the jittered backoff before trying a target again
//!
//! [breaker]
//! failures = 5         # open after this many failures...
//! window_ms = 30000    # ...within this window
//! open_ms = 10000      # then refuse for this long before one half-open probe
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// A provider key: kept out of `Debug` output so a logged config cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: String,
    #[serde(default)]
    pub kind: Option<Dialect>,
    pub base_url: String,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<std::path::PathBuf>,
    pub connect_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
    pub stream_idle_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub targets: Vec<String>,
    pub retries: Option<u32>,
    pub deadline_ms: Option<u64>,
    pub backoff_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failures: Option<u32>,
    pub window_ms: Option<u64>,
    pub open_ms: Option<u64>,
}

/// One resolved provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    pub name: String,
    pub dialect: Dialect,
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub connect_timeout: Duration,
    /// Until the response head arrives; for a stream, until its first content.
    pub first_byte_timeout: Duration,
    /// Longest silence of a stream after its first content; then it is cut (`upstream_timeout`).
    pub stream_idle_timeout: Duration,
    /// A whole non-streamed answer.
    pub timeout: Duration,
}

/// A provider and one of its models.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub provider: String,
    pub model: String,
}

impl Target {
    /// `provider/model` (the model may itself contain `/`).
    pub fn parse(s: &str) -> Option<Target> {
        let (p, m) = s.split_once('/')?;
        if p.is_empty() || m.is_empty() {
            return None;
        }
        Some(Target {
            provider: p.to_string(),
            model: m.to_string(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

/// One resolved `[routes.<alias>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    pub targets: Vec<Target>,
    /// Extra attempts after the first.
    pub retries: u32,
    pub deadline: Duration,
    pub backoff: Duration,
}

/// Circuit breaker settings, the same for every target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    pub failures: u32,
    pub window: Duration,
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            window: Duration::from_secs(30),
            open_for: Duration::from_secs(10),
        }
    }
}

/// Default per-call deadline for a plain model (no route) and for routes that name none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);
const DEFAULT_BACKOFF: Duration = Duration::from_millis(100);
/// Default `stream_idle_timeout_ms`.
pub const DEFAULT_STREAM_IDLE_MS: u64 = 60_000;

/// Resolve `[[providers]]`: keys read from their env var or file (trimmed), URLs checked.
/// `reserved` is the `[upstream]` provider's name, if the file has one.
pub fn resolve_providers(
    raw: Vec<RawProvider>,
    dir: &Path,
    reserved: Option<&str>,
) -> Result<Vec<ProviderSettings>, String> {
    let mut out: Vec<ProviderSettings> = Vec::new();
    for p in raw {
        let name = p.name.trim().to_string();
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "providers: name '{name}' must be non-empty and without '/'"
            ));
        }
        if reserved == Some(name.as_str()) || out.iter().any(|o| o.name == name) {
            return Err(format!("provider '{name}' is declared twice"));
        }
        let base_url = p.base_url.trim_end_matches('/').to_string();
        if !base_url.starts_with("http://") && !base_url.starts_with("https://") {
            return Err(format!(
                "provider '{name}': base_url '{base_url}' must start with http:// or https://"
            ));
        }
        let api_key = match (&p.api_key_env, &p.api_key_file) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "provider '{name}': give api_key_env or api_key_file, not both"
                ));
            }
            (Some(var), None) => Some(std::env::var(var).map_err(|_| {
                format!("provider '{name}': api_key_env names env var {var}, which is not set")
            })?),
            (None, Some(file)) => {
                let path = if file.is_absolute() {
                    file.clone()
                } else {
                    dir.join(file)
                };
                // The error names the file, never its content.
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    format!(
                        "provider '{name}': cannot read api_key_file {}: {}",
                        path.display(),
                        e.kind()
                    )
                })?;
                Some(text.trim().to_string())
            }
            (None, None) => None,
        };
        let ms = |v: Option<u64>, d: u64| Duration::from_millis(v.unwrap_or(d).max(1));
        out.push(ProviderSettings {
            dialect: p.kind.unwrap_or(Dialect::OpenAi),
            base_url,
            api_key: api_key.map(Secret),
            connect_timeout: ms(p.connect_timeout_ms, 2000),
            first_byte_timeout: ms(p.first_byte_timeout_ms, 60_000),
            stream_idle_timeout: ms(p.stream_idle_timeout_ms, DEFAULT_STREAM_IDLE_MS),
            timeout: ms(p.timeout_ms, 120_000),
            name,
        });
    }
    Ok(out)
}

/// Resolve `[routes.*]`, checking each target names a known provider.
pub fn resolve_routes(
    raw: BTreeMap<String, RawRoute>,
    known: &[&str],
) -> Result<BTreeMap<String, RouteSettings>, String> {
    let mut out = BTreeMap::new();
    for (alias, r) in raw {
        if r.targets.is_empty() {
            return Err(format!("routes.{alias}: targets is empty"));
        }
        let mut targets = Vec::new();
        for t in &r.targets {
            let target = Target::parse(t)
                .ok_or_else(|| format!("routes.{alias}: target '{t}' is not `provider/model`"))?;
            if !known.contains(&target.provider.as_str()) {
                return Err(format!(
                    "routes.{alias}: target '{t}' names provider '{}', which is not configured (known: {})",
                    target.provider,
                    known.join(", ")
                ));
            }
            targets.push(target);
        }
        let retries = r
            .retries
            .unwrap_or(u32::try_from(targets.len() - 1).unwrap_or(u32::MAX));
        out.insert(
            alias,
            RouteSettings {
                targets,
                retries: retries.min(16),
                deadline: r
                    .deadline_ms
                    .map(Duration::from_millis)
                    .unwrap_or(DEFAULT_DEADLINE),
                backoff: r
                    .backoff_ms
                    .map(Duration::from_millis)
                    .unwrap_or(DEFAULT_BACKOFF),
            },
        );
    }
    Ok(out)
}

pub fn resolve_breaker(raw: RawBreaker) -> BreakerSettings {
    let d = BreakerSettings::default();
    BreakerSettings {
        failures: raw.failures.unwrap_or(d.failures).max(1),
        window: raw.window_ms.map(Duration::from_millis).unwrap_or(d.window),
        open_for: raw.open_ms.map(Duration::from_millis).unwrap_or(d.open_for),
    }
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// OpenAI and any OpenAI-compatible server (vLLM, Ollama, Groq, Together...).
    #[serde(alias = "openai-compatible")]
    OpenAi,
    /// Anthropic Messages API.
    Anthropic,
    /// Google Gemini `generateContent` / `streamGenerateContent`.
    Gemini,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_slashes_in_models() {
        let t = Target::parse("together/meta-llama/Llama-3").unwrap();
        assert_eq!(t.provider, "together");
        assert_eq!(t.model, "meta-llama/Llama-3");
        assert!(Target::parse("nomodel").is_none());
        assert!(Target::parse("/m").is_none());
    }

    #[test]
    fn providers_alone_key_files_and_default_provider() {
        let dir = std::env::temp_dir().join(format!("palisade-cfg-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "sk-from-file\n").unwrap();
        let text = r#"
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "https://api.anthropic.com/"
api_key_file = "key"
first_byte_timeout_ms = 1500
[[providers]]
name = "local"
kind = "openai-compatible"
base_url = "http://127.0.0.1:11434"
[breaker]
failures = 3
"#;
        let s = crate::core::settings::Settings::from_toml(&dir.join("p.toml"), text).unwrap();
        let list = s.provider_list();
        assert_eq!(list.len(), 2, "no [upstream]: only the declared providers");
        assert_eq!(
            s.upstream.name, "anthropic",
            "the first provider is the default"
        );
        assert_eq!(list[0].dialect, Dialect::Anthropic);
        assert_eq!(list[0].base_url, "https://api.anthropic.com");
        assert_eq!(list[0].api_key.as_ref().unwrap().expose(), "sk-from-file");
        assert_eq!(list[0].first_byte_timeout, Duration::from_millis(1500));
        assert_eq!(list[1].dialect, Dialect::OpenAi);
        assert_eq!(s.breaker.failures, 3);
        assert!(
            !format!("{s:?}").contains("sk-from-file"),
            "keys stay out of Debug"
        );

        let e = crate::core::settings::Settings::from_toml(
            &dir.join("p.toml"),
            "[[providers]]\nname='x'\nbase_url='http://a'\napi_key_file='missing'",
        )
        .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e = crate::core::settings::Settings::from_toml(&dir.join("p.toml"), "").unwrap_err();
        assert!(e.to_string().contains("no provider"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn secret_is_not_debug_printed() {
        let s = Secret::new("sk-very-secret".into());
        assert!(!format!("{s:?}").contains("sk-very"));
    }
}
