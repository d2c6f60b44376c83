//! Audit: search the log (agent, team, date range, kind, verdict, status), open one event,
//! export the selection as CSV (streamed, with the store's formula-neutralised cells, audited
//! as the API's export is), and verify the hash chain.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Response, StatusCode, header};
use maud::html;
use palisade_store::{AuditFilter, AuditRecord};

use super::layout::{csrf, page, time, usd};
use super::session::Session;
use super::{ConsoleError, Form, Page, field, html as respond, require, with_headers};
use crate::admin::audit::{filter_from_query, verify_as};
use crate::admin::{auth, store_error};
use crate::app::Gateway;
use crate::wire::GatewayBody;

/// Most rows the search page lists.
const MAX_SHOWN: usize = 500;
/// Most rows the search reads to find them (a verdict filter runs over what it reads).
const MAX_SCANNED: i64 = 100_000;

/// The filter the form asks for; the verdict (not a store column) is matched per row.
fn filter_of(f: &Form) -> Result<(AuditFilter, Option<String>), ConsoleError> {
    let filter = filter_from_query(f)?;
    let verdict = Some(field(f, "verdict").to_string()).filter(|v| !v.is_empty());
    Ok((filter, verdict))
}

/// Whether one of the row's plugin verdicts is `verdict`.
fn has_verdict(r: &AuditRecord, verdict: &str) -> bool {
    r.verdicts.as_array().is_some_and(|vs| {
        vs.iter()
            .any(|v| v.get("verdict").and_then(|x| x.as_str()) == Some(verdict))
    })
}

/// Every key the selection is made of: what [`filter_from_query`] reads, and the verdict.
const KEYS: [&str; 11] = [
    "agent",
    "team",
    "owner",
    "from",
    "to",
    "kind",
    "target",
    "verdict",
    "status",
    "run_id",
    "request_id",
];
/// The keys the search form has no field for (a link such as a run's "its events" sets them);
/// the form carries them as hidden inputs so a new search keeps them.
const HIDDEN_KEYS: [&str; 4] = ["owner", "target", "run_id", "request_id"];

