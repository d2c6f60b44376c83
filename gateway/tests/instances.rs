//! How a plugin's instances live: a plugin that declares itself stateless
//! (`host.declare-stateless` in `init`) is reused call after call without any configuration,
//! the operator's `instances = "fresh"` overrides that, and a plugin built against the 0.1.0
//! contract, which cannot even import the declaration, still loads with a fresh instance per
//! call. Counting is done by the plugins themselves (` #n` appended to the message, `n` the calls
//! their instance has seen), so reuse is observed, not assumed. And a full engine fails a call
//! closed rather than skip a fail-open plugin (load must not switch `pii` off).

mod common;

use common::*;
use serde_json::{Value, json};

/// The fixture plugin in `instance-count` mode, acting on calls to `model` only.
fn counter(name: &str, extra: &str, stateless: bool, model: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\npath = \"fixture.wasm\"\n{extra}\n[plugins.config]\n\
         mode = \"instance-count\"\nmodel = \"{model}\"\nstateless = {stateless}\n"
    )
}

/// The `#n` suffixes of `calls` calls in a row to `model`.
async fn counts(gw: &TestGateway, model: &str, calls: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..calls {
        let r = gw.chat(SUPPORT_KEY, &chat_body(model, "n")).await;
        assert_eq!(r.status, 200, "{}", r.json);
        // The mock upstream echoes the message as it received it: "... You said: n #1".
        let said = r.content().rsplit("You said: ").next().unwrap_or_default();
        seen.push(said.to_string());
    }
    seen
}

/// The `/admin/status` entry of plugin `name`.
fn plugin_status<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["plugins"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no plugin {name} in {st}"))
}

fn mode(st: &Value, name: &str) -> (String, String, bool) {
    let p = plugin_status(st, name);
    (
        p["instances"].as_str().unwrap_or_default().to_string(),
        p["instances_from"].as_str().unwrap_or_default().to_string(),
        p["declared_stateless"].as_bool().unwrap_or_default(),
    )
}

