//! Issue 14: every call is audited and settled exactly once, whatever happens to it. Agents
//! that hang up at each stage of a call (before the body ends, while the request side waits
//! for an approval, while the provider works, before the first token, mid-stream, during an
//! MCP `tools/call`), load ended abruptly five times in a row, and a SIGTERM while calls and
//! streams run; on SQLite and on PostgreSQL, through real HTTP over loopback with the real
//! `budget` and `approvals` plugins.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::TryStreamExt;
use palisade_store::{AuditFilter, AuditRecord, Window};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Budgets that make every call reserve (so a lost settlement would show), approvals on one
/// model and on the desk's `send_email`, and `tool-acl` letting support-bot use the desk.
const PLUGINS: &str = r#"
[[plugins]]
name = "budget"
path = "budget.wasm"
[plugins.config.defaults.agent]
micro_usd = { day = 100000000 }

[[plugins]]
name = "tool-acl"
path = "tool-acl.wasm"
[[plugins.config.rules]]
agents = ["support-bot"]
allow = ["desk__*"]

[[plugins]]
name = "approvals"
path = "approvals.wasm"
[[plugins.config.rules]]
name = "reserved"
models = ["gpt-4o-approved"]
group = "ops"
[[plugins.config.rules]]
name = "email"
tools = ["desk__send_email"]
group = "ops"
"#;

const EXTRA: &str = r#"
[approvals]
wait_secs = 1.0

[prices."mock/gpt-4o-mini"]
input_per_mtok = 10.0
output_per_mtok = 100.0

[prices."mock/gpt-4o-approved"]
input_per_mtok = 10.0
output_per_mtok = 100.0

[[mcp_servers]]
name = "desk"
transport = "http"
url = "{mock}/mcp"
"#;

async fn start(db: Db) -> TestGateway {
    TestGateway::start_full(
        db,
        &["budget", "tool-acl", "approvals"],
        PLUGINS,
        false,
        EXTRA,
    )
    .await
}

/// Wait until every call the gateway runs has finished, then until the audit holds them.
async fn settled(gw: &TestGateway) {
    assert!(
        gw.gw.drain.wait_idle(Duration::from_secs(20)).await,
        "calls still running after 20 s"
    );
    gw.gw.audit.flush().await.expect("audit flushed");
}

async fn audit(gw: &TestGateway) -> Vec<AuditRecord> {
    gw.gw
        .store
        .audit_stream(AuditFilter::default())
        .try_collect()
        .await
        .expect("audit rows")
}

/// What budgets still hold: must be nothing once every call ended. The replica's ledger first
/// gives back its leases (those no call in flight holds, as at shutdown), so what is left is
/// what calls hold.
async fn reserved(gw: &TestGateway) -> u64 {
    gw.gw.services.ledger.close().await.expect("ledger close");
    let mut held = 0;
    for w in [Window::Hour, Window::Day, Window::Month, Window::Total] {
        for s in gw.gw.store.spend(w, "").await.expect("spend") {
            held += s.reserved;
        }
    }
    held
}

/// A raw HTTP/1.1 request head for `path` with `body_len` declared.
fn head(gw: &TestGateway, path: &str, body_len: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {SUPPORT_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {body_len}\r\n{extra}\r\n",
        gw.addr
    )
}

