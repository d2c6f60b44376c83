//! Loading the whole policy (config, agents, plugin chain) and hot reload.
//!
//! A reload reads `palisade.toml` and every plugin file, compiles what changed (unchanged bytes
//! reuse the compiled component), instantiates each plugin and runs its `init` with its config,
//! all off the request path. Only if everything loads is the new [`Runtime`] swapped in, in one
//! atomic store; calls in flight keep the `Arc<Runtime>` they started with. A bad file leaves the
//! old runtime serving, is logged, and shows in `/admin/status`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::Semaphore;

use super::chain::Chain;
use super::engine::{EngineLimits, PluginEngine};
use super::host::HostServices;
use super::loaded::{self, Compiled, LoadError, LoadedPlugin};
use crate::config::{ConfigError, Settings};
use crate::registry::Registry;

/// Everything a call needs from the policy, swapped whole.
pub struct Runtime {
    pub settings: Arc<Settings>,
    pub chain: Arc<Chain>,
    pub registry: Arc<Registry>,
    /// Hash of the config text and plugin bytes; equal means nothing to reload.
    fingerprint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}")]
    Engine(String),
}

/// The last reload, for `/admin/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    pub generation: u64,
    pub loaded_at: SystemTime,
    pub last_attempt_at: SystemTime,
    pub last_ok: bool,
    pub last_error: Option<String>,
}

/// Settings given on the command line, applied over the file at every (re)load.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces `upstream.base_url`.
    pub upstream_url: Option<String>,
}

impl Overrides {
    fn apply(&self, settings: &mut Settings) {
        if let Some(url) = &self.upstream_url {
            settings.upstream.base_url = url.trim_end_matches('/').to_string();
        }
    }
}

pub struct Policy {
    overrides: Overrides,
    engine: PluginEngine,
    services: Arc<HostServices>,
    slots: Arc<Semaphore>,
    current: ArcSwap<Runtime>,
    status: Mutex<ReloadStatus>,
    config_path: PathBuf,
    reloading: tokio::sync::Mutex<()>,
}

fn fingerprint(config_text: &str, digests: &[String]) -> String {
    loaded::sha256_hex(format!("{config_text}\n{}", digests.join("\n")).as_bytes())
}

impl Policy {
    /// Load the config and chain; at start an error is fatal.
    pub async fn start(
        config_path: &Path,
        services: Arc<HostServices>,
        overrides: Overrides,
    ) -> Result<Arc<Policy>, ReloadError> {
        let mut settings = Settings::load(config_path)?;
        overrides.apply(&mut settings);
        let limits = EngineLimits {
            max_memory_bytes: settings.host.memory_bytes,
            max_instances: settings.host.max_instances,
        };
        let engine = PluginEngine::new(limits).map_err(|e| ReloadError::Engine(e.to_string()))?;
        let slots = Arc::new(Semaphore::new(settings.host.max_instances as usize));
        let text = std::fs::read_to_string(config_path).map_err(|source| ConfigError::Read {
            path: config_path.to_path_buf(),
            source,
        })?;
        let runtime = build(&engine, &services, &slots, None, settings, &text).await?;
        let now = SystemTime::now();
        Ok(Arc::new(Policy {
            overrides,
            engine,
            services,
            slots,
            current: ArcSwap::from_pointee(runtime),
            status: Mutex::new(ReloadStatus {
                generation: 1,
                loaded_at: now,
                last_attempt_at: now,
                last_ok: true,
                last_error: None,
            }),
            config_path: config_path.to_path_buf(),
            reloading: tokio::sync::Mutex::new(()),
        }))
    }

    /// The runtime a new call should use; hold it for the whole call.
    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn services(&self) -> &Arc<HostServices> {
        &self.services
    }

