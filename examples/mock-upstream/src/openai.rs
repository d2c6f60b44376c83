//! The OpenAI wire format as the mock speaks it: the chat request it reads, the deterministic
//! reply it makes, and the rendering of `chat.completion` objects, `chat.completion.chunk` server-sent
//! events, the model list and `{"error":{...}}` bodies.

use std::borrow::Cow;
use std::collections::VecDeque;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The models `GET /v1/models` lists.
pub const MODELS: &str = r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1700000000,"owned_by":"mock"},{"id":"gpt-4o","object":"model","created":1700000000,"owned_by":"mock"},{"id":"mock-small","object":"model","created":1700000000,"owned_by":"mock"}]}"#;

/// The part of an OpenAI chat request the mock reads; other fields are ignored.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub tools: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// Message content: a string, or a list of parts of which the `text` ones count.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl Message {
    /// The text of the message (text parts joined by a space).
    pub fn text(&self) -> Cow<'_, str> {
        match &self.content {
            None => Cow::Borrowed(""),
            Some(Content::Text(s)) => Cow::Borrowed(s),
            Some(Content::Parts(parts)) => {
                let mut texts = parts
                    .iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text.as_deref());
                match (texts.next(), texts.clone().next()) {
                    (None, _) => Cow::Borrowed(""),
                    (Some(one), None) => Cow::Borrowed(one),
                    (Some(first), Some(_)) => {
                        let mut s = first.to_owned();
                        for t in texts {
                            s.push(' ');
                            s.push_str(t);
                        }
                        Cow::Owned(s)
                    }
                }
            }
        }
    }
}

impl ChatRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// `max_completion_tokens` (the newer name) or `max_tokens`.
    pub fn max_words(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// The text of the last message with role `user` (empty if there is none).
    pub fn last_user_text(&self) -> Cow<'_, str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(Message::text)
            .unwrap_or(Cow::Borrowed(""))
    }

    /// The offered function tools: (name, parameters schema).
    pub fn tools(&self) -> Vec<(String, serde_json::Value)> {
        self.tools
            .iter()
            .flatten()
            .map(|t| {
                (
                    t.pointer("/function/name")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    t.pointer("/function/parameters")
                        .cloned()
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The last message is the user's (not a tool result).
    pub fn user_turn(&self) -> bool {
        self.messages.last().is_some_and(|m| m.role == "user")
    }

    /// Estimated prompt tokens: ceil(chars / 4) over the text of all messages.
    pub fn prompt_tokens(&self) -> u64 {
        let chars: usize = self.messages.iter().map(|m| m.text().chars().count()).sum();
        tokens(chars)
    }
}

/// The mock's token estimate: ceil(chars / 4).
pub fn tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// The deterministic reply.
pub fn reply(model: &str, user_text: &str) -> String {
    format!("Hello from mock-upstream ({model}). You said: {user_text}")
}

/// Cuts `reply` to its first `max_words` words (dropping the whitespace after the last one kept).
/// Returns the text and whether it was cut.
pub fn truncate(reply: &str, max_words: Option<u64>) -> (&str, bool) {
    let Some(max) = max_words else {
        return (reply, false);
    };
    let mut offset = 0usize;
    let mut end = 0usize;
    for (kept, piece) in (0u64..).zip(words(reply)) {
        if kept == max {
            return (&reply[..end], true);
        }
        end = offset + piece.trim_end().len();
        offset += piece.len();
    }
    (reply, false)
}

/// Splits text into word pieces, each word with the whitespace that follows it (leading
/// whitespace goes with the first piece). Concatenating the pieces gives the text back.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut seen_word = false;
        let mut in_space_after_word = false;
        let mut cut = rest.len();
        for (i, c) in rest.char_indices() {
            if c.is_whitespace() {
                if seen_word {
                    in_space_after_word = true;
                }
            } else if in_space_after_word {
                cut = i;
                break;
            } else {
                seen_word = true;
            }
        }
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
}

/// What a completion is made of, for both the whole and the streamed form.
pub struct Answer<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub content: &'a str,
    pub finish_reason: &'static str,
    pub usage: Usage,
}

/// A whole `chat.completion` object.
pub fn completion(a: &Answer<'_>) -> Vec<u8> {
    let body = Completion {
        id: a.id,
        object: "chat.completion",
        created: a.created,
        model: a.model,
        choices: [CompletionChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: a.content,
            },
            logprobs: None,
            finish_reason: a.finish_reason,
        }],
        usage: a.usage,
    };
    to_vec(&body)
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    // Absent unless usage was asked for; then `null` on every chunk but the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

