//! What a chat request may cost before it runs, and what an answer used when the provider did
//! not say. Reservations are made from these numbers, so they count the whole request:
//!
//! - **Input**: every string the provider tokenises, at about four characters a token
//!   ([`tokens_of`]): each message's role, name, text (a string, or the text inside content
//!   parts), refusal, tool calls (function names and arguments), tool results; the `tools`,
//!   `functions`, `tool_choice`, `response_format` and `prediction` JSON as sent (schemas are
//!   shown to the model, keys and all). An image part counts [`IMAGE_TOKENS`] whatever its
//!   size: OpenAI's high-detail rule charges 85 tokens plus 170 per 512-pixel tile, and 765 is
//!   a 1024x1024 image (4 tiles); its URL or base64 data is not text. Other parts (audio,
//!   files) count their strings as text, which over-reserves rather than under.
//! - **Output**: `max_completion_tokens` or `max_tokens` (a non-negative integer, `2.0` is
//!   fine), else the default, times `n` (1 to [`MAX_N`] choices).
//! - **Missing usage**: the input estimate plus the answer's text and tool-call arguments over
//!   all choices ([`answer_chars`]).

use serde_json::Value;

use crate::core::error::CallError;

/// Tokens charged for one image part (OpenAI high-detail, 1024x1024: 85 + 4 x 170).
pub const IMAGE_TOKENS: u64 = 765;

/// Most choices (`n`) one request may ask for.
pub const MAX_N: u64 = 128;

/// Request fields other than `messages` whose JSON the provider shows the model.
const JSON_FIELDS: [&str; 5] = [
    "tools",
    "functions",
    "tool_choice",
    "response_format",
    "prediction",
];

/// The gateway's token estimate for `chars` characters: ceil(chars / 4).
pub fn tokens_of(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// What a message (or any part of one) holds: text characters and images.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Count {
    chars: usize,
    images: u64,
}

fn is_image(part: &serde_json::Map<String, Value>) -> bool {
    matches!(
        part.get("type").and_then(Value::as_str),
        Some("image_url" | "input_image" | "image")
    ) || part.contains_key("image_url")
}

