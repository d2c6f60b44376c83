//! The cost per call of `depth` + `budget` in the chain: `on-request` (depth checks, budget
//! reserves the worst case) and `on-complete` (budget settles), fresh instances (pinned with
//! `instances = "fresh"`: both plugins declare themselves stateless), with the ledger
//! in memory, on SQLite and on PostgreSQL (skipped where 127.0.0.1:5432 does not answer or
//! PALISADE_SKIP_PG=1). The `ledger` group times the replica's leased ledger alone: a reserve
//! over three scopes (agent, team, run) and its settle, with headroom, on SQLite; the store's
//! own reservation transactions are in `store/benches/audit.rs`.
//!
//! `cargo bench -p palisade --bench budget_depth` after `make plugins`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::plugins::bindings::{Agent, Amount, Call, CallKind, Completion, Unit, Usage, Window};
use palisade::plugins::ledger::Leased;
use palisade::plugins::{Chain, HostServices, Policy};
use palisade_store::Store;

const PLUGINS: &str = r#"
[[plugins]]
name = "depth"
path = "DIST/depth.wasm"
instances = "fresh"
[plugins.config]
max_depth = 5
max_repeats = 2
max_calls_per_run = 1000000000

[[plugins]]
name = "budget"
path = "DIST/budget.wasm"
instances = "fresh"
[plugins.config.defaults.agent]
micro_usd = { day = 1000000000000 }
tokens = { day = 1000000000000 }
[plugins.config.defaults.team]
micro_usd = { month = 1000000000000 }
"#;

fn call() -> Call {
    Call {
        request_id: "req_bench".into(),
        run_id: "run_bench".into(),
        chain: vec!["planner".into(), "bench-agent".into()],
        agent: Agent {
            id: "bench-agent".into(),
            name: "bench-agent".into(),
            owner: "owner@example.com".into(),
            team: "bench".into(),
            labels: Vec::new(),
        },
        kind: CallKind::LlmCall,
        target: "gpt-4o-mini".into(),
        body: r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#.into(),
        stream: false,
        input_tokens: 12,
        max_output_tokens: 256,
        max_cost: 160,
    }
}

fn chain(rt: &tokio::runtime::Runtime, store: Option<Store>, tag: &str) -> Arc<Chain> {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/plugins");
    assert!(
        dist.join("budget.wasm").exists(),
        "run `make plugins` first"
    );
    let dir = std::env::temp_dir().join(format!("palisade-bench-bd-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = format!(
        "[upstream]\nbase_url = \"http://127.0.0.1:1\"\n[plugin_host]\ncache_dir = \"{}\"\n{}",
        dir.join("cache").display(),
        PLUGINS.replace("DIST", &dist.display().to_string())
    );
    let cfg = dir.join("palisade.toml");
    std::fs::write(&cfg, toml).unwrap();
    let services = Arc::new(HostServices::default());
    if let Some(s) = store {
        services.ledger.use_store(s);
    }
    let policy = rt
        .block_on(Policy::start(&cfg, services, Default::default()))
        .unwrap();
    policy.current().chain.clone()
}

async fn one_call(chain: &Arc<Chain>, template: &Call) {
    let mut call = template.clone();
    let mut session = chain.session(Arc::from("req_bench"));
    assert!(session.on_request(&mut call).await.is_ok());
    let usage = Usage {
        input_tokens: 12,
        output_tokens: 40,
        cached_tokens: 0,
        cost: 30,
        served_by: "mock/gpt-4o-mini".into(),
    };
    let done = Completion {
        status: 200,
        error_code: None,
        truncated: false,
    };
    session.on_complete(&call, &usage, &done).await;
    session.finish();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let template = call();
    let mut group = c.benchmark_group("budget+depth");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let memory = chain(&rt, None, "memory");
    group.bench_function("ledger-in-memory", |b| {
        b.to_async(&rt).iter(|| one_call(&memory, &template));
    });
    let file = std::env::temp_dir().join(format!("palisade-bench-bd-{}.db", std::process::id()));
    let sqlite = rt
        .block_on(Store::connect(&format!("sqlite://{}", file.display())))
        .unwrap();
    let on_sqlite = chain(&rt, Some(sqlite), "sqlite");
    group.bench_function("ledger-sqlite", |b| {
        b.to_async(&rt).iter(|| one_call(&on_sqlite, &template));
    });
    if std::env::var_os("PALISADE_SKIP_PG").is_none() {
        let schema = format!("bench_{:08x}", rand::random::<u32>());
        let pg = rt.block_on(Store::connect_pg_schema(
            "postgres://postgres@127.0.0.1:5432/test",
            &schema,
        ));
        match pg {
            Ok(pg) => {
                let on_pg = chain(&rt, Some(pg), "postgres");
                group.bench_function("ledger-postgres", |b| {
                    b.to_async(&rt).iter(|| one_call(&on_pg, &template));
                });
            }
            Err(e) => eprintln!("PostgreSQL skipped: {e}"),
        }
    }
    group.finish();

    let mut group = c.benchmark_group("ledger");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let lfile = std::env::temp_dir().join(format!("palisade-bench-l-{}.db", std::process::id()));
    let lstore = rt
        .block_on(Store::connect(&format!("sqlite://{}", lfile.display())))
        .unwrap();
    let leased = Arc::new(Leased::new(lstore, Duration::from_secs(900)));
    let amounts: Vec<Amount> = ["agent:bench-agent", "team:bench", "run:run_bench"]
        .iter()
        .map(|s| Amount {
            scope: s.to_string(),
            unit: Unit::MicroUsd,
            window: Window::Day,
            amount: 160,
            limit: 1_000_000_000_000,
        })
        .collect();
    group.bench_function("leased-reserve+settle-3-scopes", |b| {
        b.to_async(&rt).iter(|| async {
            let id = leased.reserve(&amounts).await.unwrap();
            leased.settle(id, 30, 0).await.unwrap();
        });
    });
    group.finish();
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_file(lfile);
}

criterion_group!(benches, bench);
criterion_main!(benches);
