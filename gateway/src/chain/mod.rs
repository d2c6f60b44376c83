//! The delegation chain: the signed `palisade-chain` token that follows a run from agent to
//! agent (A asks B asks C).
//!
//! A token is `base64url(payload) "." base64url(HMAC-SHA256(key, payload))`, the payload being
//! JSON `{"v":1,"run":<run id>,"agents":[<root first>],"iat":<unix secs>}`. The gateway verifies
//! a token an agent sends (with the current key, or the previous one during a rotation), appends
//! the *authenticated* caller, and hands the extended token back in the `palisade-chain` response
//! header; no token starts a new run. Tokens older than `max_age_secs` are refused, so a leaked
//! one cannot be replayed for long. Forged, truncated or expired tokens are typed [`ChainError`]s
//! that become 400s with stable codes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::core::settings::ChainSettings;

/// The request and response header carrying the token.
pub const HEADER: &str = "palisade-chain";

/// Largest token accepted (bytes), so a hostile header cannot make us parse megabytes.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most agents a chain may hold; far beyond any sane depth limit.
const MAX_AGENTS: usize = 256;
/// Tolerated clock skew between replicas for tokens issued "in the future".
const SKEW_SECS: u64 = 60;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused.
pub use crate::core::domain::ChainError;

/// A verified (or new) chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    #[serde(rename = "v")]
    pub version: u8,
    #[serde(rename = "run")]
    pub run_id: String,
    /// Agent ids, root first.
    pub agents: Vec<String>,
    /// When this token was issued, unix seconds.
    pub iat: u64,
}

impl Chain {
    /// A new run started by `agent`.
    pub fn start(run_id: String, agent: &str, now_secs: u64) -> Chain {
        Chain {
            version: 1,
            run_id,
            agents: vec![agent.to_string()],
            iat: now_secs,
        }
    }

    /// The same run, with `agent` appended and a fresh issue time.
    pub fn extend(mut self, agent: &str, now_secs: u64) -> Chain {
        self.agents.push(agent.to_string());
        self.iat = now_secs;
        self
    }

    /// `a → b → c`, for messages.
    pub fn display(&self) -> String {
        self.agents.join(" → ")
    }
}

/// The keys tokens are signed and verified with.
#[derive(Clone)]
pub struct Keys {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
    max_age_secs: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("previous", &self.previous.is_some())
            .field("max_age_secs", &self.max_age_secs)
            .finish_non_exhaustive()
    }
}

fn mac(key: &[u8], payload: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    m.update(payload);
    m
}

#[cold]
fn unreachable_hmac() -> ! {
    // `Hmac::new_from_slice` only fails for fixed-key-length MACs, which HMAC is not.
    panic!("HMAC-SHA256 refused a key")
}

impl Keys {
    /// Keys from the config; `fallback` (a per-process random key) where none is configured.
    pub fn new(settings: &ChainSettings, fallback: &[u8]) -> Keys {
        Keys {
            current: settings.key.clone().unwrap_or_else(|| fallback.to_vec()),
            previous: settings.previous_key.clone(),
            max_age_secs: settings.max_age.as_secs(),
        }
    }

    /// Sign a chain into a token.
    pub fn sign(&self, chain: &Chain) -> String {
        // Serialising this struct to JSON cannot fail.
        let payload = serde_json::to_vec(chain).unwrap_or_default();
        let tag = mac(&self.current, &payload).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Verify a token and return its chain.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Chain, ChainError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(ChainError::Invalid("too long"));
        }
        let (payload_b64, tag_b64) = token
            .split_once('.')
            .ok_or(ChainError::Invalid("not a signed token"))?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| ChainError::Invalid("payload is not base64url"))?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| ChainError::Invalid("signature is not base64url"))?;
        let genuine = std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .any(|key| mac(key, &payload).verify_slice(&tag).is_ok());
        if !genuine {
            return Err(ChainError::Invalid("bad signature"));
        }
        let chain: Chain = serde_json::from_slice(&payload)
            .map_err(|_| ChainError::Invalid("payload is not a chain"))?;
        if chain.version != 1 || chain.agents.is_empty() || chain.agents.len() > MAX_AGENTS {
            return Err(ChainError::Invalid("unsupported chain"));
        }
        if chain.iat > now_secs + SKEW_SECS {
            return Err(ChainError::Invalid("issued in the future"));
        }
        let age_secs = now_secs.saturating_sub(chain.iat);
        if age_secs > self.max_age_secs {
            return Err(ChainError::Expired {
                age_secs,
                max_age_secs: self.max_age_secs,
            });
        }
        Ok(chain)
    }
}

/// A random per-process key for when none is configured.
pub fn random_key() -> Vec<u8> {
    let a: u128 = rand::random();
    let b: u128 = rand::random();
    let mut k = a.to_be_bytes().to_vec();
    k.extend_from_slice(&b.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keys(key: &str, previous: Option<&str>) -> Keys {
        Keys::new(
            &ChainSettings {
                key: Some(key.as_bytes().to_vec()),
                previous_key: previous.map(|p| p.as_bytes().to_vec()),
                max_age: Duration::from_secs(3600),
                key_configured: true,
            },
            b"unused",
        )
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let tag = mac(b"Jefe", b"what do ya want for nothing?")
            .finalize()
            .into_bytes();
        assert_eq!(
            hex::encode(tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn round_trip_and_extend() {
        let k = keys("k1-0123456789abcdef", None);
        let c = Chain::start("run_1".into(), "a", 1000);
        let t = k.sign(&c);
        let back = k.verify(&t, 1010).unwrap();
        assert_eq!(back, c);
        let ext = back.extend("b", 1010);
        assert_eq!(ext.display(), "a → b");
        assert_eq!(k.verify(&k.sign(&ext), 1020).unwrap().agents, ["a", "b"]);
    }

    #[test]
    fn forged_truncated_and_expired_are_refused() {
        let k = keys("k1-0123456789abcdef", None);
        let t = k.sign(&Chain::start("run_1".into(), "a", 1000));
        let other = keys("another-key-000000", None);
        let code = |r: Result<Chain, ChainError>| r.unwrap_err().code();
        assert_eq!(code(other.verify(&t, 1000)), "chain_invalid");
        assert_eq!(code(k.verify(&t[..t.len() - 3], 1000)), "chain_invalid");
        assert_eq!(code(k.verify("garbage", 1000)), "chain_invalid");
        // A payload changed to add an agent, with the old signature.
        let (_, sig) = t.split_once('.').unwrap();
        let forged = Chain::start("run_1".into(), "root", 1000);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            code(k.verify(&format!("{body}.{sig}"), 1000)),
            "chain_invalid"
        );
        assert_eq!(code(k.verify(&t, 1000 + 3601)), "chain_expired");
    }

    #[test]
    fn previous_key_is_accepted_during_rotation() {
        let old = keys("old-key-0123456789", None);
        let t = old.sign(&Chain::start("run_1".into(), "a", 1000));
        let rotated = keys("new-key-0123456789", Some("old-key-0123456789"));
        assert!(rotated.verify(&t, 1000).is_ok());
        let fresh = rotated.sign(&Chain::start("run_2".into(), "a", 1000));
        assert!(
            old.verify(&fresh, 1000).is_err(),
            "new tokens use the new key"
        );
    }
}
