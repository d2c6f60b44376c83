//! The gateway's own limits on what agents may do at once, beside the plugins' budgets:
//! requests and tokens per minute and calls in flight, per agent, per team and for all agents
//! together (`[limits]`, `[[agents]] limits`, the admin API), and caps on an agent's MCP
//! sessions and event streams ([`mcp`]).
//!
//! Rate and concurrency limits are host-side, on the leased ledger (`plugins::ledger`), not a
//! plugin: they must hold across replicas exactly like budgets, which the ledger already does
//! (leases of headroom from the store's shared counters, reserved and settled in memory, the
//! last slice before a limit reserved call by call in the store), and they must apply to every
//! call whatever chain an operator loads, before any plugin instance is taken. A request is
//! one `requests` unit in a counter of the clock minute; tokens are the call's input estimate,
//! reserved at admission, replaced by its real usage when it ends; a call in flight is one
//! `calls` unit of a `total` counter, held for the call's life and never spent. Admission is
//! one reservation over every scope that has a limit, all or nothing, so a refused call holds
//! nothing; a gateway with no limits configured reserves nothing at all.
//!
//! The admission ends where the call's life ends (`call::life`: answered, failed, the client
//! gone, cut by a drain), which settles it: the request stays counted in its minute, the real
//! tokens replace the estimate, the call's place among those in flight is freed.

pub mod mcp;

use std::sync::Arc;

use palisade_store::{Amount, Unit, Window};

use crate::core::error::{CallError, Limit};
use crate::core::settings::limits::{LimitSet, LimitSettings};
use crate::metrics::Metrics;
use crate::plugins::ledger::{Leased, Ledger, Refused};
use crate::registry::Agent;

/// Ledger scopes of the limits start with this, apart from the plugins' budget scopes.
pub const SCOPE_PREFIX: &str = "limit:";
const GLOBAL: &str = "limit:global";

/// A call admitted under the rate and concurrency limits; see the module doc. Dropped without
/// [`Admitted::settle`], its reservation is released (nothing counted).
pub struct Admitted {
    ledger: Arc<Leased>,
    id: u64,
    done: bool,
}

impl Admitted {
    /// The call ended having used `tokens` (input and output): its request stays counted,
    /// its tokens replace the estimate, and it is no longer in flight.
    pub async fn settle(mut self, tokens: u64) {
        self.done = true;
        if let Err(e) = self.ledger.settle(self.id, 0, tokens).await {
            tracing::warn!("rate limit settlement failed (the hold expires): {e}");
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if !self.done {
            self.ledger.release(self.id);
        }
    }
}

/// The limits that apply to `agent`: its own, its team's, everyone's; by ledger scope.
fn scopes(settings: &LimitSettings, agent: &Agent) -> Vec<(String, LimitSet)> {
    let own = LimitSet {
        rpm: agent.limits.rpm,
        tpm: agent.limits.tpm,
        concurrent: agent.limits.concurrent,
    };
    // No allocation for the common case of no limits at all.
    let mut out = Vec::new();
    if !own.is_empty() {
        out.push((format!("{SCOPE_PREFIX}agent:{}", agent.id), own));
    }
    if let Some(team) = settings.teams.get(&agent.team)
        && !team.is_empty()
    {
        out.push((format!("{SCOPE_PREFIX}team:{}", agent.team), *team));
    }
    if !settings.global.is_empty() {
        out.push((GLOBAL.to_string(), settings.global));
    }
    out
}

/// What one call asks of each limit: a request, `tokens` (none for calls without tokens, such
/// as tool calls), a place among the calls in flight.
fn amounts(scopes: &[(String, LimitSet)], tokens: Option<u64>) -> Vec<Amount> {
    let mut out = Vec::new();
    for (scope, set) in scopes {
        let mut add = |unit, window, amount, limit: Option<u64>| {
            if let Some(limit) = limit {
                out.push(Amount {
                    scope: scope.clone(),
                    unit,
                    window,
                    amount,
                    limit,
                });
            }
        };
        add(Unit::Requests, Window::Minute, 1, set.rpm);
        if let Some(t) = tokens {
            add(Unit::Tokens, Window::Minute, t.max(1), set.tpm);
        }
        add(Unit::Calls, Window::Total, 1, set.concurrent);
    }
    out
}

/// `limit:agent:x` as a person reads it: `agent x`, `team y`, `all agents`.
fn who(scope: &str) -> String {
    match scope.strip_prefix(SCOPE_PREFIX) {
        Some("global") | None => "all agents".into(),
        Some(rest) => rest.replacen(':', " ", 1),
    }
}

/// The kind of scope, for the metric label: `agent`, `team` or `global`.
pub fn scope_kind(scope: &str) -> &'static str {
    match scope.strip_prefix(SCOPE_PREFIX) {
        Some(s) if s.starts_with("agent:") => "agent",
        Some(s) if s.starts_with("team:") => "team",
        _ => "global",
    }
}

