//! Human approvals at the gateway, end to end over loopback HTTP with the real `approvals`
//! plugin (from `make plugins`), on SQLite and on PostgreSQL: LLM calls to reserved model
//! aliases are held until distinct approvers of the rule's group approve the exact call, then
//! run exactly once (the mock upstream counts them); the admin API, the CLI and the webhook.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use serde_json::{Value, json};

const RULES: &str = r#"
[[plugins]]
name = "approvals"
path = "approvals.wasm"
[[plugins.config.rules]]
name = "reserved"
models = ["gpt-4o-approved"]
group = "ops"
[[plugins.config.rules]]
name = "money"
models = ["gpt-4o-pay"]
approvals = 2
group = "finance"
ttl_secs = 600
[[plugins.config.rules]]
name = "brief"
models = ["gpt-4o-brief"]
group = "ops"
ttl_secs = 1
"#;

async fn start(db: Db, wait_secs: f64) -> TestGateway {
    start_extra(db, &format!("[approvals]\nwait_secs = {wait_secs}\n")).await
}

async fn start_extra(db: Db, extra: &str) -> TestGateway {
    TestGateway::start_full(db, &["approvals"], RULES, false, extra).await
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
    let (s, g) = gw
        .admin(
            "PUT",
            &format!("/admin/api/users/{id}/groups"),
            ADMIN_TOKEN,
            json!({"groups": groups}),
        )
        .await;
    assert_eq!(s, 200, "{g}");
    v["token"]["secret"].as_str().unwrap().to_string()
}

async fn decide(
    gw: &TestGateway,
    token: &str,
    id: &str,
    decision: &str,
    reason: &str,
) -> (u16, Value) {
    gw.admin(
        "POST",
        &format!("/admin/api/approvals/{id}/decisions"),
        token,
        json!({"decision": decision, "reason": reason}),
    )
    .await
}

fn approval_id(r: &Reply) -> String {
    r.json
        .pointer("/error/approval/id")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no approval in {}", r.json))
        .to_string()
}

fn upstream_calls(gw: &TestGateway) -> usize {
    gw.mock.requests().len()
}

async fn audit_text(gw: &TestGateway) -> String {
    // Admin events are written in batches (every 20 ms): let the last ones land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _, b) = gw
        .request(
            "GET",
            "/admin/api/audit/export?format=jsonl&kind=admin",
            Some(ADMIN_TOKEN),
            Bytes::new(),
        )
        .await;
    assert_eq!(s, 200);
    String::from_utf8_lossy(&b).into_owned()
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::common::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(crate::common::Db::Postgres).await
            }
        }
    )*};
}

on_both!(
    held_until_approved_then_exactly_once,
    changed_arguments_need_a_new_approval,
    two_distinct_approvers_and_the_same_one_twice_does_not_count,
    owner_and_outsiders_cannot_vote,
    rejection_and_expiry_reach_the_agent_with_reasons,
    concurrent_identical_retries_execute_once,
    the_call_is_held_open_until_the_decision,
);

