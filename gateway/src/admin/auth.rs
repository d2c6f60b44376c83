//! Who is calling the admin API, and whether their roles allow the endpoint.

use http::request::Parts;
use palisade_store::{Role, User};

use crate::app::Gateway;
use crate::call::request::agent_key;
use crate::core::error::CallError;

/// Any signed-in user.
pub const ANY: &[Role] = &[Role::Admin, Role::Approver, Role::Auditor];
/// Reading the inventory and the audit log.
pub const READ: &[Role] = &[Role::Admin, Role::Auditor];
/// Changing anything.
pub const ADMIN: &[Role] = &[Role::Admin];

/// The user behind the request's bearer token, if one of their roles is in `allowed`.
pub async fn require(gw: &Gateway, parts: &Parts, allowed: &[Role]) -> Result<User, CallError> {
    let token = agent_key(&parts.headers).ok_or(CallError::Unauthorized(
        "admin API: send `Authorization: Bearer <user token>`",
    ))?;
    let user = gw
        .store
        .authenticate_user(token)
        .await
        .map_err(|e| CallError::Internal(format!("user store unavailable: {e}")))?
        .ok_or(CallError::Unauthorized("unknown or revoked user token"))?;
    allow(&user, allowed)?;
    Ok(user)
}

/// Whether one of `user`'s roles is in `allowed` (the console checks its session's user here,
/// as the API checks the bearer's).
pub fn allow(user: &User, allowed: &[Role]) -> Result<(), CallError> {
    if allows(user, allowed) {
        return Ok(());
    }
    let need: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
    Err(CallError::Forbidden(format!(
        "user '{}' lacks the role for this endpoint (needs one of: {})",
        user.name,
        need.join(", ")
    )))
}

/// `true` if one of `user`'s roles is in `allowed`.
pub fn allows(user: &User, allowed: &[Role]) -> bool {
    allowed.iter().any(|r| user.has_role(*r))
}
