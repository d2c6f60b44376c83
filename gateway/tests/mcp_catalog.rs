//! `/mcp` beyond tools, in-process against the mock upstream's MCP desk over HTTP: prompts
//! and resources (and resource templates) are listed and used as `tool-acl` allows, under the
//! same decision as tools (argument completions too); a server's `notifications/tools/list_changed` refreshes the cached
//! catalog and reaches the agent's `GET /mcp` stream; a session ended on one replica is
//! refused by another.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{RESEARCH_KEY, SUPPORT_KEY, TestGateway};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const ACL: &str = r#"
[[plugins]]
name = "tool-acl"
path = "tool-acl.wasm"
[[plugins.config.rules]]
agents = ["support-bot"]
allow = ["desk__crm_query", "desk__enable_refunds", "desk__issue_refund",
         "prompt:desk__reply_template",
         "resource:desk+desk://policies/*", "resource:desk+desk://tickets/*"]
[[plugins.config.rules.args]]
tool = "prompt:desk__reply_template"
path = "$.tone"
one_of = ["friendly", "formal"]
[[plugins.config.rules]]
agents = ["research-bot"]
allow = ["desk__*", "prompt:desk__*", "resource:desk+*"]
deny = ["resource:desk+desk://tickets/{id}"]
"#;

/// The mock's desk over HTTP, lists cached for ten minutes: only a notification refreshes them.
const DESK: &str = r#"
[mcp]
catalog_ttl_ms = 600000

[[mcp_servers]]
name = "desk"
transport = "http"
url = "{mock}/mcp"
"#;

const VERSION: &str = "2025-11-25";

