//! The Anthropic Messages adapter: canonical OpenAI chat request → `POST /v1/messages` body, and
//! Anthropic messages and stream events → OpenAI `chat.completion` / chunks.
//!
//! Mapping notes: system (and developer) messages become the top-level `system` blocks; tool
//! results become `tool_result` blocks in a user turn (consecutive ones merged); `max_tokens`,
//! which Anthropic requires, defaults to [`DEFAULT_MAX_TOKENS`]. Usage: Anthropic's
//! `input_tokens` excludes cache reads and writes, OpenAI's `prompt_tokens` includes them, so
//! `prompt_tokens = input + cache_read + cache_creation` and `cached_tokens = cache_read`.

use serde_json::{Map, Value, json};

use super::dialect::{StreamDecoder, TranslateError};
use super::translate::{self as t, ToolChoice};

const P: &str = "anthropic";

/// The `anthropic-version` header value sent with every request.
pub const VERSION: &str = "2023-06-01";

/// `max_tokens` sent when the agent set none (Anthropic requires one); the same number the
/// gateway reserves budget for (`call::request::DEFAULT_MAX_OUTPUT_TOKENS`).
pub const DEFAULT_MAX_TOKENS: u64 = crate::core::settings::DEFAULT_MAX_OUTPUT_TOKENS as u64;

/// Canonical fields this adapter translates; any other non-null field is refused.
const KNOWN: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "n",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
];

/// The Messages API request body for a canonical request.
pub fn encode(req: &Map<String, Value>, model: &str) -> Result<Value, TranslateError> {
    t::only_known(req, KNOWN, P)?;
    if t::n(req)? > 1 {
        return Err(t::unsupported(P, "`n` greater than 1"));
    }
    t::no_sampling_extras(req, P, false)?;
    if let Some(rf) = req.get("response_format").filter(|v| !v.is_null())
        && rf.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(t::unsupported(P, "`response_format` other than text"));
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let (system, messages) = encode_messages(t::messages(req)?)?;
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(messages));
    out.insert(
        "max_tokens".into(),
        json!(t::max_tokens(req)?.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if let Some(temp) = t::number(req, "temperature")? {
        if !(0.0..=1.0).contains(&temp) {
            return Err(t::unsupported(P, "`temperature` outside 0..1"));
        }
        out.insert("temperature".into(), json!(temp));
    }
    if let Some(p) = t::number(req, "top_p")? {
        out.insert("top_p".into(), json!(p));
    }
    if let Some(stop) = t::stop_list(req)? {
        out.insert("stop_sequences".into(), Value::Array(stop));
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    let tools = t::function_tools(req, P)?;
    if !tools.is_empty() {
        let tools = tools
            .into_iter()
            .map(|(name, desc, params)| {
                let mut tool = json!({"name": name, "input_schema": params});
                if let Some(d) = desc {
                    tool["description"] = d;
                }
                tool
            })
            .collect();
        out.insert("tools".into(), Value::Array(tools));
    }
    let no_parallel = req.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false);
    let choice = match t::tool_choice(req)? {
        None if no_parallel => Some(json!({"type": "auto"})),
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
        Some(ToolChoice::None) => Some(json!({"type": "none"})),
        Some(ToolChoice::Required) => Some(json!({"type": "any"})),
        Some(ToolChoice::Named(n)) => Some(json!({"type": "tool", "name": n})),
    };
    if let Some(mut c) = choice {
        if no_parallel && c["type"] != "none" {
            c["disable_parallel_tool_use"] = json!(true);
        }
        out.insert("tool_choice".into(), c);
    }
    Ok(Value::Object(out))
}

/// Canonical messages → (system blocks, Anthropic messages).
fn encode_messages(msgs: &[Value]) -> Result<(Vec<Value>, Vec<Value>), TranslateError> {
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for m in msgs {
        if m.get("name").is_some_and(|n| !n.is_null()) {
            return Err(t::unsupported(P, "message `name`"));
        }
        let (role, blocks) = match t::role(m)? {
            "system" | "developer" => {
                let text = t::plain_text(m.get("content"), P, "system")?;
                system.push(json!({"type": "text", "text": text}));
                continue;
            }
            "user" => ("user", user_blocks(m.get("content"))?),
            "assistant" => ("assistant", assistant_blocks(m)?),
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| t::bad("a tool message needs `tool_call_id`"))?;
                let text = t::plain_text(m.get("content"), P, "tool")?;
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": text})],
                )
            }
            other => return Err(t::unsupported(P, format!("`{other}` messages"))),
        };
        if blocks.is_empty() {
            continue;
        }
        // Anthropic wants turns to alternate: merge a turn into the previous one of its role.
        match out.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(a) = last["content"].as_array_mut() {
                    a.extend(blocks);
                }
            }
            _ => out.push(json!({"role": role, "content": blocks})),
        }
    }
    Ok((system, out))
}

