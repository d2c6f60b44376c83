//! Reading an agent's request: its key, its bounded body, its JSON, and the `call` record the
//! plugins see.

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use super::estimate;
use crate::core::error::CallError;
use crate::plugins::bindings::{Agent as WitAgent, Call, CallKind};
use crate::registry::Agent;

pub use crate::core::settings::DEFAULT_MAX_OUTPUT_TOKENS;

/// Longest name (bytes) an agent may choose for a model, tool or prompt.
pub const MAX_NAME_LEN: usize = 256;
/// Longest resource URI (bytes) an agent may ask for: URIs carry paths, so more room than names.
pub const MAX_URI_LEN: usize = 2048;

/// Check an agent-chosen name (`field` is what the agent calls it: `model`, `name`, `uri`):
/// at most `max` bytes and no control characters. These strings become plugin targets, audit
/// columns, metric labels and ledger scopes, where a NUL or a newline does harm (PostgreSQL
/// refuses NUL; log and metric lines split on newlines), and no real model or tool needs them.
pub fn check_name(field: &str, value: &str, max: usize) -> Result<(), CallError> {
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(CallError::bad_request(
            "invalid_request",
            format!("`{field}` must be at most {max} bytes with no control characters"),
        ));
    }
    Ok(())
}

/// The agent key from `Authorization: Bearer` or `x-api-key`.
pub fn agent_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Most bytes of an oversized body read and thrown away so the agent gets its 413: a server
/// that answers and closes while the client is still sending makes the client see a reset
/// instead of the answer.
const DRAIN_CAP: usize = 16 << 20;

/// Read the body, refusing more than `limit` bytes (by header before reading, by count while
/// reading) and a body that has not all arrived within `deadline` (408 `request_timeout`: a
/// client trickling its body would otherwise hold its connection and task for ever).
pub async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<Bytes, CallError> {
    match tokio::time::timeout(deadline, read_body_bounded(headers, body, limit)).await {
        Ok(read) => read,
        Err(_) => Err(CallError::RequestTimeout { after: deadline }),
    }
}

async fn read_body_bounded(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, CallError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(CallError::PayloadTooLarge { limit });
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        // The body breaks off only when the agent's connection does: it hung up.
        let frame = frame.map_err(|e| {
            tracing::debug!("request body broke off: {e}");
            CallError::ClientClosed
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                drain(body).await;
                return Err(CallError::PayloadTooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

async fn drain(body: Incoming) {
    let read = Limited::new(body, DRAIN_CAP).collect();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), read).await;
}

/// A chat request, checked enough that plugins and the upstream can rely on its shape.
pub struct ChatRequest {
    pub json: serde_json::Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// The agent asked for a usage chunk at the end of the stream.
    pub wants_usage: bool,
    /// Estimated input tokens of the whole request ([`estimate::input_tokens`]).
    pub input_tokens: u32,
    /// Most output tokens over all `n` choices ([`estimate::max_output_tokens`]).
    pub max_output_tokens: u32,
}

/// Parse and check an OpenAI chat completions body.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, CallError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        CallError::bad_request(
            "invalid_json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(json) = value else {
        return Err(CallError::bad_request(
            "invalid_request",
            "request body must be a JSON object",
        ));
    };
    let model = match json.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(CallError::bad_request(
                "invalid_request",
                "`model` is required and must be a string",
            ));
        }
    };
    check_name("model", &model, MAX_NAME_LEN)?;
    let Some(Value::Array(messages)) = json.get("messages") else {
        return Err(CallError::bad_request(
            "invalid_request",
            "`messages` is required and must be an array",
        ));
    };
    if messages.is_empty() {
        return Err(CallError::bad_request(
            "invalid_request",
            "`messages` must not be empty",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        if !m.get("role").is_some_and(Value::is_string) {
            return Err(CallError::bad_request(
                "invalid_request",
                format!("messages[{i}] needs a string `role`"),
            ));
        }
    }
    let stream = match json.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(CallError::bad_request(
                "invalid_request",
                "`stream` must be a boolean",
            ));
        }
    };
    let wants_usage = json
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // The whole request counts (`n`, tools, images, ...): see `estimate`.
    let max_output_tokens = estimate::max_output_tokens(&json, DEFAULT_MAX_OUTPUT_TOKENS)?;
    let input_tokens = estimate::input_tokens(&json);
    Ok(ChatRequest {
        model,
        stream,
        wants_usage,
        input_tokens: u32::try_from(input_tokens).unwrap_or(u32::MAX),
        max_output_tokens: u32::try_from(max_output_tokens).unwrap_or(u32::MAX),
        json,
    })
}

