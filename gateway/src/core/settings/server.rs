//! `[server]`: the ingress shell. Where the gateway listens, how long a client may take over
//! each part of a request, how many connections it may hold open, TLS, and who may read
//! `/metrics`. Every timeout has a default that is safe on a network the gateway does not
//! trust; docs/deploy.md explains each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default for `header_timeout_ms`: a request's headers (and a TLS handshake) within 10 s.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// Default for `body_timeout_ms`: a whole request body within 60 s.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 60_000;
/// Default for `idle_timeout_ms`: a connection with no request for 60 s is closed.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default for `write_timeout_ms`: a client that reads nothing of its answer for 30 s is cut.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 30_000;
/// Upper bound of the default connection cap (see [`ServerSettings::max_connections`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<SocketAddr>,
    pub max_body_bytes: Option<usize>,
    /// On SIGTERM/SIGINT, how long calls in flight may run on before they are cut (default 20).
    pub drain_secs: Option<f64>,
    /// A connection's request headers (after its TLS handshake) must arrive within this.
    pub header_timeout_ms: Option<u64>,
    /// A request's whole body must arrive within this (else 408 `request_timeout`).
    pub body_timeout_ms: Option<u64>,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout_ms: Option<u64>,
    /// A write to a client that stays blocked this long (the client stopped reading) ends the
    /// connection; a stream to it is cut and recorded as `client_closed`.
    pub write_timeout_ms: Option<u64>,
    /// Connections held open at most; at the cap the gateway stops accepting until one ends.
    /// Default: half the process's open-files limit, at most 10,000.
    pub max_connections: Option<usize>,
    /// PEM certificate chain: with `tls_key`, the listener speaks HTTPS (HTTP/2 and HTTP/1.1).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A bearer token `/metrics` requires (`"env:NAME"` reads it from an environment
    /// variable).
    pub metrics_token: Option<String>,
    /// Serve `/metrics` on this address instead (and not on the main listener).
    pub metrics_listen: Option<SocketAddr>,
    /// Let anyone read `/metrics` on a listener beyond loopback, without a token.
    pub metrics_public: Option<bool>,
}

/// Certificate and key files of the ingress listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Who may read `/metrics`.
#[derive(Clone, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Anyone who reaches the listener (`metrics_public = true`).
    Open,
    /// The default: open while the main listener is bound to a loopback address, refused
    /// (401) beyond it. Decided on the address actually bound (`--listen` included).
    LoopbackOnly,
    /// `Authorization: Bearer <token>`.
    Token(String),
    /// Only on its own listener (`metrics_listen`); the main listener answers 404.
    OwnListener,
}

impl std::fmt::Debug for MetricsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAccess::Open => f.write_str("Open"),
            MetricsAccess::Token(_) => f.write_str("Token(..)"),
            MetricsAccess::OwnListener => f.write_str("OwnListener"),
            MetricsAccess::LoopbackOnly => f.write_str("LoopbackOnly"),
        }
    }
}

/// The resolved `[server]` beyond `listen`, `max_body_bytes` and `drain_secs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    /// `None`: derived from the open-files limit when the listener starts.
    pub max_connections: Option<usize>,
    pub tls: Option<TlsFiles>,
    pub metrics: MetricsAccess,
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            header_timeout: Duration::from_millis(DEFAULT_HEADER_TIMEOUT_MS),
            body_timeout: Duration::from_millis(DEFAULT_BODY_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            write_timeout: Duration::from_millis(DEFAULT_WRITE_TIMEOUT_MS),
            max_connections: None,
            tls: None,
            metrics: MetricsAccess::LoopbackOnly,
            metrics_listen: None,
        }
    }
}