/// Every string in `v` (values, not keys), an image part as one image.
fn count(v: &Value, c: &mut Count) {
    match v {
        Value::String(s) => c.chars += s.len(),
        Value::Number(n) => c.chars += n.to_string().len(),
        Value::Array(items) => items.iter().for_each(|i| count(i, c)),
        Value::Object(o) if is_image(o) => c.images += 1,
        Value::Object(o) => {
            for (k, v) in o {
                // Part kinds (`"type": "text"`) frame the content; they are not its text.
                if k != "type" {
                    count(v, c);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// Estimated input tokens of a chat request (see the module doc).
pub fn input_tokens(json: &serde_json::Map<String, Value>) -> u64 {
    let mut c = Count::default();
    if let Some(messages) = json.get("messages") {
        count(messages, &mut c);
    }
    for f in JSON_FIELDS {
        if let Some(v) = json.get(f).filter(|v| !v.is_null()) {
            c.chars += v.to_string().len();
        }
    }
    tokens_of(c.chars).saturating_add(c.images.saturating_mul(IMAGE_TOKENS))
}

/// `field` as a non-negative integer: absent or null is `None`; an integer-valued number
/// (`2`, `2.0`) is its value; anything else (`2.5`, `-1`, `"2"`) is a 400 naming the field.
pub fn whole_number(
    json: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<u64>, CallError> {
    let bad = || {
        CallError::bad_request(
            "invalid_request",
            format!("`{field}` must be a non-negative integer"),
        )
    };
    match json.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                return Ok(Some(u));
            }
            match n.as_f64() {
                Some(f) if f >= 0.0 && f.fract() == 0.0 && f.is_finite() => {
                    // Saturates past u64::MAX, which every later use caps anyway.
                    Ok(Some(f as u64))
                }
                _ => Err(bad()),
            }
        }
        Some(_) => Err(bad()),
    }
}

/// The most output tokens the request may produce over all its choices: the per-choice cap
/// (`max_completion_tokens`, else `max_tokens`, else `default`) times `n`.
pub fn max_output_tokens(
    json: &serde_json::Map<String, Value>,
    default: u32,
) -> Result<u64, CallError> {
    let completion = whole_number(json, "max_completion_tokens")?;
    let max_tokens = whole_number(json, "max_tokens")?;
    let per_choice = completion.or(max_tokens).unwrap_or(u64::from(default));
    let n = whole_number(json, "n")?.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(CallError::bad_request(
            "invalid_request",
            format!("`n` must be an integer from 1 to {MAX_N}"),
        ));
    }
    Ok(per_choice.saturating_mul(n))
}

/// Characters of an answer's output over all choices: message text (or text parts), refusals
/// and tool calls' names and arguments.
pub fn answer_chars(answer: &Value) -> usize {
    let Some(choices) = answer.get("choices").and_then(Value::as_array) else {
        return 0;
    };
    let mut c = Count::default();
    for m in choices.iter().filter_map(|ch| ch.get("message")) {
        for f in ["content", "refusal", "tool_calls", "function_call"] {
            if let Some(v) = m.get(f) {
                count(v, &mut c);
            }
        }
    }
    c.chars
}

/// Whether an answer (or stream chunk) carries the provider's token counts.
pub fn has_usage(v: &Value) -> bool {
    ["/usage/prompt_tokens", "/usage/completion_tokens"]
        .iter()
        .any(|p| v.pointer(p).is_some_and(Value::is_u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> serde_json::Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => unreachable!(),
        }
    }

    fn input(v: Value) -> u64 {
        input_tokens(&obj(v))
    }

    fn msgs(m: Value) -> u64 {
        input(json!({ "messages": [m] }))
    }

    #[test]
    fn text_content_and_role_count() {
        // "user" + 12 characters = 16 -> 4 tokens.
        assert_eq!(msgs(json!({"role": "user", "content": "123456789012"})), 4);
    }

    #[test]
    fn text_inside_content_parts_counts() {
        let m = json!({"role": "user", "content": [
            {"type": "text", "text": "a".repeat(400)},
            {"type": "text", "text": "b".repeat(400)},
        ]});
        assert_eq!(msgs(m), (4 + 800_u64).div_ceil(4));
    }

    #[test]
    fn message_names_count() {
        let plain = msgs(json!({"role": "user", "content": "hi"}));
        let named = msgs(json!({"role": "user", "content": "hi", "name": "x".repeat(400)}));
        assert_eq!(named - plain, 100);
    }

    #[test]
    fn tool_call_names_and_arguments_count() {
        let args = json!({"query": "q".repeat(4000)}).to_string();
        let m = json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "search", "arguments": args}}
        ]});
        let n = msgs(m);
        assert!(n > 1000, "{n}");
    }

    #[test]
    fn tool_results_count() {
        let m = json!({"role": "tool", "tool_call_id": "c1", "content": "r".repeat(4000)});
        assert!(msgs(m) >= 1000);
    }

    #[test]
    fn images_count_a_fixed_cost_not_their_bytes() {
        let data = format!("data:image/png;base64,{}", "A".repeat(400_000));
        let m = json!({"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": data, "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
        ]});
        assert_eq!(msgs(m), 2 * IMAGE_TOKENS + (4 + 12_u64).div_ceil(4));
    }

    #[test]
    fn other_parts_count_their_strings() {
        let m = json!({"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "x".repeat(4000), "format": "wav"}}
        ]});
        assert!(msgs(m) >= 1000);
    }

    #[test]
    fn tools_functions_response_format_and_prediction_count() {
        let base = json!({"messages": [{"role": "user", "content": "hi"}]});
        let schema = json!({"type": "object", "properties": {"q": {"type": "string",
            "description": "d".repeat(4000)}}});
        for (field, v) in [
            (
                "tools",
                json!([{"type": "function", "function": {"name": "f", "parameters": schema}}]),
            ),
            ("functions", json!([{"name": "f", "parameters": schema}])),
            (
                "response_format",
                json!({"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}),
            ),
            (
                "prediction",
                json!({"type": "content", "content": "p".repeat(4000)}),
            ),
        ] {
            let mut with = base.clone();
            with[field] = v;
            let added = input(with) - input(base.clone());
            assert!(added >= 1000, "{field} added {added}");
        }
    }

    #[test]
    fn max_tokens_forms() {
        let out = |v: Value| max_output_tokens(&obj(v), 4096).map_err(|e| e.to_string());
        assert_eq!(out(json!({})), Ok(4096));
        assert_eq!(out(json!({"max_tokens": null})), Ok(4096));
        assert_eq!(out(json!({"max_tokens": 7})), Ok(7));
        assert_eq!(out(json!({"max_tokens": 2.0})), Ok(2));
        assert_eq!(out(json!({"max_tokens": 0})), Ok(0));
        assert_eq!(
            out(json!({"max_completion_tokens": 9, "max_tokens": 7})),
            Ok(9)
        );
        for (field, v) in [
            ("max_tokens", json!(2.5)),
            ("max_tokens", json!(-1)),
            ("max_tokens", json!("100")),
            ("max_completion_tokens", json!(-3.0)),
        ] {
            let e = out(json!({ field: v })).unwrap_err();
            assert!(e.contains(&format!("`{field}`")), "{e}");
        }
    }

    #[test]
    fn n_multiplies_the_output() {
        let out = |v: Value| max_output_tokens(&obj(v), 4096).map_err(|e| e.to_string());
        assert_eq!(out(json!({"max_tokens": 100, "n": 64})), Ok(6400));
        assert_eq!(out(json!({"n": 2})), Ok(8192));
        assert_eq!(out(json!({"max_tokens": 100, "n": 128})), Ok(12_800));
        for n in [json!(0), json!(129), json!(1.5), json!(-1), json!("2")] {
            let e = out(json!({"n": n})).unwrap_err();
            assert!(e.contains("`n`"), "{e}");
        }
    }

    #[test]
    fn answer_chars_over_all_choices_and_tool_calls() {
        let a = json!({"choices": [
            {"index": 0, "message": {"role": "assistant", "content": "abcd"}},
            {"index": 1, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}
            ]}},
        ]});
        // "abcd" + "c" + "f" + 7 characters of arguments.
        assert_eq!(answer_chars(&a), 4 + 1 + 1 + 7);
        assert_eq!(answer_chars(&json!({})), 0);
    }

    #[test]
    fn usage_present_or_not() {
        assert!(has_usage(
            &json!({"usage": {"prompt_tokens": 3, "completion_tokens": 1}})
        ));
        assert!(!has_usage(&json!({"usage": null})));
        assert!(!has_usage(&json!({"choices": []})));
    }
}
