//! One provider's HTTP client: its dialect, base URL, key and timeouts. Sends an encoded
//! request and classifies what came back, so failover can tell "try the next target" (connect
//! error, timeout, 429, 5xx) from "the agent's request was bad" (other 4xx).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::config::ProviderSettings;
use super::dialect::Outgoing;
use crate::core::error::CallError;

/// Largest non-streamed answer read from a provider.
const MAX_RESPONSE_BYTES: usize = 32 << 20;

pub struct Provider {
    pub settings: ProviderSettings,
    client: Client<crate::net::Connector, Full<Bytes>>,
}

impl Provider {
    pub fn new(settings: ProviderSettings) -> Provider {
        let connector = crate::net::connector(settings.connect_timeout);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Provider { settings, client }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Send and wait for the response head within `first_byte` (at most the provider's own
    /// first-byte timeout). A non-2xx is read (bounded) and returned as an error.
    pub async fn send(
        &self,
        out: Outgoing,
        first_byte: Duration,
    ) -> Result<Response<Incoming>, CallError> {
        self.exchange(http::Method::POST, out, first_byte).await
    }

    /// The provider's own model list (`GET /v1/models`), for OpenAI-compatible providers; the
    /// other dialects list models in other shapes and answer `None`.
    pub async fn models(&self) -> Option<Result<Bytes, CallError>> {
        if self.settings.dialect != crate::providers::dialect::Dialect::OpenAi {
            return None;
        }
        let out = Outgoing {
            path: "/v1/models".into(),
            headers: Vec::new(),
            body: Bytes::new(),
        };
        let within = self.settings.timeout;
        Some(match self.exchange(http::Method::GET, out, within).await {
            Ok(resp) => self.read(resp, within).await,
            Err(e) => Err(e),
        })
    }

    async fn exchange(
        &self,
        method: http::Method,
        out: Outgoing,
        first_byte: Duration,
    ) -> Result<Response<Incoming>, CallError> {
        let provider = self.settings.name.clone();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.settings.base_url, out.path))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.settings.api_key
            && let Some((name, value)) = self.settings.dialect.auth_header(key.expose())
        {
            req = req.header(name, value);
        }
        for (name, value) in out.headers {
            req = req.header(name, value);
        }
        let req = req
            .body(Full::new(out.body))
            .map_err(|e| CallError::Internal(format!("bad upstream request: {e}")))?;
        let wait = first_byte.min(self.settings.first_byte_timeout);
        let resp = match tokio::time::timeout(wait, self.client.request(req)).await {
            Err(_) => {
                return Err(CallError::UpstreamTimeout {
                    provider,
                    after: wait,
                });
            }
            Ok(Err(e)) => {
                // The error chain may hold the URL but never a key; keep the first cause.
                let cause = std::error::Error::source(&e).map(|s| s.to_string());
                return Err(CallError::UpstreamUnavailable {
                    provider,
                    message: cause.unwrap_or_else(|| e.to_string()),
                });
            }
            Ok(Ok(resp)) => resp,
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = self
            .read(resp, Duration::from_secs(5))
            .await
            .unwrap_or_default();
        let message = self
            .settings
            .dialect
            .error_message(&body)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(500).collect());
        Err(CallError::UpstreamStatus {
            provider,
            status,
            message,
        })
    }

    /// Read a whole body (bounded) within `within`.
    pub async fn read(
        &self,
        resp: Response<Incoming>,
        within: Duration,
    ) -> Result<Bytes, CallError> {
        let provider = self.settings.name.clone();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES);
        match tokio::time::timeout(within, body.collect()).await {
            Err(_) => Err(CallError::UpstreamTimeout {
                provider,
                after: within,
            }),
            Ok(Err(e)) => Err(CallError::UpstreamUnavailable {
                provider,
                message: format!("answer cut off: {e}"),
            }),
            Ok(Ok(c)) => Ok(c.to_bytes()),
        }
    }
}

/// Whether an upstream error should move the call to the next target (and counts against the
/// target's breaker): connect errors, timeouts, 429 and 5xx. Other 4xx are the request's fault.
pub fn retryable(e: &CallError) -> bool {
    let spec = e.spec();
    spec.source == crate::core::error::Source::Upstream && spec.retryable
}
