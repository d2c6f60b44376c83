//! The MCP gateway: agents reach the tools, prompts and resources of every configured MCP
//! server through one Streamable HTTP endpoint, `/mcp`, each seeing and using only what the
//! plugin chain (`tool-acl`) grants it, every listing and use audited.
//!
//! This module is the server side (transport, sessions, the JSON-RPC surface); `call` runs a
//! listing or a tool call through the same steps as an LLM call (`crate::call`): identity and
//! delegation chain, plugin chain, upstream, response side, audit. `catalog` merges what the
//! servers offer under `server__tool` names (`server+uri` for resources), `changes` hears the
//! servers' list-change notifications, `upstream` and `stdio` are Palisade's clients of the
//! servers, `session` seals agent sessions into their ids. `GET /mcp` is an agent session's
//! event stream: Palisade passes on the servers' list changes (and a reload's) there.
//!
//! Protocol eras: the handshake versions `2025-06-18` and `2025-11-25` (`initialize`,
//! `Mcp-Session-Id`, `MCP-Protocol-Version`), and the stateless `2026-07-28` (`server/discover`,
//! `_meta` on every request, `Mcp-Method`/`Mcp-Name` headers checked against the body).

pub mod call;
mod held;
pub mod progress;
mod uris;

use crate::mcp::{HANDSHAKE_VERSIONS, MODERN_VERSION, catalog, changes, jsonrpc, session};

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::app::Gateway;
use crate::call::request;
use crate::core::clock::now_ms;
use crate::core::error::CallError;
use crate::wire::GatewayBody;
use jsonrpc::{answer, call_error, error};
use session::Session;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

fn header_str<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// `/mcp`, any method.
pub async fn handle(
    gw: &Arc<Gateway>,
    request_id: Arc<str>,
    parts: Parts,
    body: Incoming,
) -> Response<GatewayBody> {
    match parts.method {
        Method::POST => post(gw, request_id, parts, body).await,
        Method::DELETE => delete(gw, parts).await,
        Method::GET => listen(gw, parts).await,
        _ => {
            let msg = error(
                &Value::Null,
                jsonrpc::INVALID_REQUEST,
                format!("method {} is not allowed on /mcp: use POST", parts.method),
                None,
            );
            let mut r = answer(StatusCode::METHOD_NOT_ALLOWED, &msg, false);
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            r
        }
    }
}

/// The agent behind a request, or the error answer.
async fn authenticate(
    gw: &Gateway,
    parts: &Parts,
) -> Result<Arc<crate::registry::Agent>, Response<GatewayBody>> {
    let refused = |e: CallError| {
        let (status, msg) = call_error(&Value::Null, &e);
        answer(status, &msg, false)
    };
    let key =
        request::agent_key(&parts.headers).ok_or_else(|| refused(gw.registry.missing_key()))?;
    let (agent, _) = gw.registry.authenticate(key).await.map_err(refused)?;
    Ok(agent)
}

/// The session this request belongs to: `Err` answers 400 (missing) or 404 (unknown, ended
/// on any replica, or opened by another agent: a session is bound to its agent).
async fn session_of(
    gw: &Gateway,
    rt: &crate::plugins::Runtime,
    hub: &catalog::Hub,
    parts: &Parts,
    agent: &str,
    sse: bool,
) -> Result<Session, Box<Response<GatewayBody>>> {
    let Some(id) = header_str(parts, SESSION_HEADER) else {
        let msg = error(
            &Value::Null,
            jsonrpc::INVALID_REQUEST,
            "Bad Request: missing Mcp-Session-Id header; send initialize first",
            None,
        );
        return Err(Box::new(answer(StatusCode::BAD_REQUEST, &msg, sse)));
    };
    let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let keys = gw.mcp_session_keys(rt);
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let live = match Session::open(id, &keys, now) {
        Some(s) if s.agent == agent && !hub.ended.is_ended(&s) => {
            match gw.store.mcp_session_ended(&s.nonce).await {
                Ok(false) => Some(s),
                Ok(true) => {
                    hub.ended.end(&s, now);
                    None
                }
                // The session id alone grants nothing (the agent's key does): go on.
                Err(e) => {
                    tracing::warn!("cannot check whether an MCP session ended: {e}");
                    Some(s)
                }
            }
        }
        _ => None,
    };
    if let Some(s) = &live {
        let max = rt.settings.limits.mcp_sessions_per_agent;
        gw.mcp_caps.touch_session(agent, &s.nonce, max);
    }
    live.ok_or_else(|| {
        let msg = error(
            &Value::Null,
            jsonrpc::SESSION_NOT_FOUND,
            "Session not found: initialize a new session",
            None,
        );
        Box::new(answer(StatusCode::NOT_FOUND, &msg, sse))
    })
}

