//! The same policy work in Rust, Python and JavaScript: one call's `on-request` pass through
//! `model-allow` (Rust), `customer-guard` (Python, componentize-py) and `business-hours`
//! (JavaScript, componentize-js), with fresh and pooled instances; plus, printed before the
//! criterion runs, each plugin's compile time (cold and from the disk cache), the time to make
//! one instance and run `init`, and the resident memory one live instance adds to the process.
//!
//! Run with `cargo bench -p palisade --bench languages` after `make plugins`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::plugins::bindings::{Agent, Call, CallKind};
use palisade::plugins::host::CallHolds;
use palisade::plugins::{Chain, HostServices, Policy};

const PLUGINS: [(&str, &str, &str); 3] = [
    (
        "rust",
        "model-allow",
        "default = [\"gpt-4o*\", \"claude-*\"]",
    ),
    (
        "python",
        "customer-guard-py",
        "blocked = [\"CUST-1001\", \"CUST-2002\"]\nscan_llm = true",
    ),
    (
        "javascript",
        "business-hours-js",
        "risky = [\"gpt-4o*\"]\ndays = [\"sun\", \"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\"]\nopen = \"00:00\"\nclose = \"24:00\"",
    ),
];

fn call() -> Call {
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "What is the status of order 1234 for customer CUST-3003?"}],
    });
    Call {
        request_id: "req_bench".into(),
        run_id: "run_bench".into(),
        chain: vec!["bench-agent".into()],
        agent: Agent {
            id: "bench-agent".into(),
            name: "bench-agent".into(),
            owner: "owner@example.com".into(),
            team: "bench".into(),
            labels: vec![("env".into(), "bench".into())],
        },
        kind: CallKind::LlmCall,
        target: "gpt-4o-mini".into(),
        body: body.to_string(),
        stream: false,
        input_tokens: 16,
        max_output_tokens: 256,
        max_cost: 0,
    }
}

/// A one-plugin chain; the cache dir is shared across runs so only the first compiles.
fn chain(
    rt: &tokio::runtime::Runtime,
    plugin: &str,
    config: &str,
    pooled: bool,
    cache: &Path,
) -> Arc<Chain> {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../dist/plugins/{plugin}.wasm"));
    assert!(wasm.exists(), "run `make plugins` first");
    let dir = std::env::temp_dir().join(format!(
        "palisade-bench-lang-{plugin}-{pooled}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = format!(
        "[upstream]\nbase_url = \"http://127.0.0.1:1\"\n[plugin_host]\ncache_dir = \"{}\"\nmax_instances = 300\n\
         [[plugins]]\nname = \"p\"\npath = \"{}\"\ninstances = \"{}\"\nmax_calls = 1000000\ndeadline_ms = 2000\n[plugins.config]\n{config}\n",
        cache.display(),
        wasm.display(),
        if pooled { "pooled" } else { "fresh" }
    );
    let cfg = dir.join("palisade.toml");
    std::fs::write(&cfg, toml).unwrap();
    let policy = rt
        .block_on(Policy::start(
            &cfg,
            Arc::new(HostServices::default()),
            Default::default(),
        ))
        .unwrap();
    policy.current().chain.clone()
}

async fn one_call(chain: &Arc<Chain>, template: &Call) {
    let mut call = template.clone();
    let mut session = chain.session(Arc::from("req_bench"));
    let decision = session.on_request(&mut call).await;
    assert!(decision.is_ok(), "{decision:?}");
    session.finish();
}

/// Resident set size of this process, bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Compile (cold, then cached), instantiate + init, and memory per live instance.
fn footprint(rt: &tokio::runtime::Runtime, lang: &str, plugin: &str, config: &str, cache: &Path) {
    let started = Instant::now();
    let _ = chain(rt, plugin, config, false, cache);
    let compile_cold = started.elapsed();
    let started = Instant::now();
    let chain = chain(rt, plugin, config, false, cache);
    let load_cached = started.elapsed();

    let p = chain.plugins[0].clone();
    // Few enough that a Python component (dozens of core instances each) fits the pool.
    const N: usize = 20;
    let rid: Arc<str> = Arc::from("req_bench");
    let holds = Arc::new(CallHolds::default());
    let (instances, per_instance, rss_per_instance) = rt.block_on(async {
        // Warm the copy-on-write image and the pool slots once.
        drop(p.checkout(&rid, &holds).await.unwrap());
        let before = rss();
        let started = Instant::now();
        let mut live = Vec::with_capacity(N);
        for _ in 0..N {
            live.push(p.checkout(&rid, &holds).await.unwrap());
        }
        let per = started.elapsed() / N as u32;
        let after = rss();
        (live.len(), per, after.saturating_sub(before) / N)
    });
    println!(
        "{lang:<10} {plugin:<18} size {:>6.1} MiB | compile cold {:>6} ms, from cache {:>4} ms | \
         instantiate+init {:>7.1} µs | +{:>5.0} KiB resident per live instance ({instances} live)",
        std::fs::metadata(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../dist/plugins/{plugin}.wasm"))
        )
        .map(|m| m.len())
        .unwrap_or(0) as f64
            / (1 << 20) as f64,
        compile_cold.as_millis(),
        load_cached.as_millis(),
        per_instance.as_secs_f64() * 1e6,
        rss_per_instance as f64 / 1024.0
    );
}

fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A new cache dir: the first load of each plugin compiles cold, every later one is cached.
    let cache = std::env::temp_dir().join(format!("palisade-bench-lang-cache-{}", rand_id()));
    for (lang, plugin, config) in PLUGINS {
        footprint(&rt, lang, plugin, config, &cache);
    }
    let template = call();
    let mut group = c.benchmark_group("languages");
    group
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    for (lang, plugin, config) in PLUGINS {
        for pooled in [false, true] {
            let chain = chain(&rt, plugin, config, pooled, &cache);
            let mode = if pooled { "pooled" } else { "fresh" };
            group.bench_function(format!("{lang}/{mode}"), |b| {
                b.to_async(&rt).iter(|| one_call(&chain, &template));
            });
        }
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&cache);
}

criterion_group!(benches, bench);
criterion_main!(benches);
