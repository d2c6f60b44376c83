//! A native test harness: run a plugin's hooks in plain `cargo test`, with an in-memory host.
//!
//! ```ignore
//! let mut h = Harness::<MyPlugin>::new(serde_json::json!({"allow": ["gpt-4o"]})).unwrap();
//! let out = h.on_request(&CallBuilder::llm("gpt-4o").agent("a1").build());
//! assert!(out.is_allow());
//! ```

use std::cell::RefCell;
use std::collections::HashMap;

use crate::{
    Agent, Amount, Call, CallKind, Completion, Config, Exceeded, Level, Outcome, Plugin,
    ReserveError, Tool, Unit, Usage, Window,
};

/// The in-memory host a native test talks to: a ledger without windows (every window counts
/// the same), a key-value map without expiry, and the captured log.
#[derive(Default, Debug)]
pub struct TestHost {
    /// Log lines written by the plugin.
    pub logs: Vec<(Level, String)>,
    /// Settled spend by (scope, unit as `u8`).
    pub spent: HashMap<(String, u8), u64>,
    /// Open reservations: id -> amounts.
    pub reservations: HashMap<u64, Vec<Amount>>,
    /// Key-value store.
    pub kv: HashMap<String, Vec<u8>>,
    /// What `now_ms` returns.
    pub now_ms: u64,
    /// Whether the plugin called [`crate::host::declare_stateless`].
    pub declared_stateless: bool,
    /// What the plugin passed to `declare-kinds` (empty: every kind).
    pub declared_kinds: Vec<CallKind>,
    next_id: u64,
}

thread_local! {
    static HOST: RefCell<TestHost> = RefCell::new(TestHost::default());
}

/// Look at or change the test host of this thread.
pub fn with_host<R>(f: impl FnOnce(&mut TestHost) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

impl TestHost {
    fn reserved(&self, scope: &str, unit: Unit) -> u64 {
        self.reservations
            .values()
            .flatten()
            .filter(|a| a.scope == scope && a.unit == unit)
            .map(|a| a.amount)
            .sum()
    }
}

#[doc(hidden)]
pub mod native {
    use super::*;

    pub fn log(level: Level, message: &str) {
        with_host(|h| h.logs.push((level, message.to_string())))
    }
    pub fn now_ms() -> u64 {
        with_host(|h| h.now_ms)
    }
    pub fn reserve(amounts: &[Amount]) -> Result<u64, ReserveError> {
        with_host(|h| {
            for a in amounts {
                let spent = h
                    .spent
                    .get(&(a.scope.clone(), a.unit as u8))
                    .copied()
                    .unwrap_or(0);
                let reserved = h.reserved(&a.scope, a.unit);
                if spent + reserved + a.amount > a.limit {
                    return Err(ReserveError::Exceeded(Exceeded {
                        scope: a.scope.clone(),
                        unit: a.unit,
                        window: a.window,
                        spent,
                        reserved,
                        limit: a.limit,
                    }));
                }
            }
            h.next_id += 1;
            h.reservations.insert(h.next_id, amounts.to_vec());
            Ok(h.next_id)
        })
    }
    pub fn settle(reservation: u64, micro_usd: u64, tokens: u64) -> Result<(), String> {
        with_host(|h| {
            let amounts = h
                .reservations
                .remove(&reservation)
                .ok_or_else(|| format!("no open reservation {reservation}"))?;
            for a in amounts {
                let v = if a.unit == Unit::MicroUsd {
                    micro_usd
                } else {
                    tokens
                };
                *h.spent.entry((a.scope, a.unit as u8)).or_default() += v;
            }
            Ok(())
        })
    }
    pub fn spent(scope: &str, unit: Unit, _window: Window) -> Result<u64, String> {
        with_host(|h| {
            Ok(h.spent
                .get(&(scope.to_string(), unit as u8))
                .copied()
                .unwrap_or(0))
        })
    }
    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        with_host(|h| h.kv.get(key).cloned())
    }
    pub fn kv_set(key: &str, value: &[u8], _ttl: u32) {
        with_host(|h| {
            h.kv.insert(key.to_string(), value.to_vec());
        })
    }
    pub fn kv_incr(key: &str, delta: i64, _ttl: u32) -> i64 {
        with_host(|h| {
            let cur =
                h.kv.get(key)
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                    .unwrap_or(0);
            let new = cur + delta;
            h.kv.insert(key.to_string(), new.to_string().into_bytes());
            new
        })
    }
    pub fn kv_delete(key: &str) {
        with_host(|h| {
            h.kv.remove(key);
        })
    }
    pub fn declare_stateless() {
        with_host(|h| h.declared_stateless = true)
    }
    pub fn declare_kinds(kinds: &[CallKind]) {
        with_host(|h| h.declared_kinds = kinds.to_vec())
    }
}