/// Resolve `[server]`'s shell settings; `resolve` makes a path absolute from the config's
/// folder.
pub fn resolve(
    raw: &RawServer,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<ServerSettings, String> {
    let ms = |v: Option<u64>, default: u64, name: &str| -> Result<Duration, String> {
        match v.unwrap_or(default) {
            0 => Err(format!(
                "server.{name} must be at least 1 ms (timeouts cannot be turned off)"
            )),
            n if n > 86_400_000 => Err(format!("server.{name} must be at most one day")),
            n => Ok(Duration::from_millis(n)),
        }
    };
    if raw.max_connections == Some(0) {
        return Err("server.max_connections must be at least 1".into());
    }
    let tls = match (&raw.tls_cert, &raw.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: resolve(cert),
            key: resolve(key),
        }),
        _ => return Err("server.tls_cert and server.tls_key go together: set both".into()),
    };
    let token = match raw.metrics_token.as_deref() {
        None => None,
        Some(t) => {
            let t = match t.strip_prefix("env:") {
                Some(var) => std::env::var(var).map_err(|_| {
                    format!("server.metrics_token names env var {var}, which is not set")
                })?,
                None => t.to_string(),
            };
            if t.len() < 16 {
                return Err("server.metrics_token must be at least 16 characters".into());
            }
            Some(t)
        }
    };
    let metrics = match (token, raw.metrics_listen, raw.metrics_public) {
        (Some(_), Some(_), _) => {
            return Err(
                "server.metrics_token and server.metrics_listen are two ways to guard /metrics: set one"
                    .into(),
            );
        }
        (Some(t), None, _) => MetricsAccess::Token(t),
        (None, Some(_), _) => MetricsAccess::OwnListener,
        (None, None, Some(true)) => MetricsAccess::Open,
        (None, None, _) => MetricsAccess::LoopbackOnly,
    };
    Ok(ServerSettings {
        header_timeout: ms(
            raw.header_timeout_ms,
            DEFAULT_HEADER_TIMEOUT_MS,
            "header_timeout_ms",
        )?,
        body_timeout: ms(
            raw.body_timeout_ms,
            DEFAULT_BODY_TIMEOUT_MS,
            "body_timeout_ms",
        )?,
        idle_timeout: ms(
            raw.idle_timeout_ms,
            DEFAULT_IDLE_TIMEOUT_MS,
            "idle_timeout_ms",
        )?,
        write_timeout: ms(
            raw.write_timeout_ms,
            DEFAULT_WRITE_TIMEOUT_MS,
            "write_timeout_ms",
        )?,
        max_connections: raw.max_connections,
        tls,
        metrics,
        metrics_listen: raw.metrics_listen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServerSettings, String> {
        let raw: RawServer = toml::from_str(text).map_err(|e| e.to_string())?;
        resolve(&raw, &|p: &Path| Path::new("/etc/p").join(p))
    }

    #[test]
    fn defaults_are_safe() {
        let s = parse("").unwrap();
        assert_eq!(s.header_timeout, Duration::from_secs(10));
        assert_eq!(s.metrics, MetricsAccess::LoopbackOnly);
        let s = parse("metrics_public = true").unwrap();
        assert_eq!(s.metrics, MetricsAccess::Open);
        let s = parse("listen = '0.0.0.0:8080'\nmetrics_token = '0123456789abcdef'").unwrap();
        assert_eq!(s.metrics, MetricsAccess::Token("0123456789abcdef".into()));
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let e = parse("header_timeout_ms = 0").unwrap_err();
        assert!(e.contains("header_timeout_ms"), "{e}");
        let e = parse("tls_cert = 'c.pem'").unwrap_err();
        assert!(e.contains("go together"), "{e}");
        let e = parse("metrics_token = 'short'").unwrap_err();
        assert!(e.contains("16"), "{e}");
        let e = parse("max_connections = 0").unwrap_err();
        assert!(e.contains("max_connections"), "{e}");
        let s = parse("tls_cert = 'c.pem'\ntls_key = '/k.pem'").unwrap();
        let tls = s.tls.unwrap();
        assert_eq!(tls.cert, Path::new("/etc/p/c.pem"));
        assert_eq!(tls.key, Path::new("/k.pem"));
    }
}
