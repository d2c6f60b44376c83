//! The overview: calls, denials and spend over the last hour and day (from the audit log, as
//! SVG), the agents closest to their daily caps, open circuit breakers, approvals waiting.
//! Readers of the registry (admin, auditor) see it all; an approver sees the approvals.

use futures_util::StreamExt;
use maud::{Markup, html};
use palisade_store::{ApprovalState, AuditFilter, Unit, Window};

use super::charts::{Bar, bars};
use super::layout::{self, page, usd};
use super::session::Session;
use super::{ConsoleError, Page, html as respond};
use crate::admin::{auth, spend};
use crate::app::Gateway;
use crate::core::clock::now_ms;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// The overview reads at most this many events of the last day (a busier day is sampled short:
/// the newest are the ones left out, and the page says so).
const MAX_ROWS: i64 = 200_000;

/// Calls, denials and cost in one time bucket.
#[derive(Default, Clone, Copy)]
struct Bucket {
    calls: u64,
    denied: u64,
    cost: i64,
}

struct Activity {
    /// 12 five-minute buckets of the last hour, oldest first.
    hour: Vec<Bucket>,
    /// 24 hourly buckets of the last day, oldest first.
    day: Vec<Bucket>,
    truncated: bool,
}

async fn activity(gw: &Gateway, now: i64) -> Result<Activity, ConsoleError> {
    let filter = AuditFilter {
        from_ms: Some(now - DAY_MS),
        limit: Some(MAX_ROWS),
        ..Default::default()
    };
    let mut a = Activity {
        hour: vec![Bucket::default(); 12],
        day: vec![Bucket::default(); 24],
        truncated: false,
    };
    let mut rows = Box::pin(gw.store.audit_stream(filter));
    let mut n = 0;
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| ConsoleError::Call(crate::admin::store_error(e)))?;
        n += 1;
        if row.kind == "admin" {
            continue;
        }
        let age = now - row.time_ms;
        let add = |b: &mut Bucket| {
            b.calls += 1;
            b.denied += u64::from(row.status >= 400);
            b.cost += row.cost_micro_usd;
        };
        if (0..DAY_MS).contains(&age) {
            add(&mut a.day[23 - (age / HOUR_MS) as usize]);
        }
        if (0..HOUR_MS).contains(&age) {
            add(&mut a.hour[11 - (age / (5 * 60_000)) as usize]);
        }
    }
    a.truncated = n >= MAX_ROWS;
    Ok(a)
}

fn sum(b: &[Bucket]) -> Bucket {
    b.iter().fold(Bucket::default(), |acc, x| Bucket {
        calls: acc.calls + x.calls,
        denied: acc.denied + x.denied,
        cost: acc.cost + x.cost,
    })
}

fn call_bars(b: &[Bucket], label: impl Fn(usize) -> String) -> Vec<Bar> {
    b.iter()
        .enumerate()
        .map(|(i, x)| Bar {
            label: label(i),
            value: x.calls as f64,
            alert: x.denied as f64,
        })
        .collect()
}

/// An agent's daily cap in micro-USD from its registry budgets (`usd.day` or `micro_usd.day`).
fn daily_cap(budgets: &serde_json::Value) -> Option<i64> {
    if let Some(m) = budgets.pointer("/micro_usd/day").and_then(|v| v.as_i64()) {
        return Some(m);
    }
    budgets
        .pointer("/usd/day")
        .and_then(|v| v.as_f64())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| (v * 1e6).round() as i64)
}

/// (agent, spent today, daily cap), the fullest first.
async fn closest_to_caps(gw: &Gateway) -> Result<Vec<(String, i64, i64)>, ConsoleError> {
    let agents = gw
        .store
        .list_agents()
        .await
        .map_err(crate::admin::store_error)?;
    let counters = spend::counters(gw, Window::Day, "agent:").await?;
    let mut out: Vec<(String, i64, i64)> = agents
        .iter()
        .filter_map(|a| {
            let cap = daily_cap(&a.budgets)?;
            let scope = format!("agent:{}", a.id);
            let spent = counters
                .iter()
                .filter(|c| c.scope == scope && c.unit == Unit::MicroUsd)
                .map(|c| i64::try_from(c.spent + c.reserved).unwrap_or(i64::MAX))
                .sum::<i64>();
            Some((a.id.clone(), spent, cap))
        })
        .collect();
    let ratio = |(_, s, c): &(String, i64, i64)| if *c > 0 { *s as f64 / *c as f64 } else { 1.0 };
    out.sort_by(|a, b| ratio(b).total_cmp(&ratio(a)));
    out.truncate(8);
    Ok(out)
}

