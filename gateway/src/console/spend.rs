//! Spend: the ledger's counters per agent, team or run in a window (with a chart), the runs of
//! the last day, and a run's delegation tree with the calls and cost of every hop.

use std::collections::HashMap;

use futures_util::StreamExt;
use http::StatusCode;
use maud::{Markup, html};
use palisade_store::{AuditFilter, Unit};

use super::agents::urlencode;
use super::charts::{Bar, bars};
use super::layout::{page, time, usd};
use super::session::Session;
use super::{Form, Page, field, html as respond, require};
use crate::admin::spend::{RunNode, counters, run_tree_of, window};
use crate::admin::{auth, store_error};
use crate::app::Gateway;

const DAY_MS: i64 = 86_400_000;
/// Most events read to list the day's runs.
const MAX_RUN_ROWS: i64 = 50_000;

/// One run of the last day: (last call, calls, agents seen, cost).
struct RunSummary {
    last_ms: i64,
    calls: u64,
    agents: Vec<String>,
    cost: i64,
}

async fn recent_runs(gw: &Gateway) -> Result<Vec<(String, RunSummary)>, super::ConsoleError> {
    let filter = AuditFilter {
        from_ms: Some(crate::core::clock::now_ms() - DAY_MS),
        limit: Some(MAX_RUN_ROWS),
        ..Default::default()
    };
    let mut rows = Box::pin(gw.store.audit_stream(filter));
    let mut runs: HashMap<String, RunSummary> = HashMap::new();
    while let Some(r) = rows.next().await {
        let r = r.map_err(store_error)?;
        if r.kind == "admin" || r.run_id.is_empty() {
            continue;
        }
        let e = runs.entry(r.run_id.clone()).or_insert(RunSummary {
            last_ms: 0,
            calls: 0,
            agents: Vec::new(),
            cost: 0,
        });
        e.last_ms = e.last_ms.max(r.time_ms);
        e.calls += 1;
        e.cost += r.cost_micro_usd;
        if let Some(a) = &r.agent
            && !e.agents.contains(a)
        {
            e.agents.push(a.clone());
        }
    }
    let mut v: Vec<_> = runs.into_iter().collect();
    // Runs with delegation first (the interesting ones), then the newest.
    v.sort_by_key(|r| std::cmp::Reverse((r.1.agents.len() > 1, r.1.last_ms)));
    v.truncate(30);
    Ok(v)
}

/// `GET /console/spend?window=day&scope=agent:`.
pub async fn page_of(gw: &Gateway, s: &Session, f: &Form) -> Page {
    require(s, auth::READ)?;
    let w_name = match field(f, "window") {
        "" => "day",
        w => w,
    };
    let w = window(Some(w_name))?;
    let scope = match field(f, "scope") {
        "" => "agent:",
        sc => sc,
    };
    let mut cs = counters(gw, w, scope).await?;
    cs.sort_by_key(|c| std::cmp::Reverse(c.spent));
    let money: Vec<Bar> = cs
        .iter()
        .filter(|c| c.unit == Unit::MicroUsd)
        .take(20)
        .map(|c| Bar {
            label: c
                .scope
                .split_once(':')
                .map_or(c.scope.as_str(), |x| x.1)
                .to_string(),
            value: c.spent as f64,
            alert: 0.0,
        })
        .collect();
    let runs = recent_runs(gw).await?;
    let body = html! {
        form.filters method="get" action="/console/spend" {
            label { "window" select name="window" {
                @for k in ["hour", "day", "month", "total"] { option value=(k) selected[k == w_name] { (k) } }
            } }
            label { "scope" select name="scope" {
                @for (k, l) in [("agent:", "per agent"), ("team:", "per team"), ("run:", "per run"), ("", "everything")] {
                    option value=(k) selected[k == scope] { (l) }
                }
            } }
            button.primary type="submit" { "Show" }
        }
        (bars("chart-spend", "spend in the window (USD)", &money, |v| usd(v as i64)))
        table #counters {
            tr { th { "scope" } th { "unit" } th { "spent" } th { "reserved now" } th { "window start" } }
            @for c in &cs {
                tr {
                    td { code { (c.scope) } } td { (c.unit.as_str()) }
                    td { @if c.unit == Unit::MicroUsd { (usd(c.spent as i64)) } @else { (c.spent) } }
                    td { (c.reserved) } td { (time(c.window_start_ms)) }
                }
            }
        }
        h2 { "Runs of the last 24 hours" }
        form.filters method="get" action="/console/spend/runs/" {
            label { "open a run by id" input name="run" placeholder="run_..." required; }
        }
        table #runs {
            tr { th { "run" } th { "agents" } th { "calls" } th { "cost" } th { "last call" } }
            @for (id, r) in &runs {
                tr {
                    td { a href={ "/console/spend/runs/" (urlencode(id)) } { code { (id) } } }
                    td { (r.agents.join(" → ")) } td { (r.calls) } td { (usd(r.cost)) } td { (time(r.last_ms)) }
                }
            }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page(s, "/console/spend", "Spend", body),
    ))
}

fn node(n: &RunNode) -> Markup {
    html! {
        li.hop {
            strong.agent { (n.agent) } " — "
            span.cost { (usd(n.cost_micro_usd)) } ", "
            (n.calls) " calls" @if n.denied > 0 { ", " span.bad { (n.denied) " refused" } } ", "
            (n.tokens) " tokens"
            @if !n.children.is_empty() { ul { @for c in &n.children { (node(c)) } } }
        }
    }
}

/// `GET /console/spend/runs/{id}`: the delegation tree.
pub async fn run(gw: &Gateway, s: &Session, run_id: &str) -> Page {
    require(s, auth::READ)?;
    let t = run_tree_of(gw, run_id).await?;
    let body = html! {
        p #run-total { (t.calls) " calls, " (usd(t.cost_micro_usd)) " in all." }
        div.tree #run-tree { ul { @for n in &t.tree { (node(n)) } } }
        p { a href={ "/console/audit?run_id=" (urlencode(run_id)) } { "Its events in the audit log" } }
    };
    Ok(respond(
        StatusCode::OK,
        page(s, "/console/spend", &format!("Run {run_id}"), body),
    ))
}
