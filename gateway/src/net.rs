//! Outbound HTTP for every client of the gateway (LLM providers, MCP servers, approval
//! webhooks): `http://` as is, `https://` through rustls (on `ring`), trusting the Mozilla root
//! certificates compiled into the binary (nothing is read from the system or downloaded) plus,
//! for private CAs, the PEM certificates in the file named by `PALISADE_CA_FILE`. The TLS
//! config is built once per process; [`check`] surfaces a bad CA file at start-up.
//!
//! Inbound, [`server_tls`] reads the ingress listener's certificate and key (`[server]
//! tls_cert`, `tls_key`) into a rustls server config offering HTTP/2 and HTTP/1.1 by ALPN.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The environment variable naming a PEM file of extra CA certificates to trust.
pub const CA_FILE_ENV: &str = "PALISADE_CA_FILE";

/// The connector every outbound client uses.
pub type Connector = HttpsConnector<HttpConnector>;

/// Why outbound TLS cannot be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("{CA_FILE_ENV}={path}: {message}")]
    CaFile { path: String, message: String },
    #[error("TLS setup: {0}")]
    Setup(String),
    /// The ingress certificate or key cannot be used.
    #[error("server TLS {path}: {message}")]
    ServerFile { path: String, message: String },
}

/// The ingress listener's TLS config from PEM files: the certificate chain (leaf first) and its
/// private key, with ALPN offering `h2` and `http/1.1`.
pub fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let bad = |path: &std::path::Path, message: String| TlsError::ServerFile {
        path: path.display().to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "no PEM certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| bad(key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client TLS config: the compiled-in roots plus the certificates of `extra_ca`.
fn config(extra_ca: Option<&str>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let bad = |message: String| TlsError::CaFile {
            path: path.to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in the file".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn tls() -> &'static Result<Arc<rustls::ClientConfig>, TlsError> {
    static TLS: OnceLock<Result<Arc<rustls::ClientConfig>, TlsError>> = OnceLock::new();
    TLS.get_or_init(|| {
        let extra = std::env::var(CA_FILE_ENV).ok().filter(|p| !p.is_empty());
        config(extra.as_deref())
    })
}

/// Whether outbound TLS can be set up (the CA file, if named, is readable and holds
/// certificates).
pub fn check() -> Result<(), TlsError> {
    tls().as_ref().map(|_| ()).map_err(Clone::clone)
}

/// A connector like [`connector`] that also trusts the CA certificates of `ca_file` (the CLI's
/// `--ca-file`), built anew rather than from the process-wide config.
pub fn connector_with_ca(
    connect_timeout: Duration,
    ca_file: Option<&str>,
) -> Result<Connector, TlsError> {
    let config = match ca_file {
        Some(path) => config(Some(path))?,
        None => return Ok(connector(connect_timeout)),
    };
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config((*config).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// A connector for `http://` and `https://` URLs with this connect timeout and `TCP_NODELAY`.
pub fn connector(connect_timeout: Duration) -> Connector {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    // A CA file that fails `check` stops the gateway at start; a client built anyway trusts
    // only the compiled-in roots.
    let config = match tls() {
        Ok(c) => c.clone(),
        Err(_) => config(None).expect("ring supports the default TLS versions"),
    };
    HttpsConnectorBuilder::new()
        .with_tls_config((*config).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_an_error_naming_it() {
        let e = config(Some("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("palisade-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = config(Some(empty.to_str().unwrap())).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        assert!(config(None).is_ok());
    }
}
