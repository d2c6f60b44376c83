//! The table test of the error map (issue 14): one error of every kind, rendered through every
//! ingress renderer (OpenAI and Anthropic, whole and as a stream event, and JSON-RPC on `/mcp`),
//! answers with the status, code, types and JSON-RPC code documented in `docs/errors.md`. It
//! reads nothing from the document: the table below is the document's table, kept by hand.

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde_json::{Value, json};

use crate::approvals::{Refusal, Status};
use crate::call::format::Ingress;
use crate::core::domain::ChainError;
use crate::core::domain::Hold;
use crate::core::error::{CallError, Limit, PluginFault};
use crate::mcp::jsonrpc;
use crate::wire::GatewayBody;

/// One row of `docs/errors.md`.
struct Row {
    status: u16,
    code: &'static str,
    openai: &'static str,
    anthropic: &'static str,
    rpc: i64,
    retry: bool,
    plugin: Option<&'static str>,
}

const fn row(
    status: u16,
    code: &'static str,
    openai: &'static str,
    anthropic: &'static str,
    rpc: i64,
    retry: bool,
) -> Row {
    Row {
        status,
        code,
        openai,
        anthropic,
        rpc,
        retry,
        plugin: None,
    }
}

fn by(plugin: &'static str, r: Row) -> Row {
    Row {
        plugin: Some(plugin),
        ..r
    }
}

/// The variant's name; exhaustive, so a new variant stops this test compiling until it has
/// samples below (and a row in the document).
fn variant(e: &CallError) -> &'static str {
    match e {
        CallError::BadRequest { .. } => "BadRequest",
        CallError::PayloadTooLarge { .. } => "PayloadTooLarge",
        CallError::RequestTimeout { .. } => "RequestTimeout",
        CallError::Unauthorized(_) => "Unauthorized",
        CallError::NotFound { .. } => "NotFound",
        CallError::MethodNotAllowed { .. } => "MethodNotAllowed",
        CallError::Denied { .. } => "Denied",
        CallError::ApprovalRequired { .. } => "ApprovalRequired",
        CallError::Approval(_) => "Approval",
        CallError::PluginFailed { .. } => "PluginFailed",
        CallError::UpstreamStatus { .. } => "UpstreamStatus",
        CallError::UpstreamUnavailable { .. } => "UpstreamUnavailable",
        CallError::UpstreamTimeout { .. } => "UpstreamTimeout",
        CallError::AuditUnavailable => "AuditUnavailable",
        CallError::Forbidden(_) => "Forbidden",
        CallError::Conflict(_) => "Conflict",
        CallError::Chain(_) => "Chain",
        CallError::Internal(_) => "Internal",
        CallError::ClientClosed => "ClientClosed",
        CallError::ShuttingDown => "ShuttingDown",
        CallError::Limited { .. } => "Limited",
    }
}

const VARIANTS: usize = 21;

fn limited(limit: Limit) -> CallError {
    CallError::Limited {
        limit,
        scope: "agent support-bot".into(),
        max: 60,
        retry_after: 17,
    }
}

fn denied(plugin: &str, status: u16, code: &str) -> CallError {
    CallError::Denied {
        plugin: plugin.into(),
        status,
        code: code.into(),
        message: "no".into(),
    }
}

fn failed(fault: PluginFault) -> CallError {
    CallError::PluginFailed {
        plugin: "pii".into(),
        fault,
    }
}

fn upstream(status: u16) -> CallError {
    CallError::UpstreamStatus {
        provider: "openai".into(),
        status,
        message: "nope".into(),
    }
}

fn refusal(state: palisade_store::ApprovalState) -> CallError {
    CallError::Approval(Box::new(Refusal {
        plugin: "approvals".into(),
        status: Status {
            id: "apr_1".into(),
            state,
            execution: palisade_store::Execution::None,
            approvals: 0,
            approvals_needed: 1,
            group: "finance".into(),
            rule: "refunds".into(),
            reason: None,
            expires_at: 0,
            expires_in_secs: 0,
        },
    }))
}

