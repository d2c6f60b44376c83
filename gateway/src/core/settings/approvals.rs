//! `[approvals]` in `palisade.toml`: how long a held call waits for its decision, whether an
//! agent's owner may approve its calls, and the webhook announcing new requests.
//!
//! ```toml
//! [approvals]
//! wait_secs = 25               # hold a call open this long for a decision (0: answer at once)
//! owner_may_approve = false    # the agent's owner may not vote on its calls (default)
//! [approvals.webhook]
//! url = "https://hooks.example.com/palisade"
//! secret_env = "PALISADE_APPROVALS_WEBHOOK_SECRET"   # HMAC-SHA256 key, at least 16 bytes
//! include_arguments = false    # arguments stay out of the announcement unless true
//! ```

use std::time::Duration;

use serde::Deserialize;

/// Default bound on holding a call open: below the 60 s request timeout of common MCP clients.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(25);
/// The longest a call may be held open.
pub const MAX_WAIT: Duration = Duration::from_secs(55);

/// `[approvals]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    pub wait_secs: Option<f64>,
    pub owner_may_approve: Option<bool>,
    pub webhook: Option<RawWebhook>,
}

/// `[approvals.webhook]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: String,
    pub secret_env: Option<String>,
    #[serde(default)]
    pub include_arguments: bool,
}

/// The resolved `[approvals]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// How long a held call waits for a decision before it is answered "pending".
    pub wait: Duration,
    pub owner_may_approve: bool,
    pub webhook: Option<WebhookSettings>,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            wait: DEFAULT_WAIT,
            owner_may_approve: false,
            webhook: None,
        }
    }
}

/// Where new requests are announced, and the key that signs the announcements.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: Vec<u8>,
    pub include_arguments: bool,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.url)
            .field("include_arguments", &self.include_arguments)
            .finish_non_exhaustive()
    }
}

impl RawApprovals {
    /// Check and resolve; the error names the setting.
    pub fn resolve(&self) -> Result<ApprovalSettings, String> {
        let wait = match self.wait_secs {
            None => DEFAULT_WAIT,
            Some(s) if (0.0..=MAX_WAIT.as_secs_f64()).contains(&s) => Duration::from_secs_f64(s),
            Some(s) => {
                return Err(format!(
                    "approvals.wait_secs must be between 0 and {}, got {s}",
                    MAX_WAIT.as_secs()
                ));
            }
        };
        let webhook = match &self.webhook {
            None => None,
            Some(w) => {
                if !w.url.starts_with("http://") && !w.url.starts_with("https://") {
                    return Err(format!(
                        "approvals.webhook.url must be an http:// or https:// URL, got {:?}",
                        w.url
                    ));
                }
                let var = w
                    .secret_env
                    .as_deref()
                    .unwrap_or("PALISADE_APPROVALS_WEBHOOK_SECRET");
                let secret = match std::env::var(var) {
                    Ok(s) if s.len() >= 16 => s.into_bytes(),
                    Ok(_) => {
                        return Err(format!(
                            "approvals.webhook: ${var} must hold at least 16 bytes"
                        ));
                    }
                    Err(_) => {
                        return Err(format!(
                            "approvals.webhook: set ${var} to the key that signs announcements"
                        ));
                    }
                };
                Some(WebhookSettings {
                    url: w.url.clone(),
                    secret,
                    include_arguments: w.include_arguments,
                })
            }
        };
        Ok(ApprovalSettings {
            wait,
            owner_may_approve: self.owner_may_approve.unwrap_or(false),
            webhook,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let s = RawApprovals::default().resolve().unwrap();
        assert_eq!(s.wait, DEFAULT_WAIT);
        assert!(s.wait < Duration::from_secs(60));
        assert!(!s.owner_may_approve);
        let too_long = RawApprovals {
            wait_secs: Some(120.0),
            ..Default::default()
        };
        assert!(too_long.resolve().unwrap_err().contains("wait_secs"));
        let bad_url = RawApprovals {
            webhook: Some(RawWebhook {
                url: "ftp://x".into(),
                secret_env: None,
                include_arguments: false,
            }),
            ..Default::default()
        };
        assert!(bad_url.resolve().unwrap_err().contains("url"));
        let no_secret = RawApprovals {
            webhook: Some(RawWebhook {
                url: "http://x".into(),
                secret_env: Some("PALISADE_TEST_UNSET_WEBHOOK_SECRET".into()),
                include_arguments: false,
            }),
            ..Default::default()
        };
        assert!(
            no_secret
                .resolve()
                .unwrap_err()
                .contains("PALISADE_TEST_UNSET")
        );
    }
}