async fn post(
    gw: &Arc<Gateway>,
    request_id: Arc<str>,
    parts: Parts,
    body: Incoming,
) -> Response<GatewayBody> {
    let rt = gw.policy.current();
    let hub = gw.hub(&rt);
    let sse = jsonrpc::wants_sse(&parts.headers);
    let agent = match authenticate(gw, &parts).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let bytes = match request::read_body(
        &parts.headers,
        body,
        rt.settings.max_body_bytes,
        rt.settings.server.body_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            let (status, msg) = call_error(&Value::Null, &e);
            return answer(status, &msg, sse);
        }
    };
    let bad = |code: i64, message: String| {
        answer(
            StatusCode::BAD_REQUEST,
            &error(&Value::Null, code, message, None),
            sse,
        )
    };
    let msg: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return bad(jsonrpc::PARSE_ERROR, format!("Parse error: {e}")),
    };
    if msg.is_array() {
        return bad(
            jsonrpc::INVALID_REQUEST,
            "Invalid Request: JSON-RPC batches are not supported (removed in protocol \
             version 2025-06-18); send one message per POST"
                .into(),
        );
    }
    let Value::Object(msg) = msg else {
        return bad(
            jsonrpc::INVALID_REQUEST,
            "Invalid Request: the body must be one JSON-RPC message object".into(),
        );
    };
    if msg.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return bad(
            jsonrpc::INVALID_REQUEST,
            "Invalid Request: `jsonrpc` must be \"2.0\"".into(),
        );
    }
    let id = msg.get("id").cloned();
    if id
        .as_ref()
        .is_some_and(|i| !(i.is_string() || i.is_i64() || i.is_u64()))
    {
        return bad(
            jsonrpc::INVALID_REQUEST,
            "Invalid Request: `id` must be a string or an integer".into(),
        );
    }
    let Some(method) = msg
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        // A response to a server request: Palisade sends none, so there is nothing to match.
        if id.is_some() && (msg.contains_key("result") || msg.contains_key("error")) {
            return jsonrpc::accepted();
        }
        return bad(
            jsonrpc::INVALID_REQUEST,
            "Invalid Request: `method` must be a string".into(),
        );
    };
    let params = match msg.get("params") {
        None | Some(Value::Null) => json!({}),
        Some(p) => p.clone(),
    };
    if !params.is_object() {
        let id = id.unwrap_or(Value::Null);
        return answer(
            StatusCode::OK,
            &error(
                &id,
                jsonrpc::INVALID_PARAMS,
                "`params` must be an object",
                None,
            ),
            sse,
        );
    }
    if let Err(m) = check_headers(&parts, &method, &params) {
        return answer(
            StatusCode::BAD_REQUEST,
            &error(
                id.as_ref().unwrap_or(&Value::Null),
                jsonrpc::HEADER_MISMATCH,
                m,
                None,
            ),
            sse,
        );
    }
    let version = header_str(&parts, VERSION_HEADER).map(str::to_string);
    if let Some(v) = &version
        && !HANDSHAKE_VERSIONS.contains(&v.as_str())
        && v != MODERN_VERSION
        && v != "2025-03-26"
    {
        return answer(
            StatusCode::BAD_REQUEST,
            &error(
                id.as_ref().unwrap_or(&Value::Null),
                jsonrpc::UNSUPPORTED_VERSION,
                format!("Bad Request: unsupported protocol version {v}"),
                Some(
                    json!({"supported": [MODERN_VERSION, HANDSHAKE_VERSIONS[0], HANDSHAKE_VERSIONS[1]], "requested": v}),
                ),
            ),
            sse,
        );
    }
    let modern = version.as_deref() == Some(MODERN_VERSION)
        || params
            .pointer("/_meta/io.modelcontextprotocol~1protocolVersion")
            .and_then(Value::as_str)
            == Some(MODERN_VERSION);

    let Some(id) = id else {
        // Notifications: nothing to answer (Palisade keeps no per-session client state).
        return jsonrpc::accepted();
    };

    if method == "initialize" {
        return initialize(gw, &rt, &agent.id, &id, &params, sse);
    }
    let session_key = if modern {
        if let Err(r) = check_modern(&parts, &method, &id, &params, sse) {
            return *r;
        }
        if method == "server/discover" {
            return answer(StatusCode::OK, &jsonrpc::result(&id, discover()), sse);
        }
        // Stateless: upstream sessions are kept per agent.
        format!("stateless:{}", agent.id)
    } else {
        match session_of(gw, &rt, &hub, &parts, &agent.id, sse).await {
            Ok(s) => {
                if let Some(v) = &version
                    && *v != s.version
                    && v != "2025-03-26"
                {
                    return bad(
                        jsonrpc::INVALID_REQUEST,
                        format!(
                            "Bad Request: MCP-Protocol-Version {v} differs from the version negotiated for this session ({})",
                            s.version
                        ),
                    );
                }
                s.nonce
            }
            Err(r) => return *r,
        }
    };
    let (reply, token) = if let Some(progress_token) = (method == "tools/call")
        .then(|| progress::wanted(&parts.headers, &params))
        .flatten()
    {
        // Runs on its own task, so a call held for approval can stream progress meanwhile.
        let (gw, headers, reply_id) = (gw.clone(), parts.headers.clone(), id.clone());
        let gone = client_gone(&parts);
        let work = gw.drain.clone().spawn(async move {
            let ctx = call::Ctx {
                gone,
                gw: &gw,
                rt: &rt,
                hub: &hub,
                agent: &agent,
                request_id: &request_id,
                session: &session_key,
                headers: &headers,
                modern,
            };
            call::dispatch(&ctx, &method, &reply_id, params).await
        });
        match progress::follow(work, id, progress_token).await {
            progress::Progress::Done(reply, token) => (reply, token),
            progress::Progress::Streaming(r) => return r,
        }
    } else {
        let ctx = call::Ctx {
            gone: client_gone(&parts),
            gw,
            rt: &rt,
            hub: &hub,
            agent: &agent,
            request_id: &request_id,
            session: &session_key,
            headers: &parts.headers,
            modern,
        };
        call::dispatch(&ctx, &method, &id, params).await
    };
    // A limit's refusal goes out as 429 with `Retry-After`; every other answer as 200.
    let mut r = jsonrpc::reply(&reply, sse);
    if let Some(v) = token.and_then(|t| HeaderValue::from_str(&t).ok()) {
        r.headers_mut().insert(crate::chain::HEADER, v);
    }
    r
}

