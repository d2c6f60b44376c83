//! The spend view: `GET /admin/api/spend?window=day&scope=agent:` lists the ledger's counters
//! of the current window (settled spend and what calls in flight hold), by scope and unit.
//! Scopes are `agent:<id>`, `team:<name>`, `run:<id>` (as the `budget` plugin names them), or
//! any key a plugin reserved under.

use std::sync::Arc;

use http::request::Parts;
use http::{Response, StatusCode};
use palisade_store::Window;
use serde_json::json;

use super::{auth, ok_json, query, store_error};
use crate::app::Gateway;
use crate::error::CallError;
use crate::wire::GatewayBody;

fn window(s: Option<&str>) -> Result<Window, CallError> {
    match s.unwrap_or("day") {
        "hour" => Ok(Window::Hour),
        "day" => Ok(Window::Day),
        "month" => Ok(Window::Month),
        "total" => Ok(Window::Total),
        other => Err(CallError::bad_request(
            "invalid_request",
            format!("window must be hour, day, month or total, not {other:?}"),
        )),
    }
}

pub async fn spend(gw: &Arc<Gateway>, parts: &Parts) -> Result<Response<GatewayBody>, CallError> {
    auth::require(gw, parts, auth::READ).await?;
    let q = query::parse(parts.uri.query());
    let window = window(q.get("window").map(String::as_str))?;
    let scope = q.get("scope").map(String::as_str).unwrap_or("");
    let counters = gw.store.spend(window, scope).await.map_err(store_error)?;
    ok_json(
        StatusCode::OK,
        &json!({"window": window, "scope": scope, "counters": counters}),
    )
}
