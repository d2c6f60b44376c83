//! The assembled gateway: policy (config and plugin chain), store, agent registry, audit sink
//! and upstream client, started in the order each needs the one before, plus the follower that
//! keeps the store in step with reloads.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use palisade_store::{NewAuditEvent, Store};

use crate::audit::AuditSink;
use crate::metrics::Metrics;
use crate::plugins::{HostServices, Overrides, Policy, ReloadError, Runtime};
use crate::providers::breaker::Breakers;
use crate::providers::routes::ProviderSet;
use crate::registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Policy(#[from] ReloadError),
    #[error("cannot open the database {url}: {source}")]
    Store {
        url: String,
        source: palisade_store::StoreError,
    },
    #[error("cannot set up outbound TLS: {0}")]
    Tls(#[from] crate::net::TlsError),
    #[error("cannot sync agents from the config into the store: {0}")]
    Sync(palisade_store::StoreError),
    #[error("cannot create the first admin from ${var}: {source}")]
    Bootstrap {
        var: String,
        source: palisade_store::StoreError,
    },
}

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    pub policy: Arc<Policy>,
    pub store: Store,
    pub registry: Registry,
    pub audit: AuditSink,
    /// The ledger and key-value store behind the plugins' host imports.
    pub services: Arc<HostServices>,
    /// Held calls and their human approvals.
    pub approvals: crate::approvals::Gate,
    /// Provider clients for the current `[[providers]]`, rebuilt when they change.
    providers: ArcSwap<ProviderSet>,
    /// Per-target circuit breakers, kept across reloads.
    pub breakers: Breakers,
    pub metrics: Metrics,
    /// The MCP servers behind `/mcp`, rebuilt when a reload changes them.
    pub mcp: crate::mcp::Hubs,
    /// The per-process chain key used when `[chain]` configures none.
    chain_fallback: Vec<u8>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    palisade_store::time::now_ms()
}

impl Gateway {
    /// Load the config and plugins, open the store, create the first admin (from the env var the
    /// config names, if set), sync config agents, start the audit writer.
    pub async fn start(config: &Path, overrides: Overrides) -> Result<Arc<Gateway>, StartError> {
        crate::net::check()?;
        let services = Arc::new(HostServices::default());
        let policy = Policy::start(config, services.clone(), overrides).await?;
        let rt = policy.current();
        let url = rt.settings.database.clone();
        let store = Store::connect(&url)
            .await
            .map_err(|source| StartError::Store { url, source })?;
        // From here the host's ledger is the store's, shared by every replica on it.
        services.ledger.use_store(store.clone());
        tokio::spawn(expire_reservations(store.clone()));
        if rt.settings.chain.key.is_none() {
            tracing::warn!(
                "no delegation chain key configured (set $PALISADE_CHAIN_KEY or [chain] key_env): \
                 using a random per-process key, so other replicas and restarts will refuse this \
                 process's palisade-chain tokens"
            );
        }
        let var = rt.settings.admin_bootstrap_env.clone();
        if let Ok(token) = std::env::var(&var)
            && !token.is_empty()
        {
            store
                .ensure_admin("admin", &token)
                .await
                .map_err(|source| StartError::Bootstrap { var, source })?;
        }
        let registry = Registry::new(store.clone());
        let report = registry
            .sync_config(&rt.settings.agents)
            .await
            .map_err(StartError::Sync)?;
        tracing::info!(
            created = report.created.len(),
            updated = report.updated.len(),
            suspended = report.suspended.len(),
            "config agents synced"
        );
        let metrics = Metrics::default();
        let audit = AuditSink::start(
            store.clone(),
            rt.settings.audit.clone(),
            metrics.audit_quarantined(),
        );
        let gw = Arc::new(Gateway {
            providers: ArcSwap::from_pointee(ProviderSet::new(rt.settings.provider_list())),
            breakers: Breakers::default(),
            metrics,
            mcp: crate::mcp::Hubs::new(&rt.settings.mcp),
            policy,
            approvals: crate::approvals::Gate::new(store.clone()),
            store,
            registry,
            audit,
            services,
            chain_fallback: crate::chain::random_key(),
        });
        tokio::spawn(follow_reloads(Arc::downgrade(&gw)));
        Ok(gw)
    }

    /// The provider clients for the runtime's settings, rebuilt only when they changed.
    pub fn providers(&self, rt: &Runtime) -> Arc<ProviderSet> {
        let current = self.providers.load_full();
        let wanted = rt.settings.provider_list();
        if current.list == wanted {
            return current;
        }
        let fresh = Arc::new(ProviderSet::new(wanted));
        self.providers.store(fresh.clone());
        fresh
    }

    /// The keys delegation chain tokens are signed and verified with, for this runtime.
    pub fn chain_keys(&self, rt: &Runtime) -> crate::chain::Keys {
        crate::chain::Keys::new(&rt.settings.chain, &self.chain_fallback)
    }

    /// The keys MCP session ids are sealed with (first) and opened with: the chain keys.
    pub fn mcp_session_keys(&self, rt: &Runtime) -> Vec<Vec<u8>> {
        let c = &rt.settings.chain;
        let mut keys = vec![c.key.clone().unwrap_or_else(|| self.chain_fallback.clone())];
        keys.extend(c.previous_key.clone());
        keys
    }

    /// Record an admin action (who did what to which resource).
    pub async fn audit_admin(&self, actor: &str, action: &str, target: &str, status: u16) {
        let rt = self.policy.current();
        let event = NewAuditEvent {
            time_ms: now_ms(),
            request_id: crate::call::new_id("req"),
            owner: Some(actor.to_string()),
            kind: "admin".into(),
            target: format!("{action} {target}"),
            policy_version: rt.chain.version.clone(),
            status: i64::from(status),
            verdicts: serde_json::Value::Array(Vec::new()),
            ..Default::default()
        };
        if let Err(e) = self.audit.record(event).await {
            tracing::error!("admin action '{action} {target}' by {actor} not audited: {e}");
        }
    }
}

/// How often reservations left by a dead replica are looked for.
const EXPIRY_SWEEP: std::time::Duration = std::time::Duration::from_secs(30);

/// Free ledger reservations whose TTL ran out (their replica died before ending them).
async fn expire_reservations(store: Store) {
    let mut tick = tokio::time::interval(EXPIRY_SWEEP);
    loop {
        tick.tick().await;
        match store.expire_reservations().await {
            Ok(0) => {}
            Ok(n) => tracing::info!("freed {n} expired ledger reservations"),
            Err(e) => tracing::warn!("cannot expire ledger reservations: {e}"),
        }
    }
}

/// After each reload: sync config agents into the store and audit the reload.
async fn follow_reloads(gw: std::sync::Weak<Gateway>) {
    let Some(mut rx) = gw.upgrade().map(|g| g.policy.subscribe()) else {
        return;
    };
    while rx.changed().await.is_ok() {
        let status = rx.borrow_and_update().clone();
        let Some(gw) = gw.upgrade() else { return };
        if status.last_ok {
            let rt = gw.policy.current();
            if let Err(e) = gw.registry.sync_config(&rt.settings.agents).await {
                tracing::error!("agents from the reloaded config not synced: {e}");
            }
            gw.audit_admin("palisade", "policy.reloaded", &rt.chain.version, 200)
                .await;
        } else {
            let what = status.last_error.unwrap_or_default();
            gw.audit_admin("palisade", "policy.reload_failed", &what, 500)
                .await;
        }
    }
}
