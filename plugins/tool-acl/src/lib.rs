//! `tool-acl`: which MCP tools, prompts and resources each agent may see and use, and with
//! which arguments.
//!
//! Config:
//! ```toml
//! [[plugins]]
//! name = "tool-acl"
//! path = "dist/plugins/tool-acl.wasm"
//! [[plugins.config.rules]]
//! agents = ["support-bot"]           # who: any of agents, teams, labels; none of them = everyone
//! teams  = ["support"]
//! labels = { tier = "internal" }
//! allow  = ["crm__query", "fs__read_*"]   # tool names (`server__tool`), `*` globs
//! deny   = ["fs__write_*"]                # wins over any allow
//! # prompts and resources by the names the gateway gives them:
//! # "prompt:crm__reply_template", "resource:crm+desk://policies/*"
//! # (a resource template is listed under its template, e.g. "resource:crm+desk://tickets/{id}")
//! [[plugins.config.rules.args]]           # argument constraints, checked at call time
//! tool    = "crm__query"                  # glob of the tools it applies to
//! path    = "$.table"                     # JSON path into the arguments (`$.a.b[0].c`)
//! one_of  = ["faq", "docs"]               # also: eq, regex (whole value), min, max
//! ```
//!
//! Prompts and resources follow the same rules as tools under those names (a prompt's
//! arguments can be constrained like a tool's; a resource read's arguments are `{"uri": ...}`).
//! A pattern matches only names of its own kind: `*` or `desk__*` never grant (or deny) a
//! prompt or resource, `prompt:*` and `resource:*` do, so rules written for tools do not open
//! prompts and resources when a server starts offering them.
//!
//! One decision function ([`Acl::decide`]) serves both hooks, so list and call agree: a tool is
//! visible exactly when its name is allowed (some rule that applies to the agent allows it and
//! none denies it), and callable exactly when it is visible and its arguments pass every
//! constraint of the rules that apply. Tools no rule names are denied (deny by default).
//! A hidden tool is refused with code `unknown_tool` (the gateway answers JSON-RPC -32602, as if
//! it did not exist); forbidden arguments with `tool_arguments_denied` and a message naming the
//! argument and what is allowed, so a model can correct its call.

use std::collections::BTreeMap;

use palisade_plugin_sdk::glob;
use palisade_plugin_sdk::prelude::*;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    teams: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    args: Vec<RawConstraint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConstraint {
    tool: String,
    path: String,
    eq: Option<Value>,
    one_of: Option<Vec<Value>>,
    regex: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
    /// A missing value passes (default: a missing value fails).
    #[serde(default)]
    optional: bool,
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

struct Constraint {
    tool: String,
    path_text: String,
    path: Vec<Step>,
    eq: Option<Value>,
    one_of: Option<Vec<Value>>,
    regex: Option<(String, regex::Regex)>,
    min: Option<f64>,
    max: Option<f64>,
    optional: bool,
}

struct Rule {
    agents: Vec<String>,
    teams: Vec<String>,
    labels: BTreeMap<String, String>,
    allow: Vec<String>,
    deny: Vec<String>,
    args: Vec<Constraint>,
}

/// What the ACL says about one tool for one agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow,
    /// The name is not granted: hidden from lists, unknown to calls.
    Hidden,
    /// Visible, but these arguments break a constraint (the message says which and why).
    BadArguments(String),
}

/// The parsed rules.
pub struct Acl {
    rules: Vec<Rule>,
}

/// The kind prefix of a policy name: `prompt:`, `resource:`, or none for a tool.
fn kind_of(name: &str) -> &'static str {
    if name.starts_with("prompt:") {
        "prompt:"
    } else if name.starts_with("resource:") {
        "resource:"
    } else {
        ""
    }
}

/// A rule's pattern against a policy name: same kind, and the glob matches.
fn matches(pattern: &str, name: &str) -> bool {
    kind_of(pattern) == kind_of(name) && glob(pattern, name)
}

