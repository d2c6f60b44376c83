//! `GET /admin/status`: the loaded chain (each plugin with its sha256 and hooks), the policy
//! version, the last reload's time and result, the audit sink's health (and how many events it
//! quarantined), and the providers,
//! routes and each target's circuit breaker.

use std::sync::Arc;

use http::StatusCode;
use http::request::Parts;
use serde_json::json;

use super::{auth, ok_json};
use crate::app::Gateway;
use crate::core::error::CallError;
use crate::plugins::bindings::Hooks;
use crate::plugins::reload::Runtime;
use crate::wire::GatewayBody;

fn hook_names(h: Hooks) -> Vec<&'static str> {
    [
        (Hooks::ON_REQUEST, "on-request"),
        (Hooks::ON_RESPONSE, "on-response"),
        (Hooks::ON_TEXT, "on-text"),
        (Hooks::ON_COMPLETE, "on-complete"),
        (Hooks::FILTER_TOOLS, "filter-tools"),
    ]
    .into_iter()
    .filter(|(f, _)| h.contains(*f))
    .map(|(_, n)| n)
    .collect()
}

fn secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn status(
    gw: &Arc<Gateway>,
    parts: &Parts,
) -> Result<http::Response<GatewayBody>, CallError> {
    auth::require(gw, parts, auth::ANY).await?;
    ok_json(StatusCode::OK, &status_json(gw))
}

/// What `/admin/status` answers (the console's policy page shows it too).
pub fn status_json(gw: &Gateway) -> serde_json::Value {
    status_json_of(gw, &gw.policy.current())
}

/// [`status_json`] for one runtime snapshot (a page that also reads `rt` shows one policy).
pub fn status_json_of(gw: &Gateway, rt: &Runtime) -> serde_json::Value {
    let st = gw.policy.status();
    let plugins: Vec<_> = rt
        .chain
        .plugins
        .iter()
        .map(|p| {
            json!({
                "name": &*p.name,
                "path": p.settings.path.display().to_string(),
                "sha256": p.sha256,
                "hooks": hook_names(p.hooks),
                // The effective mode, and whether the operator set it (`config`), the plugin
                // declared itself stateless (`declared`) or neither did (`default`: fresh).
                "instances": p.instances,
                "instances_from": p.instances_from(),
                "declared_stateless": p.declared_stateless,
                "kinds": p.kinds.names(),
                "on_error": p.settings.on_error,
                "deadline_ms": p.settings.deadline.as_millis() as u64,
                "memory_mb": p.settings.memory_bytes >> 20,
            })
        })
        .collect();
    // Every configured target and provider, with its circuit breaker's state.
    let breakers: serde_json::Map<String, serde_json::Value> = gw
        .breakers()
        .all()
        .into_iter()
        .map(|(target, b)| {
            let v = json!({"state": b.state().name(), "opened": b.opened_count()});
            (target, v)
        })
        .collect();
    let providers: Vec<_> = rt
        .settings
        .provider_list()
        .into_iter()
        .map(|p| json!({"name": p.name, "kind": p.dialect.name()}))
        .collect();
    json!({
        "providers": providers,
        "routes": rt.settings.routes.iter().map(|(alias, r)| {
            (alias.clone(), json!(r.targets.iter().map(ToString::to_string).collect::<Vec<_>>()))
        }).collect::<serde_json::Map<_, _>>(),
        "breakers": breakers,
        "policy_version": rt.chain.version,
        "plugins": plugins,
        "upstream": rt.settings.upstream.name,
        "database": gw.store.backend_name(),
        "audit": {
            "healthy": gw.audit.is_healthy(),
            // Events the database refused since start, kept in audit_dead_letter.
            "quarantined": gw.audit.quarantined(),
            "durability": rt.settings.audit.durability,
        },
        "reload": {
            "generation": st.generation,
            "loaded_at": secs(st.loaded_at),
            "last_attempt_at": secs(st.last_attempt_at),
            "last_ok": st.last_ok,
            "last_error": st.last_error,
        },
    })
}
