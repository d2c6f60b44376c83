//! Audit write throughput on each backend: events per second appended to the hash-chained log,
//! in the batch sizes the gateway's writer uses (1 = sync durability under light load, 256 = a
//! full batch), and ledger reserve+settle pairs per second (three scopes, as `budget` reserves).
//!
//! `cargo bench -p palisade-store --bench audit` (PostgreSQL at 127.0.0.1:5432 is used when
//! reachable; set PALISADE_SKIP_PG=1 to skip it). A plain harness: it prints one line per case.

use std::time::{Duration, Instant};

use palisade_store::ledger::{Amount, Reservation, Unit, Window};
use palisade_store::{NewAuditEvent, Store};

fn event(i: usize) -> NewAuditEvent {
    NewAuditEvent {
        time_ms: palisade_store::time::now_ms(),
        request_id: format!("req_{i:032x}"),
        run_id: format!("run_{i:032x}"),
        chain: vec!["support-bot".into()],
        agent: Some("support-bot".into()),
        owner: Some("alice@example.com".into()),
        team: Some("support".into()),
        kind: "llm-call".into(),
        target: "gpt-4o-mini".into(),
        provider: Some("mock".into()),
        verdicts: serde_json::json!([{"plugin": "model-allow", "hook": "on-request", "verdict": "allow"}]),
        policy_version: "9a268de608d79bac".into(),
        input_tokens: 12,
        output_tokens: 40,
        latency_us: 900,
        status: 200,
        ..Default::default()
    }
}

async fn run(name: &str, store: &Store) {
    for batch in [1usize, 16, 256] {
        let total = if batch == 1 { 500 } else { 10_000 };
        let events: Vec<NewAuditEvent> = (0..total).map(event).collect();
        let start = Instant::now();
        for chunk in events.chunks(batch) {
            store.append_audit(chunk).await.expect("append");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name:<9} audit append, batches of {batch:>3}: {:>8.0} events/s ({:.2} ms per batch)",
            total as f64 / secs,
            secs * 1000.0 / (total / batch) as f64
        );
    }
    // Ledger: one reservation over three scopes (agent, team, run), then its settle, sequentially.
    let n = 300;
    let start = Instant::now();
    for i in 0..n {
        let amounts = ["agent:bench", "team:bench", &format!("run:{i}")].map(|scope| Amount {
            scope: scope.to_string(),
            unit: Unit::MicroUsd,
            window: Window::Day,
            amount: 100,
            limit: u64::MAX / 4,
        });
        let held = store
            .reserve(&amounts, Duration::from_secs(60))
            .await
            .expect("reserve");
        let Reservation::Held(id) = held else {
            panic!("limit is huge: {held:?}")
        };
        store.settle(id, 50, 10).await.expect("settle");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name:<9} ledger reserve(3 scopes)+settle: {:>6.0} pairs/s ({:.2} ms per pair)",
        n as f64 / secs,
        secs * 1000.0 / n as f64
    );

    let start = Instant::now();
    let report = store.verify_audit().await.expect("verify");
    println!(
        "{name:<9} audit verify: {} rows in {:.0} ms",
        report.rows,
        start.elapsed().as_secs_f64() * 1000.0
    );
}

#[tokio::main]
async fn main() {
    let dir = std::env::temp_dir().join(format!("palisade-audit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sqlite = Store::open_sqlite(&dir.join("bench.db"))
        .await
        .expect("sqlite");
    run("sqlite", &sqlite).await;
    if std::env::var("PALISADE_SKIP_PG").is_err() {
        let schema = format!("bench_{}", std::process::id());
        match Store::connect_pg_schema("postgres://postgres@127.0.0.1:5432/test", &schema).await {
            Ok(pg) => run("postgres", &pg).await,
            Err(e) => println!("postgres  skipped: {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