async fn post(gw: &TestGateway, key: &str, sid: Option<&str>, body: Value) -> (u16, String, Value) {
    let mut h = vec![
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", VERSION),
    ];
    if let Some(s) = sid {
        h.push(("mcp-session-id", s));
    }
    let (status, headers, bytes) = gw
        .request_with("POST", "/mcp", Some(key), Bytes::from(body.to_string()), &h)
        .await;
    let sid = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (
        status,
        sid,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn initialize(gw: &TestGateway, key: &str) -> String {
    let (status, sid, body) = post(
        gw,
        key,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": VERSION, "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let caps = &body["result"]["capabilities"];
    for c in ["tools", "prompts", "resources"] {
        assert_eq!(caps[c]["listChanged"], true, "{body}");
    }
    assert!(caps["completions"].is_object(), "{body}");
    sid
}

async fn rpc(gw: &TestGateway, key: &str, sid: &str, method: &str, params: Value) -> Value {
    let (status, _, body) = post(
        gw,
        key,
        Some(sid),
        json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": params}),
    )
    .await;
    assert_eq!(status, 200, "{method}: {body}");
    body
}

fn names(body: &Value, key: &str, field: &str) -> Vec<String> {
    let mut v: Vec<String> = body["result"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {body}"))
        .iter()
        .map(|t| t[field].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_and_resources_are_listed_and_used_as_the_policy_allows() {
    let gw = TestGateway::start_full(common::Db::Sqlite, &["tool-acl"], ACL, false, DESK).await;
    let support = initialize(&gw, SUPPORT_KEY).await;
    let research = initialize(&gw, RESEARCH_KEY).await;

    // Lists: each agent sees what its rules grant.
    let p = rpc(&gw, SUPPORT_KEY, &support, "prompts/list", json!({})).await;
    assert_eq!(names(&p, "prompts", "name"), ["desk__reply_template"]);
    let p = rpc(&gw, RESEARCH_KEY, &research, "prompts/list", json!({})).await;
    assert_eq!(
        names(&p, "prompts", "name"),
        ["desk__reply_template", "desk__salary_letter"]
    );
    let r = rpc(&gw, SUPPORT_KEY, &support, "resources/list", json!({})).await;
    assert_eq!(
        names(&r, "resources", "uri"),
        ["desk+desk://policies/refunds"]
    );
    let r = rpc(&gw, RESEARCH_KEY, &research, "resources/list", json!({})).await;
    assert_eq!(
        names(&r, "resources", "uri"),
        ["desk+desk://hr/salaries", "desk+desk://policies/refunds"]
    );
    let t = rpc(
        &gw,
        SUPPORT_KEY,
        &support,
        "resources/templates/list",
        json!({}),
    )
    .await;
    assert_eq!(
        names(&t, "resourceTemplates", "uriTemplate"),
        ["desk+desk://tickets/{id}"]
    );

    // Prompts: the server's answer, argument constraints, hidden ones unknown.
    let get = |name: &str, tone: &str| json!({"name": name, "arguments": {"tone": tone}});
    let ok = rpc(
        &gw,
        SUPPORT_KEY,
        &support,
        "prompts/get",
        get("desk__reply_template", "formal"),
    )
    .await;
    let text = ok["result"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.starts_with("Write a formal reply"), "{ok}");
    let bad = rpc(
        &gw,
        SUPPORT_KEY,
        &support,
        "prompts/get",
        get("desk__reply_template", "rude"),
    )
    .await;
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
    let msg = bad["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("argument 'tone'") && msg.contains("prompt 'desk__reply_template'"),
        "{msg}"
    );
    let hidden = rpc(
        &gw,
        SUPPORT_KEY,
        &support,
        "prompts/get",
        json!({"name": "desk__salary_letter", "arguments": {"employee": "Marcus"}}),
    )
    .await;
    assert_eq!(hidden["error"]["code"], -32602, "{hidden}");
    assert_eq!(
        hidden["error"]["message"],
        "Unknown prompt: desk__salary_letter"
    );

    // Completions of a prompt's or template's arguments, for what the agent may see only.
    let complete = |r: Value, arg: &str, value: &str| json!({"ref": r, "argument": {"name": arg, "value": value}});
    let tones = rpc(
        &gw,
        SUPPORT_KEY,
        &support,
        "completion/complete",
        complete(
            json!({"type": "ref/prompt", "name": "desk__reply_template"}),
            "tone",
            "f",
        ),
    )
    .await;
    assert_eq!(
        tones["result"]["completion"]["values"],
        json!(["formal", "friendly"]),
        "{tones}"
    );
    let ids = rpc(
        &gw,
        SUPPORT_KEY,
        &support,
        "completion/complete",
        complete(
            json!({"type": "ref/resource", "uri": "desk+desk://tickets/{id}"}),
            "id",
            "104",
        ),
    )
    .await;
    assert_eq!(
        ids["result"]["completion"]["values"],
        json!(["1042", "1043"]),
        "{ids}"
    );
    let hidden = rpc(
        &gw,
        SUPPORT_KEY,
        &support,
        "completion/complete",
        complete(
            json!({"type": "ref/prompt", "name": "desk__salary_letter"}),
            "employee",
            "M",
        ),
    )
    .await;
    assert_eq!(hidden["error"]["code"], -32602, "{hidden}");

    // Resources: listed, templated, hidden.
    let read = |uri: &str| json!({ "uri": uri });
    let policy = rpc(
        &gw,
        SUPPORT_KEY,
        &support,
        "resources/read",
        read("desk+desk://policies/refunds"),
    )
    .await;
    assert_eq!(
        policy["result"]["contents"][0]["text"], "Refunds are granted within 30 days of delivery.",
        "{policy}"
    );
    // The URI in the answer is the one to ask for again.
    assert_eq!(
        policy["result"]["contents"][0]["uri"],
        "desk+desk://policies/refunds"
    );
    // A glob cannot be climbed out of: `desk://tickets/*` does not reach the salary sheet.
    for sneaky in [
        "desk+desk://tickets/../hr/salaries",
        "desk+desk://tickets/%2E%2E/hr/salaries",
    ] {
        let r = rpc(&gw, SUPPORT_KEY, &support, "resources/read", read(sneaky)).await;
        assert_eq!(r["error"]["code"], -32002, "{sneaky}: {r}");
        assert!(!r.to_string().contains("Marcus"), "{r}");
    }
    // research-bot may read `desk+*` but is denied the ticket template: it is neither listed
    // nor readable through it (list/read parity for templates).
    let t = rpc(
        &gw,
        RESEARCH_KEY,
        &research,
        "resources/templates/list",
        json!({}),
    )
    .await;
    assert!(
        names(&t, "resourceTemplates", "uriTemplate").is_empty(),
        "{t}"
    );
    let through = rpc(
        &gw,
        RESEARCH_KEY,
        &research,
        "resources/read",
        read("desk+desk://tickets/42"),
    )
    .await;
    assert_eq!(through["error"]["code"], -32002, "{through}");
    let ticket = rpc(
        &gw,
        SUPPORT_KEY,
        &support,
        "resources/read",
        read("desk+desk://tickets/42"),
    )
    .await;
    let text = ticket["result"]["contents"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.starts_with("Ticket #42"), "{ticket}");
    let salaries = rpc(
        &gw,
        SUPPORT_KEY,
        &support,
        "resources/read",
        read("desk+desk://hr/salaries"),
    )
    .await;
    assert_eq!(salaries["error"]["code"], -32002, "{salaries}");
    assert!(!salaries.to_string().contains("Marcus"));
    let allowed = rpc(
        &gw,
        RESEARCH_KEY,
        &research,
        "resources/read",
        read("desk+desk://hr/salaries"),
    )
    .await;
    assert!(
        allowed["result"]["contents"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("Marcus Webb")),
        "{allowed}"
    );
    // A server that does not exist is as unknown as a hidden resource.
    let nowhere = rpc(
        &gw,
        RESEARCH_KEY,
        &research,
        "resources/read",
        read("nope+desk://hr/salaries"),
    )
    .await;
    assert_eq!(nowhere["error"]["code"], -32002, "{nowhere}");

    // Every use is audited with its method and the item the server knows.
    let found = |notes: &[Value]| {
        notes.iter().any(|n| {
            n["method"] == "resources/read"
                && n["resource"] == "desk://hr/salaries"
                && n["server"] == "desk"
        }) && notes
            .iter()
            .any(|n| n["method"] == "prompts/get" && n["prompt"] == "reply_template")
            && notes
                .iter()
                .any(|n| n["method"] == "prompts/list" && n["prompts_shown"] == 1)
    };
    let mut notes = Vec::new();
    for _ in 0..50 {
        notes = mcp_notes(&gw).await;
        if found(&notes) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found(&notes), "{notes:?}");
}

/// The `mcp` notes of the audit log, from its JSONL export.
async fn mcp_notes(gw: &TestGateway) -> Vec<Value> {
    let (status, _, body) = gw
        .request(
            "GET",
            "/admin/api/audit/export?format=jsonl",
            Some(common::ADMIN_TOKEN),
            Bytes::new(),
        )
        .await;
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| {
            r["verdicts"]
                .as_array()?
                .iter()
                .find(|n| n["gateway"] == "mcp")
                .cloned()
        })
        .collect()
}

/// Collects the events of an agent's `GET /mcp` stream.
async fn open_stream(gw: &TestGateway, key: &str, sid: &str) -> tokio::sync::mpsc::Receiver<Value> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(format!("http://{}/mcp", gw.addr))
        .header("authorization", format!("Bearer {key}"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", VERSION)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.expect("GET /mcp");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut body = resp.into_body();
        let mut buf = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                buf.push_str(&String::from_utf8_lossy(&d));
            }
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                for line in event.lines() {
                    if let Some(data) = line.strip_prefix("data: ")
                        && let Ok(v) = serde_json::from_str(data)
                        && tx.send(v).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_list_change_refreshes_the_catalog_and_reaches_the_agent() {
    let gw = TestGateway::start_full(common::Db::Sqlite, &["tool-acl"], ACL, false, DESK).await;
    let sid = initialize(&gw, SUPPORT_KEY).await;
    let mut events = open_stream(&gw, SUPPORT_KEY, &sid).await;
    let before = rpc(&gw, SUPPORT_KEY, &sid, "tools/list", json!({})).await;
    assert_eq!(
        names(&before, "tools", "name"),
        ["desk__crm_query", "desk__enable_refunds"]
    );
    // Listed from the cache: the server is asked once.
    let fetches = |gw: &TestGateway| {
        gw.mock
            .requests()
            .iter()
            .filter(|r| r.path == "/mcp" && r.body.contains("\"tools/list\""))
            .count()
    };
    let again = rpc(&gw, SUPPORT_KEY, &sid, "tools/list", json!({})).await;
    assert_eq!(again["result"], before["result"]);
    assert_eq!(fetches(&gw), 1, "the second listing came from the cache");
    // The desk adds `issue_refund` and says so in the event stream of its answer.
    let on = rpc(
        &gw,
        SUPPORT_KEY,
        &sid,
        "tools/call",
        json!({"name": "desk__enable_refunds", "arguments": {}}),
    )
    .await;
    assert_eq!(on["result"]["isError"], false, "{on}");
    let after = rpc(&gw, SUPPORT_KEY, &sid, "tools/list", json!({})).await;
    assert_eq!(
        names(&after, "tools", "name"),
        [
            "desk__crm_query",
            "desk__enable_refunds",
            "desk__issue_refund"
        ],
        "the catalog (cached for ten minutes) was refetched on the server's notification"
    );
    assert_eq!(fetches(&gw), 2);
    let note = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(v) if v["method"] == "notifications/tools/list_changed" => return v,
                Some(_) => continue,
                None => panic!("the event stream ended"),
            }
        }
    })
    .await
    .expect("the agent hears of the change");
    assert_eq!(note["jsonrpc"], "2.0");
    assert!(note.get("id").is_none(), "a notification: {note}");
    // The new tool works (allowed by the rules, now listed).
    let refund = rpc(
        &gw,
        SUPPORT_KEY,
        &sid,
        "tools/call",
        json!({"name": "desk__issue_refund", "arguments": {"order": "1042"}}),
    )
    .await;
    assert_eq!(
        refund["result"]["content"][0]["text"], "order 1042 refunded",
        "{refund}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_on_one_replica_is_refused_by_another() {
    // Replicas share the chain key, which also seals session ids.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(
            "PALISADE_MCP_CATALOG_CHAIN_KEY",
            "catalog-chain-key-0123456789",
        );
    }
    let extra = format!("{DESK}\n[chain]\nkey_env = \"PALISADE_MCP_CATALOG_CHAIN_KEY\"\n");
    let a = TestGateway::start_full(common::Db::Sqlite, &["tool-acl"], ACL, false, &extra).await;
    let b = TestGateway::start_on(&a.database, &["tool-acl"], ACL, &a.extra).await;
    let sid = initialize(&a, SUPPORT_KEY).await;
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    let (status, _, _) = post(&b, SUPPORT_KEY, Some(&sid), ping.clone()).await;
    assert_eq!(status, 200, "replica b serves a's session");
    let (status, _, _) = a
        .request_with(
            "DELETE",
            "/mcp",
            Some(SUPPORT_KEY),
            Bytes::new(),
            &[("mcp-session-id", &sid)],
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, body) = post(&b, SUPPORT_KEY, Some(&sid), ping).await;
    assert_eq!(status, 404, "ended on a, refused by b: {body}");
    assert_eq!(body["error"]["code"], -32001);
}