/// How the agent hangs up.
enum HangUp {
    /// After sending this much of the body.
    MidBody(usize),
    /// Once the mock upstream has the request (the provider is working).
    WhileUpstreamWorks,
    /// Once the call waits for its approval (inside the plugin chain's hold).
    WhileHeld,
    /// Once the answer holds this text (mid-stream).
    AfterSeeing(&'static str),
}

async fn hang_up(gw: &TestGateway, path: &str, body: &str, extra: &str, how: HangUp) {
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let h = head(gw, path, body.len(), extra);
    s.write_all(h.as_bytes()).await.expect("write head");
    match how {
        HangUp::MidBody(n) => {
            s.write_all(&body.as_bytes()[..n]).await.expect("write");
            s.flush().await.expect("flush");
        }
        HangUp::WhileHeld => {
            let before = gw
                .gw
                .store
                .list_approvals(None, 1000)
                .await
                .expect("list")
                .len();
            s.write_all(body.as_bytes()).await.expect("write");
            for _ in 0..500 {
                let now = gw.gw.store.list_approvals(None, 1000).await.expect("list");
                if now.len() > before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        HangUp::WhileUpstreamWorks => {
            let before = gw.mock.requests().len();
            s.write_all(body.as_bytes()).await.expect("write");
            // The mock records a request as it arrives, before its injected latency.
            for _ in 0..500 {
                if gw.mock.requests().len() > before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                gw.mock.requests().len() > before,
                "the upstream got no request"
            );
        }
        HangUp::AfterSeeing(marker) => {
            s.write_all(body.as_bytes()).await.expect("write");
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains(marker) {
                let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                    .await
                    .expect("answer arrives")
                    .expect("read");
                assert!(n > 0, "connection closed before {marker:?}");
                seen.extend_from_slice(&buf[..n]);
            }
        }
    }
    // Hang up hard.
    drop(s);
}

fn chat(model: &str, text: &str, stream: bool) -> String {
    json!({"model": model, "max_tokens": 50, "stream": stream,
           "messages": [{"role": "user", "content": text}]})
    .to_string()
}

/// One hang-up: exactly one new audit row of `kind`, recorded as `client_closed`, nothing left
/// reserved, and the next call on the same route is served.
async fn check_hang_up(gw: &TestGateway, label: &str, kind: &str, run: impl Future<Output = ()>) {
    let before = audit(gw).await.len();
    run.await;
    // The gateway may not have read the request yet: wait (bounded) for the call's row, then for
    // anything else it still runs.
    for _ in 0..1000 {
        settled(gw).await;
        if audit(gw).await[before..].iter().any(|r| r.kind == kind) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settled(gw).await;
    let rows = audit(gw).await;
    let new: Vec<&AuditRecord> = rows[before..].iter().filter(|r| r.kind == kind).collect();
    assert_eq!(
        new.len(),
        1,
        "{label}: one audit row, got {new:#?} among {:#?}",
        &rows[before..]
    );
    assert_eq!(new[0].status, 499, "{label}: {:#?}", new[0]);
    assert_eq!(
        new[0].error_code.as_deref(),
        Some("client_closed"),
        "{label}"
    );
    assert_eq!(reserved(gw).await, 0, "{label}: a reservation is left");
    let next = gw
        .chat(
            SUPPORT_KEY,
            &json!({"model": "gpt-4o-mini", "max_tokens": 50,
                                   "messages": [{"role": "user", "content": "next"}]}),
        )
        .await;
    assert_eq!(next.status, 200, "{label}: next call {:?}", next.json);
    settled(gw).await;
}

async fn every_hang_up_is_audited_once_and_settled(db: Db) {
    let gw = start(db).await;
    let body = chat("gpt-4o-mini", "hello", false);
    check_hang_up(&gw, "before the body ends", "llm-call", async {
        hang_up(&gw, "/v1/chat/completions", &body, "", HangUp::MidBody(10)).await
    })
    .await;

    let held = chat("gpt-4o-approved", "please", false);
    check_hang_up(&gw, "during the plugin chain", "llm-call", async {
        hang_up(&gw, "/v1/chat/completions", &held, "", HangUp::WhileHeld).await
    })
    .await;

    let slow = chat("gpt-4o-mini", "[mock:latency_ms=1000] slow", false);
    check_hang_up(&gw, "while the upstream works", "llm-call", async {
        hang_up(
            &gw,
            "/v1/chat/completions",
            &slow,
            "",
            HangUp::WhileUpstreamWorks,
        )
        .await
    })
    .await;
    // The provider answered after the agent left: its real usage is charged.
    let rows = audit(&gw).await;
    let charged = rows
        .iter()
        .rev()
        .find(|r| r.status == 499 && r.kind == "llm-call")
        .expect("the slow call's row");
    assert!(
        charged.output_tokens > 0 && charged.cost_micro_usd > 0,
        "{charged:#?}"
    );

    let first = chat("gpt-4o-mini", "[mock:latency_ms=1000] stream", true);
    check_hang_up(&gw, "before the first token", "llm-call", async {
        hang_up(
            &gw,
            "/v1/chat/completions",
            &first,
            "",
            HangUp::WhileUpstreamWorks,
        )
        .await
    })
    .await;

    let long = chat(
        "gpt-4o-mini",
        "[mock:chunk_delay_ms=200] one two three four five six seven eight nine ten",
        true,
    );
    check_hang_up(&gw, "mid-stream", "llm-call", async {
        hang_up(
            &gw,
            "/v1/chat/completions",
            &long,
            "",
            HangUp::AfterSeeing("data: "),
        )
        .await
    })
    .await;
    let rows = audit(&gw).await;
    let cut = rows
        .iter()
        .rev()
        .find(|r| r.status == 499 && r.kind == "llm-call")
        .expect("the stream's row");
    assert!(cut.truncated, "{cut:#?}");
    assert!(cut.cost_micro_usd > 0, "a cut stream is charged: {cut:#?}");

    // MCP: a held send_email, the agent gone while the call waits for its approval.
    let sid = mcp_session(&gw).await;
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "desk__send_email",
                                 "arguments": {"to": "a@example.com", "body": "hi"}}})
    .to_string();
    let extra = format!(
        "accept: application/json, text/event-stream\r\nmcp-protocol-version: 2025-11-25\r\n\
         mcp-session-id: {sid}\r\n"
    );
    check_hang_up(&gw, "during an MCP tools/call", "tool-call", async {
        hang_up(&gw, "/mcp", &call, &extra, HangUp::WhileHeld).await
    })
    .await;
    let rows = audit(&gw).await;
    let claimed = rows.iter().rev().find(|r| r.kind == "tool-call").unwrap();
    assert_eq!(claimed.target, "desk__send_email", "{claimed:#?}");
}

async fn mcp_session(gw: &TestGateway) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "t", "version": "1"}}});
    let (status, headers, _) = gw
        .request_with(
            "POST",
            "/mcp",
            Some(SUPPORT_KEY),
            Bytes::from(init.to_string()),
            &[("accept", "application/json, text/event-stream")],
        )
        .await;
    assert_eq!(status, 200);
    headers["mcp-session-id"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_hang_up_is_audited_once_and_settled_sqlite() {
    every_hang_up_is_audited_once_and_settled(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_hang_up_is_audited_once_and_settled_postgres() {
    every_hang_up_is_audited_once_and_settled(Db::Postgres).await;
}

/// 16 connections of governed load, ended abruptly (every connection dropped with calls in
/// flight) five times in a row: afterwards nothing is left reserved, every call that reached
/// the gateway has its one audit row, the chain verifies and the next call is served.
async fn load_ended_abruptly(db: Db) {
    let gw = start(db).await;
    for round in 0..5 {
        let before = audit(&gw).await.len();
        let mut tasks = Vec::new();
        for i in 0..16 {
            let addr = gw.addr;
            let body = chat(
                "gpt-4o-mini",
                &format!("[mock:latency_ms=20] load {i}"),
                i % 2 == 0,
            );
            let h = head(&gw, "/v1/chat/completions", body.len(), "");
            tasks.push(tokio::spawn(async move {
                // Keep-alive calls, one after another, until aborted mid-call.
                let mut s = TcpStream::connect(addr).await.expect("connect");
                let mut buf = vec![0u8; 65536];
                loop {
                    s.write_all(h.as_bytes()).await.expect("head");
                    s.write_all(body.as_bytes()).await.expect("body");
                    let _ = s.read(&mut buf).await;
                }
            }));
        }
        // Let the load run until the gateway has answered a few dozen calls, then drop it all.
        for _ in 0..1000 {
            if gw.mock.requests().len() >= 40 * (round + 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        settled(&gw).await;
        assert_eq!(
            reserved(&gw).await,
            0,
            "round {round}: a reservation is left"
        );
        let after = audit(&gw).await.len();
        assert!(after > before, "round {round}: calls were audited");
        let next = gw
            .chat(
                SUPPORT_KEY,
                &json!({"model": "gpt-4o-mini",
                                       "messages": [{"role": "user", "content": "after"}]}),
            )
            .await;
        assert_eq!(next.status, 200, "round {round}: {:?}", next.json);
    }
    let report = gw.gw.store.verify_audit().await.expect("verify");
    assert!(report.ok, "{report:?}");
    let status = gw.status().await;
    assert_eq!(status["audit"]["healthy"], json!(true), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_ended_abruptly_five_times_sqlite() {
    load_ended_abruptly(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_ended_abruptly_five_times_postgres() {
    load_ended_abruptly(Db::Postgres).await;
}

/// A `palisade serve` process gets SIGTERM while 200 calls and 20 streams run: it drains them
/// and exits 0; every call that got an answer has its audit row, the chain verifies, nothing
/// is left reserved.
async fn sigterm_drains(db: Db) {
    let dir = temp_dir("sigterm");
    let database = database_url(db, &dir).await;
    for p in ["budget", "tool-acl", "approvals"] {
        std::fs::copy(dist_plugin(p), dir.join(format!("{p}.wasm"))).expect("copy plugin");
    }
    let mock_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock");
    let (mock_addr, _mock) = mock_upstream::spawn(mock_listener);
    let mock_url = format!("http://{mock_addr}");
    let config = dir.join("palisade.toml");
    let text = with_host_lines(
        &config_text(&dir, &database, PLUGINS),
        &EXTRA.replace("{mock}", &mock_url),
    )
    // The harness config has a [server] table already.
    .replace("[server]\n", "[server]\ndrain_secs = 10\n");
    std::fs::write(&config, text).expect("config");
    let mut proc = spawn_gateway(&config, &mock_url);
    let addr = proc.addr.clone();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();

    let (answered_tx, mut answered_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut tasks = Vec::new();
    for i in 0..220 {
        let stream = i < 20;
        let text = if stream {
            format!("[mock:chunk_delay_ms=50] stream {i} a b c d e f g h")
        } else {
            format!("[mock:latency_ms={}] call {i}", (i % 10) * 30)
        };
        let body = chat("gpt-4o-mini", &text, stream);
        let (client, addr, tx) = (client.clone(), addr.clone(), answered_tx.clone());
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("authorization", format!("Bearer {SUPPORT_KEY}"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(Bytes::from(body)))
                .unwrap();
            let resp = client.request(req).await.ok()?;
            let _ = tx.send(());
            let status = resp.status().as_u16();
            let id = resp
                .headers()
                .get("palisade-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Some((status, id, String::from_utf8_lossy(&body).to_string()))
        }));
    }
    // SIGTERM once about half the calls were answered.
    for _ in 0..110 {
        answered_rx.recv().await.expect("answers arrive");
    }
    let pid = proc.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = tokio::task::spawn_blocking(move || {
        let status = proc.child.wait().expect("wait");
        (status, proc)
    })
    .await
    .expect("join");
    assert_eq!(exit.0.code(), Some(0), "palisade exits 0 after draining");
    let mut answered = Vec::new();
    for t in tasks {
        if let Some(a) = t.await.expect("task") {
            answered.push(a);
        }
    }
    assert!(answered.len() >= 110, "answers: {}", answered.len());
    let streams_done = answered
        .iter()
        .filter(|(_, _, b)| b.contains("data: [DONE]"))
        .count();
    assert!(streams_done > 0, "streams ran to their end while draining");

    let store = palisade_store::Store::connect(&database)
        .await
        .expect("store");
    let rows: Vec<AuditRecord> = store
        .audit_stream(AuditFilter::default())
        .try_collect()
        .await
        .expect("rows");
    for (status, id, body) in &answered {
        let id = id.as_deref().expect("request id");
        assert!(
            rows.iter().any(|r| r.request_id == id),
            "answered call {id} ({status}, {body:.80}) has no audit row"
        );
    }
    let report = store.verify_audit().await.expect("verify");
    assert!(report.ok, "{report:?}");
    let mut held = 0;
    for s in store.spend(Window::Day, "").await.expect("spend") {
        held += s.reserved;
    }
    assert_eq!(held, 0, "reservations left after the drain");
    let running: i64 = running_claims(&store).await;
    assert_eq!(running, 0, "approval claims left running");
    store.close().await;
}

async fn running_claims(store: &palisade_store::Store) -> i64 {
    let all = store.list_approvals(None, 1000).await.expect("approvals");
    all.iter()
        .filter(|a| a.execution == palisade_store::Execution::Running)
        .count() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_calls_and_streams_sqlite() {
    sigterm_drains(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_calls_and_streams_postgres() {
    sigterm_drains(Db::Postgres).await;
}