/// Whether the agent behind the request hung up (set by the server).
fn client_gone(parts: &Parts) -> crate::core::drain::ClientGone {
    parts
        .extensions
        .get::<crate::core::drain::ClientGone>()
        .cloned()
        .unwrap_or_default()
}

/// `Mcp-Method` and `Mcp-Name`, where sent, must say what the body says.
fn check_headers(parts: &Parts, method: &str, params: &Value) -> Result<(), String> {
    if let Some(h) = header_str(parts, "mcp-method")
        && h != method
    {
        return Err(format!(
            "Mcp-Method header '{h}' does not match the request body's method '{method}'"
        ));
    }
    if let Some(h) = header_str(parts, "mcp-name") {
        let body = named_param(method, params);
        if body != Some(h) {
            return Err(format!(
                "Mcp-Name header '{h}' does not match the request body's name '{}'",
                body.unwrap_or("")
            ));
        }
    }
    Ok(())
}

fn named_param<'a>(method: &str, params: &'a Value) -> Option<&'a str> {
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        _ => return None,
    };
    params.get(key).and_then(Value::as_str)
}

/// The 2026-07-28 revision makes the headers mandatory and the header version equal `_meta`'s.
fn check_modern(
    parts: &Parts,
    method: &str,
    id: &Value,
    params: &Value,
    sse: bool,
) -> Result<(), Box<Response<GatewayBody>>> {
    let mismatch = |m: String| {
        Box::new(answer(
            StatusCode::BAD_REQUEST,
            &error(id, jsonrpc::HEADER_MISMATCH, m, None),
            sse,
        ))
    };
    if header_str(parts, "mcp-method").is_none() {
        return Err(mismatch("the Mcp-Method header is required".into()));
    }
    if named_param(method, params).is_some() && header_str(parts, "mcp-name").is_none() {
        return Err(mismatch(format!(
            "the Mcp-Name header is required for {method}"
        )));
    }
    let meta = params
        .pointer("/_meta/io.modelcontextprotocol~1protocolVersion")
        .and_then(Value::as_str);
    let header = header_str(parts, VERSION_HEADER);
    if meta != header {
        return Err(mismatch(format!(
            "MCP-Protocol-Version header {} does not match _meta protocolVersion {}",
            header.unwrap_or("(none)"),
            meta.unwrap_or("(none)")
        )));
    }
    Ok(())
}

