//! The announcement of each new approval request: a JSON `POST` to the configured URL, signed
//! with HMAC-SHA256 so the receiver can tell it came from this gateway and was not replayed
//! later. Arguments (and the summary, which may quote them) stay out unless `include_arguments`
//! is set: they may be sensitive, and the approver reads them in the admin API or CLI.
//!
//! Signature: header `palisade-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`.
//! A receiver recomputes it over the raw body and refuses old timestamps. Delivery is off the
//! call's path, one attempt with a timeout; failures are logged, never fail the call.

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade_store::Approval;
use serde_json::json;
use sha2::Sha256;

use crate::core::settings::approvals::WebhookSettings;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "palisade-signature";
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `t=<t>,v1=<hex>` for `body` sent at unix second `t`.
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The announcement's JSON.
pub fn payload(a: &Approval, include_arguments: bool) -> serde_json::Value {
    let mut approval = json!({
        "id": a.id,
        "agent": a.agent_id,
        "owner": a.owner,
        "team": a.team,
        "kind": a.kind,
        "target": a.target,
        "rule": a.rule,
        "group": a.group,
        "approvals_needed": a.approvals_needed,
        "arguments_sha256": a.arguments_sha256,
        "created_at": a.created_at,
        "expires_at": a.expires_at,
    });
    if include_arguments {
        // The summary may quote the arguments (the plugin's default one does).
        approval["summary"] = json!(a.summary);
        approval["arguments"] = serde_json::from_str(&a.arguments)
            .unwrap_or_else(|_| serde_json::Value::String(a.arguments.clone()));
    }
    json!({"event": "approval.requested", "approval": approval})
}

/// Posts announcements.
#[derive(Clone)]
pub struct Webhook {
    client: Client<crate::net::Connector, Full<Bytes>>,
}

impl Default for Webhook {
    fn default() -> Self {
        Webhook {
            client: Client::builder(TokioExecutor::new())
                .build(crate::net::connector(std::time::Duration::from_secs(5))),
        }
    }
}

impl Webhook {
    /// Announce `a` in the background.
    pub fn announce(&self, settings: &WebhookSettings, a: &Approval) {
        let body = payload(a, settings.include_arguments).to_string();
        let t = u64::try_from(palisade_store::time::now_ms() / 1000).unwrap_or(0);
        let signature = sign(&settings.secret, t, body.as_bytes());
        let url = settings.url.clone();
        let id = a.id.clone();
        let client = self.client.clone();
        tokio::spawn(async move {
            let req = http::Request::post(&url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, signature)
                .body(Full::new(Bytes::from(body)));
            let req = match req {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(approval = %id, "approval webhook: bad request to {url}: {e}");
                    return;
                }
            };
            match tokio::time::timeout(TIMEOUT, client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    tracing::debug!(approval = %id, "approval announced to {url}");
                }
                Ok(Ok(resp)) => tracing::warn!(
                    approval = %id,
                    "approval webhook {url} answered {}",
                    resp.status()
                ),
                Ok(Err(e)) => tracing::warn!(approval = %id, "approval webhook {url}: {e}"),
                Err(_) => tracing::warn!(
                    approval = %id,
                    "approval webhook {url}: no answer within {} s",
                    TIMEOUT.as_secs()
                ),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_over_time_and_body() {
        // RFC 4231-style check against an independent computation.
        let s = sign(b"0123456789abcdef", 1700000000, b"{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef").unwrap();
        mac.update(b"1700000000.{}");
        let expect = hex::encode(mac.finalize().into_bytes());
        assert_eq!(s, format!("t=1700000000,v1={expect}"));
        assert_ne!(s, sign(b"another key 0123", 1700000000, b"{}"));
    }
}
