//! `GET /metrics`: the gateway's counters in Prometheus text exposition format (0.0.4),
//! hand-rolled: a few labelled counters and histograms behind one mutex each, rendered on
//! scrape. Recorded once per call (from the audit draft, so every call counts exactly once) and
//! once per upstream attempt; breaker state is read from the breakers at scrape time.
//!
//! | metric | labels |
//! |---|---|
//! | `palisade_requests_total` | `kind`, `status` |
//! | `palisade_request_duration_seconds` (histogram) | `kind` |
//! | `palisade_upstream_duration_seconds` (histogram) | `provider` |
//! | `palisade_gateway_overhead_seconds` (histogram) | `kind` |
//! | `palisade_upstream_attempts_total` | `target`, `outcome` |
//! | `palisade_failovers_total` | `from` |
//! | `palisade_breaker_state` (0 closed, 1 half-open, 2 open) | `target` |
//! | `palisade_breaker_opened_total` | `target` |
//! | `palisade_tokens_total` | `agent`, `provider`, `direction` |
//! | `palisade_cost_micro_usd_total` | `agent`, `provider` |
//! | `palisade_limit_refusals_total` | `limit` (`rpm`, `tpm`, `concurrent`, `mcp_sessions`, `mcp_streams`, `instances`), `scope` (`agent`, `team`, `global`) |
//!
//! `target` and `provider` values are bounded by the config, never by what agents send: a
//! target a route names, else its provider, else an MCP server, else `other` (see
//! [`Metrics::set_known`]). A model string an agent made up adds no series.
//! | `palisade_audit_quarantined_total` | (none) |
//! | `palisade_auth_failures_total` | `reason` (`missing_key`, `unknown_key`, `suspended`) |
//! | `palisade_key_lookups_total` (store lookups of agent keys: cache misses) | (none) |
//! | `palisade_connections_open` (gauge) | (none) |

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Histogram bucket upper bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Default)]
struct Family<T> {
    series: Mutex<BTreeMap<Labels, T>>,
}

impl<T: Default + Clone> Family<T> {
    fn with(&self, labels: Labels, f: impl FnOnce(&mut T)) {
        let mut map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(labels).or_default());
    }
    fn snapshot(&self) -> Vec<(Labels, T)> {
        let map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// One finished call, as metrics see it.
pub struct CallObservation<'a> {
    pub kind: &'a str,
    pub status: u16,
    pub agent: Option<&'a str>,
    /// `provider/model` that served, if one did.
    pub provider: Option<&'a str>,
    pub total: Duration,
    pub upstream: Duration,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micro_usd: u64,
}

/// One breaker as `/metrics` shows it (read from the breakers at scrape time).
#[derive(Debug, Clone)]
pub struct BreakerGauge {
    pub target: String,
    /// 0 closed, 1 half-open, 2 open.
    pub state: u8,
    /// Times it opened since the gateway started.
    pub opened: u64,
}

#[derive(Default)]
pub struct Metrics {
    /// The label values the config allows for `target` and `provider`.
    known: arc_swap::ArcSwap<HashSet<String>>,
    requests: Family<u64>,
    duration: Family<Histogram>,
    upstream: Family<Histogram>,
    overhead: Family<Histogram>,
    attempts: Family<u64>,
    failovers: Family<u64>,
    tokens: Family<u64>,
    cost: Family<u64>,
    limit_refusals: Family<u64>,
    /// Shared with the audit writer, which counts into it (it has no handle on `Metrics`).
    audit_quarantined: Arc<AtomicU64>,
    /// The registry's count of refused keys, read at scrape time.
    auth: std::sync::OnceLock<Arc<crate::registry::failures::AuthFailures>>,
    /// Client connections open now.
    connections: Arc<AtomicU64>,
}

