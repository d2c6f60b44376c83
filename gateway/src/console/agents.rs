//! Agents: the inventory, one agent with its budgets, limits, spend and keys; and, for admins,
//! registration (the key shown once), suspend/activate, key rotation and revocation, each
//! through the admin API's own action function.

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;
use maud::{Markup, html};
use palisade_store::{AgentLimits, NewAgent, NewKey, Window};

use super::layout::{badge, button_form, csrf, page, time, usd};
use super::session::Session;
use super::{ConsoleError, Form, Page, field, html as respond, redirect, require};
use crate::admin::{agents as api, auth, spend, store_error};
use crate::app::Gateway;

/// `GET /console/agents`.
pub async fn list(gw: &Gateway, s: &Session) -> Page {
    require(s, auth::READ)?;
    let agents = gw.store.list_agents().await.map_err(store_error)?;
    let now = crate::core::clock::now_ms();
    let mut live_keys = BTreeMap::new();
    for a in &agents {
        let keys = gw.store.list_keys(&a.id).await.map_err(store_error)?;
        live_keys.insert(a.id.clone(), keys.iter().filter(|k| k.is_live(now)).count());
    }
    let admin = auth::allows(&s.user, auth::ADMIN);
    let body = html! {
        p.muted { (agents.len()) " agents." }
        table #agents {
            tr { th { "id" } th { "owner" } th { "team" } th { "purpose" } th { "status" } th { "live keys" } th { "last seen" } }
            @for a in &agents {
                tr {
                    td { a href={ "/console/agents/" (urlencode(&a.id)) } { (a.id) } }
                    td { (a.owner) } td { (a.team) } td { (a.purpose) }
                    td { (badge(a.status.as_str())) }
                    td { (live_keys.get(&a.id).copied().unwrap_or(0)) }
                    td { @match a.last_seen_at { Some(t) => (time(t)), None => span.muted { "never" } } }
                }
            }
        }
        @if admin {
            h2 { "Register an agent" }
            form.stack #create-agent method="post" action="/console/agents" {
                (csrf(s))
                label { "Id (letters, digits, - and _)" input name="id" required; }
                label { "Owner (the accountable person)" input name="owner" required; }
                label { "Team" input name="team"; }
                label { "Purpose" input name="purpose"; }
                label { "Models it may use (comma-separated; empty: the policy decides)" input name="models"; }
                label { "Daily budget in USD (empty: none)" input name="usd_day" inputmode="decimal"; }
                button.primary #create type="submit" { "Register and make its first key" }
            }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page(s, "/console/agents", "Agents", body),
    ))
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect()
}

/// `POST /console/agents`: register, then show the key once.
pub async fn create(gw: &Gateway, s: &Session, f: &Form) -> Page {
    require(s, auth::ADMIN)?;
    let budgets = match field(f, "usd_day") {
        "" => serde_json::Value::Null,
        v => {
            let usd: f64 = v
                .parse()
                .ok()
                .filter(|u: &f64| u.is_finite() && *u >= 0.0)
                .ok_or_else(|| {
                    ConsoleError::Form(format!("daily budget must be a number of USD, got {v:?}"))
                })?;
            serde_json::json!({"usd": {"day": usd}})
        }
    };
    let new = NewAgent {
        id: field(f, "id").to_string(),
        owner: field(f, "owner").to_string(),
        team: field(f, "team").to_string(),
        purpose: field(f, "purpose").to_string(),
        models: split_list(field(f, "models")),
        budgets,
        ..Default::default()
    };
    let (agent, key) = api::create_agent(gw, &s.user, new).await?;
    let body = key_once(&agent.id, &key, "Agent registered");
    Ok(respond(
        StatusCode::CREATED,
        page(s, "/console/agents", &format!("Agent {}", agent.id), body),
    ))
}