fn user_blocks(content: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({"type": "text", "text": s})]),
        Some(Value::Array(parts)) => parts.iter().map(user_part).collect(),
        Some(_) => Err(t::bad("message `content` must be a string or an array")),
    }
}

fn user_part(p: &Value) -> Result<Value, TranslateError> {
    match p.get("type").and_then(Value::as_str) {
        Some("text") => {
            Ok(json!({"type": "text", "text": p.get("text").cloned().unwrap_or(json!(""))}))
        }
        Some("image_url") => {
            let url = p
                .pointer("/image_url/url")
                .and_then(Value::as_str)
                .ok_or_else(|| t::bad("an `image_url` part needs `image_url.url`"))?;
            let source = match t::data_url(url) {
                Some((mime, data)) => json!({"type": "base64", "media_type": mime, "data": data}),
                None if url.starts_with("https://") || url.starts_with("http://") => {
                    json!({"type": "url", "url": url})
                }
                None => return Err(t::bad("an image URL must be http(s) or a base64 data URL")),
            };
            Ok(json!({"type": "image", "source": source}))
        }
        other => Err(t::unsupported(
            P,
            format!("`{}` content parts", other.unwrap_or("?")),
        )),
    }
}

fn assistant_blocks(m: &Value) -> Result<Vec<Value>, TranslateError> {
    let mut blocks = Vec::new();
    let text = t::plain_text(m.get("content"), P, "assistant")?;
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
        for c in calls {
            let id = c
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| t::bad("a tool call needs `id`"))?;
            let name = c
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| t::bad("a tool call needs `function.name`"))?;
            let input = t::parse_arguments(c.pointer("/function/arguments"))?;
            blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    Ok(blocks)
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Counts from an Anthropic `usage` object: (prompt incl. cache, output, cache reads).
fn counts(u: &Value) -> (u64, u64, u64) {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let read = n("cache_read_input_tokens");
    (
        n("input_tokens") + read + n("cache_creation_input_tokens"),
        n("output_tokens"),
        read,
    )
}

/// An Anthropic message → an OpenAI `chat.completion`.
pub fn decode(body: &[u8]) -> Result<Value, TranslateError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| t::malformed(P, e.to_string()))?;
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| t::malformed(P, "no `content` array"))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                text.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default())
            }
            Some("tool_use") => calls.push(t::tool_call(
                b.get("id").and_then(Value::as_str).unwrap_or_default(),
                b.get("name").and_then(Value::as_str).unwrap_or_default(),
                b.get("input").unwrap_or(&json!({})),
            )),
            // Thinking is never asked for (no canonical field maps to it).
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let (prompt, output, cached) = counts(v.get("usage").unwrap_or(&Value::Null));
    let stop = v
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    Ok(json!({
        "id": v.get("id").cloned().unwrap_or(json!("msg")),
        "object": "chat.completion",
        "created": t::now_secs(),
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(stop)}],
        "usage": t::usage(prompt, output, cached),
    }))
}

/// The human message of an Anthropic error body (`{"type":"error","error":{...}}`).
pub fn error_message(v: &Value) -> Option<String> {
    v.pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Anthropic stream events → OpenAI chunks.
pub struct Stream {
    id: String,
    model: String,
    created: u64,
    /// Usage from `message_start` (input side), completed by `message_delta`.
    usage: Value,
    /// Anthropic content block index → OpenAI tool call index, for tool blocks.
    tools: Vec<(u64, u64)>,
    done: bool,
}

impl Stream {
    pub fn new(model: &str) -> Stream {
        Stream {
            id: String::new(),
            model: model.to_string(),
            created: t::now_secs(),
            usage: json!({}),
            tools: Vec::new(),
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        t::chunk(&self.id, &self.model, self.created, delta, finish)
    }

    fn tool_index(&self, block: u64) -> Option<u64> {
        self.tools
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, i)| *i)
    }
}

