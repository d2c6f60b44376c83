//! Upstream MCP servers, as Palisade's client: [`Server`] is one configured server, reached
//! over Streamable HTTP ([`HttpServer`], below) or stdio (`super::stdio`).
//!
//! Upstream sessions are Palisade's business: an HTTP server gets one upstream session per
//! agent session (opened lazily with `initialize` + `notifications/initialized`, reopened once
//! if the server forgot it, closed with `DELETE` when the agent's session ends or after [`SESSION_IDLE`] unused), so agents never
//! share server-side state. A stdio server is a single client's process and is shared. Requests
//! carry only the headers Palisade holds for the server and the delegation chain token, never
//! the agent's key.
//!
//! Palisade lists what a server offers through its own upstream session
//! ([`super::catalog::CATALOG_SESSION`]) and, for an HTTP server, keeps that session's
//! standalone GET event stream open to hear `notifications/*/list_changed`; such notifications
//! inside any answer's event stream, or on a stdio server's stdout, count too ([`Changes`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::catalog::CATALOG_SESSION;
use super::changes::Changes;
use super::settings::{ServerKind, ServerSettings};
use super::stdio::StdioServer;

/// The protocol version Palisade speaks to upstream servers.
pub const UPSTREAM_VERSION: &str = "2025-11-25";
/// Largest answer read from an upstream server.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Why an upstream request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The server answered with a JSON-RPC error.
    #[error("{message}")]
    Rpc {
        code: i64,
        message: String,
        data: Option<Value>,
    },
    #[error("MCP server '{server}' could not be reached: {message}")]
    Unavailable { server: String, message: String },
    #[error("MCP server '{server}' did not answer within {} ms", .after.as_millis())]
    Timeout { server: String, after: Duration },
    #[error("MCP server '{server}' answered something that is not MCP: {message}")]
    Protocol { server: String, message: String },
}

/// One configured upstream server.
pub enum Server {
    Http(Box<HttpServer>),
    Stdio(StdioServer),
}

impl Server {
    pub fn new(settings: &ServerSettings, timeout: Duration, changes: Arc<Changes>) -> Server {
        match &settings.kind {
            ServerKind::Http { url, headers } => Server::Http(Box::new(HttpServer::new(
                &settings.name,
                url,
                headers.clone(),
                timeout,
                changes,
            ))),
            ServerKind::Stdio { .. } => {
                Server::Stdio(StdioServer::start(settings, timeout, changes))
            }
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Server::Http(s) => &s.name,
            Server::Stdio(s) => s.name(),
        }
    }

    /// Send a request on behalf of the agent session `session` and return its `result`.
    pub async fn request(
        &self,
        session: &str,
        method: &str,
        params: Value,
        chain: Option<&str>,
    ) -> Result<Value, UpstreamError> {
        match self {
            Server::Http(s) => s.request(session, method, params, chain).await,
            Server::Stdio(s) => s.request(method, params).await,
        }
    }

    /// The agent session ended: end what Palisade holds upstream for it.
    pub async fn end_session(&self, session: &str) {
        if let Server::Http(s) = self {
            s.end_session(session).await;
        }
    }
}

/// The `result` of a JSON-RPC response, or its error.
pub fn result_of(server: &str, msg: Value) -> Result<Value, UpstreamError> {
    if let Some(e) = msg.get("error") {
        return Err(UpstreamError::Rpc {
            code: e.get("code").and_then(Value::as_i64).unwrap_or(-32603),
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_string(),
            // `retry_after` in an error's data is how a Palisade limit's refusal becomes HTTP
            // 429 (`jsonrpc::reply`): an upstream's own is dropped, so a server cannot make the
            // gateway answer 429 with a Retry-After of its choosing.
            data: e.get("data").cloned().map(|mut d| {
                if let Some(o) = d.as_object_mut() {
                    o.remove("retry_after");
                }
                d
            }),
        });
    }
    match msg {
        Value::Object(mut m) => m.remove("result").ok_or_else(|| UpstreamError::Protocol {
            server: server.to_string(),
            message: "response has neither result nor error".into(),
        }),
        _ => Err(UpstreamError::Protocol {
            server: server.to_string(),
            message: "response is not an object".into(),
        }),
    }
}