/// Counts one open connection while it lives.
pub struct OpenConnection(Arc<AtomicU64>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// The `target`/`provider` label values of the loaded config (breaker keys, MCP server
    /// names); set at start and at each reload.
    pub fn set_known(&self, labels: impl IntoIterator<Item = String>) {
        self.known
            .store(std::sync::Arc::new(labels.into_iter().collect()));
    }

    /// A label value the config knows: the name itself, else the provider part of
    /// `provider/model`, else `other`.
    fn bounded(&self, name: &str) -> String {
        let known = self.known.load();
        if known.contains(name) {
            return name.to_string();
        }
        match name.split_once('/') {
            Some((provider, _)) if known.contains(provider) => provider.to_string(),
            _ => "other".to_string(),
        }
    }

    /// The counter behind `palisade_audit_quarantined_total`, for the audit writer to count
    /// each event the database refused and the dead-letter table took.
    pub fn audit_quarantined(&self) -> Arc<AtomicU64> {
        self.audit_quarantined.clone()
    }

    /// Read failed authentications from the registry's counter at each scrape.
    pub fn set_auth_failures(&self, f: Arc<crate::registry::failures::AuthFailures>) {
        let _ = self.auth.set(f);
    }

    /// A client connection opened; it counts in `palisade_connections_open` until dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.connections.clone())
    }

    /// Client connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn observe_call(&self, o: &CallObservation<'_>) {
        let kind = o.kind.to_string();
        self.requests.with(
            vec![("kind", kind.clone()), ("status", o.status.to_string())],
            |c| *c += 1,
        );
        self.duration.with(vec![("kind", kind.clone())], |h| {
            h.observe(o.total.as_secs_f64())
        });
        let overhead = o.total.saturating_sub(o.upstream);
        self.overhead
            .with(vec![("kind", kind)], |h| h.observe(overhead.as_secs_f64()));
        if let Some(p) = o.provider {
            let p = &self.bounded(p);
            if !o.upstream.is_zero() {
                self.upstream.with(vec![("provider", p.to_string())], |h| {
                    h.observe(o.upstream.as_secs_f64())
                });
            }
            let agent = o.agent.unwrap_or("").to_string();
            for (direction, n) in [("input", o.input_tokens), ("output", o.output_tokens)] {
                self.tokens.with(
                    vec![
                        ("agent", agent.clone()),
                        ("provider", p.to_string()),
                        ("direction", direction.to_string()),
                    ],
                    |c| *c += n,
                );
            }
            self.cost
                .with(vec![("agent", agent), ("provider", p.to_string())], |c| {
                    *c += o.cost_micro_usd
                });
        }
    }

    /// A call (or an MCP session or stream) refused by one of the gateway's own limits; both
    /// labels come from fixed sets.
    pub fn limit_refused(&self, limit: &'static str, scope: &'static str) {
        self.limit_refusals.with(
            vec![("limit", limit.to_string()), ("scope", scope.to_string())],
            |c| *c += 1,
        );
    }

    /// One upstream attempt's outcome (`ok`, an error code, or `circuit_open`); every outcome
    /// but `ok` is also a failover away from the target.
    pub fn attempt(&self, target: &str, outcome: &str) {
        let target = &self.bounded(target);
        self.attempts.with(
            vec![
                ("target", target.to_string()),
                ("outcome", outcome.to_string()),
            ],
            |c| *c += 1,
        );
        if outcome != "ok" {
            self.failovers
                .with(vec![("from", target.to_string())], |c| *c += 1);
        }
    }

    /// The exposition text.
    pub fn render(&self, breakers: &[BreakerGauge]) -> String {
        let mut out = String::with_capacity(4096);
        counter(
            &mut out,
            "palisade_requests_total",
            "Calls answered, by kind and HTTP status.",
            &self.requests,
        );
        histogram(
            &mut out,
            "palisade_request_duration_seconds",
            "Whole call time, as the agent saw it (streams: until the last byte).",
            &self.duration,
        );
        histogram(
            &mut out,
            "palisade_upstream_duration_seconds",
            "Time spent waiting on providers, per serving target.",
            &self.upstream,
        );
        histogram(
            &mut out,
            "palisade_gateway_overhead_seconds",
            "Call time not spent waiting on providers.",
            &self.overhead,
        );
        counter(
            &mut out,
            "palisade_upstream_attempts_total",
            "Upstream attempts by target and outcome.",
            &self.attempts,
        );
        counter(
            &mut out,
            "palisade_failovers_total",
            "Attempts that moved a call away from a target.",
            &self.failovers,
        );
        header(
            &mut out,
            "palisade_breaker_state",
            "Circuit breaker state per target: 0 closed, 1 half-open, 2 open.",
            "gauge",
        );
        for b in breakers {
            let _ = writeln!(
                out,
                "palisade_breaker_state{{target=\"{}\"}} {}",
                escape(&b.target),
                b.state
            );
        }
        header(
            &mut out,
            "palisade_breaker_opened_total",
            "Times each target's breaker opened.",
            "counter",
        );
        for b in breakers {
            let _ = writeln!(
                out,
                "palisade_breaker_opened_total{{target=\"{}\"}} {}",
                escape(&b.target),
                b.opened
            );
        }
        counter(
            &mut out,
            "palisade_tokens_total",
            "Tokens by agent, serving target and direction.",
            &self.tokens,
        );
        counter(
            &mut out,
            "palisade_cost_micro_usd_total",
            "Cost in micro-USD by agent and serving target.",
            &self.cost,
        );
        counter(
            &mut out,
            "palisade_limit_refusals_total",
            "Calls, MCP sessions and event streams refused by a rate, concurrency or per-agent \
             limit.",
            &self.limit_refusals,
        );
        header(
            &mut out,
            "palisade_audit_quarantined_total",
            "Audit events the database refused, kept in the audit_dead_letter table instead.",
            "counter",
        );
        let _ = writeln!(
            out,
            "palisade_audit_quarantined_total {}",
            self.audit_quarantined.load(Ordering::Relaxed)
        );
        if let Some(auth) = self.auth.get() {
            header(
                &mut out,
                "palisade_auth_failures_total",
                "Requests refused for their agent key (counted, not audited).",
                "counter",
            );
            for r in crate::registry::failures::Reason::ALL {
                let _ = writeln!(
                    out,
                    "palisade_auth_failures_total{{reason=\"{}\"}} {}",
                    r.label(),
                    auth.count(r)
                );
            }
            header(
                &mut out,
                "palisade_key_lookups_total",
                "Agent keys looked up in the store (key cache misses).",
                "counter",
            );
            let _ = writeln!(out, "palisade_key_lookups_total {}", auth.lookups());
        }
        header(
            &mut out,
            "palisade_connections_open",
            "Client connections open now.",
            "gauge",
        );
        let _ = writeln!(out, "palisade_connections_open {}", self.connections_open());
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(l: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn counter(out: &mut String, name: &str, help: &str, f: &Family<u64>) {
    header(out, name, help, "counter");
    for (l, v) in f.snapshot() {
        let _ = writeln!(out, "{name}{} {v}", labels(&l, None));
    }
}

fn histogram(out: &mut String, name: &str, help: &str, f: &Family<Histogram>) {
    header(out, name, help, "histogram");
    for (l, h) in f.snapshot() {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                labels(&l, Some(("le", b.to_string()))),
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{} {}",
            labels(&l, Some(("le", "+Inf".into()))),
            h.count
        );
        let _ = writeln!(out, "{name}_sum{} {}", labels(&l, None), h.sum);
        let _ = writeln!(out, "{name}_count{} {}", labels(&l, None), h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_escapes_labels() {
        let m = Metrics::default();
        m.set_known(["p/m".to_string(), "q".to_string()]);
        m.observe_call(&CallObservation {
            kind: "llm-call",
            status: 200,
            agent: Some("bot\"x"),
            provider: Some("p/m"),
            total: Duration::from_millis(30),
            upstream: Duration::from_millis(20),
            input_tokens: 5,
            output_tokens: 7,
            cost_micro_usd: 12,
        });
        m.attempt("p/m", "upstream_unavailable");
        let text = m.render(&[]);
        assert!(
            text.contains("palisade_requests_total{kind=\"llm-call\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "palisade_request_duration_seconds_bucket{kind=\"llm-call\",le=\"0.05\"} 1"
            )
        );
        assert!(text.contains(
            "palisade_request_duration_seconds_bucket{kind=\"llm-call\",le=\"0.025\"} 0"
        ));
        assert!(text.contains("palisade_gateway_overhead_seconds_count{kind=\"llm-call\"} 1"));
        assert!(text.contains(
            "palisade_tokens_total{agent=\"bot\\\"x\",provider=\"p/m\",direction=\"output\"} 7"
        ));
        assert!(text.contains("palisade_failovers_total{from=\"p/m\"} 1"));
        m.audit_quarantined().fetch_add(2, Ordering::Relaxed);
        let text = m.render(&[]);
        assert!(
            text.contains("\npalisade_audit_quarantined_total 2\n"),
            "{text}"
        );
    }

    #[test]
    fn labels_are_bounded_by_the_config() {
        let m = Metrics::default();
        m.set_known(["mock".to_string(), "mock/m1".to_string()]);
        for (i, model) in ["mock/m1", "mock/x1", "mock/x2", "ghost/x", "plain"]
            .iter()
            .enumerate()
        {
            m.attempt(model, "ok");
            m.observe_call(&CallObservation {
                kind: "llm-call",
                status: 200,
                agent: Some("a"),
                provider: Some(model),
                total: Duration::from_millis(i as u64),
                upstream: Duration::from_millis(1),
                input_tokens: 1,
                output_tokens: 1,
                cost_micro_usd: 1,
            });
        }
        let text = m.render(&[]);
        assert!(
            text.contains("palisade_upstream_attempts_total{target=\"mock/m1\",outcome=\"ok\"} 1")
        );
        assert!(
            text.contains("palisade_upstream_attempts_total{target=\"mock\",outcome=\"ok\"} 2")
        );
        assert!(
            text.contains("palisade_upstream_attempts_total{target=\"other\",outcome=\"ok\"} 2")
        );
        assert!(
            !text.contains("x1") && !text.contains("ghost") && !text.contains("plain"),
            "{text}"
        );
    }
}