/// Every error kind (each plugin fault, each chain error, each approval state, the statuses a
/// plugin or a provider may pick) with its documented row.
fn table() -> Vec<(CallError, Row)> {
    use crate::core::error::rpc::{
        INTERNAL_ERROR as INTERNAL, INVALID_REQUEST, REFUSED, UNAUTHORIZED,
    };
    use palisade_store::ApprovalState::{Expired, Pending, Rejected};
    const INV: &str = "invalid_request_error";
    const PERM: &str = "permission_error";
    const RATE: &str = "rate_limit_error";
    const SERVER: &str = "server_error";
    const UP: &str = "upstream_error";
    const API: &str = "api_error";
    const OVER: &str = "overloaded_error";
    let hold = Hold {
        rule: "refunds".into(),
        approvals: 1,
        group: "finance".into(),
        ttl_secs: 60,
        summary: "refund".into(),
    };
    vec![
        (
            CallError::bad_request("invalid_request", "bad"),
            row(400, "invalid_request", INV, INV, INVALID_REQUEST, false),
        ),
        (
            CallError::PayloadTooLarge { limit: 1 },
            row(
                413,
                "body_too_large",
                INV,
                "request_too_large",
                INVALID_REQUEST,
                false,
            ),
        ),
        (
            CallError::RequestTimeout {
                after: Duration::from_secs(1),
            },
            row(408, "request_timeout", INV, API, INVALID_REQUEST, true),
        ),
        (
            CallError::Unauthorized("unknown key"),
            row(
                401,
                "invalid_api_key",
                "authentication_error",
                "authentication_error",
                UNAUTHORIZED,
                false,
            ),
        ),
        (
            CallError::NotFound {
                message: "no".into(),
            },
            row(404, "not_found", INV, "not_found_error", REFUSED, false),
        ),
        (
            CallError::MethodNotAllowed {
                method: "PUT".into(),
                path: "/v1/models".into(),
            },
            row(405, "method_not_allowed", INV, INV, REFUSED, false),
        ),
        (
            CallError::Forbidden("no".into()),
            row(403, "forbidden", PERM, PERM, REFUSED, false),
        ),
        (
            CallError::Conflict("used".into()),
            row(409, "conflict", INV, INV, REFUSED, false),
        ),
        (
            CallError::Chain(ChainError::Invalid("bad signature")),
            row(400, "chain_invalid", INV, INV, REFUSED, false),
        ),
        (
            CallError::Chain(ChainError::Expired {
                age_secs: 2,
                max_age_secs: 1,
            }),
            row(400, "chain_expired", INV, INV, REFUSED, false),
        ),
        (
            CallError::Chain(ChainError::Required { agent: "a".into() }),
            row(400, "chain_required", INV, INV, REFUSED, false),
        ),
        (
            denied("model-allow", 403, "model_not_allowed"),
            by(
                "model-allow",
                row(403, "model_not_allowed", PERM, PERM, REFUSED, false),
            ),
        ),
        (
            denied("budget", 429, "budget_exceeded"),
            by(
                "budget",
                row(429, "budget_exceeded", RATE, RATE, REFUSED, false),
            ),
        ),
        (
            denied("budget", 503, "ledger_unavailable"),
            by(
                "budget",
                row(503, "ledger_unavailable", SERVER, OVER, REFUSED, true),
            ),
        ),
        (
            denied("odd", 200, "odd_status"),
            by("odd", row(403, "odd_status", PERM, PERM, REFUSED, false)),
        ),
        (
            CallError::ApprovalRequired {
                plugin: "approvals".into(),
                hold: Box::new(hold),
            },
            by(
                "approvals",
                row(403, "approval_required", PERM, PERM, REFUSED, false),
            ),
        ),
        (
            refusal(Pending),
            by(
                "approvals",
                row(403, "approval_pending", PERM, PERM, REFUSED, false),
            ),
        ),
        (
            refusal(Rejected),
            by(
                "approvals",
                row(403, "approval_rejected", PERM, PERM, REFUSED, false),
            ),
        ),
        (
            refusal(Expired),
            by(
                "approvals",
                row(403, "approval_expired", PERM, PERM, REFUSED, false),
            ),
        ),
        (
            failed(PluginFault::Trap("unreachable".into())),
            by("pii", row(500, "plugin_trap", SERVER, API, INTERNAL, false)),
        ),
        (
            failed(PluginFault::Timeout(Duration::from_millis(50))),
            by(
                "pii",
                row(500, "plugin_timeout", SERVER, API, INTERNAL, true),
            ),
        ),
        (
            failed(PluginFault::Memory(16 << 20)),
            by(
                "pii",
                row(500, "plugin_memory_exceeded", SERVER, API, INTERNAL, false),
            ),
        ),
        (
            failed(PluginFault::Init("bad config".into())),
            by(
                "pii",
                row(500, "plugin_init_failed", SERVER, API, INTERNAL, false),
            ),
        ),
        (
            failed(PluginFault::Unavailable("pool full".into())),
            by(
                "pii",
                row(500, "plugin_unavailable", SERVER, API, INTERNAL, true),
            ),
        ),
        (
            failed(PluginFault::Busy("all slots busy".into())),
            by(
                "pii",
                row(500, "plugin_unavailable", SERVER, API, INTERNAL, true),
            ),
        ),
        (
            upstream(400),
            row(400, "upstream_error", UP, INV, REFUSED, false),
        ),
        (
            upstream(429),
            row(429, "upstream_error", RATE, RATE, REFUSED, true),
        ),
        (
            upstream(500),
            row(502, "upstream_error", UP, API, REFUSED, true),
        ),
        (
            CallError::UpstreamUnavailable {
                provider: "openai".into(),
                message: "refused".into(),
            },
            row(502, "upstream_unavailable", UP, API, REFUSED, true),
        ),
        (
            CallError::UpstreamTimeout {
                provider: "openai".into(),
                after: Duration::from_secs(1),
            },
            row(504, "upstream_timeout", UP, API, REFUSED, true),
        ),
        (
            CallError::AuditUnavailable,
            row(503, "audit_unavailable", SERVER, OVER, REFUSED, true),
        ),
        (
            CallError::Internal("bug".into()),
            row(500, "internal_error", SERVER, API, INTERNAL, false),
        ),
        (
            CallError::ClientClosed,
            row(499, "client_closed", INV, API, REFUSED, false),
        ),
        (
            CallError::ShuttingDown,
            row(503, "gateway_draining", SERVER, OVER, REFUSED, true),
        ),
        (
            limited(Limit::Rpm),
            row(429, "rate_limit_rpm", RATE, RATE, REFUSED, true),
        ),
        (
            limited(Limit::Tpm),
            row(429, "rate_limit_tpm", RATE, RATE, REFUSED, true),
        ),
        (
            limited(Limit::Concurrent),
            row(429, "concurrency_limit", RATE, RATE, REFUSED, true),
        ),
        (
            limited(Limit::McpSessions),
            row(429, "mcp_session_limit", RATE, RATE, REFUSED, true),
        ),
        (
            limited(Limit::McpStreams),
            row(429, "mcp_stream_limit", RATE, RATE, REFUSED, true),
        ),
        (
            limited(Limit::PluginInstances),
            row(429, "plugin_instance_limit", RATE, RATE, REFUSED, true),
        ),
    ]
}

