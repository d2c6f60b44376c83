//! The Anthropic ingress format (`POST /v1/messages`): an Anthropic Messages request becomes the
//! canonical OpenAI chat request every later step sees, and the canonical answer goes back as an
//! Anthropic message, or, streamed, as Anthropic SSE events (`message_start`,
//! `content_block_start/delta/stop`, `message_delta`, `message_stop`; tool calls as `tool_use`
//! blocks with `input_json_delta`). The reverse of `providers::anthropic`, sharing its
//! finish-reason mapping.
//!
//! Not expressible in the canonical request, so refused with a 400: `top_k`, `thinking`,
//! server tools, documents, images inside tool results.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::core::error::CallError;

const KNOWN: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
];

fn unsupported(what: impl std::fmt::Display) -> CallError {
    CallError::bad_request(
        "unsupported",
        format!("Palisade cannot translate {what} to its providers"),
    )
}

fn invalid(message: impl Into<String>) -> CallError {
    CallError::bad_request("invalid_request", message)
}

/// An Anthropic Messages request body → the canonical OpenAI chat request body.
pub fn to_canonical(body: &[u8]) -> Result<Bytes, CallError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        CallError::bad_request(
            "invalid_json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(req) = v else {
        return Err(invalid("request body must be a JSON object"));
    };
    Ok(Bytes::from(Value::Object(canonical(&req)?).to_string()))
}

fn canonical(req: &Map<String, Value>) -> Result<Map<String, Value>, CallError> {
    for (k, v) in req {
        if !v.is_null() && !KNOWN.contains(&k.as_str()) {
            return Err(unsupported(format!("the request field `{k}`")));
        }
    }
    let mut out = Map::new();
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("model: Field required"))?;
    out.insert("model".into(), json!(model));
    let max = req
        .get("max_tokens")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid("max_tokens: Field required (a positive integer)"))?;
    out.insert("max_tokens".into(), json!(max));
    let mut messages = Vec::new();
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text = text_of(blocks, "system")?;
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => {
            return Err(invalid(
                "system: must be a string or an array of text blocks",
            ));
        }
    }
    let Some(Value::Array(turns)) = req.get("messages") else {
        return Err(invalid("messages: Field required"));
    };
    for (i, m) in turns.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("user") => user_turn(m.get("content"), &mut messages)?,
            Some("assistant") => messages.push(assistant_turn(m.get("content"))?),
            _ => {
                return Err(invalid(format!(
                    "messages.{i}.role: must be \"user\" or \"assistant\""
                )));
            }
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    for k in ["temperature", "top_p"] {
        if let Some(x) = req.get(k).filter(|x| !x.is_null()) {
            out.insert(k.into(), x.clone());
        }
    }
    if let Some(stop) = req.get("stop_sequences").filter(|x| !x.is_null()) {
        out.insert("stop".into(), stop.clone());
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
        // The re-encoded stream ends with a `message_delta` carrying usage.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(meta) = req.get("metadata").and_then(Value::as_object) {
        for (k, v) in meta {
            match (k.as_str(), v) {
                ("user_id", Value::String(u)) => {
                    out.insert("user".into(), json!(u));
                }
                (_, Value::Null) => {}
                _ => return Err(unsupported(format!("`metadata.{k}`"))),
            }
        }
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let mut fns = Vec::with_capacity(tools.len());
        for t in tools {
            if let Some(kind) = t.get("type").and_then(Value::as_str)
                && kind != "custom"
            {
                return Err(unsupported(format!("the server tool `{kind}`")));
            }
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tools: every tool needs a `name`"))?;
            let mut f = json!({"name": name, "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"}))});
            if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
                f["description"] = d.clone();
            }
            fns.push(json!({"type": "function", "function": f}));
        }
        out.insert("tools".into(), Value::Array(fns));
    }
    if let Some(tc) = req.get("tool_choice").filter(|x| !x.is_null()) {
        let choice = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                let name = tc
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("tool_choice: `tool` needs a `name`"))?;
                json!({"type": "function", "function": {"name": name}})
            }
            _ => return Err(invalid("tool_choice: unknown type")),
        };
        out.insert("tool_choice".into(), choice);
        if tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    Ok(out)
}

/// The text of text blocks (`where` names them in errors).
fn text_of(blocks: &[Value], place: &str) -> Result<String, CallError> {
    let mut out = String::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default());
            }
            other => {
                return Err(unsupported(format!(
                    "`{}` blocks in {place}",
                    other.unwrap_or("?")
                )));
            }
        }
    }
    Ok(out)
}

