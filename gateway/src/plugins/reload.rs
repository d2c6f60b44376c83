//! Loading the whole policy (config and plugin chain) and hot reload.
//!
//! A reload reads `palisade.toml` and every plugin file, compiles what changed (unchanged bytes
//! reuse the compiled component), instantiates each plugin and runs its `init` with its config,
//! all off the request path. Only if everything loads is the new [`Runtime`] swapped in, in one
//! atomic store; calls in flight keep the `Arc<Runtime>` they started with. A bad file leaves the
//! old runtime serving, is logged, and shows in `/admin/status`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::Semaphore;

use super::chain::Chain;
use super::engine::{EngineLimits, PluginEngine};
use super::host::HostServices;
use super::loaded::{self, Compiled, LoadError, LoadedPlugin};
use crate::core::settings::{ConfigError, Settings};

/// Everything a call needs from the policy, swapped whole.
pub struct Runtime {
    pub settings: Arc<Settings>,
    pub chain: Arc<Chain>,
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

/// Called with each new runtime just before it is swapped in. The gateway builds there what it
/// derives from a config (provider clients, the MCP hub, breakers), so that is done once per
/// runtime, off the request path, and ready before the first call can see the runtime.
pub type Prepare = Box<dyn Fn(&Arc<Runtime>) + Send + Sync>;

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
    /// Replaces the `url` of the named HTTP `[[mcp_servers]]` (the demo's in-process server).
    pub mcp_urls: Vec<(String, String)>,
    /// Replaces `database` (the demo's fresh one).
    pub database: Option<String>,
}

impl Overrides {
    fn apply(&self, settings: &mut Settings) {
        if let Some(db) = &self.database {
            settings.database.clone_from(db);
        }
        if let Some(url) = &self.upstream_url {
            settings.upstream.base_url = url.trim_end_matches('/').to_string();
            // Without `[upstream]` the default provider is the first `[[providers]]` entry.
            if !settings.upstream_declared
                && let Some(first) = settings.providers.first_mut()
            {
                first.base_url = settings.upstream.base_url.clone();
            }
        }
        for (name, new_url) in &self.mcp_urls {
            for server in settings.mcp.servers.iter_mut().filter(|s| &s.name == name) {
                if let crate::core::settings::mcp::ServerKind::Http { url, .. } = &mut server.kind {
                    url.clone_from(new_url);
                }
            }
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
    /// Every reload that changed something or failed, for followers (registry sync, audit).
    events: tokio::sync::watch::Sender<ReloadStatus>,
    prepare: OnceLock<Prepare>,
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
        let status = ReloadStatus {
            generation: 1,
            loaded_at: now,
            last_attempt_at: now,
            last_ok: true,
            last_error: None,
        };
        Ok(Arc::new(Policy {
            events: tokio::sync::watch::Sender::new(status.clone()),
            overrides,
            engine,
            services,
            slots,
            current: ArcSwap::from_pointee(runtime),
            status: Mutex::new(status),
            config_path: config_path.to_path_buf(),
            reloading: tokio::sync::Mutex::new(()),
            prepare: OnceLock::new(),
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

    /// Set, once, what runs on each new runtime before it is swapped in; `false` if one was
    /// already set.
    pub fn set_prepare(&self, prepare: Prepare) -> bool {
        self.prepare.set(prepare).is_ok()
    }

    /// Follow reloads: the receiver sees each reload that swapped or failed.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<ReloadStatus> {
        self.events.subscribe()
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
        let snapshot = {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            self.note_attempt(&mut status, &result);
            status.clone()
        };
        if !matches!(result, Ok(false)) {
            self.events.send_replace(snapshot);
        }
        result
    }

    fn note_attempt(&self, status: &mut ReloadStatus, result: &Result<bool, ReloadError>) {
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
        let runtime = Arc::new(runtime);
        if let Some(prepare) = self.prepare.get() {
            prepare(&runtime);
        }
        self.current.store(runtime);
        Ok(true)
    }

    /// Files whose change should trigger a reload: the config and every plugin, as (folder,
    /// file name) with the folder canonical, the way notify reports paths under a watched folder.
    fn watched_files(&self) -> HashSet<(PathBuf, OsString)> {
        std::iter::once(self.config_path.clone())
            .chain(
                self.current()
                    .settings
                    .plugins
                    .iter()
                    .map(|p| p.path.clone()),
            )
            .filter_map(|p| {
                let name = p.file_name()?.to_os_string();
                let dir = p
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                Some((dir.canonicalize().ok()?, name))
            })
            .collect()
    }

    /// Watch the config's and plugins' folders and reload when one of those files changes
    /// (debounced). Editors and deployers replace files by rename, so folders are watched, and
    /// events for other files there (a database beside the config, editor swap files) are
    /// ignored. Folders of plugins added by a reload are watched from then on.
    pub fn watch(self: &Arc<Self>) -> Result<WatchHandle, notify::Error> {
        let files = Arc::new(std::sync::RwLock::new(self.watched_files()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let seen = files.clone();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let Ok(ev) = ev else { return };
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            let files = seen.read().unwrap_or_else(|p| p.into_inner());
            let relevant = ev.paths.iter().any(|p| match (p.parent(), p.file_name()) {
                (Some(d), Some(n)) => files.contains(&(d.to_path_buf(), n.to_os_string())),
                _ => false,
            });
            if relevant {
                let _ = tx.send(());
            }
        })?;
        let mut dirs: HashSet<PathBuf> = HashSet::new();
        for (dir, _) in files.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if dirs.insert(dir.clone()) {
                watcher.watch(dir, RecursiveMode::NonRecursive)?;
            }
        }
        let watcher = Arc::new(Mutex::new(watcher));
        let policy = Arc::downgrade(self);
        let w = watcher.clone();
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
                if let Ok(true) = policy.reload().await {
                    let now = policy.watched_files();
                    let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                    for (dir, _) in &now {
                        if dirs.insert(dir.clone())
                            && let Err(e) = w.watch(dir, RecursiveMode::NonRecursive)
                        {
                            tracing::warn!(dir = %dir.display(), "cannot watch plugin folder: {e}");
                        }
                    }
                    *files.write().unwrap_or_else(|p| p.into_inner()) = now;
                }
            }
        });
        Ok(WatchHandle { _watcher: watcher })
    }
}

/// Keeps the file watcher alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
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
    // The pool's size is fixed until a restart (the engine's); each agent's cap reloads.
    let total = previous
        .is_none()
        .then_some(settings.host.max_instances as usize);
    services
        .shares
        .configure(total, settings.limits.instances_per_agent as usize);
    Ok(Runtime {
        chain: Arc::new(Chain::new(plugins)),
        fingerprint: fingerprint(text, &digests),
        settings: Arc::new(settings),
    })
}
