//! The assembled gateway: policy (config and plugin chain), store, agent registry, audit sink
//! and upstream client, started in the order each needs the one before, plus the follower that
//! keeps the store in step with reloads.
//!
//! What a config makes for calls to use (provider clients, the MCP hub, circuit breakers) is
//! an [`Upstreams`], built once per loaded runtime: at start, and inside each reload before the
//! new runtime is swapped in (`Policy::set_prepare`), never on a call. A call reaches its
//! runtime's set with [`Gateway::upstreams`], so calls in flight across a reload keep the
//! clients they started with.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use palisade_store::{NewAuditEvent, Store};

use crate::audit::AuditSink;
use crate::core::settings::Settings;
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
    /// The [`Upstreams`] of each runtime still in use, newest last.
    upstreams: ArcSwap<Vec<Prepared>>,
    /// One reload's preparation at a time, so each builds on the one before.
    preparing: Mutex<()>,
    /// How many [`Upstreams`] were built: one at start and one per reload, whatever the calls.
    upstream_builds: AtomicU64,
    pub metrics: Metrics,
    /// The per-process chain key used when `[chain]` configures none.
    chain_fallback: Vec<u8>,
    /// Calls and streams in flight, and the graceful shutdown's stages.
    pub drain: crate::core::drain::Drain,
    /// Each agent's MCP sessions and event streams on this replica, against their caps.
    pub mcp_caps: Arc<crate::limits::mcp::McpCaps>,
}

