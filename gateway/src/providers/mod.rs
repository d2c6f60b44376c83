//! Upstream providers. For now one OpenAI-compatible server named in the config: requests go
//! out as OpenAI chat completions with the gateway's provider key (never the agent's), with
//! connect and first-byte timeouts, and upstream failures become typed [`CallError`]s.

pub mod anthropic;
pub mod breaker;
pub mod chunks;
pub mod client;
pub mod config;
pub mod dialect;
pub mod failover;
pub mod gemini;
pub mod routes;
pub mod sse;
pub mod translate;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamSettings;
use crate::error::CallError;

/// Largest non-streamed answer read from a provider.
const MAX_RESPONSE_BYTES: usize = 32 << 20;

pub struct Upstream {
    pub settings: UpstreamSettings,
    client: Client<crate::net::Connector, Full<Bytes>>,
}

impl Upstream {
    pub fn new(settings: UpstreamSettings) -> Upstream {
        let connector = crate::net::connector(settings.connect_timeout);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Upstream { settings, client }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, CallError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.settings.base_url))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.settings.api_key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", key.expose()));
        }
        req.body(Full::new(body))
            .map_err(|e| CallError::Internal(format!("bad upstream request: {e}")))
    }

    /// Send a request and wait for the response head (first byte) within the timeout.
    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, CallError> {
        let provider = self.settings.name.clone();
        match tokio::time::timeout(self.settings.timeout, self.client.request(req)).await {
            Err(_) => Err(CallError::UpstreamTimeout {
                provider,
                after: self.settings.timeout,
            }),
            Ok(Err(e)) => {
                // The error chain may hold the URL but never a key; keep the first cause.
                let cause = std::error::Error::source(&e).map(|s| s.to_string());
                Err(CallError::UpstreamUnavailable {
                    provider,
                    message: cause.unwrap_or_else(|| e.to_string()),
                })
            }
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// POST a chat completion; returns the response with its body unread (for streaming).
    pub async fn chat(&self, body: Bytes) -> Result<Response<Incoming>, CallError> {
        let req = self.request(http::Method::POST, "/v1/chat/completions", body)?;
        let resp = self.send(req).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.status_error(resp).await)
    }

    /// GET the model list.
    pub async fn models(&self) -> Result<Bytes, CallError> {
        let req = self.request(http::Method::GET, "/v1/models", Bytes::new())?;
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp).await);
        }
        self.read(resp).await
    }

    /// Read a whole body (bounded), within the total timeout.
    pub async fn read(&self, resp: Response<Incoming>) -> Result<Bytes, CallError> {
        let provider = self.settings.name.clone();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES);
        match tokio::time::timeout(self.settings.timeout, body.collect()).await {
            Err(_) => Err(CallError::UpstreamTimeout {
                provider,
                after: self.settings.timeout,
            }),
            Ok(Err(e)) => Err(CallError::UpstreamUnavailable {
                provider,
                message: format!("answer cut off: {e}"),
            }),
            Ok(Ok(c)) => Ok(c.to_bytes()),
        }
    }

    async fn status_error(&self, resp: Response<Incoming>) -> CallError {
        let status = resp.status().as_u16();
        let body = self.read(resp).await.unwrap_or_default();
        // Providers put a human message at error.message; keep it, bounded.
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(500).collect());
        CallError::UpstreamStatus {
            provider: self.settings.name.clone(),
            status,
            message,
        }
    }
}
