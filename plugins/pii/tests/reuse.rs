//! `pii` declares itself stateless, so the gateway reuses one plugin value for call after call.
//! These run several calls (each with its own request id) through one value, as a reused
//! instance would, and check that no real value, placeholder number or held-back stream text
//! of one call reaches the next.

use palisade_plugin_pii::Pii;
use palisade_plugin_sdk::testing::{CallBuilder, Harness, with_host};
use palisade_plugin_sdk::{Call, Outcome, Verdict};
use serde_json::{Value, json};

fn chat(request: &str, text: &str) -> Call {
    CallBuilder::llm("gpt-4o-mini")
        .request(request)
        .body(
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
                .to_string(),
        )
        .build()
}

fn answer(text: &str) -> String {
    json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
        .to_string()
}

fn content(o: &Outcome) -> String {
    match &o.verdict {
        Verdict::Rewrite(b) => {
            let v: Value = serde_json::from_str(b).expect("rewrite is JSON");
            let c = v
                .pointer("/messages/0/content")
                .or(v.pointer("/choices/0/message/content"));
            c.and_then(Value::as_str).unwrap_or_default().to_string()
        }
        other => panic!("expected rewrite, got {other:?}"),
    }
}

#[test]
fn init_declares_the_plugin_stateless() {
    Harness::<Pii>::new(json!({})).unwrap();
    assert!(with_host(|h| h.declared_stateless));
}

#[test]
fn a_reused_value_restores_only_its_own_calls_values() {
    let mut h = Harness::<Pii>::new(json!({"restore": true})).unwrap();
    let out = h.on_request(&chat("req-a", "write to jane@example.com"));
    assert_eq!(content(&out), "write to [EMAIL_1]");

    // The next call on the same value: numbering starts again, and a placeholder the model
    // echoes from nowhere is not turned into the previous call's address.
    let out = h.on_request(&chat("req-b", "write to bob@example.org"));
    assert_eq!(content(&out), "write to [EMAIL_1]");
    let out = h.on_response(&chat("req-b", ""), &answer("Sent to [EMAIL_1]."));
    assert_eq!(content(&out), "Sent to bob@example.org.");

    // A call with nothing to restore sees the placeholder as it is.
    h.on_request(&chat("req-c", "hello"));
    let out = h.on_response(&chat("req-c", ""), &answer("Sent to [EMAIL_1]."));
    assert!(
        matches!(out.verdict, Verdict::Allow),
        "a later call must not restore an earlier call's value: {out:?}"
    );
}

#[test]
fn held_back_stream_text_does_not_reach_the_next_call() {
    let mut h = Harness::<Pii>::new(json!({})).unwrap();
    let first = chat("req-a", "");
    h.on_request(&first);
    // The stream is cut before its last delta: the tail stays held back in the value.
    let sent = h.on_text(&first, "my card is 4111 1111", false);
    assert!(!sent.contains("4111"), "{sent}");

    let second = chat("req-b", "");
    h.on_request(&second);
    let out = h.stream(&second, &["All good", " here."]);
    assert_eq!(out, "All good here.");
}