async fn held_until_approved_then_exactly_once(db: Db) {
    let gw = start(db, 0.0).await;
    let carol = user(&gw, "carol", &["approver"], &["ops"]).await;
    let body = chat_body("gpt-4o-approved", "refund order 1234");

    let r = gw.chat(SUPPORT_KEY, &body).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "approval_pending"),
        "{}",
        r.json
    );
    assert!(r.message().contains("pending, 0 of 1"), "{}", r.message());
    assert!(r.message().contains("retry the same call unchanged"));
    let id = approval_id(&r);
    assert!(id.starts_with("apr_"));
    assert_eq!(
        upstream_calls(&gw),
        0,
        "a held call must not reach the upstream"
    );

    // An identical retry attaches to the same request.
    let again = gw.chat(SUPPORT_KEY, &body).await;
    assert_eq!(approval_id(&again), id);
    assert_eq!(upstream_calls(&gw), 0);

    // What the approver sees: the pending list, and the request in full.
    let (s, list) = gw
        .admin(
            "GET",
            "/admin/api/approvals?status=pending",
            &carol,
            Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{list}");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], json!(id));
    let (s, full) = gw
        .admin(
            "GET",
            &format!("/admin/api/approvals/{id}"),
            &carol,
            Value::Null,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(full["agent_id"], "support-bot");
    assert_eq!(full["owner"], "alice@example.com");
    assert_eq!(full["rule"], "reserved");
    assert_eq!(full["kind"], "llm-call");
    assert_eq!(full["target"], "gpt-4o-approved");
    assert_eq!(
        full.pointer("/arguments/messages/0/content"),
        Some(&json!("refund order 1234"))
    );
    let left = full
        .pointer("/status/expires_in_secs")
        .and_then(Value::as_i64)
        .unwrap();
    assert!(left > 3500 && left <= 3600, "{left}");

    let (s, v) = decide(&gw, &carol, &id, "approve", "looks right").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("approved")), "{v}");

    // The identical retry goes through, once.
    let ok = gw.chat(SUPPORT_KEY, &body).await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    assert!(!ok.content().is_empty());
    assert_eq!(upstream_calls(&gw), 1);
    // Later retries get the stored answer; the upstream is not called again.
    let replay = gw.chat(SUPPORT_KEY, &body).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.json, ok.json);
    assert!(
        replay.headers["palisade-approval"]
            .to_str()
            .unwrap()
            .contains("replayed")
    );
    assert_eq!(upstream_calls(&gw), 1);
    let (_, full) = gw
        .admin(
            "GET",
            &format!("/admin/api/approvals/{id}"),
            &carol,
            Value::Null,
        )
        .await;
    assert_eq!(full["execution"], "done");

    // The vote and the decision are in the audit log with who made them.
    let audit = audit_text(&gw).await;
    assert!(audit.contains(&format!("approval.approve {id}")), "{audit}");
    assert!(
        audit.contains(&format!("approval.approved {id}")),
        "{audit}"
    );
    assert!(audit.contains("carol"));
}

async fn changed_arguments_need_a_new_approval(db: Db) {
    let gw = start(db, 0.0).await;
    let carol = user(&gw, "carol", &["approver"], &["ops"]).await;
    let first = gw
        .chat(SUPPORT_KEY, &chat_body("gpt-4o-approved", "pay invoice 7"))
        .await;
    let id = approval_id(&first);
    decide(&gw, &carol, &id, "approve", "").await;

    let changed = gw
        .chat(SUPPORT_KEY, &chat_body("gpt-4o-approved", "pay invoice 8"))
        .await;
    assert_eq!(changed.code(), "approval_pending");
    assert_ne!(approval_id(&changed), id);
    // Another agent with the same arguments is another operation too.
    let other = gw
        .chat(RESEARCH_KEY, &chat_body("gpt-4o-approved", "pay invoice 7"))
        .await;
    assert_eq!(other.code(), "approval_pending");
    assert_ne!(approval_id(&other), id);
    assert_eq!(upstream_calls(&gw), 0);

    // The approved one still runs.
    let ok = gw
        .chat(SUPPORT_KEY, &chat_body("gpt-4o-approved", "pay invoice 7"))
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(upstream_calls(&gw), 1);
}

async fn two_distinct_approvers_and_the_same_one_twice_does_not_count(db: Db) {
    let gw = start(db, 0.0).await;
    let carol = user(&gw, "carol", &["approver"], &["finance"]).await;
    let dave = user(&gw, "dave", &["approver"], &["finance", "ops"]).await;
    let body = chat_body("gpt-4o-pay", "transfer 500 EUR to ACME");
    let r = gw.chat(SUPPORT_KEY, &body).await;
    assert!(r.message().contains("0 of 2"), "{}", r.message());
    let id = approval_id(&r);

    let (s, v) = decide(&gw, &carol, &id, "approve", "").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("pending")));
    let (s, v) = decide(&gw, &carol, &id, "approve", "really").await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v.pointer("/error/message")
            .unwrap()
            .as_str()
            .unwrap()
            .contains("already voted")
    );

    let r = gw.chat(SUPPORT_KEY, &body).await;
    assert_eq!(r.code(), "approval_pending");
    assert!(r.message().contains("1 of 2"), "{}", r.message());
    assert_eq!(r.json.pointer("/error/approval/approvals"), Some(&json!(1)));
    assert_eq!(upstream_calls(&gw), 0);

    let (s, v) = decide(&gw, &dave, &id, "approve", "").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("approved")));
    assert_eq!(gw.chat(SUPPORT_KEY, &body).await.status, 200);
    assert_eq!(upstream_calls(&gw), 1);
}