/// The `initialize` request Palisade sends upstream.
pub fn initialize_params() -> Value {
    json!({
        "protocolVersion": UPSTREAM_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "palisade", "version": env!("CARGO_PKG_VERSION")},
    })
}

#[derive(Clone)]
struct UpstreamSession {
    id: Option<String>,
    version: String,
    /// Last request on it.
    used: Instant,
}

/// An agent session's upstream session unused this long is closed (`DELETE`), so sessions
/// agents never end do not pile up here or on the server; the agent's next request opens a new
/// one. Palisade's own catalog session stays.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Reopening a closed upstream event stream: first wait, doubling up to the most.
const LISTEN_BACKOFF_START: Duration = Duration::from_millis(500);
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often idle sessions are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The keys of the sessions idle for `idle` at `now` (never the catalog session's).
fn idle_keys(
    sessions: &HashMap<String, UpstreamSession>,
    now: Instant,
    idle: Duration,
) -> Vec<String> {
    sessions
        .iter()
        .filter(|(k, s)| k.as_str() != CATALOG_SESSION && now.duration_since(s.used) >= idle)
        .map(|(k, _)| k.clone())
        .collect()
}

/// A Streamable HTTP server.
pub struct HttpServer {
    name: String,
    url: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
    client: Client<crate::net::Connector, Full<Bytes>>,
    sessions: Mutex<HashMap<String, UpstreamSession>>,
    next_id: AtomicU64,
    changes: Arc<Changes>,
    /// The GET stream of the catalog session, stopped when the server is dropped.
    listener: Mutex<Option<tokio::task::AbortHandle>>,
    last_sweep: Mutex<Instant>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(l) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            l.abort();
        }
    }
}

struct Answer {
    status: StatusCode,
    session_id: Option<String>,
    body: Bytes,
    sse: bool,
}