/// What `/mcp` offers. List changes are announced on a session's `GET /mcp` stream, which
/// the stateless revision does not have.
fn capabilities(list_changed: bool) -> Value {
    json!({
        "tools": {"listChanged": list_changed},
        "prompts": {"listChanged": list_changed},
        "resources": {"listChanged": list_changed},
        "completions": {},
    })
}

fn server_info() -> Value {
    json!({"name": "palisade", "version": env!("CARGO_PKG_VERSION")})
}

fn discover() -> Value {
    json!({
        "resultType": "complete",
        "supportedVersions": [MODERN_VERSION],
        "capabilities": capabilities(false),
        "_meta": {"io.modelcontextprotocol/serverInfo": server_info()},
        "ttlMs": 0,
        "cacheScope": "private",
    })
}

fn initialize(
    gw: &Gateway,
    rt: &crate::plugins::Runtime,
    agent: &str,
    id: &Value,
    params: &Value,
    sse: bool,
) -> Response<GatewayBody> {
    let asked = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // The asked version if we speak it, else our latest (the client decides whether to go on).
    let version = HANDSHAKE_VERSIONS
        .iter()
        .find(|v| **v == asked)
        .copied()
        .unwrap_or(HANDSHAKE_VERSIONS[0]);
    let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let s = Session::new(agent, version, now);
    let caps = &rt.settings.limits;
    let opened = gw.mcp_caps.open_session(
        agent,
        &s.nonce,
        caps.mcp_sessions_per_agent,
        caps.mcp_session_idle,
    );
    if let Err(e) = opened {
        return limited(gw, id, &e, sse);
    }
    let keys = gw.mcp_session_keys(rt);
    let sealed = s.seal(&keys[0]);
    let result = json!({
        "protocolVersion": version,
        "capabilities": capabilities(true),
        "serverInfo": server_info(),
        "instructions": "Tools, prompts and resources of several MCP servers, named server__tool, server__prompt and server+uri, filtered by Palisade's policy for this agent.",
    });
    let mut r = answer(StatusCode::OK, &jsonrpc::result(id, result), sse);
    if let Ok(v) = HeaderValue::from_str(&sealed) {
        r.headers_mut().insert(SESSION_HEADER, v);
    }
    r
}