/// Parse `$.a.b[0].c`, `a.b.0.c` or `$` (the whole arguments object).
fn parse_path(text: &str) -> Result<Vec<Step>, String> {
    let rest = text.strip_prefix('$').unwrap_or(text);
    let mut steps = Vec::new();
    for part in rest.split('.').filter(|p| !p.is_empty()) {
        let (key, mut idx) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            match key.parse::<usize>() {
                Ok(n) if key.chars().all(|c| c.is_ascii_digit()) => steps.push(Step::Index(n)),
                _ => steps.push(Step::Key(key.to_string())),
            }
        }
        while !idx.is_empty() {
            let close = idx
                .find(']')
                .ok_or_else(|| format!("path '{text}': unclosed '['"))?;
            let n = idx[1..close]
                .parse::<usize>()
                .map_err(|_| format!("path '{text}': '[{}]' is not an index", &idx[1..close]))?;
            steps.push(Step::Index(n));
            idx = &idx[close + 1..];
        }
    }
    Ok(steps)
}

fn lookup<'a>(mut v: &'a Value, path: &[Step]) -> Option<&'a Value> {
    for step in path {
        v = match step {
            Step::Key(k) => v.get(k)?,
            Step::Index(i) => v.get(*i)?,
        };
    }
    Some(v)
}

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}…", &s[..s.floor_char_boundary(80)])
    } else {
        s
    }
}

/// How a message names what was called: `tool 'x'`, `prompt 'x'` or `resource 'x'`.
fn describe(target: &str) -> String {
    if let Some(p) = target.strip_prefix("prompt:") {
        format!("prompt '{p}'")
    } else if let Some(r) = target.strip_prefix("resource:") {
        format!("resource '{r}'")
    } else {
        format!("tool '{target}'")
    }
}

impl Constraint {
    /// `None` if the arguments pass, else why not.
    fn check(&self, tool: &str, args: &Value) -> Option<String> {
        let arg = &self.path_text;
        let tool = describe(tool);
        let Some(v) = lookup(args, &self.path) else {
            return (!self.optional)
                .then(|| format!("{tool} may only be called with argument '{arg}' set"));
        };
        if let Some(want) = &self.eq
            && v != want
        {
            return Some(format!(
                "argument '{arg}' = {} is not allowed for {tool}: it must be {}",
                show(v),
                show(want)
            ));
        }
        if let Some(set) = &self.one_of
            && !set.contains(v)
        {
            let allowed: Vec<String> = set.iter().map(show).collect();
            return Some(format!(
                "argument '{arg}' = {} is not allowed for {tool}: it must be one of [{}]",
                show(v),
                allowed.join(", ")
            ));
        }
        if let Some((text, re)) = &self.regex {
            let ok = v.as_str().is_some_and(|s| re.is_match(s));
            if !ok {
                return Some(format!(
                    "argument '{arg}' = {} is not allowed for {tool}: it must match /{text}/",
                    show(v)
                ));
            }
        }
        if self.min.is_some() || self.max.is_some() {
            let range = format!(
                "between {} and {}",
                self.min.map_or("-inf".into(), |m| m.to_string()),
                self.max.map_or("+inf".into(), |m| m.to_string())
            );
            let Some(n) = v.as_f64() else {
                return Some(format!(
                    "argument '{arg}' of {tool} must be a number {range}, got {}",
                    show(v)
                ));
            };
            if self.min.is_some_and(|m| n < m) || self.max.is_some_and(|m| n > m) {
                return Some(format!(
                    "argument '{arg}' = {n} is not allowed for {tool}: it must be {range}"
                ));
            }
        }
        None
    }
}

impl Rule {
    fn applies_to(&self, agent: &Agent) -> bool {
        let anyone = self.agents.is_empty() && self.teams.is_empty() && self.labels.is_empty();
        anyone
            || self.agents.iter().any(|a| glob(a, &agent.id))
            || self.teams.contains(&agent.team)
            || self
                .labels
                .iter()
                .any(|(k, v)| agent.labels.iter().any(|(ak, av)| ak == k && av == v))
    }
}

