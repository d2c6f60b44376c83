//! `mock-upstream`: a fast fake LLM provider for Palisade's integration tests, benchmarks and
//! demo, with three faces on one port, each speaking its provider's real wire format (whole and
//! streamed, tool calls included, see [`tools`]):
//!
//! - OpenAI: `GET /v1/models`, `POST /v1/chat/completions` ([`openai`]);
//! - Anthropic: `POST /v1/messages` ([`anthropic`]);
//! - Gemini: `POST /v1beta/models/{model}:generateContent` and
//!   `:streamGenerateContent?alt=sse` ([`gemini`]).
//!
//! All answer with a deterministic echo, inject faults per request (status, latency, dropped
//! connections, slow streams; see [`faults`]; errors in each face's own error shape), and record
//! every request they receive in a [`MockState`] that tests can inspect (`GET /_mock/requests`
//! shows it to humans). `POST /mcp` is a small fake MCP server (see [`mcp`]) whose
//! `send_email` sends are counted in the state.
//!
//! **Down switch** (for breaker and failover tests): `POST /_mock/down` makes every provider
//! request answer 503 in its face's error shape; `POST /_mock/down?mode=drop` makes the mock
//! close each provider connection without answering; `POST /_mock/up` brings it back.
//! [`MockState::set_down`] does the same from Rust. `/health` and `/_mock/*` keep working while
//! down. (For connection refused, stop the mock or point at a closed port.)
//!
//! ```no_run
//! # async fn demo() {
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! let (addr, state) = mock_upstream::spawn(listener);
//! // ... point a client at http://{addr}/v1 ...
//! let seen = state.requests();
//! # }
//! ```

pub mod anthropic;
mod body;
pub mod faults;
pub mod gemini;
pub mod mcp;
pub mod openai;
pub mod tools;

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

pub use body::MockBody;
use faults::Faults;

/// How many requests a [`MockState`] keeps by default (the oldest are forgotten first).
pub const DEFAULT_MAX_RECORDED: usize = 10_000;

/// One request as the mock received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// The URL path, without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Headers in arrival order, names lowercased; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    /// The body, as text (invalid UTF-8 replaced).
    pub body: String,
}

impl RecordedRequest {
    /// The first value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// A cheap, cloneable handle on the mock's state: the requests it recorded and its id counter.
///
/// Requests to `/health` and `/_mock/*` are not recorded. At most `max_recorded` requests are
/// kept (oldest dropped first) so long benchmarks do not grow memory without bound; `0` turns
/// recording off.
#[derive(Clone)]
pub struct MockState {
    inner: Arc<Inner>,
}

struct Inner {
    requests: Mutex<VecDeque<RecordedRequest>>,
    max_recorded: usize,
    next_id: AtomicU64,
    /// 0 up, 1 down answering 503, 2 down dropping connections.
    down: AtomicU8,
    emails_sent: AtomicU64,
    refunds: std::sync::atomic::AtomicBool,
}

/// How the mock behaves while down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// Every provider request gets a 503 in its face's error shape.
    Unavailable,
    /// Every provider connection is closed without an answer.
    Drop,
}

impl Default for MockState {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MockState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockState")
            .field("recorded", &self.lock().len())
            .field("max_recorded", &self.inner.max_recorded)
            .finish()
    }
}

impl MockState {
    /// A state keeping up to [`DEFAULT_MAX_RECORDED`] requests.
    pub fn new() -> Self {
        Self::with_max_recorded(DEFAULT_MAX_RECORDED)
    }

