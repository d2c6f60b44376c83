//! End-to-end tests of the mock over real loopback HTTP: the server is started on port 0 and
//! spoken to with hyper's client, as the gateway and the benchmarks will.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mock_upstream::MockState;
use serde_json::{Value, json};

struct Mock {
    base: String,
    state: MockState,
    client: Client<HttpConnector, Full<Bytes>>,
}

fn start() -> Mock {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (addr, state) = mock_upstream::spawn(listener);
    Mock {
        base: format!("http://{addr}"),
        state,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Mock {
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        self.client
            .request(req.body(Full::new(body.into())).unwrap())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let res = self.send(method, path, headers, body).await.await.unwrap();
        let (parts, body) = res.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    async fn chat(&self, body: Value, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Value) {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let (status, headers, body) = self
            .call(Method::POST, "/v1/chat/completions", &all, body.to_string())
            .await;
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
        (status, headers, value)
    }

    /// Sends a streamed chat request; returns the response head and the body frames as they
    /// came, plus the error that ended the body, if one did.
    async fn chat_stream(&self, body: Value) -> (Response<()>, Vec<Bytes>, Option<hyper::Error>) {
        let res = self
            .send(
                Method::POST,
                "/v1/chat/completions",
                &[("content-type", "application/json")],
                body.to_string(),
            )
            .await
            .await
            .unwrap();
        let (parts, body) = res.into_parts();
        let (frames, error) = read_frames(body).await;
        (Response::from_parts(parts, ()), frames, error)
    }
}

async fn read_frames(mut body: Incoming) -> (Vec<Bytes>, Option<hyper::Error>) {
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    frames.push(data);
                }
            }
            Err(e) => return (frames, Some(e)),
        }
    }
    (frames, None)
}

/// The `data:` payloads of a server-sent event stream, in order.
fn sse_events(frames: &[Bytes]) -> Vec<String> {
    let text: String = frames
        .iter()
        .map(|f| std::str::from_utf8(f).unwrap())
        .collect();
    assert!(text.ends_with("\n\n") || text.is_empty(), "{text:?}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_owned()
        })
        .collect()
}

fn parse_chunks(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

fn content_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn user(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": text},
    ]})
}

fn assert_openai_error(body: &Value, kind: &str, code: &str) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], kind, "{body}");
    assert_eq!(error["code"], code, "{body}");
}

#[tokio::test]
async fn models_are_listed() {
    let mock = start();
    let (status, headers, body) = mock.call(Method::GET, "/v1/models", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o-mini", "gpt-4o", "mock-small"]);
    assert_eq!(body["data"][0]["object"], "model");
    assert_eq!(body["data"][0]["created"], 1_700_000_000);
    assert_eq!(body["data"][0]["owned_by"], "mock");
}

#[tokio::test]
async fn completion_has_openai_shape_and_echo() {
    let mock = start();
    let (status, headers, body) = mock.chat(user("What is 2+2?"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let expected = "Hello from mock-upstream (gpt-4o-mini). You said: What is 2+2?";
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], "gpt-4o-mini");
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], expected);
    assert_eq!(choice["finish_reason"], "stop");
    // "be brief" (8) + "What is 2+2?" (12) = 20 chars -> 5 tokens.
    let completion = (expected.chars().count() as u64).div_ceil(4);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": completion, "total_tokens": 5 + completion})
    );
}

#[tokio::test]
async fn content_parts_and_last_user_message() {
    let mock = start();
    let request = json!({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [
            {"type": "text", "text": "look at"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "this"},
        ]},
    ]});
    let (status, _, body) = mock.chat(request, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from mock-upstream (gpt-4o). You said: look at this"
    );
}

#[tokio::test]
async fn ids_are_distinct() {
    let mock = start();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, _, body) = mock.chat(user("hi"), &[]).await;
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 3);
}

