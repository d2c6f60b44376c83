//! `approvals`: which calls need humans. A call matching a rule is held until enough distinct
//! members of the rule's approver group approve that exact call (the gateway keeps the record,
//! counts the votes and lets the approved call run once).
//!
//! Config:
//! ```toml
//! [[plugins]]
//! name = "approvals"
//! [[plugins.config.rules]]
//! name = "email"                  # shown to approvers and the agent
//! tools = ["mail__send_*"]        # tool-name globs (tool calls)
//! approvals = 1
//! group = "support-leads"
//! ttl_secs = 3600                 # how long the request stays open (default 3600)
//!
//! [[plugins.config.rules]]
//! name = "money"
//! tools = ["payments__transfer*"]
//! when = ["amount > 0"]           # argument conditions, all must hold
//! agents = ["*"]                  # agent-id globs (default: any); `teams` likewise
//! approvals = 2
//! group = "finance"
//!
//! [[plugins.config.rules]]
//! name = "reserved-model"
//! models = ["gpt-4o-approved"]    # model-alias globs (LLM calls)
//! approvals = 1
//! group = "ops"
//! ```
//! A rule applies to tool calls whose name matches `tools`, or LLM calls whose model matches
//! `models`, made by an agent matching `agents` (or a team in `teams`), whose arguments (the
//! tool arguments, or the chat request) satisfy every `when` condition. The first matching
//! rule holds the call; no match allows it.
//!
//! Conditions: `<path> <op> <value>`, where `path` is a dotted path into the arguments
//! (`amount`, `to.domain`, `items.0.price`), `op` one of `> >= < <= == !=`, and `value` a
//! number, `true`/`false`, or a string (quoted or bare). Numbers compare as numbers; a missing
//! field fails the condition (so `amount > 0` holds nothing that has no amount).

use palisade_plugin_sdk::Hold;
use palisade_plugin_sdk::glob;
use palisade_plugin_sdk::prelude::*;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    teams: Vec<String>,
    #[serde(default)]
    when: Vec<String>,
    #[serde(default = "one")]
    approvals: u8,
    group: String,
    #[serde(default = "hour")]
    ttl_secs: u32,
    summary: Option<String>,
}

fn one() -> u8 {
    1
}
fn hour() -> u32 {
    3600
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    path: Vec<String>,
    op: Op,
    value: Value,
    text: String,
}

struct Rule {
    raw: RawRule,
    when: Vec<Condition>,
}

/// The plugin: its parsed rules.
pub struct Approvals {
    rules: Vec<Rule>,
}

fn parse_condition(text: &str) -> Result<Condition, String> {
    // Two-character operators first, so `>=` is not read as `>`.
    const OPS: [(&str, Op); 6] = [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        (">", Op::Gt),
        ("<", Op::Lt),
    ];
    let (at, sym, op) = OPS
        .iter()
        .filter_map(|(sym, op)| text.find(sym).map(|at| (at, *sym, *op)))
        .min_by_key(|(at, sym, _)| (*at, usize::MAX - sym.len()))
        .ok_or_else(|| format!("condition {text:?} needs an operator: one of > >= < <= == !="))?;
    let path = text[..at].trim();
    let value = text[at + sym.len()..].trim();
    if path.is_empty() || value.is_empty() {
        return Err(format!(
            "condition {text:?} must read `<field> <op> <value>`, e.g. `amount > 0`"
        ));
    }
    let value = if let Ok(n) = value.parse::<f64>() {
        serde_json::json!(n)
    } else if value == "true" || value == "false" {
        Value::Bool(value == "true")
    } else if value.len() >= 2
        && (value.starts_with('"') && value.ends_with('"')
            || value.starts_with('\'') && value.ends_with('\''))
    {
        Value::String(value[1..value.len() - 1].to_string())
    } else {
        Value::String(value.to_string())
    };
    if matches!(op, Op::Gt | Op::Ge | Op::Lt | Op::Le) && !value.is_number() {
        return Err(format!(
            "condition {text:?}: `{sym}` compares numbers, but {value} is not one"
        ));
    }
    Ok(Condition {
        path: path.split('.').map(str::to_string).collect(),
        op,
        value,
        text: text.trim().to_string(),
    })
}

fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| match v {
        Value::Object(m) => m.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

impl Condition {
    fn holds(&self, args: &Value) -> bool {
        let Some(found) = lookup(args, &self.path) else {
            return false;
        };
        // Numbers given as strings ("amount": "12.50") still compare as numbers.
        let as_num = |v: &Value| match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match (as_num(found), self.value.as_f64()) {
            (Some(a), Some(b)) => match self.op {
                Op::Gt => a > b,
                Op::Ge => a >= b,
                Op::Lt => a < b,
                Op::Le => a <= b,
                Op::Eq => a == b,
                Op::Ne => a != b,
            },
            _ => {
                let same = match (found, &self.value) {
                    (Value::String(a), Value::String(b)) => a == b,
                    (a, b) => a == b,
                };
                match self.op {
                    Op::Eq => same,
                    Op::Ne => !same,
                    _ => false,
                }
            }
        }
    }
}

impl Rule {
    fn matches(&self, call: &Call, args: &Value) -> bool {
        let r = &self.raw;
        let target = match call.kind {
            CallKind::ToolCall => &r.tools,
            CallKind::LlmCall => &r.models,
            CallKind::ToolList => return false,
        };
        if !target.iter().any(|p| glob(p, &call.target)) {
            return false;
        }
        let who = (r.agents.is_empty() && r.teams.is_empty())
            || r.agents.iter().any(|p| glob(p, &call.agent.id))
            || r.teams.iter().any(|p| glob(p, &call.agent.team));
        who && self.when.iter().all(|c| c.holds(args))
    }

    fn hold(&self, call: &Call) -> Hold {
        let r = &self.raw;
        let summary = r.summary.clone().unwrap_or_else(|| {
            let mut args: String = call.body.chars().take(160).collect();
            if call.body.chars().count() > 160 {
                args.push('…');
            }
            format!("{} calls {} with {args}", call.agent.id, call.target)
        });
        Hold {
            rule: r.name.clone(),
            approvals: r.approvals,
            group: r.group.clone(),
            ttl_secs: r.ttl_secs,
            summary,
        }
    }
}

impl Plugin for Approvals {
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    fn init(config: Config) -> Result<Self, String> {
        let raw: RawConfig =
            serde_json::from_value(config).map_err(|e| format!("approvals config: {e}"))?;
        let mut rules = Vec::new();
        for r in raw.rules {
            let at = format!("approvals rule {:?}", r.name);
            if r.name.trim().is_empty() {
                return Err("approvals: every rule needs a name".into());
            }
            if r.tools.is_empty() && r.models.is_empty() {
                return Err(format!("{at}: list the `tools` or `models` it holds"));
            }
            if r.approvals == 0 {
                return Err(format!("{at}: `approvals` must be at least 1"));
            }
            if r.group.trim().is_empty() {
                return Err(format!("{at}: `group` names who may approve"));
            }
            if r.ttl_secs == 0 {
                return Err(format!("{at}: `ttl_secs` must be at least 1"));
            }
            let when = r
                .when
                .iter()
                .map(|c| parse_condition(c).map_err(|e| format!("{at}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            rules.push(Rule { raw: r, when });
        }
        // The value holds only the parsed rules: instances may be reused across calls.
        host::declare_stateless();
        // Only the kinds some rule can hold: with tool rules only, LLM calls skip this plugin.
        let mut kinds = Vec::new();
        if rules.iter().any(|r| !r.raw.tools.is_empty()) {
            kinds.push(CallKind::ToolCall);
        }
        if rules.iter().any(|r| !r.raw.models.is_empty()) {
            kinds.push(CallKind::LlmCall);
        }
        if !kinds.is_empty() {
            host::declare_kinds(&kinds);
        }
        Ok(Approvals { rules })
    }

    fn on_request(&mut self, call: &Call) -> Outcome {
        let args: Value = serde_json::from_str(&call.body).unwrap_or(Value::Null);
        match self.rules.iter().find(|r| r.matches(call, &args)) {
            Some(rule) => {
                let conds: Vec<&str> = rule.when.iter().map(|c| c.text.as_str()).collect();
                Outcome::hold(rule.hold(call))
                    .note("approvals.rule", rule.raw.name.clone())
                    .note("approvals.when", conds.join(" and "))
            }
            None => Outcome::allow(),
        }
    }
}

export_plugin!(Approvals);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_plugin_sdk::testing::{CallBuilder, Harness, with_host};
    use serde_json::json;

    fn harness() -> Harness<Approvals> {
        Harness::new(json!({"rules": [
            {"name": "email", "tools": ["mail__send_*"], "group": "leads"},
            {"name": "money", "tools": ["payments__transfer*"], "when": ["amount > 0"],
             "approvals": 2, "group": "finance", "ttl_secs": 600},
            {"name": "model", "models": ["gpt-4o-approved"], "agents": ["research-*"],
             "group": "ops"},
        ]}))
        .unwrap()
    }

    fn held(o: &Outcome) -> Option<&Hold> {
        match &o.verdict {
            Verdict::Hold(h) => Some(h),
            _ => None,
        }
    }

    #[test]
    fn tool_globs_hold_with_their_rule() {
        let mut h = harness();
        let o = h.on_request(&CallBuilder::tool("mail__send_email", json!({"to": "x"})).build());
        let hold = held(&o).expect("held");
        assert_eq!(
            (
                hold.rule.as_str(),
                hold.approvals,
                hold.group.as_str(),
                hold.ttl_secs
            ),
            ("email", 1, "leads", 3600)
        );
        assert!(hold.summary.contains("mail__send_email"));
        assert!(
            h.on_request(&CallBuilder::tool("mail__read", json!({})).build())
                .is_allow()
        );
    }

    #[test]
    fn argument_conditions() {
        let mut h = harness();
        let t = |amount: Value| {
            CallBuilder::tool("payments__transfer_funds", json!({"amount": amount})).build()
        };
        let o = h.on_request(&t(json!(250)));
        assert_eq!(held(&o).map(|h| (h.approvals, h.ttl_secs)), Some((2, 600)));
        assert!(held(&h.on_request(&t(json!("12.5")))).is_some());
        assert!(h.on_request(&t(json!(0))).is_allow());
        assert!(h.on_request(&t(json!(-3))).is_allow());
        assert!(
            h.on_request(&CallBuilder::tool("payments__transfer_funds", json!({})).build())
                .is_allow()
        );
    }

    #[test]
    fn llm_calls_by_model_and_agent() {
        let mut h = harness();
        let call = CallBuilder::llm("gpt-4o-approved")
            .agent("research-bot")
            .build();
        assert_eq!(
            held(&h.on_request(&call)).map(|h| h.rule.as_str()),
            Some("model")
        );
        let other = CallBuilder::llm("gpt-4o-approved")
            .agent("support-bot")
            .build();
        assert!(h.on_request(&other).is_allow());
        assert!(
            h.on_request(
                &CallBuilder::llm("gpt-4o-mini")
                    .agent("research-bot")
                    .build()
            )
            .is_allow()
        );
    }

    #[test]
    fn conditions_parse() {
        let c = parse_condition("amount >= 10").unwrap();
        assert_eq!((c.op, c.path.clone()), (Op::Ge, vec!["amount".to_string()]));
        let c = parse_condition("to.domain == 'example.com'").unwrap();
        assert!(c.holds(&json!({"to": {"domain": "example.com"}})));
        assert!(!c.holds(&json!({"to": {"domain": "other.org"}})));
        let c = parse_condition("urgent != true").unwrap();
        assert!(c.holds(&json!({"urgent": false})));
        let c = parse_condition("items.0.price > 5").unwrap();
        assert!(c.holds(&json!({"items": [{"price": 6}]})));
        assert!(parse_condition("amount").is_err());
        assert!(parse_condition("amount > lots").is_err());
        assert!(parse_condition("> 3").is_err());
    }

    #[test]
    fn bad_configs_are_refused() {
        for bad in [
            json!({"rules": [{"name": "x", "group": "g"}]}),
            json!({"rules": [{"name": "x", "tools": ["t"], "group": "g", "approvals": 0}]}),
            json!({"rules": [{"name": "x", "tools": ["t"], "group": ""}]}),
            json!({"rules": [{"name": "x", "tools": ["t"], "group": "g", "when": ["a ~ 1"]}]}),
            json!({"rules": [{"name": "x", "tools": ["t"], "group": "g", "typo": 1}]}),
        ] {
            assert!(Harness::<Approvals>::new(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn init_declares_the_plugin_stateless() {
        Harness::<Approvals>::new(serde_json::json!({})).unwrap();
        assert!(with_host(|h| h.declared_stateless));
    }
}