    /// A state keeping up to `max_recorded` requests (`0`: record nothing).
    pub fn with_max_recorded(max_recorded: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                requests: Mutex::new(VecDeque::new()),
                max_recorded,
                next_id: AtomicU64::new(1),
                down: AtomicU8::new(0),
                emails_sent: AtomicU64::new(0),
                refunds: Default::default(),
            }),
        }
    }

    /// The recorded requests, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().iter().cloned().collect()
    }

    /// The most recent recorded request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.lock().back().cloned()
    }

    /// Forgets the recorded requests.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Take the mock down (`Some`) or bring it back (`None`).
    pub fn set_down(&self, down: Option<Down>) {
        let v = match down {
            None => 0,
            Some(Down::Unavailable) => 1,
            Some(Down::Drop) => 2,
        };
        self.inner.down.store(v, Ordering::SeqCst);
    }

    /// Whether the mock is down, and how.
    pub fn down(&self) -> Option<Down> {
        match self.inner.down.load(Ordering::SeqCst) {
            0 => None,
            1 => Some(Down::Unavailable),
            _ => Some(Down::Drop),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<RecordedRequest>> {
        // A poisoned lock only means a panic elsewhere; the list itself is still usable.
        self.inner
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn records(&self) -> bool {
        self.inner.max_recorded > 0
    }

    fn record(&self, request: RecordedRequest) {
        let mut requests = self.lock();
        while requests.len() >= self.inner.max_recorded {
            requests.pop_front();
        }
        requests.push_back(request);
    }

    /// How many `send_email` calls the MCP face has served.
    pub fn emails_sent(&self) -> u64 {
        self.inner.emails_sent.load(Ordering::Relaxed)
    }

    /// Counts one email sent; returns the new count.
    fn record_email(&self) -> u64 {
        self.inner.emails_sent.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether the MCP desk offers `issue_refund` (after `enable_refunds`).
    pub fn refunds_enabled(&self) -> bool {
        self.inner.refunds.load(Ordering::Relaxed)
    }

    /// Turn the refund desk on; returns whether it was on already.
    fn enable_refunds(&self) -> bool {
        self.inner.refunds.swap(true, Ordering::Relaxed)
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Serves the mock on `listener` until the task is dropped (it never returns on its own).
/// HTTP/1.1 with keep-alive; `TCP_NODELAY` on every connection.
pub async fn serve(listener: tokio::net::TcpListener, state: MockState) -> anyhow::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Typically out of file descriptors, or a connection reset before accept:
                // back off briefly and keep serving.
                eprintln!("mock-upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            // Errors here are client disconnects or injected drops; nothing to report.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Starts the mock on `listener` as a task of the current tokio runtime, with a fresh
/// [`MockState`]; returns the bound address and the state.
///
/// # Panics
///
/// Outside a tokio runtime, or if the listener cannot be used; see [`try_spawn`].
pub fn spawn(listener: std::net::TcpListener) -> (SocketAddr, MockState) {
    match try_spawn(listener) {
        Ok(started) => started,
        Err(e) => panic!("mock-upstream: cannot start: {e}"),
    }
}

/// Like [`spawn`], but returns an error instead of panicking.
pub fn try_spawn(listener: std::net::TcpListener) -> std::io::Result<(SocketAddr, MockState)> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| std::io::Error::other(format!("not inside a tokio runtime: {e}")))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let state = MockState::new();
    runtime.spawn(serve(listener, state.clone()));
    Ok((addr, state))
}

/// The service error that makes hyper close the connection without answering.
#[derive(Debug)]
struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mock-upstream: injected connection drop")
    }
}

impl std::error::Error for Dropped {}

type Reply = Result<Response<MockBody>, Dropped>;

async fn handle(req: Request<Incoming>, state: MockState) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => {
            return Ok(response(
                StatusCode::OK,
                "text/plain",
                Bytes::from_static(b"ok"),
            ));
        }
        (&Method::GET, "/_mock/requests") => {
            let body = serde_json::to_vec_pretty(&state.requests()).unwrap_or_default();
            return Ok(response(StatusCode::OK, JSON, body));
        }
        (&Method::DELETE, "/_mock/requests") => {
            state.clear();
            let mut res = Response::new(MockBody::empty());
            *res.status_mut() = StatusCode::NO_CONTENT;
            return Ok(res);
        }
        (&Method::POST, "/_mock/down") => {
            let drop = req.uri().query().is_some_and(|q| q.contains("mode=drop"));
            state.set_down(Some(if drop { Down::Drop } else { Down::Unavailable }));
            return Ok(response(
                StatusCode::OK,
                JSON,
                Bytes::from_static(b"{\"down\":true}"),
            ));
        }
        (&Method::POST, "/_mock/up") => {
            state.set_down(None);
            return Ok(response(
                StatusCode::OK,
                JSON,
                Bytes::from_static(b"{\"down\":false}"),
            ));
        }
        _ => {}
    }
    let face = Face::of(req.uri().path());
    match state.down() {
        Some(Down::Drop) => return Err(Dropped),
        Some(Down::Unavailable) => {
            return Ok(face.error(StatusCode::SERVICE_UNAVAILABLE, "mock-upstream is down"));
        }
        None => {}
    }

    let (parts, incoming) = req.into_parts();
    let body = match incoming.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    if state.records() {
        state.record(RecordedRequest {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }

    let header_faults = match Faults::from_headers(&parts.headers) {
        Ok(f) => f,
        Err(message) => return Ok(bad_request(&message, "invalid_mock_directive")),
    };

    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/v1/models") => {
            if let Some(early) = apply_faults(&header_faults, false).await? {
                return Ok(early);
            }
            Ok(response(
                StatusCode::OK,
                JSON,
                Bytes::from_static(openai::MODELS.as_bytes()),
            ))
        }
        (&Method::POST, "/v1/chat/completions") => chat(&body, header_faults, &state).await,
        (&Method::POST, "/v1/messages") => {
            messages(&parts.headers, &body, header_faults, &state).await
        }
        (&Method::POST, path) if gemini::route(path).is_some() => {
            generate(path, parts.uri.query(), &body, header_faults, &state).await
        }
        (&Method::POST, "/mcp") => {
            let reply = mcp::answer(&body, &state);
            let mut res = match reply.http_body() {
                Some((ctype, body)) => response(reply.status, ctype, body),
                None => Response::new(MockBody::empty()),
            };
            *res.status_mut() = reply.status;
            Ok(res)
        }
        (&Method::DELETE, "/mcp") => {
            let mut res = Response::new(MockBody::empty());
            *res.status_mut() = StatusCode::NO_CONTENT;
            Ok(res)
        }
        (method, path) => {
            let message = format!("Invalid URL ({method} {path})");
            Ok(openai_error(
                StatusCode::NOT_FOUND,
                &message,
                "invalid_request_error",
                "unknown_url",
            ))
        }
    }
}

