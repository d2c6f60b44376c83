//! The Google Gemini adapter: canonical OpenAI chat request → `generateContent` /
//! `streamGenerateContent?alt=sse` body, and Gemini responses (whole or streamed) → OpenAI
//! `chat.completion` / chunks.
//!
//! Mapping notes: system messages become `systemInstruction`; `assistant` is role `model`; tool
//! results are `functionResponse` parts, named from the earlier call with the same id (Gemini
//! matches results by name); call ids go out as `functionCall.id` and come back from it, or are
//! made up (`call_<n>`) when Gemini sends none. A Gemini stream has no end event: it is finished
//! once a candidate carries a `finishReason`. Usage: `promptTokenCount` already includes
//! `cachedContentTokenCount`; thinking tokens (`thoughtsTokenCount`) are billed as output, so
//! they count in `completion_tokens`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::dialect::{StreamDecoder, TranslateError};
use super::translate::{self as t, ToolChoice};

const P: &str = "gemini";

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
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "response_format",
];

/// The path for `model`, streamed or not.
pub fn path(model: &str, stream: bool) -> String {
    if stream {
        format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("/v1beta/models/{model}:generateContent")
    }
}

/// The `generateContent` body for a canonical request.
pub fn encode(req: &Map<String, Value>) -> Result<Value, TranslateError> {
    t::only_known(req, KNOWN, P)?;
    t::no_sampling_extras(req, P, true)?;
    if req.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false) {
        return Err(t::unsupported(P, "`parallel_tool_calls: false`"));
    }
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    let n = t::n(req)?;
    if n > 1 && stream {
        return Err(t::unsupported(P, "`n` greater than 1 when streaming"));
    }
    let mut out = Map::new();
    let (system, contents) = encode_messages(t::messages(req)?)?;
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    out.insert("contents".into(), Value::Array(contents));
    let mut config = Map::new();
    if let Some(m) = t::max_tokens(req)? {
        config.insert("maxOutputTokens".into(), json!(m));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(x) = t::number(req, from)? {
            config.insert(to.into(), json!(x));
        }
    }
    if let Some(seed) = req.get("seed").filter(|s| !s.is_null()) {
        config.insert("seed".into(), seed.clone());
    }
    if let Some(stop) = t::stop_list(req)? {
        config.insert("stopSequences".into(), Value::Array(stop));
    }
    if n > 1 {
        config.insert("candidateCount".into(), json!(n));
    }
    if let Some(rf) = req.get("response_format").filter(|v| !v.is_null()) {
        match rf.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            _ => return Err(t::unsupported(P, "`response_format` json_schema")),
        }
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    let tools = t::function_tools(req, P)?;
    if !tools.is_empty() {
        let decls: Vec<Value> = tools
            .into_iter()
            .map(|(name, desc, params)| {
                let mut d = json!({"name": name, "parameters": params});
                if let Some(desc) = desc {
                    d["description"] = desc;
                }
                d
            })
            .collect();
        out.insert("tools".into(), json!([{"functionDeclarations": decls}]));
    }
    if let Some(choice) = t::tool_choice(req)? {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Named(n) => json!({"mode": "ANY", "allowedFunctionNames": [n]}),
        };
        out.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": config}),
        );
    }
    Ok(Value::Object(out))
}

fn encode_messages(msgs: &[Value]) -> Result<(Vec<Value>, Vec<Value>), TranslateError> {
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Tool call id → function name, for the results that answer them.
    let mut names: HashMap<String, String> = HashMap::new();
    for m in msgs {
        if m.get("name").is_some_and(|n| !n.is_null()) {
            return Err(t::unsupported(P, "message `name`"));
        }
        let (role, parts) = match t::role(m)? {
            "system" | "developer" => {
                system.push(json!({"text": t::plain_text(m.get("content"), P, "system")?}));
                continue;
            }
            "user" => ("user", user_parts(m.get("content"))?),
            "assistant" => {
                let mut parts = Vec::new();
                let text = t::plain_text(m.get("content"), P, "assistant")?;
                if !text.is_empty() {
                    parts.push(json!({"text": text}));
                }
                for c in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let name = c
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| t::bad("a tool call needs `function.name`"))?;
                    let args = t::parse_arguments(c.pointer("/function/arguments"))?;
                    let mut call = json!({"name": name, "args": args});
                    if let Some(id) = c.get("id").and_then(Value::as_str) {
                        names.insert(id.to_string(), name.to_string());
                        call["id"] = json!(id);
                    }
                    parts.push(json!({"functionCall": call}));
                }
                ("model", parts)
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| t::bad("a tool message needs `tool_call_id`"))?;
                let name = names.get(id).ok_or_else(|| {
                    t::bad(format!("tool result `{id}` answers no earlier tool call"))
                })?;
                let text = t::plain_text(m.get("content"), P, "tool")?;
                // Gemini wants an object: JSON objects pass as they are, anything else is
                // wrapped.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"content": text}),
                };
                (
                    "user",
                    vec![
                        json!({"functionResponse": {"id": id, "name": name, "response": response}}),
                    ],
                )
            }
            other => return Err(t::unsupported(P, format!("`{other}` messages"))),
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(a) = last["parts"].as_array_mut() {
                    a.extend(parts);
                }
            }
            _ => contents.push(json!({"role": role, "parts": parts})),
        }
    }
    Ok((system, contents))
}

