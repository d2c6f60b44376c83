//! Policy: the loaded plugin chain (name, file, SHA-256, hooks, mode, config), the policy
//! version and the last reload; the MCP servers the config names; providers, routes and the
//! circuit breakers. The same facts as `/admin/status`, plus plugin configs for readers of the
//! registry (admin, auditor), who alone see the MCP servers too. Credentials are never shown:
//! MCP servers' header values, stdio arguments and environments stay out, and URLs lose their
//! userinfo and query string.

use http::StatusCode;
use maud::html;
use serde_json::Value;

use super::layout::{badge, page, time};
use super::session::Session;
use super::{Page, html as respond};
use crate::admin::auth;
use crate::admin::status::status_json_of;
use crate::app::Gateway;
use crate::core::settings::mcp::ServerKind;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// An MCP server's URL without what may be a credential: the userinfo (`user:secret@`), the
/// query string and the fragment.
fn display_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &url[..scheme_end], &url[scheme_end + at + 1..]),
        None => url.to_string(),
    }
}

/// A stdio server's command without its arguments (which may carry tokens) or its folder.
fn display_command(command: &std::path::Path) -> String {
    command
        .file_name()
        .unwrap_or(command.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// `GET /console/policy`.
pub async fn page_of(gw: &Gateway, sess: &Session) -> Page {
    // One snapshot for the whole page: a reload between two reads would pair one chain's
    // plugins with another's configs.
    let rt = gw.policy.current();
    let st = status_json_of(gw, &rt);
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
        // Which servers exist and how they are reached is for the registry's readers only.
        @if reader {
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
                                    td { "http" } td { code { (display_url(url)) } @if !headers.is_empty() { span.muted { " (with " (headers.len()) " credential headers)" } } }
                                }
                                ServerKind::Stdio { command, args, .. } => {
                                    td { "stdio" } td { code { (display_command(command)) } @if !args.is_empty() { span.muted { " (" (args.len()) " arguments not shown)" } } }
                                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_userinfo_query_and_fragment() {
        assert_eq!(
            display_url("https://user:s3cret@mcp.example.com:8443/v1/sse?token=abc#x"),
            "https://mcp.example.com:8443/v1/sse"
        );
        assert_eq!(
            display_url("http://tok@host?key=1"),
            "http://host",
            "no path"
        );
        assert_eq!(
            display_url("http://host/a@b/c"),
            "http://host/a@b/c",
            "an @ in the path is not userinfo"
        );
        assert_eq!(display_url("http://host/p"), "http://host/p");
    }

    #[test]
    fn commands_lose_their_folder() {
        assert_eq!(display_command(std::path::Path::new("/usr/bin/npx")), "npx");
        assert_eq!(display_command(std::path::Path::new("uvx")), "uvx");
    }
}
