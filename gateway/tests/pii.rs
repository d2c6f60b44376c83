//! The `pii` plugin through the real gateway: what the upstream sees (the mock records every
//! request), what the agent gets back, full answers and streams.
//!
//! The mock upstream echoes the last user message, so a value the agent sends comes back in the
//! answer: with redaction the answer carries the placeholder, with `restore` the real value again.
//! Streams arrive in word-sized deltas, so a card written with spaces is split across deltas.

mod common;

use common::*;
use serde_json::Value;

const CARD: &str = "4111 1111 1111 1111";

/// (kind, a value of that kind as written in a sentence, its placeholder).
const VALUES: &[(&str, &str, &str)] = &[
    ("email", "jane.doe@example.com", "[EMAIL_1]"),
    ("phone", "+44 20 7946 0958", "[PHONE_1]"),
    ("card", CARD, "[CARD_1]"),
    ("ssn", "078-05-1120", "[SSN_1]"),
    ("iban", "DE89 3704 0044 0532 0130 00", "[IBAN_1]"),
    ("ip", "192.168.10.42", "[IP_1]"),
    (
        "secret",
        "sk-ant-api03-Xq7vR2mT9pL4kW8nB3cY6hJ1",
        "[SECRET_1]",
    ),
];

fn pii(config: &str) -> String {
    format!("[[plugins]]\nname = \"pii\"\npath = \"pii.wasm\"\n[plugins.config]\n{config}\n")
}

fn sent_to_upstream(gw: &TestGateway) -> String {
    let seen: Value = gw
        .mock
        .last_request()
        .expect("the upstream saw the call")
        .json()
        .expect("JSON body");
    seen["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn upstream_log(gw: &TestGateway) -> String {
    gw.mock
        .requests()
        .iter()
        .map(|r| r.body.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_is_redacted_before_the_upstream_sees_it() {
    let gw = TestGateway::start(&["pii"], &pii("")).await;
    for (kind, value, placeholder) in VALUES {
        let text = format!("Here it is: {value} - thanks");
        let r = gw.chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", &text)).await;
        assert_eq!(r.status, 200, "{kind}: {}", r.json);
        let sent = sent_to_upstream(&gw);
        assert_eq!(
            sent,
            format!("Here it is: {placeholder} - thanks"),
            "{kind}"
        );
        assert!(
            !upstream_log(&gw).contains(value),
            "{kind} reached the upstream"
        );
        // Without restore the agent gets the placeholder the model saw.
        assert!(r.content().ends_with(&sent), "{kind}: {}", r.content());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_kinds_in_one_message_get_their_own_placeholders() {
    let gw = TestGateway::start(&["pii"], &pii("")).await;
    let text: Vec<String> = VALUES.iter().map(|(_, v, _)| format!("{v} ;")).collect();
    let text = format!("{} and jane.doe@example.com again", text.join(" "));
    let r = gw.chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", &text)).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let want: Vec<String> = VALUES.iter().map(|(_, _, p)| format!("{p} ;")).collect();
    assert_eq!(
        sent_to_upstream(&gw),
        format!("{} and [EMAIL_1] again", want.join(" "))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_mode_gives_the_agent_real_values_and_the_upstream_only_placeholders() {
    let gw = TestGateway::start(&["pii"], &pii("restore = true")).await;
    for (kind, value, placeholder) in VALUES {
        let text = format!("Please remember {value} for me.");
        let r = gw.chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", &text)).await;
        assert_eq!(r.status, 200, "{kind}: {}", r.json);
        assert_eq!(
            r.content(),
            format!("Hello from mock-upstream (gpt-4o-mini). You said: {text}"),
            "{kind}"
        );
        assert!(sent_to_upstream(&gw).contains(placeholder), "{kind}");
    }
    let log = upstream_log(&gw);
    for (kind, value, _) in VALUES {
        assert!(!log.contains(value), "{kind} reached the upstream: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_split_across_stream_deltas_is_redacted() {
    // Scan only the answer, so the card reaches the (echoing) model and comes back in deltas.
    let gw = TestGateway::start(&["pii"], &pii("request = false")).await;
    let text = format!("my card is {CARD} thanks");
    let (status, events) = gw
        .chat_stream(SUPPORT_KEY, &chat_body("gpt-4o-mini", &text))
        .await;
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let streamed = stream_text(&events);
    assert_eq!(
        streamed,
        "Hello from mock-upstream (gpt-4o-mini). You said: my card is [CARD_1] thanks"
    );
    assert!(!events.iter().any(|e| e.contains("4111")), "{events:?}");
    // The upstream did stream the card word by word: it really was split across deltas.
    assert!(sent_to_upstream(&gw).contains(CARD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_mode_stream_carries_the_real_card_while_the_upstream_got_the_placeholder() {
    let gw = TestGateway::start(&["pii"], &pii("restore = true")).await;
    let text = format!("charge {CARD} and mail jane.doe@example.com");
    let (status, events) = gw
        .chat_stream(SUPPORT_KEY, &chat_body("gpt-4o-mini", &text))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        stream_text(&events),
        format!("Hello from mock-upstream (gpt-4o-mini). You said: {text}")
    );
    assert_eq!(sent_to_upstream(&gw), "charge [CARD_1] and mail [EMAIL_1]");
    let log = upstream_log(&gw);
    assert!(!log.contains("4111") && !log.contains("jane.doe"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_mode_refuses_naming_the_kind_never_the_value() {
    let gw = TestGateway::start(
        &["pii"],
        &pii("[plugins.config.kinds]\ncard = \"deny\"\nsecret = \"deny\""),
    )
    .await;
    let r = gw
        .chat(
            SUPPORT_KEY,
            &chat_body("gpt-4o-mini", &format!("pay with {CARD} please")),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "pii_detected"), "{}", r.json);
    assert_eq!(r.json["error"]["plugin"], "pii");
    assert!(
        r.message().contains("payment card number"),
        "{}",
        r.message()
    );
    assert!(!r.message().contains("4111"), "{}", r.message());
    let r = gw
        .chat(
            SUPPORT_KEY,
            &chat_body("gpt-4o-mini", "key AKIAIOSFODNN7EXAMPLE here"),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "pii_detected"), "{}", r.json);
    assert!(r.message().contains("secret"), "{}", r.message());
    assert!(!r.json.to_string().contains("AKIA"), "{}", r.json);
    assert!(
        gw.mock.requests().is_empty(),
        "a refused call must not reach the upstream"
    );
    // Kinds not set to deny are still redacted, and clean text passes.
    let r = gw
        .chat(
            SUPPORT_KEY,
            &chat_body("gpt-4o-mini", "mail jane.doe@example.com"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(sent_to_upstream(&gw), "mail [EMAIL_1]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mask_and_log_actions() {
    let gw = TestGateway::start(
        &["pii"],
        &pii("[plugins.config.kinds]\ncard = \"mask\"\nip = \"log\""),
    )
    .await;
    let r = gw
        .chat(
            SUPPORT_KEY,
            &chat_body("gpt-4o-mini", &format!("card {CARD} from 10.0.0.7")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(sent_to_upstream(&gw), "card ****1111 from 10.0.0.7");
}