async fn chat(body: &[u8], header_faults: Faults, state: &MockState) -> Reply {
    let request: openai::ChatRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            if let Some(early) = apply_faults(&header_faults, false).await? {
                return Ok(early);
            }
            let code = if e.is_data() {
                "invalid_request"
            } else {
                "invalid_json"
            };
            let message = format!("We could not parse the JSON body of your request: {e}");
            return Ok(bad_request(&message, code));
        }
    };
    let stream = request.is_stream();
    let user_text = request.last_user_text();
    let (text_faults, echoed) = match faults::directives(&user_text) {
        Ok(found) => found,
        Err(message) => return Ok(bad_request(&message, "invalid_mock_directive")),
    };
    let faults = header_faults.or(text_faults);
    if let Some(early) = apply_faults(&faults, stream).await? {
        return Ok(early);
    }

    let include_usage = request.include_usage() && !faults.no_usage;
    let full_reply = openai::reply(&request.model, &echoed);
    let (content, truncated) = openai::truncate(&full_reply, request.max_words());
    let id = format!("chatcmpl-mock-{}", state.next_id());
    let answer = openai::Answer {
        id: &id,
        created: unix_now(),
        model: &request.model,
        content,
        finish_reason: if truncated { "length" } else { "stop" },
        usage: openai::Usage::new(
            request.prompt_tokens(),
            openai::tokens(content.chars().count()),
        ),
    };

    let calls = tools::calls(
        &request.tools(),
        &echoed,
        request.user_turn(),
        state.next_id(),
    );
    if !calls.is_empty() {
        let answer = openai::Answer {
            finish_reason: "tool_calls",
            ..answer
        };
        if !stream {
            let body = openai::tool_completion(&answer, &calls);
            return Ok(response(StatusCode::OK, JSON, without_usage(body, &faults)));
        }
        let frames = openai::tool_stream_frames(&answer, &calls, include_usage);
        return Ok(sse_response(frames, &faults));
    }
    if !stream {
        let body = openai::completion(&answer);
        return Ok(response(StatusCode::OK, JSON, without_usage(body, &faults)));
    }
    let frames = openai::stream_frames(&answer, include_usage, faults.drop_after);
    let mut res = Response::new(MockBody::stream(
        frames,
        faults.chunk_delay,
        faults.drop_after.is_some(),
    ));
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(res)
}