async fn owner_and_outsiders_cannot_vote(db: Db) {
    let gw = start(db, 0.0).await;
    // alice@example.com owns support-bot (see the harness config).
    let alice = user(&gw, "alice", &["approver", "admin"], &["ops"]).await;
    let erin = user(&gw, "erin", &["approver"], &["finance"]).await;
    let auditor = user(&gw, "frank", &["auditor"], &["ops"]).await;
    let r = gw
        .chat(
            SUPPORT_KEY,
            &chat_body("gpt-4o-approved", "delete customer 9"),
        )
        .await;
    let id = approval_id(&r);

    let (s, v) = decide(&gw, &alice, &id, "approve", "mine").await;
    assert_eq!(s, 403, "{v}");
    assert!(v.to_string().contains("owns agent"), "{v}");
    let (s, v) = decide(&gw, &erin, &id, "approve", "").await;
    assert_eq!(s, 403);
    assert!(v.to_string().contains("not in approver group 'ops'"), "{v}");
    let (s, _) = decide(&gw, &auditor, &id, "approve", "").await;
    assert_eq!(s, 403);

    let (_, full) = gw
        .admin(
            "GET",
            &format!("/admin/api/approvals/{id}"),
            &alice,
            Value::Null,
        )
        .await;
    assert_eq!(full["state"], "pending");
    assert_eq!(full["votes"], json!([]));
    assert_eq!(
        gw.chat(
            SUPPORT_KEY,
            &chat_body("gpt-4o-approved", "delete customer 9")
        )
        .await
        .code(),
        "approval_pending"
    );
    assert_eq!(upstream_calls(&gw), 0);
    let audit = audit_text(&gw).await;
    assert!(
        audit.contains(&format!("approval.approve_refused {id}")),
        "{audit}"
    );

    // Where the config allows it, the owner may vote.
    let gw2 = start_extra(db, "[approvals]\nwait_secs = 0\nowner_may_approve = true\n").await;
    let alice = user(&gw2, "alice", &["approver"], &["ops"]).await;
    let r = gw2
        .chat(
            SUPPORT_KEY,
            &chat_body("gpt-4o-approved", "delete customer 9"),
        )
        .await;
    let (s, _) = decide(&gw2, &alice, &approval_id(&r), "approve", "").await;
    assert_eq!(s, 200);
}

async fn rejection_and_expiry_reach_the_agent_with_reasons(db: Db) {
    let gw = start(db, 0.0).await;
    let carol = user(&gw, "carol", &["approver"], &["ops"]).await;
    let body = chat_body("gpt-4o-approved", "email all customers");
    let id = approval_id(&gw.chat(SUPPORT_KEY, &body).await);

    let (s, _) = decide(&gw, &carol, &id, "reject", "").await;
    assert_eq!(s, 400, "a rejection needs a reason");
    let (s, v) = decide(&gw, &carol, &id, "reject", "not during the outage").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("rejected")));
    for _ in 0..2 {
        let r = gw.chat(SUPPORT_KEY, &body).await;
        assert_eq!(
            (r.status, r.code()),
            (403, "approval_rejected"),
            "{}",
            r.json
        );
        assert!(
            r.message().contains("not during the outage"),
            "{}",
            r.message()
        );
        assert!(r.message().contains("carol"));
        assert_eq!(
            r.json.pointer("/error/approval/state"),
            Some(&json!("rejected"))
        );
    }
    assert_eq!(upstream_calls(&gw), 0);

    // Expiry: the brief rule's requests stay open one second.
    let body = chat_body("gpt-4o-brief", "quick one");
    let first = approval_id(&gw.chat(SUPPORT_KEY, &body).await);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (s, _) = decide(&gw, &carol, &first, "approve", "too late").await;
    assert_eq!(s, 409);
    let r = gw.chat(SUPPORT_KEY, &body).await;
    assert_eq!(r.code(), "approval_expired", "{}", r.json);
    assert_eq!(approval_id(&r), first);
    assert!(
        r.message().contains("no decision before"),
        "{}",
        r.message()
    );
    // Told once; the next identical call opens a new request.
    let r = gw.chat(SUPPORT_KEY, &body).await;
    assert_eq!(r.code(), "approval_pending");
    assert_ne!(approval_id(&r), first);
    assert_eq!(upstream_calls(&gw), 0);
}

