//! Agent endpoints: the inventory, registration (with a first key, shown once), status, keys.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};
use hyper::body::Incoming;
use palisade_store::{Agent, AgentStatus, AgentUpdate, KeyInfo, NewAgent, NewKey, User};
use serde_json::json;

use super::{auth, ok_json, query, read_json, store_error};
use crate::app::Gateway;
use crate::core::error::CallError;
use crate::wire::GatewayBody;

type Reply = Result<Response<GatewayBody>, CallError>;

pub async fn list(gw: &Arc<Gateway>, parts: &Parts) -> Reply {
    auth::require(gw, parts, auth::READ).await?;
    let agents = gw.store.list_agents().await.map_err(store_error)?;
    ok_json(StatusCode::OK, &agents)
}

pub async fn show(gw: &Arc<Gateway>, parts: &Parts, id: &str) -> Reply {
    auth::require(gw, parts, auth::READ).await?;
    let agent = gw.store.get_agent(id).await.map_err(store_error)?;
    let keys = gw.store.list_keys(id).await.map_err(store_error)?;
    ok_json(StatusCode::OK, &json!({"agent": agent, "keys": keys}))
}

/// `GET /admin/api/agents/export?format=csv|json`: the inventory for auditors.
pub async fn export(gw: &Arc<Gateway>, parts: &Parts) -> Reply {
    let user = auth::require(gw, parts, auth::READ).await?;
    let q = query::parse(parts.uri.query());
    let agents = gw.store.list_agents().await.map_err(store_error)?;
    gw.audit_admin(&user.name, "agents.export", "inventory", 200)
        .await;
    match q.get("format").map(String::as_str).unwrap_or("csv") {
        "csv" => {
            let mut r = Response::new(GatewayBody::full(palisade_store::export::agents_csv(
                &agents,
            )));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            Ok(r)
        }
        "json" => ok_json(StatusCode::OK, &agents),
        other => Err(CallError::bad_request(
            "invalid_request",
            format!("format must be csv or json, not {other:?}"),
        )),
    }
}

pub async fn create(gw: &Arc<Gateway>, parts: &Parts, body: Incoming) -> Reply {
    let user = auth::require(gw, parts, auth::ADMIN).await?;
    let new: NewAgent = read_json(body).await?;
    let (agent, key) = create_agent(gw, &user, new).await?;
    ok_json(StatusCode::CREATED, &json!({"agent": agent, "key": key}))
}

/// Register an agent with a first key (its secret exists only in the answer), audited as
/// `user`'s doing. The API and the console both create agents here; the caller checked the role.
pub async fn create_agent(
    gw: &Gateway,
    user: &User,
    new: NewAgent,
) -> Result<(Agent, NewKey), CallError> {
    let agent = gw.store.create_agent(new).await.map_err(store_error)?;
    let key = gw.store.create_key(&agent.id).await.map_err(store_error)?;
    gw.registry.invalidate();
    gw.audit_admin(&user.name, "agent.created", &agent.id, 201)
        .await;
    Ok((agent, key))
}

pub async fn update(gw: &Arc<Gateway>, parts: &Parts, id: &str, body: Incoming) -> Reply {
    let user = auth::require(gw, parts, auth::ADMIN).await?;
    let update: AgentUpdate = read_json(body).await?;
    let agent = gw
        .store
        .update_agent(id, update)
        .await
        .map_err(store_error)?;
    gw.registry.invalidate();
    gw.audit_admin(&user.name, "agent.updated", id, 200).await;
    ok_json(StatusCode::OK, &agent)
}

pub async fn set_status(gw: &Arc<Gateway>, parts: &Parts, id: &str, active: bool) -> Reply {
    let user = auth::require(gw, parts, auth::ADMIN).await?;
    let agent = set_agent_status(gw, &user, id, active).await?;
    ok_json(StatusCode::OK, &agent)
}

/// Suspend (`active` false) or activate an agent, audited as `user`'s doing.
pub async fn set_agent_status(
    gw: &Gateway,
    user: &User,
    id: &str,
    active: bool,
) -> Result<Agent, CallError> {
    let status = if active {
        AgentStatus::Active
    } else {
        AgentStatus::Suspended
    };
    let agent = gw
        .store
        .set_agent_status(id, status)
        .await
        .map_err(store_error)?;
    gw.registry.invalidate();
    let action = if active {
        "agent.activated"
    } else {
        "agent.suspended"
    };
    gw.audit_admin(&user.name, action, id, 200).await;
    Ok(agent)
}

pub async fn add_key(gw: &Arc<Gateway>, parts: &Parts, id: &str) -> Reply {
    let user = auth::require(gw, parts, auth::ADMIN).await?;
    let key = gw.store.create_key(id).await.map_err(store_error)?;
    gw.audit_admin(&user.name, "key.created", &format!("{id}/{}", key.id), 201)
        .await;
    ok_json(StatusCode::CREATED, &key)
}

/// `?grace_secs=N` keeps the old key working for N more seconds (default 0: revoked at once).
pub async fn rotate_key(gw: &Arc<Gateway>, parts: &Parts, id: &str, key: &str) -> Reply {
    let user = auth::require(gw, parts, auth::ADMIN).await?;
    let q = query::parse(parts.uri.query());
    let grace = match q.get("grace_secs") {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| {
            CallError::bad_request(
                "invalid_request",
                "grace_secs must be a whole number of seconds",
            )
        })?,
    };
    let new = rotate_agent_key(gw, &user, id, key, Duration::from_secs(grace)).await?;
    ok_json(StatusCode::CREATED, &new)
}

/// Replace an agent's key by a new one (the old one keeps working for `grace`), audited.
pub async fn rotate_agent_key(
    gw: &Gateway,
    user: &User,
    id: &str,
    key: &str,
    grace: Duration,
) -> Result<NewKey, CallError> {
    let new = gw
        .store
        .rotate_key(id, key, grace)
        .await
        .map_err(store_error)?;
    gw.registry.invalidate();
    gw.audit_admin(&user.name, "key.rotated", &format!("{id}/{key}"), 201)
        .await;
    Ok(new)
}

pub async fn revoke_key(gw: &Arc<Gateway>, parts: &Parts, id: &str, key: &str) -> Reply {
    let user = auth::require(gw, parts, auth::ADMIN).await?;
    let revoked = revoke_agent_key(gw, &user, id, key).await?;
    ok_json(StatusCode::OK, &revoked)
}

/// Revoke one of an agent's keys now, audited.
pub async fn revoke_agent_key(
    gw: &Gateway,
    user: &User,
    id: &str,
    key: &str,
) -> Result<KeyInfo, CallError> {
    let info = gw.store.get_key(key).await.map_err(store_error)?;
    if info.agent_id != id {
        return Err(CallError::NotFound {
            message: format!("agent {id:?} has no key {key:?}"),
        });
    }
    let revoked = gw.store.revoke_key(key).await.map_err(store_error)?;
    gw.registry.invalidate();
    gw.audit_admin(&user.name, "key.revoked", &format!("{id}/{key}"), 200)
        .await;
    Ok(revoked)
}
