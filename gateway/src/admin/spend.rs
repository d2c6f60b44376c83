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
use crate::core::error::CallError;
use crate::wire::GatewayBody;

pub fn window(s: Option<&str>) -> Result<Window, CallError> {
    match s.unwrap_or("day") {
        // The rate limits' counters (`scope=limit:`).
        "minute" => Ok(Window::Minute),
        "hour" => Ok(Window::Hour),
        "day" => Ok(Window::Day),
        "month" => Ok(Window::Month),
        "total" => Ok(Window::Total),
        other => Err(CallError::bad_request(
            "invalid_request",
            format!("window must be minute, hour, day, month or total, not {other:?}"),
        )),
    }
}

pub async fn spend(gw: &Arc<Gateway>, parts: &Parts) -> Result<Response<GatewayBody>, CallError> {
    auth::require(gw, parts, auth::READ).await?;
    let q = query::parse(parts.uri.query());
    let window = window(q.get("window").map(String::as_str))?;
    let scope = q.get("scope").map(String::as_str).unwrap_or("");
    let counters = counters(gw, window, scope).await?;
    ok_json(
        StatusCode::OK,
        &json!({"window": window, "scope": scope, "counters": counters}),
    )
}

/// The ledger's counters of the current `window` whose scope starts with `scope`.
pub async fn counters(
    gw: &Gateway,
    window: Window,
    scope: &str,
) -> Result<Vec<palisade_store::Spend>, CallError> {
    // This replica's settled spend is committed first, so the view is current for it (other
    // replicas' lags by at most their last audit batch). `reserved` counts the leases of
    // headroom replicas hold as well as calls in flight.
    if let Some(l) = gw.services.ledger.leased()
        && let Err(e) = l.sync().await
    {
        tracing::warn!("ledger sync before the spend view failed: {e}");
    }
    gw.store.spend(window, scope).await.map_err(store_error)
}

/// One agent's place in a run's delegation tree: its own calls and cost, and whom it delegated to.
#[derive(serde::Serialize, Default)]
pub struct RunNode {
    pub agent: String,
    pub calls: u64,
    pub denied: u64,
    pub cost_micro_usd: i64,
    pub tokens: i64,
    pub children: Vec<RunNode>,
}

impl RunNode {
    /// The node for `path` (agents root first), made on the way if missing.
    fn at(&mut self, path: &[String]) -> &mut RunNode {
        let Some((first, rest)) = path.split_first() else {
            return self;
        };
        let i = match self.children.iter().position(|c| &c.agent == first) {
            Some(i) => i,
            None => {
                self.children.push(RunNode {
                    agent: first.clone(),
                    ..Default::default()
                });
                self.children.len() - 1
            }
        };
        self.children[i].at(rest)
    }

    fn total(&self) -> (u64, i64) {
        self.children
            .iter()
            .map(RunNode::total)
            .fold((self.calls, self.cost_micro_usd), |a, b| {
                (a.0 + b.0, a.1 + b.1)
            })
    }
}

/// `GET /admin/api/spend/runs/{run_id}`: who called whom in one delegation run, with calls and
/// cost at each node, from the audit log.
pub async fn run_tree(
    gw: &Arc<Gateway>,
    parts: &Parts,
    run_id: &str,
) -> Result<Response<GatewayBody>, CallError> {
    auth::require(gw, parts, auth::READ).await?;
    let tree = run_tree_of(gw, run_id).await?;
    ok_json(StatusCode::OK, &tree)
}

/// A run's delegation tree, as `GET /admin/api/spend/runs/{id}` and the console show it.
#[derive(serde::Serialize)]
pub struct RunTree {
    pub run_id: String,
    /// Calls and cost of the whole run.
    pub calls: u64,
    pub cost_micro_usd: i64,
    /// The run's root agents (normally one).
    pub tree: Vec<RunNode>,
}

/// Build a run's tree from the audit log. NotFound if no call of it was recorded.
pub async fn run_tree_of(gw: &Gateway, run_id: &str) -> Result<RunTree, CallError> {
    use futures_util::StreamExt;
    let filter = palisade_store::AuditFilter {
        run_id: Some(run_id.to_string()),
        ..Default::default()
    };
    let mut rows = Box::pin(gw.store.audit_stream(filter));
    let mut root = RunNode {
        agent: String::new(),
        ..Default::default()
    };
    while let Some(row) = rows.next().await {
        let row = row.map_err(store_error)?;
        if row.kind == "admin" {
            continue;
        }
        let node = root.at(&row.chain);
        node.calls += 1;
        node.cost_micro_usd += row.cost_micro_usd;
        node.tokens += row.input_tokens + row.output_tokens;
        if row.status >= 400 {
            node.denied += 1;
        }
    }
    if root.children.is_empty() {
        return Err(CallError::NotFound {
            message: format!("no calls recorded for run {run_id:?}"),
        });
    }
    let (calls, cost_micro_usd) = root.total();
    Ok(RunTree {
        run_id: run_id.to_string(),
        calls,
        cost_micro_usd,
        tree: root.children,
    })
}