async fn concurrent_identical_retries_execute_once(db: Db) {
    let gw = start(db, 10.0).await;
    let carol = user(&gw, "carol", &["approver"], &["ops"]).await;
    let body = chat_body("gpt-4o-approved", "wire the payroll");
    // Not yet decided: with a 10 s wait, a first call would block; open it with a short-lived
    // call that gives up at once by being aborted.
    let first = {
        let fut = gw.chat(SUPPORT_KEY, &body);
        let _ = tokio::time::timeout(Duration::from_millis(600), fut).await;
        let (_, list) = gw
            .admin(
                "GET",
                "/admin/api/approvals?status=pending",
                &carol,
                Value::Null,
            )
            .await;
        list[0]["id"].as_str().unwrap().to_string()
    };
    let (s, _) = decide(&gw, &carol, &first, "approve", "").await;
    assert_eq!(s, 200);

    let (a, b) = tokio::join!(gw.chat(SUPPORT_KEY, &body), gw.chat(SUPPORT_KEY, &body));
    assert_eq!((a.status, b.status), (200, 200), "{} / {}", a.json, b.json);
    assert_eq!(a.json, b.json);
    assert_eq!(
        upstream_calls(&gw),
        1,
        "two identical retries, one execution"
    );
}

async fn the_call_is_held_open_until_the_decision(db: Db) {
    let gw = std::sync::Arc::new(start(db, 20.0).await);
    let carol = user(&gw, "carol", &["approver"], &["ops"]).await;
    let started = Instant::now();
    let call = {
        let gw = gw.clone();
        tokio::spawn(async move {
            gw.chat(SUPPORT_KEY, &chat_body("gpt-4o-approved", "ship it"))
                .await
        })
    };
    let id = loop {
        let (_, list) = gw
            .admin(
                "GET",
                "/admin/api/approvals?status=pending",
                &carol,
                Value::Null,
            )
            .await;
        if let Some(id) = list.pointer("/0/id").and_then(Value::as_str) {
            break id.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no request opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!call.is_finished(), "the call waits for the decision");
    let (s, _) = decide(&gw, &carol, &id, "approve", "").await;
    assert_eq!(s, 200);
    let r = call.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.json);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(upstream_calls(&gw), 1);
}

/// The webhook: a real receiver on loopback gets one signed announcement per new request,
/// without the arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(unsafe_code)]
async fn webhook_announces_each_new_request_signed() {
    use hmac::{Hmac, Mac};
    use http_body_util::BodyExt;

    let secret = "webhook-secret-0123456789abcdef";
    // SAFETY: set once, before the gateway (the only reader) starts; no other test reads it.
    unsafe { std::env::set_var("PALISADE_TEST_WEBHOOK_SECRET_7", secret) };

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(http::HeaderMap, Bytes)>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let bytes = body.collect().await.unwrap().to_bytes();
                            let _ = tx.send((parts.headers, bytes));
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let extra = format!(
        "[approvals]\nwait_secs = 0\n[approvals.webhook]\nurl = \"http://{hook_addr}/hook\"\nsecret_env = \"PALISADE_TEST_WEBHOOK_SECRET_7\"\n"
    );
    let gw = start_extra(Db::Sqlite, &extra).await;
    let body = chat_body("gpt-4o-approved", "secret plans for the merger");
    let id = approval_id(&gw.chat(SUPPORT_KEY, &body).await);
    gw.chat(SUPPORT_KEY, &body).await; // attaches; no second announcement

    let (headers, bytes) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("announced")
        .unwrap();
    let sig = headers["palisade-signature"].to_str().unwrap();
    let (t, v1) = sig
        .strip_prefix("t=")
        .and_then(|r| r.split_once(",v1="))
        .unwrap_or_else(|| panic!("signature {sig:?}"));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&bytes);
    assert_eq!(
        hex::encode(mac.finalize().into_bytes()),
        v1,
        "HMAC over t.body"
    );
    let now = palisade_store::time::now_ms() / 1000;
    assert!((now - t.parse::<i64>().unwrap()).abs() < 60);

    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["event"], "approval.requested");
    assert_eq!(v["approval"]["id"], json!(id));
    assert_eq!(v["approval"]["agent"], "support-bot");
    assert_eq!(v["approval"]["rule"], "reserved");
    assert!(v["approval"].get("arguments").is_none());
    assert!(
        !String::from_utf8_lossy(&bytes).contains("merger"),
        "arguments stay out"
    );

    // One request, one announcement.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err()
    );
}

