//! `router`: chooses the order in which a call's targets are tried, and returns it as the
//! `route` verdict; the gateway then fails over along that order.
//!
//! Config:
//! ```toml
//! [[plugins]]
//! name = "router"
//! path = "router.wasm"
//! [plugins.config]
//! residency_label = "data_residency"   # agent label listing allowed regions, e.g. "eu" or "eu,ch"
//!
//! [plugins.config.routes.smart]
//! targets = ["anthropic/claude-sonnet-4", "openai/gpt-4o", "gemini/gemini-2.5-pro"]
//! strategy = "cost"      # "order" (as listed, the default) | "cost" | "weighted"
//! tier = 1               # cost: this quality tier first (cheapest first), other tiers after
//!
//! [plugins.config.targets."openai/gpt-4o"]
//! price = 10.0           # any consistent unit, e.g. USD per Mtok of output
//! tier = 1
//! region = "us"
//! weight = 70            # weighted: share of calls that try this target first
//!
//! [plugins.config.agents."eu-bot"]
//! providers = ["anthropic", "gemini"]   # allowed providers (agent entry wins over team)
//! [plugins.config.teams.finance]
//! providers = ["anthropic"]
//! ```
//!
//! Per call: the route of the requested model (a plain `provider/model` request is checked
//! against the allowed providers but not reordered); targets of providers the agent (or else
//! its team) may not use, or outside the regions of its residency label, are dropped; the rest
//! are ordered by the route's strategy. Nothing left: 403 `no_allowed_target`. A weighted split
//! draws from a hash of the request id, so each call is independent and a test can reproduce it.

use std::collections::BTreeMap;

