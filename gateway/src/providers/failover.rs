//! Executing a [`Plan`]: try its targets in order until one answers, within the retry count
//! and the call's deadline.
//!
//! - A connect error, a timeout (connect, first byte, first token, total), a 429 or a 5xx moves
//!   the call to the next target and counts against the target's breaker. Moving to a target
//!   not tried yet is immediate; trying one again (when `retries` exceeds the targets) waits a
//!   jittered exponential backoff first, never past the deadline.
//! - Any other 4xx is the request's fault: it is returned at once (every target would say the
//!   same), and counts as the target being up.
//! - A target whose breaker is open is skipped; a half-open one gets this call as its probe.
//! - Streams fail over only before their first content ([`ChunkStream::prime`]), so nothing the
//!   agent saw came from a target that then failed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::breaker::Breakers;
use super::chunks::ChunkStream;
use super::client::{Provider, retryable};
use super::config::Target;
use super::dialect::TranslateError;
use super::routes::{Plan, ProviderSet};
use crate::core::error::CallError;
use crate::metrics::Metrics;

/// What failover needs from the gateway: the call's snapshot's clients and breakers.
pub struct Ctx<'a> {
    pub set: &'a ProviderSet,
    pub breakers: &'a Breakers,
    pub metrics: &'a Metrics,
}

/// One target tried and failed (or skipped), for the audit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attempt {
    pub target: String,
    /// The error code (`upstream_timeout`, ...) or `circuit_open`.
    pub outcome: String,
}

/// An answer in OpenAI shape.
pub enum Answer {
    Full(Value),
    Stream(ChunkStream),
}

pub struct Served {
    pub target: Target,
    pub provider: Arc<Provider>,
    pub answer: Answer,
    /// Targets that failed or were skipped before this one.
    pub attempts: Vec<Attempt>,
    /// Time spent waiting on providers.
    pub upstream_time: Duration,
}

pub struct Failed {
    pub error: CallError,
    pub attempts: Vec<Attempt>,
    pub upstream_time: Duration,
}