/// A completion body without its `usage` when the request asked for `no_usage`.
fn without_usage(body: Vec<u8>, faults: &Faults) -> Vec<u8> {
    if !faults.no_usage {
        return body;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(mut v) => {
            if let Some(o) = v.as_object_mut() {
                o.remove("usage");
            }
            serde_json::to_vec(&v).unwrap_or(body)
        }
        Err(_) => body,
    }
}

fn sse_response(frames: VecDeque<Bytes>, faults: &Faults) -> Response<MockBody> {
    let mut res = Response::new(MockBody::stream(
        frames,
        faults.chunk_delay,
        faults.drop_after.is_some(),
    ));
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// Which provider a path belongs to, for the shape of its errors.
#[derive(Clone, Copy)]
enum Face {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Face {
    fn of(path: &str) -> Face {
        if path == "/v1/messages" {
            Face::Anthropic
        } else if path.starts_with("/v1beta/") {
            Face::Gemini
        } else {
            Face::OpenAi
        }
    }

    fn error(self, status: StatusCode, message: &str) -> Response<MockBody> {
        let mut res = match self {
            Face::OpenAi => {
                let kind = match status.as_u16() {
                    429 => "rate_limit_error",
                    500.. => "server_error",
                    _ => "invalid_request_error",
                };
                openai_error(status, message, kind, "mock_injected")
            }
            Face::Anthropic => response(status, JSON, anthropic::error(status.as_u16(), message)),
            Face::Gemini => response(status, JSON, gemini::error(status.as_u16(), message)),
        };
        if status == StatusCode::TOO_MANY_REQUESTS {
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }

    /// Latency, then the injected status (in this face's shape), or a dropped non-stream.
    async fn faults(
        self,
        faults: &Faults,
        stream: bool,
    ) -> Result<Option<Response<MockBody>>, Dropped> {
        if let Some(latency) = faults.latency {
            tokio::time::sleep(latency).await;
        }
        if let Some(status) = faults.status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = format!("mock-upstream injected {}", status.as_u16());
            return Ok(Some(self.error(status, &message)));
        }
        if faults.drop_after.is_some() && !stream {
            return Err(Dropped);
        }
        Ok(None)
    }
}

async fn messages(
    headers: &hyper::HeaderMap,
    body: &[u8],
    header_faults: Faults,
    state: &MockState,
) -> Reply {
    let face = Face::Anthropic;
    if headers.get("anthropic-version").is_none() {
        return Ok(face.error(
            StatusCode::BAD_REQUEST,
            "anthropic-version: header is required",
        ));
    }
    let ask = match anthropic::parse(body) {
        Ok(a) => a,
        Err(m) => return Ok(face.error(StatusCode::BAD_REQUEST, &m)),
    };
    let (text_faults, echoed) = match faults::directives(&ask.user_text) {
        Ok(found) => found,
        Err(m) => return Ok(face.error(StatusCode::BAD_REQUEST, &m)),
    };
    let faults = header_faults.or(text_faults);
    if let Some(early) = face.faults(&faults, ask.stream).await? {
        return Ok(early);
    }
    let full = openai::reply(&ask.model, &echoed);
    let (text, truncated) = openai::truncate(&full, Some(ask.max_tokens));
    let n = state.next_id();
    let calls = tools::calls(&ask.tools, &echoed, ask.user_turn, n);
    let id = format!("msg_mock_{n}");
    let answer = anthropic::Answer {
        id: &id,
        model: &ask.model,
        text: if calls.is_empty() { text } else { "" },
        calls: &calls,
        truncated,
        input_tokens: openai::tokens(ask.prompt_chars),
    };
    if !ask.stream {
        return Ok(response(StatusCode::OK, JSON, anthropic::message(&answer)));
    }
    Ok(sse_response(
        anthropic::stream_frames(&answer, faults.drop_after),
        &faults,
    ))
}

async fn generate(
    path: &str,
    query: Option<&str>,
    body: &[u8],
    header_faults: Faults,
    state: &MockState,
) -> Reply {
    let face = Face::Gemini;
    let Some((model, stream)) = gemini::route(path) else {
        return Ok(face.error(StatusCode::NOT_FOUND, "unknown method"));
    };
    if stream && !query.is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse")) {
        return Ok(face.error(
            StatusCode::BAD_REQUEST,
            "mock-upstream streams only with alt=sse",
        ));
    }
    let ask = match gemini::parse(body) {
        Ok(a) => a,
        Err(m) => return Ok(face.error(StatusCode::BAD_REQUEST, &m)),
    };
    let (text_faults, echoed) = match faults::directives(&ask.user_text) {
        Ok(found) => found,
        Err(m) => return Ok(face.error(StatusCode::BAD_REQUEST, &m)),
    };
    let faults = header_faults.or(text_faults);
    if let Some(early) = face.faults(&faults, stream).await? {
        return Ok(early);
    }
    let full = openai::reply(model, &echoed);
    let (text, truncated) = openai::truncate(&full, ask.max_tokens);
    let n = state.next_id();
    let calls = tools::calls(&ask.tools, &echoed, ask.user_turn, n);
    let id = format!("mock-{n}");
    let answer = gemini::Answer {
        id: &id,
        model,
        text: if calls.is_empty() { text } else { "" },
        calls: &calls,
        truncated,
        prompt_tokens: openai::tokens(ask.prompt_chars),
    };
    if !stream {
        return Ok(response(StatusCode::OK, JSON, gemini::response(&answer)));
    }
    Ok(sse_response(
        gemini::stream_frames(&answer, faults.drop_after),
        &faults,
    ))
}

/// Waits the injected latency, then answers the injected status, or drops a non-stream.
/// `Ok(None)`: go on and answer normally.
async fn apply_faults(
    faults: &Faults,
    stream: bool,
) -> Result<Option<Response<MockBody>>, Dropped> {
    if let Some(latency) = faults.latency {
        tokio::time::sleep(latency).await;
    }
    if let Some(status) = faults.status {
        return Ok(Some(injected_error(status)));
    }
    if faults.drop_after.is_some() && !stream {
        return Err(Dropped);
    }
    Ok(None)
}

fn injected_error(status: u16) -> Response<MockBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        429 => "rate_limit_error",
        500.. => "server_error",
        _ => "invalid_request_error",
    };
    let message = format!("mock-upstream injected {}", status.as_u16());
    let mut res = openai_error(status, &message, kind, "mock_injected");
    if status == StatusCode::TOO_MANY_REQUESTS {
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

const JSON: &str = "application/json";

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<MockBody> {
    let mut res = Response::new(MockBody::full(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn openai_error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response<MockBody> {
    response(status, JSON, openai::error(message, kind, code))
}

fn bad_request(message: &str, code: &str) -> Response<MockBody> {
    openai_error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        code,
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
