//! Issue 15: budgets at memory speed, exact to the cent. The replica's leased ledger on a real
//! SQLite file and a real PostgreSQL: calls admitted in memory and committed exactly, the last
//! slice before a limit reserved one call at a time, a dead replica's leases expiring, a live
//! replica's holds renewed past the TTL (a long stream is charged in full), two `palisade serve`
//! processes racing on one database without overspending, and a property test of random
//! reserve / settle / release / sync / expire across two replicas against a reference model.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::TryStreamExt;
use palisade::plugins::bindings::{Amount, ReserveError, Unit, Window};
use palisade::plugins::ledger::Leased;
use palisade_store::{AuditFilter, Store};
use proptest::prelude::*;

const TTL: Duration = Duration::from_secs(60);

async fn store(db: Db, tag: &str) -> (Store, String) {
    let dir = temp_dir(tag);
    let url = database_url(db, &dir).await;
    (Store::connect(&url).await.expect("store"), url)
}

/// A micro-USD amount over all time (tests that move the clock must not cross a day).
fn usd(scope: &str, amount: u64, limit: u64) -> Amount {
    Amount {
        scope: scope.into(),
        unit: Unit::MicroUsd,
        window: Window::Total,
        amount,
        limit,
    }
}

/// (spent, reserved) of a scope's micro-USD total counter in the store.
async fn counter(store: &Store, scope: &str) -> (u64, u64) {
    counter_in(store, scope, palisade_store::Window::Total).await
}

async fn counter_in(store: &Store, scope: &str, window: palisade_store::Window) -> (u64, u64) {
    let rows = store.spend(window, scope).await.expect("spend");
    rows.iter()
        .find(|s| s.scope == scope && s.unit == palisade_store::Unit::MicroUsd)
        .map_or((0, 0), |s| (s.spent, s.reserved))
}

macro_rules! on_both {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body(Db::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body(Db::Postgres).await;
            }
        }
    };
}

/// A thousand calls of three scopes each are admitted and settled with a handful of store
/// transactions, and once synced the store holds exactly what they cost.
async fn calls_are_admitted_in_memory_and_committed_exactly(db: Db) {
    let (store, _) = store(db, "lease-exact").await;
    let l = Arc::new(Leased::new(store.clone(), TTL));
    let mut total = 0;
    for i in 0..1000u64 {
        let amounts = [
            usd("agent:a", 500, 1_000_000_000),
            usd("team:t", 500, 1_000_000_000),
            usd("run:r", 500, 1_000_000_000),
        ];
        let id = l.reserve(&amounts).await.expect("reserve");
        let cost = 100 + i % 300;
        l.settle(id, cost, 0).await.expect("settle");
        total += cost;
    }
    assert!(
        l.syncs() <= 12,
        "lease growth ran {} store transactions for 1000 calls",
        l.syncs()
    );
    assert_eq!(l.overruns(), 0);
    // Before the sync the store has not seen the spend, but `spent` counts this replica's own.
    let spent = l
        .spent("agent:a", Unit::MicroUsd, Window::Total)
        .await
        .expect("spent");
    assert_eq!(spent, total);
    l.sync().await.expect("sync");
    for scope in ["agent:a", "team:t", "run:r"] {
        let (spent, reserved) = counter(&store, scope).await;
        assert_eq!(spent, total, "{scope}");
        assert!(reserved > 0, "{scope}: the lease is still held");
    }
    l.close().await.expect("close");
    for scope in ["agent:a", "team:t", "run:r"] {
        assert_eq!(counter(&store, scope).await, (total, 0), "{scope}");
    }
}
on_both!(
    admitted_in_memory_committed_exactly,
    calls_are_admitted_in_memory_and_committed_exactly
);