/// Try the plan's targets; the first answer wins.
pub async fn run(
    ctx: &Ctx<'_>,
    plan: &Plan,
    canonical: &Map<String, Value>,
    stream: bool,
) -> Result<Served, Failed> {
    let start = Instant::now();
    let deadline = start + plan.deadline;
    let n = plan.targets.len();
    let allowed = plan.retries as usize + 1;
    let mut tried = vec![0u32; n];
    let mut made = 0usize;
    let mut attempts = Vec::new();
    let mut last: Option<CallError> = None;
    let mut upstream_time = Duration::ZERO;
    let fail = |error, attempts, upstream_time| Failed {
        error,
        attempts,
        upstream_time,
    };

    // Each pass over the targets consumes at least one attempt or skips all; bounded either way.
    for i in 0..n * allowed {
        if made >= allowed {
            break;
        }
        let idx = i % n;
        let target = &plan.targets[idx];
        let name = target.to_string();
        let Some(provider) = ctx.set.get(&target.provider) else {
            return Err(fail(
                CallError::Internal(format!("target {name} names an unknown provider")),
                attempts,
                upstream_time,
            ));
        };
        // Metrics go by the breaker's key, bounded by the config: a model string an agent
        // made up is labelled with its provider.
        let Some((label, breaker)) = ctx.breakers.get(target) else {
            return Err(fail(
                CallError::Internal(format!("target {name} names a provider with no breaker")),
                attempts,
                upstream_time,
            ));
        };
        // Dropped on any path without a verdict (deadline, encoding error, the call's future
        // dropped mid-attempt), the permit frees a probe slot it held.
        let Some(permit) = breaker.admit() else {
            ctx.metrics.attempt(label, "circuit_open");
            attempts.push(Attempt {
                target: name,
                outcome: "circuit_open".into(),
            });
            continue;
        };
        if tried[idx] > 0 {
            let wait = backoff(plan.backoff, tried[idx]);
            if Instant::now() + wait >= deadline {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tried[idx] += 1;
        made += 1;
        let out = match provider
            .settings
            .dialect
            .encode_request(canonical, &target.model)
        {
            Ok(o) => o,
            Err(e) => return Err(fail(translate_error(e), attempts, upstream_time)),
        };
        let t0 = Instant::now();
        let result = attempt(provider, target, out, stream, deadline - now).await;
        upstream_time += t0.elapsed();
        match result {
            Ok(answer) => {
                permit.success();
                ctx.metrics.attempt(label, "ok");
                return Ok(Served {
                    target: target.clone(),
                    provider: provider.clone(),
                    answer,
                    attempts,
                    upstream_time,
                });
            }
            Err(e) if retryable(&e) => {
                permit.failure();
                ctx.metrics.attempt(label, e.code());
                tracing::info!(target = %name, code = e.code(), "target failed, failing over: {e}");
                attempts.push(Attempt {
                    target: name,
                    outcome: e.code().to_string(),
                });
                last = Some(e);
            }
            Err(e) => {
                // The target answered; the request was the problem.
                permit.success();
                ctx.metrics.attempt(label, e.code());
                return Err(fail(e, attempts, upstream_time));
            }
        }
    }
    let error = last.unwrap_or_else(|| {
        let names: Vec<String> = plan.targets.iter().map(ToString::to_string).collect();
        CallError::UpstreamUnavailable {
            provider: names.join(", "),
            message: "every target of the route is unavailable (circuit open) or the call's \
                      deadline passed"
                .into(),
        }
    });
    Err(fail(error, attempts, upstream_time))
}

/// One attempt on one target, within `remaining` of the call's deadline.
async fn attempt(
    provider: &Provider,
    target: &Target,
    out: super::dialect::Outgoing,
    stream: bool,
    remaining: Duration,
) -> Result<Answer, CallError> {
    let s = &provider.settings;
    let t0 = Instant::now();
    let first_byte = s.first_byte_timeout.min(remaining);
    let resp = provider.send(out, first_byte).await?;
    if stream {
        let mut chunks = ChunkStream::new(
            resp.into_body(),
            s.dialect.stream_decoder(&target.model),
            s.name.clone(),
            s.stream_idle_timeout,
        );
        let left = first_byte.saturating_sub(t0.elapsed());
        chunks.prime(left).await?;
        return Ok(Answer::Stream(chunks));
    }
    let total = s.timeout.min(remaining).saturating_sub(t0.elapsed());
    let body = provider.read(resp, total).await?;
    let value = s
        .dialect
        .decode_response(&body, &target.model)
        .map_err(|e| CallError::UpstreamUnavailable {
            provider: s.name.clone(),
            message: e.to_string(),
        })?;
    // A 2xx that is an error, or not an answer at all, is a failure of the target.
    if let Some(err) = value.get("error") {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("error in a 2xx answer")
            .to_string();
        return Err(CallError::UpstreamStatus {
            provider: s.name.clone(),
            status: 502,
            message,
        });
    }
    if value.get("choices").and_then(Value::as_array).is_none() {
        return Err(CallError::UpstreamUnavailable {
            provider: s.name.clone(),
            message: "answer has no choices".into(),
        });
    }
    Ok(Answer::Full(value))
}

fn translate_error(e: TranslateError) -> CallError {
    match e {
        TranslateError::Unsupported { .. } => CallError::bad_request("unsupported", e.to_string()),
        TranslateError::BadRequest(m) => CallError::bad_request("invalid_request", m),
        TranslateError::Malformed { .. } => CallError::Internal(e.to_string()),
    }
}

/// Full-jitter exponential backoff: uniform in [base·2^(n-1) / 2, base·2^(n-1)], capped at 10 s.
pub fn backoff(base: Duration, nth: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << nth.saturating_sub(1).min(16));
    let cap = exp.min(Duration::from_secs(10));
    let half = cap / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for _ in 0..100 {
            let b1 = backoff(base, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= base, "{b1:?}");
            let b3 = backoff(base, 3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400));
            assert!(backoff(base, 40) <= Duration::from_secs(10));
        }
    }
}
