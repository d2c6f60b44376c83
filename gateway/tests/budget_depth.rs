//! Budgets and delegation depth, end to end: the signed `palisade-chain` token, the `depth` and
//! `budget` plugins as compiled components, and the store's ledger on SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use common::*;
use palisade_store::{Unit, Window};
use serde_json::{Value, json};

const A_KEY: &str = "pk-test-agent-a";
const B_KEY: &str = "pk-test-agent-b";
const C_KEY: &str = "pk-test-agent-c";
const WORKER_KEY: &str = "pk-test-worker";

/// Three agents that call each other, and one that only ever acts for another.
fn agents() -> String {
    format!(
        r#"
[[agents]]
id = "agent-a"
team = "loop"
key = "{A_KEY}"

[[agents]]
id = "agent-b"
team = "loop"
key = "{B_KEY}"

[[agents]]
id = "agent-c"
team = "loop"
key = "{C_KEY}"

[[agents]]
id = "worker"
team = "loop"
require_chain = true
key = "{WORKER_KEY}"
"#
    )
}

/// Prices that make a call's worst case (100 output tokens) about 10 000 micro-USD.
const PRICES: &str = r#"
[prices."mock/gpt-4o-mini"]
input_per_mtok = 10.0
output_per_mtok = 100.0
"#;

fn depth(config: &str) -> String {
    format!("[[plugins]]\nname = \"depth\"\npath = \"depth.wasm\"\n[plugins.config]\n{config}\n")
}

/// The budget plugin, with a raised deadline so these tests are about budgets; the default
/// 20 ms under a burst is `a_burst_through_the_governed_chain_has_no_plugin_timeout`.
fn budget(config: &str) -> String {
    format!(
        "[[plugins]]\nname = \"budget\"\npath = \"budget.wasm\"\ndeadline_ms = 1000\n[plugins.config]\n{config}\n"
    )
}

fn body(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "max_tokens": 100,
           "messages": [{"role": "user", "content": text}]})
}