#[tokio::test]
async fn stream_sequence_without_usage() {
    let mock = start();
    let mut request = user("one two three");
    request["stream"] = json!(true);
    let (head, frames, error) = mock.chat_stream(request).await;
    assert!(error.is_none());
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-type"], "text/event-stream");
    let events = sse_events(&frames);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = parse_chunks(&events);
    // role, 9 words, finish.
    assert_eq!(chunks.len(), 1 + 9 + 1, "{events:#?}");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-mock-"));
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o-mini");
        assert!(c["created"].is_u64());
        assert!(c.get("usage").is_none(), "{c}");
        assert_eq!(c["choices"][0]["index"], 0);
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(
        chunks[1]["choices"][0]["delta"],
        json!({"content": "Hello "})
    );
    assert_eq!(
        chunks[9]["choices"][0]["delta"],
        json!({"content": "three"})
    );
    for c in &chunks[..10] {
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        content_of(&chunks),
        "Hello from mock-upstream (gpt-4o-mini). You said: one two three"
    );
}

#[tokio::test]
async fn stream_usage_chunk_only_when_asked() {
    let mock = start();
    let mut request = user("count me");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let (_, frames, error) = mock.chat_stream(request).await;
    assert!(error.is_none());
    let events = sse_events(&frames);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = parse_chunks(&events);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    let reply = "Hello from mock-upstream (gpt-4o-mini). You said: count me";
    let completion = (reply.chars().count() as u64).div_ceil(4);
    // "be brief" (8) + "count me" (8) = 16 chars -> 4 tokens.
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": completion, "total_tokens": 4 + completion})
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    // As the real API does: the other chunks carry `"usage": null`.
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["usage"], Value::Null);
        assert!(c.get("usage").is_some());
    }
    assert_eq!(content_of(&chunks), reply);

    // include_usage false: no usage chunk.
    let mut request = user("count me");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": false});
    let (_, frames, _) = mock.chat_stream(request).await;
    let chunks = parse_chunks(&sse_events(&frames));
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn max_tokens_truncates_to_words() {
    let mock = start();
    let mut request = user("a b c");
    request["max_tokens"] = json!(3);
    let (status, _, body) = mock.chat(request.clone(), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from mock-upstream"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 6); // 24 chars

    request["stream"] = json!(true);
    let (_, frames, error) = mock.chat_stream(request).await;
    assert!(error.is_none());
    let events = sse_events(&frames);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = parse_chunks(&events);
    assert_eq!(chunks.len(), 1 + 3 + 1);
    assert_eq!(content_of(&chunks), "Hello from mock-upstream");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    // Enough tokens: not cut.
    let mut request = user("a b c");
    request["max_completion_tokens"] = json!(100);
    let (_, _, body) = mock.chat(request, &[]).await;
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn injected_503_by_header_and_directive() {
    let mock = start();
    let (status, _, body) = mock.chat(user("hi"), &[("x-mock-status", "503")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"error": {"message": "mock-upstream injected 503", "type": "server_error", "code": "mock_injected"}})
    );

    let (status, _, body) = mock.chat(user("[mock:status=503] hi"), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_openai_error(&body, "server_error", "mock_injected");

    // Headers work on /v1/models too.
    let (status, _, _) = mock
        .call(Method::GET, "/v1/models", &[("x-mock-status", "500")], "")
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn injected_429_is_a_rate_limit() {
    let mock = start();
    for (text, headers) in [
        ("hi", vec![("x-mock-status", "429")]),
        ("hi [mock:status=429]", vec![]),
    ] {
        let (status, res_headers, body) = mock.chat(user(text), &headers).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res_headers["retry-after"], "1");
        assert_eq!(
            body,
            json!({"error": {"message": "mock-upstream injected 429", "type": "rate_limit_error", "code": "mock_injected"}})
        );
    }
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let mock = start();
    let started = Instant::now();
    let (status, _, body) = mock.chat(user("[mock:latency=200] slow please"), &[]).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(status, StatusCode::OK);
    // The directive is not echoed.
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from mock-upstream (gpt-4o-mini). You said: slow please"
    );

    let started = Instant::now();
    let (status, _, _) = mock.chat(user("hi"), &[("x-mock-latency-ms", "150")]).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn drop_after_cuts_the_stream() {
    let mock = start();
    let mut request = user("[mock:drop_after=3] one two three four five");
    request["stream"] = json!(true);
    let (head, frames, error) = mock.chat_stream(request).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert!(error.is_some(), "the body should end in an error");
    let events = sse_events(&frames);
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:#?}");
    let chunks = parse_chunks(&events);
    assert_eq!(chunks.len(), 1 + 3, "{events:#?}");
    assert_eq!(content_of(&chunks), "Hello from mock-upstream ");
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );

    // The server keeps serving afterwards.
    let (status, _, _) = mock.chat(user("still there?"), &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn drop_after_drops_a_non_stream() {
    let mock = start();
    let result = mock
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[("x-mock-drop-after", "0")],
            user("hi").to_string(),
        )
        .await
        .await;
    assert!(
        result.is_err(),
        "expected a dropped connection, got {result:?}"
    );
    // Recorded all the same.
    assert_eq!(mock.state.requests().len(), 1);
}

#[tokio::test]
async fn chunk_delay_spaces_the_chunks() {
    let mock = start();
    let mut request = user("[mock:chunk_delay=20] x");
    request["stream"] = json!(true);
    let started = Instant::now();
    let (_, frames, error) = mock.chat_stream(request).await;
    let elapsed = started.elapsed();
    assert!(error.is_none());
    // "Hello from mock-upstream (gpt-4o-mini). You said: x": role + 7 words + finish + [DONE]
    // = 10 frames, 9 gaps of 20 ms.
    assert_eq!(frames.len(), 10, "each chunk should come as its own frame");
    assert!(elapsed >= Duration::from_millis(180), "{elapsed:?}");
    assert_eq!(sse_events(&frames).last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let mock = start();
    let (status, _, body) = mock
        .call(Method::POST, "/v1/chat/completions", &[], "{not json")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(
        &serde_json::from_slice(&body).unwrap(),
        "invalid_request_error",
        "invalid_json",
    );

    let (status, _, body) = mock.chat(json!({"messages": []}), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&body, "invalid_request_error", "invalid_request");

    let (status, _, body) = mock.chat(user("[mock:status=abc] hi"), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&body, "invalid_request_error", "invalid_mock_directive");

    let (status, _, body) = mock
        .chat(user("hi"), &[("x-mock-latency-ms", "soon")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&body, "invalid_request_error", "invalid_mock_directive");

    let (status, _, body) = mock.call(Method::GET, "/v1/nope", &[], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_openai_error(&body, "invalid_request_error", "unknown_url");
    assert_eq!(body["error"]["message"], "Invalid URL (GET /v1/nope)");

    let (status, _, _) = mock
        .call(Method::GET, "/v1/chat/completions", &[], "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn requests_are_recorded() {
    let mock = start();
    let (status, _, body) = mock.call(Method::GET, "/health", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"ok");

    let request = user("remember me");
    mock.chat(
        request.clone(),
        &[
            ("X-Custom-Header", "Yes"),
            ("Authorization", "Bearer sk-test"),
        ],
    )
    .await;
    mock.call(Method::GET, "/v1/models?limit=1", &[], "").await;

    let seen = mock.state.requests();
    assert_eq!(seen.len(), 2, "{seen:#?}"); // /health is not recorded
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].header("x-custom-header"), Some("Yes"));
    assert_eq!(seen[0].header("authorization"), Some("Bearer sk-test"));
    assert!(seen[0].headers.iter().any(|(n, _)| n == "x-custom-header"));
    assert!(seen[0].headers.iter().all(|(n, _)| *n == n.to_lowercase()));
    assert_eq!(seen[0].json(), Some(request));
    assert_eq!(seen[1].method, "GET");
    assert_eq!(seen[1].path, "/v1/models");
    assert_eq!(seen[1].query.as_deref(), Some("limit=1"));
    assert_eq!(mock.state.last_request().as_ref(), seen.last());

    // The same over HTTP, for humans.
    let (status, headers, body) = mock.call(Method::GET, "/_mock/requests", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let over_http: Vec<mock_upstream::RecordedRequest> = serde_json::from_slice(&body).unwrap();
    assert_eq!(over_http, seen);

    let (status, _, _) = mock.call(Method::DELETE, "/_mock/requests", &[], "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(mock.state.requests().is_empty());

    mock.chat(user("again"), &[]).await;
    assert_eq!(mock.state.requests().len(), 1);
    mock.state.clear();
    assert!(mock.state.requests().is_empty());
}

#[tokio::test]
async fn recording_is_bounded() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = MockState::with_max_recorded(2);
    tokio::spawn(mock_upstream::serve(listener, state.clone()));
    let mock = Mock {
        base: format!("http://{addr}"),
        state,
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    for text in ["one", "two", "three"] {
        mock.chat(user(text), &[]).await;
    }
    let seen = mock.state.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].body.contains("two"));
    assert!(seen[1].body.contains("three"));
}

#[tokio::test]
async fn concurrent_requests() {
    let mock = std::sync::Arc::new(start());
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mock = mock.clone();
        tasks.push(tokio::spawn(async move {
            let (status, _, body) = mock.chat(user(&format!("n{i}")), &[]).await;
            assert_eq!(status, StatusCode::OK);
            body["id"].as_str().unwrap().to_owned()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 32);
    assert_eq!(mock.state.requests().len(), 32);
}

#[tokio::test]
async fn mcp_face_lists_tools_and_counts_emails() {
    let mock = start();
    let rpc = |id: u64, method: &str, params: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
    };
    let json = [("content-type", "application/json")];
    let (status, _, body) = mock
        .call(
            Method::POST,
            "/mcp",
            &json,
            rpc(1, "initialize", json!({"protocolVersion": "2025-06-18"})),
        )
        .await;
    let init: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    let (status, _, body) = mock.call(Method::POST, "/mcp", &json, note).await;
    assert_eq!((status, body.len()), (StatusCode::ACCEPTED, 0));

    let (_, _, body) = mock
        .call(Method::POST, "/mcp", &json, rpc(2, "tools/list", json!({})))
        .await;
    let list: Value = serde_json::from_slice(&body).unwrap();
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["crm_query", "hr_salary", "send_email", "enable_refunds"]
    );

    // enable_refunds adds a tool and says so in an event stream before its response.
    let on = json!({"name": "enable_refunds", "arguments": {}});
    let (status, headers, body) = mock
        .call(Method::POST, "/mcp", &json, rpc(9, "tools/call", on))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let text = String::from_utf8_lossy(&body);
    let changed = text.find("notifications/tools/list_changed");
    let response = text.find("\"id\":9");
    assert!(changed.is_some() && changed < response, "{text}");

    assert_eq!(mock.state.emails_sent(), 0);
    let send =
        json!({"name": "send_email", "arguments": {"to": "a@b.c", "subject": "s", "body": "b"}});
    let (_, _, body) = mock
        .call(Method::POST, "/mcp", &json, rpc(3, "tools/call", send))
        .await;
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["result"]["isError"], false, "{sent}");
    assert_eq!(mock.state.emails_sent(), 1);
    let (_, _, body) = mock
        .call(Method::POST, "/mcp", &json, rpc(4, "nope", json!({})))
        .await;
    let unknown: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(unknown["error"]["code"], -32601);
}

#[tokio::test]
async fn no_usage_drops_usage_from_answers_and_streams() {
    let mock = start();
    let (status, _, body) = mock.chat(user("[mock:no_usage=1] hi"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("usage").is_none(), "{body}");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .ends_with("You said: hi")
    );

    let (_, _, body) = mock.chat(user("hi"), &[("x-mock-no-usage", "1")]).await;
    assert!(body.get("usage").is_none(), "{body}");

    let mut request = user("[mock:no_usage=1] count me");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let (_, frames, error) = mock.chat_stream(request).await;
    assert!(error.is_none());
    let events = sse_events(&frames);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = parse_chunks(&events);
    assert!(chunks.iter().all(|c| c["usage"].is_null()), "{chunks:?}");
    assert!(content_of(&chunks).ends_with("You said: count me"));
}
