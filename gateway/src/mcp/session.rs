//! Agent sessions on `/mcp`, carried in the session id itself so that any replica (or this one
//! after a restart) can serve them: `mcp1.<base64url JSON>.<base64url HMAC-SHA256>`, the JSON
//! holding the agent id, the negotiated protocol version, a random nonce and the issue time,
//! signed with the delegation chain key (domain-separated). Nothing secret is inside; what it
//! proves is who opened the session. A session presented by another agent, or not signed by
//! this deployment's key, is unknown (404). Upstream sessions are re-opened lazily per nonce.
//! Ended sessions (DELETE) are kept in the store, so every replica refuses them; [`Ended`] is
//! this process's memory of them, until they would have expired.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How long a session id is accepted after it was issued.
pub const MAX_AGE_SECS: u64 = 24 * 3600;
const PREFIX: &str = "mcp1.";
const DOMAIN: &[u8] = b"palisade-mcp-session\n";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "a")]
    pub agent: String,
    #[serde(rename = "v")]
    pub version: String,
    #[serde(rename = "n")]
    pub nonce: String,
    #[serde(rename = "t")]
    pub iat: u64,
}

fn mac(key: &[u8], payload: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(DOMAIN);
    m.update(payload);
    m.finalize().into_bytes().to_vec()
}

impl Session {
    pub fn new(agent: &str, version: &str, now_secs: u64) -> Session {
        Session {
            agent: agent.to_string(),
            version: version.to_string(),
            nonce: format!("{:032x}", rand::random::<u128>()),
            iat: now_secs,
        }
    }

    /// The sealed id.
    pub fn seal(&self, key: &[u8]) -> String {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(mac(key, &payload))
        )
    }

    /// Open a sealed id with the current or previous key; `None` if it is not ours, or expired.
    pub fn open(id: &str, keys: &[&[u8]], now_secs: u64) -> Option<Session> {
        if id.len() > 1024 {
            return None;
        }
        let rest = id.strip_prefix(PREFIX)?;
        let (p, t) = rest.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(p).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(t).ok()?;
        let genuine = keys.iter().any(|k| {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(k).expect("any key length");
            m.update(DOMAIN);
            m.update(&payload);
            m.verify_slice(&tag).is_ok()
        });
        if !genuine {
            return None;
        }
        let s: Session = serde_json::from_slice(&payload).ok()?;
        (s.iat + MAX_AGE_SECS > now_secs).then_some(s)
    }
}

/// Sessions ended with DELETE, by nonce, until they would have expired anyway.
#[derive(Default)]
pub struct Ended {
    nonces: Mutex<HashMap<String, u64>>,
}

impl Ended {
    /// Remember `s` as ended (`now_secs`: the time, to forget those expired since).
    pub fn end(&self, s: &Session, now_secs: u64) {
        let mut m = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, until| *until > now_secs);
        m.insert(s.nonce.clone(), s.iat + MAX_AGE_SECS);
    }

    pub fn is_ended(&self, s: &Session) -> bool {
        self.nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&s.nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_refuse() {
        let s = Session::new("support-bot", "2025-11-25", 1000);
        let id = s.seal(b"k1k1k1k1k1k1k1k1");
        assert!(id.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert_eq!(
            Session::open(&id, &[b"k1k1k1k1k1k1k1k1"], 1001),
            Some(s.clone())
        );
        assert_eq!(Session::open(&id, &[b"other-key-123456"], 1001), None);
        assert_eq!(
            Session::open(&id, &[b"k1k1k1k1k1k1k1k1"], 1000 + MAX_AGE_SECS),
            None
        );
        let mut forged = id.clone();
        forged.replace_range(6..8, "xx");
        assert_eq!(Session::open(&forged, &[b"k1k1k1k1k1k1k1k1"], 1001), None);
        assert_eq!(Session::open("nonsense", &[b"k"], 1), None);
        let ended = Ended::default();
        ended.end(&s, 1001);
        assert!(ended.is_ended(&s));
    }
}