use palisade_plugin_sdk::prelude::*;
use serde::Deserialize;

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Strategy {
    #[default]
    Order,
    Cost,
    Weighted,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Route {
    targets: Vec<String>,
    #[serde(default)]
    strategy: Strategy,
    tier: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TargetFacts {
    price: Option<f64>,
    tier: Option<u32>,
    region: Option<String>,
    weight: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Access {
    providers: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rules {
    #[serde(default)]
    routes: BTreeMap<String, Route>,
    #[serde(default)]
    targets: BTreeMap<String, TargetFacts>,
    #[serde(default)]
    agents: BTreeMap<String, Access>,
    #[serde(default)]
    teams: BTreeMap<String, Access>,
    residency_label: Option<String>,
}

pub struct Router {
    rules: Rules,
    none: TargetFacts,
}

fn provider_of(target: &str) -> &str {
    target.split_once('/').map_or(target, |(p, _)| p)
}

/// FNV-1a: a stable hash of the request id for the weighted draw.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

impl Router {
    fn facts(&self, target: &str) -> &TargetFacts {
        self.rules.targets.get(target).unwrap_or(&self.none)
    }

    /// Whether the agent may use this target: provider allowed, region within its residency.
    fn allowed(&self, call: &Call, target: &str) -> Result<(), String> {
        let access = self
            .rules
            .agents
            .get(&call.agent.id)
            .and_then(|a| a.providers.as_ref())
            .or_else(|| {
                self.rules
                    .teams
                    .get(&call.agent.team)
                    .and_then(|t| t.providers.as_ref())
            });
        if let Some(providers) = access
            && !providers.iter().any(|p| p == provider_of(target))
        {
            return Err(format!("provider not allowed ({})", providers.join(", ")));
        }
        if let Some(key) = &self.rules.residency_label
            && let Some(regions) = call.label(key)
        {
            let region = self.facts(target).region.as_deref().unwrap_or("");
            if !regions.split(',').any(|r| r.trim() == region) {
                return Err(format!("region '{region}' outside {key}={regions}"));
            }
        }
        Ok(())
    }

    fn order(&self, route: &Route, mut targets: Vec<String>, request_id: &str) -> Vec<String> {
        match route.strategy {
            Strategy::Order => targets,
            Strategy::Cost => {
                let key = |t: &String| {
                    let f = self.facts(t);
                    let off_tier = route.tier.is_some_and(|tier| f.tier != Some(tier));
                    (
                        off_tier,
                        f.tier.unwrap_or(u32::MAX),
                        f.price.unwrap_or(f64::MAX),
                    )
                };
                targets.sort_by(|a, b| {
                    let (ka, kb) = (key(a), key(b));
                    // Only within the wanted tier (or all, without one) does price come first.
                    ka.0.cmp(&kb.0)
                        .then_with(|| {
                            if ka.0 {
                                ka.1.cmp(&kb.1)
                            } else {
                                std::cmp::Ordering::Equal
                            }
                        })
                        .then_with(|| ka.2.total_cmp(&kb.2))
                });
                targets
            }
            Strategy::Weighted => {
                // Draw without replacement: each pick weighted among what is left.
                let mut seed = fnv(request_id);
                let mut out = Vec::with_capacity(targets.len());
                while !targets.is_empty() {
                    let weights: Vec<u64> = targets
                        .iter()
                        .map(|t| u64::from(self.facts(t).weight.unwrap_or(1)))
                        .collect();
                    let total: u64 = weights.iter().sum();
                    let pick = if total == 0 {
                        0
                    } else {
                        let mut x = seed % total;
                        weights
                            .iter()
                            .position(|w| {
                                if x < *w {
                                    true
                                } else {
                                    x -= w;
                                    false
                                }
                            })
                            .unwrap_or(0)
                    };
                    seed = seed.rotate_left(17).wrapping_mul(0x9e3779b97f4a7c15);
                    out.push(targets.remove(pick));
                }
                out
            }
        }
    }
}

impl Plugin for Router {
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    fn init(config: Config) -> Result<Self, String> {
        let rules: Rules =
            serde_json::from_value(config).map_err(|e| format!("router config: {e}"))?;
        for (alias, r) in &rules.routes {
            if r.targets.is_empty() {
                return Err(format!("router config: routes.{alias}.targets is empty"));
            }
            if let Some(t) = r.targets.iter().find(|t| !t.contains('/')) {
                return Err(format!(
                    "router config: routes.{alias}: '{t}' is not `provider/model`"
                ));
            }
        }
        // The value holds only the parsed config (the weighted draw hashes the request id):
        // instances may be reused across calls.
        host::declare_stateless();
        // Only LLM calls have provider targets to route.
        host::declare_kinds(&[CallKind::LlmCall]);
        Ok(Router {
            rules,
            none: TargetFacts::default(),
        })
    }

    fn on_request(&mut self, call: &Call) -> Outcome {
        if call.kind != CallKind::LlmCall {
            return Outcome::allow();
        }
        let Some(route) = self.rules.routes.get(&call.target) else {
            // Not a route of ours: only check a `provider/model` request's provider.
            if call.target.contains('/')
                && let Err(why) = self.allowed(call, &call.target)
            {
                return Outcome::deny(
                    403,
                    "no_allowed_target",
                    format!(
                        "agent '{}' may not use '{}': {why}",
                        call.agent.id, call.target
                    ),
                );
            }
            return Outcome::allow();
        };
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for t in &route.targets {
            match self.allowed(call, t) {
                Ok(()) => kept.push(t.clone()),
                Err(why) => dropped.push(format!("{t}: {why}")),
            }
        }
        if kept.is_empty() {
            return Outcome::deny(
                403,
                "no_allowed_target",
                format!(
                    "agent '{}' may use no target of '{}' ({})",
                    call.agent.id,
                    call.target,
                    dropped.join("; ")
                ),
            );
        }
        let order = self.order(route, kept, &call.request_id);
        let mut out = Outcome::route(order.clone()).note("router.order", order.join(","));
        if !dropped.is_empty() {
            out = out.note("router.dropped", dropped.join("; "));
        }
        out
    }
}

export_plugin!(Router);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_plugin_sdk::testing::{CallBuilder, Harness, with_host};
    use serde_json::json;

    fn harness() -> Harness<Router> {
        Harness::new(json!({
            "residency_label": "data_residency",
            "routes": {
                "smart": {"targets": ["a/big", "b/mid", "c/cheap"], "strategy": "cost", "tier": 1},
                "split": {"targets": ["a/x", "b/y"], "strategy": "weighted"},
                "plain": {"targets": ["a/1", "b/2", "c/3"]},
            },
            "targets": {
                "a/big": {"price": 15.0, "tier": 1, "region": "us"},
                "b/mid": {"price": 10.0, "tier": 1, "region": "eu"},
                "c/cheap": {"price": 0.5, "tier": 2, "region": "eu"},
                "a/x": {"weight": 90},
                "b/y": {"weight": 10},
            },
            "agents": {"solo": {"providers": ["c"]}},
            "teams": {"finance": {"providers": ["a", "b"]}},
        }))
        .unwrap()
    }

    fn route_of(o: &Outcome) -> Vec<String> {
        match &o.verdict {
            Verdict::Route(t) => t.clone(),
            v => panic!("not a route: {v:?}"),
        }
    }

    #[test]
    fn cost_orders_cheapest_first_within_the_tier_then_other_tiers() {
        let mut h = harness();
        let o = h.on_request(&CallBuilder::llm("smart").agent("x").build());
        assert_eq!(route_of(&o), ["b/mid", "a/big", "c/cheap"]);
    }

    #[test]
    fn order_strategy_keeps_the_listed_order() {
        let mut h = harness();
        let o = h.on_request(&CallBuilder::llm("plain").build());
        assert_eq!(route_of(&o), ["a/1", "b/2", "c/3"]);
    }

    #[test]
    fn agents_and_teams_limit_providers() {
        let mut h = harness();
        let o = h.on_request(
            &CallBuilder::llm("smart")
                .agent("solo")
                .team("finance")
                .build(),
        );
        assert_eq!(route_of(&o), ["c/cheap"], "the agent's own entry wins");
        let o = h.on_request(&CallBuilder::llm("smart").agent("y").team("finance").build());
        assert_eq!(route_of(&o), ["b/mid", "a/big"]);
        let o = h.on_request(&CallBuilder::llm("a/big").agent("solo").build());
        assert!(!o.is_allow());
    }

    #[test]
    fn residency_labels_keep_data_in_region() {
        let mut h = harness();
        let o = h.on_request(
            &CallBuilder::llm("smart")
                .label("data_residency", "eu")
                .build(),
        );
        assert_eq!(route_of(&o), ["b/mid", "c/cheap"]);
        let o = h.on_request(
            &CallBuilder::llm("smart")
                .agent("solo")
                .label("data_residency", "us")
                .build(),
        );
        match o.verdict {
            Verdict::Deny(d) => {
                assert_eq!(d.status, 403);
                assert_eq!(d.code, "no_allowed_target");
            }
            v => panic!("expected deny, got {v:?}"),
        }
    }

    #[test]
    fn weighted_split_follows_the_weights() {
        let mut h = harness();
        let mut first_a = 0;
        for i in 0..1000 {
            let mut call = CallBuilder::llm("split").build();
            call.request_id = format!("req_{i:032x}");
            let order = route_of(&h.on_request(&call));
            assert_eq!(order.len(), 2, "every target stays as a fallback");
            if order[0] == "a/x" {
                first_a += 1;
            }
        }
        assert!((850..=950).contains(&first_a), "{first_a} of 1000");
    }

    #[test]
    fn unknown_models_pass_untouched() {
        let mut h = harness();
        assert!(matches!(
            h.on_request(&CallBuilder::llm("gpt-4o").build()).verdict,
            Verdict::Allow
        ));
    }

    #[test]
    fn init_declares_the_plugin_stateless() {
        Harness::<Router>::new(serde_json::json!({})).unwrap();
        assert!(with_host(|h| h.declared_stateless));
    }
}