fn chain_of(r: &Reply) -> Option<String> {
    r.headers
        .get("palisade-chain")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// One agent's turn: call the gateway with its own key, forwarding the token it was given.
async fn agent(gw: &TestGateway, key: &str, chain: Option<&str>, task: &str) -> Reply {
    let headers: Vec<(&str, &str)> = chain.map(|c| ("palisade-chain", c)).into_iter().collect();
    gw.chat_with(key, &body(task), &headers).await
}

async fn agent_a(gw: &TestGateway, chain: Option<&str>) -> Reply {
    agent(gw, A_KEY, chain, "A: plan the work, ask B").await
}
async fn agent_b(gw: &TestGateway, chain: Option<&str>) -> Reply {
    agent(gw, B_KEY, chain, "B: research, ask C").await
}
async fn agent_c(gw: &TestGateway, chain: Option<&str>) -> Reply {
    agent(gw, C_KEY, chain, "C: check, ask A again").await
}

fn run_id(gw: &TestGateway, token: &str) -> String {
    let rt = gw.gw.policy.current();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    gw.gw
        .chain_keys(&rt)
        .verify(token, now)
        .expect("the gateway's own token verifies")
        .run_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_loop_is_stopped_at_the_configured_depth_within_the_run_cap() {
    let plugins = format!(
        "{}\n{}\n{}",
        agents(),
        depth("max_depth = 3\nmax_repeats = 5"),
        budget("[plugins.config.defaults.run]\nmicro_usd = { total = 1000000 }")
    );
    let gw =
        TestGateway::start_full(Db::Sqlite, &["depth", "budget"], &plugins, false, PRICES).await;
    let mut chain: Option<String> = None;
    let mut hops = Vec::new();
    // A → B → C → A → ...: each forwards the token it got back.
    for turn in 0..6 {
        let r = match turn % 3 {
            0 => agent_a(&gw, chain.as_deref()).await,
            1 => agent_b(&gw, chain.as_deref()).await,
            _ => agent_c(&gw, chain.as_deref()).await,
        };
        hops.push(r.status);
        if r.status != 200 {
            assert_eq!(r.status, 429, "{}", r.json);
            assert_eq!(r.code(), "delegation_limit");
            assert_eq!(r.json["error"]["plugin"], "depth");
            assert!(
                r.message()
                    .contains("agent-a → agent-b → agent-c → agent-a"),
                "{}",
                r.message()
            );
            // Even a refusal carries the extended chain back.
            assert!(chain_of(&r).is_some(), "the error carries the chain token");
            break;
        }
        chain = Some(chain_of(&r).expect("every answer carries palisade-chain"));
    }
    assert_eq!(hops, [200, 200, 200, 429], "stopped at depth 4 > 3");
    assert_eq!(
        gw.mock.requests().len(),
        3,
        "the looping call never went upstream"
    );

    // The whole run was charged to one run scope, under its cap.
    let run = run_id(&gw, chain.as_deref().unwrap());
    let spent = store_spent(&gw, &format!("run:{run}"), Unit::MicroUsd, Window::Total).await;
    assert!(spent > 0 && spent <= 1_000_000, "run spend {spent}");

    // The run's delegation tree: A called B called C called A, which was refused.
    let mut tree = serde_json::Value::Null;
    for _ in 0..50 {
        let (s, v) = gw
            .admin(
                "GET",
                &format!("/admin/api/spend/runs/{run}"),
                ADMIN_TOKEN,
                serde_json::Value::Null,
            )
            .await;
        if s == 200 && v["calls"] == 4 {
            tree = v;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let a = &tree["tree"][0];
    assert_eq!(a["agent"], "agent-a", "{tree}");
    let b = &a["children"][0];
    let c = &b["children"][0];
    let a2 = &c["children"][0];
    assert_eq!(
        (
            b["agent"].as_str(),
            c["agent"].as_str(),
            a2["agent"].as_str()
        ),
        (Some("agent-b"), Some("agent-c"), Some("agent-a")),
        "{tree}"
    );
    assert_eq!(
        (a2["calls"].as_u64(), a2["denied"].as_u64()),
        (Some(1), Some(1)),
        "{tree}"
    );
    assert!(a2["children"].as_array().unwrap().is_empty());
    assert_eq!(
        tree["cost_micro_usd"].as_i64(),
        Some(spent as i64),
        "{tree}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_missing_chains_are_refused() {
    let plugins = format!("{}\n{}", agents(), depth("max_depth = 5"));
    let gw = TestGateway::start_full(
        Db::Sqlite,
        &["depth"],
        &plugins,
        false,
        "[audit]\ndurability = \"sync\"\n",
    )
    .await;
    let first = agent_a(&gw, None).await;
    assert_eq!(first.status, 200, "{}", first.json);
    let token = chain_of(&first).unwrap();

    // Genuine: accepted and extended.
    let ok = agent_b(&gw, Some(&token)).await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    assert_eq!(run_id(&gw, &chain_of(&ok).unwrap()), run_id(&gw, &token));

    // Forged: a payload naming another root, with the old signature.
    let (payload, sig) = token.split_once('.').unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(payload).unwrap()).unwrap();
    claims["agents"] = json!(["admin-bot"]);
    let forged = format!("{}.{sig}", b64.encode(claims.to_string()));
    let r = agent_b(&gw, Some(&forged)).await;
    assert_eq!((r.status, r.code()), (400, "chain_invalid"), "{}", r.json);
    assert_eq!(r.json["error"]["type"], "invalid_request_error");

    // Truncated.
    let r = agent_b(&gw, Some(&token[..token.len() - 4])).await;
    assert_eq!((r.status, r.code()), (400, "chain_invalid"), "{}", r.json);

    // Expired: a genuine token issued two hours ago, replayed.
    let rt = gw.gw.policy.current();
    let old = palisade::chain::Chain::start("run_old".into(), "agent-a", 1);
    let stale = gw.gw.chain_keys(&rt).sign(&old);
    let r = agent_b(&gw, Some(&stale)).await;
    assert_eq!((r.status, r.code()), (400, "chain_expired"), "{}", r.json);

    // An agent that requires a chain, calling without one; then within one.
    let r = gw.chat_with(WORKER_KEY, &body("hi"), &[]).await;
    assert_eq!((r.status, r.code()), (400, "chain_required"), "{}", r.json);
    assert!(r.message().contains("worker"), "{}", r.message());
    let r = gw
        .chat_with(WORKER_KEY, &body("hi"), &[("palisade-chain", &token)])
        .await;
    assert_eq!(r.status, 200, "{}", r.json);

    // The audit has the run and the chain of each call.
    let (s, _, bytes) = gw
        .request(
            "GET",
            "/admin/api/audit/export?agent=worker&format=jsonl",
            Some(ADMIN_TOKEN),
            bytes::Bytes::new(),
        )
        .await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert_eq!(s, 200, "{text}");
    assert!(text.contains(&run_id(&gw, &token)), "{text}");
    assert!(text.contains(r#"["agent-a","worker"]"#), "{text}");
    assert!(text.contains("chain_required"), "{text}");
}

async fn concurrent_calls_stay_under_the_cap(db: Db) {
    // Worst case of a call: ~40 input tokens at 10 $/Mtok + 100 output at 100 $/Mtok.
    let worst = {
        let r =
            palisade::call::request::parse_chat(body("task 00").to_string().as_bytes()).unwrap();
        u64::from(r.input_tokens) * 10 + 100 * 100
    };
    let cap = worst * 10;
    let plugins = format!(
        "{}\n{}",
        agents(),
        budget(&format!(
            "[plugins.config.agents.agent-a]\nmicro_usd = {{ day = {cap} }}"
        ))
    );
    let first = TestGateway::start_full(db, &["budget"], &plugins, false, PRICES).await;
    // A second replica on the same database.
    let second = TestGateway::start_on(&first.database, &["budget"], &plugins, PRICES).await;
    let calls = (0..100).map(|i| {
        let gw = if i % 2 == 0 { &first } else { &second };
        async move { gw.chat(A_KEY, &body(&format!("task {i:02}"))).await }
    });
    let replies = futures_util::future::join_all(calls).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let denied: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    let other: Vec<&Value> = replies
        .iter()
        .filter(|r| r.status != 200 && r.status != 429)
        .map(|r| &r.json)
        .collect();
    assert!(other.is_empty(), "only 200s and 429s: {other:?}");
    assert!(
        ok >= 10,
        "the budget covers at least 10 calls, {ok} went through"
    );
    assert!(!denied.is_empty(), "100 calls cost more than the cap");
    let d = denied[0];
    assert_eq!(d.code(), "budget_exceeded");
    assert!(d.message().contains("agent:agent-a"), "{}", d.message());
    assert!(
        d.message().contains(&format!("limit {cap}")),
        "{}",
        d.message()
    );
    // Both replicas' settled spend commits with their audit batches.
    store_spent(&second, "agent:agent-a", Unit::MicroUsd, Window::Day).await;
    let spent = store_spent(&first, "agent:agent-a", Unit::MicroUsd, Window::Day).await;
    assert!(spent > 0, "calls were charged");
    eprintln!("{db:?}: {ok} calls went through, spent {spent} of {cap}");
    assert!(spent <= cap, "spent {spent} passed the cap {cap}");

    // The spend view shows the same counter, from either replica.
    let (s, view) = second
        .admin(
            "GET",
            "/admin/api/spend?window=day&scope=agent%3Aagent-a",
            ADMIN_TOKEN,
            Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{view}");
    let counters = view["counters"].as_array().unwrap();
    assert_eq!(counters.len(), 1, "{view}");
    assert_eq!(counters[0]["scope"], "agent:agent-a");
    assert_eq!(counters[0]["unit"], "micro_usd");
    assert_eq!(counters[0]["spent"], json!(spent));

    // Denials are audited with the scope that tripped.
    let (s, _, bytes) = first
        .request(
            "GET",
            "/admin/api/audit/export?agent=agent-a&status=429&format=jsonl",
            Some(ADMIN_TOKEN),
            bytes::Bytes::new(),
        )
        .await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert_eq!(s, 200, "{text}");
    assert_eq!(text.lines().count(), denied.len(), "{text}");
    assert!(text.contains("budget.scope"), "{text}");
    assert!(text.contains("budget_exceeded"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_stay_under_the_cap_sqlite() {
    concurrent_calls_stay_under_the_cap(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_stay_under_the_cap_postgres_two_replicas() {
    concurrent_calls_stay_under_the_cap(Db::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_is_charged_for_what_was_streamed() {
    let plugins = format!(
        "{}\n{}",
        agents(),
        budget("[plugins.config.defaults.agent]\nmicro_usd = { day = 10000000 }")
    );
    let gw = TestGateway::start_full(Db::Sqlite, &["budget"], &plugins, false, PRICES).await;
    let (status, events) = gw
        .chat_stream(
            B_KEY,
            &body("[mock:drop_after=3] tell me a rather long story please"),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        events.iter().any(|e| e.contains("\"error\"")),
        "the cut stream ends with an error event: {events:?}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"));
    let spent = store_spent(&gw, "agent:agent-b", Unit::MicroUsd, Window::Day).await;
    // Three words went out: a handful of output tokens plus the input, well under the worst case.
    assert!(spent > 0, "the cut stream was charged");
    assert!(
        spent < 100 * 100,
        "charged {spent}, more than what was streamed"
    );
}

/// A stream reserved for an estimate (`stream_reserve_output_tokens`) that outruns its budget
/// is cut with a `budget_exceeded` error event before the spend passes the cap, and is charged
/// for what went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outrunning_its_budget_is_cut_at_the_cap() {
    const CAP: u64 = 4_000;
    let plugins = format!(
        "{}\n{}",
        agents(),
        budget(&format!(
            "[plugins.config.defaults.agent]\nmicro_usd = {{ day = {CAP} }}"
        ))
    );
    let extra = format!("{PRICES}\nplugin_host.stream_reserve_output_tokens = 5\n");
    let gw = TestGateway::start_full(Db::Sqlite, &["budget"], &plugins, false, &extra).await;
    // The mock echoes the prompt: about 150 output tokens at 100 micro-USD each, far past the cap;
    // the worst case of `max_tokens` 1000 would be refused before the call.
    let story = "once upon a time there was a gateway that watched every token go by ".repeat(8);
    let mut req = body(&story);
    req["max_tokens"] = json!(1000);
    let (status, events) = gw.chat_stream(B_KEY, &req).await;
    assert_eq!(status, 200, "the estimate fits the budget: {events:?}");
    let last = events.last().expect("some events");
    assert!(
        last.contains("budget_exceeded") && last.contains("agent:agent-b"),
        "the stream ends with a budget error naming the scope: {events:?}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"));
    let streamed: usize = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::len)
        })
        .sum();
    assert!(streamed > 20, "a good part of the answer went out first");
    let spent = store_spent(&gw, "agent:agent-b", Unit::MicroUsd, Window::Day).await;
    assert!(spent <= CAP, "spend {spent} passed the cap {CAP}");
    // Charged for what was streamed: its output tokens at 100 micro-USD each, plus the input.
    let output_cost = (streamed as u64).div_ceil(4) * 100;
    assert!(
        spent >= output_cost,
        "charged {spent}, less than the {output_cost} of the streamed output"
    );
    // The next call finds the budget spent.
    let (status, ev) = gw.chat_stream(B_KEY, &body("again")).await;
    assert_eq!(status, 429, "spent {spent}: {ev:?}");
}

/// `max_calls_per_run` counts a run's calls in the shared ledger (so replicas on one database
/// count together): A and B take turns in one run on PostgreSQL until the run's limit stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_per_run_are_counted_in_the_shared_ledger() {
    let plugins = format!(
        "{}\n{}",
        agents(),
        depth("max_depth = 50\nmax_repeats = 50\nmax_calls_per_run = 3")
    );
    let gw = TestGateway::start_full(Db::Postgres, &["depth"], &plugins, false, PRICES).await;
    let first = agent_a(&gw, None).await;
    assert_eq!(first.status, 200, "{:?}", first.json);
    let mut token = chain_of(&first).expect("a chain token");
    let run = run_id(&gw, &token);
    for turn in 2..=3 {
        let r = if turn % 2 == 0 {
            agent_b(&gw, Some(&token)).await
        } else {
            agent_a(&gw, Some(&token)).await
        };
        assert_eq!(r.status, 200, "call {turn}: {:?}", r.json);
        token = chain_of(&r).expect("an extended token");
    }
    let fourth = agent_b(&gw, Some(&token)).await;
    assert_eq!(fourth.status, 429, "{:?}", fourth.json);
    assert_eq!(fourth.json["error"]["code"], "delegation_limit");
    let msg = fourth.json["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("4 calls") && msg.contains(&run), "{msg}");
    let counted = store_spent(
        &gw,
        &format!("calls:run:{run}"),
        Unit::Tokens,
        Window::Total,
    )
    .await;
    assert_eq!(counted, 3, "the three calls let through are in the ledger");
    // Another run is not affected.
    assert_eq!(agent_a(&gw, None).await.status, 200);
}

/// Issue 15: budgets set through the admin API are enforced. An agent created with
/// `usd.day = 0.015` (one and a half calls' worst case) is stopped at its cap although the config's
/// default allows $5 a day, with no edit of `palisade.toml`; an entry that is not limits
/// fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_set_through_the_api_are_enforced() {
    let plugins = format!(
        "{}\n{}",
        agents(),
        budget("[plugins.config.defaults.agent]\nusd = { day = 5.0 }")
    );
    let gw = TestGateway::start_full(Db::Sqlite, &["budget"], &plugins, false, PRICES).await;
    let (s, v) = gw
        .admin(
            "POST",
            "/admin/api/agents",
            ADMIN_TOKEN,
            json!({"id": "thrifty-bot", "owner": "dana@example.com", "team": "ops",
                   "budgets": {"usd": {"day": 0.015}}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let key = v["key"]["secret"].as_str().unwrap().to_string();
    let mut served = 0;
    let mut refused = None;
    for i in 0..20 {
        let r = gw.chat(&key, &body(&format!("call {i}"))).await;
        match r.status {
            200 => served += 1,
            _ => {
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.expect("the API-set cap stops the agent");
    assert_eq!(refused.status, 429, "{:?}", refused.json);
    assert_eq!(refused.code(), "budget_exceeded");
    assert!(
        refused.message().contains("agent:thrifty-bot"),
        "{}",
        refused.message()
    );
    assert!(
        (1..20).contains(&served),
        "served {served} calls under a $0.015 cap"
    );

    // A registry entry that is not limits is refused, not ignored.
    let (s, v) = gw
        .admin(
            "PATCH",
            "/admin/api/agents/thrifty-bot",
            ADMIN_TOKEN,
            json!({"budgets": {"usd": {"fortnight": 1.0}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let r = gw.chat(&key, &body("again")).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "budget_invalid"),
        "{:?}",
        r.json
    );
}

/// Issue 15: a burst of 500 concurrent calls through model-allow, depth and budget, each at the
/// default 20 ms deadline, twice, on two worker threads. Waiting for a worker thread after an
/// epoch yield is not the plugin's work, so no call fails with `plugin_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_through_the_governed_chain_has_no_plugin_timeout() {
    let plugins = format!(
        r#"{}
[[plugins]]
name = "model-allow"
path = "model-allow.wasm"
deadline_ms = 20
[plugins.config]
default = ["gpt-4o-mini"]

[[plugins]]
name = "depth"
path = "depth.wasm"
deadline_ms = 20
[plugins.config]
max_depth = 5

[[plugins]]
name = "budget"
path = "budget.wasm"
deadline_ms = 20
[plugins.config.defaults.agent]
micro_usd = {{ day = 100000000000 }}
"#,
        agents()
    );
    // Up to three instances per call in flight.
    let extra = format!("plugin_host.max_instances = 2000\n{PRICES}");
    let names = ["model-allow", "depth", "budget"];
    let gw = TestGateway::start_full(Db::Sqlite, &names, &plugins, false, &extra).await;
    let keys = [A_KEY, B_KEY, C_KEY];
    let (mut ok, mut timeouts, mut other) = (0, Vec::new(), Vec::new());
    for round in 0..2 {
        let calls = (0..500).map(|i| {
            let gw = &gw;
            async move {
                gw.chat(keys[i % 3], &body(&format!("burst {round} {i}")))
                    .await
            }
        });
        for r in futures_util::future::join_all(calls).await {
            match (r.status, r.code()) {
                (200, _) => ok += 1,
                (_, "plugin_timeout") => timeouts.push(r.json),
                _ => other.push(r.json),
            }
        }
    }
    assert!(
        timeouts.is_empty(),
        "{} of 1000 calls hit plugin_timeout, e.g. {}",
        timeouts.len(),
        timeouts[0]
    );
    assert!(
        other.is_empty(),
        "{} failed: {:?}",
        other.len(),
        other.first()
    );
    assert_eq!(ok, 1000);
}

/// Spend of `scope` today, once the call's settlement has landed.
async fn settled_spend(gw: &TestGateway, scope: &str) -> u64 {
    store_spent(gw, scope, Unit::MicroUsd, Window::Day).await
}

/// What the store says `scope` spent once every call has ended and the audit batches (which
/// carry the replica's settled spend) are committed.
async fn store_spent(gw: &TestGateway, scope: &str, unit: Unit, window: Window) -> u64 {
    assert!(gw.gw.drain.wait_idle(Duration::from_secs(10)).await);
    gw.gw.audit.flush().await.expect("audit flush");
    gw.gw.store.spent(scope, unit, window).await.unwrap()
}

/// Issue 15: the reservation counts the whole request. Under a cap a plain call fits (worst
/// case about 10 000 micro-USD), `"n": 64` and a 10 k-token tools array are refused before they
/// reach the provider; and a provider that sends no usage still gets its calls charged, from the
/// input estimate and the answer, flagged `usage=estimated` in the audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_request_is_reserved_and_missing_usage_is_charged() {
    let plugins = format!(
        "{}\n{}",
        agents(),
        budget(
            "[plugins.config.agents.agent-a]\nmicro_usd = { day = 50000 }\n\
             [plugins.config.agents.agent-b]\nmicro_usd = { day = 100000000 }"
        )
    );
    let gw = TestGateway::start_full(Db::Sqlite, &["budget"], &plugins, false, PRICES).await;

    let mut many = body("write me a poem");
    many["n"] = json!(64);
    let r = gw.chat(A_KEY, &many).await;
    assert_eq!((r.status, r.code()), (429, "budget_exceeded"), "{}", r.json);

    let schema = json!({"type": "object", "properties": {"q": {"type": "string",
        "description": "d".repeat(40_000)}}});
    let mut tooled = body("use the tool");
    tooled["tools"] = json!([{"type": "function",
        "function": {"name": "search", "parameters": schema}}]);
    let r = gw.chat(A_KEY, &tooled).await;
    assert_eq!((r.status, r.code()), (429, "budget_exceeded"), "{}", r.json);
    assert!(gw.mock.requests().is_empty(), "refused before the provider");

    let r = gw.chat(A_KEY, &body("write me a poem")).await;
    assert_eq!(r.status, 200, "the plain call fits the cap: {}", r.json);

    // No usage from the provider: a full answer, then a stream.
    let r = gw.chat(B_KEY, &body("[mock:no_usage=1] say hello")).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert!(r.json.get("usage").is_none(), "{}", r.json);
    let full = settled_spend(&gw, "agent:agent-b").await;
    // Input (a handful of tokens at 10) plus the echoed answer (~15 tokens at 100).
    assert!(full > 1000, "a call without usage was charged {full}");

    let mut streamed = body("[mock:no_usage=1] say hello again");
    streamed["stream"] = json!(true);
    let (status, events) = gw.chat_stream(B_KEY, &streamed).await;
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut both = full;
    for _ in 0..50 {
        both = settled_spend(&gw, "agent:agent-b").await;
        if both > full {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        both > full + 1000,
        "a stream without usage was charged {}",
        both - full
    );

    gw.gw.audit.flush().await.expect("audit flushed");
    let (s, _, bytes) = gw
        .request(
            "GET",
            "/admin/api/audit/export?agent=agent-b&format=jsonl",
            Some(ADMIN_TOKEN),
            bytes::Bytes::new(),
        )
        .await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert_eq!(s, 200, "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    for line in text.lines() {
        assert!(
            line.contains("palisade.usage") && line.contains("estimated"),
            "{line}"
        );
    }
}
