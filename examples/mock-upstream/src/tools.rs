//! The mock's tool calling, shared by its three faces: when tools are offered and the last
//! message is the user's, every offered tool whose name the user's text mentions is called (so
//! naming two tools gives parallel calls), with arguments made from the tool's JSON schema
//! (strings get `"mock"`, numbers `1`, booleans `true`). Once the tool results come back (the
//! last message is not the user's), the mock answers with text as usual.

use serde_json::{Map, Value, json};

/// One tool call the mock makes.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: String,
    pub name: String,
    pub args: Value,
}

/// The calls for `tools` (name, parameters schema) given the last user text; none unless
/// `user_turn` (the last message is a plain user message).
pub fn calls(tools: &[(String, Value)], user_text: &str, user_turn: bool, id: u64) -> Vec<Call> {
    if !user_turn {
        return Vec::new();
    }
    tools
        .iter()
        .filter(|(name, _)| !name.is_empty() && user_text.contains(name.as_str()))
        .enumerate()
        .map(|(i, (name, schema))| Call {
            id: format!("call_mock_{id}_{i}"),
            name: name.clone(),
            args: args(schema),
        })
        .collect()
}

fn args(schema: &Value) -> Value {
    let mut out = Map::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, p) in props {
            let v = match p.get("type").and_then(Value::as_str) {
                Some("integer" | "number" | "INTEGER" | "NUMBER") => json!(1),
                Some("boolean" | "BOOLEAN") => json!(true),
                Some("array" | "ARRAY") => json!([]),
                Some("object" | "OBJECT") => json!({}),
                _ => json!("mock"),
            };
            out.insert(k.clone(), v);
        }
    }
    Value::Object(out)
}

/// Splits a JSON text in two pieces, for streamed argument deltas.
pub fn halves(s: &str) -> (&str, &str) {
    let mut mid = s.len() / 2;
    while !s.is_char_boundary(mid) {
        mid -= 1;
    }
    s.split_at(mid)
}
