//! The Anthropic Messages face (`POST /v1/messages`): reads the request as the real API does
//! (requires `anthropic-version` and `max_tokens`), answers with the same deterministic echo as
//! the OpenAI face, as a whole `message` or as the documented SSE event sequence
//! (`message_start`, `content_block_start`, `ping`, `content_block_delta`, `content_block_stop`,
//! `message_delta`, `message_stop`), tool calls as `tool_use` blocks with `input_json_delta`.

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::openai::{tokens, words};
use crate::tools::{Call, halves};

/// What the mock reads from a Messages request.
pub struct Ask {
    pub model: String,
    pub stream: bool,
    pub max_tokens: u64,
    pub user_text: String,
    /// The last message is a user message without tool results.
    pub user_turn: bool,
    pub tools: Vec<(String, Value)>,
    pub prompt_chars: usize,
}

fn block_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Parse a Messages request; `Err` is the message of a 400.
pub fn parse(body: &[u8]) -> Result<Ask, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let model = v["model"]
        .as_str()
        .ok_or("model: Field required")?
        .to_string();
    let max_tokens = v["max_tokens"]
        .as_u64()
        .ok_or("max_tokens: Field required")?;
    let messages = v["messages"].as_array().ok_or("messages: Field required")?;
    let last_user = messages.iter().rev().find(|m| m["role"] == "user");
    let user_text = last_user
        .map(|m| block_text(&m["content"]))
        .unwrap_or_default();
    let user_turn = messages.last().is_some_and(|m| {
        m["role"] == "user"
            && !m["content"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["type"] == "tool_result"))
    });
    let tools = v["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or_default().to_string(),
                t["input_schema"].clone(),
            )
        })
        .collect();
    let mut prompt_chars = block_text(&v["system"]).chars().count();
    for m in messages {
        prompt_chars += block_text(&m["content"]).chars().count();
    }
    Ok(Ask {
        model,
        stream: v["stream"].as_bool().unwrap_or(false),
        max_tokens,
        user_text,
        user_turn,
        tools,
        prompt_chars,
    })
}

/// A mock answer in Anthropic terms.
pub struct Answer<'a> {
    pub id: &'a str,
    pub model: &'a str,
    pub text: &'a str,
    pub calls: &'a [Call],
    pub truncated: bool,
    pub input_tokens: u64,
}

impl Answer<'_> {
    fn stop_reason(&self) -> &'static str {
        if !self.calls.is_empty() {
            "tool_use"
        } else if self.truncated {
            "max_tokens"
        } else {
            "end_turn"
        }
    }

    fn output_tokens(&self) -> u64 {
        tokens(self.text.chars().count())
            + self
                .calls
                .iter()
                .map(|c| tokens(c.args.to_string().len()))
                .sum::<u64>()
    }
}

/// A whole `message`.
pub fn message(a: &Answer<'_>) -> Vec<u8> {
    let mut content = Vec::new();
    if a.calls.is_empty() || !a.text.is_empty() {
        content.push(json!({"type": "text", "text": a.text}));
    }
    for c in a.calls {
        content.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.args}));
    }
    json!({
        "id": a.id, "type": "message", "role": "assistant", "model": a.model,
        "content": content, "stop_reason": a.stop_reason(), "stop_sequence": null,
        "usage": {"input_tokens": a.input_tokens, "output_tokens": a.output_tokens(),
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    })
    .to_string()
    .into_bytes()
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!(
        "event: {}\ndata: {v}\n\n",
        v["type"].as_str().unwrap_or("message")
    ))
}

/// The event sequence of a streamed message. With `cut_after = Some(n)`, only the events up to
/// the `n`-th text delta are made.
pub fn stream_frames(a: &Answer<'_>, cut_after: Option<u32>) -> VecDeque<Bytes> {
    let mut f = VecDeque::new();
    f.push_back(sse(&json!({"type": "message_start", "message": {
        "id": a.id, "type": "message", "role": "assistant", "model": a.model, "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": a.input_tokens, "output_tokens": 1,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}})));
    let mut index = 0;
    if a.calls.is_empty() || !a.text.is_empty() {
        f.push_back(sse(&json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
        f.push_back(sse(&json!({"type": "ping"})));
        let words: Vec<&str> = words(a.text).collect();
        let take = cut_after.map_or(words.len(), |n| (n as usize).min(words.len()));
        for w in &words[..take] {
            f.push_back(sse(&json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}})));
        }
        if cut_after.is_some() {
            return f;
        }
        f.push_back(sse(&json!({"type": "content_block_stop", "index": 0})));
        index = 1;
    }
    for c in a.calls {
        f.push_back(sse(&json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}})));
        let args = c.args.to_string();
        let (x, y) = halves(&args);
        for part in [x, y] {
            f.push_back(sse(&json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": part}})));
        }
        f.push_back(sse(&json!({"type": "content_block_stop", "index": index})));
        index += 1;
    }
    f.push_back(sse(&json!({"type": "message_delta",
        "delta": {"stop_reason": a.stop_reason(), "stop_sequence": null},
        "usage": {"output_tokens": a.output_tokens()}})));
    f.push_back(sse(&json!({"type": "message_stop"})));
    f
}

/// An Anthropic error body.
pub fn error(status: u16, message: &str) -> Vec<u8> {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
        .to_string()
        .into_bytes()
}