fn whole(r: Response<GatewayBody>) -> (u16, http::HeaderMap, Value) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = match r.into_body() {
        GatewayBody::Full(Some(b)) => serde_json::from_slice(&b).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, headers, body)
}

/// The JSON of the one `data:` line of an SSE event.
fn event_data(b: &Bytes) -> Value {
    let text = String::from_utf8_lossy(b);
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_default();
    serde_json::from_str(data).unwrap_or(Value::Null)
}

#[test]
fn every_error_renders_its_documented_row_in_every_ingress() {
    let rid = "req_table";
    let table = table();
    let mut seen: Vec<&str> = table.iter().map(|(e, _)| variant(e)).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), VARIANTS, "a variant has no sample: {seen:?}");

    for (e, want) in &table {
        let what = format!("{} ({e})", variant(e));
        let retry = if want.retry { "true" } else { "false" };
        let plugin = want.plugin.map_or(Value::Null, |p| json!(p));

        // OpenAI, whole.
        let (status, headers, body) = whole(Ingress::OpenAi.error(e, rid));
        assert_eq!(status, want.status, "{what}: OpenAI status");
        let err = &body["error"];
        assert_eq!(err["code"], want.code, "{what}: OpenAI code {body}");
        assert_eq!(err["type"], want.openai, "{what}: OpenAI type");
        assert_eq!(err["request_id"], rid, "{what}");
        assert_eq!(err["plugin"], plugin, "{what}: OpenAI plugin");
        assert_eq!(err["message"], e.to_string(), "{what}");
        assert_eq!(headers["x-should-retry"], retry, "{what}: retryable");
        assert_eq!(headers["content-type"], "application/json", "{what}");

        // Anthropic, whole: the SDK's shape, with the same identity inside `error`.
        let (status, headers, body) = whole(Ingress::Anthropic.error(e, rid));
        assert_eq!(status, want.status, "{what}: Anthropic status");
        assert_eq!(body["type"], "error", "{what}");
        let err = &body["error"];
        assert_eq!(err["type"], want.anthropic, "{what}: Anthropic type");
        assert_eq!(err["code"], want.code, "{what}: Anthropic code {body}");
        assert_eq!(err["request_id"], rid, "{what}");
        assert_eq!(body["request_id"], rid, "{what}");
        assert_eq!(err["plugin"], plugin, "{what}: Anthropic plugin");
        assert_eq!(err["message"], e.to_string(), "{what}");
        assert_eq!(headers["x-should-retry"], retry, "{what}: retryable");

        // Stream error events: the same JSON as the whole answers.
        let openai = event_data(&Ingress::OpenAi.egress().error(e, rid));
        assert_eq!(openai["error"]["code"], want.code, "{what}: OpenAI event");
        assert_eq!(openai["error"]["type"], want.openai, "{what}: OpenAI event");
        let event = Ingress::Anthropic.egress().error(e, rid);
        assert!(
            String::from_utf8_lossy(&event).starts_with("event: error\n"),
            "{what}"
        );
        let anthropic = event_data(&event);
        assert_eq!(anthropic["type"], "error", "{what}: Anthropic event");
        assert_eq!(anthropic["error"]["type"], want.anthropic, "{what}");
        assert_eq!(anthropic["error"]["code"], want.code, "{what}");
        assert_eq!(anthropic["error"]["plugin"], plugin, "{what}");

        // JSON-RPC on /mcp.
        let (status, msg) = jsonrpc::call_error(&json!(7), e);
        assert_eq!(status.as_u16(), want.status, "{what}: JSON-RPC status");
        assert_eq!(msg["id"], 7, "{what}");
        assert_eq!(msg["error"]["code"], want.rpc, "{what}: JSON-RPC code");
        let data = &msg["error"]["data"];
        assert_eq!(data["code"], want.code, "{what}: JSON-RPC data.code");
        assert_eq!(data["plugin"], plugin, "{what}: JSON-RPC data.plugin");
        assert_eq!(data["retryable"], want.retry, "{what}: JSON-RPC retryable");
    }
}