/// `DELETE /mcp`: end the session and what Palisade holds upstream for it.
async fn delete(gw: &Arc<Gateway>, parts: Parts) -> Response<GatewayBody> {
    let rt = gw.policy.current();
    let hub = gw.hub(&rt);
    let agent = match authenticate(gw, &parts).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    match session_of(gw, &rt, &hub, &parts, &agent.id, false).await {
        Ok(s) => {
            let now = now_ms();
            hub.ended.end(&s, u64::try_from(now / 1000).unwrap_or(0));
            let until = i64::try_from((s.iat + session::MAX_AGE_SECS) * 1000).unwrap_or(i64::MAX);
            if let Err(e) = gw.store.end_mcp_session(&s.nonce, until, now).await {
                tracing::warn!("MCP session ended on this replica only: {e}");
            }
            hub.end_session(&s.nonce).await;
            gw.mcp_caps.end_session(&agent.id, &s.nonce);
            let mut r = Response::new(GatewayBody::full(""));
            *r.status_mut() = StatusCode::OK;
            r
        }
        Err(r) => *r,
    }
}

/// A per-agent cap's refusal: counted, and answered 429 with `Retry-After`.
fn limited(gw: &Gateway, id: &Value, e: &CallError, sse: bool) -> Response<GatewayBody> {
    if let CallError::Limited { limit, .. } = e {
        gw.metrics.limit_refused(limit.label(), "agent");
    }
    jsonrpc::reply(&call_error(id, e).1, sse)
}

/// How often a session's event stream looks for a reload or an ended session.
const LISTEN_TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// A comment line keeps idle proxies from closing the stream.
const KEEPALIVE_TICKS: u32 = 15;

/// `GET /mcp`: the session's event stream, carrying `notifications/*/list_changed` when a
/// server announces a change or a reload changes the servers. Ends with the session.
async fn listen(gw: &Arc<Gateway>, parts: Parts) -> Response<GatewayBody> {
    let rt = gw.policy.current();
    let mut hub = gw.hub(&rt);
    let agent = match authenticate(gw, &parts).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let accepts = parts
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    if !accepts {
        let msg = error(
            &Value::Null,
            jsonrpc::INVALID_REQUEST,
            "GET /mcp is the session's event stream: send `Accept: text/event-stream`",
            None,
        );
        return answer(StatusCode::NOT_ACCEPTABLE, &msg, false);
    }
    let session = match session_of(gw, &rt, &hub, &parts, &agent.id, false).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    // The stream's place among the agent's open ones, freed when the stream task ends.
    let max = rt.settings.limits.mcp_streams_per_agent;
    let slot = match gw.mcp_caps.open_stream(&agent.id, max) {
        Ok(slot) => slot,
        Err(e) => return limited(gw, &Value::Null, &e, false),
    };
    let (tx, body) = GatewayBody::channel(16);
    let gw = gw.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let mut changes = hub.changes.subscribe();
        let mut tick = tokio::time::interval(LISTEN_TICK);
        let mut idle = 0u32;
        let note = |method: &str| {
            let msg = json!({"jsonrpc": "2.0", "method": method});
            bytes::Bytes::from(format!("event: message\ndata: {msg}\n\n"))
        };
        loop {
            let out = tokio::select! {
                c = changes.recv() => match c {
                    Ok(method) => vec![note(method)],
                    // Missed some: say everything changed.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        changes::Listing::ANNOUNCED.iter().map(|l| note(l.notification())).collect()
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    if hub.ended.is_ended(&session) {
                        return;
                    }
                    let rt = gw.policy.current();
                    let now = gw.hub(&rt);
                    if !Arc::ptr_eq(&now, &hub) {
                        // A reload changed the servers: every list may differ.
                        hub = now;
                        changes = hub.changes.subscribe();
                        changes::Listing::ANNOUNCED
                            .iter()
                            .map(|l| note(l.notification()))
                            .collect()
                    } else {
                        idle += 1;
                        if idle < KEEPALIVE_TICKS {
                            continue;
                        }
                        // The session may have ended on another replica, or expired.
                        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
                        let ended = gw.store.mcp_session_ended(&session.nonce).await;
                        if matches!(ended, Ok(true)) || session.iat + session::MAX_AGE_SECS <= now {
                            return;
                        }
                        vec![bytes::Bytes::from_static(b": keepalive\n\n")]
                    }
                }
            };
            idle = 0;
            for b in out {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        }
    });
    jsonrpc::event_stream(body)
}
