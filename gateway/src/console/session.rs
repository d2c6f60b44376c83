//! Console sessions: who is signed in, and the CSRF token of each session.
//!
//! Sessions are server-side: the cookie holds only a random 256-bit id (`HttpOnly`,
//! `SameSite=Strict`, `Path=/console`, `Secure` when the gateway serves TLS or sits behind a
//! proxy that says `X-Forwarded-Proto: https`). The table keeps the SHA-256 of the id, never the
//! id itself, beside the user token the person signed in with. Every request re-authenticates
//! that token against the store exactly as the admin API does, so a revoked token, a disabled
//! user or changed roles take effect on the next page, not at the session's end.
//!
//! Why server-side rather than an HMAC-signed cookie: signing out must end the session for
//! good (a copied cookie must not outlive it), and a session must die with its token. The
//! price: sessions live in one replica's memory (behind several replicas, use sticky sessions
//! or sign in again) and end when the process restarts.
//!
//! Each session has its own random CSRF token, put into every form and checked in constant time
//! on every POST. The sign-in form, which has no session yet, carries a token bound to a
//! short-lived pre-session cookie (double submit), so a forged sign-in is refused too.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use http::HeaderMap;
use palisade_store::User;
use sha2::{Digest, Sha256};

use crate::app::Gateway;
use crate::core::clock::now_ms;

/// The session cookie.
pub const COOKIE: &str = "palisade_console";
/// The pre-session cookie of the sign-in form.
pub const LOGIN_COOKIE: &str = "palisade_console_login";

/// A session ends this long after sign-in, however busy.
const MAX_AGE_MS: i64 = 12 * 3_600_000;
/// ... or after this long without a request.
const IDLE_MS: i64 = 2 * 3_600_000;
/// Most sessions one user keeps at once; signing in again beyond it ends that user's least
/// recently used one (never anybody else's).
const MAX_SESSIONS_PER_USER: usize = 10;

struct Entry {
    /// Which gateway made it (several run in one test process).
    gateway: usize,
    /// The user who signed in (sessions are capped per user).
    user_id: String,
    /// The user token signed in with, re-checked on every request.
    token: String,
    csrf: String,
    created_ms: i64,
    last_ms: i64,
}

static SESSIONS: LazyLock<Mutex<HashMap<[u8; 32], Entry>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn table() -> std::sync::MutexGuard<'static, HashMap<[u8; 32], Entry>> {
    // A panic while holding the lock leaves the map consistent (plain inserts and removes).
    SESSIONS.lock().unwrap_or_else(|p| p.into_inner())
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn gateway_id(gw: &Gateway) -> usize {
    std::ptr::from_ref(gw) as usize
}

/// 256 random bits, hex.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// A signed-in person, for one request.
pub struct Session {
    pub user: User,
    pub csrf: String,
}

/// Start a session for `user`, who holds `token` (already authenticated). Returns the cookie
/// value and the CSRF token.
pub fn create(gw: &Gateway, user: &User, token: &str) -> (String, String) {
    let id = random_token();
    let csrf = random_token();
    let now = now_ms();
    let gateway = gateway_id(gw);
    let mut t = table();
    t.retain(|_, e| live(e, now));
    let mut mine: Vec<([u8; 32], i64)> = t
        .iter()
        .filter(|(_, e)| e.gateway == gateway && e.user_id == user.id)
        .map(|(k, e)| (*k, e.last_ms))
        .collect();
    if mine.len() >= MAX_SESSIONS_PER_USER {
        mine.sort_by_key(|(_, last)| *last);
        for (k, _) in &mine[..=mine.len() - MAX_SESSIONS_PER_USER] {
            t.remove(k);
        }
    }
    t.insert(
        key(&id),
        Entry {
            gateway,
            user_id: user.id.clone(),
            token: token.to_string(),
            csrf: csrf.clone(),
            created_ms: now,
            last_ms: now,
        },
    );
    (id, csrf)
}

fn live(e: &Entry, now: i64) -> bool {
    now - e.created_ms < MAX_AGE_MS && now - e.last_ms < IDLE_MS
}

/// End the session behind this cookie value, if any.
pub fn destroy(id: &str) {
    table().remove(&key(id));
}

/// The session behind the request's cookie, with its user as the store has them now. `None`:
/// no cookie, an unknown or expired session, or a token that no longer authenticates (the
/// session is dropped then).
pub async fn current(gw: &Gateway, headers: &HeaderMap) -> Option<Session> {
    let id = cookie(headers, COOKIE)?;
    let k = key(&id);
    let now = now_ms();
    let (token, csrf) = {
        let mut t = table();
        let e = t.get_mut(&k)?;
        if e.gateway != gateway_id(gw) {
            return None;
        }
        if !live(e, now) {
            t.remove(&k);
            return None;
        }
        e.last_ms = now;
        (e.token.clone(), e.csrf.clone())
    };
    match gw.store.authenticate_user(&token).await {
        Ok(Some(user)) if !user.roles.is_empty() => Some(Session { user, csrf }),
        Ok(_) => {
            table().remove(&k);
            None
        }
        Err(e) => {
            tracing::warn!("console: user store unavailable: {e}");
            None
        }
    }
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Whether the browser reached us over HTTPS (directly, or through a proxy that says so).
pub fn is_secure(gw: &Gateway, headers: &HeaderMap) -> bool {
    gw.policy.current().tls.is_some()
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value; `max_age` 0 deletes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The session cookie's lifetime in the browser.
pub fn cookie_max_age() -> i64 {
    MAX_AGE_MS / 1000
}

/// Compare two secrets without an early exit on the first differing byte (hashing first makes
/// the time independent of the lengths too).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cookies() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; palisade_console=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn compares() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", ""));
    }

    #[test]
    fn cookie_flags() {
        let c = set_cookie(COOKIE, "x", 60, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie(COOKIE, "x", 60, false).contains("Secure"));
    }
}