fn user_parts(content: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({"text": s})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"text": p.get("text").cloned().unwrap_or(json!(""))})),
                Some("image_url") => {
                    let url = p
                        .pointer("/image_url/url")
                        .and_then(Value::as_str)
                        .ok_or_else(|| t::bad("an `image_url` part needs `image_url.url`"))?;
                    let (mime, data) = t::data_url(url).ok_or_else(|| {
                        t::unsupported(P, "image URLs other than base64 data URLs")
                    })?;
                    Ok(json!({"inlineData": {"mimeType": mime, "data": data}}))
                }
                other => Err(t::unsupported(
                    P,
                    format!("`{}` content parts", other.unwrap_or("?")),
                )),
            })
            .collect(),
        Some(_) => Err(t::bad("message `content` must be a string or an array")),
    }
}

/// Gemini `finishReason` → OpenAI `finish_reason` (`tool_calls` where the turn called tools).
pub fn finish_reason(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if called_tools => "tool_calls",
        _ => "stop",
    }
}

fn usage(v: &Value) -> Value {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    t::usage(
        n("promptTokenCount"),
        n("candidatesTokenCount") + n("thoughtsTokenCount"),
        n("cachedContentTokenCount"),
    )
}

/// The text and tool calls of a candidate's parts; `calls` numbers made-up ids.
fn read_parts(parts: &[Value], calls: &mut usize) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut tools = Vec::new();
    for p in parts {
        // Thought summaries are never asked for; skip them if a model sends them anyway.
        if p.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(s) = p.get("text").and_then(Value::as_str) {
            text.push_str(s);
        }
        if let Some(fc) = p.get("functionCall") {
            let id = fc
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("call_{calls}"), str::to_string);
            *calls += 1;
            tools.push(t::tool_call(
                &id,
                fc.get("name").and_then(Value::as_str).unwrap_or_default(),
                fc.get("args").unwrap_or(&json!({})),
            ));
        }
    }
    (text, tools)
}

fn parts_of(c: &Value) -> &[Value] {
    c.pointer("/content/parts")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A `generateContent` response → an OpenAI `chat.completion`.
pub fn decode(body: &[u8], model: &str) -> Result<Value, TranslateError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| t::malformed(P, e.to_string()))?;
    let candidates = v.get("candidates").and_then(Value::as_array);
    let mut choices = Vec::new();
    let mut calls = 0;
    for (i, c) in candidates.into_iter().flatten().enumerate() {
        let (text, tools) = read_parts(parts_of(c), &mut calls);
        let reason = c
            .get("finishReason")
            .and_then(Value::as_str)
            .unwrap_or("STOP");
        let mut message = json!({"role": "assistant", "content": if text.is_empty() && !tools.is_empty() { Value::Null } else { json!(text) }});
        let finish = finish_reason(reason, !tools.is_empty());
        if !tools.is_empty() {
            message["tool_calls"] = Value::Array(tools);
        }
        choices.push(json!({
            "index": c.get("index").and_then(Value::as_u64).unwrap_or(i as u64),
            "message": message, "logprobs": null, "finish_reason": finish,
        }));
    }
    if choices.is_empty() {
        // A prompt blocked by safety has no candidates, only `promptFeedback.blockReason`.
        if v.pointer("/promptFeedback/blockReason").is_none() {
            return Err(t::malformed(P, "no candidates"));
        }
        choices.push(json!({"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": "content_filter"}));
    }
    Ok(json!({
        "id": v.get("responseId").cloned().unwrap_or(json!("gemini")),
        "object": "chat.completion",
        "created": t::now_secs(),
        "model": v.get("modelVersion").and_then(Value::as_str).unwrap_or(model),
        "choices": choices,
        "usage": usage(v.get("usageMetadata").unwrap_or(&Value::Null)),
    }))
}