fn palisade(args: &[&str], url: &str, token: &str) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .env("PALISADE_URL", url)
        .env("PALISADE_TOKEN", token)
        .output()
        .expect("run palisade");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn cli(args: &[&str], url: &str, token: &str) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (url, token) = (url.to_string(), token.to_string());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        palisade(&args, &url, &token)
    })
    .await
    .unwrap()
}

/// `palisade approvals list|show|approve|reject|groups` against a running gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lists_shows_approves_and_rejects() {
    let gw = start(Db::Sqlite, 0.0).await;
    let url = format!("http://{}", gw.addr);
    // Groups from the CLI.
    let (s, v) = gw
        .admin(
            "POST",
            "/admin/api/users",
            ADMIN_TOKEN,
            json!({"name": "carol", "roles": ["approver"]}),
        )
        .await;
    assert_eq!(s, 201);
    let carol_id = v["user"]["id"].as_str().unwrap().to_string();
    let carol = v["token"]["secret"].as_str().unwrap().to_string();
    let (ok, out, err) = cli(
        &["approvals", "groups", &carol_id, "--group", "ops"],
        &url,
        ADMIN_TOKEN,
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("ops"));
    let (ok, _, err) = cli(
        &["approvals", "groups", &carol_id, "--group", "x"],
        &url,
        &carol,
    )
    .await;
    assert!(!ok, "only admins set groups");
    assert!(err.contains("403"), "{err}");

    let yes = chat_body("gpt-4o-approved", "approve me");
    let no = chat_body("gpt-4o-approved", "reject me");
    let yes_id = approval_id(&gw.chat(SUPPORT_KEY, &yes).await);
    let no_id = approval_id(&gw.chat(SUPPORT_KEY, &no).await);

    let (ok, out, err) = cli(&["approvals", "list"], &url, &carol).await;
    assert!(ok, "{err}");
    assert!(out.contains(&yes_id) && out.contains(&no_id), "{out}");
    assert!(
        out.contains("support-bot") && out.contains("reserved"),
        "{out}"
    );

    let (ok, out, _) = cli(&["approvals", "show", &yes_id], &url, &carol).await;
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        shown.pointer("/arguments/messages/0/content"),
        Some(&json!("approve me"))
    );

    let (ok, out, err) = cli(&["approvals", "approve", &yes_id], &url, &carol).await;
    assert!(ok, "{err}");
    assert!(out.contains("approved"), "{out}");
    let (ok, _, err) = cli(&["approvals", "approve", &yes_id], &url, &carol).await;
    assert!(!ok);
    assert!(err.contains("409"), "{err}");
    let (ok, out, err) = cli(
        &["approvals", "reject", &no_id, "--reason", "not today"],
        &url,
        &carol,
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("rejected"));

    let (ok, out, _) = cli(&["approvals", "list", "--status", "pending"], &url, &carol).await;
    assert!(ok);
    assert!(!out.contains(&yes_id) && !out.contains(&no_id), "{out}");
    assert_eq!(gw.chat(SUPPORT_KEY, &yes).await.status, 200);
    let r = gw.chat(SUPPORT_KEY, &no).await;
    assert_eq!(r.code(), "approval_rejected");
    assert!(r.message().contains("not today"));
}