/// The plugins' view of an LLM call.
pub fn llm_call(
    request_id: &str,
    run_id: &str,
    agent: &Agent,
    chat: &ChatRequest,
    body: String,
) -> Call {
    Call {
        request_id: request_id.to_string(),
        run_id: run_id.to_string(),
        chain: vec![agent.id.clone()],
        agent: WitAgent {
            id: agent.id.clone(),
            name: agent.name.clone(),
            owner: agent.owner.clone(),
            team: agent.team.clone(),
            labels: agent.labels.clone(),
        },
        kind: CallKind::LlmCall,
        target: chat.model.clone(),
        body,
        stream: chat.stream,
        input_tokens: chat.input_tokens,
        max_output_tokens: chat.max_output_tokens,
        max_cost: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_estimates() {
        let c = parse_chat(br#"{"model":"m","messages":[{"role":"user","content":"12345678"}],"max_tokens":7,"stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert_eq!(
            (c.model.as_str(), c.stream, c.wants_usage),
            ("m", true, true)
        );
        // "user" + "12345678": 12 characters, 3 tokens.
        assert_eq!((c.input_tokens, c.max_output_tokens), (3, 7));
        let c = parse_chat(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":3,"max_tokens":5.0}"#,
        )
        .unwrap();
        assert_eq!(c.max_output_tokens, 15);
        let e = parse_chat(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":5.5}"#,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("`max_tokens`"), "{e}");
    }

    #[test]
    fn bad_bodies_get_codes() {
        let code = |b: &[u8]| parse_chat(b).err().map(|e| e.code().to_string());
        assert_eq!(code(b"{nope").as_deref(), Some("invalid_json"));
        assert_eq!(code(b"[]").as_deref(), Some("invalid_request"));
        assert_eq!(
            code(br#"{"messages":[]}"#).as_deref(),
            Some("invalid_request")
        );
        assert_eq!(
            code(br#"{"model":"m","messages":[{"content":"x"}]}"#).as_deref(),
            Some("invalid_request")
        );
    }

    #[test]
    fn model_names_are_bounded_and_printable() {
        let body = |m: &str| {
            serde_json::json!({"model": m, "messages": [{"role": "user", "content": "x"}]})
                .to_string()
        };
        for bad in [
            "gpt-4o-mini\u{0}",
            "a\nb",
            "\u{7f}x",
            "\u{9b}",
            &"m".repeat(257),
        ] {
            let err = parse_chat(body(bad).as_bytes()).err().expect(bad);
            assert_eq!(err.code(), "invalid_request");
            assert!(err.to_string().contains("`model`"), "{err}");
        }
        assert!(parse_chat(body(&"m".repeat(256)).as_bytes()).is_ok());
        assert!(parse_chat(body("claude-3.5/sonnet:beta é").as_bytes()).is_ok());
        assert!(check_name("uri", &"u".repeat(300), MAX_URI_LEN).is_ok());
    }

    #[test]
    fn keys_from_either_header() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer  abc ".parse().unwrap());
        assert_eq!(agent_key(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k".parse().unwrap());
        assert_eq!(agent_key(&h), Some("k"));
    }
}
