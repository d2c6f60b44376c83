//! Time to fail over: one call on route `smart` = [primary, secondary], where the primary
//! refuses connections or answers 503 and the secondary (the real mock upstream) serves, against
//! a healthy primary as the baseline. Measures `providers::failover::run` over loopback HTTP
//! (the failover path itself: both attempts, the secondary's full answer decoded), sequential
//! calls, p50/p99. The breaker threshold is set out of reach, so every call really tries the
//! primary first; a fourth row shows a call with the primary's breaker open (skipped).
//!
//! `cargo bench -p palisade --bench failover` (no plugins needed). `FAILOVER_CALLS` sets the
//! calls per scenario (default 2000).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use palisade::config::Settings;
use palisade::metrics::Metrics;
use palisade::providers::breaker::Breakers;
use palisade::providers::config::BreakerSettings;
use palisade::providers::failover::{self, Ctx};
use palisade::providers::routes::{self, ProviderSet};
use serde_json::{Map, Value, json};

/// A keep-alive server answering every request 503, as an overloaded provider does.
async fn always_503() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    let mut r = Response::new(Full::new(Bytes::from_static(
                        br#"{"error":{"message":"overloaded","type":"server_error"}}"#,
                    )));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn refusing() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn settings(primary: SocketAddr, secondary: SocketAddr) -> Settings {
    let text = format!(
        r#"
[[providers]]
name = "primary"
base_url = "http://{primary}"
[[providers]]
name = "secondary"
base_url = "http://{secondary}"
[routes.smart]
targets = ["primary/m", "secondary/m"]
"#
    );
    Settings::from_toml(Path::new("bench.toml"), &text).unwrap()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn scenario(
    name: &str,
    primary: SocketAddr,
    secondary: SocketAddr,
    n: usize,
    breaker: BreakerSettings,
) {
    let mut s = settings(primary, secondary);
    s.breaker = breaker;
    let set = ProviderSet::new(s.provider_list());
    let breakers = Breakers::for_config(&s, None);
    let metrics = Metrics::default();
    let ctx = Ctx {
        set: &set,
        breakers: &breakers,
        metrics: &metrics,
    };
    let plan = routes::plan(&s, "smart");
    let body: Map<String, Value> = serde_json::from_value(
        json!({"model": "smart", "messages": [{"role": "user", "content": "hello"}]}),
    )
    .unwrap();
    // Warm up connections (and, for the breaker row, open it).
    for _ in 0..20 {
        let _ = failover::run(&ctx, &plan, &body, false).await;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let served = failover::run(&ctx, &plan, &body, false).await;
        times.push(t.elapsed());
        match served {
            Ok(s) => assert_eq!(
                s.target.provider,
                if name == "baseline (primary healthy)" {
                    "primary"
                } else {
                    "secondary"
                }
            ),
            Err(f) => panic!("{name}: call failed: {}", f.error),
        }
    }
    times.sort();
    println!(
        "{name:<38} p50 {:>8.1} µs   p99 {:>8.1} µs   ({n} calls)",
        pct(&times, 0.50).as_secs_f64() * 1e6,
        pct(&times, 0.99).as_secs_f64() * 1e6,
    );
}

fn main() {
    let n: usize = std::env::var("FAILOVER_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (secondary, _) =
            mock_upstream::spawn(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let (healthy, _) =
            mock_upstream::spawn(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let never = BreakerSettings {
            failures: u32::MAX,
            window: Duration::from_secs(1),
            open_for: Duration::from_secs(3600),
        };
        let opens = BreakerSettings {
            failures: 1,
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(3600),
        };
        scenario("baseline (primary healthy)", healthy, secondary, n, never).await;
        scenario(
            "primary refuses connections",
            refusing(),
            secondary,
            n,
            never,
        )
        .await;
        scenario(
            "primary answers 503",
            always_503().await,
            secondary,
            n,
            never,
        )
        .await;
        scenario(
            "primary breaker open (skipped)",
            refusing(),
            secondary,
            n,
            opens,
        )
        .await;
    });
}