/// A user turn: its `tool_result` blocks become `tool` messages (first, as OpenAI wants them
/// right after the assistant's calls), the rest one user message.
fn user_turn(content: Option<&Value>, out: &mut Vec<Value>) -> Result<(), CallError> {
    let blocks = match content {
        Some(Value::String(s)) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Some(Value::Array(b)) => b,
        _ => return Err(invalid("messages: `content` must be a string or an array")),
    };
    let mut parts = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts
                .push(json!({"type": "text", "text": b.get("text").cloned().unwrap_or(json!(""))})),
            Some("image") => {
                let src = b.get("source").unwrap_or(&Value::Null);
                let url = match src.get("type").and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        src.get("media_type")
                            .and_then(Value::as_str)
                            .unwrap_or("image/png"),
                        src.get("data").and_then(Value::as_str).unwrap_or_default()
                    ),
                    Some("url") => src
                        .get("url")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    _ => return Err(unsupported("image sources other than base64 and url")),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_result") => {
                let id = b
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("tool_result: `tool_use_id` required"))?;
                let mut text = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => text_of(inner, "tool results")?,
                    Some(_) => return Err(invalid("tool_result: bad `content`")),
                };
                // OpenAI has no error flag on tool results: say it in the text.
                if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    text = format!("Error: {text}");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            other => return Err(unsupported(format!("`{}` blocks", other.unwrap_or("?")))),
        }
    }
    if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn assistant_turn(content: Option<&Value>) -> Result<Value, CallError> {
    let blocks = match content {
        Some(Value::String(s)) => return Ok(json!({"role": "assistant", "content": s})),
        Some(Value::Array(b)) => b,
        _ => return Err(invalid("messages: `content` must be a string or an array")),
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                text.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default())
            }
            Some("tool_use") => calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": b.get("input").cloned().unwrap_or(json!({})).to_string(),
                },
            })),
            other => return Err(unsupported(format!("`{}` blocks", other.unwrap_or("?")))),
        }
    }
    let mut m = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    Ok(m)
}

/// Anthropic `usage` from an OpenAI one: Anthropic's `input_tokens` excludes cache reads.
fn usage(u: &Value) -> Value {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("/prompt_tokens_details/cached_tokens");
    json!({
        "input_tokens": n("/prompt_tokens").saturating_sub(cached),
        "output_tokens": n("/completion_tokens"),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    })
}

/// An OpenAI `chat.completion` → an Anthropic message.
pub fn message(answer: &str) -> Result<String, CallError> {
    let v: Value = serde_json::from_str(answer)
        .map_err(|e| CallError::Internal(format!("answer is not JSON: {e}")))?;
    let choice = v.pointer("/choices/0").unwrap_or(&Value::Null);
    let m = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(t) = m
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": t}));
    }
    for c in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let args = c
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
        content.push(json!({
            "type": "tool_use",
            "id": c.get("id").cloned().unwrap_or(Value::Null),
            "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null),
            "input": input,
        }));
    }
    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop");
    Ok(json!({
        "id": message_id(v.get("id")),
        "type": "message",
        "role": "assistant",
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": usage(v.get("usage").unwrap_or(&Value::Null)),
    })
    .to_string())
}

fn message_id(id: Option<&Value>) -> String {
    match id.and_then(Value::as_str) {
        Some(id) if id.starts_with("msg_") => id.to_string(),
        Some(id) if !id.is_empty() => format!("msg_{id}"),
        _ => crate::core::ids::new_id("msg"),
    }
}

/// Which Anthropic block is open in the stream.
#[derive(PartialEq)]
enum Block {
    Text,
    /// A tool call, by its OpenAI index.
    Tool(u64),
}

/// OpenAI chunks in, Anthropic SSE events out.
#[derive(Default)]
pub struct StreamEncoder {
    started: bool,
    open: Option<Block>,
    next: u64,
    stop: Option<&'static str>,
    usage: Option<Value>,
}

