//! `budget`: spend and token caps per agent, per team and per run (the whole delegation chain),
//! enforced before the call.
//!
//! Config (amounts in micro-USD, `usd` as a convenience, or tokens; windows `hour`, `day`,
//! `month` (calendar, UTC) or `total`):
//! ```toml
//! [[plugins]]
//! name = "budget"
//! path = "plugins/budget.wasm"
//! [plugins.config]
//! shadow = false                 # true: log and annotate what would be denied, deny nothing
//! on_unknown_cost = "deny"       # or "allow" (flagged), or { assume = 5000 } micro-USD
//! [plugins.config.defaults.agent]   # every agent, unless `agents` names it
//! usd = { day = 5.0 }
//! tokens = { hour = 200000 }
//! [plugins.config.defaults.team]
//! micro_usd = { month = 500000000 }
//! [plugins.config.defaults.run]     # one delegation run, all its agents together
//! micro_usd = { total = 2000000 }
//! [plugins.config.agents.research-bot]
//! usd = { day = 20.0 }
//! [plugins.config.teams.support]
//! usd = { month = 100.0 }
//! ```
//! An agent whose registry entry has budgets (set with `POST /admin/api/agents` or
//! `[[agents]] budgets` in `palisade.toml`; the host passes them as the label
//! `palisade.budgets`, JSON in the format above, e.g. `{"usd":{"day":0.01}}`) has those as its
//! agent limits instead of `defaults.agent`; `[plugins.config.agents.<id>]` still wins. A
//! registry entry that does not parse as limits is refused (fail closed: 403
//! `budget_invalid`) rather than ignored.
//!
//! `on-request` reserves the call's worst case (`call.max-cost`: estimated input plus
//! `max_tokens` output; tokens likewise) against every limit that applies, all or nothing, and
//! denies with HTTP 429 `budget_exceeded` naming the scope, its spend and its limit.
//! `on-complete` settles the real cost; the host releases a reservation never settled.

use std::collections::BTreeMap;

use palisade_plugin_sdk::prelude::*;
use palisade_plugin_sdk::{Level, ReserveError};
use serde::Deserialize;

/// Limits of one scope, by unit and window.
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct Limits {
    #[serde(default)]
    micro_usd: BTreeMap<WindowName, u64>,
    #[serde(default)]
    usd: BTreeMap<WindowName, f64>,
    #[serde(default)]
    tokens: BTreeMap<WindowName, u64>,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
enum WindowName {
    Hour,
    Day,
    Month,
    Total,
}

impl WindowName {
    fn window(self) -> Window {
        match self {
            WindowName::Hour => Window::Hour,
            WindowName::Day => Window::Day,
            WindowName::Month => Window::Month,
            WindowName::Total => Window::Total,
        }
    }
    fn name(self) -> &'static str {
        match self {
            WindowName::Hour => "hour",
            WindowName::Day => "day",
            WindowName::Month => "month",
            WindowName::Total => "total",
        }
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Defaults {
    agent: Option<Limits>,
    team: Option<Limits>,
    run: Option<Limits>,
}

/// What to do with a call whose cost cannot be estimated (no price for its model).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
enum UnknownCost {
    /// Refuse it (default): an unpriced model could spend without limit.
    #[default]
    Deny,
    /// Let it through, reserving nothing in micro-USD, and flag it in the audit.
    Allow,
    /// Count it as this many micro-USD.
    Assume(u64),
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Rules {
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    on_unknown_cost: UnknownCost,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    agents: BTreeMap<String, Limits>,
    #[serde(default)]
    teams: BTreeMap<String, Limits>,
}

/// One limit in micro-USD or tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MicroUsd,
    Tokens,
}

/// The plugin: its rules, and the reservation of the running call. The plugin declares itself
/// stateless, so one value may serve several calls one after the other: `on-request` starts
/// each call with no reservation, and `on-complete` settles only a reservation of its own call.
pub struct Budget {
    rules: Rules,
    /// The running call's request id and reservation.
    reservation: Option<(String, u64)>,
    /// The cost assumed for a call without a price, if the policy says so.
    assumed: Option<u64>,
}

fn unit_name(u: Unit) -> &'static str {
    match u {
        Unit::MicroUsd => "micro-USD",
        Unit::Tokens => "tokens",
    }
}

fn window_name(w: Window) -> &'static str {
    match w {
        Window::Hour => "hour",
        Window::Day => "day",
        Window::Month => "month",
        Window::Total => "total",
    }
}

