//! Policy: the loaded plugin chain (name, file, SHA-256, hooks, mode, config), the policy
//! version and the last reload; the MCP servers the config names; providers, routes and the
//! circuit breakers. The same facts as `/admin/status`, plus plugin configs for readers of the
//! registry (admin, auditor). Credentials are never shown: MCP servers' header values and
//! stdio environments stay out.

use http::StatusCode;
use maud::html;
use serde_json::Value;

use super::layout::{badge, page, time};
use super::session::Session;
use super::{Page, html as respond};
use crate::admin::auth;
use crate::admin::status::status_json;
use crate::app::Gateway;
use crate::core::settings::mcp::ServerKind;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `GET /console/policy`.
pub async fn page_of(gw: &Gateway, sess: &Session) -> Page {
    let st = status_json(gw);
    let rt = gw.policy.current();
    let reader = auth::allows(&sess.user, auth::READ);
    let configs: Vec<(String, String)> = rt
        .chain
        .plugins
        .iter()
        .map(|p| (p.name.to_string(), p.settings.config_json.clone()))
        .collect();
    let empty = Vec::new();
    let plugins = st["plugins"].as_array().unwrap_or(&empty);
    let reload = &st["reload"];
    let servers = &rt.settings.mcp.servers;
    let body = html! {
        table #policy {
            tr { th { "policy version" } td { code #policy-version { (s(&st["policy_version"])) } } }
            tr { th { "loaded" } td { (time(reload["loaded_at"].as_i64().unwrap_or(0) * 1000)) " (generation " (s(&reload["generation"])) ")" } }
            tr { th { "last reload" } td {
                (time(reload["last_attempt_at"].as_i64().unwrap_or(0) * 1000)) " "
                @if reload["last_ok"].as_bool().unwrap_or(false) { span.ok { "ok" } }
                @else { span.bad { "failed: " (s(&reload["last_error"])) } }
            } }
            tr { th { "database" } td { (s(&st["database"])) } }
            tr { th { "audit" } td {
                @if st["audit"]["healthy"].as_bool().unwrap_or(false) { span.ok { "healthy" } } @else { span.bad { "unhealthy" } }
                ", " (s(&st["audit"]["quarantined"])) " quarantined"
            } }
        }
        h2 { "Plugin chain, in order" }
        table #plugins {
            tr { th { "#" } th { "name" } th { "file" } th { "sha256" } th { "hooks" } th { "instances" } th { "on error" } @if reader { th { "config" } } }
            @for (i, p) in plugins.iter().enumerate() {
                tr {
                    td { (i + 1) } td { strong { (s(&p["name"])) } } td { code { (s(&p["path"])) } }
                    td { code { (s(&p["sha256"]).chars().take(16).collect::<String>()) "…" } }
                    td { (p["hooks"].as_array().map(|h| h.iter().map(s).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                    td { (s(&p["instances"])) } td { (s(&p["on_error"])) }
                    @if reader {
                        td { code { (configs.get(i).map(|c| c.1.as_str()).unwrap_or("")) } }
                    }
                }
            }
        }
        h2 { "MCP servers" }
        @if servers.is_empty() { p.muted { "None configured." } }
        @else {
            table #mcp-servers {
                tr { th { "name" } th { "transport" } th { "where" } }
                @for sv in servers {
                    tr {
                        td { (sv.name) }
                        @match &sv.kind {
                            ServerKind::Http { url, headers } => {
                                td { "http" } td { code { (url) } @if !headers.is_empty() { span.muted { " (with " (headers.len()) " credential headers)" } } }
                            }
                            ServerKind::Stdio { command, args, .. } => {
                                td { "stdio" } td { code { (command.display()) " " (args.join(" ")) } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Providers" }
        table #providers {
            tr { th { "name" } th { "kind" } }
            @for p in st["providers"].as_array().unwrap_or(&empty) { tr { td { (s(&p["name"])) } td { (s(&p["kind"])) } } }
        }
        h2 { "Routes" }
        table #routes {
            tr { th { "alias" } th { "targets, in order" } }
            @if let Some(routes) = st["routes"].as_object() {
                @for (alias, targets) in routes {
                    tr { td { code { (alias) } } td { (targets.as_array().map(|t| t.iter().map(s).collect::<Vec<_>>().join(" → ")).unwrap_or_default()) } }
                }
            }
        }
        h2 { "Circuit breakers" }
        table #breakers {
            tr { th { "target" } th { "state" } th { "times opened" } }
            @if let Some(b) = st["breakers"].as_object() {
                @for (target, v) in b {
                    tr { td { code { (target) } } td { (badge(&s(&v["state"]))) } td { (s(&v["opened"])) } }
                }
            }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page(sess, "/console/policy", "Policy", body),
    ))
}