/// Near the limit the ledger is exact: a $0.01 cap admits exactly 100 calls of 100 micro-USD
/// and refuses the 101st, naming the limit.
async fn the_last_slice_is_exact(db: Db) {
    let (store, _) = store(db, "lease-slice").await;
    let l = Arc::new(Leased::new(store.clone(), TTL));
    let mut admitted = 0;
    let refusal = loop {
        match l.reserve(&[usd("agent:a", 100, 10_000)]).await {
            Ok(id) => {
                l.settle(id, 100, 0).await.expect("settle");
                admitted += 1;
                assert!(admitted <= 100, "admitted past the cap");
            }
            Err(e) => break e,
        }
    };
    assert_eq!(admitted, 100);
    match refusal {
        ReserveError::Exceeded(e) => {
            assert_eq!((e.scope.as_str(), e.limit), ("agent:a", 10_000));
            assert_eq!(e.spent + e.reserved, 10_000, "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    l.close().await.expect("close");
    assert_eq!(counter(&store, "agent:a").await, (10_000, 0));
}
on_both!(last_slice_is_exact, the_last_slice_is_exact);

/// A replica that dies holding leases (and a direct reservation) loses them to the expiry
/// sweep once their TTL runs out; the spend it committed stays. A live replica renews its own,
/// so its long call is still held after the TTL and charged in full when it ends.
async fn dead_replicas_expire_live_ones_renew(db: Db) {
    let (store, _) = store(db, "lease-expiry").await;
    let ttl = Duration::from_secs(30);
    let dead = Arc::new(Leased::new(store.clone(), ttl));
    let id = dead
        .reserve(&[usd("agent:dead", 1_000, 1_000_000)])
        .await
        .unwrap();
    dead.settle(id, 700, 0).await.unwrap();
    dead.sync().await.unwrap();
    let _held = dead
        .reserve(&[usd("agent:dead", 1_000, 1_000_000)])
        .await
        .unwrap();
    // Near its limit a call reserves directly in the store.
    let _direct = dead.reserve(&[usd("agent:tight", 90, 100)]).await.unwrap();
    drop(dead);
    let (spent, reserved) = counter(&store, "agent:dead").await;
    assert_eq!(spent, 700);
    assert!(reserved > 0);

    let live = Arc::new(Leased::new(store.clone(), ttl));
    let long = live
        .reserve(&[usd("agent:live", 5_000, 1_000_000)])
        .await
        .unwrap();
    let long_direct = live.reserve(&[usd("agent:near", 95, 100)]).await.unwrap();
    // Ten TTLs later; the live replica's renewal ran before the sweep.
    live.skew_clock(ttl * 10);
    live.sync().await.expect("renew");
    let swept = store
        .expire_reservations_at(live.now_ms())
        .await
        .expect("sweep");
    assert_eq!(
        swept, 2,
        "the dead replica's lease and its direct reservation"
    );
    assert_eq!(counter(&store, "agent:dead").await, (700, 0));
    assert_eq!(counter(&store, "agent:tight").await, (0, 0));
    let (_, live_reserved) = counter(&store, "agent:live").await;
    assert!(live_reserved >= 5_000, "the live lease survived the sweep");
    assert_eq!(counter(&store, "agent:near").await, (0, 95));
    live.settle(long, 4_321, 0)
        .await
        .expect("settled after the TTL");
    live.settle(long_direct, 95, 0)
        .await
        .expect("the direct reservation too");
    live.close().await.unwrap();
    assert_eq!(counter(&store, "agent:live").await, (4_321, 0));
    assert_eq!(counter(&store, "agent:near").await, (95, 0));
}
on_both!(dead_expire_live_renew, dead_replicas_expire_live_ones_renew);

/// A stream's guard grows a call with further small reservations (which may be leased) and the
/// call's own reservation is then settled at the whole cost: that overrun used the room the
/// lease was counting on, so the next call asks the store, which refuses it.
async fn an_overrun_makes_leases_ask_the_store(db: Db) {
    let (store, _) = store(db, "lease-overrun").await;
    let l = Arc::new(Leased::new(store.clone(), TTL));
    // Too big a share of the cap for a lease: reserved directly.
    let call = l.reserve(&[usd("agent:b", 1_900, 4_000)]).await.unwrap();
    // The guard's growth, 100 at a time: small enough to lease.
    let mut growth = Vec::new();
    for _ in 0..15 {
        growth.push(l.reserve(&[usd("agent:b", 100, 4_000)]).await.unwrap());
    }
    let (_, reserved) = counter(&store, "agent:b").await;
    assert!(
        reserved > 1_900,
        "a lease was taken for the growth: {reserved}"
    );
    // The plugin settles the whole cost; the growth is released.
    l.settle(call, 3_870, 0).await.unwrap();
    for id in growth {
        l.release(id);
    }
    assert_eq!(l.overruns(), 1);
    match l.reserve(&[usd("agent:b", 530, 4_000)]).await {
        Err(ReserveError::Exceeded(e)) => assert_eq!(e.spent, 3_870),
        other => panic!("3870 spent of 4000, and 530 more was {other:?}"),
    }
    l.close().await.unwrap();
    assert_eq!(counter(&store, "agent:b").await, (3_870, 0));
}
on_both!(overrun_rechecks, an_overrun_makes_leases_ask_the_store);

// ---- Property test: two replicas against a reference model. ----

#[derive(Debug, Clone)]
enum Op {
    /// Replica, amount.
    Reserve(usize, u64),
    /// Which open reservation (index mod count), cost as a share of its amount in percent
    /// (above 100: an overrun).
    Settle(usize, u64),
    Release(usize),
    Sync(usize),
    /// Replica 1 stalls past the TTL: its clock jumps, the sweep runs at that time.
    Stall,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..2usize, 1..400u64).prop_map(|(r, a)| Op::Reserve(r, a)),
        4 => (any::<usize>(), 0..130u64).prop_map(|(i, p)| Op::Settle(i, p)),
        1 => any::<usize>().prop_map(Op::Release),
        1 => (0..2usize).prop_map(Op::Sync),
        1 => Just(Op::Stall),
    ]
}

const LIMIT: u64 = 20_000;

/// The two counters every model reservation holds: micro-USD on `s` and tokens on `t` (twice
/// the amount, a different limit), so their leases differ.
fn model_amounts(amount: u64) -> [Amount; 2] {
    [
        usd("s", amount, LIMIT),
        Amount {
            scope: "t".into(),
            unit: Unit::Tokens,
            window: Window::Total,
            amount: amount * 2,
            limit: LIMIT * 3,
        },
    ]
}

/// Per counter of the model: what was charged, overran, may slip through a stall, and what
/// replica 1 settled since it last synced.
#[derive(Default, Clone, Copy)]
struct Tally {
    charged: u64,
    overrun: u64,
    slack: u64,
    uncommitted1: u64,
}

async fn run_model(db: Db, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (first, url) = store(db, "lease-model").await;
    let second = Store::connect(&url).await.expect("second store");
    let ttl = Duration::from_secs(60);
    let replicas = [
        Arc::new(Leased::new(first.clone(), ttl)),
        Arc::new(Leased::new(second, ttl)),
    ];
    let limits = [LIMIT, LIMIT * 3];
    // Calls open: (replica, id, amount, made before replica 1 stalled).
    let mut open: Vec<(usize, u64, u64, bool)> = Vec::new();
    let mut tally = [Tally::default(); 2];
    let fail = |e: String| TestCaseError::fail(e);
    for op in ops {
        match op {
            Op::Reserve(r, amount) => match replicas[r].reserve(&model_amounts(amount)).await {
                Ok(id) => {
                    open.push((r, id, amount, false));
                    let held: u64 = open.iter().map(|o| o.2).sum();
                    // Admitted only under the limit, overruns and stalls aside.
                    for (c, t) in tally.iter().enumerate() {
                        let held = held * (c as u64 + 1);
                        prop_assert!(
                            t.charged + held <= limits[c] + t.overrun + t.slack,
                            "counter {c}: charged {} + held {held} > {} + overrun {} + slack {}",
                            t.charged,
                            limits[c],
                            t.overrun,
                            t.slack
                        );
                    }
                }
                Err(ReserveError::Exceeded(_)) => {}
                Err(e) => prop_assert!(false, "{e:?}"),
            },
            Op::Settle(i, pct) if !open.is_empty() => {
                let (r, id, amount, stalled) = open.remove(i % open.len());
                let costs = [amount * pct / 100, amount * 2 * pct / 100];
                match replicas[r].settle(id, costs[0], costs[1]).await {
                    Ok(()) => {
                        for (c, t) in tally.iter_mut().enumerate() {
                            t.charged += costs[c];
                            t.overrun += costs[c].saturating_sub(amount * (c as u64 + 1));
                            if r == 1 {
                                t.uncommitted1 += costs[c];
                            }
                        }
                    }
                    // A direct reservation that expired while its replica stalled.
                    Err(_) if stalled => {}
                    Err(e) => prop_assert!(false, "settle: {e}"),
                }
            }
            Op::Release(i) if !open.is_empty() => {
                let (r, id, _, _) = open.remove(i % open.len());
                replicas[r].release(id);
            }
            Op::Sync(r) => {
                replicas[r].sync().await.map_err(fail)?;
                if r == 1 {
                    for t in &mut tally {
                        t.uncommitted1 = 0;
                    }
                }
            }
            Op::Stall => {
                // Both clocks jump two TTLs; replica 0 renews (it is alive), replica 1 does not.
                for r in &replicas {
                    r.skew_clock(ttl * 2);
                }
                replicas[0].sync().await.map_err(fail)?;
                first
                    .expire_reservations_at(replicas[0].now_ms())
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                for o in open.iter_mut().filter(|o| o.0 == 1) {
                    o.3 = true;
                    for (c, t) in tally.iter_mut().enumerate() {
                        t.slack += o.2 * (c as u64 + 1);
                    }
                }
                for t in &mut tally {
                    t.slack += std::mem::take(&mut t.uncommitted1);
                }
            }
            _ => {}
        }
    }
    for (r, id, amount, stalled) in open.drain(..) {
        match replicas[r].settle(id, amount, amount * 2).await {
            Ok(()) => {
                tally[0].charged += amount;
                tally[1].charged += amount * 2;
            }
            Err(_) if stalled => {}
            Err(e) => prop_assert!(false, "settle: {e}"),
        }
    }
    for r in &replicas {
        r.close().await.map_err(fail)?;
    }
    // Exact: the store holds what was charged, and nothing is left held.
    prop_assert_eq!(counter(&first, "s").await, (tally[0].charged, 0));
    let t = first
        .spend(palisade_store::Window::Total, "t")
        .await
        .expect("spend");
    let t = t
        .iter()
        .find(|s| s.unit == palisade_store::Unit::Tokens)
        .map_or((0, 0), |s| (s.spent, s.reserved));
    prop_assert_eq!(t, (tally[1].charged, 0));
    first.close().await;
    Ok(())
}

/// Run the model on a runtime of its own (proptest cases are synchronous).
fn model(db: Db, ops: Vec<Op>) -> Result<(), TestCaseError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run_model(db, ops))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn the_ledger_matches_its_model_sqlite(ops in proptest::collection::vec(op(), 1..80)) {
        model(Db::Sqlite, ops)?;
    }

    #[test]
    fn the_ledger_matches_its_model_postgres(ops in proptest::collection::vec(op(), 1..80)) {
        model(Db::Postgres, ops)?;
    }
}

