//! The Anthropic and Gemini adapters against the mock's Anthropic and Gemini faces over real
//! HTTP on loopback: canonical request encoded, sent with the dialect's headers, the answer
//! (whole or streamed through the SSE reader) decoded back to OpenAI shapes. Also the mock's
//! down switch and its fault directives in each face's error shape.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mock_upstream::{Down, MockState};
use palisade::providers::dialect::Dialect;
use palisade::providers::sse::SseReader;
use serde_json::{Map, Value, json};

struct Answer {
    status: u16,
    body: Bytes,
}

fn mock() -> (String, MockState) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (addr, state) = mock_upstream::spawn(l);
    (format!("http://{addr}"), state)
}

async fn send(base: &str, dialect: Dialect, req: &Value, model: &str) -> Answer {
    let canonical: Map<String, Value> = req.as_object().cloned().unwrap();
    let out = dialect.encode_request(&canonical, model).unwrap();
    let mut b = http::Request::post(format!("{base}{}", out.path))
        .header("content-type", "application/json");
    for (k, v) in out.headers {
        b = b.header(k, v);
    }
    let (k, v) = dialect.auth_header("sk-test").unwrap();
    b = b.header(k, v);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client
        .request(b.body(Full::new(out.body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    // A cut stream ends in a body error: keep what arrived before it.
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(d) = frame.into_data() {
            got.extend_from_slice(&d);
        }
    }
    Answer {
        status,
        body: Bytes::from(got),
    }
}

/// Feed a streamed body through the SSE reader and the dialect's decoder.
fn decode_stream(dialect: Dialect, body: &[u8]) -> (Vec<Value>, bool) {
    let mut sse = SseReader::default();
    let mut dec = dialect.stream_decoder("alias");
    let mut chunks = Vec::new();
    // Split the body in small reads, as a network would.
    for piece in body.chunks(7) {
        for data in sse.push(piece).unwrap() {
            chunks.extend(dec.event(&data).unwrap());
        }
    }
    (chunks, dec.finished())
}

fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect()
}

fn chat(text: &str, stream: bool) -> Value {
    json!({
        "model": "smart",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        "stream": stream,
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
        ],
    })
}

