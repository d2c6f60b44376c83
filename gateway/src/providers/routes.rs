//! Which targets a call may go to, in order. A request's `model` is, in this order of lookup:
//! a `[routes.<alias>]` alias; `provider/model` with a configured provider; or a plain model
//! name on the default provider (`[upstream]`, else the first `[[providers]]`). A plugin's
//! `route` verdict replaces the order with its own list (each entry an alias or
//! `provider/model`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::client::Provider;
use super::config::{DEFAULT_DEADLINE, ProviderSettings, Target};
use crate::core::error::CallError;
use crate::core::settings::{Price, Settings};

/// The provider clients of one config, rebuilt when the `[[providers]]` change.
pub struct ProviderSet {
    pub list: Vec<ProviderSettings>,
    clients: HashMap<String, Arc<Provider>>,
}

impl ProviderSet {
    pub fn new(list: Vec<ProviderSettings>) -> ProviderSet {
        let clients = list
            .iter()
            .map(|p| (p.name.clone(), Arc::new(Provider::new(p.clone()))))
            .collect();
        ProviderSet { list, clients }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.clients.get(name)
    }
}

/// The targets of one call and how hard to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub targets: Vec<Target>,
    /// Extra attempts after the first.
    pub retries: u32,
    pub deadline: Duration,
    pub backoff: Duration,
}

/// The plan for a request's `model`.
pub fn plan(settings: &Settings, model: &str) -> Plan {
    if let Some(r) = settings.routes.get(model) {
        return Plan {
            targets: r.targets.clone(),
            retries: r.retries,
            deadline: r.deadline,
            backoff: r.backoff,
        };
    }
    Plan {
        targets: vec![target_of(settings, model)],
        retries: 0,
        deadline: DEFAULT_DEADLINE,
        backoff: Duration::from_millis(100),
    }
}

/// `provider/model` with a known provider, else the model on the default provider.
fn target_of(settings: &Settings, model: &str) -> Target {
    if let Some(t) = Target::parse(model)
        && is_provider(settings, &t.provider)
    {
        return t;
    }
    Target {
        provider: settings.upstream.name.clone(),
        model: model.to_string(),
    }
}

fn is_provider(settings: &Settings, name: &str) -> bool {
    (settings.upstream_declared && settings.upstream.name == name)
        || settings.providers.iter().any(|p| p.name == name)
}

/// The plan after a plugin's `route` verdict: its targets in its order, each entry an alias
/// (expanded) or `provider/model`; the retry budget counts one attempt per target. An entry
/// naming no configured provider is an error, so a misconfigured router is seen at once.
pub fn overridden(settings: &Settings, base: &Plan, route: &[String]) -> Result<Plan, CallError> {
    let mut targets: Vec<Target> = Vec::new();
    for entry in route {
        let expanded = match settings.routes.get(entry.as_str()) {
            Some(r) => r.targets.clone(),
            None => match Target::parse(entry) {
                Some(t) if is_provider(settings, &t.provider) => vec![t],
                _ => {
                    return Err(CallError::Internal(format!(
                        "a plugin routed the call to '{entry}', which is neither a route nor \
                         `provider/model` with a configured provider"
                    )));
                }
            },
        };
        for t in expanded {
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
    }
    if targets.is_empty() {
        return Err(CallError::Internal(
            "a plugin routed the call to an empty list of targets".into(),
        ));
    }
    let retries = base
        .retries
        .max(u32::try_from(targets.len() - 1).unwrap_or(u32::MAX));
    Ok(Plan {
        targets,
        retries,
        deadline: base.deadline,
        backoff: base.backoff,
    })
}

/// The dearest price among the plan's targets (what a call's worst case is costed at).
pub fn dearest_price(settings: &Settings, plan: &Plan, input: u64, output: u64) -> Option<Price> {
    plan.targets
        .iter()
        .filter_map(|t| settings.price(&t.provider, &t.model).copied())
        .max_by_key(|p| p.cost(input, 0, output))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn settings() -> Settings {
        Settings::from_toml(
            Path::new("p.toml"),
            r#"
[upstream]
name = "mock"
base_url = "http://a"
[[providers]]
name = "primary"
base_url = "http://b"
[[providers]]
name = "backup"
kind = "openai"
base_url = "http://c"
[routes.smart]
targets = ["primary/m1", "backup/m2"]
deadline_ms = 1000
[prices."primary/m1"]
input_per_mtok = 1.0
output_per_mtok = 2.0
[prices."backup/m2"]
input_per_mtok = 3.0
output_per_mtok = 10.0
"#,
        )
        .unwrap()
    }

    #[test]
    fn aliases_provider_models_and_plain_names() {
        let s = settings();
        let p = plan(&s, "smart");
        assert_eq!(p.targets.len(), 2);
        assert_eq!(p.targets[1].to_string(), "backup/m2");
        assert_eq!(p.retries, 1);
        assert_eq!(p.deadline, Duration::from_secs(1));
        assert_eq!(plan(&s, "backup/x").targets[0].to_string(), "backup/x");
        assert_eq!(plan(&s, "gpt-4o").targets[0].to_string(), "mock/gpt-4o");
        // A slash in a plain model name does not make it a provider.
        assert_eq!(
            plan(&s, "meta-llama/L3").targets[0].to_string(),
            "mock/meta-llama/L3"
        );
    }

    #[test]
    fn a_plugin_route_replaces_the_order() {
        let s = settings();
        let base = plan(&s, "smart");
        let p = overridden(&s, &base, &["backup/m2".into(), "smart".into()]).unwrap();
        let names: Vec<String> = p.targets.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["backup/m2", "primary/m1"]);
        assert!(overridden(&s, &base, &["nowhere/x".into()]).is_err());
        assert!(overridden(&s, &base, &[]).is_err());
    }

    #[test]
    fn worst_case_uses_the_dearest_target() {
        let s = settings();
        let p = dearest_price(&s, &plan(&s, "smart"), 1000, 1000).unwrap();
        assert_eq!(p.output_per_mtok, 10.0);
    }

    #[test]
    fn routes_must_name_known_providers() {
        let e = Settings::from_toml(
            Path::new("p.toml"),
            "[upstream]\nbase_url='http://a'\n[routes.x]\ntargets=['ghost/m']",
        )
        .unwrap_err();
        assert!(e.to_string().contains("ghost"), "{e}");
    }
}