/// The human message of a Gemini error body (`{"error":{"code","message","status"}}`, sometimes
/// wrapped in an array).
pub fn error_message(v: &Value) -> Option<String> {
    let v = v.as_array().and_then(|a| a.first()).unwrap_or(v);
    v.pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Gemini stream chunks (each a whole `GenerateContentResponse`) → OpenAI chunks.
pub struct Stream {
    id: String,
    model: String,
    created: u64,
    started: bool,
    calls: usize,
    done: bool,
}

impl Stream {
    pub fn new(model: &str) -> Stream {
        Stream {
            id: String::new(),
            model: model.to_string(),
            created: t::now_secs(),
            started: false,
            calls: 0,
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        t::chunk(&self.id, &self.model, self.created, delta, finish)
    }
}

impl StreamDecoder for Stream {
    fn event(&mut self, data: &str) -> Result<Vec<Value>, TranslateError> {
        let v: Value = serde_json::from_str(data)
            .map_err(|e| t::malformed(P, format!("bad stream chunk: {e}")))?;
        if let Some(message) = error_message(&v) {
            return Ok(vec![
                json!({"error": {"message": message, "type": "api_error"}}),
            ]);
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            if let Some(id) = v.get("responseId").and_then(Value::as_str) {
                self.id = id.to_string();
            }
            if let Some(m) = v.get("modelVersion").and_then(Value::as_str) {
                self.model = m.to_string();
            }
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
        let c = v.pointer("/candidates/0").unwrap_or(&Value::Null);
        let first_call = self.calls;
        let (text, tools) = read_parts(parts_of(c), &mut self.calls);
        if !text.is_empty() {
            out.push(self.chunk(json!({"content": text}), None));
        }
        if !tools.is_empty() {
            // Gemini sends each call whole: one delta carries id, name and all arguments.
            let deltas: Vec<Value> = tools
                .into_iter()
                .enumerate()
                .map(|(i, mut call)| {
                    call["index"] = json!(first_call + i);
                    call
                })
                .collect();
            out.push(self.chunk(json!({"tool_calls": deltas}), None));
        }
        let blocked = v.pointer("/promptFeedback/blockReason").is_some() && c.is_null();
        let reason = c.get("finishReason").and_then(Value::as_str);
        if reason.is_some() || blocked {
            let finish = if blocked {
                "content_filter"
            } else {
                finish_reason(reason.unwrap_or("STOP"), self.calls > 0)
            };
            out.push(self.chunk(json!({}), Some(finish)));
            // Usage is cumulative on every chunk; the finishing one holds the totals.
            out.push(t::usage_chunk(
                &self.id,
                &self.model,
                self.created,
                usage(v.get("usageMetadata").unwrap_or(&Value::Null)),
            ));
            self.done = true;
        }
        Ok(out)
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
    fn request_maps_system_images_tools_results_and_config() {
        let r = req(json!({
            "model": "smart",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
                ]},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\":18}"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "temperature": 1.5, "top_p": 0.5, "stop": ["X"], "max_completion_tokens": 64, "seed": 7
        }));
        let g = encode(&r).unwrap();
        assert_eq!(
            g["systemInstruction"],
            json!({"parts": [{"text": "Be terse."}]})
        );
        let c = g["contents"].as_array().unwrap();
        assert_eq!(
            c[0]["parts"][1],
            json!({"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}})
        );
        assert_eq!(c[1]["role"], "model");
        assert_eq!(
            c[1]["parts"][0]["functionCall"],
            json!({"name": "get_weather", "args": {"city": "Paris"}, "id": "call_a"})
        );
        assert_eq!(
            c[2]["parts"][0]["functionResponse"],
            json!({"id": "call_a", "name": "get_weather", "response": {"temp": 18}})
        );
        let gc = &g["generationConfig"];
        assert_eq!(
            (gc["maxOutputTokens"].as_u64(), gc["seed"].as_u64()),
            (Some(64), Some(7))
        );
        assert_eq!(gc["temperature"], 1.5);
        assert_eq!(gc["topP"], 0.5);
        assert_eq!(gc["stopSequences"], json!(["X"]));
        assert_eq!(
            g["tools"][0]["functionDeclarations"][0]["name"],
            "get_weather"
        );
        assert_eq!(
            g["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
        assert_eq!(
            path("gemini-2.5-flash", true),
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            path("gemini-2.5-flash", false),
            "/v1beta/models/gemini-2.5-flash:generateContent"
        );
    }

    #[test]
    fn unexpressible_requests_are_refused() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for extra in [
            json!({"logprobs": true}),
            json!({"user": "u"}),
            json!({"parallel_tool_calls": false}),
            json!({"n": 2, "stream": true}),
            json!({"response_format": {"type": "json_schema", "json_schema": {}}}),
        ] {
            let mut r = req(base.clone());
            r.extend(extra.as_object().unwrap().clone());
            assert!(
                matches!(encode(&r), Err(TranslateError::Unsupported { .. })),
                "{extra}"
            );
        }
        let http_image = req(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
        );
        assert!(matches!(
            encode(&http_image),
            Err(TranslateError::Unsupported { .. })
        ));
        let orphan = req(
            json!({"model": "m", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
        );
        assert!(matches!(
            encode(&orphan),
            Err(TranslateError::BadRequest(_))
        ));
    }

    #[test]
    fn response_with_function_calls_and_cached_usage() {
        // Shape from the generateContent reference (function calling example).
        let body = br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}},
            {"functionCall":{"name":"get_time","args":{}}}],"role":"model"},"finishReason":"STOP","index":0}],
            "usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":12,"totalTokenCount":140,"cachedContentTokenCount":100,"thoughtsTokenCount":8},
            "modelVersion":"gemini-2.5-flash","responseId":"abc123"}"#;
        let o = decode(body, "alias").unwrap();
        assert_eq!(o["model"], "gemini-2.5-flash");
        let ch = &o["choices"][0];
        assert_eq!(ch["finish_reason"], "tool_calls");
        assert_eq!(ch["message"]["content"], Value::Null);
        assert_eq!(ch["message"]["tool_calls"][0]["id"], "call_0");
        assert_eq!(ch["message"]["tool_calls"][1]["id"], "call_1");
        assert_eq!(
            ch["message"]["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(o["usage"]["prompt_tokens"], 120);
        assert_eq!(o["usage"]["completion_tokens"], 20);
        assert_eq!(o["usage"]["prompt_tokens_details"]["cached_tokens"], 100);

        let text = br#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"MAX_TOKENS"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1}}"#;
        let o = decode(text, "gemini-x").unwrap();
        assert_eq!(o["choices"][0]["message"]["content"], "Hi");
        assert_eq!(o["choices"][0]["finish_reason"], "length");
        assert_eq!(o["model"], "gemini-x");
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":3}}"#;
        assert_eq!(
            decode(blocked, "m").unwrap()["choices"][0]["finish_reason"],
            "content_filter"
        );
        let err = br#"[{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}]"#;
        assert_eq!(
            error_message(&serde_json::from_slice(err).unwrap()).as_deref(),
            Some("API key not valid.")
        );
    }

    #[test]
    fn stream_chunks_become_openai_chunks_and_end_on_finish_reason() {
        let events = [
            r#"{"candidates":[{"content":{"parts":[{"text":"The "}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#,
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"id":"fc_9","name":"get_weather","args":{"city":"Paris"}}}],"role":"model"},"index":0}],"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":7,"totalTokenCount":16,"cachedContentTokenCount":4},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#,
        ];
        let mut d = Stream::new("alias");
        let mut chunks = Vec::new();
        for e in events {
            assert!(!d.finished());
            chunks.extend(d.event(e).unwrap());
        }
        assert!(d.finished());
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "The ");
        let tc = &chunks[2]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(tc["id"], "fc_9");
        assert_eq!(tc["index"], 0);
        assert_eq!(tc["function"]["arguments"], r#"{"city":"Paris"}"#);
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[4]["usage"]["completion_tokens"], 7);
        assert_eq!(
            chunks[4]["usage"]["prompt_tokens_details"]["cached_tokens"],
            4
        );
        let mut d = Stream::new("m");
        let e = d
            .event(r#"{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}"#)
            .unwrap();
        assert_eq!(e[0]["error"]["message"], "overloaded");
    }
}