fn sse(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

impl StreamEncoder {
    fn start(&mut self, chunk: &Value, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let msg = json!({
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model").cloned().unwrap_or(Value::Null),
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            // Input tokens are known only at the end: `message_delta` carries them.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        out.push(sse(
            "message_start",
            &json!({"type": "message_start", "message": msg}),
        ));
    }

    fn close(&mut self, out: &mut Vec<Bytes>) {
        if self.open.take().is_some() {
            let index = self.next - 1;
            out.push(sse(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn open(&mut self, block: Block, start: Value, out: &mut Vec<Bytes>) {
        self.close(out);
        let index = self.next;
        self.next += 1;
        self.open = Some(block);
        out.push(sse(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": start}),
        ));
    }

    fn delta(&self, delta: Value, out: &mut Vec<Bytes>) {
        out.push(sse(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": self.next - 1, "delta": delta}),
        ));
    }

    /// The events for one OpenAI chunk.
    pub fn chunk(&mut self, chunk: &Value) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.start(chunk, &mut out);
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return out;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            if self.open != Some(Block::Text) {
                self.open(Block::Text, json!({"type": "text", "text": ""}), &mut out);
            }
            self.delta(json!({"type": "text_delta", "text": text}), &mut out);
        }
        for tc in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
            let id = tc.get("id").and_then(Value::as_str);
            if id.is_some() || self.open != Some(Block::Tool(index)) {
                let start = json!({
                    "type": "tool_use",
                    "id": id.map_or_else(|| crate::core::ids::new_id("toolu"), str::to_string),
                    "name": tc.pointer("/function/name").cloned().unwrap_or(json!("")),
                    "input": {},
                });
                self.open(Block::Tool(index), start, &mut out);
            }
            if let Some(args) = tc
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                self.delta(
                    json!({"type": "input_json_delta", "partial_json": args}),
                    &mut out,
                );
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.close(&mut out);
            self.stop = Some(stop_reason(f));
        }
        out
    }

    /// The closing events, once the canonical stream ended properly.
    pub fn done(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.start(&Value::Null, &mut out);
        self.close(&mut out);
        let usage = usage(self.usage.as_ref().unwrap_or(&Value::Null));
        out.push(sse(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": usage,
            }),
        ));
        out.push(sse("message_stop", &json!({"type": "message_stop"})));
        out
    }

    /// An `error` event (the stream then ends without `message_stop`).
    pub fn error(e: &CallError, request_id: &str) -> Bytes {
        sse(
            "error",
            &crate::wire::errors::anthropic_error_json(e, request_id),
        )
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason` (for the Anthropic ingress).
pub fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(v: Value) -> Value {
        serde_json::from_slice(&to_canonical(v.to_string().as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn request_becomes_canonical_with_tools_and_results() {
        let c = canon(json!({
            "model": "claude-x", "max_tokens": 64, "stream": true,
            "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"], "metadata": {"user_id": "u1"},
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C", "is_error": true}, {"type": "text", "text": "and?"}]}
            ]
        }));
        let m = c["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(
            m[1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAA"
        );
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "Error: 18C"})
        );
        assert_eq!(m[4]["role"], "user");
        assert_eq!(c["tool_choice"], "required");
        assert_eq!(c["parallel_tool_calls"], false);
        assert_eq!(c["stop"], json!(["END"]));
        assert_eq!(c["user"], "u1");
        assert_eq!(c["stream_options"]["include_usage"], true);
    }

    #[test]
    fn what_cannot_be_carried_is_refused() {
        for extra in [
            json!({"top_k": 5}),
            json!({"thinking": {"type": "enabled"}}),
        ] {
            let mut r = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
            r.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let e = to_canonical(r.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.status(), 400);
        }
        let no_max = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        assert!(to_canonical(no_max.to_string().as_bytes()).is_err());
    }

    #[test]
    fn answer_becomes_a_message_with_cache_split_usage() {
        let a = json!({"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 60}}});
        let m: Value = serde_json::from_str(&message(&a.to_string()).unwrap()).unwrap();
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(
            m["content"][0],
            json!({"type": "tool_use", "id": "call_9", "name": "f", "input": {"a": 1}})
        );
        assert_eq!(m["usage"]["input_tokens"], 40);
        assert_eq!(m["usage"]["cache_read_input_tokens"], 60);
        assert!(m["id"].as_str().unwrap().starts_with("msg_"));
    }

    #[test]
    fn stream_encoder_emits_blocks_in_order() {
        let mut e = StreamEncoder::default();
        let ch = |delta: Value, finish: Value| json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        let mut out = Vec::new();
        out.extend(e.chunk(&ch(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )));
        out.extend(e.chunk(&ch(json!({"content": "Hi"}), Value::Null)));
        out.extend(e.chunk(&ch(json!({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]}), Value::Null)));
        out.extend(e.chunk(&ch(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}),
            Value::Null,
        )));
        out.extend(e.chunk(&ch(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            Value::Null,
        )));
        out.extend(e.chunk(&ch(json!({}), json!("tool_calls"))));
        out.extend(e.chunk(&json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})));
        out.extend(e.done());
        let events: Vec<Value> = out
            .iter()
            .map(|b| {
                let s = std::str::from_utf8(b).unwrap();
                serde_json::from_str(s.split("data: ").nth(1).unwrap().trim()).unwrap()
            })
            .collect();
        let kinds: Vec<&str> = events.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(events[4]["content_block"]["id"], "call_1");
        assert_eq!(events[4]["index"], 1);
        assert_eq!(
            events[5]["delta"],
            json!({"type": "input_json_delta", "partial_json": "{\"a\":"})
        );
        assert_eq!(events[8]["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[8]["usage"]["input_tokens"], 9);
        assert_eq!(events[8]["usage"]["output_tokens"], 4);
    }
}
