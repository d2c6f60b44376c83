//! Approvals: the inbox of held operations, one request in full (the exact operation and its
//! arguments, the votes so far, who may still vote), and the vote itself, which goes through
//! [`crate::admin::approvals::decide_as`] like the API's: the owner cannot vote, approvers are
//! distinct, only the approval's group decides, and every vote (or refusal) is audited.

use http::StatusCode;
use maud::html;
use palisade_store::{Approval, ApprovalState, Decision};

use super::agents::urlencode;
use super::layout::{badge, csrf, page, time};
use super::session::Session;
use super::{ConsoleError, Form, Page, field, html as respond, redirect, require};
use crate::admin::approvals::{VIEW, VOTE, decide_as};
use crate::admin::{auth, store_error};
use crate::app::Gateway;

/// `GET /console/approvals`.
pub async fn inbox(gw: &Gateway, s: &Session) -> Page {
    require(s, VIEW)?;
    let pending = gw
        .store
        .list_approvals(Some(ApprovalState::Pending), 200)
        .await
        .map_err(store_error)?;
    let recent: Vec<Approval> = gw
        .store
        .list_approvals(None, 50)
        .await
        .map_err(store_error)?
        .into_iter()
        .filter(|a| a.state != ApprovalState::Pending)
        .take(20)
        .collect();
    let body = html! {
        h2 { "Waiting (" (pending.len()) ")" }
        @if pending.is_empty() { p.muted #inbox-empty { "Nothing waits for a human." } }
        @else {
            table #inbox {
                tr { th { "id" } th { "agent" } th { "owner" } th { "operation" } th { "rule" } th { "group" } th { "votes" } th { "expires" } }
                @for a in &pending {
                    tr {
                        td { a href={ "/console/approvals/" (urlencode(&a.id)) } { code { (a.id) } } }
                        td { (a.agent_id) } td { (a.owner) }
                        td { (a.kind) " " code { (a.target) } }
                        td { (a.rule) } td { (a.group) }
                        td { (a.approvals()) " of " (a.approvals_needed) }
                        td { (time(a.expires_at)) }
                    }
                }
            }
        }
        h2 { "Recently decided" }
        table #decided {
            tr { th { "id" } th { "agent" } th { "operation" } th { "state" } th { "reason" } }
            @for a in &recent {
                tr {
                    td { a href={ "/console/approvals/" (urlencode(&a.id)) } { code { (a.id) } } }
                    td { (a.agent_id) } td { code { (a.target) } }
                    td { (badge(a.state.as_str())) } td { (a.reason.as_deref().unwrap_or("")) }
                }
            }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page(s, "/console/approvals", "Approvals", body),
    ))
}

/// Users who may still vote on `a`: enabled voters of its group, not its owner (unless the
/// config allows it), not yet voted.
async fn may_still_vote(gw: &Gateway, a: &Approval) -> Result<Vec<String>, ConsoleError> {
    let owner_may = gw.policy.current().settings.approvals.owner_may_approve;
    let mut out = Vec::new();
    for u in gw.store.list_users().await.map_err(store_error)? {
        if u.disabled_at.is_some()
            || !auth::allows(&u, VOTE)
            || (!owner_may && crate::approvals::is_owner(&a.owner, &u))
            || a.votes.iter().any(|v| v.voter_id == u.id)
        {
            continue;
        }
        let groups = gw.store.user_groups(&u.id).await.map_err(store_error)?;
        if groups.contains(&a.group) {
            out.push(u.name);
        }
    }
    Ok(out)
}

/// `GET /console/approvals/{id}`.
pub async fn show(gw: &Gateway, s: &Session, id: &str) -> Page {
    require(s, VIEW)?;
    let a = gw.store.get_approval(id).await.map_err(store_error)?;
    let args = serde_json::from_str::<serde_json::Value>(&a.arguments)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| a.arguments.clone());
    let pending = a.state == ApprovalState::Pending;
    let voters = if pending {
        may_still_vote(gw, &a).await?
    } else {
        Vec::new()
    };
    let can_vote = pending && auth::allows(&s.user, VOTE) && voters.contains(&s.user.name);
    let action = format!("/console/approvals/{}/decide", urlencode(&a.id));
    let body = html! {
        table #approval {
            tr { th { "state" } td #state { (badge(a.state.as_str())) } }
            tr { th { "agent" } td { (a.agent_id) " (owner " (a.owner) ", team " (a.team) ")" } }
            tr { th { "operation" } td { (a.kind) " " code #target { (a.target) } } }
            tr { th { "summary" } td { (a.summary) } }
            tr { th { "rule" } td { (a.plugin) " / " (a.rule) } }
            tr { th { "group" } td { (a.group) } }
            tr { th { "approvals" } td #count { (a.approvals()) " of " (a.approvals_needed) } }
            tr { th { "created" } td { (time(a.created_at)) } }
            tr { th { "expires" } td { (time(a.expires_at)) } }
            @if let Some(r) = &a.reason { tr { th { "reason" } td { (r) } } }
            tr { th { "arguments sha256" } td { code { (a.arguments_sha256) } } }
        }
        h2 { "Arguments" }
        pre #arguments { (args) }
        h2 { "Votes" }
        @if a.votes.is_empty() { p.muted { "No votes yet." } }
        @else {
            table #votes {
                tr { th { "who" } th { "decision" } th { "reason" } th { "when" } }
                @for v in &a.votes {
                    tr { td { (v.voter_name) } td { (v.decision.as_str()) } td { (v.reason) } td { (time(v.time_ms)) } }
                }
            }
        }
        @if pending {
            p { "May still vote: " @if voters.is_empty() { span.muted { "nobody" } } @else { (voters.join(", ")) } }
        }
        @if can_vote {
            h2 { "Your decision" }
            form.stack #decide method="post" action=(action) {
                (csrf(s))
                label { "Reason (needed to reject; the agent is told it)" textarea name="reason" rows="2" {} }
                div {
                    button.primary #approve type="submit" name="decision" value="approve" { "Approve" }
                    " "
                    button.danger #reject type="submit" name="decision" value="reject" { "Reject" }
                }
            }
        } @else if pending && auth::allows(&s.user, VOTE) {
            p.muted #no-vote { "You cannot vote on this request (its agent's owner, outside group "
                (a.group) ", or you voted already)." }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page(s, "/console/approvals", &format!("Approval {}", a.id), body),
    ))
}

/// `POST /console/approvals/{id}/decide` with `decision` and `reason`.
pub async fn decide(gw: &Gateway, s: &Session, id: &str, f: &Form) -> Page {
    require(s, VOTE)?;
    let decision = match field(f, "decision") {
        "approve" => Decision::Approve,
        "reject" => Decision::Reject,
        other => {
            return Err(ConsoleError::Form(format!(
                "decision must be approve or reject, got {other:?}"
            )));
        }
    };
    decide_as(gw, &s.user, id, decision, field(f, "reason")).await?;
    Ok(redirect(&format!("/console/approvals/{}", urlencode(id))))
}
