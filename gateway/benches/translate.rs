//! Added latency of provider translation per call: a canonical (OpenAI) chat request with a
//! system prompt, three turns and a tool, encoded for Anthropic, and the Anthropic answer decoded
//! back to an OpenAI `chat.completion` (what a non-streamed call pays), plus a streamed answer of
//! 40 text deltas decoded event by event. Gemini the same way for comparison.

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::providers::dialect::Dialect;
use serde_json::{Map, Value, json};
use std::hint::black_box;

fn request() -> Map<String, Value> {
    json!({
        "model": "smart",
        "max_tokens": 512,
        "temperature": 0.3,
        "messages": [
            {"role": "system", "content": "You are a careful support agent. Answer briefly and cite the ticket."},
            {"role": "user", "content": "My order 1234 has not arrived; can you check the weather at the depot in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Rain, 12C, strong wind; deliveries delayed."},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather at a place", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

const ANTHROPIC_ANSWER: &[u8] = br#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","content":[{"type":"text","text":"The depot in Paris reports rain and strong wind, so deliveries are delayed; your order 1234 should arrive within two days."}],"model":"claude-sonnet-4-5","stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":212,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":31}}"#;

const GEMINI_ANSWER: &[u8] = br#"{"candidates":[{"content":{"parts":[{"text":"The depot in Paris reports rain and strong wind, so deliveries are delayed; your order 1234 should arrive within two days."}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":212,"candidatesTokenCount":31,"totalTokenCount":243},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;

fn anthropic_stream() -> Vec<String> {
    let mut ev = vec![
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":212,"output_tokens":1}}}"#.to_string(),
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_string(),
    ];
    for i in 0..40 {
        ev.push(format!(
            r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"word{i} "}}}}"#
        ));
    }
    ev.push(r#"{"type":"content_block_stop","index":0}"#.into());
    ev.push(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":40}}"#.into());
    ev.push(r#"{"type":"message_stop"}"#.into());
    ev
}

fn bench(c: &mut Criterion) {
    let req = request();
    c.bench_function("openai->anthropic->openai (request + answer)", |b| {
        b.iter(|| {
            let out = Dialect::Anthropic
                .encode_request(black_box(&req), "claude-sonnet-4-5")
                .ok();
            let answer = Dialect::Anthropic
                .decode_response(black_box(ANTHROPIC_ANSWER), "claude-sonnet-4-5")
                .ok();
            (out, answer)
        })
    });
    c.bench_function("openai->gemini->openai (request + answer)", |b| {
        b.iter(|| {
            let out = Dialect::Gemini
                .encode_request(black_box(&req), "gemini-2.5-flash")
                .ok();
            let answer = Dialect::Gemini
                .decode_response(black_box(GEMINI_ANSWER), "gemini-2.5-flash")
                .ok();
            (out, answer)
        })
    });
    let events = anthropic_stream();
    c.bench_function("anthropic stream decode (45 events)", |b| {
        b.iter(|| {
            let mut d = Dialect::Anthropic.stream_decoder("claude-sonnet-4-5");
            let mut n = 0;
            for e in &events {
                n += d.event(black_box(e)).map(|v| v.len()).unwrap_or(0);
            }
            n
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
