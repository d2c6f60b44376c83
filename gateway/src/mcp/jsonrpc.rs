//! JSON-RPC 2.0 as `/mcp` speaks it: message shapes, the spec's error codes, and answers as
//! JSON or as a one-event SSE stream (for clients that accept only `text/event-stream`).

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::core::error::{CallError, rpc};
use crate::wire::GatewayBody;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = rpc::INVALID_REQUEST;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = rpc::INTERNAL_ERROR;
/// Resource not found (up to 2025-11-25; 2026-07-28 uses -32602).
pub const RESOURCE_NOT_FOUND: i64 = -32002;
/// Session not found (the TS SDK's code; the spec fixes only the 404).
pub const SESSION_NOT_FOUND: i64 = -32001;
/// 2026-07-28: an `Mcp-Method`/`Mcp-Name` header disagrees with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: unsupported protocol version (with `data.supported`).
pub const UNSUPPORTED_VERSION: i64 = -32022;
/// Palisade's own codes, outside the reserved range: the agent key was refused.
pub const UNAUTHORIZED: i64 = rpc::UNAUTHORIZED;
/// The gateway cannot serve the call (audit log down, chain token refused, ...).
pub const REFUSED: i64 = rpc::REFUSED;

pub fn error(id: &Value, code: i64, message: impl Into<String>, data: Option<Value>) -> Value {
    let mut e = json!({"code": code, "message": message.into()});
    if let Some(d) = data {
        e["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": e})
}

pub fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A tool result the model can read and act on.
pub fn tool_error(text: impl Into<String>) -> Value {
    json!({"content": [{"type": "text", "text": text.into()}], "isError": true})
}

/// A gateway error as a JSON-RPC error, with the HTTP status, JSON-RPC code and stable code
/// (in `data.code`, with `data.plugin` where one decided) of [`CallError::spec`].
pub fn call_error(id: &Value, e: &CallError) -> (StatusCode, Value) {
    let spec = e.spec();
    let status = StatusCode::from_u16(spec.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut data = json!({"code": spec.code, "retryable": spec.retryable});
    if let Some(plugin) = spec.plugin {
        data["plugin"] = json!(plugin);
    }
    if let Some(approval) = spec.approval {
        data["approval"] = approval;
    }
    if let Some(secs) = spec.retry_after {
        data["retry_after"] = json!(secs);
    }
    (
        status,
        error(id, spec.jsonrpc_code, e.to_string(), Some(data)),
    )
}

/// The `Retry-After` of a JSON-RPC error a limit answered (its `data.retry_after`): such an
/// answer goes out as HTTP 429 with that header, whichever path made it.
pub fn retry_after(msg: &Value) -> Option<u64> {
    msg.pointer("/error/data/retry_after")
        .and_then(Value::as_u64)
}

/// An answer carrying one JSON-RPC message: 200, or 429 with `Retry-After` for a limit's
/// refusal.
pub fn reply(msg: &Value, sse: bool) -> Response<GatewayBody> {
    match retry_after(msg) {
        Some(secs) => {
            let mut r = answer(StatusCode::TOO_MANY_REQUESTS, msg, sse);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
        None => answer(StatusCode::OK, msg, sse),
    }
}

/// Whether the client wants SSE: it accepts `text/event-stream` but not `application/json`.
pub fn wants_sse(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    accept.contains("text/event-stream")
        && !accept.contains("application/json")
        && !accept.contains("*/*")
}

/// An answer carrying one JSON-RPC message.
pub fn answer(status: StatusCode, msg: &Value, sse: bool) -> Response<GatewayBody> {
    let (ctype, body) = if sse {
        (
            "text/event-stream",
            format!("event: message\ndata: {msg}\n\n"),
        )
    } else {
        ("application/json", msg.to_string())
    };
    let mut r = Response::new(GatewayBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    // Answers are per agent (filtered lists): never cached by anything in between.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A `200` event stream fed by a task (progress, or a session's notifications); never cached.
pub fn event_stream(body: GatewayBody) -> Response<GatewayBody> {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `202 Accepted`, no body (notifications and client responses).
pub fn accepted() -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::full(""));
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}
