//! `model-allow`: which models each agent or team may use.
//!
//! Config:
//! ```toml
//! [[plugins]]
//! name = "model-allow"
//! [plugins.config]
//! default = ["gpt-4o-mini"]            # models every agent may use ("*" globs allowed)
//! agents = { "research-bot" = ["gpt-4o", "gpt-4o-mini"] }
//! teams  = { "finance" = ["claude-*"] }
//! ```
//! An agent may use a model if any list that applies to it (its own, its team's, the default)
//! matches. Anything else is denied with 403 `model_not_allowed`, naming the model and what the
//! agent may use instead.

use std::collections::BTreeMap;

use palisade_plugin_sdk::glob;
use palisade_plugin_sdk::prelude::*;
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rules {
    #[serde(default)]
    default: Vec<String>,
    #[serde(default)]
    agents: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    teams: BTreeMap<String, Vec<String>>,
}

/// The plugin: its parsed rules.
pub struct ModelAllow {
    rules: Rules,
}

impl ModelAllow {
    fn allowed_for<'a>(&'a self, call: &'a Call) -> impl Iterator<Item = &'a String> {
        let own = self.rules.agents.get(&call.agent.id).into_iter().flatten();
        let team = self.rules.teams.get(&call.agent.team).into_iter().flatten();
        own.chain(team).chain(self.rules.default.iter())
    }
}

impl Plugin for ModelAllow {
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    fn init(config: Config) -> Result<Self, String> {
        let rules: Rules =
            serde_json::from_value(config).map_err(|e| format!("model-allow config: {e}"))?;
        // The value holds only the parsed config: instances may be reused across calls.
        host::declare_stateless();
        // Tool calls and listings are not this plugin's business.
        host::declare_kinds(&[CallKind::LlmCall]);
        Ok(ModelAllow { rules })
    }

    fn on_request(&mut self, call: &Call) -> Outcome {
        if call.kind != CallKind::LlmCall {
            return Outcome::allow();
        }
        if let Some(rule) = self.allowed_for(call).find(|p| glob(p, &call.target)) {
            return Outcome::allow().note("model-allow.rule", rule.clone());
        }
        let mut may: Vec<&str> = self.allowed_for(call).map(String::as_str).collect();
        may.dedup();
        let may = if may.is_empty() {
            "none".to_string()
        } else {
            may.join(", ")
        };
        Outcome::deny(
            403,
            "model_not_allowed",
            format!(
                "agent '{}' may not use model '{}'; allowed: {may}",
                call.agent.id, call.target
            ),
        )
    }
}

export_plugin!(ModelAllow);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_plugin_sdk::testing::{CallBuilder, Harness, with_host};
    use serde_json::json;

    fn harness() -> Harness<ModelAllow> {
        Harness::new(json!({
            "default": ["gpt-4o-mini"],
            "agents": {"research-bot": ["gpt-4o"]},
            "teams": {"finance": ["claude-*"]},
        }))
        .unwrap()
    }

    #[test]
    fn default_list_applies_to_everyone() {
        let out = harness().on_request(&CallBuilder::llm("gpt-4o-mini").agent("x").build());
        assert!(out.is_allow());
    }

    #[test]
    fn agent_and_team_lists_add_models() {
        let mut h = harness();
        assert!(
            h.on_request(&CallBuilder::llm("gpt-4o").agent("research-bot").build())
                .is_allow()
        );
        let fin = CallBuilder::llm("claude-sonnet-4")
            .agent("a")
            .team("finance")
            .build();
        assert!(h.on_request(&fin).is_allow());
    }

    #[test]
    fn other_models_are_denied_with_the_alternatives() {
        let out = harness().on_request(&CallBuilder::llm("gpt-4o").agent("support").build());
        match out.verdict {
            Verdict::Deny(d) => {
                assert_eq!(d.status, 403);
                assert_eq!(d.code, "model_not_allowed");
                assert!(d.message.contains("'gpt-4o'"), "{}", d.message);
                assert!(d.message.contains("gpt-4o-mini"), "{}", d.message);
            }
            other => panic!("expected deny, got {other:?}"),
        }
    }

    #[test]
    fn unknown_config_keys_are_rejected() {
        assert!(Harness::<ModelAllow>::new(json!({"defualt": []})).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob("claude-*", "claude-3"));
        assert!(glob("*-mini", "gpt-4o-mini"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(!glob("gpt-4o", "gpt-4o-mini"));
    }

    #[test]
    fn init_declares_the_plugin_stateless() {
        Harness::<ModelAllow>::new(serde_json::json!({})).unwrap();
        assert!(with_host(|h| h.declared_stateless));
    }
}
