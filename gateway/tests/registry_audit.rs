//! The store behind the gateway, through the real HTTP API, on SQLite and on PostgreSQL: the
//! agent registry, keys, roles, the hash-chained audit log, its export and verification.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Run a test body against both backends.
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(Db::Postgres).await
            }
        }
    };
}

const MODEL_ALLOW: &str = r#"
[[plugins]]
name = "model-allow"
path = "model-allow.wasm"
[plugins.config]
default = ["gpt-4o-mini"]
"#;

async fn start(db: Db) -> TestGateway {
    TestGateway::start_full(db, &["model-allow"], MODEL_ALLOW, false, "").await
}

/// Run SQL straight against the test gateway's database, as someone tampering would.
fn tamper(gw: &TestGateway, sql: &str) {
    let out = if let Some(path) = gw.database.strip_prefix("sqlite://") {
        std::process::Command::new("python3")
            .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()", path, sql])
            .output()
    } else {
        let schema = gw.database.rsplit("search_path%3D").next().unwrap().to_string();
        std::process::Command::new("psql")
            .args([PG_URL, "-v", "ON_ERROR_STOP=1", "-c", &format!("SET search_path={schema}; {sql}")])
            .output()
    }
    .expect("run tamper command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn export(gw: &TestGateway, token: &str, query: &str) -> (u16, String) {
    let (s, _, b) = gw
        .request(
            "GET",
            &format!("/admin/api/audit/export?{query}"),
            Some(token),
            bytes::Bytes::new(),
        )
        .await;
    (s, String::from_utf8_lossy(&b).into_owned())
}

/// Rows of a CSV export as dicts, parsed by Python's csv module.
fn parse_csv(text: &str) -> Vec<serde_json::Map<String, Value>> {
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import csv,json,sys; print(json.dumps(list(csv.DictReader(sys.stdin))))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("python's csv module parsed the export")
}

async fn registry_crud_and_keys(db: Db) {
    let gw = start(db).await;
    // Create an agent: the key is shown once.
    let (s, v) = gw
        .admin(
            "POST",
            "/admin/api/agents",
            ADMIN_TOKEN,
            json!({
                "id": "billing-bot", "owner": "carol@example.com", "team": "finance",
                "purpose": "answers invoices, \"politely\", with commas, and\nnewlines",
                "models": ["gpt-4o-mini"], "labels": {"env": "prod"}
            }),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let key1 = v["key"]["secret"].as_str().unwrap().to_string();
    let key1_id = v["key"]["id"].as_str().unwrap().to_string();
    assert!(key1.starts_with("pk_"));
    assert_eq!(
        gw.chat(&key1, &chat_body("gpt-4o-mini", "hi")).await.status,
        200
    );

    // Duplicate id: 409.
    let (s, _) = gw
        .admin(
            "POST",
            "/admin/api/agents",
            ADMIN_TOKEN,
            json!({"id": "billing-bot", "owner": "x"}),
        )
        .await;
    assert_eq!(s, 409);

    // Show: keys listed by prefix, never the secret.
    let (s, v) = gw
        .admin(
            "GET",
            "/admin/api/agents/billing-bot",
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["agent"]["owner"], "carol@example.com");
    assert!(
        !v.to_string().contains(&key1),
        "a listing must never show a key"
    );

    // Rotate: the new key works, the old one is refused at once.
    let (s, v) = gw
        .admin(
            "POST",
            &format!("/admin/api/agents/billing-bot/keys/{key1_id}/rotate"),
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let key2 = v["secret"].as_str().unwrap().to_string();
    let key2_id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        gw.chat(&key2, &chat_body("gpt-4o-mini", "hi")).await.status,
        200
    );
    let old = gw.chat(&key1, &chat_body("gpt-4o-mini", "hi")).await;
    assert_eq!((old.status, old.code()), (401, "invalid_api_key"));

    // Revoke: refused on the next call.
    let (s, _) = gw
        .admin(
            "DELETE",
            &format!("/admin/api/agents/billing-bot/keys/{key2_id}"),
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        gw.chat(&key2, &chat_body("gpt-4o-mini", "hi")).await.status,
        401
    );

    // Suspend and re-activate an agent.
    let (_, v) = gw
        .admin(
            "POST",
            "/admin/api/agents/billing-bot/keys",
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    let key3 = v["secret"].as_str().unwrap().to_string();
    assert_eq!(
        gw.chat(&key3, &chat_body("gpt-4o-mini", "hi")).await.status,
        200
    );
    let (s, v) = gw
        .admin(
            "POST",
            "/admin/api/agents/billing-bot/suspend",
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("suspended")));
    let r = gw.chat(&key3, &chat_body("gpt-4o-mini", "hi")).await;
    assert_eq!(r.status, 401);
    assert!(r.message().contains("suspended"), "{}", r.message());
    gw.admin(
        "POST",
        "/admin/api/agents/billing-bot/activate",
        ADMIN_TOKEN,
        Value::Null,
    )
    .await;
    assert_eq!(
        gw.chat(&key3, &chat_body("gpt-4o-mini", "hi")).await.status,
        200
    );

    // Config agents are in the inventory too; the CSV survives commas, quotes and newlines.
    let (s, _, b) = gw
        .request(
            "GET",
            "/admin/api/agents/export?format=csv",
            Some(ADMIN_TOKEN),
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(s, 200);
    let rows = parse_csv(&String::from_utf8_lossy(&b));
    let ids: HashSet<_> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        HashSet::from([
            "billing-bot".into(),
            "support-bot".into(),
            "research-bot".into()
        ])
    );
    let billing = rows.iter().find(|r| r["id"] == "billing-bot").unwrap();
    assert_eq!(
        billing["purpose"],
        "answers invoices, \"politely\", with commas, and\nnewlines"
    );
    assert_eq!(billing["owner"], "carol@example.com");
    let support = rows.iter().find(|r| r["id"] == "support-bot").unwrap();
    assert_eq!(support["purpose"], "answers customers, politely");
}
both_backends!(registry_crud_and_keys);

async fn roles_are_enforced(db: Db) {
    let gw = start(db).await;
    let (s, v) = gw
        .admin(
            "POST",
            "/admin/api/users",
            ADMIN_TOKEN,
            json!({"name": "audrey", "email": "a@example.com", "roles": ["auditor"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let auditor = v["token"]["secret"].as_str().unwrap().to_string();
    // An auditor reads and exports...
    assert_eq!(
        gw.admin("GET", "/admin/api/agents", &auditor, Value::Null)
            .await
            .0,
        200
    );
    assert_eq!(export(&gw, &auditor, "format=csv").await.0, 200);
    assert_eq!(
        gw.admin("GET", "/admin/api/audit/verify", &auditor, Value::Null)
            .await
            .0,
        200
    );
    // ...but cannot change anything.
    let (s, v) = gw
        .admin(
            "POST",
            "/admin/api/agents",
            &auditor,
            json!({"id": "sneaky", "owner": "x"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    assert_eq!(
        gw.admin(
            "POST",
            "/admin/api/users",
            &auditor,
            json!({"name": "x", "roles": ["admin"]})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        gw.admin(
            "POST",
            "/admin/api/agents/support-bot/suspend",
            &auditor,
            Value::Null
        )
        .await
        .0,
        403
    );
    // No token, a bad token, an agent key: 401.
    assert_eq!(
        gw.request("GET", "/admin/api/agents", None, bytes::Bytes::new())
            .await
            .0,
        401
    );
    assert_eq!(
        gw.admin("GET", "/admin/api/agents", "ut-wrong", Value::Null)
            .await
            .0,
        401
    );
    assert_eq!(
        gw.admin("GET", "/admin/api/agents", SUPPORT_KEY, Value::Null)
            .await
            .0,
        401
    );
}
both_backends!(roles_are_enforced);

async fn audit_has_one_row_per_call_and_finds_tampering(db: Db) {
    let gw = start(db).await;
    // A burst of concurrent calls: allowed, denied, streamed.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let body = chat_body(
            if i % 3 == 0 { "gpt-4o" } else { "gpt-4o-mini" },
            &format!("call {i}"),
        );
        tasks.push(async move { body });
    }
    let bodies: Vec<Value> = futures_util::future::join_all(tasks).await;
    let replies =
        futures_util::future::join_all(bodies.iter().map(|b| gw.chat(SUPPORT_KEY, b))).await;
    let mut expected = std::collections::HashMap::new();
    for r in &replies {
        let id = r.headers["palisade-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        expected.insert(id, r.status);
    }
    assert_eq!(replies.iter().filter(|r| r.status == 403).count(), 10);
    let (_, events) = gw
        .chat_stream(SUPPORT_KEY, &chat_body("gpt-4o-mini", "streamed"))
        .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    // Batched writes land within a flush interval; wait for them (bounded).
    let mut rows = Vec::new();
    for _ in 0..100 {
        let (s, text) = export(&gw, ADMIN_TOKEN, "agent=support-bot&format=jsonl").await;
        assert_eq!(s, 200);
        rows = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        if rows.len() >= 31 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows.len(), 31, "one row per call");
    for row in &rows {
        let Some(status) = expected.get(row["request_id"].as_str().unwrap()) else {
            continue;
        };
        assert_eq!(row["status"].as_i64(), Some(i64::from(*status)));
        assert_eq!(row["agent"], "support-bot");
        assert_eq!(row["owner"], "alice@example.com");
        assert_eq!(row["team"], "support");
        assert_eq!(row["kind"], "llm-call");
        assert_eq!(row["policy_version"], gw.status().await["policy_version"]);
        let verdicts = row["verdicts"].to_string();
        assert!(verdicts.contains("model-allow"), "{verdicts}");
        if *status == 403 {
            assert_eq!(row["decided_by"], "model-allow");
            assert_eq!(row["error_code"], "model_not_allowed");
            assert_eq!(row["target"], "gpt-4o");
        } else {
            assert_eq!(row["provider"], "mock/gpt-4o-mini");
            assert!(row["output_tokens"].as_i64().unwrap() > 0);
        }
    }
    assert!(
        rows.iter().any(|r| r["request_id"]
            .as_str()
            .is_some_and(|id| !expected.contains_key(id))),
        "the stream's row"
    );

    let report = verify(&gw).await;
    assert_eq!(report["ok"], true, "{report}");

    // Change a row straight in the database: verify names it.
    let victim = rows[10]["seq"].as_i64().unwrap();
    tamper(
        &gw,
        &format!("UPDATE audit_events SET status = status + 1 WHERE seq = {victim}"),
    );
    let report = verify(&gw).await;
    assert_eq!(
        (report["ok"].as_bool(), report["first_bad"]["seq"].as_i64()),
        (Some(false), Some(victim)),
        "{report}"
    );
    // Delete an earlier row: now that one is the first bad row.
    let earlier = rows[3]["seq"].as_i64().unwrap();
    tamper(
        &gw,
        &format!("DELETE FROM audit_events WHERE seq = {earlier}"),
    );
    let report = verify(&gw).await;
    assert_eq!(report["ok"], false);
    let bad = report["first_bad"]["seq"].as_i64().unwrap();
    assert!(
        bad == earlier || bad == earlier + 1,
        "deleted {earlier}, reported {report}"
    );
}
both_backends!(audit_has_one_row_per_call_and_finds_tampering);

async fn verify(gw: &TestGateway) -> Value {
    gw.admin("GET", "/admin/api/audit/verify", ADMIN_TOKEN, Value::Null)
        .await
        .1
}

async fn export_by_agent_and_time_range_is_exact(db: Db) {
    let gw = start(db).await;
    let burst = |n: usize, key: &'static str| {
        let gw = &gw;
        async move {
            let mut ids = Vec::new();
            for i in 0..n {
                let r = gw
                    .chat(key, &chat_body("gpt-4o-mini", &format!("q{i}")))
                    .await;
                ids.push(
                    r.headers["palisade-request-id"]
                        .to_str()
                        .unwrap()
                        .to_string(),
                );
            }
            ids
        }
    };
    let before = burst(4, SUPPORT_KEY).await;
    let _other = burst(3, RESEARCH_KEY).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mark = palisade::app::now_ms();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let after = burst(5, SUPPORT_KEY).await;
    let mark_s = palisade_store::time::format_rfc3339_ms(mark);
    tokio::time::sleep(Duration::from_millis(200)).await; // batched flush

    let ids = |text: &str| -> Vec<String> {
        parse_csv(text)
            .iter()
            .map(|r| r["request_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (s, text) = export(
        &gw,
        ADMIN_TOKEN,
        &format!("agent=support-bot&from={mark_s}&format=csv"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(ids(&text), after);
    let (_, text) = export(
        &gw,
        ADMIN_TOKEN,
        &format!("agent=support-bot&to={mark_s}&format=csv"),
    )
    .await;
    assert_eq!(ids(&text), before);
    // A bare date as the upper bound includes the whole day.
    let today = &mark_s[..10];
    let (_, text) = export(
        &gw,
        ADMIN_TOKEN,
        &format!("agent=support-bot&from={today}&to={today}"),
    )
    .await;
    assert_eq!(ids(&text).len(), before.len() + after.len());
    // Another agent's rows never leak into this agent's export.
    let (_, text) = export(&gw, ADMIN_TOKEN, "agent=research-bot").await;
    assert_eq!(ids(&text).len(), 3);
    let (s, text) = export(&gw, ADMIN_TOKEN, "from=not-a-date").await;
    assert_eq!(s, 400, "{text}");
}
both_backends!(export_by_agent_and_time_range_is_exact);

async fn failing_audit_log_refuses_calls_and_loses_nothing(db: Db) {
    let gw = start(db).await;
    assert_eq!(
        gw.chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "before"))
            .await
            .status,
        200
    );
    // Break the audit table under the running gateway.
    tamper(&gw, "ALTER TABLE audit_events RENAME TO audit_events_away");
    // The call in flight when writes start failing is answered (batched mode), and its event is
    // held; new calls are then refused instead of running unaudited.
    let held = gw
        .chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "during"))
        .await;
    assert_eq!(held.status, 200);
    let held_id = held.headers["palisade-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut refused = None;
    for _ in 0..100 {
        let r = gw
            .chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "probe"))
            .await;
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("calls are refused while the audit log is down");
    assert_eq!(refused.code(), "audit_unavailable");
    assert_eq!(gw.status().await["audit"]["healthy"], false);
    // Repair: held events land, calls are admitted again.
    tamper(&gw, "ALTER TABLE audit_events_away RENAME TO audit_events");
    let mut ok = false;
    for _ in 0..100 {
        if gw
            .chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "after"))
            .await
            .status
            == 200
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "calls admitted again once the log is writable");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, text) = export(
        &gw,
        ADMIN_TOKEN,
        &format!("request_id={held_id}&format=jsonl"),
    )
    .await;
    assert_eq!(
        text.lines().count(),
        1,
        "the event held during the outage was written"
    );
    assert_eq!(verify(&gw).await["ok"], true);
}
both_backends!(failing_audit_log_refuses_calls_and_loses_nothing);

async fn sync_durability_survives_sigkill(db: Db) {
    let dir = temp_dir("kill");
    let database = database_url(db, &dir).await;
    std::fs::copy(dist_plugin("model-allow"), dir.join("model-allow.wasm")).unwrap();
    let config = dir.join("palisade.toml");
    let text = format!(
        "{}\n[audit]\ndurability = \"sync\"\n",
        config_text(&dir, &database, MODEL_ALLOW)
    );
    std::fs::write(&config, text).unwrap();
    let (mock_addr, _mock) =
        mock_upstream::spawn(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let upstream = format!("http://{mock_addr}");

    let mut proc = spawn_gateway(&config, &upstream);
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6 {
        let (client, stop, addr) = (client.clone(), stop.clone(), proc.addr.clone());
        workers.push(tokio::spawn(async move {
            let mut ok_ids = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let body = chat_body("gpt-4o-mini", &format!("w{w} n{n}")).to_string();
                let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
                    .header("authorization", format!("Bearer {SUPPORT_KEY}"))
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status().is_success() => {
                        let id = r.headers()["palisade-request-id"]
                            .to_str()
                            .unwrap()
                            .to_string();
                        // Only a complete answer counts as answered.
                        if http_body_util::BodyExt::collect(r.into_body())
                            .await
                            .is_ok()
                        {
                            ok_ids.push(id);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break, // the gateway is gone
                }
            }
            ok_ids
        }));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    proc.child.kill().expect("SIGKILL"); // kill() sends SIGKILL on Unix
    let _ = proc.child.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = Vec::new();
    for w in workers {
        answered.extend(w.await.unwrap());
    }
    assert!(
        answered.len() > 10,
        "load ran before the kill: {}",
        answered.len()
    );

    let mut proc = spawn_gateway(&config, &upstream);
    let addr = proc.addr.clone();
    let get = |path: String| {
        let (client, addr) = (client.clone(), addr.clone());
        async move {
            let req = http::Request::get(format!("http://{addr}{path}"))
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let r = client.request(req).await.unwrap();
            let b = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes();
            String::from_utf8_lossy(&b).into_owned()
        }
    };
    let text = get("/admin/api/audit/export?agent=support-bot&format=jsonl".into()).await;
    let logged: HashSet<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let missing: Vec<_> = answered.iter().filter(|id| !logged.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "answered with 2xx but not in the audit log: {missing:?}"
    );
    let report: Value = serde_json::from_str(&get("/admin/api/audit/verify".into()).await).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let _ = proc.child.kill();
    let _ = proc.child.wait();
    let _ = std::fs::remove_dir_all(dir);
}
both_backends!(sync_durability_survives_sigkill);

/// Issue 14: a NUL or another control character in an agent-chosen name (the model, an MCP
/// tool, prompt or resource) is a clear 400 / JSON-RPC invalid-params error naming the field,
/// never poison for the audit log: the refusals are audited (the name stored with its NUL
/// replaced), the next call is 200, the chain verifies and `/admin/status` says the audit is
/// healthy with nothing quarantined.
async fn control_characters_in_names_are_refused_and_the_audit_stays_healthy(db: Db) {
    let desk = "[[mcp_servers]]\nname = \"desk\"\ntransport = \"http\"\nurl = \"{mock}/mcp\"\n";
    let gw = TestGateway::start_full(db, &["model-allow"], MODEL_ALLOW, false, desk).await;
    let r = gw
        .chat(SUPPORT_KEY, &chat_body("gpt-4o-mini\u{0}", "hi"))
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_request"), "{}", r.json);
    assert!(r.message().contains("`model`"), "{}", r.json);
    let long = gw
        .chat(SUPPORT_KEY, &chat_body(&"m".repeat(257), "hi"))
        .await;
    assert_eq!((long.status, long.code()), (400, "invalid_request"));
    // The Anthropic face converts to the same canonical body, so the same check refuses it.
    let body = json!({"model": "claude\u{1b}[2J", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]});
    let (s, _, b) = gw
        .request(
            "POST",
            "/v1/messages",
            Some(SUPPORT_KEY),
            body.to_string().into(),
        )
        .await;
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&b));
    assert!(String::from_utf8_lossy(&b).contains("`model`"));

    // MCP, in a session (the stateless revision wants the name in an `Mcp-Name` header, where
    // a NUL cannot even travel).
    let mcp = |method: &str, params: Value, sid: Option<String>| {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
        let gw = &gw;
        async move {
            let mut h = vec![
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", "2025-11-25"),
            ];
            if let Some(sid) = &sid {
                h.push(("mcp-session-id", sid.as_str()));
            }
            let (s, headers, b) = gw
                .request_with(
                    "POST",
                    "/mcp",
                    Some(SUPPORT_KEY),
                    body.to_string().into(),
                    &h,
                )
                .await;
            let sid = headers
                .get("mcp-session-id")
                .map(|v| v.to_str().unwrap().to_string());
            (
                s,
                sid,
                serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null),
            )
        }
    };
    let init = json!({"protocolVersion": "2025-11-25", "capabilities": {},
                      "clientInfo": {"name": "test", "version": "0"}});
    let (s, sid, v) = mcp("initialize", init, None).await;
    assert_eq!(s, 200, "{v}");
    for (method, params, field) in [
        (
            "tools/call",
            json!({"name": "desk__crm_query\u{0}", "arguments": {}}),
            "`name`",
        ),
        ("prompts/get", json!({"name": "desk__reply\u{7}"}), "`name`"),
        (
            "resources/read",
            json!({"uri": "desk+desk://policies/\u{0}"}),
            "`uri`",
        ),
    ] {
        let (s, _, v) = mcp(method, params, sid.clone()).await;
        assert_eq!(s, 200, "{method}: {v}");
        assert_eq!(v["error"]["code"], -32602, "{method}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(field), "{method}: {v}");
    }

    let ok = gw
        .chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "after"))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    gw.gw.audit.flush().await.expect("audit flushed");
    let status = gw.status().await;
    assert_eq!(status["audit"]["healthy"], true, "{status}");
    assert_eq!(status["audit"]["quarantined"], 0, "{status}");
    assert_eq!(verify(&gw).await["ok"], true);
    let (_, text) = export(&gw, ADMIN_TOKEN, "format=jsonl").await;
    assert!(text.contains("desk__crm_query\u{FFFD}"), "{text}");
    assert!(!text.contains("\\u0000"), "{text}");
}
both_backends!(control_characters_in_names_are_refused_and_the_audit_stays_healthy);
