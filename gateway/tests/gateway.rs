//! End-to-end tests of the gateway: real HTTP over loopback, real compiled plugin components,
//! the mock upstream speaking OpenAI's wire format.

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;
use serde_json::{Value, json};

const MODEL_ALLOW: &str = r#"
[[plugins]]
name = "model-allow"
path = "model-allow.wasm"
[plugins.config]
default = ["gpt-4o-mini"]
agents = { "research-bot" = ["gpt-4o"] }
"#;

fn fixture(name: &str, extra: &str, config: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\npath = \"fixture.wasm\"\n{extra}\n[plugins.config]\n{config}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_call_reaches_upstream_with_request_id_and_provider() {
    let gw = TestGateway::start(&["model-allow"], MODEL_ALLOW).await;
    let r = gw
        .chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "hello there"))
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        r.content(),
        "Hello from mock-upstream (gpt-4o-mini). You said: hello there"
    );
    assert!(
        r.headers["palisade-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    // The target that served, as `provider/model`.
    assert_eq!(r.headers["palisade-provider"], "mock/gpt-4o-mini");
    let seen = gw.mock.last_request().expect("upstream saw the call");
    assert!(
        !seen.headers.iter().any(|(_, v)| v.contains(SUPPORT_KEY)),
        "the agent's key must never reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_call_names_plugin_and_never_reaches_upstream() {
    let gw = TestGateway::start(&["model-allow"], MODEL_ALLOW).await;
    let r = gw.chat(SUPPORT_KEY, &chat_body("gpt-4o", "hi")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "model_not_allowed");
    assert_eq!(r.json["error"]["type"], "permission_error");
    assert_eq!(r.json["error"]["plugin"], "model-allow");
    assert!(r.message().contains("'gpt-4o'"), "{}", r.message());
    assert!(r.headers.contains_key("palisade-request-id"));
    assert!(
        gw.mock.requests().is_empty(),
        "a denied call must not reach the upstream"
    );
    // The same model is fine for the agent whose list names it.
    assert_eq!(
        gw.chat(RESEARCH_KEY, &chat_body("gpt-4o", "hi"))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_changes_what_the_upstream_sees() {
    let gw = TestGateway::start(
        &["fixture"],
        &fixture("rw", "", "mode = \"rewrite\"\nappend = \" [reviewed]\""),
    )
    .await;
    let r = gw
        .chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "hello"))
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert!(
        r.content().ends_with("You said: hello [reviewed]"),
        "{}",
        r.content()
    );
    let sent: Value = gw.mock.last_request().unwrap().json().unwrap();
    assert_eq!(sent["messages"][0]["content"], "hello [reviewed]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_plugin_fails_closed_with_its_name_and_the_gateway_keeps_serving() {
    let toml = fixture("boom", "", "mode = \"trap\"\nmodel = \"trap-me\"");
    let gw = TestGateway::start(&["fixture"], &toml).await;
    let r = gw.chat(SUPPORT_KEY, &chat_body("trap-me", "x")).await;
    assert_eq!(r.status, 500, "{}", r.json);
    assert_eq!(r.code(), "plugin_trap");
    assert_eq!(r.json["error"]["plugin"], "boom");
    assert!(r.message().contains("'boom'"), "{}", r.message());
    assert!(gw.mock.requests().is_empty());
    assert_eq!(
        gw.chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "x"))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_loop_hits_the_deadline_and_the_next_call_is_served() {
    let toml = fixture(
        "spin",
        "deadline_ms = 30",
        "mode = \"loop\"\nmodel = \"spin\"",
    );
    let gw = TestGateway::start(&["fixture"], &toml).await;
    let r = gw.chat(SUPPORT_KEY, &chat_body("spin", "x")).await;
    assert_eq!(r.status, 500, "{}", r.json);
    assert_eq!(r.code(), "plugin_timeout");
    assert!(r.message().contains("deadline of 30 ms"), "{}", r.message());
    // Two more loops in parallel with normal calls: the gateway keeps answering.
    let (spin, normal) = (chat_body("spin", "x"), chat_body("gpt-4o-mini", "y"));
    let (a, b, c) = tokio::join!(
        gw.chat(SUPPORT_KEY, &spin),
        gw.chat(SUPPORT_KEY, &normal),
        gw.chat(SUPPORT_KEY, &spin),
    );
    assert_eq!(
        (a.code(), b.status, c.code()),
        ("plugin_timeout", 200, "plugin_timeout")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_capped() {
    let toml = fixture("hog", "memory_mb = 8", "mode = \"hog\"\nmodel = \"hog\"");
    let gw = TestGateway::start(&["fixture"], &toml).await;
    let r = gw.chat(SUPPORT_KEY, &chat_body("hog", "x")).await;
    assert_eq!(r.status, 500, "{}", r.json);
    assert_eq!(r.code(), "plugin_memory_exceeded");
    assert!(r.message().contains("8 MiB"), "{}", r.message());
    assert_eq!(
        gw.chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "x"))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_plugin_is_skipped_and_the_rest_of_the_chain_still_runs() {
    let toml = format!(
        "{}{}",
        fixture("flaky", "on_error = \"allow\"", "mode = \"trap\""),
        MODEL_ALLOW
    );
    let gw = TestGateway::start(&["fixture", "model-allow"], &toml).await;
    let ok = gw.chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "x")).await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    // The plugin after the failed one still decides.
    let denied = gw.chat(SUPPORT_KEY, &chat_body("gpt-4o", "x")).await;
    assert_eq!((denied.status, denied.code()), (403, "model_not_allowed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_passes_on_text_with_per_call_state() {
    let gw = TestGateway::start(&["fixture"], &fixture("upper", "", "mode = \"upper\"")).await;
    let (status, events) = gw
        .chat_stream(SUPPORT_KEY, &chat_body("gpt-4o-mini", "stream me"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let reply = "Hello from mock-upstream (gpt-4o-mini). You said: stream me";
    let text = stream_text(&events);
    assert_eq!(
        text,
        format!("{} [{} chars]", reply.to_uppercase(), reply.len())
    );
    // The agent did not ask for usage: the chunk the gateway asked for is stripped.
    assert!(
        events.iter().all(|e| !e.contains("\"usage\":{")),
        "{events:?}"
    );
    let sent: Value = gw.mock.last_request().unwrap().json().unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);

    // Asked for: it is passed on, as the last chunk before [DONE].
    let mut body = chat_body("gpt-4o-mini", "count");
    body["stream_options"] = json!({"include_usage": true});
    let (_, events) = gw.chat_stream(SUPPORT_KEY, &body).await;
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(
        usage["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{usage}"
    );

    // Full answers pass on-response.
    let r = gw
        .chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "shout"))
        .await;
    assert_eq!(
        r.content(),
        "HELLO FROM MOCK-UPSTREAM (GPT-4O-MINI). YOU SAID: SHOUT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_cut_by_upstream_ends_with_an_error_event_and_no_done() {
    let gw = TestGateway::start(&["model-allow"], MODEL_ALLOW).await;
    let (status, events) = gw
        .chat_stream(
            SUPPORT_KEY,
            &chat_body("gpt-4o-mini", "tell me [mock:drop_after=3]"),
        )
        .await;
    assert_eq!(status, 200);
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_unavailable", "{last}");
    assert!(
        !stream_text(&events).is_empty(),
        "the content sent before the cut arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_become_gateway_errors() {
    let gw = TestGateway::start(&["model-allow"], MODEL_ALLOW).await;
    let r = gw
        .chat(
            SUPPORT_KEY,
            &chat_body("gpt-4o-mini", "x [mock:status=503]"),
        )
        .await;
    assert_eq!((r.status, r.code()), (502, "upstream_error"), "{}", r.json);
    assert!(r.message().contains("503"), "{}", r.message());
    let r = gw
        .chat(
            SUPPORT_KEY,
            &chat_body("gpt-4o-mini", "x [mock:status=429]"),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["type"].as_str()),
        (429, Some("rate_limit_error"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_openai_errors() {
    let gw = TestGateway::start(&["model-allow"], MODEL_ALLOW).await;
    let post = |key: Option<&'static str>, body: Bytes| {
        let gw = &gw;
        async move {
            let (s, h, b) = gw.request("POST", "/v1/chat/completions", key, body).await;
            assert!(h.contains_key("palisade-request-id"));
            (s, serde_json::from_slice::<Value>(&b).unwrap())
        }
    };
    let (s, j) = post(None, Bytes::from("{}")).await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (s, j) = post(Some("pk-nobody"), Bytes::from("{}")).await;
    assert_eq!(
        (s, j["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    let (s, j) = post(Some(SUPPORT_KEY), Bytes::from("{not json")).await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    let (s, j) = post(Some(SUPPORT_KEY), Bytes::from(r#"{"model":"gpt-4o-mini"}"#)).await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let big = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x".repeat(70_000)}]});
    let (s, j) = post(Some(SUPPORT_KEY), Bytes::from(big.to_string())).await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );
    let (s, _, b) = gw
        .request("GET", "/v1/nothing", Some(SUPPORT_KEY), Bytes::new())
        .await;
    assert_eq!(
        (
            s,
            serde_json::from_slice::<Value>(&b).unwrap()["error"]["code"].as_str()
        ),
        (404, Some("not_found"))
    );
    let (s, _, _) = gw
        .request(
            "GET",
            "/v1/chat/completions",
            Some(SUPPORT_KEY),
            Bytes::new(),
        )
        .await;
    assert_eq!(s, 405);
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_listed_for_agents_only() {
    let gw = TestGateway::start(&["model-allow"], MODEL_ALLOW).await;
    let (s, _, b) = gw
        .request("GET", "/v1/models", Some(SUPPORT_KEY), Bytes::new())
        .await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "gpt-4o-mini")
    );
    assert_eq!(
        gw.request("GET", "/v1/models", None, Bytes::new()).await.0,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_the_route_aliases_before_the_default_providers_models() {
    let routes = "[routes.fast]\ntargets = [\"mock/gpt-4o-mini\"]\n";
    let gw = TestGateway::start_full(common::Db::Sqlite, &[], "", false, routes).await;
    let (s, _, b) = gw
        .request("GET", "/v1/models", Some(SUPPORT_KEY), Bytes::new())
        .await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data[0]["id"], "fast", "{v}");
    assert_eq!(data[0]["owned_by"], "palisade");
    assert!(data.iter().any(|m| m["id"] == "gpt-4o-mini"), "{v}");
    // The alias works as a model.
    let r = gw.chat(SUPPORT_KEY, &chat_body("fast", "hello")).await;
    assert_eq!(r.status, 200, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_share_nothing_and_pooled_ones_are_reused_and_recycled() {
    let toml = format!(
        "{}{}",
        fixture("fresh", "", "mode = \"instance-count\"\nmodel = \"fresh\""),
        fixture(
            "pooled",
            "instances = \"pooled\"\nmax_calls = 3",
            "mode = \"instance-count\"\nmodel = \"pooled\""
        ),
    );
    let gw = TestGateway::start(&["fixture"], &toml).await;
    for _ in 0..3 {
        let r = gw.chat(SUPPORT_KEY, &chat_body("fresh", "n")).await;
        assert!(
            r.content().ends_with("n #1"),
            "fresh instance saw an earlier call: {}",
            r.content()
        );
    }
    // One pooled instance serves three calls, is recycled after max_calls = 3, and its
    // successor starts counting again.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = gw.chat(SUPPORT_KEY, &chat_body("pooled", "n")).await;
        seen.push(r.content().rsplit('#').next().unwrap().to_string());
    }
    assert_eq!(seen, ["1", "2", "3", "1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_status_shows_chain_and_version() {
    let gw = TestGateway::start(&["model-allow"], MODEL_ALLOW).await;
    let st = gw.status().await;
    let sha = palisade::plugins::loaded::sha256_hex(
        &std::fs::read(gw.dir.join("model-allow.wasm")).unwrap(),
    );
    assert_eq!(st["plugins"][0]["name"], "model-allow");
    assert_eq!(st["plugins"][0]["sha256"], sha);
    assert_eq!(st["plugins"][0]["hooks"], json!(["on-request"]));
    assert_eq!(st["policy_version"].as_str().unwrap().len(), 16);
    assert_eq!(st["reload"]["last_ok"], true);
}

/// Appends a Wasm custom section: a byte-different file with the same behaviour.
fn with_custom_section(wasm: &[u8], tag: &str) -> Vec<u8> {
    let mut payload = vec![tag.len() as u8];
    payload.extend_from_slice(tag.as_bytes());
    payload.extend_from_slice(b"palisade");
    let mut out = wasm.to_vec();
    out.push(0);
    out.push(payload.len() as u8);
    out.extend(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_swaps_the_chain_with_zero_failed_calls() {
    // A generous deadline: this test is about reloads, not deadlines, and a loaded CI machine
    // can delay a hook's thread past 20 ms of wall time.
    let v1 = fixture(
        "stamp",
        "deadline_ms = 1000",
        "mode = \"rewrite\"\nappend = \" v1\"",
    );
    let gw = std::sync::Arc::new(TestGateway::start_with(&["fixture"], &v1, true).await);
    let before = gw.status().await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (gw, stop) = (gw.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = gw
                    .chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", &format!("w{w}")))
                    .await;
                results.push((r.status, r.content().to_string()));
            }
            results
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Deploy: a new plugin file (different bytes) and a new config, each replaced atomically.
    let t = SystemTime::now();
    let bytes = std::fs::read(gw.dir.join("fixture.wasm")).unwrap();
    write_atomic(
        &gw.dir.join("fixture.wasm"),
        &with_custom_section(&bytes, "v2"),
    );
    gw.rewrite_config(&fixture(
        "stamp",
        "deadline_ms = 1000",
        "mode = \"rewrite\"\nappend = \" v2\"",
    ));
    let mut st = gw.wait_reload(t).await;
    // The two writes may land as one reload or two; wait for the one that saw both.
    for _ in 0..40 {
        if gw.status().await["plugins"][0]["sha256"] != before["plugins"][0]["sha256"]
            && gw
                .chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "probe"))
                .await
                .content()
                .ends_with("v2")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        st = gw.gw.policy.status();
    }
    assert!(st.last_ok, "{:?}", st.last_error);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    assert!(all.len() > 20, "load ran: {} calls", all.len());
    let failed: Vec<_> = all.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "calls failed during reload: {failed:?}");
    assert!(
        all.iter().any(|(_, c)| c.ends_with(" v1")),
        "calls before the swap ran v1"
    );
    assert!(
        all.iter().any(|(_, c)| c.ends_with(" v2")),
        "calls after the swap ran v2"
    );
    // Per worker, once v2 answers, v1 never answers again (no flapping between chains).
    let after = gw.status().await;
    assert_ne!(after["policy_version"], before["policy_version"]);
    assert_ne!(
        after["plugins"][0]["sha256"],
        before["plugins"][0]["sha256"]
    );
    assert!(after["reload"]["generation"].as_u64().unwrap() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reloads_keep_the_old_chain_running() {
    let gw = TestGateway::start_with(&["model-allow", "wrong-world"], MODEL_ALLOW, true).await;
    let version = gw.status().await["policy_version"].clone();
    let plugin = gw.dir.join("model-allow.wasm");
    let good = std::fs::read(&plugin).unwrap();

    // 1. A corrupt .wasm dropped in.
    let t = SystemTime::now();
    write_atomic(&plugin, b"\0asm this is not a component");
    let st = gw.wait_reload(t).await;
    assert!(!st.last_ok);
    let err = st.last_error.unwrap();
    assert!(
        err.contains("model-allow") && err.contains("not a valid Wasm component"),
        "{err}"
    );
    let r = gw.chat(SUPPORT_KEY, &chat_body("gpt-4o", "x")).await;
    assert_eq!(r.code(), "model_not_allowed", "the old chain still decides");
    let status = gw.status().await;
    assert_eq!(status["policy_version"], version);
    assert_eq!(status["reload"]["last_ok"], false);

    // 2. A component of another world.
    let t = SystemTime::now();
    write_atomic(
        &plugin,
        &std::fs::read(gw.dir.join("wrong-world.wasm")).unwrap(),
    );
    let err = gw.wait_reload(t).await.last_error.unwrap();
    assert!(
        err.contains("does not fit the palisade:policy/plugin world"),
        "{err}"
    );

    // 3. Good bytes back, but a config its init refuses.
    let t = SystemTime::now();
    write_atomic(&plugin, &good);
    gw.rewrite_config(&MODEL_ALLOW.replace("default =", "defualt ="));
    let mut st = gw.wait_reload(t).await;
    for _ in 0..40 {
        if st
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("init failed"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        st = gw.gw.policy.status();
    }
    let err = st.last_error.unwrap();
    assert!(
        err.contains("init failed") && err.contains("defualt"),
        "{err}"
    );

    // 4. TOML that does not parse.
    let t = SystemTime::now();
    write_atomic(&gw.config_path(), b"[[plugins]\nname=");
    let err = gw.wait_reload(t).await.last_error.unwrap();
    assert!(err.contains("is not valid"), "{err}");
    assert_eq!(
        gw.chat(SUPPORT_KEY, &chat_body("gpt-4o", "x")).await.code(),
        "model_not_allowed"
    );
    assert_eq!(
        gw.chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "x"))
            .await
            .status,
        200
    );
    assert_eq!(gw.status().await["policy_version"], version);

    // 5. A good config again is taken.
    let t = SystemTime::now();
    gw.rewrite_config(&MODEL_ALLOW.replace("[\"gpt-4o-mini\"]", "[\"gpt-4o-mini\", \"gpt-4o\"]"));
    let st = gw.wait_reload(t).await;
    assert!(st.last_ok, "{:?}", st.last_error);
    assert_eq!(
        gw.chat(SUPPORT_KEY, &chat_body("gpt-4o", "x")).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_a_broken_plugin_with_a_clear_error() {
    let dir = temp_dir("start");
    std::fs::write(dir.join("bad.wasm"), b"garbage").unwrap();
    let cfg = dir.join("palisade.toml");
    let toml = "[[plugins]]\nname = \"bad\"\npath = \"bad.wasm\"\n";
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
        .expect("a garbage plugin must not load");
    assert!(err.to_string().contains("plugin 'bad'"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_plugins_are_cached_on_disk() {
    let gw = TestGateway::start(&["model-allow"], MODEL_ALLOW).await;
    let cached: Vec<_> = std::fs::read_dir(gw.dir.join("cache"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(cached.len(), 1);
    let name = cached[0].file_name().to_string_lossy().to_string();
    let sha = palisade::plugins::loaded::sha256_hex(
        &std::fs::read(gw.dir.join("model-allow.wasm")).unwrap(),
    );
    assert!(name.starts_with(&sha) && name.ends_with(".cwasm"), "{name}");
    // A second gateway on the same folder loads from the cache and works.
    let cfg = gw.config_path();
    let p2 = palisade::plugins::Policy::start(&cfg, Default::default(), Default::default())
        .await
        .unwrap();
    assert_eq!(
        p2.current().chain.version,
        gw.status().await["policy_version"]
    );
}

/// Issue 15: a plugin touches only its own reservations. Behind `budget` (which holds this
/// call's reservation), a plugin that tries every small reservation id settles none of them,
/// a scope with a control character is refused, and its own reservation settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_settles_only_its_own_reservations() {
    let toml = format!(
        "[[plugins]]\nname = \"budget\"\npath = \"budget.wasm\"\n\
         [plugins.config.defaults.agent]\nmicro_usd = {{ day = 100000000 }}\n{}",
        fixture("abuser", "", "mode = \"ledger-abuse\"")
    );
    let prices = "[prices.\"mock/gpt-4o-mini\"]\ninput_per_mtok = 10.0\noutput_per_mtok = 100.0\n";
    let gw =
        TestGateway::start_full(Db::Sqlite, &["budget", "fixture"], &toml, false, prices).await;
    // Other calls leave settled and open reservations with small ids behind.
    for _ in 0..3 {
        gw.chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "warm"))
            .await;
    }
    let r = gw
        .chat(SUPPORT_KEY, &chat_body("gpt-4o-mini", "abuse"))
        .await;
    assert_eq!(r.code(), "fixture_ledger", "{:?}", r.json);
    assert_eq!(
        r.message(),
        "bad_scope_refused=true foreign_settled=0 own_settled=true",
        "{:?}",
        r.json
    );
}