impl Limits {
    /// (unit, window, limit) of every limit set.
    fn each(&self) -> Vec<(Kind, WindowName, u64)> {
        let mut out: Vec<(Kind, WindowName, u64)> = Vec::new();
        for (w, v) in &self.micro_usd {
            out.push((Kind::MicroUsd, *w, *v));
        }
        for (w, usd) in &self.usd {
            let micro = (usd * 1_000_000.0).round().max(0.0) as u64;
            // Where both are given for one window, the lower wins.
            match out
                .iter_mut()
                .find(|(k, win, _)| *k == Kind::MicroUsd && win == w)
            {
                Some(e) => e.2 = e.2.min(micro),
                None => out.push((Kind::MicroUsd, *w, micro)),
            }
        }
        for (w, v) in &self.tokens {
            out.push((Kind::Tokens, *w, *v));
        }
        out
    }

    fn validate(&self, what: &str) -> Result<(), String> {
        if let Some((w, _)) = self.usd.iter().find(|(_, v)| !v.is_finite() || **v < 0.0) {
            return Err(format!(
                "budget config: {what}: usd.{} must be a non-negative number",
                w.name()
            ));
        }
        Ok(())
    }
}

/// The label the host puts the agent's registry budgets under.
const BUDGETS_LABEL: &str = "palisade.budgets";

/// The agent's budgets from the registry, if it has any.
fn registry_budgets(call: &Call) -> Result<Option<Limits>, String> {
    let Some((_, json)) = call.agent.labels.iter().find(|(k, _)| k == BUDGETS_LABEL) else {
        return Ok(None);
    };
    let limits: Limits = serde_json::from_str(json).map_err(|e| {
        format!(
            "agent '{}' has registry budgets that are not limits: {e}",
            call.agent.id
        )
    })?;
    limits.validate("registry budgets")?;
    Ok(Some(limits))
}

impl Budget {
    /// The scopes that apply to a call, with their limits; an error if the agent's registry
    /// budgets do not parse.
    fn scopes(&self, call: &Call) -> Result<Vec<(String, std::borrow::Cow<'_, Limits>)>, String> {
        use std::borrow::Cow;
        let mut out = Vec::new();
        let agent = match self.rules.agents.get(&call.agent.id) {
            Some(l) => Some(Cow::Borrowed(l)),
            None => match registry_budgets(call)? {
                Some(l) => Some(Cow::Owned(l)),
                None => self.rules.defaults.agent.as_ref().map(Cow::Borrowed),
            },
        };
        if let Some(l) = agent {
            out.push((format!("agent:{}", call.agent.id), l));
        }
        if !call.agent.team.is_empty() {
            let team = self
                .rules
                .teams
                .get(&call.agent.team)
                .or(self.rules.defaults.team.as_ref());
            if let Some(l) = team {
                out.push((format!("team:{}", call.agent.team), Cow::Borrowed(l)));
            }
        }
        if let Some(l) = &self.rules.defaults.run
            && !call.run_id.is_empty()
        {
            out.push((format!("run:{}", call.run_id), Cow::Borrowed(l)));
        }
        Ok(out)
    }

    fn shadow_check(&self, amounts: &[Amount]) -> Option<String> {
        for a in amounts {
            let spent = host::spent(&a.scope, a.unit, a.window).unwrap_or(0);
            if spent.saturating_add(a.amount) > a.limit {
                return Some(format!(
                    "{} ({} per {}): spent {spent}, limit {}, this call up to {}",
                    a.scope,
                    unit_name(a.unit),
                    window_name(a.window),
                    a.limit,
                    a.amount
                ));
            }
        }
        None
    }
}

impl Plugin for Budget {
    const HOOKS: Hooks = Hooks::ON_REQUEST.union(Hooks::ON_COMPLETE);