pub use crate::core::clock::now_ms;

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
        metrics.set_auth_failures(registry.failures().clone());
        // The ledger's settled spend commits with the audit batches.
        let journal = services
            .ledger
            .leased()
            .map(|l| Arc::new(crate::plugins::ledger::LeaseJournal(l.clone())) as _);
        let audit = AuditSink::start(
            store.clone(),
            rt.settings.audit.clone(),
            metrics.audit_quarantined(),
            journal,
        );
        let drain = crate::core::drain::Drain::default();
        let first = Upstreams::build(&rt.settings, None);
        metrics.set_known(first.labels(&rt.settings));
        let gw = Arc::new(Gateway {
            upstreams: ArcSwap::from_pointee(vec![Prepared {
                runtime: Arc::downgrade(&rt),
                upstreams: Arc::new(first),
            }]),
            preparing: Mutex::new(()),
            upstream_builds: AtomicU64::new(1),
            mcp_caps: Arc::default(),
            metrics,
            policy,
            approvals: crate::approvals::Gate::new(store.clone(), drain.clone()),
            store,
            registry,
            audit,
            services,
            chain_fallback: crate::chain::random_key(),
            drain,
        });
        let weak = Arc::downgrade(&gw);
        gw.policy.set_prepare(Box::new(move |rt| {
            if let Some(gw) = weak.upgrade() {
                gw.prepare(rt);
            }
        }));
        tokio::spawn(follow_reloads(Arc::downgrade(&gw)));
        Ok(gw)
    }

    /// Build the [`Upstreams`] of a runtime about to be swapped in, from the newest one.
    fn prepare(&self, rt: &Arc<Runtime>) {
        let _one = self.preparing.lock().unwrap_or_else(|p| p.into_inner());
        let list = self.upstreams.load();
        let fresh = Upstreams::build(&rt.settings, list.last().map(|p| &*p.upstreams));
        self.upstream_builds.fetch_add(1, Ordering::Relaxed);
        self.metrics.set_known(fresh.labels(&rt.settings));
        // Runtimes no call holds any more have no use for theirs.
        let mut next: Vec<Prepared> = list
            .iter()
            .filter(|p| p.runtime.strong_count() > 0)
            .cloned()
            .collect();
        next.push(Prepared {
            runtime: Arc::downgrade(rt),
            upstreams: Arc::new(fresh),
        });
        self.upstreams.store(Arc::new(next));
    }

    /// What the runtime's config made for calls: its provider clients, MCP hub and breakers.
    pub fn upstreams(&self, rt: &Runtime) -> Arc<Upstreams> {
        let list = self.upstreams.load();
        let mine = list
            .iter()
            .rev()
            // A live weak pointer keeps its allocation, so an equal address is this runtime.
            .find(|p| std::ptr::eq(p.runtime.as_ptr(), rt) && p.runtime.strong_count() > 0)
            .or_else(|| {
                // Only a runtime loaded by a `Policy` this gateway did not prepare gets here.
                tracing::warn!("a runtime without its upstreams: using the newest");
                list.last()
            });
        match mine {
            Some(p) => p.upstreams.clone(),
            // The list is never empty (start puts the first runtime's in); stay total anyway.
            None => Arc::new(Upstreams::build(&rt.settings, None)),
        }
    }

    /// The provider clients of the runtime's config.
    pub fn providers(&self, rt: &Runtime) -> Arc<ProviderSet> {
        self.upstreams(rt).providers.clone()
    }

    /// The MCP servers of the runtime's config.
    pub fn hub(&self, rt: &Runtime) -> Arc<crate::mcp::Hub> {
        self.upstreams(rt).mcp.clone()
    }

    /// The circuit breakers of the newest config (for `/metrics` and `/admin/status`).
    pub fn breakers(&self) -> Arc<Breakers> {
        self.upstreams(&self.policy.current()).breakers.clone()
    }

    /// How many [`Upstreams`] were built since start (one, plus one per reload).
    pub fn upstream_builds(&self) -> u64 {
        self.upstream_builds.load(Ordering::Relaxed)
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

    /// Shut down gracefully: stop taking calls (`/health` answers 503), let those running
    /// finish for up to `[server] drain_secs`, cut the rest (streams end with a
    /// `gateway_draining` error event), then commit every audit event and close the store.
    /// Returns true if every call ended within the drain time.
    pub async fn shutdown(&self) -> bool {
        let limit = self.policy.current().settings.drain;
        self.drain.start_draining();
        tracing::info!(
            running = self.drain.running(),
            "draining: waiting up to {} s for calls in flight",
            limit.as_secs_f64()
        );
        let clean = self.drain.wait_idle(limit).await;
        if !clean {
            tracing::warn!(
                running = self.drain.running(),
                "drain time over: cutting the calls still running"
            );
            self.drain.cut();
            if !self.drain.wait_idle(CUT_GRACE).await {
                tracing::error!(
                    running = self.drain.running(),
                    "calls still running after the cut; their audit events may be lost"
                );
            }
        }
        if let Err(e) = self.audit.flush().await {
            tracing::error!("audit queue not flushed at shutdown: {e}");
        }
        // Spend settled since the last batch, and the leases back to the shared counters.
        if let Err(e) = self.services.ledger.close().await {
            tracing::error!("ledger leases not returned at shutdown (they will expire): {e}");
        }
        self.store.close().await;
        clean
    }

    /// Record an admin action (who did what to which resource).
    pub async fn audit_admin(&self, actor: &str, action: &str, target: &str, status: u16) {
        let rt = self.policy.current();
        let event = NewAuditEvent {
            time_ms: now_ms(),
            request_id: crate::core::ids::new_id("req"),
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

/// How long cut calls get to finish (settle, audit) after a drain ran out.
const CUT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// What one loaded config makes for calls to use. Parts a reload did not change are shared
/// with the runtime before (a reload of plugins alone keeps the connection pools and the MCP
/// sessions); breakers are carried over by key (see [`Breakers::for_config`]).
pub struct Upstreams {
    pub providers: Arc<ProviderSet>,
    pub mcp: Arc<crate::mcp::Hub>,
    pub breakers: Arc<Breakers>,
}

impl Upstreams {
    fn build(settings: &Settings, previous: Option<&Upstreams>) -> Upstreams {
        let list = settings.provider_list();
        let providers = match previous {
            Some(p) if p.providers.list == list => p.providers.clone(),
            _ => Arc::new(ProviderSet::new(list)),
        };
        let mcp = match previous {
            Some(p) if p.mcp.settings == settings.mcp => p.mcp.clone(),
            _ => Arc::new(crate::mcp::Hub::new(settings.mcp.clone())),
        };
        let breakers = Breakers::for_config(settings, previous.map(|p| &*p.breakers));
        Upstreams {
            providers,
            mcp,
            breakers: Arc::new(breakers),
        }
    }

    /// The `target`/`provider` metric label values this config allows.
    fn labels(&self, settings: &Settings) -> Vec<String> {
        let breakers = self.breakers.all().into_iter().map(|(k, _)| k);
        let servers = settings.mcp.servers.iter().map(|s| s.name.clone());
        breakers.chain(servers).collect()
    }
}

/// A runtime's [`Upstreams`], kept while a call may still hold the runtime.
#[derive(Clone)]
struct Prepared {
    runtime: Weak<Runtime>,
    upstreams: Arc<Upstreams>,
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
