//! A small client of the admin API for the CLI: JSON in, JSON out, and streamed downloads,
//! over `http://` or `https://` (rustls; `--ca-file` or `PALISADE_CA_FILE` adds a private CA).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::{ApiArgs, CliError};

pub struct ApiClient {
    base: String,
    token: String,
    http: Client<crate::net::Connector, Full<Bytes>>,
}

impl ApiClient {
    pub fn new(args: &ApiArgs) -> Result<ApiClient, CliError> {
        let token = args
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or(CliError::NoToken)?;
        let connector = crate::net::connector_with_ca(
            std::time::Duration::from_secs(10),
            args.ca_file.as_deref().filter(|f| !f.is_empty()),
        )
        .map_err(|e| CliError::Invalid(e.to_string()))?;
        Ok(ApiClient {
            base: args.url.trim_end_matches('/').to_string(),
            token,
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<http::Response<hyper::body::Incoming>, CliError> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .map_err(|e| CliError::Invalid(format!("bad request: {e}")))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| CliError::Connect {
                url: self.base.clone(),
                message: std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or(e.to_string()),
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        Err(CliError::Api { status, message })
    }

    /// A JSON request and its JSON answer.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let resp = self.send(method, path, body).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError::Connect {
                url: self.base.clone(),
                message: e.to_string(),
            })?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::Invalid(format!("the gateway's answer is not JSON: {e}")))
    }

    /// Stream a GET's body into `out` as it arrives (exports of any size).
    pub async fn download(
        &self,
        path: &str,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> Result<u64, CliError> {
        let mut body = self.send("GET", path, None).await?.into_body();
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| CliError::Connect {
                url: self.base.clone(),
                message: e.to_string(),
            })?;
            if let Ok(data) = frame.into_data() {
                n += data.len() as u64;
                out.write_all(&data).await?;
            }
        }
        out.flush().await?;
        Ok(n)
    }
}
