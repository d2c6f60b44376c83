//! The web console at `/console` over loopback HTTP, as a browser without script would use it:
//! sign-in with a user token and the session cookie's flags, sign-out, CSRF refusals, what each
//! role sees and may do, escaping of user input, the approvals inbox voting under the API's
//! rules, and the CSV export with spreadsheet formulas neutralised.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// A cookie-keeping client that does not follow redirects.
struct Browser {
    base: String,
    cookies: HashMap<String, String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

struct Page {
    status: u16,
    headers: http::HeaderMap,
    text: String,
}

impl Page {
    /// The value of the first `name="csrf"` field.
    fn csrf(&self) -> String {
        let at = self
            .text
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field in: {}", self.text));
        let rest = &self.text[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').expect("end of value")].to_string()
    }
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }
}

impl Browser {
    fn new(gw: &TestGateway) -> Browser {
        Browser {
            base: format!("http://{}", gw.addr),
            cookies: HashMap::new(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, form: Option<&[(&str, &str)]>) -> Page {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header("cookie", c.join("; "));
        }
        let body = match form {
            Some(f) => {
                req = req.header("content-type", "application/x-www-form-urlencoded");
                let pairs: Vec<String> = f
                    .iter()
                    .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                    .collect();
                Bytes::from(pairs.join("&"))
            }
            None => Bytes::new(),
        };
        let resp = self
            .client
            .request(req.body(Full::new(body)).unwrap())
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let page = Page {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        };
        for c in page.set_cookies() {
            let first = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = first.split_once('=') {
                if v.is_empty() || c.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), v.to_string());
                }
            }
        }
        page
    }

    async fn get(&mut self, path: &str) -> Page {
        self.send("GET", path, None).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send("POST", path, Some(form)).await
    }

    /// Sign in with `token`; the page after the redirect's answer.
    async fn sign_in(&mut self, token: &str) -> Page {
        let login = self.get("/console/login").await;
        assert_eq!(login.status, 200);
        let csrf = login.csrf();
        self.post("/console/login", &[("csrf", &csrf), ("token", token)])
            .await
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A user with these roles and approver groups; returns their token.
async fn user(gw: &TestGateway, name: &str, roles: &[&str], groups: &[&str]) -> String {
    let (s, v) = gw
        .admin(
            "POST",
            "/admin/api/users",
            ADMIN_TOKEN,
            json!({"name": name, "email": format!("{name}@example.com"), "roles": roles}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["user"]["id"].as_str().unwrap().to_string();
    let (s, _) = gw
        .admin(
            "PUT",
            &format!("/admin/api/users/{id}/groups"),
            ADMIN_TOKEN,
            json!({"groups": groups}),
        )
        .await;
    assert_eq!(s, 200);
    v["token"]["secret"].as_str().unwrap().to_string()
}

/// Admin events land in batches; poll (bounded) until one matching `needle` is exported.
async fn admin_event(gw: &TestGateway, needle: &str) -> Value {
    for _ in 0..100 {
        let (s, _, b) = gw
            .request(
                "GET",
                "/admin/api/audit/export?format=jsonl&kind=admin",
                Some(ADMIN_TOKEN),
                Bytes::new(),
            )
            .await;
        assert_eq!(s, 200);
        let text = String::from_utf8_lossy(&b).into_owned();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return serde_json::from_str(line).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no admin event {needle:?} within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_sets_a_strict_cookie_and_sign_out_ends_the_session() {
    let gw = TestGateway::start(&[], "").await;
    let mut b = Browser::new(&gw);

    let r = b.get("/console").await;
    assert_eq!((r.status, r.location()), (303, "/console/login"));

    let r = b.sign_in(ADMIN_TOKEN).await;
    assert_eq!((r.status, r.location()), (303, "/console"), "{}", r.text);
    let cookie = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("palisade_console="))
        .expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: no Secure flag");
    let session = b.cookies["palisade_console"].clone();
    assert_eq!(session.len(), 64, "256 random bits");

    let r = b.get("/console").await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("Overview") && r.text.contains("admin (admin)"));
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    admin_event(&gw, "console.signed_in").await;

    let csrf = r.csrf();
    let r = b.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!((r.status, r.location()), (303, "/console/login"));
    // The old cookie, replayed, is dead on the server.
    b.cookies.insert("palisade_console".into(), session);
    let r = b.get("/console").await;
    assert_eq!((r.status, r.location()), (303, "/console/login"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_and_forged_sign_ins_are_refused() {
    let gw = TestGateway::start(&[], "").await;
    let mut b = Browser::new(&gw);
    let r = b.sign_in("pt_not-a-token").await;
    assert_eq!(r.status, 401);
    assert!(r.text.contains("Unknown or revoked token"));
    assert!(!b.cookies.contains_key("palisade_console"));

    // A sign-in POST from elsewhere has no pre-session cookie to match its token.
    let mut other = Browser::new(&gw);
    let r = other
        .post("/console/login", &[("csrf", "x"), ("token", ADMIN_TOKEN)])
        .await;
    assert_eq!(r.status, 403);
    assert!(!other.cookies.contains_key("palisade_console"));

    // Revoking the token ends the console session on the next page.
    let tok = user(&gw, "erin", &["auditor"], &[]).await;
    let mut e = Browser::new(&gw);
    assert_eq!(e.sign_in(&tok).await.status, 303);
    assert_eq!(e.get("/console").await.status, 200);
    let (_, users) = gw
        .admin("GET", "/admin/api/users", ADMIN_TOKEN, Value::Null)
        .await;
    let id = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "erin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, toks) = gw
        .admin(
            "GET",
            &format!("/admin/api/users/{id}/tokens"),
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{toks}");
    let tok_id = toks[0]["id"].as_str().unwrap().to_string();
    let (s, v) = gw
        .admin(
            "DELETE",
            &format!("/admin/api/users/{id}/tokens/{tok_id}"),
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(e.get("/console").await.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_the_csrf_token_is_refused_and_changes_nothing() {
    let gw = TestGateway::start(&[], "").await;
    let mut b = Browser::new(&gw);
    b.sign_in(ADMIN_TOKEN).await;
    let page = b.get("/console/agents").await;
    assert!(page.text.contains("create-agent"));
    let csrf = page.csrf();

    let form = |csrf: &'static str| {
        vec![
            ("csrf", csrf),
            ("id", "forged-bot"),
            ("owner", "mallory@example.com"),
        ]
    };
    let r = b
        .post("/console/agents", &[("id", "forged-bot"), ("owner", "m")])
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = b.post("/console/agents", &form("0000")).await;
    assert_eq!(r.status, 403);
    assert!(gw.gw.store.get_agent("forged-bot").await.is_err());
    // Another session's token does not fit this one.
    let mut other = Browser::new(&gw);
    other.sign_in(ADMIN_TOKEN).await;
    let other_csrf = other.get("/console").await.csrf();
    assert_ne!(other_csrf, csrf);
    let r = b
        .post(
            "/console/agents",
            &[("csrf", &other_csrf), ("id", "forged-bot"), ("owner", "m")],
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(gw.gw.store.get_agent("forged-bot").await.is_err());

    // With it: created, the key shown once, audited with who did it.
    let r = b
        .post(
            "/console/agents",
            &[
                ("csrf", &csrf),
                ("id", "chatbot"),
                ("owner", "dana@example.com"),
                ("purpose", "customer chat"),
                ("usd_day", "0.5"),
            ],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let at = r.text.find("id=\"new-key\">").expect("the key") + "id=\"new-key\">".len();
    let key = &r.text[at..at + r.text[at..].find('<').unwrap()];
    let agent = gw.gw.store.get_agent("chatbot").await.unwrap();
    assert_eq!(agent.budgets, json!({"usd": {"day": 0.5}}));
    let call = gw.chat(key, &chat_body("gpt-4o-mini", "hi")).await;
    assert_eq!(call.status, 200, "the shown key works: {}", call.json);
    let ev = admin_event(&gw, "agent.created chatbot").await;
    assert_eq!(ev["owner"], "admin");
    // The agent page never shows it again.
    let page = b.get("/console/agents/chatbot").await;
    assert!(!page.text.contains(key));

    // Suspend from the console: the agent's calls stop.
    let r = b
        .post("/console/agents/chatbot/suspend", &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(
        gw.chat(key, &chat_body("gpt-4o-mini", "hi")).await.status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_sees_and_does_only_what_it_may() {
    let gw = TestGateway::start(&[], "").await;
    let auditor = user(&gw, "ada", &["auditor"], &[]).await;
    let approver = user(&gw, "carol", &["approver"], &["ops"]).await;

    let mut admin = Browser::new(&gw);
    admin.sign_in(ADMIN_TOKEN).await;
    let p = admin.get("/console/agents/support-bot").await;
    assert!(p.text.contains("id=\"suspend\"") && p.text.contains("Rotate"));

    let mut a = Browser::new(&gw);
    assert_eq!(a.sign_in(&auditor).await.status, 303);
    let p = a.get("/console/agents").await;
    assert_eq!(p.status, 200);
    assert!(p.text.contains("support-bot"));
    assert!(
        !p.text.contains("create-agent"),
        "no admin form for auditors"
    );
    let p = a.get("/console/agents/support-bot").await;
    assert!(!p.text.contains("id=\"suspend\"") && !p.text.contains("Rotate"));
    let csrf = p.csrf();
    // The server refuses what the page does not offer.
    let r = a
        .post("/console/agents/support-bot/suspend", &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(
        gw.gw.store.get_agent("support-bot").await.unwrap().status,
        palisade_store::AgentStatus::Active
    );
    for page in [
        "/console/audit",
        "/console/spend",
        "/console/policy",
        "/console",
    ] {
        assert_eq!(a.get(page).await.status, 200, "{page}");
    }

    let mut c = Browser::new(&gw);
    c.sign_in(&approver).await;
    let home = c.get("/console").await;
    assert_eq!(home.status, 200);
    assert!(!home.text.contains("/console/agents\""), "no Agents link");
    assert!(home.text.contains("/console/approvals"));
    assert!(
        !home.text.contains("chart-calls-day"),
        "no traffic for approvers"
    );
    for page in ["/console/agents", "/console/audit", "/console/spend"] {
        assert_eq!(c.get(page).await.status, 403, "{page}");
    }
    // The policy page shows approvers the chain, not the MCP servers (nor plugin configs).
    let p = c.get("/console/policy").await;
    assert_eq!(p.status, 200);
    assert!(p.text.contains("id=\"plugins\"") && !p.text.contains("MCP servers"));
    assert!(a.get("/console/policy").await.text.contains("MCP servers"));
    assert_eq!(c.get("/console/audit/export.csv").await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_input_is_escaped_and_csv_formulas_are_neutralised() {
    let gw = TestGateway::start(&[], "").await;
    let (s, v) = gw
        .admin(
            "POST",
            "/admin/api/agents",
            ADMIN_TOKEN,
            json!({"id": "evil-bot", "owner": "=HYPERLINK(\"http://x\",\"y\")",
                   "purpose": "<script>alert(1)</script>", "team": "\"><img src=x onerror=alert(1)>"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let key = v["key"]["secret"].as_str().unwrap().to_string();
    assert_eq!(
        gw.chat(&key, &chat_body("gpt-4o-mini", "hi")).await.status,
        200
    );

    let mut b = Browser::new(&gw);
    b.sign_in(ADMIN_TOKEN).await;
    for path in ["/console/agents", "/console/agents/evil-bot"] {
        let p = b.get(path).await;
        assert!(!p.text.contains("<script>alert"), "{path}");
        assert!(!p.text.contains("<img src=x"), "{path}");
        assert!(
            p.text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}"
        );
    }

    // The export holds the call, its formula-looking owner neutralised; the API's too.
    let mut csv = String::new();
    for _ in 0..100 {
        let p = b.get("/console/audit/export.csv?agent=evil-bot").await;
        assert_eq!(p.status, 200);
        assert!(
            p.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv")
        );
        csv = p.text;
        if csv.lines().count() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.contains(",\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\","),
        "{csv}"
    );
    let (_, _, api) = gw
        .request(
            "GET",
            "/admin/api/audit/export?agent=evil-bot",
            Some(ADMIN_TOKEN),
            Bytes::new(),
        )
        .await;
    assert!(String::from_utf8_lossy(&api).contains("\"'=HYPERLINK("));
}

const HOLD: &str = r#"
[[plugins]]
name = "approvals"
path = "approvals.wasm"
[[plugins.config.rules]]
name = "reserved"
models = ["gpt-4o-approved"]
group = "ops"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_votes_under_the_api_rules() {
    let gw = TestGateway::start_full(
        Db::Sqlite,
        &["approvals"],
        HOLD,
        false,
        "[approvals]\nwait_secs = 0\n",
    )
    .await;
    // alice owns support-bot; she approves for ops but may not vote on her own agent's call.
    let alice = user(&gw, "alice", &["approver"], &["ops"]).await;
    let outsider = user(&gw, "olga", &["approver"], &["finance"]).await;
    let carol = user(&gw, "carol", &["approver"], &["ops"]).await;
    user(&gw, "dmitri", &["approver"], &["ops"]).await;
    let (_, users) = gw
        .admin("GET", "/admin/api/users", ADMIN_TOKEN, Value::Null)
        .await;
    let dmitri = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "dmitri")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = gw
        .admin(
            "POST",
            &format!("/admin/api/users/{dmitri}/disable"),
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!(s, 200);
    let body = chat_body("gpt-4o-approved", "refund <b>order</b> 1234");
    let r = gw.chat(SUPPORT_KEY, &body).await;
    assert_eq!(r.code(), "approval_pending", "{}", r.json);
    let id = r
        .json
        .pointer("/error/approval/id")
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();

    let mut o = Browser::new(&gw);
    o.sign_in(&alice).await;
    let inbox = o.get("/console/approvals").await;
    assert!(inbox.text.contains(&id));
    let p = o.get(&format!("/console/approvals/{id}")).await;
    assert!(
        p.text.contains("refund &lt;b&gt;order&lt;/b&gt; 1234"),
        "the exact arguments, escaped"
    );
    assert!(
        !p.text.contains("id=\"approve\""),
        "the owner gets no buttons"
    );
    let csrf = p.csrf();
    let r = o
        .post(
            &format!("/console/approvals/{id}/decide"),
            &[("csrf", &csrf), ("decision", "approve")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);

    let mut x = Browser::new(&gw);
    x.sign_in(&outsider).await;
    let csrf = x.get("/console").await.csrf();
    let r = x
        .post(
            &format!("/console/approvals/{id}/decide"),
            &[("csrf", &csrf), ("decision", "approve")],
        )
        .await;
    assert_eq!(r.status, 403);
    admin_event(&gw, "approval.approve_refused").await;

    let mut c = Browser::new(&gw);
    c.sign_in(&carol).await;
    let p = c.get(&format!("/console/approvals/{id}")).await;
    assert!(p.text.contains("id=\"approve\""), "{}", p.text);
    assert!(p.text.contains("May still vote: carol"), "{}", p.text);
    assert!(!p.text.contains("dmitri"), "a disabled user is not listed");
    let r = c
        .post(
            &format!("/console/approvals/{id}/decide"),
            &[
                ("csrf", &p.csrf()),
                ("decision", "approve"),
                ("reason", "ok"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text);
    let p = c.get(&format!("/console/approvals/{id}")).await;
    assert!(p.text.contains("approved"));
    let ev = admin_event(&gw, &format!("approval.approved {id}")).await;
    assert_eq!(ev["owner"], "carol");
    let r = gw.chat(SUPPORT_KEY, &body).await;
    assert_eq!(r.status, 200, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_changed_or_user_disabled_end_console_access_at_once_sqlite() {
    roles_changed_or_user_disabled_end_console_access_at_once(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_changed_or_user_disabled_end_console_access_at_once_postgres() {
    roles_changed_or_user_disabled_end_console_access_at_once(Db::Postgres).await
}

async fn roles_changed_or_user_disabled_end_console_access_at_once(db: Db) {
    let gw = TestGateway::start_full(db, &[], "", false, "").await;
    let tok = user(&gw, "frank", &["auditor"], &[]).await;
    let (_, me) = gw
        .admin("GET", "/admin/api/whoami", &tok, Value::Null)
        .await;
    let id = me["id"].as_str().unwrap().to_string();
    let mut f = Browser::new(&gw);
    assert_eq!(f.sign_in(&tok).await.status, 303);
    assert_eq!(f.get("/console/audit").await.status, 200);

    // An auditor made approver: the audit page closes on the next request.
    let (s, v) = gw
        .admin(
            "PUT",
            &format!("/admin/api/users/{id}/roles"),
            ADMIN_TOKEN,
            json!({"roles": ["approver"]}),
        )
        .await;
    assert_eq!((s, v["roles"].clone()), (200, json!(["approver"])), "{v}");
    assert_eq!(f.get("/console/audit").await.status, 403);
    assert_eq!(f.get("/console/approvals").await.status, 200);
    admin_event(&gw, &format!("user.roles_set {id} [approver]")).await;

    // Disabled: the session and the API token stop; enabled: the token works again.
    let (s, v) = gw
        .admin(
            "POST",
            &format!("/admin/api/users/{id}/disable"),
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["disabled_at"].is_i64());
    assert_eq!(f.get("/console/approvals").await.status, 303);
    let (s, _) = gw
        .admin("GET", "/admin/api/whoami", &tok, Value::Null)
        .await;
    assert_eq!(s, 401);
    assert_eq!(Browser::new(&gw).sign_in(&tok).await.status, 401);
    let (s, v) = gw
        .admin(
            "POST",
            &format!("/admin/api/users/{id}/enable"),
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!((s, v["disabled_at"].clone()), (200, Value::Null));
    let (s, _) = gw
        .admin("GET", "/admin/api/whoami", &tok, Value::Null)
        .await;
    assert_eq!(s, 200);

    // The last enabled admin can be neither demoted nor disabled.
    let (_, admin) = gw
        .admin("GET", "/admin/api/whoami", ADMIN_TOKEN, Value::Null)
        .await;
    let admin_id = admin["id"].as_str().unwrap();
    let (s, v) = gw
        .admin(
            "PUT",
            &format!("/admin/api/users/{admin_id}/roles"),
            ADMIN_TOKEN,
            json!({"roles": ["auditor"]}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, _) = gw
        .admin(
            "POST",
            &format!("/admin/api/users/{admin_id}/disable"),
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!(s, 409);
    // Nor lose their last live token.
    let (s, toks) = gw
        .admin(
            "GET",
            &format!("/admin/api/users/{admin_id}/tokens"),
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!((s, toks.as_array().unwrap().len()), (200, 1), "{toks}");
    let tok_id = toks[0]["id"].as_str().unwrap();
    let (s, v) = gw
        .admin(
            "DELETE",
            &format!("/admin/api/users/{admin_id}/tokens/{tok_id}"),
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, _) = gw
        .admin("GET", "/admin/api/whoami", ADMIN_TOKEN, Value::Null)
        .await;
    assert_eq!(s, 200, "the token still works");
    // Only admins manage users.
    let (s, _) = gw
        .admin(
            "POST",
            &format!("/admin/api/users/{admin_id}/disable"),
            &tok,
            Value::Null,
        )
        .await;
    assert_eq!(s, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_tree_shows_every_hop_with_its_cost() {
    let prices = "[prices.\"mock/gpt-4o-mini\"]\ninput_per_mtok = 10.0\noutput_per_mtok = 100.0\n";
    let gw = TestGateway::start_full(Db::Sqlite, &[], "", false, prices).await;
    // support-bot delegates to research-bot, which hands back to support-bot: three hops.
    let mut chain: Option<String> = None;
    for key in [SUPPORT_KEY, RESEARCH_KEY, SUPPORT_KEY] {
        let headers: Vec<(&str, &str)> = chain
            .as_deref()
            .map(|c| ("palisade-chain", c))
            .into_iter()
            .collect();
        let r = gw
            .chat_with(key, &chat_body("gpt-4o-mini", "work"), &headers)
            .await;
        assert_eq!(r.status, 200, "{}", r.json);
        chain = r
            .headers
            .get("palisade-chain")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
    }
    let mut b = Browser::new(&gw);
    b.sign_in(ADMIN_TOKEN).await;
    // The run is listed on the spend page once its events are in the log.
    let mut run = String::new();
    for _ in 0..100 {
        let p = b.get("/console/spend").await;
        if let Some(at) = p.text.find("/console/spend/runs/run_") {
            let rest = &p.text[at + "/console/spend/runs/".len()..];
            run = rest[..rest.find('"').unwrap()].to_string();
            if p.text.contains("support-bot → research-bot") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!run.is_empty(), "no run listed");
    let p = b.get(&format!("/console/spend/runs/{run}")).await;
    assert_eq!(p.status, 200, "{}", p.text);
    let hops: Vec<&str> = p
        .text
        .match_indices("<strong class=\"agent\">")
        .map(|(i, _)| {
            let rest = &p.text[i + "<strong class=\"agent\">".len()..];
            &rest[..rest.find('<').unwrap()]
        })
        .collect();
    assert_eq!(hops, ["support-bot", "research-bot", "support-bot"]);
    // Each hop is charged from the mock's usage at these prices (the same prompt, the same
    // usage: $0.001410), and the run adds them up.
    assert_eq!(
        p.text
            .matches("<span class=\"cost\">$0.001410</span>")
            .count(),
        3,
        "{}",
        p.text
    );
    assert!(p.text.contains("$0.004230 in all"), "{}", p.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_capped_per_user_and_a_new_sign_in_ends_the_old_one() {
    let gw = TestGateway::start(&[], "").await;
    let tok = user(&gw, "gina", &["auditor"], &[]).await;
    let mut admin = Browser::new(&gw);
    assert_eq!(admin.sign_in(ADMIN_TOKEN).await.status, 303);

    // Signing in again in the same browser ends the session its cookie named.
    let mut b = Browser::new(&gw);
    b.sign_in(&tok).await;
    let first = b.cookies["palisade_console"].clone();
    b.sign_in(&tok).await;
    assert_ne!(b.cookies["palisade_console"], first);
    assert_eq!(b.get("/console").await.status, 200);
    let mut replay = Browser::new(&gw);
    replay.cookies.insert("palisade_console".into(), first);
    assert_eq!(replay.get("/console").await.status, 303);

    // Ten more sessions for gina: her oldest goes, nobody else's does.
    let mut many = Vec::new();
    for _ in 0..10 {
        let mut x = Browser::new(&gw);
        assert_eq!(x.sign_in(&tok).await.status, 303);
        many.push(x);
    }
    assert_eq!(b.get("/console").await.status, 303, "gina's oldest ended");
    for x in &mut many {
        assert_eq!(x.get("/console").await.status, 200);
    }
    assert_eq!(admin.get("/console").await.status, 200, "the admin's stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_addresses_answer_plainly() {
    let gw = TestGateway::start(&[], "").await;
    let mut b = Browser::new(&gw);
    b.sign_in(ADMIN_TOKEN).await;
    // A blank run id goes back to the spend page instead of redirecting to itself.
    for path in ["/console/spend/runs/?run=", "/console/spend/runs?run=%20"] {
        let r = b.get(path).await;
        assert_eq!((r.status, r.location()), (303, "/console/spend"), "{path}");
    }
    let r = b.get("/console/spend/runs/?run=run_x").await;
    assert_eq!((r.status, r.location()), (303, "/console/spend/runs/run_x"));
    assert!(b.get("/console/spend").await.text.contains("required"));
    // Sequence numbers below 1 (the smallest i64 too) are simply not there.
    for seq in ["0", "-1", "-9223372036854775808"] {
        let r = b.get(&format!("/console/audit/{seq}")).await;
        assert_eq!(r.status, 404, "{seq}: {}", r.text);
    }

    // Filters the form has no field for stay in the search and in the export link.
    let p = b
        .get("/console/audit?run_id=run_1&target=a%26b&request_id=req-9&owner=o&agent=x")
        .await;
    assert_eq!(p.status, 200, "{}", p.text);
    for hidden in [
        "type=\"hidden\" name=\"run_id\" value=\"run_1\"",
        "type=\"hidden\" name=\"target\" value=\"a&amp;b\"",
        "type=\"hidden\" name=\"request_id\" value=\"req-9\"",
        "type=\"hidden\" name=\"owner\" value=\"o\"",
    ] {
        assert!(p.text.contains(hidden), "{hidden} in {}", p.text);
    }
    assert!(
        p.text.contains(
            "export.csv?agent=x&amp;owner=o&amp;target=a%26b&amp;run_id=run_1&amp;request_id=req-9\""
        ),
        "{}",
        p.text
    );
}