    /// Re-read everything; swap only if it all loads. `Ok(false)`: nothing had changed.
    pub async fn reload(&self) -> Result<bool, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.try_reload().await;
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_attempt_at = SystemTime::now();
        match &result {
            Ok(true) => {
                status.generation += 1;
                status.loaded_at = status.last_attempt_at;
                status.last_ok = true;
                status.last_error = None;
                let chain = &self.current().chain;
                tracing::info!(generation = status.generation, policy_version = %chain.version, "policy reloaded");
            }
            Ok(false) => {}
            Err(e) => {
                status.last_ok = false;
                status.last_error = Some(e.to_string());
                tracing::error!("reload failed, the previous policy keeps running: {e}");
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<bool, ReloadError> {
        let text =
            std::fs::read_to_string(&self.config_path).map_err(|source| ConfigError::Read {
                path: self.config_path.clone(),
                source,
            })?;
        let mut settings = Settings::from_toml(&self.config_path, &text)?;
        self.overrides.apply(&mut settings);
        let current = self.current();
        // Cheap check first: unchanged config text and plugin bytes mean a spurious event.
        let mut digests = Vec::new();
        for p in &settings.plugins {
            digests.push(loaded::read_plugin(&p.name, &p.path)?.1);
        }
        if fingerprint(&text, &digests) == current.fingerprint {
            return Ok(false);
        }
        if settings.host.max_instances != current.settings.host.max_instances
            || settings.host.memory_bytes != current.settings.host.memory_bytes
        {
            tracing::warn!(
                "plugin_host.max_instances and memory_mb take effect at the next restart"
            );
        }
        let runtime = build(
            &self.engine,
            &self.services,
            &self.slots,
            Some(&current),
            settings,
            &text,
        )
        .await?;
        self.current.store(Arc::new(runtime));
        Ok(true)
    }

    /// Files whose change should trigger a reload: the config and every plugin.
    fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::iter::once(self.config_path.clone())
            .chain(
                self.current()
                    .settings
                    .plugins
                    .iter()
                    .map(|p| p.path.clone()),
            )
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d
                }
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Watch the config's and plugins' folders and reload on change (debounced). Editors and
    /// deployers replace files by rename, so folders are watched, not files.
    pub fn watch(self: &Arc<Self>) -> Result<notify::RecommendedWatcher, notify::Error> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                let _ = tx.send(());
            }
        })?;
        for dir in self.watched_dirs() {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        }
        let policy = Arc::downgrade(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Coalesce a burst of events (write, rename, chmod) into one reload.
                loop {
                    match tokio::time::timeout(Duration::from_millis(150), rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                let Some(policy) = policy.upgrade() else {
                    return;
                };
                let _ = policy.reload().await;
            }
        });
        Ok(watcher)
    }
}

async fn build(
    engine: &PluginEngine,
    services: &Arc<HostServices>,
    slots: &Arc<Semaphore>,
    previous: Option<&Runtime>,
    settings: Settings,
    text: &str,
) -> Result<Runtime, ReloadError> {
    let mut plugins = Vec::new();
    let mut digests = Vec::new();
    for p in &settings.plugins {
        let (bytes, sha256) = loaded::read_plugin(&p.name, &p.path)?;
        digests.push(sha256.clone());
        let reuse: Option<Compiled> = previous.and_then(|r| {
            r.chain
                .plugins
                .iter()
                .find(|l| l.sha256 == sha256)
                .map(|l| l.compiled.clone())
        });
        let compiled = match reuse {
            Some(c) => c,
            None => {
                let (engine, linker) = (engine.engine.clone(), engine.linker.clone());
                let (cache, ps) = (settings.host.cache_dir.clone(), p.clone());
                tokio::task::spawn_blocking(move || {
                    loaded::compile(&engine, &linker, &cache, &ps, &bytes, sha256)
                })
                .await
                .map_err(|e| ReloadError::Engine(format!("compile task failed: {e}")))??
            }
        };
        let plugin =
            LoadedPlugin::new(p.clone(), compiled, services.clone(), slots.clone()).await?;
        plugins.push(Arc::new(plugin));
    }
    Ok(Runtime {
        registry: Arc::new(Registry::from_settings(&settings.agents)),
        chain: Arc::new(Chain::new(plugins)),
        fingerprint: fingerprint(text, &digests),
        settings: Arc::new(settings),
    })
}
