//! Plugins written in Python (componentize-py) and JavaScript (componentize-js), built by
//! `make plugins` into dist/plugins, loaded from disk by a real gateway like any plugin, in one
//! chain with a Rust plugin, and exercised over HTTP with real chat calls.
//!
//! One gateway serves every case: compiling a Python or JavaScript component takes tens of
//! seconds on a small machine (the gateway caches it on disk by SHA-256 after that).

mod common;

use common::*;
use serde_json::Value;

const CHAIN: &str = r#"
[[plugins]]
name = "model-allow"
path = "model-allow.wasm"
[plugins.config]
default = ["gpt-4o-mini", "gpt-4o"]

[[plugins]]
name = "customer-guard"
path = "customer-guard-py.wasm"
memory_mb = 32
[plugins.config]
blocked = ["CUST-1001", "CUST-2002"]
tools = ["crm__*"]
scan_llm = true

[[plugins]]
name = "business-hours"
path = "business-hours-js.wasm"
memory_mb = 32
[plugins.config]
risky = ["gpt-4o"]
days = []
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_plugins_decide_calls_in_a_chain_with_rust() {
    // A held call is answered at once (no wait for a decision): this test is about the verdict.
    let gw = TestGateway::start_full(
        Db::Sqlite,
        &["model-allow", "customer-guard-py", "business-hours-js"],
        CHAIN,
        false,
        "[approvals]\nwait_secs = 0\n",
    )
    .await;

    // Python: a request that mentions a blocked customer (any case, inside JSON) is denied,
    // with the plugin's own status, code and message, and never reaches the upstream.
    let r = gw
        .chat(
            SUPPORT_KEY,
            &chat_body(
                "gpt-4o-mini",
                "summarise the open tickets of cust-2002 please",
            ),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.json);
    assert_eq!(r.code(), "customer_blocked");
    assert_eq!(r.json["error"]["plugin"], "customer-guard");
    assert!(r.message().contains("'cust-2002'"), "{}", r.message());
    assert!(
        gw.mock.requests().is_empty(),
        "a denied call must not go upstream"
    );

    // A longer id that merely starts with a blocked one is a different customer.
    let r = gw
        .chat(
            SUPPORT_KEY,
            &chat_body("gpt-4o-mini", "tickets of CUST-10010"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        r.content(),
        "Hello from mock-upstream (gpt-4o-mini). You said: tickets of CUST-10010"
    );

    // JavaScript: a risky model outside business hours (no business day configured) is held
    // for approval; the Python plugin before it let the call through.
    let r = gw
        .chat(
            RESEARCH_KEY,
            &chat_body("gpt-4o", "draft the quarterly report"),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.json);
    assert_eq!(r.code(), "approval_pending");
    assert!(r.message().contains("business-hours"), "{}", r.message());
    // The approvers see the plugin's summary of why it held the call.
    let (status, list) = gw
        .admin(
            "GET",
            "/admin/api/approvals?status=pending",
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert!(
        list.to_string().contains("outside business hours"),
        "{list}"
    );
    assert_eq!(
        gw.mock.requests().len(),
        1,
        "a held call must not go upstream"
    );

    // The Rust plugin still decides first: a model nobody may use is denied by it.
    let r = gw.chat(SUPPORT_KEY, &chat_body("o1", "hi")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "model_not_allowed");

    // Both examples declare themselves stateless, so one instance serves call after call: many
    // calls in a row, alternating verdicts, stay correct.
    for i in 0..10 {
        let text = if i % 2 == 0 {
            "about CUST-1001"
        } else {
            "about nobody"
        };
        let r = gw.chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", text)).await;
        let want = if i % 2 == 0 { 403 } else { 200 };
        assert_eq!(r.status, want, "call {i}: {}", r.json);
    }

    // The status page lists the three plugins of the chain, each pooled by its own declaration
    // (`declare-stateless`, from Rust, Python and JavaScript alike).
    let status = gw.status().await;
    let plugins = status["plugins"].as_array().expect("plugins");
    let names: Vec<&str> = plugins.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["model-allow", "customer-guard", "business-hours"]);
    for p in plugins {
        assert_eq!(
            (&p["instances"], &p["instances_from"]),
            (&Value::from("pooled"), &Value::from("declared")),
            "{p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_plugin_lets_risky_calls_through_within_business_hours() {
    // Every day, all day: always within business hours.
    let chain = r#"
[[plugins]]
name = "business-hours"
path = "business-hours-js.wasm"
[plugins.config]
risky = ["gpt-4o*"]
days = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
open = "00:00"
close = "24:00"
"#;
    let gw = TestGateway::start(&["business-hours-js"], chain).await;
    let r = gw
        .chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "hello"))
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(gw.mock.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_plugin_with_a_bad_config_is_refused_at_start() {
    let dir = temp_dir("py-config");
    std::fs::copy(
        dist_plugin("customer-guard-py"),
        dir.join("customer-guard-py.wasm"),
    )
    .unwrap();
    let toml = "[[plugins]]\nname = \"customer-guard\"\npath = \"customer-guard-py.wasm\"\n[plugins.config]\nblocked = []\n";
    let cfg = dir.join("palisade.toml");
    std::fs::write(
        &cfg,
        config_text(
            &dir,
            &format!("sqlite://{}", dir.join("p.db").display()),
            toml,
        ),
    )
    .unwrap();
    let err = palisade::app::Gateway::start(&cfg, Default::default())
        .await
        .err()
        .expect("an empty block list must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("customer-guard"), "{msg}");
    assert!(
        msg.contains("`blocked` must be a non-empty list"),
        "the plugin's own message must reach the operator: {msg}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
