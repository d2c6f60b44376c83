//! Approvals on `/mcp` in-process, on SQLite and on PostgreSQL, with the real `approvals` plugin
//! and `tests/e2e/servers/payments_mail.py` (official `mcp` Python SDK, stdio) counting what it
//! executes: a held `send_email` is a pending tool result with the approval in `_meta`, and
//! once approved, concurrent identical retries send one email and all get its result.
//! (The issue's full end-to-end test, with the SDK client, is tests/e2e/test_approvals.py.)

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::{ADMIN_TOKEN, Db, SUPPORT_KEY, TestGateway};
use serde_json::{Value, json};

const RULES: &str = r#"
[[plugins]]
name = "approvals"
path = "approvals.wasm"
[[plugins.config.rules]]
name = "mail"
tools = ["pm__send_email"]
group = "mail"
ttl_secs = 600
"#;

/// The Python with the `mcp` SDK (`make setup`), by its real path: a stdio child gets only PATH.
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import mcp, sys; print(sys.executable)"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python3 with the mcp SDK is missing: run `make setup`"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn server_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/servers/payments_mail.py")
}

async fn call(gw: &TestGateway, args: &Value) -> Value {
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {}});
    let body = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "pm__send_email", "arguments": args, "_meta": meta}});
    let (status, _, bytes) = gw
        .request_with(
            "POST",
            "/mcp",
            Some(SUPPORT_KEY),
            Bytes::from(body.to_string()),
            &[
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "pm__send_email"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    v["result"].clone()
}

fn sent(outbox: &std::path::Path) -> usize {
    std::fs::read_to_string(outbox)
        .map(|s| s.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

async fn held_then_concurrent_retries_send_once(db: Db) {
    let dir = common::temp_dir("mcp-approvals");
    let outbox = dir.join("outbox.jsonl");
    let extra = format!(
        r#"
[approvals]
wait_secs = 2

[[mcp_servers]]
name = "pm"
transport = "stdio"
command = "{}"
args = ["{}"]
env = {{ OUTBOX = "{}" }}
"#,
        python(),
        server_py().display(),
        outbox.display()
    );
    let gw = TestGateway::start_full(db, &["approvals"], RULES, false, &extra).await;
    let args = json!({"to": "bob@example.com", "subject": "hi", "body": "Hello"});

    let held = call(&gw, &args).await;
    assert_eq!(held["isError"], true, "{held}");
    let approval = &held["_meta"]["palisade/approval"];
    assert_eq!(approval["state"], "pending", "{held}");
    let id = approval["id"].as_str().unwrap().to_string();
    let text = held["content"][0]["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with(&format!("approval {id} pending, 0 of 1")),
        "{text}"
    );
    assert_eq!(sent(&outbox), 0, "held, not executed");

    let (s, v) = gw
        .admin(
            "POST",
            "/admin/api/users",
            ADMIN_TOKEN,
            json!({"name": "carol", "email": "carol@example.com", "roles": ["approver"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let carol = v["token"]["secret"].as_str().unwrap().to_string();
    let uid = v["user"]["id"].as_str().unwrap().to_string();
    let (s, g) = gw
        .admin(
            "PUT",
            &format!("/admin/api/users/{uid}/groups"),
            ADMIN_TOKEN,
            json!({"groups": ["mail"]}),
        )
        .await;
    assert_eq!(s, 200, "{g}");
    let (s, d) = gw
        .admin(
            "POST",
            &format!("/admin/api/approvals/{id}/decisions"),
            &carol,
            json!({"decision": "approve", "reason": "ok"}),
        )
        .await;
    assert_eq!(s, 200, "{d}");

    let (a, b, c) = tokio::join!(call(&gw, &args), call(&gw, &args), call(&gw, &args));
    assert_eq!(sent(&outbox), 1, "three identical retries, one email");
    for r in [&a, &b, &c] {
        assert_eq!(r["isError"], false, "{r}");
        assert_eq!(
            r["content"], a["content"],
            "all get the one execution's result"
        );
        assert_eq!(r["_meta"]["palisade/approval"]["id"], json!(id));
    }
    let replayed = [&a, &b, &c]
        .iter()
        .filter(|r| r["_meta"]["palisade/approval"]["replayed"] == true)
        .count();
    assert_eq!(replayed, 2);
}

mod held_then_concurrent_retries_send_once {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::held_then_concurrent_retries_send_once(crate::common::Db::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::held_then_concurrent_retries_send_once(crate::common::Db::Postgres).await
    }
}
