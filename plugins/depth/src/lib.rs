//! `depth`: stops runaway delegation. Agent A asks B, B asks C, C asks A: the gateway's signed
//! delegation chain (`call.chain`, root first, ending with the caller) says who acted for whom,
//! and this plugin refuses calls whose chain is too deep, loops, or whose run made too many calls.
//!
//! Config:
//! ```toml
//! [[plugins]]
//! name = "depth"
//! path = "plugins/depth.wasm"
//! [plugins.config]
//! max_depth = 5            # agents in one chain, caller included (default 8)
//! max_repeats = 2          # times one agent may appear in one chain (default 3)
//! max_calls_per_run = 200  # calls of one run, all agents together (default: no limit)
//! [plugins.config.agents.research-bot]
//! max_depth = 3            # per calling agent; also max_repeats, max_calls_per_run
//! ```
//! A refusal is HTTP 429 with code `delegation_limit`, naming the chain (`a → b → c`).
//! The calls of a run are counted in the host's ledger (scope `calls:run:<id>`, in `tokens`,
//! window `total`): one atomic reservation per call, so gateway replicas sharing a database
//! count one run together and cannot pass the limit between them.

use std::collections::BTreeMap;

use palisade_plugin_sdk::ReserveError;
use palisade_plugin_sdk::prelude::*;
use serde::Deserialize;

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Limits {
    max_depth: Option<u32>,
    max_repeats: Option<u32>,
    max_calls_per_run: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rules {
    max_depth: Option<u32>,
    max_repeats: Option<u32>,
    max_calls_per_run: Option<u64>,
    #[serde(default)]
    agents: BTreeMap<String, Limits>,
}

const DEFAULT_MAX_DEPTH: u32 = 8;
const DEFAULT_MAX_REPEATS: u32 = 3;

/// The plugin: its parsed rules.
pub struct Depth {
    rules: Rules,
}

/// The limits in force for one calling agent.
struct Effective {
    max_depth: u32,
    max_repeats: u32,
    max_calls_per_run: Option<u64>,
}

impl Depth {
    fn limits(&self, agent: &str) -> Effective {
        let own = self.rules.agents.get(agent).copied().unwrap_or_default();
        let d = &self.rules;
        Effective {
            max_depth: own.max_depth.or(d.max_depth).unwrap_or(DEFAULT_MAX_DEPTH),
            max_repeats: own
                .max_repeats
                .or(d.max_repeats)
                .unwrap_or(DEFAULT_MAX_REPEATS),
            max_calls_per_run: own.max_calls_per_run.or(d.max_calls_per_run),
        }
    }
}

fn chain_text(call: &Call) -> String {
    call.chain.join(" → ")
}

fn refuse(call: &Call, why: String) -> Outcome {
    Outcome::deny(
        429,
        "delegation_limit",
        format!("{why}; chain: {}", chain_text(call)),
    )
    .note("depth.chain", chain_text(call))
}

impl Plugin for Depth {
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    fn init(config: Config) -> Result<Self, String> {
        let rules: Rules =
            serde_json::from_value(config).map_err(|e| format!("depth config: {e}"))?;
        let all = std::iter::once((rules.max_depth, rules.max_repeats))
            .chain(rules.agents.values().map(|l| (l.max_depth, l.max_repeats)));
        for (depth, repeats) in all {
            if depth == Some(0) || repeats == Some(0) {
                return Err("depth config: max_depth and max_repeats must be at least 1".into());
            }
        }
        // The value holds only the parsed config (a run's calls are counted in the ledger):
        // instances may be reused across calls.
        host::declare_stateless();
        Ok(Depth { rules })
    }

    fn on_request(&mut self, call: &Call) -> Outcome {
        let limits = self.limits(&call.agent.id);
        let depth = u32::try_from(call.chain.len()).unwrap_or(u32::MAX);
        if depth > limits.max_depth {
            return refuse(
                call,
                format!(
                    "delegation depth {depth} is over the limit of {} for agent '{}'",
                    limits.max_depth, call.agent.id
                ),
            );
        }
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for a in &call.chain {
            *counts.entry(a.as_str()).or_default() += 1;
        }
        if let Some((agent, n)) = counts
            .iter()
            .filter(|(_, n)| **n > limits.max_repeats)
            .max_by_key(|(_, n)| **n)
        {
            return refuse(
                call,
                format!(
                    "delegation loop: agent '{agent}' appears {n} times in one run (limit {})",
                    limits.max_repeats
                ),
            );
        }
        let out = Outcome::allow().note("depth.depth", depth.to_string());
        if let Some(max) = limits.max_calls_per_run {
            match count_call(&call.run_id, max) {
                Ok(()) => {}
                Err(ReserveError::Exceeded(e)) => {
                    let n = e.spent + e.reserved + 1;
                    return refuse(
                        call,
                        format!(
                            "run '{}' made {n} calls, over the limit of {max} calls per run",
                            call.run_id
                        ),
                    );
                }
                Err(ReserveError::Unavailable(m)) => {
                    return Outcome::deny(
                        503,
                        "ledger_unavailable",
                        format!("cannot count the calls of run '{}': {m}", call.run_id),
                    );
                }
            }
        }
        out
    }
}

/// Count one call of `run` against `max`, atomically in the shared ledger: reserve one unit, and
/// settle it at once, since the call is counted whether or not it succeeds.
fn count_call(run: &str, max: u64) -> Result<(), ReserveError> {
    let id = host::reserve(&[Amount {
        scope: format!("calls:run:{run}"),
        unit: Unit::Tokens,
        window: Window::Total,
        amount: 1,
        limit: max,
    }])?;
    host::settle(id, 0, 1).map_err(ReserveError::Unavailable)
}

export_plugin!(Depth);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_plugin_sdk::testing::{CallBuilder, Harness, with_host};
    use serde_json::json;

    fn call(chain: &[&str], run: &str) -> Call {
        CallBuilder::llm("gpt-4o-mini")
            .chain(chain)
            .run(run)
            .build()
    }

    fn denial(out: Outcome) -> (u16, String, String) {
        match out.verdict {
            Verdict::Deny(d) => (d.status, d.code, d.message),
            other => panic!("expected deny, got {other:?}"),
        }
    }

    #[test]
    fn depth_limit_names_the_chain() {
        let mut h = Harness::<Depth>::new(json!({"max_depth": 3, "max_repeats": 5})).unwrap();
        assert!(h.on_request(&call(&["a", "b", "c"], "r1")).is_allow());
        let (status, code, msg) = denial(h.on_request(&call(&["a", "b", "c", "a"], "r1")));
        assert_eq!((status, code.as_str()), (429, "delegation_limit"));
        assert!(msg.contains("a → b → c → a"), "{msg}");
        assert!(msg.contains("depth 4"), "{msg}");
    }

    #[test]
    fn per_agent_depth_overrides_the_default() {
        let mut h = Harness::<Depth>::new(json!({
            "max_depth": 5,
            "agents": {"c": {"max_depth": 2}},
        }))
        .unwrap();
        assert!(h.on_request(&call(&["a", "b", "d"], "r")).is_allow());
        denial(h.on_request(&call(&["a", "b", "c"], "r")));
    }

    #[test]
    fn loops_are_detected() {
        let mut h = Harness::<Depth>::new(json!({"max_depth": 10, "max_repeats": 1})).unwrap();
        assert!(h.on_request(&call(&["a", "b", "c"], "r")).is_allow());
        let (_, _, msg) = denial(h.on_request(&call(&["a", "b", "a"], "r")));
        assert!(msg.contains("agent 'a' appears 2 times"), "{msg}");
    }

    #[test]
    fn calls_per_run_are_counted_per_run() {
        let mut h = Harness::<Depth>::new(json!({"max_calls_per_run": 2})).unwrap();
        assert!(h.on_request(&call(&["a"], "run-x")).is_allow());
        assert!(h.on_request(&call(&["a", "b"], "run-x")).is_allow());
        let (_, code, msg) = denial(h.on_request(&call(&["a", "b"], "run-x")));
        assert_eq!(code, "delegation_limit");
        assert!(msg.contains("3 calls"), "{msg}");
        assert!(h.on_request(&call(&["a"], "run-y")).is_allow());
    }

    #[test]
    fn bad_config_is_rejected() {
        assert!(Harness::<Depth>::new(json!({"max_dept": 3})).is_err());
        assert!(Harness::<Depth>::new(json!({"max_depth": 0})).is_err());
    }

    #[test]
    fn init_declares_the_plugin_stateless() {
        Harness::<Depth>::new(serde_json::json!({})).unwrap();
        assert!(with_host(|h| h.declared_stateless));
    }
}
