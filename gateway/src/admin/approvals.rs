//! Approval endpoints: what is waiting for humans, one request in full (arguments, agent,
//! rule, votes, countdown), a human's decision; and the approver groups users belong to.
//! Every vote, and every refused vote, is audited with who cast it.

use std::sync::Arc;

use http::request::Parts;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use palisade_store::{Approval, ApprovalState, Decision, Role, User};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{auth, ok_json, query, read_json, store_error};
use crate::app::Gateway;
use crate::approvals::Status;
use crate::core::error::CallError;
use crate::wire::GatewayBody;

type Reply = Result<Response<GatewayBody>, CallError>;

/// Who may look at approvals.
pub const VIEW: &[Role] = &[Role::Admin, Role::Approver, Role::Auditor];
/// Who may vote (group membership and ownership are checked per request).
pub const VOTE: &[Role] = &[Role::Admin, Role::Approver];

/// Most requests one listing returns.
const MAX_LIST: i64 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: Decision,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupsBody {
    groups: Vec<String>,
}

/// An approval as the API shows it: the record, its arguments as JSON, and its status with the
/// countdown.
fn view(a: &Approval, full: bool) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        if full {
            let args = serde_json::from_str(&a.arguments)
                .unwrap_or_else(|_| Value::String(a.arguments.clone()));
            o.insert("arguments".into(), args);
        } else {
            o.remove("arguments");
            o.remove("outcome");
        }
        o.insert("status".into(), Status::of(a).to_json());
    }
    v
}

/// `GET /admin/api/approvals?status=pending&limit=100`.
pub async fn list(gw: &Arc<Gateway>, parts: &Parts) -> Reply {
    auth::require(gw, parts, VIEW).await?;
    let q = query::parse(parts.uri.query());
    let state = match q.get("status").map(String::as_str) {
        None | Some("") | Some("all") => None,
        Some(s) => Some(s.parse::<ApprovalState>().map_err(store_error)?),
    };
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIST).contains(n))
            .ok_or_else(|| {
                CallError::bad_request(
                    "invalid_request",
                    format!("limit must be 1 to {MAX_LIST}, got {l:?}"),
                )
            })?,
    };
    let list = gw
        .store
        .list_approvals(state, limit)
        .await
        .map_err(store_error)?;
    let out: Vec<Value> = list.iter().map(|a| view(a, false)).collect();
    ok_json(StatusCode::OK, &out)
}

/// `GET /admin/api/approvals/{id}`: everything, arguments included.
pub async fn show(gw: &Arc<Gateway>, parts: &Parts, id: &str) -> Reply {
    auth::require(gw, parts, VIEW).await?;
    let a = gw.store.get_approval(id).await.map_err(store_error)?;
    ok_json(StatusCode::OK, &view(&a, true))
}

/// `POST /admin/api/approvals/{id}/decisions` with `{"decision": "approve"|"reject",
/// "reason": "..."}`.
pub async fn decide(gw: &Arc<Gateway>, parts: &Parts, id: &str, body: Incoming) -> Reply {
    let user = auth::require(gw, parts, VOTE).await?;
    let d: DecisionBody = read_json(body).await?;
    let a = decide_as(gw, &user, id, d.decision, &d.reason).await?;
    ok_json(StatusCode::OK, &view(&a, false))
}

/// One human's vote, under the API's rules (a rejection needs a reason; the owner may not
/// vote, nor anyone outside the approval's group; one vote a person), audited with who cast it,
/// refusals included. The API and the console both vote here.
pub async fn decide_as(
    gw: &Gateway,
    user: &User,
    id: &str,
    decision: Decision,
    reason: &str,
) -> Result<Approval, CallError> {
    auth::allow(user, VOTE)?;
    let action = format!("approval.{}", decision.as_str());
    if decision == Decision::Reject && reason.trim().is_empty() {
        return Err(CallError::bad_request(
            "invalid_request",
            "a rejection needs a reason: the agent is told it",
        ));
    }
    let rt = gw.policy.current();
    match gw
        .approvals
        .decide(&rt.settings.approvals, user, id, decision, reason)
        .await
    {
        Ok(a) => {
            gw.audit_admin(&user.name, &action, id, 200).await;
            if a.state != ApprovalState::Pending {
                let decided = format!("approval.{}", a.state.as_str());
                gw.audit_admin(&user.name, &decided, id, 200).await;
            }
            Ok(a)
        }
        Err(e) => {
            gw.audit_admin(&user.name, &format!("{action}_refused"), id, e.status())
                .await;
            Err(e)
        }
    }
}

/// A claim younger than this is taken to be a call still running (a long stream) and is kept.
const RELEASE_AFTER_MS: i64 = 10 * 60_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    reason: String,
}

/// `POST /admin/api/approvals/{id}/release` with `{"reason": "..."}` (admin): the approved call
/// claimed at least ten minutes ago never reported back (its gateway process died), so an admin
/// lets it be claimed, and run, once more, accepting that the first run may have happened.
pub async fn release(gw: &Arc<Gateway>, parts: &Parts, id: &str, body: Incoming) -> Reply {
    let user = auth::require(gw, parts, auth::ADMIN).await?;
    let b: ReleaseBody = read_json(body).await?;
    if b.reason.trim().is_empty() {
        return Err(CallError::bad_request(
            "invalid_request",
            "a release needs a reason: it may run the call a second time",
        ));
    }
    let before = crate::core::clock::now_ms() - RELEASE_AFTER_MS;
    match gw.store.release_approval_claim(id, before).await {
        Ok(a) => {
            gw.audit_admin(&user.name, "approval.release", id, 200)
                .await;
            ok_json(StatusCode::OK, &view(&a, false))
        }
        Err(e) => {
            let e = store_error(e);
            gw.audit_admin(&user.name, "approval.release_refused", id, e.status())
                .await;
            Err(e)
        }
    }
}

/// `GET /admin/api/users/{id}/groups`.
pub async fn groups(gw: &Arc<Gateway>, parts: &Parts, user_id: &str) -> Reply {
    auth::require(gw, parts, VIEW).await?;
    gw.store.get_user(user_id).await.map_err(store_error)?;
    let groups = gw.store.user_groups(user_id).await.map_err(store_error)?;
    ok_json(
        StatusCode::OK,
        &json!({"user_id": user_id, "groups": groups}),
    )
}

/// `PUT /admin/api/users/{id}/groups` with `{"groups": [...]}`: replace them.
pub async fn set_groups(gw: &Arc<Gateway>, parts: &Parts, user_id: &str, body: Incoming) -> Reply {
    let admin = auth::require(gw, parts, auth::ADMIN).await?;
    let b: GroupsBody = read_json(body).await?;
    let groups = gw
        .store
        .set_user_groups(user_id, &b.groups)
        .await
        .map_err(store_error)?;
    gw.audit_admin(
        &admin.name,
        "user.groups_set",
        &format!("{user_id} [{}]", groups.join(", ")),
        200,
    )
    .await;
    ok_json(
        StatusCode::OK,
        &json!({"user_id": user_id, "groups": groups}),
    )
}
