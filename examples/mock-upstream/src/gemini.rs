//! The Gemini face (`POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`): reads `contents`, `systemInstruction`, `tools`
//! (`functionDeclarations`) and `generationConfig.maxOutputTokens`, and answers with the same
//! deterministic echo as the other faces: a `GenerateContentResponse`, or a stream of them (one
//! per word; the last carries `finishReason` and the totals in `usageMetadata`). Tool calls are
//! whole `functionCall` parts, as Gemini sends them.

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::openai::{tokens, words};
use crate::tools::Call;

/// What the mock reads from a Gemini request.
pub struct Ask {
    pub max_tokens: Option<u64>,
    pub user_text: String,
    pub user_turn: bool,
    pub tools: Vec<(String, Value)>,
    pub prompt_chars: usize,
}

fn parts_text(c: &Value) -> String {
    c["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["text"].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `model` and `stream` from a path like `/v1beta/models/gemini-2.5-flash:streamGenerateContent`.
pub fn route(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix("/v1beta/models/")?;
    let (model, method) = rest.rsplit_once(':')?;
    match method {
        "generateContent" => Some((model, false)),
        "streamGenerateContent" => Some((model, true)),
        _ => None,
    }
}

pub fn parse(body: &[u8]) -> Result<Ask, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid JSON payload: {e}"))?;
    let contents = v["contents"]
        .as_array()
        .filter(|c| !c.is_empty())
        .ok_or("* GenerateContentRequest.contents: contents is not specified")?;
    let last_user = contents
        .iter()
        .rev()
        .find(|c| c["role"] == "user" || c["role"].is_null());
    let user_text = last_user.map(parts_text).unwrap_or_default();
    let user_turn = contents.last().is_some_and(|c| {
        c["role"] != "model"
            && !c["parts"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p.get("functionResponse").is_some()))
    });
    let tools = v["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| {
            t["functionDeclarations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|d| {
            (
                d["name"].as_str().unwrap_or_default().to_string(),
                d["parameters"].clone(),
            )
        })
        .collect();
    let mut prompt_chars = parts_text(&v["systemInstruction"]).chars().count();
    for c in contents {
        prompt_chars += parts_text(c).chars().count();
    }
    Ok(Ask {
        max_tokens: v
            .pointer("/generationConfig/maxOutputTokens")
            .and_then(Value::as_u64),
        user_text,
        user_turn,
        tools,
        prompt_chars,
    })
}

pub struct Answer<'a> {
    pub id: &'a str,
    pub model: &'a str,
    pub text: &'a str,
    pub calls: &'a [Call],
    pub truncated: bool,
    pub prompt_tokens: u64,
}

impl Answer<'_> {
    fn usage(&self) -> Value {
        let out = tokens(self.text.chars().count())
            + self
                .calls
                .iter()
                .map(|c| tokens(c.args.to_string().len()))
                .sum::<u64>();
        json!({"promptTokenCount": self.prompt_tokens, "candidatesTokenCount": out,
               "totalTokenCount": self.prompt_tokens + out})
    }

    fn finish(&self) -> &'static str {
        if self.truncated { "MAX_TOKENS" } else { "STOP" }
    }

    fn chunk(&self, parts: Vec<Value>, last: bool) -> Value {
        let mut cand = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        let mut v = json!({"candidates": [], "modelVersion": self.model, "responseId": self.id});
        if last {
            cand["finishReason"] = json!(self.finish());
            v["usageMetadata"] = self.usage();
        } else {
            v["usageMetadata"] = json!({"promptTokenCount": self.prompt_tokens, "totalTokenCount": self.prompt_tokens});
        }
        v["candidates"] = json!([cand]);
        v
    }

    fn call_parts(&self) -> Vec<Value> {
        self.calls
            .iter()
            .map(|c| json!({"functionCall": {"name": c.name, "args": c.args}}))
            .collect()
    }
}

/// A whole `GenerateContentResponse`.
pub fn response(a: &Answer<'_>) -> Vec<u8> {
    let mut parts = Vec::new();
    if a.calls.is_empty() || !a.text.is_empty() {
        parts.push(json!({"text": a.text}));
    }
    parts.extend(a.call_parts());
    a.chunk(parts, true).to_string().into_bytes()
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\r\n\r\n"))
}

/// The streamed chunks; with `cut_after = Some(n)` only the first `n` word chunks.
pub fn stream_frames(a: &Answer<'_>, cut_after: Option<u32>) -> VecDeque<Bytes> {
    let mut f = VecDeque::new();
    let words: Vec<&str> = if a.calls.is_empty() {
        words(a.text).collect()
    } else {
        Vec::new()
    };
    let take = cut_after.map_or(words.len(), |n| (n as usize).min(words.len()));
    for w in &words[..take] {
        f.push_back(sse(&a.chunk(vec![json!({"text": w})], false)));
    }
    if cut_after.is_some() {
        return f;
    }
    // The finishing chunk carries the tool calls, or an empty text part.
    let last = if a.calls.is_empty() {
        vec![json!({"text": ""})]
    } else {
        a.call_parts()
    };
    f.push_back(sse(&a.chunk(last, true)));
    f
}

/// A Gemini error body (`{"error":{"code","message","status"}}`).
pub fn error(status: u16, message: &str) -> Vec<u8> {
    let name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    };
    json!({"error": {"code": status, "message": message, "status": name}})
        .to_string()
        .into_bytes()
}
