//! The plugin chain in process: the cost of one call's `on-request` pass through 1 and 5 trivial
//! plugins (`tests/fixtures/trivial`: instantiate, `init`, one hook, drop), with fresh and pooled
//! instances, on one thread and on two at once; and through the shipped `model-allow` plugin,
//! which parses a real config and matches globs; and through `pii` on 4 KB and 100 KB chat
//! requests (scan every message, redact with placeholders).
//!
//! Run with `make bench` (it builds the plugins first).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::plugins::bindings::{Agent, Call, CallKind};
use palisade::plugins::{Chain, HostServices, Policy};

fn call() -> Call {
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "What is the status of order 1234?"}],
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
        input_tokens: 12,
        max_output_tokens: 256,
        max_cost: 0,
    }
}

fn chain(
    rt: &tokio::runtime::Runtime,
    plugin: &str,
    config: &str,
    plugins: usize,
    pooled: bool,
) -> Arc<Chain> {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../dist/plugins/{plugin}.wasm"));
    assert!(wasm.exists(), "run `make plugins` first");
    let dir = std::env::temp_dir().join(format!(
        "palisade-bench-{plugin}-{plugins}-{pooled}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = format!(
        "[upstream]\nbase_url = \"http://127.0.0.1:1\"\n[plugin_host]\ncache_dir = \"{}\"\n",
        dir.join("cache").display()
    );
    for i in 0..plugins {
        toml.push_str(&format!(
            "[[plugins]]\nname = \"p{i}\"\npath = \"{}\"\ninstances = \"{}\"\nmax_calls = 1000000\n[plugins.config]\n{config}\n",
            wasm.display(),
            if pooled { "pooled" } else { "fresh" }
        ));
    }
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

/// A chat call whose user message is about `bytes` long: prose with an e-mail address and a phone
/// number in every kilobyte (what `pii` redacts), plus dates and order numbers it must leave.
fn chat_call(bytes: usize) -> Call {
    let mut text = String::with_capacity(bytes + 200);
    let mut i = 0;
    while text.len() < bytes {
        text.push_str("The customer wrote in about order 48213 on 2024-03-08; please check the shipping status and reply politely. ");
        if i % 8 == 7 {
            text.push_str(&format!(
                "Contact: jane.doe{i}@example.com, +1 415 555 {:04}. ",
                i % 10000
            ));
        }
        i += 1;
    }
    let mut c = call();
    c.body = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful support agent."},
            {"role": "user", "content": text},
        ],
    })
    .to_string();
    c
}

async fn one_call(chain: &Arc<Chain>, template: &Call) {
    let mut call = template.clone();
    let mut session = chain.session(Arc::from("req_bench"));
    let decision = session.on_request(&mut call).await;
    assert!(decision.is_ok());
    session.finish();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let template = call();
    let mut group = c.benchmark_group("chain");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for pooled in [false, true] {
        let chain = chain(
            &rt,
            "model-allow",
            "default = [\"gpt-4o*\", \"claude-*\"]",
            1,
            pooled,
        );
        let mode = if pooled { "pooled" } else { "fresh" };
        group.bench_function(format!("model-allow/{mode}/1-thread"), |b| {
            b.to_async(&rt).iter(|| one_call(&chain, &template));
        });
    }
    // `pii` on realistic chat requests: parse, scan every message, rewrite with placeholders.
    for (label, bytes) in [("4KB", 4 * 1024), ("100KB", 100 * 1024)] {
        let template = chat_call(bytes);
        for pooled in [false, true] {
            let chain = chain(&rt, "pii", "", 1, pooled);
            let mode = if pooled { "pooled" } else { "fresh" };
            group.bench_function(format!("pii/{label}/{mode}/1-thread"), |b| {
                b.to_async(&rt).iter(|| one_call(&chain, &template));
            });
        }
    }
    for plugins in [1usize, 5] {
        for pooled in [false, true] {
            let chain = chain(&rt, "trivial", "", plugins, pooled);
            let mode = if pooled { "pooled" } else { "fresh" };
            group.bench_function(format!("{plugins}-plugins/{mode}/1-thread"), |b| {
                b.to_async(&rt).iter(|| one_call(&chain, &template));
            });
            // Two threads calling at once: the time per call *on each thread*.
            group.bench_function(format!("{plugins}-plugins/{mode}/2-threads"), |b| {
                b.iter_custom(|iters| {
                    let per = iters.div_ceil(2);
                    let start = Instant::now();
                    rt.block_on(async {
                        let tasks: Vec<_> = (0..2)
                            .map(|_| {
                                let (chain, t) = (chain.clone(), template.clone());
                                tokio::spawn(async move {
                                    for _ in 0..per {
                                        one_call(&chain, &t).await;
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap();
                        }
                    });
                    // criterion divides by `iters`; report the time each thread spent per call.
                    start.elapsed().mul_f64(iters as f64 / per as f64)
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