/// The page that shows a new key's secret, the only time it is shown.
fn key_once(agent: &str, key: &NewKey, what: &str) -> Markup {
    html! {
        div.flash {
            p { (what) ". Copy the key now: it is stored hashed and will not be shown again." }
            p { span.secret #new-key { (key.secret) } }
            p.muted { "key id " code #new-key-id { (key.id) } }
        }
        p { a #to-agent href={ "/console/agents/" (urlencode(agent)) } { "Go to " (agent) } }
    }
}

fn limits_text(l: &AgentLimits) -> String {
    let mut parts = Vec::new();
    if let Some(v) = l.rpm {
        parts.push(format!("{v} requests/min"));
    }
    if let Some(v) = l.tpm {
        parts.push(format!("{v} tokens/min"));
    }
    if let Some(v) = l.concurrent {
        parts.push(format!("{v} in flight"));
    }
    if parts.is_empty() {
        "none of its own (team and global limits apply)".into()
    } else {
        parts.join(", ")
    }
}

/// `GET /console/agents/{id}`.
pub async fn show(gw: &Gateway, s: &Session, id: &str) -> Page {
    require(s, auth::READ)?;
    let agent = gw.store.get_agent(id).await.map_err(store_error)?;
    let keys = gw.store.list_keys(id).await.map_err(store_error)?;
    let scope = format!("agent:{id}");
    let mut spend_rows = Vec::new();
    for w in [Window::Hour, Window::Day, Window::Month, Window::Total] {
        for c in spend::counters(gw, w, &scope).await? {
            if c.scope == scope {
                spend_rows.push(c);
            }
        }
    }
    let admin = auth::allows(&s.user, auth::ADMIN);
    let now = crate::core::clock::now_ms();
    let active = agent.status == palisade_store::AgentStatus::Active;
    let base = format!("/console/agents/{}", urlencode(id));
    let body = html! {
        table #agent {
            tr { th { "status" } td { (badge(agent.status.as_str())) } }
            tr { th { "name" } td { (agent.name) } }
            tr { th { "owner" } td { (agent.owner) } }
            tr { th { "team" } td { (agent.team) } }
            tr { th { "purpose" } td { (agent.purpose) } }
            tr { th { "description" } td { (agent.description) } }
            tr { th { "models" } td { @if agent.models.is_empty() { span.muted { "the policy decides" } } @else { (agent.models.join(", ")) } } }
            tr { th { "tools" } td { @if agent.tools.is_empty() { span.muted { "the policy decides" } } @else { (agent.tools.join(", ")) } } }
            tr { th { "budgets" } td { code #budgets { (agent.budgets) } } }
            tr { th { "limits" } td { (limits_text(&agent.limits)) } }
            tr { th { "labels" } td { @for (k, v) in &agent.labels { code { (k) "=" (v) } " " } } }
            tr { th { "source" } td { (agent.source.as_str()) } }
            tr { th { "last seen" } td { @match agent.last_seen_at { Some(t) => (time(t)), None => "never" } } }
        }
        @if admin {
            p #status-actions {
                @if active { (button_form(s, &format!("{base}/suspend"), "Suspend", "danger", "suspend")) }
                @else { (button_form(s, &format!("{base}/activate"), "Activate", "primary", "activate")) }
            }
        }
        h2 { "Spend" }
        @if spend_rows.is_empty() { p.muted { "No spend recorded in the current windows." } }
        @else {
            table #spend {
                tr { th { "window" } th { "unit" } th { "spent" } th { "reserved" } }
                @for c in &spend_rows {
                    tr {
                        td { (format!("{:?}", c.window).to_lowercase()) } td { (c.unit.as_str()) }
                        td { @if c.unit == palisade_store::Unit::MicroUsd { (usd(c.spent as i64)) } @else { (c.spent) } }
                        td { (c.reserved) }
                    }
                }
            }
        }
        h2 { "Keys" }
        table #keys {
            tr { th { "id" } th { "prefix" } th { "created" } th { "revoked" } th { "last used" } @if admin { th {} } }
            @for k in &keys {
                tr {
                    td { code { (k.id) } } td { code { (k.prefix) } } td { (time(k.created_at)) }
                    td { @match k.revoked_at { Some(t) => (time(t)), None => "" } }
                    td { @match k.last_used_at { Some(t) => (time(t)), None => "" } }
                    @if admin {
                        td {
                            @if k.is_live(now) {
                                (button_form(s, &format!("{base}/keys/{}/rotate", urlencode(&k.id)), "Rotate", "", &format!("rotate-{}", k.id)))
                                " "
                                (button_form(s, &format!("{base}/keys/{}/revoke", urlencode(&k.id)), "Revoke", "danger", &format!("revoke-{}", k.id)))
                            }
                        }
                    }
                }
            }
        }
        p { a href={ "/console/audit?agent=" (urlencode(id)) } { "Its audit log" } " · " a href={ "/console/spend?scope=agent:" (urlencode(id)) } { "its spend" } }
    };
    Ok(respond(
        StatusCode::OK,
        page(s, "/console/agents", &format!("Agent {id}"), body),
    ))
}

/// `POST /console/agents/{id}/suspend|activate`.
pub async fn set_status(gw: &Gateway, s: &Session, id: &str, active: bool) -> Page {
    require(s, auth::ADMIN)?;
    api::set_agent_status(gw, &s.user, id, active).await?;
    Ok(redirect(&format!("/console/agents/{}", urlencode(id))))
}

/// `POST /console/agents/{id}/keys/{key}/rotate`: the old key stops at once; the new one is
/// shown once.
pub async fn rotate(gw: &Gateway, s: &Session, id: &str, key: &str) -> Page {
    require(s, auth::ADMIN)?;
    let new = api::rotate_agent_key(gw, &s.user, id, key, Duration::ZERO).await?;
    let body = key_once(id, &new, &format!("Key {key} rotated"));
    Ok(respond(
        StatusCode::CREATED,
        page(s, "/console/agents", &format!("Agent {id}"), body),
    ))
}

/// `POST /console/agents/{id}/keys/{key}/revoke`.
pub async fn revoke(gw: &Gateway, s: &Session, id: &str, key: &str) -> Page {
    require(s, auth::ADMIN)?;
    api::revoke_agent_key(gw, &s.user, id, key).await?;
    Ok(redirect(&format!("/console/agents/{}", urlencode(id))))
}

/// Percent-encode a path segment (agent ids are restricted, but a redirect must not carry
/// anything a header cannot).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
