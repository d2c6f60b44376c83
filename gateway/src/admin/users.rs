//! Users of the admin side (admins, approvers, auditors) and their API tokens: create, list,
//! add and revoke tokens, change roles, disable and enable. A revoked token or a disabled user
//! stops authenticating at once, console sessions included. The last enabled admin with a live
//! token can be neither demoted nor disabled, nor lose that last token (nobody could administer
//! the gateway after); the store checks and changes in one transaction, so two admins acting on
//! each other at once cannot both succeed.

use std::sync::Arc;

use http::request::Parts;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use palisade_store::{Role, TokenInfo};
use serde::Deserialize;
use serde_json::json;

use super::{auth, ok_json, read_json, store_error};
use crate::app::Gateway;
use crate::core::error::CallError;
use crate::wire::GatewayBody;

type Reply = Result<Response<GatewayBody>, CallError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    #[serde(default)]
    email: String,
    roles: Vec<Role>,
}

pub async fn whoami(gw: &Arc<Gateway>, parts: &Parts) -> Reply {
    let user = auth::require(gw, parts, auth::ANY).await?;
    ok_json(StatusCode::OK, &user)
}

pub async fn list(gw: &Arc<Gateway>, parts: &Parts) -> Reply {
    auth::require(gw, parts, auth::ADMIN).await?;
    ok_json(
        StatusCode::OK,
        &gw.store.list_users().await.map_err(store_error)?,
    )
}

/// Create a user and a first token, shown once.
pub async fn create(gw: &Arc<Gateway>, parts: &Parts, body: Incoming) -> Reply {
    let admin = auth::require(gw, parts, auth::ADMIN).await?;
    let new: NewUser = read_json(body).await?;
    let user = gw
        .store
        .create_user(&new.name, &new.email, &new.roles)
        .await
        .map_err(store_error)?;
    let token = gw
        .store
        .create_user_token(&user.id)
        .await
        .map_err(store_error)?;
    gw.audit_admin(&admin.name, "user.created", &user.name, 201)
        .await;
    ok_json(StatusCode::CREATED, &json!({"user": user, "token": token}))
}

pub async fn add_token(gw: &Arc<Gateway>, parts: &Parts, id: &str) -> Reply {
    let admin = auth::require(gw, parts, auth::ADMIN).await?;
    let token = gw.store.create_user_token(id).await.map_err(store_error)?;
    gw.audit_admin(&admin.name, "user.token_created", id, 201)
        .await;
    ok_json(StatusCode::CREATED, &token)
}

/// `GET /admin/api/users/{id}/tokens`: a user's tokens (never their secrets).
pub async fn tokens(gw: &Arc<Gateway>, parts: &Parts, id: &str) -> Reply {
    auth::require(gw, parts, auth::ADMIN).await?;
    gw.store.get_user(id).await.map_err(store_error)?;
    let list: Vec<TokenInfo> = gw.store.list_user_tokens(id).await.map_err(store_error)?;
    ok_json(StatusCode::OK, &list)
}

/// `DELETE /admin/api/users/{id}/tokens/{token_id}`: revoke one token now.
pub async fn revoke_token(gw: &Arc<Gateway>, parts: &Parts, id: &str, token: &str) -> Reply {
    let admin = auth::require(gw, parts, auth::ADMIN).await?;
    let list = gw.store.list_user_tokens(id).await.map_err(store_error)?;
    if !list.iter().any(|t| t.id == token) {
        return Err(CallError::NotFound {
            message: format!("user {id:?} has no token {token:?}"),
        });
    }
    // The store refuses (409) to revoke the last live token of the last enabled admin.
    gw.store
        .revoke_user_token(token)
        .await
        .map_err(store_error)?;
    gw.audit_admin(
        &admin.name,
        "user.token_revoked",
        &format!("{id}/{token}"),
        200,
    )
    .await;
    let list = gw.store.list_user_tokens(id).await.map_err(store_error)?;
    let revoked = list.into_iter().find(|t| t.id == token);
    ok_json(StatusCode::OK, &revoked)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesBody {
    roles: Vec<Role>,
}

/// `PUT /admin/api/users/{id}/roles` with `{"roles": [...]}`: replace them.
pub async fn set_roles(gw: &Arc<Gateway>, parts: &Parts, id: &str, body: Incoming) -> Reply {
    let admin = auth::require(gw, parts, auth::ADMIN).await?;
    let b: RolesBody = read_json(body).await?;
    // The store refuses (409) to demote the last enabled admin with a live token, atomically.
    let user = gw
        .store
        .set_user_roles(id, &b.roles)
        .await
        .map_err(store_error)?;
    let names: Vec<&str> = user.roles.iter().map(|r| r.as_str()).collect();
    gw.audit_admin(
        &admin.name,
        "user.roles_set",
        &format!("{id} [{}]", names.join(", ")),
        200,
    )
    .await;
    ok_json(StatusCode::OK, &user)
}

/// `POST /admin/api/users/{id}/disable` or `/enable`.
pub async fn set_disabled(gw: &Arc<Gateway>, parts: &Parts, id: &str, disabled: bool) -> Reply {
    let admin = auth::require(gw, parts, auth::ADMIN).await?;
    // The store refuses (409) to disable the last enabled admin with a live token, atomically.
    let user = gw
        .store
        .set_user_disabled(id, disabled)
        .await
        .map_err(store_error)?;
    let action = if disabled {
        "user.disabled"
    } else {
        "user.enabled"
    };
    gw.audit_admin(&admin.name, action, id, 200).await;
    ok_json(StatusCode::OK, &user)
}