    fn init(config: Config) -> Result<Self, String> {
        let rules: Rules =
            serde_json::from_value(config).map_err(|e| format!("budget config: {e}"))?;
        for (what, l) in [
            ("defaults.agent", &rules.defaults.agent),
            ("defaults.team", &rules.defaults.team),
            ("defaults.run", &rules.defaults.run),
        ] {
            if let Some(l) = l {
                l.validate(what)?;
            }
        }
        for (name, l) in rules.agents.iter().chain(rules.teams.iter()) {
            l.validate(name)?;
        }
        // Per-call state is reset in `on-request` and keyed by request id, so instances may be
        // reused; the spend itself lives in the host's ledger.
        host::declare_stateless();
        // Listings cost nothing and are never refused.
        host::declare_kinds(&[CallKind::LlmCall, CallKind::ToolCall]);
        Ok(Budget {
            rules,
            reservation: None,
            assumed: None,
        })
    }

    fn on_request(&mut self, call: &Call) -> Outcome {
        // A new call on a reused value: nothing of the previous one carries over.
        self.reservation = None;
        self.assumed = None;
        if call.kind == CallKind::ToolList {
            return Outcome::allow();
        }
        let scopes = match self.scopes(call) {
            Ok(s) => s,
            Err(e) => return Outcome::deny(403, "budget_invalid", e),
        };
        if scopes.is_empty() {
            return Outcome::allow();
        }
        let tokens = u64::from(call.input_tokens) + u64::from(call.max_output_tokens);
        let mut notes: Vec<(&str, String)> = Vec::new();
        let mut cost = call.max_cost;
        let mut assumed = None;
        let counts_usd = scopes
            .iter()
            .any(|(_, l)| !l.micro_usd.is_empty() || !l.usd.is_empty());
        if cost == 0 && counts_usd && call.kind == CallKind::LlmCall {
            match self.rules.on_unknown_cost {
                UnknownCost::Deny if !self.rules.shadow => {
                    return Outcome::deny(
                        403,
                        "budget_cost_unknown",
                        format!(
                            "the cost of a call to '{}' cannot be estimated (no price is \
                             configured for it), and budgets refuse calls of unknown cost",
                            call.target
                        ),
                    );
                }
                UnknownCost::Deny | UnknownCost::Allow => {
                    notes.push(("budget.cost_unknown", "true".into()));
                }
                UnknownCost::Assume(n) => {
                    cost = n;
                    assumed = Some(n);
                    notes.push(("budget.cost_assumed", n.to_string()));
                }
            }
        }
        let mut amounts = Vec::new();
        for (scope, limits) in &scopes {
            for (kind, window, limit) in limits.each() {
                let (unit, amount) = match kind {
                    Kind::MicroUsd => (Unit::MicroUsd, cost),
                    Kind::Tokens => (Unit::Tokens, tokens),
                };
                amounts.push(Amount {
                    scope: scope.clone(),
                    unit,
                    window: window.window(),
                    amount,
                    limit,
                });
            }
        }
        drop(scopes);
        self.assumed = assumed;
        if self.rules.shadow {
            if let Some(why) = self.shadow_check(&amounts) {
                host::log(Level::Warn, &format!("shadow: would deny: {why}"));
                notes.push(("budget.shadow_denied", why));
            }
            // Track spend without enforcing: hold against no limit.
            for a in &mut amounts {
                a.limit = u64::MAX >> 4;
            }
        }
        let out = match host::reserve(&amounts) {
            Ok(id) => {
                self.reservation = Some((call.request_id.clone(), id));
                Outcome::allow().note("budget.reserved_micro_usd", cost.to_string())
            }
            Err(ReserveError::Exceeded(e)) => Outcome::deny(
                429,
                "budget_exceeded",
                format!(
                    "budget exceeded for {} ({} per {}): spent {}, held by calls in flight {}, \
                     limit {}; this call may cost up to {}",
                    e.scope,
                    unit_name(e.unit),
                    window_name(e.window),
                    e.spent,
                    e.reserved,
                    e.limit,
                    match e.unit {
                        Unit::MicroUsd => cost,
                        Unit::Tokens => tokens,
                    }
                ),
            )
            .note("budget.scope", e.scope),
            Err(ReserveError::Unavailable(m)) if self.rules.shadow => {
                Outcome::allow().note("budget.ledger_unavailable", m)
            }
            Err(ReserveError::Unavailable(m)) => Outcome::deny(
                503,
                "budget_unavailable",
                format!("the spend ledger cannot be reached, so budgets cannot be checked: {m}"),
            ),
        };
        notes.into_iter().fold(out, |o, (k, v)| o.note(k, v))
    }