impl HttpServer {
    fn new(
        name: &str,
        url: &str,
        headers: Vec<(String, String)>,
        timeout: Duration,
        changes: Arc<Changes>,
    ) -> Self {
        let connector = crate::net::connector(Duration::from_secs(5));
        HttpServer {
            name: name.to_string(),
            url: url.to_string(),
            headers,
            timeout,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            changes,
            listener: Mutex::new(None),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    fn unavailable(&self, message: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unavailable {
            server: self.name.clone(),
            message: message.to_string(),
        }
    }

    fn protocol(&self, message: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Protocol {
            server: self.name.clone(),
            message: message.to_string(),
        }
    }

    async fn post(
        &self,
        method: Method,
        body: Option<&Value>,
        session: Option<&UpstreamSession>,
        chain: Option<&str>,
    ) -> Result<Answer, UpstreamError> {
        let mut req = Request::builder()
            .method(method)
            .uri(&self.url)
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(header::CONTENT_TYPE, "application/json");
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(s) = session {
            if let Some(id) = &s.id {
                req = req.header("mcp-session-id", id.as_str());
            }
            req = req.header("mcp-protocol-version", s.version.as_str());
        }
        if let Some(c) = chain {
            req = req.header(crate::chain::HEADER, c);
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| self.unavailable(e))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| self.unavailable(e))?;
            let status = resp.status();
            let session_id = resp
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let sse = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| self.unavailable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer {
                status,
                session_id,
                body,
                sse,
            })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| UpstreamError::Timeout {
                server: self.name.clone(),
                after: self.timeout,
            })?
    }

    /// The JSON-RPC response with this id in a JSON or SSE answer.
    fn response_in(&self, answer: &Answer, id: u64) -> Result<Value, UpstreamError> {
        let is_ours = |v: &Value| v.get("id").and_then(Value::as_u64) == Some(id);
        if answer.sse {
            let text = String::from_utf8_lossy(&answer.body);
            for event in text.split("\n\n") {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                if let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) {
                    if is_ours(&v) {
                        return Ok(v);
                    }
                    self.changes.notice(&v);
                }
            }
            Err(self.protocol("the event stream ended without the response"))
        } else {
            let v: Value = serde_json::from_slice(&answer.body)
                .map_err(|e| self.protocol(format!("answer is not JSON: {e}")))?;
            Ok(v)
        }
    }

    async fn open_session(&self) -> Result<UpstreamSession, UpstreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let init = json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": initialize_params()});
        let answer = self.post(Method::POST, Some(&init), None, None).await?;
        if !answer.status.is_success() {
            return Err(self.unavailable(format!("initialize answered {}", answer.status)));
        }
        let result = result_of(&self.name, self.response_in(&answer, id)?)?;
        let version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or(UPSTREAM_VERSION)
            .to_string();
        let session = UpstreamSession {
            id: answer.session_id,
            version,
            used: Instant::now(),
        };
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let a = self
            .post(Method::POST, Some(&note), Some(&session), None)
            .await?;
        if !a.status.is_success() {
            return Err(
                self.unavailable(format!("notifications/initialized answered {}", a.status))
            );
        }
        Ok(session)
    }

    async fn request(
        &self,
        key: &str,
        method: &str,
        params: Value,
        chain: Option<&str>,
    ) -> Result<Value, UpstreamError> {
        self.sweep();
        let mut retried = false;
        loop {
            let known = self
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(key)
                .map(|s| {
                    s.used = Instant::now();
                    s.clone()
                });
            let session = match known {
                Some(s) => s,
                None => {
                    let s = self.open_session().await?;
                    self.sessions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key.to_string(), s.clone());
                    if key == CATALOG_SESSION {
                        self.listen(&s);
                    }
                    s
                }
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
            let answer = self
                .post(Method::POST, Some(&msg), Some(&session), chain)
                .await?;
            // The server forgot the session (restart, expiry): open a new one, once. Servers
            // differ on the status (the spec says 404, the TS SDK answers 400).
            let lost = answer.status == StatusCode::NOT_FOUND
                || (answer.status == StatusCode::BAD_REQUEST
                    && String::from_utf8_lossy(&answer.body).contains("session"));
            if lost && !retried {
                retried = true;
                if key == CATALOG_SESSION {
                    // The server restarted or expired Palisade's session: what it offers may
                    // have changed too.
                    self.changes.all_changed();
                }
                self.sessions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(key);
                continue;
            }
            if !answer.status.is_success() && !answer.status.is_client_error() {
                return Err(self.unavailable(format!("{method} answered {}", answer.status)));
            }
            return result_of(&self.name, self.response_in(&answer, id)?);
        }
    }

    /// Keep the session's standalone GET stream open and take note of the list changes it
    /// announces. A server without one (405) is refetched at the catalog TTL instead.
    fn listen(&self, session: &UpstreamSession) {
        let Some(id) = session.id.clone() else {
            return;
        };
        let build = {
            let (url, headers, version) = (
                self.url.clone(),
                self.headers.clone(),
                session.version.clone(),
            );
            move || {
                let mut req = Request::builder()
                    .method(Method::GET)
                    .uri(&url)
                    .header(header::ACCEPT, "text/event-stream")
                    .header("mcp-session-id", id.as_str())
                    .header("mcp-protocol-version", version.as_str());
                for (k, v) in &headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                req.body(Full::new(Bytes::new())).ok()
            }
        };
        let (client, changes, name) =
            (self.client.clone(), self.changes.clone(), self.name.clone());
        let task = tokio::spawn(async move {
            let mut backoff = LISTEN_BACKOFF_START;
            while let Some(req) = build() {
                match client.request(req).await {
                    Ok(resp) if resp.status().is_success() => {
                        let mut body = resp.into_body();
                        let mut events = SseLines::default();
                        while let Some(Ok(frame)) = body.frame().await {
                            if let Ok(data) = frame.into_data() {
                                for v in events.push(&data) {
                                    changes.notice(&v);
                                }
                            }
                            backoff = LISTEN_BACKOFF_START;
                        }
                        tracing::debug!(server = %name, "upstream event stream ended; reopening");
                    }
                    Ok(resp) => {
                        // No stream offered (405), or the session is gone (404: the next
                        // listing reopens it, with a new listener): the TTL covers the rest.
                        tracing::debug!(server = %name, status = %resp.status(), "no upstream event stream");
                        changes.mark_stale();
                        return;
                    }
                    Err(e) => tracing::debug!(server = %name, "upstream event stream failed: {e}"),
                }
                // What was announced while the stream was down is unknown.
                changes.mark_stale();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
            }
        });
        if let Some(old) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task.abort_handle())
        {
            old.abort();
        }
    }

    /// Close the sessions idle for [`SESSION_IDLE`], at most every [`SWEEP_EVERY`].
    fn sweep(&self) {
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < SWEEP_EVERY {
                return;
            }
            *last = Instant::now();
        }
        let gone: Vec<UpstreamSession> = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            idle_keys(&sessions, Instant::now(), SESSION_IDLE)
                .into_iter()
                .filter_map(|k| sessions.remove(&k))
                .collect()
        };
        for s in gone {
            let Some(id) = s.id else { continue };
            let mut req = Request::builder()
                .method(Method::DELETE)
                .uri(&self.url)
                .header("mcp-session-id", id.as_str())
                .header("mcp-protocol-version", s.version.as_str());
            for (k, v) in &self.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            if let Ok(req) = req.body(Full::new(Bytes::new())) {
                let (client, name) = (self.client.clone(), self.name.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(server = %name, "idle upstream session not deleted: {e}")
                        }
                        Err(_) => {
                            tracing::debug!(server = %name, "idle upstream session: no answer to DELETE")
                        }
                    }
                });
            }
        }
    }

    async fn end_session(&self, key: &str) {
        let gone = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Some(s) = gone
            && s.id.is_some()
            && let Err(e) = self.post(Method::DELETE, None, Some(&s), None).await
        {
            tracing::debug!(server = %self.name, "upstream session not deleted: {e}");
        }
    }
}

