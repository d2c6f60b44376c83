//! Pieces shared by the provider adapters: reading the canonical (OpenAI chat) request field by
//! field, data URLs, and building OpenAI answer, chunk and usage objects.

use serde_json::{Map, Value, json};

use super::dialect::TranslateError;

/// `Unsupported` for `provider`.
pub fn unsupported(provider: &'static str, what: impl Into<String>) -> TranslateError {
    TranslateError::Unsupported {
        provider,
        what: what.into(),
    }
}

pub fn bad(message: impl Into<String>) -> TranslateError {
    TranslateError::BadRequest(message.into())
}

pub fn malformed(provider: &'static str, message: impl Into<String>) -> TranslateError {
    TranslateError::Malformed {
        provider,
        message: message.into(),
    }
}

/// Refuse any request field not in `known`, naming it: an unknown field would otherwise be
/// dropped without the agent knowing.
pub fn only_known(
    req: &Map<String, Value>,
    known: &[&str],
    provider: &'static str,
) -> Result<(), TranslateError> {
    for (k, v) in req {
        if v.is_null() || known.contains(&k.as_str()) {
            continue;
        }
        return Err(unsupported(provider, format!("the request field `{k}`")));
    }
    Ok(())
}

/// `max_completion_tokens` (the newer name) or `max_tokens`.
pub fn max_tokens(req: &Map<String, Value>) -> Result<Option<u64>, TranslateError> {
    for k in ["max_completion_tokens", "max_tokens"] {
        match req.get(k) {
            None | Some(Value::Null) => {}
            Some(v) => {
                return v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("`{k}` must be a positive integer")));
            }
        }
    }
    Ok(None)
}

/// `stop` as a list (OpenAI allows a string or an array).
pub fn stop_list(req: &Map<String, Value>) -> Result<Option<Vec<Value>>, TranslateError> {
    match req.get("stop") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![Value::String(s.clone())])),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(Some(a.clone())),
        Some(_) => Err(bad("`stop` must be a string or an array of strings")),
    }
}

/// A number field, checked.
pub fn number(req: &Map<String, Value>, key: &str) -> Result<Option<f64>, TranslateError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{key}` must be a number"))),
    }
}

/// `n`, which only 1 (or absent) passes where a provider has no choices.
pub fn n(req: &Map<String, Value>) -> Result<u64, TranslateError> {
    match req.get("n") {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad("`n` must be a positive integer")),
    }
}

/// Refuse `logprobs`/`top_logprobs` and non-zero penalties where a provider has none.
pub fn no_sampling_extras(
    req: &Map<String, Value>,
    provider: &'static str,
    penalties: bool,
) -> Result<(), TranslateError> {
    if req.get("logprobs").and_then(Value::as_bool) == Some(true)
        || req.get("top_logprobs").is_some_and(|v| !v.is_null())
    {
        return Err(unsupported(provider, "`logprobs`"));
    }
    if !penalties {
        for k in ["presence_penalty", "frequency_penalty"] {
            if number(req, k)?.is_some_and(|p| p != 0.0) {
                return Err(unsupported(provider, format!("`{k}`")));
            }
        }
    }
    Ok(())
}

/// The messages array of the canonical request.
pub fn messages(req: &Map<String, Value>) -> Result<&Vec<Value>, TranslateError> {
    match req.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => Ok(m),
        _ => Err(bad("`messages` must be a non-empty array")),
    }
}

pub fn role(m: &Value) -> Result<&str, TranslateError> {
    m.get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("every message needs a string `role`"))
}

/// Text of a message that may only hold text (string, or text parts joined).
pub fn plain_text(
    content: Option<&Value>,
    provider: &'static str,
    whose: &str,
) -> Result<String, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if !out.is_empty() {
                            out.push('\n');
                        }
                        out.push_str(p.get("text").and_then(Value::as_str).unwrap_or_default());
                    }
                    other => {
                        return Err(unsupported(
                            provider,
                            format!("`{}` content in {whose} messages", other.unwrap_or("?")),
                        ));
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(bad("message `content` must be a string or an array")),
    }
}

/// A `data:<mime>;base64,<data>` URL split into its media type and data.
pub fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((mime, data))
}

/// A tool call's `arguments` string parsed into the object a provider wants.
pub fn parse_arguments(args: Option<&Value>) -> Result<Value, TranslateError> {
    match args {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(json!({})),
        Some(Value::String(s)) => {
            serde_json::from_str(s).map_err(|_| bad("tool call `arguments` must be a JSON string"))
        }
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(bad("tool call `arguments` must be a JSON string")),
    }
}

/// The function tools of the canonical request: (name, description, parameters).
pub fn function_tools(
    req: &Map<String, Value>,
    provider: &'static str,
) -> Result<Vec<(String, Option<Value>, Value)>, TranslateError> {
    let Some(tools) = req.get("tools").filter(|t| !t.is_null()) else {
        return Ok(Vec::new());
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| bad("`tools` must be an array"))?;
    let mut out = Vec::with_capacity(tools.len());
    for t in tools {
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("function");
        if kind != "function" {
            return Err(unsupported(provider, format!("`{kind}` tools")));
        }
        let f = t
            .get("function")
            .ok_or_else(|| bad("a function tool needs `function`"))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a function tool needs `function.name`"))?;
        if f.get("strict").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported(provider, "`strict` function tools"));
        }
        let params = f
            .get("parameters")
            .filter(|p| !p.is_null())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        out.push((
            name.to_string(),
            f.get("description").filter(|d| !d.is_null()).cloned(),
            params,
        ));
    }
    Ok(out)
}

/// The canonical `tool_choice`, read into one shape.
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

pub fn tool_choice(req: &Map<String, Value>) -> Result<Option<ToolChoice>, TranslateError> {
    match req.get("tool_choice") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(Some(ToolChoice::Auto)),
            "none" => Ok(Some(ToolChoice::None)),
            "required" => Ok(Some(ToolChoice::Required)),
            other => Err(bad(format!("unknown `tool_choice` \"{other}\""))),
        },
        Some(v) => v
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|n| Some(ToolChoice::Named(n.to_string())))
            .ok_or_else(|| bad("`tool_choice` object needs `function.name`")),
    }
}

/// An OpenAI `usage` object. `prompt` includes the cached tokens, as OpenAI counts them.
pub fn usage(prompt: u64, completion: u64, cached: u64) -> Value {
    let mut u = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });
    if cached > 0 {
        u["prompt_tokens_details"] = json!({"cached_tokens": cached});
    }
    u
}

/// An OpenAI tool call (whole, as in a `chat.completion`).
pub fn tool_call(id: &str, name: &str, args: &Value) -> Value {
    json!({
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": args.to_string()},
    })
}

/// An OpenAI `chat.completion.chunk` with one choice.
pub fn chunk(id: &str, model: &str, created: u64, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    })
}

/// The usage-only chunk that ends an OpenAI stream asked to include usage.
pub fn usage_chunk(id: &str, model: &str, created: u64, usage: Value) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    })
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
