//! Users of the admin side (admins, approvers, auditors) and their API tokens.

use std::sync::Arc;

use http::request::Parts;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use palisade_store::Role;
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