// ---- Two `palisade serve` processes on one database. ----

const RACE_PLUGINS: &str = r#"
[[plugins]]
name = "budget"
path = "budget.wasm"
[plugins.config.defaults.agent]
micro_usd = { day = 60000 }
"#;

const RACE_EXTRA: &str = r#"
[prices."mock/gpt-4o-mini"]
input_per_mtok = 10.0
output_per_mtok = 100.0
"#;

/// 200 concurrent calls spread over two replicas on one database: support-bot's spend ends at
/// most at its cap, exactly what the audit says the answered calls cost, and nothing is left
/// held once both have shut down.
async fn two_replicas_race(db: Db) {
    let dir = temp_dir("race");
    let database = database_url(db, &dir).await;
    std::fs::copy(dist_plugin("budget"), dir.join("budget.wasm")).expect("copy plugin");
    let mock_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock");
    let (mock_addr, _mock) = mock_upstream::spawn(mock_listener);
    let mock_url = format!("http://{mock_addr}");
    let config = dir.join("palisade.toml");
    let text = with_host_lines(&config_text(&dir, &database, RACE_PLUGINS), RACE_EXTRA);
    std::fs::write(&config, text).expect("config");
    let mut procs = [
        spawn_gateway(&config, &mock_url),
        spawn_gateway(&config, &mock_url),
    ];
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = procs[i % 2].addr.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({
                "model": "gpt-4o-mini",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": format!("call {i}")}],
            });
            let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("authorization", format!("Bearer {SUPPORT_KEY}"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(Bytes::from(body.to_string())))
                .unwrap();
            let resp = client.request(req).await.expect("answer");
            let status = resp.status().as_u16();
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            status
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            200 => ok += 1,
            402 | 429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    for p in &mut procs {
        let pid = p.child.id().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
    }
    for p in &mut procs {
        assert_eq!(p.child.wait().expect("wait").code(), Some(0));
    }
    let store = Store::connect(&database).await.expect("store");
    let (spent, reserved) =
        counter_in(&store, "agent:support-bot", palisade_store::Window::Day).await;
    assert_eq!(reserved, 0, "both replicas gave their leases back");
    assert!(spent <= 60_000, "spent {spent} past the 60000 cap");
    let rows: Vec<palisade_store::AuditRecord> = store
        .audit_stream(AuditFilter::default())
        .try_collect()
        .await
        .expect("rows");
    let billed: i64 = rows
        .iter()
        .filter(|r| r.kind == "llm-call")
        .map(|r| r.cost_micro_usd)
        .sum();
    assert_eq!(
        u64::try_from(billed).unwrap(),
        spent,
        "the ledger is the audit's sum"
    );
    assert!(
        ok > 0 && ok < 200,
        "{ok} answered: some calls fit, the cap stopped the rest"
    );
    // Each call reserves ~2.2k and costs under 1k: the replicas' leases must not starve one
    // another so badly that most of the cap is left unused.
    assert!(
        spent >= 30_000,
        "only {spent} of 60000 spent: refusals while headroom was free"
    );
    store.close().await;
}
on_both!(two_replicas, two_replicas_race);

// ---- A stream longer than the TTL, through the gateway. ----

const STREAM_PLUGINS: &str = r#"
[[plugins]]
name = "budget"
path = "budget.wasm"
[plugins.config.defaults.agent]
micro_usd = { day = 100000000 }
"#;

/// A stream that runs past the reservation TTL keeps its hold: the replica renews it, the
/// expiry sweep run meanwhile frees nothing of it, and the stream is charged in full at its end
/// (before leases, the sweep freed the reservation and the final settle found nothing: free).
async fn a_stream_outlives_the_ttl(db: Db) {
    let gw = TestGateway::start_full(db, &["budget"], STREAM_PLUGINS, false, RACE_EXTRA).await;
    let ledger = gw
        .gw
        .services
        .ledger
        .leased()
        .expect("leased ledger")
        .clone();
    let ttl = Duration::from_secs(30);
    ledger.set_ttl(ttl);
    let words = "tick ".repeat(40);
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "messages": [{"role": "user", "content": format!("[mock:chunk_delay_ms=100] {words}")}],
    });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let req = http::Request::post(format!("http://{}/v1/chat/completions", gw.addr))
        .header("authorization", format!("Bearer {SUPPORT_KEY}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.expect("answer");
    assert_eq!(resp.status(), 200);
    let request_id = resp
        .headers()
        .get("palisade-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("request id")
        .to_string();
    let mut body = resp.into_body();
    let first = http_body_util::BodyExt::frame(&mut body)
        .await
        .expect("a first event")
        .expect("frame");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));

    // Ten TTLs pass while the stream runs; the replica renews, then the sweep runs.
    ledger.skew_clock(ttl * 10);
    ledger.sync().await.expect("renew");
    gw.gw
        .store
        .expire_reservations_at(ledger.now_ms())
        .await
        .expect("sweep");
    assert!(gw.gw.drain.running() >= 1, "the stream is still running");
    let (_, held) = counter_in(
        &gw.gw.store,
        "agent:support-bot",
        palisade_store::Window::Day,
    )
    .await;
    assert!(held > 0, "the stream's hold survived the sweep");

    let rest = http_body_util::BodyExt::collect(body)
        .await
        .expect("the rest")
        .to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
    assert!(gw.gw.drain.wait_idle(Duration::from_secs(10)).await);
    gw.gw.audit.flush().await.expect("flush");
    let row = gw
        .gw
        .store
        .audit_stream(AuditFilter::default())
        .try_collect::<Vec<palisade_store::AuditRecord>>()
        .await
        .expect("rows")
        .into_iter()
        .find(|r| r.request_id == request_id)
        .expect("the stream's audit row");
    assert!(row.cost_micro_usd > 0 && row.output_tokens > 30, "{row:?}");
    let (spent, _) = counter_in(
        &gw.gw.store,
        "agent:support-bot",
        palisade_store::Window::Day,
    )
    .await;
    assert_eq!(
        spent,
        u64::try_from(row.cost_micro_usd).unwrap(),
        "charged in full"
    );
}
on_both!(stream_outlives_ttl, a_stream_outlives_the_ttl);