/// The query string of the current selection (for the export link).
fn query_of(f: &Form) -> String {
    KEYS.iter()
        .filter_map(|k| {
            let v = field(f, k);
            (!v.is_empty()).then(|| format!("{k}={}", super::agents::urlencode(v)))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `GET /console/audit?agent=&team=&from=&to=&kind=&verdict=&status=` (and `owner`, `target`,
/// `run_id`, `request_id`, which links set).
pub async fn search(gw: &Gateway, s: &Session, f: &Form) -> Page {
    require(s, auth::READ)?;
    let (mut filter, verdict) = filter_of(f)?;
    filter.limit = Some(MAX_SCANNED);
    let mut rows = Box::pin(gw.store.audit_stream(filter));
    let mut shown = Vec::new();
    let mut more = false;
    while let Some(r) = rows.next().await {
        let r = r.map_err(store_error)?;
        if verdict.as_deref().is_some_and(|v| !has_verdict(&r, v)) {
            continue;
        }
        if shown.len() == MAX_SHOWN {
            more = true;
            break;
        }
        shown.push(r);
    }
    let q = query_of(f);
    let v = |k: &str| field(f, k).to_string();
    let body = html! {
        form.filters #audit-search method="get" action="/console/audit" {
            label { "agent" input name="agent" value=(v("agent")); }
            label { "team" input name="team" value=(v("team")); }
            label { "from (date or RFC 3339)" input name="from" value=(v("from")) placeholder="2026-03-08"; }
            label { "to (a date includes that day)" input name="to" value=(v("to")) placeholder="2026-03-15"; }
            label { "kind" select name="kind" {
                @for k in ["", "llm-call", "tool-call", "tool-list", "admin"] {
                    option value=(k) selected[v("kind") == k] { @if k.is_empty() { "any" } @else { (k) } }
                }
            } }
            label { "verdict" select name="verdict" {
                @for k in ["", "allow", "deny", "rewrite", "hold", "route", "error"] {
                    option value=(k) selected[v("verdict") == k] { @if k.is_empty() { "any" } @else { (k) } }
                }
            } }
            label { "status" input name="status" value=(v("status")) size="4"; }
            @for k in HIDDEN_KEYS {
                @if !v(k).is_empty() { input type="hidden" name=(k) value=(v(k)); }
            }
            button.primary #search type="submit" { "Search" }
            a #export href={ "/console/audit/export.csv?" (q) } { "Export this selection as CSV" }
        }
        form.inline method="post" action="/console/audit/verify" {
            (csrf(s))
            button #verify type="submit" { "Verify the hash chain" }
        }
        @let hidden: Vec<String> = HIDDEN_KEYS.iter().filter(|k| !v(k).is_empty()).map(|k| format!("{k} = {}", v(k))).collect();
        @if !hidden.is_empty() {
            p.muted #also-filtered { "Also filtered by " (hidden.join(", ")) ". " a href="/console/audit" { "Clear all filters" } }
        }
        p.muted #count { (shown.len()) " events" @if more { " (the first " (MAX_SHOWN) "; narrow the search or export)" } "." }
        table #events {
            tr { th { "seq" } th { "time" } th { "agent" } th { "kind" } th { "target" } th { "decided by" } th { "status" } th { "cost" } }
            @for r in &shown {
                tr {
                    td { a href={ "/console/audit/" (r.seq) } { (r.seq) } }
                    td { (time(r.time_ms)) }
                    td { (r.agent.as_deref().or(r.owner.as_deref()).unwrap_or("")) }
                    td { (r.kind) } td { code { (r.target) } }
                    td { (r.decided_by.as_deref().unwrap_or("")) }
                    td class=(if r.status >= 400 { "bad" } else { "ok" }) { (r.status) " " (r.error_code.as_deref().unwrap_or("")) }
                    td { (usd(r.cost_micro_usd)) }
                }
            }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page(s, "/console/audit", "Audit", body),
    ))
}

/// `GET /console/audit/{seq}`: one event, every field.
pub async fn event(gw: &Gateway, s: &Session, seq: &str) -> Page {
    require(s, auth::READ)?;
    // Sequence numbers start at 1; below that (i64::MIN included) there is nothing to find.
    let not_found = || ConsoleError::NotFound(format!("/console/audit/{seq}"));
    let n: i64 = seq.parse().map_err(|_| not_found())?;
    let after = n.checked_sub(1).filter(|a| *a >= 0).ok_or_else(not_found)?;
    let filter = AuditFilter {
        after_seq: Some(after),
        limit: Some(1),
        ..Default::default()
    };
    let mut rows = Box::pin(gw.store.audit_stream(filter));
    let r = match rows.next().await {
        Some(r) => r.map_err(store_error)?,
        None => return Err(ConsoleError::NotFound(format!("audit event {n}"))),
    };
    if r.seq != n {
        return Err(ConsoleError::NotFound(format!("audit event {n}")));
    }
    let json = serde_json::to_string_pretty(&r).unwrap_or_default();
    let body = html! {
        p { "At " (time(r.time_ms)) ", run " a href={ "/console/spend/runs/" (super::agents::urlencode(&r.run_id)) } { code { (r.run_id) } } }
        pre #event { (json) }
    };
    Ok(respond(
        StatusCode::OK,
        page(s, "/console/audit", &format!("Audit event {n}"), body),
    ))
}

/// `GET /console/audit/export.csv?...`: the selection as CSV, streamed.
pub async fn export(gw: &Gateway, s: &Session, f: &Form) -> Page {
    require(s, auth::READ)?;
    let (filter, verdict) = filter_of(f)?;
    let what = serde_json::to_string(&filter).unwrap_or_default();
    gw.audit_admin(&s.user.name, "audit.exported", &what, 200)
        .await;
    let (tx, body) = GatewayBody::channel(64);
    let mut rows = Box::pin(gw.store.audit_stream(filter));
    tokio::spawn(async move {
        if tx
            .send(Bytes::from(palisade_store::export::audit_csv_header()))
            .await
            .is_err()
        {
            return;
        }
        while let Some(row) = rows.next().await {
            let r = match row {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("console audit export stopped: {e}");
                    return;
                }
            };
            if verdict.as_deref().is_some_and(|v| !has_verdict(&r, v)) {
                continue;
            }
            let line = palisade_store::export::audit_csv_row(&r);
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    let mut r = with_headers(Response::new(body), "text/csv; charset=utf-8");
    r.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"palisade-audit.csv\""),
    );
    Ok(r)
}

/// `POST /console/audit/verify`.
pub async fn verify(gw: &Gateway, s: &Session) -> Page {
    require(s, auth::READ)?;
    let report = verify_as(gw, &s.user).await?;
    let body = html! {
        @if report.ok {
            p.ok #verify-result { "The hash chain holds: " (report.rows) " events checked." }
        } @else {
            p.bad #verify-result { "The hash chain is broken after " (report.rows) " events." }
            @if let Some(b) = &report.first_bad { pre { (serde_json::to_string_pretty(b).unwrap_or_default()) } }
        }
        p.muted { "Head: seq " (report.last_seq) ", hash " code { (report.last_hash) } " (worth keeping elsewhere)." }
        p { a href="/console/audit" { "Back to the audit log" } }
    };
    Ok(respond(
        StatusCode::OK,
        page(s, "/console/audit", "Audit verification", body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_link_carries_every_filter_key() {
        let q: Form = [
            ("agent", "a"),
            ("team", "t"),
            ("owner", "o"),
            ("from", "2026-01-01"),
            ("to", "2026-01-02"),
            ("kind", "llm-call"),
            ("target", "x&y"),
            ("verdict", "deny"),
            ("status", "403"),
            ("run_id", "run_1"),
            ("request_id", "req_2"),
            ("csrf", "not a filter"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            query_of(&q),
            "agent=a&team=t&owner=o&from=2026-01-01&to=2026-01-02&kind=llm-call&target=x%26y\
             &verdict=deny&status=403&run_id=run_1&request_id=req_2"
        );
        // Whatever the filter reads from the link, the page read from its own query.
        let back = crate::admin::query::parse(Some(&query_of(&q)));
        assert_eq!(filter_of(&back).unwrap(), filter_of(&q).unwrap());
    }
}