#[tokio::test]
async fn both_faces_answer_text_through_the_adapters() {
    let (base, state) = mock();
    for (dialect, model) in [
        (Dialect::Anthropic, "claude-x"),
        (Dialect::Gemini, "gemini-x"),
    ] {
        let a = send(&base, dialect, &chat("hello there", false), model).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let o = dialect.decode_response(&a.body, model).unwrap();
        assert_eq!(
            o["choices"][0]["message"]["content"],
            format!("Hello from mock-upstream ({model}). You said: hello there")
        );
        assert_eq!(o["choices"][0]["finish_reason"], "stop");
        assert!(o["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        assert!(o["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
    let seen = state.requests();
    assert_eq!(seen[0].path, "/v1/messages");
    assert_eq!(seen[0].header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen[0].header("x-api-key"), Some("sk-test"));
    assert_eq!(seen[0].json().unwrap()["system"][0]["text"], "Be brief.");
    assert_eq!(seen[1].path, "/v1beta/models/gemini-x:generateContent");
    assert_eq!(seen[1].header("x-goog-api-key"), Some("sk-test"));
}

#[tokio::test]
async fn both_faces_stream_text_and_usage_through_the_adapters() {
    let (base, _state) = mock();
    for (dialect, model) in [
        (Dialect::Anthropic, "claude-x"),
        (Dialect::Gemini, "gemini-x"),
    ] {
        let a = send(&base, dialect, &chat("stream me", true), model).await;
        assert_eq!(a.status, 200);
        let (chunks, finished) = decode_stream(dialect, &a.body);
        assert!(finished, "{dialect:?}");
        assert_eq!(
            text_of(&chunks),
            format!("Hello from mock-upstream ({model}). You said: stream me")
        );
        let finish = chunks.iter().find_map(|c| {
            c.pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
        });
        assert_eq!(finish, Some("stop"));
        let usage = chunks.last().unwrap();
        assert!(
            usage["usage"]["completion_tokens"].as_u64().unwrap() > 0,
            "{dialect:?} {usage}"
        );
    }
}

#[tokio::test]
async fn parallel_tool_calls_come_back_with_ids_whole_and_streamed() {
    let (base, _state) = mock();
    for (dialect, model) in [
        (Dialect::Anthropic, "claude-x"),
        (Dialect::Gemini, "gemini-x"),
    ] {
        let ask = chat("use get_weather and get_time please", false);
        let a = send(&base, dialect, &ask, model).await;
        let o = dialect.decode_response(&a.body, model).unwrap();
        assert_eq!(
            o["choices"][0]["finish_reason"], "tool_calls",
            "{dialect:?} {o}"
        );
        let calls = o["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "mock", "days": 1}));

        // Streamed: argument deltas reassemble into the same arguments.
        let a = send(
            &base,
            dialect,
            &chat("use get_weather and get_time please", true),
            model,
        )
        .await;
        let (chunks, finished) = decode_stream(dialect, &a.body);
        assert!(finished);
        let mut args = String::new();
        let mut ids = Vec::new();
        for c in &chunks {
            for tc in c
                .pointer("/choices/0/delta/tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(id) = tc["id"].as_str() {
                    ids.push(id.to_string());
                }
                if tc["index"] == 0 {
                    args.push_str(
                        tc.pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or(""),
                    );
                }
            }
        }
        assert_eq!(ids.len(), 2, "{dialect:?}");
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"city": "mock", "days": 1})
        );

        // The results go back with the call ids; the face answers with text.
        let mut follow = chat("use get_weather and get_time please", false);
        let msgs = follow["messages"].as_array_mut().unwrap();
        msgs.push(json!({"role": "assistant", "content": null, "tool_calls": calls}));
        msgs.push(json!({"role": "tool", "tool_call_id": calls[0]["id"], "content": "18C"}));
        msgs.push(json!({"role": "tool", "tool_call_id": calls[1]["id"], "content": "{\"time\":\"noon\"}"}));
        let a = send(&base, dialect, &follow, model).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let o = dialect.decode_response(&a.body, model).unwrap();
        assert_eq!(o["choices"][0]["finish_reason"], "stop");
    }
}

#[tokio::test]
async fn faults_and_the_down_switch_speak_each_faces_error_shape() {
    let (base, state) = mock();
    for (dialect, model) in [
        (Dialect::Anthropic, "claude-x"),
        (Dialect::Gemini, "gemini-x"),
    ] {
        let a = send(&base, dialect, &chat("[mock:status=429] hi", false), model).await;
        assert_eq!(a.status, 429);
        assert_eq!(
            dialect.error_message(&a.body).as_deref(),
            Some("mock-upstream injected 429")
        );
        // A stream cut after two words never reports a proper end.
        let a = send(
            &base,
            dialect,
            &chat("[mock:drop_after=2] one two three", true),
            model,
        )
        .await;
        let (chunks, finished) = decode_stream(dialect, &a.body);
        assert!(!finished, "{dialect:?}: {chunks:?}");
    }
    let anth: Value = json!({"type": "error"});
    state.set_down(Some(Down::Unavailable));
    let a = send(&base, Dialect::Anthropic, &chat("hi", false), "c").await;
    assert_eq!(a.status, 503);
    let body: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(body["type"], anth["type"]);
    assert_eq!(body["error"]["type"], "overloaded_error");
    let a = send(&base, Dialect::Gemini, &chat("hi", false), "g").await;
    assert_eq!(a.status, 503);
    assert_eq!(
        Dialect::Gemini.error_message(&a.body).as_deref(),
        Some("mock-upstream is down")
    );
    state.set_down(None);
    let a = send(&base, Dialect::Gemini, &chat("hi", false), "g").await;
    assert_eq!(a.status, 200);
}
