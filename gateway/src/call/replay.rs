//! Approved calls answered again without running again: a claimed streamed answer is
//! assembled, as the agent received it, into one canonical `chat.completion` ([`Assembler`])
//! and stored like a whole answer; a later identical call gets the stored answer in its own
//! shape: whole, or as a stream of the same content ([`chunks_of`]), in the caller's format.

use serde_json::{Map, Value, json};

/// Most tool calls kept from one streamed answer (a provider's index is not trusted further).
const MAX_TOOL_CALLS: usize = 128;

/// Builds a `chat.completion` from the canonical chunks of a stream.
#[derive(Default)]
pub struct Assembler {
    id: Option<Value>,
    model: Option<Value>,
    created: Option<Value>,
    content: String,
    /// Tool calls by their stream index, arguments concatenated.
    tool_calls: Vec<Value>,
    finish_reason: Option<Value>,
    usage: Option<Value>,
}

impl Assembler {
    /// Take in one chunk (of choice 0; Palisade streams one choice).
    pub fn push(&mut self, chunk: &Value) {
        for (slot, key) in [
            (&mut self.id, "id"),
            (&mut self.model, "model"),
            (&mut self.created, "created"),
        ] {
            if slot.is_none() {
                *slot = chunk.get(key).cloned();
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return;
        };
        if let Some(f) = choice.get("finish_reason").filter(|f| !f.is_null()) {
            self.finish_reason = Some(f.clone());
        }
        let Some(delta) = choice.get("delta") else {
            return;
        };
        if let Some(t) = delta.get("content").and_then(Value::as_str) {
            self.content.push_str(t);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            if index >= MAX_TOOL_CALLS {
                continue;
            }
            while self.tool_calls.len() <= index {
                self.tool_calls.push(json!({"type": "function",
                    "function": {"name": "", "arguments": ""}}));
            }
            let slot = &mut self.tool_calls[index];
            if let Some(id) = call.get("id") {
                slot["id"] = id.clone();
            }
            for key in ["name", "arguments"] {
                if let Some(part) = call
                    .pointer(&format!("/function/{key}"))
                    .and_then(Value::as_str)
                {
                    let so_far = slot["function"][key].as_str().unwrap_or_default();
                    slot["function"][key] = json!(format!("{so_far}{part}"));
                }
            }
        }
    }

    /// The whole answer.
    pub fn completion(&self) -> Value {
        let mut message = json!({"role": "assistant", "content": self.content});
        if !self.tool_calls.is_empty() {
            message["tool_calls"] = json!(self.tool_calls);
            if self.content.is_empty() {
                message["content"] = Value::Null;
            }
        }
        let mut v = json!({
            "id": self.id.clone().unwrap_or(json!("chatcmpl-replay")),
            "object": "chat.completion",
            "created": self.created.clone().unwrap_or(json!(0)),
            "model": self.model.clone().unwrap_or(json!("")),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": self.finish_reason.clone().unwrap_or(json!("stop"))}],
        });
        if let Some(u) = &self.usage {
            v["usage"] = u.clone();
        }
        v
    }
}

/// A whole canonical answer as the chunks of a stream: the message, then the finish reason.
pub fn chunks_of(completion: &Value) -> Vec<Value> {
    let mut base = Map::new();
    for key in ["id", "created", "model"] {
        if let Some(v) = completion.get(key) {
            base.insert(key.into(), v.clone());
        }
    }
    base.insert("object".into(), json!("chat.completion.chunk"));
    let chunk = |choice: Value| {
        let mut c = Value::Object(base.clone());
        c["choices"] = json!([choice]);
        c
    };
    let mut out = Vec::new();
    for (i, choice) in completion
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let message = choice.get("message").cloned().unwrap_or(json!({}));
        let mut delta = json!({"role": "assistant"});
        if let Some(t) = message.get("content").and_then(Value::as_str) {
            delta["content"] = json!(t);
        }
        if let Some(Value::Array(calls)) = message.get("tool_calls") {
            let indexed: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(n, c)| {
                    let mut c = c.clone();
                    c["index"] = json!(n);
                    c
                })
                .collect();
            delta["tool_calls"] = json!(indexed);
        }
        out.push(chunk(
            json!({"index": i, "delta": delta, "finish_reason": null}),
        ));
        let finish = choice
            .get("finish_reason")
            .cloned()
            .unwrap_or(json!("stop"));
        out.push(chunk(
            json!({"index": i, "delta": {}, "finish_reason": finish}),
        ));
    }
    if let Some(u) = completion.get("usage") {
        let mut c = Value::Object(base);
        c["choices"] = json!([]);
        c["usage"] = u.clone();
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_assembles_into_the_answer_it_replays_as() {
        let mut a = Assembler::default();
        let head = json!({"id": "c1", "model": "m", "created": 7});
        let with = |choice: Value| {
            let mut c = head.clone();
            c["choices"] = json!([choice]);
            c
        };
        a.push(&with(
            json!({"index": 0, "delta": {"role": "assistant", "content": "Hel"}}),
        ));
        a.push(&with(json!({"index": 0, "delta": {"content": "lo"}})));
        a.push(&with(json!({"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "t1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":"}}]}})));
        a.push(&with(json!({"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "\"x\"}"}}]}})));
        a.push(&with(
            json!({"index": 0, "delta": {}, "finish_reason": "tool_calls"}),
        ));
        let v = a.completion();
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], "Hello");
        assert_eq!(m["tool_calls"][0]["id"], "t1");
        assert_eq!(m["tool_calls"][0]["function"]["name"], "look");
        assert_eq!(m["tool_calls"][0]["function"]["arguments"], "{\"q\":\"x\"}");
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        // Replayed as a stream, it assembles into the same answer.
        let mut again = Assembler::default();
        for c in chunks_of(&v) {
            again.push(&c);
        }
        assert_eq!(again.completion(), v);
    }
}