/// Runs one plugin value's hooks natively, as the gateway would for one call (or, several calls
/// in a row with their own request ids, as a reused instance of a stateless plugin would).
pub struct Harness<P: Plugin> {
    plugin: P,
}

impl<P: Plugin> Harness<P> {
    /// `init` with this config; `Err` is the message the gateway would refuse to load with.
    pub fn new(config: Config) -> Result<Self, String> {
        Ok(Harness {
            plugin: P::init(config)?,
        })
    }
    /// Run `on-request`.
    pub fn on_request(&mut self, call: &Call) -> Outcome {
        self.plugin.on_request(call)
    }
    /// Run `on-response`.
    pub fn on_response(&mut self, call: &Call, body: &str) -> Outcome {
        self.plugin.on_response(call, body)
    }
    /// Run `on-text` on one delta.
    pub fn on_text(&mut self, call: &Call, delta: &str, last: bool) -> String {
        self.plugin.on_text(call, delta, last)
    }
    /// Run `on-text` over a sequence of deltas as a stream would, returning the joined output.
    pub fn stream(&mut self, call: &Call, deltas: &[&str]) -> String {
        let mut out: String = deltas
            .iter()
            .map(|d| self.plugin.on_text(call, d, false))
            .collect();
        out.push_str(&self.plugin.on_text(call, "", true));
        out
    }
    /// Run `on-complete`.
    pub fn on_complete(&mut self, call: &Call, usage: &Usage, status: &Completion) {
        self.plugin.on_complete(call, usage, status)
    }
    /// Run `filter-tools`.
    pub fn filter_tools(&mut self, call: &Call, tools: &[Tool]) -> Vec<String> {
        self.plugin.filter_tools(call, tools)
    }
}

/// Builds [`Call`] fixtures.
pub struct CallBuilder {
    call: Call,
}

impl CallBuilder {
    /// An LLM call to `model`, with a one-message chat body.
    pub fn llm(model: &str) -> Self {
        let body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": "hello"}],
        });
        Self::new(CallKind::LlmCall, model, body.to_string())
    }
    /// A tool call to `tool` with these arguments.
    pub fn tool(tool: &str, args: serde_json::Value) -> Self {
        Self::new(CallKind::ToolCall, tool, args.to_string())
    }
    fn new(kind: CallKind, target: &str, body: String) -> Self {
        CallBuilder {
            call: Call {
                request_id: "req_test".into(),
                run_id: "run_test".into(),
                chain: vec!["agent".into()],
                agent: Agent {
                    id: "agent".into(),
                    name: "agent".into(),
                    owner: "owner@example.com".into(),
                    team: "team".into(),
                    labels: Vec::new(),
                },
                kind,
                target: target.into(),
                body,
                stream: false,
                input_tokens: 10,
                max_output_tokens: 100,
                max_cost: 0,
            },
        }
    }
    /// Set the calling agent's id (and the chain to just it).
    pub fn agent(mut self, id: &str) -> Self {
        self.call.agent.id = id.into();
        self.call.agent.name = id.into();
        self.call.chain = vec![id.into()];
        self
    }
    /// Set the calling agent's team.
    pub fn team(mut self, team: &str) -> Self {
        self.call.agent.team = team.into();
        self
    }
    /// Add a label to the agent.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.call.agent.labels.push((key.into(), value.into()));
        self
    }
    /// Set the delegation chain (root first); the caller is set to its last agent.
    pub fn chain(mut self, agents: &[&str]) -> Self {
        if let Some(last) = agents.last() {
            self.call.agent.id = (*last).into();
            self.call.agent.name = (*last).into();
        }
        self.call.chain = agents.iter().map(|a| (*a).to_string()).collect();
        self
    }
    /// Set the request id (one per call; a plugin that declared itself stateless sees a new
    /// one when a reused instance starts another call).
    pub fn request(mut self, request_id: &str) -> Self {
        self.call.request_id = request_id.into();
        self
    }
    /// Set the run id.
    pub fn run(mut self, run_id: &str) -> Self {
        self.call.run_id = run_id.into();
        self
    }
    /// Set the worst-case cost in micro-USD (`call.max-cost`).
    pub fn max_cost(mut self, micro_usd: u64) -> Self {
        self.call.max_cost = micro_usd;
        self
    }
    /// Replace the body.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.call.body = body.into();
        self
    }
    /// The finished call.
    pub fn build(self) -> Call {
        self.call
    }
}
