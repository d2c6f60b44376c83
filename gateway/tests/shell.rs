//! The ingress shell (issue 16): connections that never finish their headers are closed within
//! the header timeout while other clients are served, and the connection cap keeps the
//! gateway's sockets bounded; a trickled body gets 408 and is audited; a stream whose client
//! stops reading is cut, audited and settled; `/metrics` wants its token; refused keys are
//! counted, not audited, and repeated ones cost no store lookup.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{SUPPORT_KEY, TestGateway, chat_body};
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_store::{AuditFilter, AuditRecord};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Descriptors this process has open (the in-process gateway's and the test's own).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Let this process open what the test needs (its clients' sockets and the gateway's).
fn raise_fd_limit() -> u64 {
    palisade::server::raise_open_files_limit().unwrap_or(u64::MAX)
}

async fn audit(gw: &TestGateway) -> Vec<AuditRecord> {
    gw.gw
        .store
        .audit_stream(AuditFilter::default())
        .try_collect()
        .await
        .expect("audit rows")
}

/// Wait until every call the gateway runs has finished, then until the audit holds them.
async fn settled(gw: &TestGateway) {
    assert!(
        gw.gw.drain.wait_idle(Duration::from_secs(20)).await,
        "calls still running after 20 s"
    );
    gw.gw.audit.flush().await.expect("audit flushed");
}

/// Connect, send half a request head, and read until the gateway closes the connection.
async fn slowloris(addr: std::net::SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(started.elapsed()),
            Ok(_) => {}
        }
    }
}