impl Acl {
    /// Parse and check a config.
    pub fn from_config(config: Value) -> Result<Acl, String> {
        let raw: RawConfig =
            serde_json::from_value(config).map_err(|e| format!("tool-acl config: {e}"))?;
        let mut rules = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            let mut args = Vec::new();
            for c in r.args {
                let path = parse_path(&c.path).map_err(|e| format!("rules[{i}].args: {e}"))?;
                let regex = match c.regex {
                    None => None,
                    Some(text) => {
                        let re = regex::Regex::new(&format!("^(?:{text})$"))
                            .map_err(|e| format!("rules[{i}].args regex '{text}': {e}"))?;
                        Some((text, re))
                    }
                };
                if c.eq.is_none()
                    && c.one_of.is_none()
                    && regex.is_none()
                    && c.min.is_none()
                    && c.max.is_none()
                {
                    return Err(format!(
                        "rules[{i}].args for '{}' at '{}' sets no check (eq, one_of, regex, min, max)",
                        c.tool, c.path
                    ));
                }
                args.push(Constraint {
                    path_text: c.path.trim_start_matches("$.").to_string(),
                    tool: c.tool,
                    path,
                    eq: c.eq,
                    one_of: c.one_of,
                    regex,
                    min: c.min,
                    max: c.max,
                    optional: c.optional,
                });
            }
            rules.push(Rule {
                agents: r.agents,
                teams: r.teams,
                labels: r.labels,
                allow: r.allow,
                deny: r.deny,
                args,
            });
        }
        Ok(Acl { rules })
    }

    /// The one decision: `args` is `None` at list time (names only), the arguments at call time.
    pub fn decide(&self, agent: &Agent, tool: &str, args: Option<&Value>) -> Decision {
        let applicable: Vec<&Rule> = self.rules.iter().filter(|r| r.applies_to(agent)).collect();
        let allowed = applicable
            .iter()
            .any(|r| r.allow.iter().any(|p| matches(p, tool)));
        let denied = applicable
            .iter()
            .any(|r| r.deny.iter().any(|p| matches(p, tool)));
        if !allowed || denied {
            return Decision::Hidden;
        }
        let Some(args) = args else {
            return Decision::Allow;
        };
        for c in applicable.iter().flat_map(|r| &r.args) {
            if matches(&c.tool, tool)
                && let Some(why) = c.check(tool, args)
            {
                return Decision::BadArguments(why);
            }
        }
        Decision::Allow
    }
}

/// The plugin.
pub struct ToolAcl {
    acl: Acl,
}

impl Plugin for ToolAcl {
    const HOOKS: Hooks = Hooks::ON_REQUEST.union(Hooks::FILTER_TOOLS);

    fn init(config: Config) -> Result<Self, String> {
        let acl = Acl::from_config(config)?;
        // The value holds only the parsed rules: instances may be reused across calls.
        host::declare_stateless();
        // LLM calls are not this plugin's business.
        host::declare_kinds(&[CallKind::ToolCall, CallKind::ToolList]);
        Ok(ToolAcl { acl })
    }

    fn on_request(&mut self, call: &Call) -> Outcome {
        if call.kind != CallKind::ToolCall {
            return Outcome::allow();
        }
        let args: Value = if call.body.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            match serde_json::from_str(&call.body) {
                Ok(v) => v,
                Err(e) => {
                    return Outcome::deny(
                        400,
                        "tool_arguments_denied",
                        format!("arguments of '{}' are not JSON: {e}", call.target),
                    );
                }
            }
        };
        match self.acl.decide(&call.agent, &call.target, Some(&args)) {
            Decision::Allow => Outcome::allow(),
            Decision::Hidden => Outcome::deny(
                404,
                "unknown_tool",
                format!("Unknown tool: {}", call.target),
            ),
            Decision::BadArguments(why) => Outcome::deny(
                403,
                "tool_arguments_denied",
                format!("{why}. Change the arguments and call again."),
            ),
        }
    }

    fn filter_tools(&mut self, call: &Call, tools: &[Tool]) -> Vec<String> {
        tools
            .iter()
            .filter(|t| self.acl.decide(&call.agent, &t.name, None) == Decision::Allow)
            .map(|t| t.name.clone())
            .collect()
    }
}