fn owned(mode: (&str, &str, bool)) -> (String, String, bool) {
    (mode.0.into(), mode.1.into(), mode.2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_declares_itself_stateless_is_reused_without_configuration() {
    let toml = format!(
        "{}{}\n[[plugins]]\nname = \"model-allow\"\npath = \"model-allow.wasm\"\n\
         [plugins.config]\ndefault = [\"*\"]\n",
        counter("declared", "", true, "declared"),
        counter("undeclared", "", false, "undeclared"),
    );
    let gw = TestGateway::start(&["fixture", "model-allow"], &toml).await;
    // The load check's instance serves every call, one after the other.
    assert_eq!(
        counts(&gw, "declared", 4).await,
        ["n #1", "n #2", "n #3", "n #4"]
    );
    // The same component without the declaration gets a fresh instance per call.
    assert_eq!(counts(&gw, "undeclared", 3).await, ["n #1", "n #1", "n #1"]);

    let st = gw.status().await;
    assert_eq!(mode(&st, "declared"), owned(("pooled", "declared", true)));
    assert_eq!(mode(&st, "undeclared"), owned(("fresh", "default", false)));
    // A shipped plugin declares itself through the SDK.
    assert_eq!(
        mode(&st, "model-allow"),
        owned(("pooled", "declared", true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_fresh_overrides_a_stateless_declaration() {
    let toml = format!(
        "{}{}",
        counter(
            "forced-fresh",
            "instances = \"fresh\"",
            true,
            "forced-fresh"
        ),
        counter(
            "forced-pooled",
            "instances = \"pooled\"",
            false,
            "forced-pooled"
        ),
    );
    let gw = TestGateway::start(&["fixture"], &toml).await;
    assert_eq!(
        counts(&gw, "forced-fresh", 3).await,
        ["n #1", "n #1", "n #1"]
    );
    assert_eq!(
        counts(&gw, "forced-pooled", 3).await,
        ["n #1", "n #2", "n #3"]
    );
    let st = gw.status().await;
    assert_eq!(mode(&st, "forced-fresh"), owned(("fresh", "config", true)));
    assert_eq!(
        mode(&st, "forced-pooled"),
        owned(("pooled", "config", false))
    );
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_0_1_0_still_loads_and_runs_fresh() {
    // The `legacy` fixture is built from the frozen 0.1.0 contract: it names the 0.1.0
    // interfaces and has never heard of `declare-stateless`.
    let wasm = std::fs::read(dist_plugin("legacy")).expect("read legacy.wasm");
    assert!(contains(&wasm, "palisade:policy/host@0.1.0"));
    assert!(contains(&wasm, "palisade:policy/policy@0.1.0"));
    assert!(!contains(&wasm, "declare-stateless"));
    assert!(!contains(&wasm, "@0.1.1"));

    // Twice in the chain: as it is, and pooled by the operator. Each appends its own count.
    let toml = "[[plugins]]\nname = \"old\"\npath = \"legacy.wasm\"\n\n\
                [[plugins]]\nname = \"old-pooled\"\npath = \"legacy.wasm\"\ninstances = \"pooled\"\n";
    let gw = TestGateway::start(&["legacy"], toml).await;
    assert_eq!(
        counts(&gw, "gpt-4o-mini", 3).await,
        ["n #1 #1", "n #1 #2", "n #1 #3"]
    );
    let st = gw.status().await;
    assert_eq!(mode(&st, "old"), owned(("fresh", "default", false)));
    assert_eq!(mode(&st, "old-pooled"), owned(("pooled", "config", false)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_left_mid_hook_by_a_cancelled_call_is_not_reused() {
    use std::future::Future;
    use std::sync::Arc;

    use palisade::plugins::bindings::{Agent, Call, CallKind};

    // Pooled by its declaration; spins forever on calls to `spin`, allows the rest.
    let toml = "[[plugins]]\nname = \"spinner\"\npath = \"fixture.wasm\"\n\
                [plugins.config]\nmode = \"loop\"\nmodel = \"spin\"\nstateless = true\n";
    let gw = TestGateway::start(&["fixture"], toml).await;
    let chain = gw.gw.policy.current().chain.clone();
    let mut call = Call {
        request_id: "req_cancelled".into(),
        run_id: "run_cancelled".into(),
        chain: vec!["support-bot".into()],
        agent: Agent {
            id: "support-bot".into(),
            name: "support-bot".into(),
            owner: "alice@example.com".into(),
            team: "support".into(),
            labels: Vec::new(),
        },
        kind: CallKind::LlmCall,
        target: "spin".into(),
        body: chat_body("spin", "x").to_string(),
        stream: false,
        input_tokens: 1,
        max_output_tokens: 1,
        max_cost: 0,
    };
    // The pool's one instance starts the spinning hook; the first poll returns once the guest
    // yields at an epoch tick, and the call is then dropped (an agent hanging up) mid-hook.
    let mut session = chain.session(Arc::from("req_cancelled"));
    {
        let mut hook = std::pin::pin!(session.on_request(&mut call));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(hook.as_mut().poll(&mut cx).is_pending());
    }
    session.finish();
    // The torn instance went away: the next calls get a sound one.
    for _ in 0..2 {
        let r = gw
            .chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "after"))
            .await;
        assert_eq!(r.status, 200, "{}", r.json);
    }
}

/// A full engine is the gateway's capacity, not a plugin's fault: a plugin configured
/// `on_error = "allow"` that cannot get an instance slot is not skipped, the call is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_engine_does_not_skip_a_fail_open_plugin() {
    // One slot, fresh instances (none kept idle): model-allow's instance holds the slot until
    // the request side is done, so pii (after it in the chain) never gets one.
    let toml = "[[plugins]]\nname = \"model-allow\"\npath = \"model-allow.wasm\"\n\
                instances = \"fresh\"\n[plugins.config]\ndefault = [\"*\"]\n\n\
                [[plugins]]\nname = \"pii\"\npath = \"pii.wasm\"\non_error = \"allow\"\n\
                instances = \"fresh\"\n";
    let gw = TestGateway::start_full(
        Db::Sqlite,
        &["model-allow", "pii"],
        toml,
        false,
        "plugin_host.max_instances = 1\n",
    )
    .await;
    let r = gw
        .chat(
            SUPPORT_KEY,
            &chat_body("gpt-4o-mini", "mail me at jo@example.com"),
        )
        .await;
    assert_eq!(r.status, 500, "pii was skipped: {}", r.json);
    assert_eq!(r.code(), "plugin_unavailable", "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_is_not_run_for_the_kinds_of_call_it_did_not_declare() {
    let toml = "[[plugins]]\nname = \"model-allow\"\npath = \"model-allow.wasm\"\n\
                [plugins.config]\ndefault = [\"*\"]\n\n\
                [[plugins]]\nname = \"approvals\"\npath = \"approvals.wasm\"\n\
                [[plugins.config.rules]]\nname = \"email\"\ntools = [\"*send_email*\"]\n\
                approvals = 1\ngroup = \"approvers\"\n";
    let gw = TestGateway::start(&["model-allow", "approvals"], toml).await;
    let st = gw.status().await;
    // approvals has tool rules only, so it declared tool calls; model-allow LLM calls.
    assert_eq!(
        plugin_status(&st, "approvals")["kinds"],
        json!(["tool-call"])
    );
    assert_eq!(
        plugin_status(&st, "model-allow")["kinds"],
        json!(["llm-call"])
    );

    let r = gw.chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let id = r.headers["palisade-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    gw.gw.audit.flush().await.expect("audit flushed");
    let (s, _, bytes) = gw
        .request(
            "GET",
            "/admin/api/audit/export?format=jsonl",
            Some(ADMIN_TOKEN),
            bytes::Bytes::new(),
        )
        .await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert_eq!(s, 200, "{text}");
    let event: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e.to_string().contains(&id))
        .unwrap_or_else(|| panic!("no audit event of {id} in {text}"));
    let ran: Vec<&str> = event["verdicts"]
        .as_array()
        .unwrap_or_else(|| panic!("no verdicts in {event}"))
        .iter()
        .filter_map(|v| v["plugin"].as_str())
        .collect();
    // model-allow decided the LLM call; approvals was passed over without a guest entry.
    assert_eq!(ran, ["model-allow"], "{event}");
}
