//! Errors become HTTP responses here and only here: one exhaustive match from [`CallError`] to
//! each ingress format's error shape (OpenAI for now), so a new error kind cannot ship unmapped.
use http::{Response, StatusCode, header};
use serde_json::json;

use super::body::GatewayBody;
use crate::error::CallError;

/// The OpenAI `error.type` for an error.
fn openai_type(e: &CallError) -> &'static str {
    match e {
        CallError::BadRequest { .. }
        | CallError::PayloadTooLarge { .. }
        | CallError::NotFound { .. }
        | CallError::MethodNotAllowed { .. }
        | CallError::Chain(_) => "invalid_request_error",
        CallError::Unauthorized(_) => "authentication_error",
        CallError::Forbidden(_) => "permission_error",
        CallError::Conflict(_) => "invalid_request_error",
        CallError::AuditUnavailable => "server_error",
        CallError::Denied { status: 429, .. } => "rate_limit_error",
        CallError::Denied { .. } | CallError::ApprovalRequired { .. } | CallError::Approval(_) => {
            "permission_error"
        }
        CallError::PluginFailed { .. }
        | CallError::Internal(_)
        | CallError::ClientClosed
        | CallError::ShuttingDown => "server_error",
        CallError::UpstreamStatus { status: 429, .. } => "rate_limit_error",
        CallError::UpstreamStatus { .. }
        | CallError::UpstreamUnavailable { .. }
        | CallError::UpstreamTimeout { .. } => "upstream_error",
    }
}

/// The JSON of an error in OpenAI's shape, also used for stream error events.
pub fn openai_error_json(e: &CallError, request_id: &str) -> serde_json::Value {
    let mut error = json!({
        "message": e.to_string(),
        "type": openai_type(e),
        "param": null,
        "code": e.code(),
        "request_id": request_id,
    });
    if let Some(plugin) = e.plugin() {
        error["plugin"] = json!(plugin);
    }
    if let CallError::Approval(r) = e {
        error["approval"] = r.status.to_json();
    }
    json!({ "error": error })
}

/// An error as an HTTP response in OpenAI's shape.
pub fn openai_error(e: &CallError, request_id: &str) -> Response<GatewayBody> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = openai_error_json(e, request_id).to_string();
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json");
    if matches!(e, CallError::Unauthorized(_)) {
        resp = resp.header(header::WWW_AUTHENTICATE, "Bearer");
    }
    resp.body(GatewayBody::full(body))
        .unwrap_or_else(|_| Response::new(GatewayBody::full("")))
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