impl StreamDecoder for Stream {
    fn event(&mut self, data: &str) -> Result<Vec<Value>, TranslateError> {
        let v: Value = serde_json::from_str(data)
            .map_err(|e| t::malformed(P, format!("bad stream event: {e}")))?;
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        let block = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        Ok(match kind {
            "message_start" => {
                let m = v.get("message").unwrap_or(&Value::Null);
                if let Some(id) = m.get("id").and_then(Value::as_str) {
                    self.id = id.to_string();
                }
                if let Some(model) = m.get("model").and_then(Value::as_str) {
                    self.model = model.to_string();
                }
                if let Some(u) = m.get("usage").and_then(Value::as_object) {
                    self.usage = Value::Object(u.clone());
                }
                vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
            }
            "content_block_start" => {
                let b = v.get("content_block").unwrap_or(&Value::Null);
                match b.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let index = self.tools.len() as u64;
                        self.tools.push((block, index));
                        vec![self.chunk(
                            json!({"tool_calls": [{
                                "index": index,
                                "id": b.get("id").cloned().unwrap_or(Value::Null),
                                "type": "function",
                                "function": {"name": b.get("name").cloned().unwrap_or(Value::Null), "arguments": ""},
                            }]}),
                            None,
                        )]
                    }
                    Some("text") => match b.get("text").and_then(Value::as_str) {
                        Some(s) if !s.is_empty() => vec![self.chunk(json!({"content": s}), None)],
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                }
            }
            "content_block_delta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = d.get("text").cloned().unwrap_or(json!(""));
                        vec![self.chunk(json!({"content": text}), None)]
                    }
                    Some("input_json_delta") => {
                        let Some(index) = self.tool_index(block) else {
                            return Err(t::malformed(
                                P,
                                "input_json_delta outside a tool_use block",
                            ));
                        };
                        let part = d.get("partial_json").cloned().unwrap_or(json!(""));
                        vec![self.chunk(
                            json!({"tool_calls": [{"index": index, "function": {"arguments": part}}]}),
                            None,
                        )]
                    }
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                if let (Some(u), Some(acc)) = (
                    v.get("usage").and_then(Value::as_object),
                    self.usage.as_object_mut(),
                ) {
                    for (k, x) in u {
                        if !x.is_null() {
                            acc.insert(k.clone(), x.clone());
                        }
                    }
                }
                match v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    Some(stop) => vec![self.chunk(json!({}), Some(finish_reason(stop)))],
                    None => Vec::new(),
                }
            }
            "message_stop" => {
                self.done = true;
                let (prompt, output, cached) = counts(&self.usage);
                vec![t::usage_chunk(
                    &self.id,
                    &self.model,
                    self.created,
                    t::usage(prompt, output, cached),
                )]
            }
            // An error event: passed on in OpenAI's error shape, which the relay treats as a
            // failed upstream.
            "error" => {
                let message = error_message(&v).unwrap_or_else(|| "error event".into());
                vec![
                    json!({"error": {"message": message, "type": v.pointer("/error/type").cloned().unwrap_or(json!("api_error"))}}),
                ]
            }
            _ => Vec::new(),
        })
    }

    fn finished(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn request_maps_system_images_tools_results_and_sampling() {
        let r = req(json!({
            "model": "smart",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image, and the weather in Paris?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
                {"role": "user", "content": "thanks"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "temperature": 0.2, "top_p": 0.9, "stop": "END", "max_tokens": 100, "stream": true
        }));
        let a = encode(&r, "claude-sonnet-4-5").unwrap();
        assert_eq!(a["model"], "claude-sonnet-4-5");
        assert_eq!(a["system"], json!([{"type": "text", "text": "Be terse."}]));
        assert_eq!(a["max_tokens"], 100);
        assert_eq!(a["stop_sequences"], json!(["END"]));
        assert_eq!(a["stream"], true);
        assert_eq!(
            a["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            a["tools"][0]["input_schema"]["properties"]["city"]["type"],
            "string"
        );
        let m = a["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(
            m[0]["content"][1],
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
        );
        assert_eq!(m[1]["role"], "assistant");
        assert_eq!(
            m[1]["content"][0],
            json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}})
        );
        // Both results and the follow-up text share one user turn, results first.
        assert_eq!(m[2]["role"], "user");
        assert_eq!(m[2]["content"][0]["tool_use_id"], "call_1");
        assert_eq!(m[2]["content"][1]["tool_use_id"], "call_2");
        assert_eq!(m[2]["content"][2]["text"], "thanks");
    }

    #[test]
    fn max_tokens_defaults_and_unexpressible_fields_are_refused() {
        let a = encode(
            &req(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})),
            "c",
        )
        .unwrap();
        assert_eq!(a["max_tokens"], DEFAULT_MAX_TOKENS);
        for extra in [
            json!({"n": 2}),
            json!({"logprobs": true}),
            json!({"presence_penalty": 0.5}),
            json!({"temperature": 1.5}),
            json!({"response_format": {"type": "json_object"}}),
            json!({"seed": 3}),
            json!({"tools": [{"type": "web_search"}]}),
        ] {
            let mut r = req(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
            r.extend(extra.as_object().unwrap().clone());
            let e = encode(&r, "c").unwrap_err();
            assert!(
                matches!(e, TranslateError::Unsupported { .. }),
                "{extra}: {e}"
            );
        }
        let bad = req(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
        );
        assert!(
            encode(&bad, "c")
                .unwrap_err()
                .to_string()
                .contains("input_audio")
        );
    }

    #[test]
    fn response_with_text_tool_use_and_cache_usage() {
        // Shape from the Messages API reference.
        let body = br#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant",
          "content":[{"type":"text","text":"Let me check."},
                     {"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"get_weather","input":{"city":"Paris"}}],
          "model":"claude-sonnet-4-5","stop_reason":"tool_use","stop_sequence":null,
          "usage":{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":100,"output_tokens":20}}"#;
        let o = decode(body).unwrap();
        assert_eq!(o["object"], "chat.completion");
        assert_eq!(o["choices"][0]["finish_reason"], "tool_calls");
        let m = &o["choices"][0]["message"];
        assert_eq!(m["content"], "Let me check.");
        assert_eq!(m["tool_calls"][0]["id"], "toolu_01A09q90qw90lq917835lq9");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(o["usage"]["prompt_tokens"], 115);
        assert_eq!(o["usage"]["completion_tokens"], 20);
        assert_eq!(o["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("max_tokens", "length"),
            ("stop_sequence", "stop"),
            ("refusal", "content_filter"),
        ] {
            assert_eq!(finish_reason(stop), finish);
        }
        assert!(decode(b"{\"type\":\"message\"}").is_err());
    }

    #[test]
    fn stream_events_become_chunks_with_tool_deltas_and_usage() {
        // The event sequence documented under "Streaming Messages" (tool use example).
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-5","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2,"cache_read_input_tokens":8},"content":[],"stop_reason":null}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"SF\"}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let mut d = Stream::new("alias");
        let mut chunks = Vec::new();
        for e in events {
            assert!(!d.finished());
            chunks.extend(d.event(e).unwrap());
        }
        assert!(d.finished());
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[0]["model"], "claude-sonnet-4-5");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Okay");
        let tc = &chunks[2]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            (tc["index"].as_u64(), tc["id"].as_str()),
            (Some(0), Some("toolu_01T1x1fJ34qAmk2tNTrN7Up6"))
        );
        let args: String = chunks[3..5]
            .iter()
            .map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(args, r#"{"location": "SF"}"#);
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
        let u = &chunks[6]["usage"];
        assert_eq!(
            (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64()),
            (Some(480), Some(89))
        );
        assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 8);
    }

    #[test]
    fn stream_error_event_is_an_openai_error() {
        let mut d = Stream::new("m");
        let out = d
            .event(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
            .unwrap();
        assert_eq!(out[0]["error"]["message"], "Overloaded");
        assert!(!d.finished());
        assert!(d.event("not json").is_err());
    }
}
