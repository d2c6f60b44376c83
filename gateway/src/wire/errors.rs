//! Errors as HTTP answers in the two LLM ingress formats: OpenAI's `{"error": {...}}` and
//! Anthropic's `{"type": "error", "error": {...}}`, whole or as a stream's error event. What
//! each error says (status, code, types, retryability) is decided once, by
//! [`CallError::spec`]; these functions only write it down, so both faces carry the same
//! `code`, `plugin` and `request_id`.
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::body::GatewayBody;
use crate::core::error::{CallError, ErrorSpec};

/// The fields both formats put inside `error`, next to their own `type` and `message`.
fn details(error: &mut Value, spec: &ErrorSpec<'_>, request_id: &str) {
    error["code"] = json!(spec.code);
    error["request_id"] = json!(request_id);
    if let Some(plugin) = spec.plugin {
        error["plugin"] = json!(plugin);
    }
    if let Some(approval) = &spec.approval {
        error["approval"] = approval.clone();
    }
}

/// The JSON of an error in OpenAI's shape, also used for stream error events.
pub fn openai_error_json(e: &CallError, request_id: &str) -> Value {
    let spec = e.spec();
    let mut error = json!({
        "message": e.to_string(),
        "type": spec.openai_type,
        "param": null,
    });
    details(&mut error, &spec, request_id);
    json!({ "error": error })
}

/// The JSON of an error in Anthropic's shape, also used for stream `error` events. The extras
/// sit inside `error`, where the official SDKs keep whatever they do not know; `request_id`
/// is also at the top, where Anthropic's own API puts it.
pub fn anthropic_error_json(e: &CallError, request_id: &str) -> Value {
    let spec = e.spec();
    let mut error = json!({"type": spec.anthropic_type, "message": e.to_string()});
    details(&mut error, &spec, request_id);
    json!({"type": "error", "error": error, "request_id": request_id})
}

/// An error as an HTTP response in OpenAI's shape.
pub fn openai_error(e: &CallError, request_id: &str) -> Response<GatewayBody> {
    http_error(&e.spec(), openai_error_json(e, request_id))
}

/// An error as an HTTP response in Anthropic's shape.
pub fn anthropic_error(e: &CallError, request_id: &str) -> Response<GatewayBody> {
    http_error(&e.spec(), anthropic_error_json(e, request_id))
}

fn http_error(spec: &ErrorSpec<'_>, body: Value) -> Response<GatewayBody> {
    let status = StatusCode::from_u16(spec.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, body.to_string());
    let h = r.headers_mut();
    if spec.status == 401 {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    // The SDKs otherwise retry every 409, 429 and 5xx, including a budget already spent.
    let retry = if spec.retryable { "true" } else { "false" };
    h.insert("x-should-retry", HeaderValue::from_static(retry));
    if let Some(secs) = spec.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// A JSON success response.
pub fn json_response(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