/// Splits an event stream into the JSON messages of its `data:` lines, across chunk boundaries.
#[derive(Default)]
pub struct SseLines {
    buf: Vec<u8>,
}

impl SseLines {
    /// Feed bytes; returns the messages of the events completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Value> {
        self.buf.extend(chunk.iter().filter(|b| **b != b'\r'));
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) {
                out.push(v);
            }
        }
        if self.buf.len() > MAX_ANSWER_BYTES {
            self.buf.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_sessions_are_found_but_never_the_catalogs() {
        let t0 = Instant::now();
        let at = |secs| UpstreamSession {
            id: Some("x".into()),
            version: UPSTREAM_VERSION.into(),
            used: t0 + Duration::from_secs(secs),
        };
        let mut m = HashMap::new();
        m.insert("old".to_string(), at(0));
        m.insert("fresh".to_string(), at(100));
        m.insert(CATALOG_SESSION.to_string(), at(0));
        let now = t0 + Duration::from_secs(120);
        assert_eq!(idle_keys(&m, now, Duration::from_secs(60)), ["old"]);
        assert!(idle_keys(&m, now, Duration::from_secs(200)).is_empty());
    }

    #[test]
    fn event_streams_split_across_chunks() {
        let mut s = SseLines::default();
        assert!(
            s.push(b": keepalive\n\nevent: message\ndata: {\"method\":")
                .is_empty()
        );
        let got = s.push(b"\"notifications/tools/list_changed\"}\r\n\r\ndata: 1\n\n");
        assert_eq!(
            got,
            vec![
                json!({"method": "notifications/tools/list_changed"}),
                json!(1)
            ]
        );
    }

    #[test]
    fn an_upstream_error_cannot_ask_for_a_429() {
        let msg = json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32000,
            "message": "slow down", "data": {"retry_after": 86400, "hint": "kept"}}});
        match result_of("crm", msg) {
            Err(UpstreamError::Rpc { data: Some(d), .. }) => {
                assert_eq!(d, json!({"hint": "kept"}));
            }
            other => panic!("{other:?}"),
        }
    }
}