    fn on_complete(&mut self, call: &Call, usage: &Usage, _status: &Completion) {
        // Only this call's reservation: on a reused value, one left by a call whose
        // `on-complete` never ran is not this call's to settle (the host released it).
        let Some((_, id)) = self
            .reservation
            .take_if(|(request_id, _)| *request_id == call.request_id)
        else {
            return;
        };
        let tokens = u64::from(usage.input_tokens) + u64::from(usage.output_tokens);
        let mut cost = usage.cost;
        if cost == 0
            && tokens > 0
            && call.max_cost == 0
            && let Some(n) = self.assumed
        {
            cost = n;
        }
        if let Err(e) = host::settle(id, cost, tokens) {
            host::log(
                Level::Error,
                &format!("cannot settle reservation {id}: {e}"),
            );
        }
    }
}

export_plugin!(Budget);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_plugin_sdk::testing::{CallBuilder, Harness, with_host};
    use serde_json::json;

    fn call(agent: &str, cost: u64) -> Call {
        CallBuilder::llm("gpt-4o-mini")
            .agent(agent)
            .team("support")
            .run("run_1")
            .max_cost(cost)
            .build()
    }

    fn usage(cost: u64) -> Usage {
        Usage {
            input_tokens: 10,
            output_tokens: 20,
            cached_tokens: 0,
            cost,
            served_by: "mock/gpt-4o-mini".into(),
        }
    }

    fn done() -> Completion {
        Completion {
            status: 200,
            error_code: None,
            truncated: false,
        }
    }

    fn deny_of(o: &Outcome) -> (u16, String, String) {
        match &o.verdict {
            Verdict::Deny(d) => (d.status, d.code.clone(), d.message.clone()),
            other => panic!("expected deny, got {other:?}"),
        }
    }

    fn reset() {
        with_host(|h| *h = Default::default());
    }

    #[test]
    fn reserves_worst_case_and_settles_real_cost() {
        reset();
        let cfg = json!({"defaults": {"agent": {"micro_usd": {"day": 1000}}}});
        let mut h = Harness::<Budget>::new(cfg.clone()).unwrap();
        let c = call("a", 400);
        assert!(h.on_request(&c).is_allow());
        // Worst case held: a second call of 700 does not fit next to it.
        let mut h2 = Harness::<Budget>::new(cfg.clone()).unwrap();
        let (status, code, msg) = deny_of(&h2.on_request(&call("a", 700)));
        assert_eq!((status, code.as_str()), (429, "budget_exceeded"));
        assert!(msg.contains("agent:a"), "{msg}");
        assert!(msg.contains("limit 1000"), "{msg}");
        h.on_complete(&c, &usage(100), &done());
        assert_eq!(
            with_host(|h| h
                .spent
                .get(&("agent:a".to_string(), Unit::MicroUsd as u8))
                .copied()),
            Some(100)
        );
        // Now 700 fits (100 spent).
        assert!(h2.on_request(&call("a", 700)).is_allow());
    }

    #[test]
    fn team_and_run_scopes_and_per_agent_overrides() {
        reset();
        let cfg = json!({
            "defaults": {"agent": {"usd": {"day": 1.0}}, "run": {"micro_usd": {"total": 500}}},
            "agents": {"big": {"usd": {"day": 100.0}}},
            "teams": {"support": {"tokens": {"hour": 1000}}},
        });
        let mut h = Harness::<Budget>::new(cfg.clone()).unwrap();
        let (_, _, msg) = deny_of(&h.on_request(&call("big", 600)));
        assert!(msg.contains("run:run_1"), "{msg}");
        let mut c = call("big", 100);
        c.max_output_tokens = 5000;
        let (_, _, msg) = deny_of(&h.on_request(&c));
        assert!(
            msg.contains("team:support") && msg.contains("tokens"),
            "{msg}"
        );
        assert!(h.on_request(&call("big", 100)).is_allow());
    }

    #[test]
    fn shadow_mode_denies_nothing_but_says_so() {
        reset();
        let cfg = json!({"shadow": true, "defaults": {"agent": {"micro_usd": {"day": 10}}}});
        let mut h = Harness::<Budget>::new(cfg).unwrap();
        let c = call("a", 50);
        let out = h.on_request(&c);
        assert!(out.is_allow());
        assert!(
            out.annotations
                .iter()
                .any(|(k, _)| k == "budget.shadow_denied"),
            "{:?}",
            out.annotations
        );
        h.on_complete(&c, &usage(50), &done());
        assert!(with_host(|h| h
            .logs
            .iter()
            .any(|(_, m)| m.contains("would deny"))));
    }

    #[test]
    fn unknown_cost_follows_the_policy() {
        reset();
        let limits = json!({"agent": {"micro_usd": {"day": 1000}}});
        let mut deny = Harness::<Budget>::new(json!({"defaults": limits})).unwrap();
        let (status, code, _) = deny_of(&deny.on_request(&call("a", 0)));
        assert_eq!((status, code.as_str()), (403, "budget_cost_unknown"));

        let mut allow =
            Harness::<Budget>::new(json!({"defaults": limits, "on_unknown_cost": "allow"}))
                .unwrap();
        let out = allow.on_request(&call("a", 0));
        assert!(out.is_allow());
        assert!(
            out.annotations
                .iter()
                .any(|(k, _)| k == "budget.cost_unknown")
        );

        let mut assume =
            Harness::<Budget>::new(json!({"defaults": limits, "on_unknown_cost": {"assume": 600}}))
                .unwrap();
        let c = call("b", 0);
        assert!(assume.on_request(&c).is_allow());
        assume.on_complete(&c, &usage(0), &done());
        assert_eq!(
            with_host(|h| h
                .spent
                .get(&("agent:b".to_string(), Unit::MicroUsd as u8))
                .copied()),
            Some(600)
        );
        let mut again =
            Harness::<Budget>::new(json!({"defaults": limits, "on_unknown_cost": {"assume": 600}}))
                .unwrap();
        assert!(!again.on_request(&call("b", 0)).is_allow());
    }

    /// One value serving call after call, as a reused instance does (the plugin declares itself
    /// stateless): a call whose `on-complete` never ran leaves nothing the next call settles.
    #[test]
    fn a_reused_value_settles_only_its_own_calls_reservation() {
        reset();
        let cfg = json!({"defaults": {"agent": {"micro_usd": {"day": 1000}}},
                         "on_unknown_cost": {"assume": 600}});
        let mut h = Harness::<Budget>::new(cfg).unwrap();
        assert!(with_host(|h| h.declared_stateless));
        let unpriced = |request: &str| {
            CallBuilder::llm("gpt-4o-mini")
                .agent("a")
                .request(request)
                .build()
        };
        // Call 1 reserves the assumed 600 and ends without `on-complete`.
        assert!(h.on_request(&unpriced("req-1")).is_allow());
        // Call 2 is a tool listing: no reservation of its own, so nothing to settle.
        let list = Call {
            kind: CallKind::ToolList,
            ..unpriced("req-2")
        };
        assert!(h.on_request(&list).is_allow());
        h.on_complete(&list, &usage(0), &done());
        let agent_a = ("agent:a".to_string(), Unit::MicroUsd as u8);
        assert_eq!(with_host(|h| h.spent.get(&agent_a).copied()), None);
        assert_eq!(
            with_host(|h| h.reservations.len()),
            1,
            "call 1's stays open"
        );
        // Call 3 settles its own reservation, at its real cost, and only when its own call ends.
        let priced = CallBuilder::llm("gpt-4o-mini")
            .agent("a")
            .request("req-3")
            .max_cost(100)
            .build();
        assert!(h.on_request(&priced).is_allow());
        let other = Call {
            request_id: "req-4".into(),
            ..priced.clone()
        };
        h.on_complete(&other, &usage(0), &done());
        assert_eq!(with_host(|h| h.spent.get(&agent_a).copied()), None);
        h.on_complete(&priced, &usage(0), &done());
        assert_eq!(with_host(|h| h.spent.get(&agent_a).copied()), Some(0));
    }

    #[test]
    fn bad_config_is_rejected() {
        assert!(Harness::<Budget>::new(json!({"default": {}})).is_err());
        assert!(Harness::<Budget>::new(json!({"on_unknown_cost": "maybe"})).is_err());
        assert!(Harness::<Budget>::new(json!({"agents": {"a": {"usd": {"week": 1.0}}}})).is_err());
        assert!(Harness::<Budget>::new(json!({"agents": {"a": {"usd": {"day": -1.0}}}})).is_err());
    }
}