/// The server-sent events of a streamed completion, one frame each: the role chunk, one chunk
/// per word, then (unless `cut_after` is set) the finish chunk, the usage chunk if asked, and
/// `[DONE]`. With `cut_after = Some(n)` only the role chunk and the first `n` word chunks are made.
pub fn stream_frames(
    a: &Answer<'_>,
    include_usage: bool,
    cut_after: Option<u32>,
) -> VecDeque<Bytes> {
    let words: Vec<&str> = words(a.content).collect();
    let mut frames = VecDeque::with_capacity(words.len() + 4);
    let null_usage = include_usage.then_some(None);
    let chunk = |delta: Delta<'_>, finish_reason: Option<&'static str>| {
        let choices = [ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        }];
        sse(&Chunk {
            id: a.id,
            object: "chat.completion.chunk",
            created: a.created,
            model: a.model,
            choices: &choices,
            usage: null_usage,
        })
    };
    frames.push_back(chunk(
        Delta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
    ));
    let take = cut_after.map_or(words.len(), |n| (n as usize).min(words.len()));
    for word in &words[..take] {
        frames.push_back(chunk(
            Delta {
                role: None,
                content: Some(word),
            },
            None,
        ));
    }
    if cut_after.is_some() {
        return frames;
    }
    frames.push_back(chunk(
        Delta {
            role: None,
            content: None,
        },
        Some(a.finish_reason),
    ));
    if include_usage {
        frames.push_back(sse(&Chunk {
            id: a.id,
            object: "chat.completion.chunk",
            created: a.created,
            model: a.model,
            choices: &[],
            usage: Some(Some(a.usage)),
        }));
    }
    frames.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    frames
}

/// A whole `chat.completion` whose answer is tool calls.
pub fn tool_completion(a: &Answer<'_>, calls: &[crate::tools::Call]) -> Vec<u8> {
    let calls: Vec<serde_json::Value> = calls
        .iter()
        .map(|c| {
            serde_json::json!({"id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": c.args.to_string()}})
        })
        .collect();
    serde_json::json!({
        "id": a.id, "object": "chat.completion", "created": a.created, "model": a.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": calls},
                     "logprobs": null, "finish_reason": "tool_calls"}],
        "usage": a.usage,
    })
    .to_string()
    .into_bytes()
}

/// A streamed answer of tool calls: the role chunk, per call a chunk with id and name then two
/// argument deltas, the `tool_calls` finish chunk, usage if asked, `[DONE]`.
pub fn tool_stream_frames(
    a: &Answer<'_>,
    calls: &[crate::tools::Call],
    include_usage: bool,
) -> VecDeque<Bytes> {
    let mut frames = VecDeque::new();
    let usage = if include_usage {
        Some(serde_json::Value::Null)
    } else {
        None
    };
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        let mut c = serde_json::json!({"id": a.id, "object": "chat.completion.chunk",
            "created": a.created, "model": a.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if let Some(u) = &usage {
            c["usage"] = u.clone();
        }
        sse(&c)
    };
    frames.push_back(chunk(
        serde_json::json!({"role": "assistant", "content": null}),
        None,
    ));
    for (i, c) in calls.iter().enumerate() {
        frames.push_back(chunk(
            serde_json::json!({"tool_calls": [{"index": i, "id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": ""}}]}),
            None,
        ));
        let args = c.args.to_string();
        let (x, y) = crate::tools::halves(&args);
        for part in [x, y] {
            frames.push_back(chunk(
                serde_json::json!({"tool_calls": [{"index": i, "function": {"arguments": part}}]}),
                None,
            ));
        }
    }
    frames.push_back(chunk(serde_json::json!({}), Some("tool_calls")));
    if include_usage {
        frames.push_back(sse(
            &serde_json::json!({"id": a.id, "object": "chat.completion.chunk",
            "created": a.created, "model": a.model, "choices": [], "usage": a.usage}),
        ));
    }
    frames.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    frames
}

fn sse<T: Serialize>(value: &T) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"data: ");
    // Serializing these plain structs into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut buf, value);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
}

/// An OpenAI error body: `{"error":{"message":..,"type":..,"code":..}}`.
pub fn error(message: &str, kind: &str, code: &str) -> Vec<u8> {
    to_vec(&ErrorBody {
        error: ErrorDetail {
            message,
            kind,
            code,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_following_space() {
        let w: Vec<_> = words("Hello  from\nmock ").collect();
        assert_eq!(w, ["Hello  ", "from\n", "mock "]);
        assert_eq!(words("").count(), 0);
        let w: Vec<_> = words(" lead x").collect();
        assert_eq!(w, [" lead ", "x"]);
    }

    #[test]
    fn truncate_to_words() {
        assert_eq!(truncate("a b c", None), ("a b c", false));
        assert_eq!(truncate("a b c", Some(3)), ("a b c", false));
        assert_eq!(truncate("a b c", Some(5)), ("a b c", false));
        assert_eq!(truncate("a  b c", Some(1)), ("a", true));
        assert_eq!(truncate("a b c", Some(2)), ("a b", true));
        assert_eq!(truncate("a b c", Some(0)), ("", true));
    }

    #[test]
    fn models_is_json() {
        let v: serde_json::Value = serde_json::from_str(MODELS).unwrap();
        assert_eq!(v["data"][0]["id"], "gpt-4o-mini");
    }

    #[test]
    fn parts_text() {
        let req: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(req.last_user_text(), "a b");
        assert_eq!(req.prompt_tokens(), 1);
    }
}