/// Seconds until the minute of `now_ms` ends (at least 1).
pub fn until_next_minute(now_ms: i64) -> u64 {
    let left = 60_000 - now_ms.rem_euclid(60_000);
    u64::try_from(left.saturating_add(999) / 1000)
        .unwrap_or(60)
        .max(1)
}

/// Admit a call of `agent` using about `tokens` input tokens (`None`: a call without tokens)
/// under every rate and concurrency limit that applies, or refuse it naming the limit. `None`
/// when no limit applies (nothing is held). Refusals are counted in `metrics`.
pub async fn admit(
    ledger: &Ledger,
    settings: &LimitSettings,
    metrics: &Metrics,
    agent: &Agent,
    tokens: Option<u64>,
) -> Result<Option<Admitted>, CallError> {
    let scopes = scopes(settings, agent);
    if scopes.is_empty() {
        return Ok(None);
    }
    let amounts = amounts(&scopes, tokens);
    if amounts.is_empty() {
        return Ok(None);
    }
    // Without a store (benches, unit tests) there is nothing shared to count against.
    let Some(leased) = ledger.leased() else {
        return Ok(None);
    };
    match leased.reserve_counters(&amounts).await {
        Ok(id) => Ok(Some(Admitted {
            ledger: leased.clone(),
            id,
            done: false,
        })),
        Err(Refused::Exceeded(e))
            if matches!(e.unit, Unit::Tokens) && tokens.is_some_and(|t| t > e.limit) =>
        {
            // No minute will ever have room for it: retrying cannot help, so not a 429.
            metrics.limit_refused(Limit::Tpm.label(), scope_kind(&e.scope));
            Err(CallError::bad_request(
                "invalid_request",
                format!(
                    "this call's input (about {} tokens) is larger than the tokens-per-minute \
                     limit of {} ({}): it can never be admitted; send less",
                    tokens.unwrap_or(0),
                    e.limit,
                    who(&e.scope)
                ),
            ))
        }
        Err(Refused::Exceeded(e)) => {
            let (limit, retry_after) = match e.unit {
                Unit::Requests => (Limit::Rpm, until_next_minute(leased.now_ms())),
                Unit::Tokens | Unit::MicroUsd => (Limit::Tpm, until_next_minute(leased.now_ms())),
                Unit::Calls => (Limit::Concurrent, 1),
            };
            metrics.limit_refused(limit.label(), scope_kind(&e.scope));
            Err(CallError::Limited {
                limit,
                scope: who(&e.scope),
                max: e.limit,
                retry_after,
            })
        }
        Err(Refused::Unavailable(m)) => Err(CallError::Internal(format!(
            "rate limits cannot be checked: {m}"
        ))),
    }
}

/// The audit note of a limit's refusal: which limit, whose, how much, when to retry.
pub fn note(e: &CallError) -> Option<crate::plugins::chain::PluginNote> {
    let CallError::Limited {
        limit,
        scope,
        max,
        retry_after,
    } = e
    else {
        return None;
    };
    Some(crate::plugins::chain::PluginNote {
        plugin: Arc::from("palisade.limits"),
        hook: "admit",
        verdict: "deny".into(),
        annotations: vec![
            ("limit".into(), limit.label().into()),
            ("scope".into(), scope.clone()),
            ("max".into(), max.to_string()),
            ("retry_after".into(), retry_after.to_string()),
        ],
        error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(team: &str, limits: palisade_store::AgentLimits) -> Agent {
        Agent {
            id: "a1".into(),
            name: "a1".into(),
            owner: String::new(),
            team: team.into(),
            labels: Vec::new(),
            limits,
        }
    }

    #[test]
    fn every_scope_with_a_limit_is_asked_once_per_kind() {
        let mut s = LimitSettings::default();
        s.global.concurrent = Some(10);
        s.teams.insert(
            "t".into(),
            LimitSet {
                rpm: Some(5),
                ..LimitSet::default()
            },
        );
        let a = agent(
            "t",
            palisade_store::AgentLimits {
                tpm: Some(100),
                ..Default::default()
            },
        );
        let sc = scopes(&s, &a);
        let got: Vec<(String, Unit, u64)> = amounts(&sc, Some(7))
            .into_iter()
            .map(|a| (a.scope, a.unit, a.amount))
            .collect();
        assert_eq!(
            got,
            [
                ("limit:agent:a1".to_string(), Unit::Tokens, 7),
                ("limit:team:t".to_string(), Unit::Requests, 1),
                ("limit:global".to_string(), Unit::Calls, 1),
            ]
        );
        // A tool call has no tokens to count.
        assert_eq!(amounts(&sc, None).len(), 2);
        assert!(scopes(&LimitSettings::default(), &agent("x", Default::default())).is_empty());
        assert_eq!(who("limit:team:t"), "team t");
        assert_eq!(who("limit:global"), "all agents");
        assert_eq!(until_next_minute(60_000 * 7 + 59_500), 1);
        assert_eq!(until_next_minute(60_000 * 7), 60);
        assert_eq!(until_next_minute(60_000 * 7 + 12_345), 48);
    }
}
