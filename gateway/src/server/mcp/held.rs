//! Held MCP calls: what the approvals gate made of a tool call a plugin held, and how the
//! answer carries the approval's state (`_meta["palisade/approval"]`) back to the agent.

use serde_json::{Value, json};

use super::call::Ctx;
use crate::approvals::{Admission, ExecutionClaim, HeldCall};
use crate::core::domain::Hold;
use crate::core::error::CallError;
use crate::mcp::jsonrpc::{error, tool_error};
use crate::plugins::bindings::Call;

/// The `_meta` key of an approval's state in a tool result.
pub const APPROVAL_META: &str = "palisade/approval";

/// What the approvals gate made of a held tool call.
pub(super) enum Gated {
    /// Approved, and this call holds the one claim to run it.
    Proceed(ExecutionClaim),
    /// Answered without running: the stored result of the identical call that ran, or the
    /// approval's state (pending, rejected, expired); with the audit's error code.
    Answer(Value, Option<String>),
}

/// A tool result carrying the approval's state in `_meta`.
pub(super) fn with_approval(mut v: Value, approval: Value) -> Value {
    if let Value::Object(m) = &mut v {
        let meta = m.entry("_meta").or_insert_with(|| json!({}));
        if let Value::Object(meta) = meta {
            meta.insert(APPROVAL_META.into(), approval);
        } else {
            *meta = json!({ APPROVAL_META: approval });
        }
    }
    v
}

/// Hand a hold to the approvals gate, which waits (bounded) for the humans.
pub(super) async fn gated(
    ctx: &Ctx<'_>,
    call: &Call,
    plugin: &str,
    hold: &Hold,
) -> Result<Gated, CallError> {
    let held = HeldCall { call, plugin, hold };
    match ctx
        .gw
        .approvals
        .admit(&ctx.rt.settings.approvals, held)
        .await?
    {
        Admission::Proceed(claim) => Ok(Gated::Proceed(claim)),
        Admission::AlreadyExecuted { status, outcome } => {
            let stored: Value = serde_json::from_str(&outcome).unwrap_or_default();
            let mut meta = status.to_json();
            meta["replayed"] = json!(true);
            let result = match stored["body"].as_str().map(serde_json::from_str::<Value>) {
                Some(Ok(v @ Value::Object(_))) if stored["status"] == 200 => v,
                _ => {
                    let text = format!(
                        "approval {} was already used by an identical call whose result was not \
                         kept; it will not run again",
                        status.id
                    );
                    return Ok(Gated::Answer(
                        with_approval(tool_error(text), meta),
                        Some("approval_used".into()),
                    ));
                }
            };
            Ok(Gated::Answer(with_approval(result, meta), None))
        }
        Admission::Refused(r) => Ok(Gated::Answer(
            with_approval(tool_error(r.status.message()), r.status.to_json()),
            Some(r.status.code().into()),
        )),
    }
}

/// Store a claimed call's tool result for later identical calls (the LLM path's format).
pub(super) async fn record(ctx: &Ctx<'_>, claim: ExecutionClaim, result: &Value) {
    let id = claim.approval_id().to_string();
    let outcome = json!({"status": 200, "body": result.to_string()}).to_string();
    if let Err(e) = ctx.gw.approvals.record_outcome(claim, &outcome).await {
        tracing::error!(approval = %id, "cannot store an approved tool call's result: {e}");
    }
}

/// A refusal of a prompt or resource (which have no error results): the message, with the
/// stable code and what else the tool result carried (an approval's state) in `data`.
pub(super) fn refusal(id: &Value, code: i64, stable: &str, tool_result: &Value) -> Value {
    let text = tool_result
        .pointer("/content/0/text")
        .and_then(Value::as_str)
        .unwrap_or("refused by policy");
    let mut data = json!({"code": stable});
    if let Some(a) = tool_result.pointer(&format!("/_meta/{APPROVAL_META}")) {
        data["approval"] = a.clone();
    }
    error(id, code, text, Some(data))
}