const SLOW: usize = 2000;
const CAP: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_and_the_cap_bounds_sockets_while_others_are_served() {
    let limit = raise_fd_limit();
    assert!(
        limit > (2 * SLOW + 512) as u64,
        "the test needs more open files than {limit}"
    );
    let extra = format!("server.header_timeout_ms = 300\nserver.max_connections = {CAP}\n");
    let gw = TestGateway::start_full(common::Db::Sqlite, &[], "", false, &extra).await;
    // A warm-up call, so the baseline holds the upstream pool and the database.
    assert_eq!(
        gw.chat(SUPPORT_KEY, &chat_body("m", "hi")).await.status,
        200
    );
    let baseline = open_fds();

    let stop = Arc::new(AtomicBool::new(false));
    let (max_fds, max_open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sampler = {
        let (stop, max_fds, max_open, g) = (
            stop.clone(),
            max_fds.clone(),
            max_open.clone(),
            gw.gw.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                max_fds.fetch_max(open_fds(), Ordering::Relaxed);
                let open = usize::try_from(g.metrics.connections_open()).unwrap_or(usize::MAX);
                max_open.fetch_max(open, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let started = Instant::now();
    let slow: Vec<_> = (0..SLOW)
        .map(|_| tokio::spawn(slowloris(gw.addr)))
        .collect();
    // Meanwhile another client calls, each time on a new connection (no pooling), so each call
    // has to get past the cap too.
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Full<Bytes>>();
    let mut served = 0;
    for i in 0..20 {
        let req = http::Request::post(format!("http://{}/v1/chat/completions", gw.addr))
            .header("authorization", format!("Bearer {SUPPORT_KEY}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                chat_body("m", &format!("call {i}")).to_string(),
            )))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .expect("a call within 10 s while the flood lasts")
            .expect("the call is answered");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        assert!(v.pointer("/choices/0/message/content").is_some(), "{v}");
        served += 1;
    }
    let mut slowest = Duration::ZERO;
    for h in slow {
        let took = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("every slow connection is closed within 30 s")
            .expect("task")
            .expect("slow client");
        slowest = slowest.max(took);
    }
    let all_closed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");

    assert_eq!(served, 20);
    let (max_fds, max_open) = (
        max_fds.load(Ordering::Relaxed),
        max_open.load(Ordering::Relaxed),
    );
    eprintln!(
        "baseline {baseline} fds, peak {max_fds}; peak open connections {max_open}; \
         all {SLOW} closed after {all_closed:?} (slowest {slowest:?})"
    );
    assert!(
        max_open <= CAP,
        "at most {CAP} connections open, saw {max_open}"
    );
    // This process holds the test's own {SLOW} client sockets; the gateway's side is bounded
    // by the cap (without it, it would be another {SLOW}).
    let bound = baseline + SLOW + CAP + 64;
    assert!(
        max_fds <= bound,
        "open descriptors peaked at {max_fds}, above {bound}"
    );
    // Closed in rounds of at most CAP, each within the 300 ms header timeout: about 2.4 s of
    // timeouts for 2,000; generous for a loaded machine, and far below "never".
    assert!(
        all_closed < Duration::from_secs(20),
        "slow connections took {all_closed:?} to close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loopback_metrics_stay_closed_to_what_a_proxy_forwards() {
    // Nothing set and a loopback listener: open to this machine, as the demo needs...
    let gw = TestGateway::start(&[], "").await;
    let (status, _, _) = gw.request("GET", "/metrics", None, Bytes::new()).await;
    assert_eq!(status, 200);
    // ...but nginx on the same machine forwards the world's requests from loopback.
    for header in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        let (status, _, body) = gw
            .request_with(
                "GET",
                "/metrics",
                None,
                Bytes::new(),
                &[(header, "203.0.113.9")],
            )
            .await;
        assert_eq!(status, 401, "{header}: {}", String::from_utf8_lossy(&body));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_want_their_token() {
    let token = "metrics-token-0123456789";
    let extra = format!("server.metrics_token = \"{token}\"\n");
    let gw = TestGateway::start_full(common::Db::Sqlite, &[], "", false, &extra).await;
    let (status, _, body) = gw.request("GET", "/metrics", None, Bytes::new()).await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).expect("an OpenAI-shaped error");
    assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
    let (status, _, _) = gw
        .request(
            "GET",
            "/metrics",
            Some("wrong-token-0123456789"),
            Bytes::new(),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _, body) = gw
        .request("GET", "/metrics", Some(token), Bytes::new())
        .await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&body).contains("palisade_connections_open"),
        "the exposition text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_in_openai_format_and_is_audited() {
    let gw = TestGateway::start_full(
        common::Db::Sqlite,
        &[],
        "",
        false,
        "server.body_timeout_ms = 300\n",
    )
    .await;
    let body = chat_body("m", "this body arrives too slowly").to_string();
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {SUPPORT_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        gw.addr,
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    // A tenth of the body, then nothing more: the deadline passes while the gateway waits.
    s.write_all(&body.as_bytes()[..body.len() / 10])
        .await
        .expect("some body");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "answered and closed within 10 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let json = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: Value = serde_json::from_str(json).expect("an OpenAI error body");
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");

    settled(&gw).await;
    let rows = audit(&gw).await;
    let row = rows
        .iter()
        .find(|r| r.error_code.as_deref() == Some("request_timeout"))
        .unwrap_or_else(|| panic!("no audit row for the 408: {rows:?}"));
    assert_eq!(row.status, 408);
    assert_eq!(row.agent.as_deref(), Some("support-bot"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_keys_are_counted_not_audited_and_cost_no_store_lookup_each() {
    let gw = TestGateway::start(&[], "").await;
    assert_eq!(
        gw.chat(SUPPORT_KEY, &chat_body("m", "hi")).await.status,
        200
    );
    settled(&gw).await;
    let rows_before = audit(&gw).await.len();
    let lookups_before = gw.gw.registry.store_lookups();

    let started = Instant::now();
    let random = 2_000;
    let repeats = 200;
    let keys: Vec<String> = (0..random + repeats)
        .map(|i| {
            if i < random {
                format!("pk-random-{:016x}", rand::random::<u64>())
            } else {
                "pk-the-same-wrong-key".to_string()
            }
        })
        .collect();
    let body = chat_body("m", "let me in");
    for batch in keys.chunks(50) {
        let replies = futures_util::future::join_all(batch.iter().map(|k| gw.chat(k, &body))).await;
        for r in replies {
            assert_eq!((r.status, r.code()), (401, "invalid_api_key"), "{}", r.json);
        }
    }
    let (status, _, _) = gw
        .request("POST", "/v1/chat/completions", None, Bytes::from("{}"))
        .await;
    assert_eq!(status, 401);

    settled(&gw).await;
    assert_eq!(
        audit(&gw).await.len(),
        rows_before,
        "refused keys wrote no audit rows"
    );
    let f = gw.gw.registry.failures();
    use palisade::registry::failures::Reason;
    assert_eq!(f.count(Reason::UnknownKey), (random + repeats) as u64);
    assert_eq!(f.count(Reason::MissingKey), 1);
    // The directory of live keys is read at most once a second; no key is looked up itself.
    let lookups = gw.gw.registry.store_lookups() - lookups_before;
    let bound = 2 + started.elapsed().as_secs();
    assert!(
        lookups <= bound,
        "{lookups} store lookups (at most {bound}) for {random} distinct keys and {repeats} \
         repeats of one"
    );
    let (_, _, metrics) = gw.request("GET", "/metrics", None, Bytes::new()).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(&format!(
            "palisade_auth_failures_total{{reason=\"unknown_key\"}} {}",
            random + repeats
        )),
        "{metrics}"
    );
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An HTTP/2 connection in cleartext (prior knowledge), with the stream window given (`None`:
/// hyper's default), and the task driving it (it ends when the gateway closes the connection).
async fn h2(
    addr: std::net::SocketAddr,
    window: Option<u32>,
) -> (H2, tokio::task::JoinHandle<Result<(), hyper::Error>>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    if let Some(w) = window {
        b.initial_stream_window_size(w);
        if w > 0 {
            b.initial_connection_window_size(w);
        }
    }
    let (send, conn) = b.handshake(TokioIo::new(tcp)).await.expect("h2 handshake");
    (send, tokio::spawn(conn))
}

/// An HTTP/2 connection in cleartext with a small flow-control window.
async fn h2c(addr: std::net::SocketAddr, window: u32) -> H2 {
    h2(addr, Some(window)).await.0
}

fn chat_request(addr: std::net::SocketAddr, body: &Value) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("authorization", format!("Bearer {SUPPORT_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_in_cleartext_is_served() {
    let gw = TestGateway::start(&[], "").await;
    let mut send = h2c(gw.addr, 65_535).await;
    for i in 0..3 {
        let resp = send
            .send_request(chat_request(gw.addr, &chat_body("m", &format!("h2 {i}"))))
            .await
            .expect("answer");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        assert!(
            v.pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .is_some_and(|c| c.contains(&format!("h2 {i}"))),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_its_client_stops_reading_is_cut_audited_and_settled() {
    let gw = TestGateway::start_full(
        common::Db::Sqlite,
        &[],
        "",
        false,
        "server.write_timeout_ms = 300\nserver.max_body_bytes = 1048576\n",
    )
    .await;
    // A long answer: the mock streams one chunk per word of what it is sent.
    let words = vec!["abcdefghij"; 20_000].join(" ");
    let mut body = chat_body("m", &words);
    body["stream"] = json!(true);
    let mut send = h2c(gw.addr, 16 * 1024).await;
    let resp = send
        .send_request(chat_request(gw.addr, &body))
        .await
        .expect("the stream starts");
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["palisade-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    // The client holds the stream open and reads nothing: its window closes at 16 KiB, the
    // relay's buffer fills, and the write timeout ends the call.
    settled(&gw).await;
    let rows = audit(&gw).await;
    let row = rows
        .iter()
        .find(|r| r.request_id == request_id)
        .unwrap_or_else(|| panic!("no audit row for {request_id}: {rows:?}"));
    assert_eq!(row.status, 499, "{row:?}");
    assert_eq!(row.error_code.as_deref(), Some("client_closed"));
    assert!(row.truncated, "cut before its end");
    assert!(row.output_tokens > 0, "settled for what was sent: {row:?}");
    assert!(
        (row.output_tokens as usize) < 20_000 * 3,
        "not the whole answer: {row:?}"
    );
    drop(resp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_stops_reading_is_cut_and_its_connection_closed() {
    let gw = TestGateway::start_full(
        common::Db::Sqlite,
        &[],
        "",
        false,
        "server.write_timeout_ms = 300\nserver.max_body_bytes = 4194304\n",
    )
    .await;
    // About 10 MB of events: more than the loopback socket buffers can hold.
    let words = vec!["abcdefghij"; 60_000].join(" ");
    let mut body = chat_body("m", &words);
    body["stream"] = json!(true);
    let body = body.to_string();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let mut s = socket.connect(gw.addr).await.expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {SUPPORT_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        gw.addr,
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(body.as_bytes()).await.expect("body");
    let mut first = [0u8; 1024];
    let n = s.read(&mut first).await.expect("the answer starts");
    let text = String::from_utf8_lossy(&first[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let request_id = text
        .lines()
        .find_map(|l| l.strip_prefix("palisade-request-id: "))
        .expect("a request id")
        .trim()
        .to_string();
    // Read nothing more: the gateway's writes block, and the write timeout ends the call.
    settled(&gw).await;
    let rows = audit(&gw).await;
    let row = rows
        .iter()
        .find(|r| r.request_id == request_id)
        .unwrap_or_else(|| panic!("no audit row for {request_id}: {rows:?}"));
    assert_eq!(
        (row.status, row.error_code.as_deref()),
        (499, Some("client_closed")),
        "{row:?}"
    );
    assert!(row.truncated && row.output_tokens > 0, "{row:?}");
    // The gateway closes the connection while the client still reads nothing (its blocked
    // write fails): the connection gauge, which nothing signals, is checked for up to 5 s.
    let closing = Instant::now();
    while gw.gw.metrics.connections_open() > 0 {
        assert!(
            closing.elapsed() < Duration::from_secs(5),
            "the gateway still holds the connection of a client that reads nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // What was buffered, then the end.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the gateway closed the connection");
    assert!(
        !String::from_utf8_lossy(&rest).contains("data: [DONE]"),
        "the stream did not pass as complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_keeps_its_window_shut_does_not_pin_the_connection() {
    let gw = TestGateway::start_full(
        common::Db::Sqlite,
        &[],
        "",
        false,
        "server.write_timeout_ms = 300\n",
    )
    .await;
    let before = gw.gw.metrics.connections_open();
    // No key needed: a window of 0 means the gateway may send headers but never a byte of
    // body, and the client still answers pings, so nothing at the socket ever blocks.
    let (mut send, conn) = h2(gw.addr, Some(0)).await;
    let req = http::Request::get(format!("http://{}/health", gw.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.expect("the head is sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(gw.gw.metrics.connections_open(), before + 1);
    // The body can never be taken: the gateway ends the connection after the write timeout.
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the connection is still open after 10 s");
    assert!(started.elapsed() >= Duration::from_millis(250));
    drop(resp);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.gw.metrics.connections_open() > before {
        assert!(
            Instant::now() < deadline,
            "the gateway still counts it open"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_sends_http2_clients_away_before_it_cuts() {
    let gw = TestGateway::start(&[], "").await;
    let (mut send, conn) = h2(gw.addr, None).await;
    let resp = send
        .send_request(chat_request(gw.addr, &chat_body("m", "before")))
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.expect("body");
    // The deploy starts: the idle keep-alive connection gets GOAWAY and ends at once, long
    // before the drain would cut anything.
    gw.gw.drain.start_draining();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the connection ends when the drain starts")
        .expect("task")
        .expect("a graceful end (GOAWAY)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed() {
    let gw = TestGateway::start_full(
        common::Db::Sqlite,
        &[],
        "",
        false,
        "server.idle_timeout_ms = 300\n",
    )
    .await;
    let (mut send, conn) = h2(gw.addr, None).await;
    let resp = send
        .send_request(chat_request(gw.addr, &chat_body("m", "once")))
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.expect("body");
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the gateway ends an idle connection")
        .expect("task")
        .expect("a graceful end (GOAWAY)");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_their_own_listener_only() {
    let gw = TestGateway::start_full(
        common::Db::Sqlite,
        &[],
        "",
        false,
        "server.metrics_listen = \"127.0.0.1:0\"\n",
    )
    .await;
    let (status, _, _) = gw.request("GET", "/metrics", None, Bytes::new()).await;
    assert_eq!(status, 404, "not on the main listener");
    let (listener, addr) = palisade::server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind");
    let server = tokio::spawn(palisade::server::serve_metrics(listener, gw.gw.clone()));
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let get = |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let resp = client.request(get("/metrics")).await.expect("metrics");
    assert_eq!(resp.status(), 200);
    let text = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&text).contains("palisade_requests_total"));
    let resp = client.request(get("/health")).await.expect("answer");
    assert_eq!(resp.status(), 404, "only /metrics there");
    server.abort();
}
