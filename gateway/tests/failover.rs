//! Routes and failover over real loopback HTTP: a primary that refuses connections, answers 503
//! or 429, stalls, or breaks its stream; a secondary (the real mock upstream) that serves. The
//! agent must see no error where the secondary could answer, and `palisade-provider` must name
//! the target that served. Faulty primaries are tiny raw-TCP fakes written here, so each can
//! fail in exactly one way while the secondary stays healthy.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An address nobody listens on: connections are refused.
fn refusing() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Read one HTTP/1.1 request (head and `content-length` body) from the socket.
async fn read_request(s: &mut TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            return Some(());
        }
    }
}

/// A fake provider answering every request with `response` (raw HTTP) and closing; counts hits.
async fn fake(response: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let response = response.clone();
            let h = h.clone();
            tokio::spawn(async move {
                if read_request(&mut s).await.is_some() {
                    h.fetch_add(1, Ordering::SeqCst);
                    let _ = s.write_all(response.as_bytes()).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    (addr, hits)
}

fn status_response(status: u16) -> String {
    let body =
        json!({"error": {"message": format!("fake {status}"), "type": "server_error"}}).to_string();
    format!(
        "HTTP/1.1 {status} Oops\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A 200 event stream made of these raw SSE bytes, then the connection closes.
fn stream_response(sse: &str) -> String {
    format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{sse}")
}

/// A fake provider that reads requests and never answers.
async fn silent() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// A TCP proxy in front of a real mock that can be killed (listener closed, every open
/// connection reset) and revived on the same port: a provider going down and coming back.
struct Switch {
    addr: SocketAddr,
    target: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Switch {
    async fn new(target: SocketAddr) -> Switch {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = Some(tokio::spawn(Self::serve(l, target)));
        Switch { addr, target, task }
    }

    async fn serve(l: TcpListener, target: SocketAddr) {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut client, _)) = l.accept().await {
            conns.spawn(async move {
                if let Ok(mut up) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                }
            });
        }
    }

    /// Down: aborting the task drops the listener and every proxied connection.
    fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    async fn revive(&mut self) {
        let l = TcpListener::bind(self.addr)
            .await
            .expect("rebind the same port");
        self.task = Some(tokio::spawn(Self::serve(l, self.target)));
    }
}

/// A real mock upstream (the secondary), with its request log.
fn mock() -> (SocketAddr, mock_upstream::MockState) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    mock_upstream::spawn(l)
}

/// Config text: providers `primary` and `secondary`, route `smart` over both, sync audit.
fn routing(primary: SocketAddr, secondary: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[audit]
durability = "sync"

[[providers]]
name = "primary"
base_url = "http://{primary}"
connect_timeout_ms = 500
first_byte_timeout_ms = 400
timeout_ms = 2000

[[providers]]
name = "secondary"
base_url = "http://{secondary}"

[routes.smart]
targets = ["primary/fast-model", "secondary/backup-model"]
deadline_ms = 5000

{extra}
"#
    )
}

async fn gateway(primary: SocketAddr, secondary: SocketAddr, extra: &str) -> TestGateway {
    TestGateway::start_full(
        Db::Sqlite,
        &[],
        "",
        false,
        &routing(primary, secondary, extra),
    )
    .await
}

fn provider(r: &Reply) -> &str {
    r.headers
        .get("palisade-provider")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The audit events of the gateway, as JSON lines.
async fn audit(gw: &TestGateway) -> Vec<Value> {
    let (s, _, b) = gw
        .request(
            "GET",
            "/admin/api/audit/export?format=jsonl",
            Some(ADMIN_TOKEN),
            Bytes::new(),
        )
        .await;
    assert_eq!(s, 200);
    String::from_utf8_lossy(&b)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn metrics(gw: &TestGateway) -> String {
    let (s, h, b) = gw.request("GET", "/metrics", None, Bytes::new()).await;
    assert_eq!(s, 200);
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    String::from_utf8_lossy(&b).into_owned()
}

/// Calls `smart` with the primary failing in some way; it must succeed on the secondary.
async fn served_by_secondary(gw: &TestGateway, secondary: &mock_upstream::MockState) {
    let r = gw.chat(SUPPORT_KEY, &chat_body("smart", "hello")).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(provider(&r), "secondary/backup-model");
    assert_eq!(
        r.content(),
        "Hello from mock-upstream (backup-model). You said: hello"
    );
    let last = secondary
        .requests()
        .pop()
        .expect("the secondary was called");
    let sent: Value = serde_json::from_str(&last.body).unwrap();
    assert_eq!(sent["model"], "backup-model", "the target's own model name");
}

#[tokio::test]
async fn primary_refusing_connections_fails_over() {
    let (sec, sec_state) = mock();
    let gw = gateway(refusing(), sec, "").await;
    served_by_secondary(&gw, &sec_state).await;
    // The audit names the target that served and the failed one.
    let events = audit(&gw).await;
    let e = events
        .iter()
        .rfind(|e| e["kind"] == "llm-call")
        .expect("call audited");
    assert_eq!(e["provider"], "secondary/backup-model");
    assert_eq!(e["status"], 200);
    let text = e["verdicts"].to_string();
    assert!(text.contains("palisade.failover"), "{text}");
    assert!(text.contains("primary/fast-model"), "{text}");
    assert!(text.contains("upstream_unavailable"), "{text}");
}

#[tokio::test]
async fn primary_answering_503_fails_over() {
    let (pri, hits) = fake(status_response(503)).await;
    let (sec, sec_state) = mock();
    let gw = gateway(pri, sec, "").await;
    served_by_secondary(&gw, &sec_state).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the primary was tried first"
    );
    let m = metrics(&gw).await;
    assert!(
        m.contains(
            "palisade_upstream_attempts_total{target=\"primary/fast-model\",outcome=\"upstream_error\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("palisade_failovers_total{from=\"primary/fast-model\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("palisade_requests_total{kind=\"llm-call\",status=\"200\"} 1"),
        "{m}"
    );
    assert!(m.contains(
        "palisade_upstream_duration_seconds_count{provider=\"secondary/backup-model\"} 1"
    ));
    assert!(m.contains("palisade_gateway_overhead_seconds_count{kind=\"llm-call\"} 1"));
    assert!(m.contains(
        "palisade_tokens_total{agent=\"support-bot\",provider=\"secondary/backup-model\",direction=\"output\"}"
    ));
}

#[tokio::test]
async fn primary_answering_429_fails_over() {
    let (pri, hits) = fake(status_response(429)).await;
    let (sec, sec_state) = mock();
    let gw = gateway(pri, sec, "").await;
    served_by_secondary(&gw, &sec_state).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn primary_timing_out_fails_over() {
    let (sec, sec_state) = mock();
    let gw = gateway(silent().await, sec, "").await;
    let t = std::time::Instant::now();
    served_by_secondary(&gw, &sec_state).await;
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "waited the first-byte timeout"
    );
}

#[tokio::test]
async fn a_bad_request_is_not_failed_over() {
    let (pri, hits) = fake(status_response(400)).await;
    let (sec, sec_state) = mock();
    let gw = gateway(pri, sec, "").await;
    let r = gw.chat(SUPPORT_KEY, &chat_body("smart", "hello")).await;
    assert_eq!(r.status, 400, "{}", r.json);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(
        sec_state.requests().is_empty(),
        "the secondary was not asked"
    );
}

#[tokio::test]
async fn every_target_down_is_a_clear_error() {
    let gw = gateway(refusing(), refusing(), "").await;
    let r = gw.chat(SUPPORT_KEY, &chat_body("smart", "hello")).await;
    assert_eq!(r.status, 502, "{}", r.json);
    assert_eq!(r.code(), "upstream_unavailable");
}

#[tokio::test]
async fn plain_models_and_provider_models_resolve() {
    let (sec, _) = mock();
    let gw = gateway(refusing(), sec, "").await;
    // A plain name goes to the default provider ([upstream] = the harness mock "mock").
    let r = gw.chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(provider(&r), "mock/gpt-4o-mini");
    let r = gw.chat(SUPPORT_KEY, &chat_body("secondary/m9", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(provider(&r), "secondary/m9");
}

#[tokio::test]
async fn breaker_opens_after_failures_and_closes_after_a_probe() {
    let (pri_mock, pri_state) = mock();
    let mut pri = Switch::new(pri_mock).await;
    let (sec, sec_state) = mock();
    let gw = gateway(
        pri.addr,
        sec,
        "[breaker]\nfailures = 2\nwindow_ms = 60000\nopen_ms = 300\n",
    )
    .await;
    let r = gw.chat(SUPPORT_KEY, &chat_body("smart", "hello")).await;
    assert_eq!(provider(&r), "primary/fast-model", "healthy primary serves");

    pri.kill();
    for _ in 0..2 {
        served_by_secondary(&gw, &sec_state).await;
    }
    let st = gw.status().await;
    let b = &st["breakers"]["primary/fast-model"];
    assert_eq!(b["state"], "open", "{st}");
    // While open the primary is skipped without a connection attempt.
    served_by_secondary(&gw, &sec_state).await;
    let m = metrics(&gw).await;
    assert!(
        m.contains(
            "palisade_upstream_attempts_total{target=\"primary/fast-model\",outcome=\"circuit_open\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("palisade_breaker_state{target=\"primary/fast-model\"} 2"),
        "{m}"
    );

    // Back up; after open_ms one call probes the primary and closes the breaker.
    pri.revive().await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    let before = pri_state.requests().len();
    let r = gw.chat(SUPPORT_KEY, &chat_body("smart", "hello")).await;
    assert_eq!(r.status, 200);
    assert_eq!(provider(&r), "primary/fast-model");
    assert_eq!(pri_state.requests().len(), before + 1);
    let st = gw.status().await;
    assert_eq!(
        st["breakers"]["primary/fast-model"]["state"], "closed",
        "{st}"
    );
    let m = metrics(&gw).await;
    assert!(
        m.contains("palisade_breaker_state{target=\"primary/fast-model\"} 0"),
        "{m}"
    );
    assert!(m.contains("palisade_breaker_opened_total{target=\"primary/fast-model\"} 1"));
}

async fn stream_smart(gw: &TestGateway) -> (u16, http::HeaderMap, Vec<String>) {
    let mut body = chat_body("smart", "hello");
    body["stream"] = json!(true);
    let (status, headers, bytes) = gw
        .request(
            "POST",
            "/v1/chat/completions",
            Some(SUPPORT_KEY),
            Bytes::from(body.to_string()),
        )
        .await;
    let text = String::from_utf8_lossy(&bytes).to_string();
    let events = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect();
    (status, headers, events)
}

fn assert_clean_secondary_stream(headers: &http::HeaderMap, events: &[String]) {
    assert_eq!(headers["palisade-provider"], "secondary/backup-model");
    assert_eq!(
        stream_text(events),
        "Hello from mock-upstream (backup-model). You said: hello"
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !events.iter().any(|e| e.contains("\"error\"")),
        "no error event: {events:?}"
    );
    assert!(
        !events.iter().any(|e| e.contains("fast-model")),
        "nothing from the failed primary reached the agent: {events:?}"
    );
    let roles = events.iter().filter(|e| e.contains("\"role\"")).count();
    assert_eq!(roles, 1, "one role frame, the secondary's: {events:?}");
}

const ROLE_FRAME: &str = "data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"model\":\"fast-model\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n";

#[tokio::test]
async fn a_stream_cut_before_its_first_content_fails_over() {
    let (pri, hits) = fake(stream_response(ROLE_FRAME)).await;
    let (sec, _) = mock();
    let gw = gateway(pri, sec, "").await;
    let (status, headers, events) = stream_smart(&gw).await;
    assert_eq!(status, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_clean_secondary_stream(&headers, &events);
}

#[tokio::test]
async fn a_stream_with_an_error_event_or_empty_body_or_garbage_fails_over() {
    let error_event = format!(
        "{ROLE_FRAME}data: {{\"error\":{{\"message\":\"overloaded\",\"type\":\"server_error\"}}}}\n\n"
    );
    for sse in [error_event.as_str(), "", "data: {not json\n\n"] {
        let (pri, hits) = fake(stream_response(sse)).await;
        let (sec, _) = mock();
        let gw = gateway(pri, sec, "").await;
        let (status, headers, events) = stream_smart(&gw).await;
        assert_eq!(status, 200, "{sse:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_clean_secondary_stream(&headers, &events);
    }
}

#[tokio::test]
async fn a_stream_without_a_first_token_in_time_fails_over() {
    // Headers and a role frame at once, then silence past the first-byte timeout.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pri = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if read_request(&mut s).await.is_some() {
                    let _ = s.write_all(stream_response(ROLE_FRAME).as_bytes()).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    let (sec, _) = mock();
    let gw = gateway(pri, sec, "").await;
    let (status, headers, events) = stream_smart(&gw).await;
    assert_eq!(status, 200);
    assert_clean_secondary_stream(&headers, &events);
}

#[tokio::test]
async fn a_stream_cut_after_content_gets_an_error_event_and_no_done() {
    // The primary is the real mock told to drop the stream after two content chunks.
    let (pri, _) = mock();
    let (sec, sec_state) = mock();
    let gw = gateway(pri, sec, "").await;
    let mut body = chat_body("smart", "[mock:drop_after=2] hello there");
    body["stream"] = json!(true);
    let (status, headers, bytes) = gw
        .request(
            "POST",
            "/v1/chat/completions",
            Some(SUPPORT_KEY),
            Bytes::from(body.to_string()),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["palisade-provider"], "primary/fast-model");
    let text = String::from_utf8_lossy(&bytes);
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert!(!stream_text(&events.iter().map(|e| e.to_string()).collect::<Vec<_>>()).is_empty());
    assert!(!events.contains(&"[DONE]"), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_unavailable", "{last}");
    assert!(
        sec_state.requests().is_empty(),
        "no failover once content went out"
    );
    let events = audit(&gw).await;
    let e = events.iter().rfind(|e| e["kind"] == "llm-call").unwrap();
    assert_eq!(e["truncated"], true);
    assert_eq!(e["provider"], "primary/fast-model");
}

#[tokio::test]
async fn killing_the_primary_under_load_fails_no_call() {
    let (pri_mock, pri_state) = mock();
    let mut pri = Switch::new(pri_mock).await;
    let (sec, sec_state) = mock();
    let gw = Arc::new(gateway(pri.addr, sec, "").await);
    let done = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let permit = sem.clone().acquire_owned().await.unwrap();
        if i == 60 {
            pri.kill();
            killed.store(true, Ordering::SeqCst);
        }
        let gw = gw.clone();
        let done = done.clone();
        calls.spawn(async move {
            let stream = i % 2 == 0;
            let body = chat_body("smart", &format!("call {i}"));
            let ok = if stream {
                let (status, events) = gw.chat_stream(SUPPORT_KEY, &body).await;
                status == 200
                    && events.last().map(String::as_str) == Some("[DONE]")
                    && stream_text(&events).ends_with(&format!("You said: call {i}"))
            } else {
                let r = gw.chat(SUPPORT_KEY, &body).await;
                r.status == 200 && r.content().ends_with(&format!("You said: call {i}"))
            };
            done.fetch_add(1, Ordering::SeqCst);
            drop(permit);
            (i, ok)
        });
    }
    let mut failed = Vec::new();
    while let Some(r) = calls.join_next().await {
        let (i, ok) = r.unwrap();
        if !ok {
            failed.push(i);
        }
    }
    assert!(failed.is_empty(), "calls that failed: {failed:?}");
    assert!(
        !pri_state.requests().is_empty(),
        "the primary served before"
    );
    assert!(
        sec_state.requests().len() >= 100,
        "the secondary took over: {}",
        sec_state.requests().len()
    );
}

#[tokio::test]
async fn the_router_plugin_orders_targets_by_cost_and_by_team() {
    let (pri, pri_state) = mock();
    let (sec, sec_state) = mock();
    let plugins = r#"
[[plugins]]
name = "router"
path = "router.wasm"
[plugins.config.routes.smart]
targets = ["primary/fast-model", "secondary/backup-model"]
strategy = "cost"
[plugins.config.targets."primary/fast-model"]
price = 15.0
[plugins.config.targets."secondary/backup-model"]
price = 0.6
[plugins.config.teams.research]
providers = ["primary"]
"#;
    let gw = TestGateway::start_full(
        Db::Sqlite,
        &["router"],
        plugins,
        false,
        &routing(pri, sec, ""),
    )
    .await;
    // Both healthy: the cheaper secondary goes first, against the configured order.
    let r = gw.chat(SUPPORT_KEY, &chat_body("smart", "hello")).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(provider(&r), "secondary/backup-model");
    assert!(pri_state.requests().is_empty());
    // The research team may only use the primary.
    let r = gw.chat(RESEARCH_KEY, &chat_body("smart", "hello")).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(provider(&r), "primary/fast-model");
    assert_eq!(sec_state.requests().len(), 1);
    // A provider/model the team may not use is refused with a clear 403.
    let r = gw
        .chat(RESEARCH_KEY, &chat_body("secondary/backup-model", "hello"))
        .await;
    assert_eq!(r.status, 403, "{}", r.json);
    assert_eq!(r.code(), "no_allowed_target");
}

#[tokio::test]
async fn the_router_order_is_failed_over_too() {
    let (sec, _) = mock();
    // The router puts the (dead) primary first; the host still fails over along its order.
    let plugins = r#"
[[plugins]]
name = "router"
path = "router.wasm"
[plugins.config.routes.smart]
targets = ["primary/fast-model", "secondary/backup-model"]
strategy = "cost"
[plugins.config.targets."primary/fast-model"]
price = 0.1
[plugins.config.targets."secondary/backup-model"]
price = 5.0
"#;
    let gw = TestGateway::start_full(
        Db::Sqlite,
        &["router"],
        plugins,
        false,
        &routing(refusing(), sec, ""),
    )
    .await;
    let r = gw.chat(SUPPORT_KEY, &chat_body("smart", "hello")).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(provider(&r), "secondary/backup-model");
}

#[tokio::test]
async fn a_stream_that_goes_silent_after_its_first_content_is_cut_at_the_idle_timeout() {
    let (slow, _) = mock();
    let extra = format!(
        r#"
[[providers]]
name = "slow"
base_url = "http://{slow}"
first_byte_timeout_ms = 5000
stream_idle_timeout_ms = 300

[routes.slow]
targets = ["slow/fast-model"]
"#
    );
    let gw = TestGateway::start_full(Db::Sqlite, &[], "", false, &extra).await;
    // Every chunk 800 ms after the last: the first content is in time (5 s), the next is not.
    let mut body = chat_body("slow", "[mock:chunk_delay=800] hello there");
    body["stream"] = json!(true);
    let started = std::time::Instant::now();
    let (status, _, bytes) = gw
        .request(
            "POST",
            "/v1/chat/completions",
            Some(SUPPORT_KEY),
            Bytes::from(body.to_string()),
        )
        .await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&bytes);
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert!(!events.is_empty(), "{text}");
    assert!(!events.contains(&"[DONE]"), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{last}");
    assert!(
        !stream_text(&events.iter().map(|e| e.to_string()).collect::<Vec<_>>()).is_empty(),
        "the first content went out: {events:?}"
    );
    // Cut at the first silence, not after the whole (slow) answer.
    assert!(started.elapsed() < Duration::from_secs(10));
    // The call is audited once the stream has ended.
    let mut found = None;
    for _ in 0..50 {
        found = audit(&gw)
            .await
            .into_iter()
            .rfind(|e| e["kind"] == "llm-call");
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = found.expect("audited");
    assert_eq!(e["truncated"], true);
    assert_eq!(e["error_code"], "upstream_timeout", "{e}");
}

/// Append text to the gateway's config file (a comment is enough for a reload to happen).
fn append_config(gw: &TestGateway, text: &str) {
    let mut config = std::fs::read_to_string(gw.config_path()).unwrap();
    config.push_str(text);
    write_atomic(&gw.config_path(), config.as_bytes());
}

// Issue 14: a model string an agent made up created a breaker and metric series that were
// never removed, and a reload made calls rebuild the provider clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_models_create_no_breaker_and_no_metric_series() {
    let (sec, _) = mock();
    let gw = gateway(refusing(), sec, "").await;
    // Providers mock, primary, secondary; the route's two targets.
    assert_eq!(gw.gw.breakers().len(), 5);
    let call = |i: usize| {
        let model = format!("made-up-{i}-{:016x}", rand_u64(i));
        let gw = &gw;
        async move {
            let r = gw.chat(SUPPORT_KEY, &chat_body(&model, "hi")).await;
            assert_eq!(r.status, 200, "{}", r.json);
            assert_eq!(
                provider(&r),
                format!("mock/{model}"),
                "the audit keeps the model"
            );
        }
    };
    for i in 0..10 {
        call(i).await;
    }
    let series = metrics(&gw).await.lines().count();
    for chunk in (10..1000).collect::<Vec<_>>().chunks(16) {
        futures_util::future::join_all(chunk.iter().map(|i| call(*i))).await;
    }
    assert_eq!(gw.gw.breakers().len(), 5, "no breaker per model string");
    let m = metrics(&gw).await;
    assert_eq!(
        m.lines().count(),
        series,
        "no series per model string:\n{m}"
    );
    assert!(!m.contains("made-up"), "{m}");
    assert!(
        m.contains("palisade_upstream_attempts_total{target=\"mock\",outcome=\"ok\"} 1000"),
        "{m}"
    );
    let st = gw.status().await;
    assert_eq!(st["breakers"].as_object().map(|b| b.len()), Some(5), "{st}");
}

/// A cheap, deterministic spread of bits (no RNG dependency in the tests).
fn rand_u64(i: usize) -> u64 {
    (i as u64 ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

// Issue 14: provider clients, MCP hub and breakers are built once per loaded config, at the
// reload and not on a call; calls after it share them, and breakers keep their state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_builds_the_clients_once_and_keeps_breaker_state() {
    let (sec, _) = mock();
    let gw = gateway(
        refusing(),
        sec,
        "[breaker]\nfailures = 1\nwindow_ms = 60000\nopen_ms = 60000\n",
    )
    .await;
    // Open the primary's breaker: it refuses connections.
    let r = gw.chat(SUPPORT_KEY, &chat_body("smart", "hi")).await;
    assert_eq!(provider(&r), "secondary/backup-model");
    assert_eq!(
        gw.status().await["breakers"]["primary/fast-model"]["state"],
        "open"
    );
    let rt = gw.gw.policy.current();
    let (providers, hub) = (gw.gw.providers(&rt), gw.gw.hub(&rt));
    assert_eq!(gw.gw.upstream_builds(), 1);

    // A reload that changes no provider keeps the clients and the hub.
    append_config(&gw, "\n# touched\n");
    assert!(gw.gw.policy.reload().await.expect("reloads"));
    assert_eq!(gw.gw.upstream_builds(), 2, "built by the reload");
    let after = gw.gw.policy.current();
    assert!(!Arc::ptr_eq(&rt, &after));
    assert!(Arc::ptr_eq(&providers, &gw.gw.providers(&after)));
    assert!(Arc::ptr_eq(&hub, &gw.gw.hub(&after)));
    assert!(
        Arc::ptr_eq(&providers, &gw.gw.providers(&rt)),
        "the old snapshot keeps its own"
    );

    // One that adds a provider builds new clients, once, at the reload.
    append_config(
        &gw,
        &format!("\n[[providers]]\nname = \"third\"\nbase_url = \"http://{sec}\"\n"),
    );
    assert!(gw.gw.policy.reload().await.expect("reloads"));
    assert_eq!(gw.gw.upstream_builds(), 3);
    let newest = gw.gw.policy.current();
    let fresh = gw.gw.providers(&newest);
    assert!(!Arc::ptr_eq(&providers, &fresh));
    assert!(fresh.get("third").is_some());
    assert!(
        Arc::ptr_eq(&providers, &gw.gw.providers(&rt)),
        "a call on the first snapshot still has its clients"
    );
    for _ in 0..20 {
        let r = gw.chat(SUPPORT_KEY, &chat_body("third/m", "hi")).await;
        assert_eq!(r.status, 200, "{}", r.json);
    }
    assert_eq!(gw.gw.upstream_builds(), 3, "no call built anything");
    assert!(Arc::ptr_eq(
        &fresh,
        &gw.gw.providers(&gw.gw.policy.current())
    ));
    let st = gw.status().await;
    assert_eq!(
        st["breakers"]["primary/fast-model"]["state"], "open",
        "the breaker of a target that still exists kept its state: {st}"
    );
    assert_eq!(st["breakers"]["third"]["state"], "closed", "{st}");
}