/// Approve the pending request of `r` as a fresh approver in `ops`.
async fn approve_pending(gw: &TestGateway, id: &str, who: &str) {
    let approver = user(gw, who, &["approver"], &["ops"]).await;
    let (s, v) = decide(gw, &approver, id, "approve", "ok").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("approved")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_stream_runs_once_and_is_replayed_as_the_same_stream() {
    let gw = start(Db::Sqlite, 0.0).await;
    let body = chat_body("gpt-4o-approved", "stream the refund note");
    let (status, _) = gw.chat_stream(SUPPORT_KEY, &body).await;
    assert_eq!(status, 403, "held");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let held = gw.chat(SUPPORT_KEY, &streamed).await;
    let id = approval_id(&held);
    approve_pending(&gw, &id, "dora").await;

    let (status, first) = gw.chat_stream(SUPPORT_KEY, &body).await;
    assert_eq!(status, 200);
    assert_eq!(first.last().map(String::as_str), Some("[DONE]"));
    let text = stream_text(&first);
    assert!(!text.is_empty());
    assert_eq!(upstream_calls(&gw), 1);

    // The identical retry: the same text, streamed, without a second upstream call.
    let (status, again) = gw.chat_stream(SUPPORT_KEY, &body).await;
    assert_eq!(status, 200);
    assert_eq!(stream_text(&again), text);
    assert_eq!(again.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(upstream_calls(&gw), 1, "replayed, not run again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_through_the_anthropic_endpoint_keeps_the_anthropic_shape() {
    let gw = start(Db::Sqlite, 0.0).await;
    let body = json!({"model": "gpt-4o-approved", "max_tokens": 64,
                      "messages": [{"role": "user", "content": "refund order 77"}]});
    let send = || async {
        let (s, _, b) = gw
            .request_with(
                "POST",
                "/v1/messages",
                Some(SUPPORT_KEY),
                Bytes::from(body.to_string()),
                &[("anthropic-version", "2023-06-01")],
            )
            .await;
        (
            s,
            serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null),
        )
    };
    let (s, held) = send().await;
    assert_eq!(s, 403, "{held}");
    assert_eq!(held["type"], "error", "Anthropic's error shape: {held}");
    let message = held["error"]["message"].as_str().unwrap_or_default();
    let id = message
        .split_whitespace()
        .find(|w| w.starts_with("apr_"))
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '_'))
        .unwrap_or_default()
        .to_string();
    assert!(id.starts_with("apr_"), "{held}");
    approve_pending(&gw, &id, "erin").await;
    let (s, ran) = send().await;
    assert_eq!(s, 200, "{ran}");
    assert_eq!(ran["type"], "message", "{ran}");
    let (s, replayed) = send().await;
    assert_eq!(s, 200, "{replayed}");
    assert_eq!(
        replayed["type"], "message",
        "a replay in the caller's shape: {replayed}"
    );
    assert_eq!(replayed["content"], ran["content"]);
    assert_eq!(upstream_calls(&gw), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_may_release_a_claim_and_never_one_still_running() {
    let gw = start(Db::Sqlite, 0.0).await;
    let body = chat_body("gpt-4o-approved", "refund order 99");
    let held = gw.chat(SUPPORT_KEY, &body).await;
    let id = approval_id(&held);
    approve_pending(&gw, &id, "fay").await;
    // A gateway claims the call and is, as far as anyone knows, still running it.
    let claim = gw.gw.store.claim_approval(&id).await.unwrap();
    assert!(matches!(claim, palisade_store::Claim::Claimed(_)));
    let path = format!("/admin/api/approvals/{id}/release");
    let approver = user(&gw, "gus", &["approver"], &["ops"]).await;
    let (s, v) = gw
        .admin("POST", &path, &approver, json!({"reason": "crashed"}))
        .await;
    assert_eq!(s, 403, "admins only: {v}");
    let (s, v) = gw
        .admin("POST", &path, ADMIN_TOKEN, json!({"reason": " "}))
        .await;
    assert_eq!(s, 400, "a reason is needed: {v}");
    let (s, v) = gw
        .admin("POST", &path, ADMIN_TOKEN, json!({"reason": "crashed"}))
        .await;
    assert_eq!(s, 409, "claimed just now: still running: {v}");
    // The agent's retry meanwhile runs nothing.
    let retry = gw.chat(SUPPORT_KEY, &body).await;
    assert_eq!(retry.status, 403, "{}", retry.json);
    assert!(
        retry.message().contains("executing it now"),
        "{}",
        retry.json
    );
    assert_eq!(upstream_calls(&gw), 0);
    let audit = audit_text(&gw).await;
    assert!(
        audit.contains(&format!("approval.release_refused {id}")),
        "{audit}"
    );
}