export_plugin!(ToolAcl);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_plugin_sdk::Verdict;
    use palisade_plugin_sdk::testing::{CallBuilder, Harness, with_host};
    use serde_json::json;

    fn config() -> Value {
        json!({"rules": [
            {"agents": ["support-bot"], "allow": ["crm__query", "fs__read_*", "fs__write_file"],
             "deny": ["fs__write_*"],
             "args": [
                {"tool": "crm__query", "path": "$.table", "one_of": ["faq", "docs"]},
                {"tool": "crm__query", "path": "$.filter.limit", "min": 1, "max": 50, "optional": true},
                {"tool": "fs__read_*", "path": "path", "regex": "/srv/public/.*"}
             ]},
            {"teams": ["finance"], "allow": ["crm__*"],
             "args": [{"tool": "crm__query", "path": "$.rows[0].kind", "eq": "summary"}]},
            {"labels": {"tier": "ops"}, "allow": ["everything__*"]}
        ]})
    }

    fn tools(names: &[&str]) -> Vec<Tool> {
        names
            .iter()
            .map(|n| Tool {
                name: n.to_string(),
                description: String::new(),
            })
            .collect()
    }

    fn deny_code(out: &Outcome) -> Option<(String, String)> {
        match &out.verdict {
            Verdict::Deny(d) => Some((d.code.clone(), d.message.clone())),
            _ => None,
        }
    }

    #[test]
    fn patterns_grant_only_names_of_their_own_kind() {
        let acl = Acl::from_config(json!({"rules": [
            {"allow": ["*", "prompt:crm__reply*"], "deny": ["crm__hr_*"]},
        ]}))
        .unwrap();
        let agent = Agent {
            id: "a".into(),
            name: "a".into(),
            owner: "o".into(),
            team: "t".into(),
            labels: Vec::new(),
        };
        let d = |n: &str| acl.decide(&agent, n, None);
        assert_eq!(d("crm__query"), Decision::Allow);
        assert_eq!(d("crm__hr_salary"), Decision::Hidden);
        // `*` was written for tools: it opens no prompt or resource.
        assert_eq!(d("prompt:crm__salary_letter"), Decision::Hidden);
        assert_eq!(d("resource:crm+desk://hr/salaries"), Decision::Hidden);
        assert_eq!(d("prompt:crm__reply_template"), Decision::Allow);
    }

    #[test]
    fn list_and_call_agree_on_names() {
        let mut h = Harness::<ToolAcl>::new(config()).unwrap();
        let all = [
            "crm__query",
            "crm__delete",
            "fs__read_text_file",
            "fs__write_file",
            "everything__echo",
        ];
        let list = CallBuilder::tool("", json!({}))
            .agent("support-bot")
            .build();
        let mut list = list;
        list.kind = CallKind::ToolList;
        let shown = h.filter_tools(&list, &tools(&all));
        assert_eq!(shown, vec!["crm__query", "fs__read_text_file"]);
        for name in all {
            let out = h.on_request(
                &CallBuilder::tool(name, json!({"table": "faq", "path": "/srv/public/a"}))
                    .agent("support-bot")
                    .build(),
            );
            assert_eq!(
                out.is_allow(),
                shown.contains(&name.to_string()),
                "parity for {name}"
            );
            if !out.is_allow() {
                let (code, msg) = deny_code(&out).unwrap();
                assert_eq!(code, "unknown_tool");
                assert_eq!(msg, format!("Unknown tool: {name}"));
            }
        }
    }

    #[test]
    fn argument_constraints() {
        let mut h = Harness::<ToolAcl>::new(config()).unwrap();
        let call = |args: Value| {
            CallBuilder::tool("crm__query", args)
                .agent("support-bot")
                .build()
        };
        assert!(h.on_request(&call(json!({"table": "docs"}))).is_allow());
        let (code, msg) = deny_code(&h.on_request(&call(json!({"table": "salaries"})))).unwrap();
        assert_eq!(code, "tool_arguments_denied");
        assert!(msg.contains("'table' = \"salaries\""), "{msg}");
        assert!(msg.contains("[\"faq\", \"docs\"]"), "{msg}");
        assert!(
            deny_code(&h.on_request(&call(json!({})))).is_some(),
            "missing"
        );
        assert!(
            h.on_request(&call(json!({"table": "faq", "filter": {"limit": 50}})))
                .is_allow()
        );
        let (_, msg) =
            deny_code(&h.on_request(&call(json!({"table": "faq", "filter": {"limit": 51}}))))
                .unwrap();
        assert!(msg.contains("between 1 and 50"), "{msg}");
        let read = |p: &str| {
            CallBuilder::tool("fs__read_text_file", json!({"path": p}))
                .agent("support-bot")
                .build()
        };
        assert!(h.on_request(&read("/srv/public/x.txt")).is_allow());
        assert!(!h.on_request(&read("/etc/passwd")).is_allow());
        assert!(
            !h.on_request(&read("x/srv/public/y")).is_allow(),
            "anchored"
        );
    }

    #[test]
    fn teams_labels_and_nested_paths() {
        let mut h = Harness::<ToolAcl>::new(config()).unwrap();
        let fin = |args: Value| {
            CallBuilder::tool("crm__query", args)
                .agent("x")
                .team("finance")
                .build()
        };
        assert!(
            h.on_request(&fin(json!({"rows": [{"kind": "summary"}]})))
                .is_allow()
        );
        assert!(
            !h.on_request(&fin(json!({"rows": [{"kind": "raw"}]})))
                .is_allow()
        );
        let ops = CallBuilder::tool("everything__echo", json!({"message": "hi"}))
            .agent("y")
            .label("tier", "ops")
            .build();
        assert!(h.on_request(&ops).is_allow());
        let nobody = CallBuilder::tool("everything__echo", json!({}))
            .agent("z")
            .build();
        assert_eq!(deny_code(&h.on_request(&nobody)).unwrap().0, "unknown_tool");
    }

    #[test]
    fn llm_calls_pass_and_bad_config_is_refused() {
        let mut h = Harness::<ToolAcl>::new(config()).unwrap();
        assert!(
            h.on_request(&CallBuilder::llm("gpt-4o").agent("a").build())
                .is_allow()
        );
        assert!(Harness::<ToolAcl>::new(json!({"rulez": []})).is_err());
        assert!(
            Harness::<ToolAcl>::new(
                json!({"rules": [{"allow": ["a"], "args": [{"tool": "a", "path": "x"}]}]})
            )
            .is_err()
        );
        assert!(
            Harness::<ToolAcl>::new(
                json!({"rules": [{"args": [{"tool": "a", "path": "x", "regex": "("}]}]})
            )
            .is_err()
        );
    }

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("$.a.b[0].c").unwrap(),
            vec![
                Step::Key("a".into()),
                Step::Key("b".into()),
                Step::Index(0),
                Step::Key("c".into())
            ]
        );
        assert_eq!(parse_path("a.1").unwrap()[1], Step::Index(1));
        assert!(parse_path("$").unwrap().is_empty());
        assert!(parse_path("a[x]").is_err());
    }

    #[test]
    fn init_declares_the_plugin_stateless() {
        Harness::<ToolAcl>::new(serde_json::json!({})).unwrap();
        assert!(with_host(|h| h.declared_stateless));
    }
}
