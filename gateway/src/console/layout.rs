//! The console's frame: the page skeleton with the navigation a role may use, the stylesheet
//! (served from the binary, no CDN), the forms every change goes through (each with its CSRF
//! token), and small formatters. Every value reaches the page through maud, which escapes it;
//! nothing in the console is marked pre-escaped.

use maud::{DOCTYPE, Markup, html};
use palisade_store::Role;

use super::session::Session;
use crate::admin::auth;

/// The stylesheet, at `/console/static/console.css` (the CSP allows no inline style or script).
pub const CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;background:#f4f6f9}
header{background:#17202e;color:#fff;display:flex;align-items:center;gap:18px;padding:0 20px;height:48px}
header .brand{font-weight:700;letter-spacing:.5px}
header nav a{color:#c9d3e3;text-decoration:none;margin-right:14px}
header nav a.on{color:#fff;border-bottom:2px solid #5aa9ff;padding-bottom:3px}
header .who{margin-left:auto;color:#c9d3e3;display:flex;gap:10px;align-items:center}
header .who form{margin:0}
main{padding:20px;max-width:1280px}
h1{font-size:20px;margin:0 0 14px}
h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde3ea}
th,td{text-align:left;padding:6px 9px;border-bottom:1px solid #e8ecf1;vertical-align:top}
th{background:#eef2f7;font-weight:600;font-size:13px}
td code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
pre{background:#fff;border:1px solid #dde3ea;padding:10px;overflow:auto;white-space:pre-wrap;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:14px}
.card{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:12px 14px;min-width:200px}
.card .n{font-size:22px;font-weight:700}
.muted{color:#6b7788}
.ok{color:#137a3a}.bad{color:#b3261e}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;background:#e8ecf1}
.badge.active,.badge.approved,.badge.closed{background:#d9f2e2;color:#0d5c2b}
.badge.suspended,.badge.rejected,.badge.open,.badge.expired{background:#fbe0de;color:#8a1c15}
.badge.pending,.badge.half_open{background:#fff1cc;color:#7a5600}
form.inline{display:inline}
button{font:inherit;padding:4px 10px;border:1px solid #9fb0c6;border-radius:4px;background:#fff;cursor:pointer}
button.primary{background:#1f6feb;border-color:#1f6feb;color:#fff}
button.danger{border-color:#d0443a;color:#b3261e}
input,select,textarea{font:inherit;padding:4px 6px;border:1px solid #b8c4d3;border-radius:4px}
.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end;margin-bottom:12px}
.filters label,.stack label{display:flex;flex-direction:column;font-size:12px;color:#4a5567}
.stack{display:flex;flex-direction:column;gap:8px;max-width:520px}
.flash{background:#fff8d6;border:1px solid #e8d38a;padding:10px 12px;border-radius:6px;margin-bottom:14px}
.secret{font-family:ui-monospace,monospace;font-size:15px;background:#17202e;color:#9ef0b0;padding:8px 10px;display:inline-block;border-radius:4px}
.login{max-width:420px;margin:80px auto;background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:24px}
svg{background:#fff;border:1px solid #dde3ea;border-radius:6px}
svg text{font:11px system-ui,sans-serif;fill:#4a5567}
.tree ul{list-style:none;padding-left:22px;border-left:1px dashed #b8c4d3;margin:4px 0}
.tree li{margin:4px 0}
"#;

/// One entry of the navigation: path, label, the roles that see it.
const NAV: &[(&str, &str, &[Role])] = &[
    ("/console", "Overview", auth::ANY),
    ("/console/agents", "Agents", auth::READ),
    ("/console/approvals", "Approvals", auth::ANY),
    ("/console/audit", "Audit", auth::READ),
    ("/console/spend", "Spend", auth::READ),
    ("/console/policy", "Policy", auth::ANY),
];

/// A whole page: the header with the navigation `s`'s roles allow, then `body`.
pub fn page(s: &Session, active: &str, title: &str, body: Markup) -> Markup {
    let roles: Vec<&str> = s.user.roles.iter().map(|r| r.as_str()).collect();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Palisade console" }
                link rel="stylesheet" href="/console/static/console.css";
            }
            body {
                header {
                    span.brand { "Palisade" }
                    nav {
                        @for (path, label, allowed) in NAV {
                            @if auth::allows(&s.user, allowed) {
                                a href=(path) class=[(*path == active).then_some("on")] { (label) }
                            }
                        }
                    }
                    div.who {
                        span #who { (s.user.name) " (" (roles.join(", ")) ")" }
                        form.inline method="post" action="/console/logout" {
                            (csrf(s))
                            button #sign-out type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The sign-in page: a form for a user token, with the pre-session CSRF token.
pub fn login_page(csrf: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Sign in · Palisade console" }
                link rel="stylesheet" href="/console/static/console.css";
            }
            body {
                div.login {
                    h1 { "Palisade console" }
                    p.muted { "Sign in with your admin, approver or auditor token (the one the admin API and "
                        code { "palisade" } " CLI take)." }
                    @if let Some(e) = error { p.bad #login-error { (e) } }
                    form.stack method="post" action="/console/login" {
                        input type="hidden" name="csrf" value=(csrf);
                        label { "User token"
                            input #token type="password" name="token" autocomplete="off" required; }
                        button.primary #sign-in type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// The hidden CSRF field every form of a session carries.
pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A one-button form POSTing to `action`.
pub fn button_form(s: &Session, action: &str, label: &str, class: &str, id: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf(s))
            button type="submit" class=(class) id=(id) { (label) }
        }
    }
}

/// An error page for a signed-in person.
pub fn error_page(s: &Session, status: u16, message: &str) -> Markup {
    page(
        s,
        "",
        &format!("Error {status}"),
        html! { p.bad #error { (message) } p { a href="/console" { "Back to the overview" } } },
    )
}

/// A time in ms since the epoch as RFC 3339 (UTC).
pub fn time(ms: i64) -> String {
    palisade_store::time::format_rfc3339_ms(ms)
}

/// Micro-USD as dollars.
pub fn usd(micro: i64) -> String {
    if micro.abs() < 10_000 && micro != 0 {
        format!("${:.6}", micro as f64 / 1e6)
    } else {
        format!("${:.2}", micro as f64 / 1e6)
    }
}

/// A status badge; the class comes from a fixed set, the text is escaped.
pub fn badge(text: &str) -> Markup {
    let class = match text {
        "active" | "approved" | "closed" | "pending" | "suspended" | "rejected" | "open"
        | "expired" | "half_open" => text,
        _ => "",
    };
    html! { span class={ "badge " (class) } { (text) } }
}
