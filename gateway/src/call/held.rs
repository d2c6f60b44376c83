//! Held LLM calls: a plugin's hold goes to the approvals gate, which waits (bounded) for the
//! humans. The call either runs, holding the one claim to execute it, or is answered with the
//! approval's state (pending, rejected, expired) as an error a model can act on, or, when an
//! identical call already ran, with that call's stored answer instead of a second execution.
//!
//! Outcomes are stored as `{"status": <http status>, "body": "<canonical answer>"}` (a stream
//! assembled into its whole answer, `super::replay`), and replayed in the shape the identical
//! call asks for: its ingress format, whole or streamed. A claimed call that fails before its
//! answer (upstream error, a plugin's deny, a dropped stream) leaves its claim to record that
//! the operation may have run: it is never run twice.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use super::format::Ingress;
use super::replay;
use crate::app::Gateway;
use crate::approvals::{Admission, ExecutionClaim, HeldCall};
use crate::core::domain::Hold;
use crate::core::error::CallError;
use crate::plugins::Runtime;
use crate::plugins::bindings::Call;
use crate::wire::GatewayBody;

/// A held call the gate let through.
pub enum Held {
    /// Approved, and this call runs it.
    Proceed(ExecutionClaim),
    /// Already ran: the stored answer.
    Replay(Response<GatewayBody>),
}

/// Hand a hold to the gate; a pending, rejected or expired approval is the call's error.
/// `replay_as`: the caller's format and whether it asked for a stream.
pub async fn admit(
    gw: &Gateway,
    rt: &Runtime,
    call: &Call,
    plugin: &str,
    hold: &Hold,
    replay_as: (Ingress, bool),
) -> Result<Held, CallError> {
    let held = HeldCall { call, plugin, hold };
    match gw.approvals.admit(&rt.settings.approvals, held).await? {
        Admission::Proceed(claim) => Ok(Held::Proceed(claim)),
        Admission::AlreadyExecuted { status, outcome } => {
            let stored: serde_json::Value = serde_json::from_str(&outcome).unwrap_or_default();
            let code = stored["status"].as_u64().unwrap_or(0);
            let body = stored["body"].as_str().unwrap_or_default();
            let answer = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .filter(|_| code == 200);
            match answer {
                Some(answer) => {
                    let mut r = render(answer, replay_as)?;
                    if let Ok(v) = HeaderValue::from_str(&format!("{}; replayed", status.id)) {
                        r.headers_mut().insert("palisade-approval", v);
                    }
                    Ok(Held::Replay(r))
                }
                None => Err(CallError::Conflict(format!(
                    "approval {} was already used by an identical call whose answer was not \
                     kept; it will not run again",
                    status.id
                ))),
            }
        }
        Admission::Refused(r) => Err(CallError::Approval(Box::new(r))),
    }
}

/// A stored canonical answer in the caller's format, whole or as a stream.
fn render(
    answer: serde_json::Value,
    (ingress, stream): (Ingress, bool),
) -> Result<Response<GatewayBody>, CallError> {
    if !stream {
        return ingress.answer(answer.to_string());
    }
    let mut egress = ingress.egress();
    let mut events: Vec<Bytes> = Vec::new();
    for chunk in replay::chunks_of(&answer) {
        events.extend(egress.chunk(&chunk));
    }
    events.extend(egress.done());
    let body: Vec<u8> = events.concat();
    let mut r = Response::new(GatewayBody::full(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    Ok(r)
}

/// Store a claimed call's answer for later identical calls.
pub async fn record(gw: &Gateway, claim: ExecutionClaim, status: StatusCode, body: &str) {
    let id = claim.approval_id().to_string();
    let outcome = json!({"status": status.as_u16(), "body": body}).to_string();
    if let Err(e) = gw.approvals.record_outcome(claim, &outcome).await {
        tracing::error!(approval = %id, "cannot store an approved call's outcome: {e}");
    }
}
