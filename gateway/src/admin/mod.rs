//! The admin API under `/admin/api/`, and `/admin/status`. The CLI uses only this API; the
//! console (`crate::console`) calls the same action functions the endpoints call
//! ([`agents::create_agent`], [`approvals::decide_as`], ...), so both check, change and audit
//! alike. Every endpoint names the roles it admits, checked in one place ([`auth`]); every
//! change is audited with who made it.
//!
//! | endpoint | roles |
//! |---|---|
//! | `GET /admin/status`, `GET /admin/api/whoami` | any |
//! | `GET /admin/api/agents[/{id}]`, `GET /admin/api/agents/export` | admin, auditor |
//! | `POST /admin/api/agents`, `PATCH`/`suspend`/`activate`/`keys...` | admin |
//! | `GET /admin/api/audit/export`, `GET /admin/api/audit/verify` | admin, auditor |
//! | `GET /admin/api/spend?window=day&scope=agent:`, `GET /admin/api/spend/runs/{id}` | admin, auditor |
//! | `GET`/`POST /admin/api/users`, `GET`/`POST /admin/api/users/{id}/tokens` | admin |
//! | `DELETE /admin/api/users/{id}/tokens/{token}`, `PUT /admin/api/users/{id}/roles`, `POST .../disable`/`enable` | admin |
//! | `GET /admin/api/approvals[?status=pending]`, `GET /admin/api/approvals/{id}` | admin, approver, auditor |
//! | `POST /admin/api/approvals/{id}/decisions` | admin, approver (group members, not the agent's owner) |
//! | `POST /admin/api/approvals/{id}/release` (a claim a dead process left running) | admin |
//! | `GET /admin/api/users/{id}/groups` / `PUT` | any / admin |

pub mod agents;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod query;
pub mod spend;
pub mod status;
pub mod users;

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use palisade_store::StoreError;
use serde::de::DeserializeOwned;

use crate::app::Gateway;
use crate::core::error::CallError;
use crate::wire::GatewayBody;
use crate::wire::errors::json_response;

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 1 << 20;

/// A store error as the admin API reports it.
pub fn store_error(e: StoreError) -> CallError {
    match e {
        StoreError::NotFound { .. } => CallError::NotFound {
            message: e.to_string(),
        },
        StoreError::Conflict { .. } => CallError::Conflict(e.to_string()),
        StoreError::Invalid(m) => CallError::bad_request("invalid_request", m),
        other => CallError::Internal(other.to_string()),
    }
}

fn ok_json(
    status: StatusCode,
    v: &impl serde::Serialize,
) -> Result<Response<GatewayBody>, CallError> {
    let body = serde_json::to_vec(v).map_err(|e| CallError::Internal(e.to_string()))?;
    Ok(json_response(status, Bytes::from(body)))
}

async fn read_json<T: DeserializeOwned>(body: Incoming) -> Result<T, CallError> {
    let bytes = http_body_util::Limited::new(body, MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|_| CallError::PayloadTooLarge {
            limit: MAX_ADMIN_BODY,
        })?
        .to_bytes();
    let bytes = if bytes.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| CallError::bad_request("invalid_json", format!("request body: {e}")))
}

/// Route an admin request. `None`: not an admin path.
pub async fn route(
    gw: &Arc<Gateway>,
    parts: &Parts,
    body: Incoming,
) -> Option<Result<Response<GatewayBody>, CallError>> {
    let path = parts.uri.path();
    if path == "/admin/status" {
        return Some(status::status(gw, parts).await);
    }
    let rest = path.strip_prefix("/admin/api/")?;
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let m = &parts.method;
    Some(match (m, segs.as_slice()) {
        (&Method::GET, ["whoami"]) => users::whoami(gw, parts).await,
        (&Method::GET, ["agents"]) => agents::list(gw, parts).await,
        (&Method::POST, ["agents"]) => agents::create(gw, parts, body).await,
        (&Method::GET, ["agents", "export"]) => agents::export(gw, parts).await,
        (&Method::GET, ["agents", id]) => agents::show(gw, parts, id).await,
        (&Method::PATCH, ["agents", id]) => agents::update(gw, parts, id, body).await,
        (&Method::POST, ["agents", id, "suspend"]) => {
            agents::set_status(gw, parts, id, false).await
        }
        (&Method::POST, ["agents", id, "activate"]) => {
            agents::set_status(gw, parts, id, true).await
        }
        (&Method::POST, ["agents", id, "keys"]) => agents::add_key(gw, parts, id).await,
        (&Method::POST, ["agents", id, "keys", key, "rotate"]) => {
            agents::rotate_key(gw, parts, id, key).await
        }
        (&Method::DELETE, ["agents", id, "keys", key]) => {
            agents::revoke_key(gw, parts, id, key).await
        }
        (&Method::GET, ["audit", "export"]) => audit::export(gw, parts).await,
        (&Method::GET, ["audit", "verify"]) => audit::verify(gw, parts).await,
        (&Method::GET, ["spend"]) => spend::spend(gw, parts).await,
        (&Method::GET, ["spend", "runs", run]) => spend::run_tree(gw, parts, run).await,
        (&Method::GET, ["users"]) => users::list(gw, parts).await,
        (&Method::POST, ["users"]) => users::create(gw, parts, body).await,
        (&Method::POST, ["users", id, "tokens"]) => users::add_token(gw, parts, id).await,
        (&Method::GET, ["users", id, "tokens"]) => users::tokens(gw, parts, id).await,
        (&Method::DELETE, ["users", id, "tokens", token]) => {
            users::revoke_token(gw, parts, id, token).await
        }
        (&Method::PUT, ["users", id, "roles"]) => users::set_roles(gw, parts, id, body).await,
        (&Method::POST, ["users", id, "disable"]) => users::set_disabled(gw, parts, id, true).await,
        (&Method::POST, ["users", id, "enable"]) => users::set_disabled(gw, parts, id, false).await,
        (&Method::GET, ["users", id, "groups"]) => approvals::groups(gw, parts, id).await,
        (&Method::PUT, ["users", id, "groups"]) => approvals::set_groups(gw, parts, id, body).await,
        (&Method::GET, ["approvals"]) => approvals::list(gw, parts).await,
        (&Method::GET, ["approvals", id]) => approvals::show(gw, parts, id).await,
        (&Method::POST, ["approvals", id, "release"]) => {
            approvals::release(gw, parts, id, body).await
        }
        (&Method::POST, ["approvals", id, "decisions"]) => {
            approvals::decide(gw, parts, id, body).await
        }
        _ => Err(CallError::NotFound {
            message: format!("no admin endpoint {m} {path}"),
        }),
    })
}