#[test]
fn a_refused_approval_carries_its_state_in_every_face() {
    let e = refusal(palisade_store::ApprovalState::Pending);
    let (_, _, openai) = whole(Ingress::OpenAi.error(&e, "r"));
    let (_, _, anthropic) = whole(Ingress::Anthropic.error(&e, "r"));
    let (_, rpc) = jsonrpc::call_error(&Value::Null, &e);
    for approval in [
        &openai["error"]["approval"],
        &anthropic["error"]["approval"],
        &rpc["error"]["data"]["approval"],
    ] {
        assert_eq!(approval["id"], "apr_1");
        assert_eq!(approval["state"], "pending");
    }
}

#[test]
fn a_limits_refusal_carries_retry_after_in_every_face() {
    let e = limited(Limit::Rpm);
    for r in [
        Ingress::OpenAi.error(&e, "r"),
        Ingress::Anthropic.error(&e, "r"),
    ] {
        let (status, headers, _) = whole(r);
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "17");
    }
    let (_, msg) = jsonrpc::call_error(&json!(1), &e);
    assert_eq!(msg["error"]["data"]["retry_after"], 17);
    let (status, headers, _) = whole(jsonrpc::reply(&msg, false));
    assert_eq!(
        (status, &headers["retry-after"]),
        (429, &"17".parse().unwrap())
    );
    // Any other error is a 200 carrying the JSON-RPC error, with no `Retry-After`.
    let (_, other) = jsonrpc::call_error(&json!(1), &CallError::AuditUnavailable);
    let (status, headers, _) = whole(jsonrpc::reply(&other, false));
    assert_eq!(status, 200);
    assert!(headers.get("retry-after").is_none());
    // Errors without a limit carry none either.
    let (_, headers, _) = whole(Ingress::OpenAi.error(&CallError::AuditUnavailable, "r"));
    assert!(headers.get("retry-after").is_none());
}