/// `GET /console`.
pub async fn show(gw: &Gateway, s: &Session) -> Page {
    let now = now_ms();
    let reader = auth::allows(&s.user, auth::READ);
    let pending = gw
        .store
        .list_approvals(Some(ApprovalState::Pending), 20)
        .await
        .map_err(crate::admin::store_error)?;
    let mut body = html! {};
    if reader {
        let a = activity(gw, now).await?;
        let caps = closest_to_caps(gw).await?;
        let (h, d) = (sum(&a.hour), sum(&a.day));
        let breakers: Vec<(String, &'static str)> = gw
            .breakers()
            .all()
            .into_iter()
            .map(|(t, b)| (t, b.state().name()))
            .filter(|(_, st)| *st != "closed")
            .collect();
        body = html! {
            div.cards {
                (card("calls-hour", "Calls, last hour", &h.calls.to_string()))
                (card("denials-hour", "Denied, last hour", &h.denied.to_string()))
                (card("spend-hour", "Spend, last hour", &usd(h.cost)))
                (card("calls-day", "Calls, last 24 h", &d.calls.to_string()))
                (card("denials-day", "Denied, last 24 h", &d.denied.to_string()))
                (card("spend-day", "Spend, last 24 h", &usd(d.cost)))
            }
            @if a.truncated { p.muted { "The day had more than " (MAX_ROWS) " events; the charts show the first." } }
            h2 { "Calls (denied in red)" }
            div.cards {
                (bars("chart-calls-hour", "last hour, per 5 minutes", &call_bars(&a.hour, |i| format!("-{}m", 60 - i * 5)), |v| format!("{v:.0}")))
                (bars("chart-calls-day", "last 24 hours, per hour", &call_bars(&a.day, |i| format!("-{}h", 24 - i)), |v| format!("{v:.0}")))
            }
            h2 { "Spend" }
            div.cards {
                (bars("chart-spend-hour", "last hour, per 5 minutes", &a.hour.iter().enumerate().map(|(i, b)| Bar { label: format!("-{}m", 60 - i * 5), value: b.cost as f64, alert: 0.0 }).collect::<Vec<_>>(), |v| usd(v as i64)))
                (bars("chart-spend-day", "last 24 hours, per hour", &a.day.iter().enumerate().map(|(i, b)| Bar { label: format!("-{}h", 24 - i), value: b.cost as f64, alert: 0.0 }).collect::<Vec<_>>(), |v| usd(v as i64)))
            }
            h2 { "Closest to their daily caps" }
            @if caps.is_empty() { p.muted { "No agent has a daily budget in its registry entry." } }
            @else {
                table #caps {
                    tr { th { "agent" } th { "spent today" } th { "daily cap" } th { "used" } }
                    @for (agent, spent, cap) in &caps {
                        tr {
                            td { a href={ "/console/agents/" (super::agents::urlencode(agent)) } { (agent) } }
                            td { (usd(*spent)) } td { (usd(*cap)) }
                            td { @if *cap > 0 { (format!("{:.0}%", *spent as f64 * 100.0 / *cap as f64)) } @else { "—" } }
                        }
                    }
                }
            }
            h2 { "Circuit breakers not closed" }
            @if breakers.is_empty() { p.muted #breakers-ok { "All closed." } }
            @else {
                table #breakers { @for (t, st) in &breakers { tr { td { code { (t) } } td { (layout::badge(st)) } } } }
            }
        };
    }
    let body = html! {
        (body)
        h2 { "Approvals waiting" }
        @if pending.is_empty() { p.muted #no-pending { "Nothing waits for a human." } }
        @else {
            table #pending {
                tr { th { "id" } th { "agent" } th { "operation" } th { "votes" } th { "expires" } }
                @for p in &pending {
                    tr {
                        td { a href={ "/console/approvals/" (super::agents::urlencode(&p.id)) } { code { (p.id) } } }
                        td { (p.agent_id) } td { code { (p.target) } } td { (p.approvals()) " of " (p.approvals_needed) }
                        td { (layout::time(p.expires_at)) }
                    }
                }
            }
        }
    };
    Ok(respond(
        http::StatusCode::OK,
        page(s, "/console", "Overview", body),
    ))
}

fn card(id: &str, label: &str, value: &str) -> Markup {
    html! { div.card id=(id) { div.muted { (label) } div.n { (value) } } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_from_budgets() {
        assert_eq!(
            daily_cap(&serde_json::json!({"usd": {"day": 0.25}})),
            Some(250_000)
        );
        assert_eq!(
            daily_cap(&serde_json::json!({"micro_usd": {"day": 7}})),
            Some(7)
        );
        assert_eq!(daily_cap(&serde_json::json!({"usd": {"month": 1}})), None);
    }
}
