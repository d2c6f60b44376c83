//! Loading the whole policy (config and plugin chain) and hot reload.
//!
//! A reload reads `palisade.toml` and every plugin file, compiles what changed (unchanged bytes
//! reuse the compiled component), instantiates each plugin and runs its `init` with its config,
//! all off the request path. Only if everything loads is the new [`Runtime`] swapped in, in one
//! atomic store; calls in flight keep the `Arc<Runtime>` they started with. A bad file leaves the
//! old runtime serving, is logged, and shows in `/admin/status`. The ingress TLS certificate
//! and key (`[server] tls_cert`, `tls_key`) are part of the policy the same way: a renewed
//! certificate is loaded by the next reload, and one that cannot be used keeps the old one.
//!
//! The watcher follows files through symlink swaps (Kubernetes ConfigMap and Secret volumes:
//! `palisade.toml -> ..data/palisade.toml`, and `..data` swapped atomically to a new folder):
//! an event on a watched file's name, or on a link its path goes through, triggers a reload,
//! which compares contents before doing anything.

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
    /// The ingress listener's TLS config, when `[server] tls_cert` and `tls_key` are set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Hash of the config text, plugin bytes and TLS files; equal means nothing to reload.
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
    #[error(transparent)]
    Tls(#[from] crate::net::TlsError),
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
        digests.extend(tls_digests(&settings)?);
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

    /// Names whose change should trigger a reload: the config, every plugin and the TLS files,
    /// and the symlinks their paths go through in the same folders, as (folder, name) with the
    /// folder canonical, the way notify reports paths under a watched folder.
    fn watched_files(&self) -> HashSet<(PathBuf, OsString)> {
        let rt = self.current();
        let tls = rt.settings.server.tls.iter();
        let paths = std::iter::once(self.config_path.clone())
            .chain(rt.settings.plugins.iter().map(|p| p.path.clone()))
            .chain(tls.flat_map(|t| [t.cert.clone(), t.key.clone()]));
        let mut names = HashSet::new();
        for p in paths {
            let Some(name) = p.file_name().map(OsString::from) else {
                continue;
            };
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let Ok(dir) = dir.canonicalize() else {
                continue;
            };
            links_through(&dir, &name, &mut names);
            names.insert((dir, name));
        }
        names
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

/// The SHA-256 of the TLS certificate and key files, for the fingerprint.
fn tls_digests(settings: &Settings) -> Result<Vec<String>, ReloadError> {
    let Some(files) = &settings.server.tls else {
        return Ok(Vec::new());
    };
    [&files.cert, &files.key]
        .into_iter()
        .map(|p| {
            std::fs::read(p)
                .map(|b| loaded::sha256_hex(&b))
                .map_err(|e| {
                    ReloadError::Tls(crate::net::TlsError::ServerFile {
                        path: p.display().to_string(),
                        message: e.to_string(),
                    })
                })
        })
        .collect()
}

/// The symlinks inside `dir` that `dir/name` resolves through (a ConfigMap's
/// `palisade.toml -> ..data/palisade.toml` goes through `..data`, itself a link to
/// `..2026_...`): swapping one of them changes the file without an event naming it.
fn links_through(dir: &Path, name: &std::ffi::OsStr, out: &mut HashSet<(PathBuf, OsString)>) {
    let mut at = PathBuf::from(name);
    // A bounded walk: a link loop ends it.
    for _ in 0..8 {
        let Some(first) = at.components().next() else {
            return;
        };
        let first = first.as_os_str().to_os_string();
        let Ok(target) = std::fs::read_link(dir.join(&first)) else {
            // Not a link: descend to the next component, if any, still within `dir` only at
            // the top level (folders below are not watched).
            return;
        };
        if !out.insert((dir.to_path_buf(), first.clone())) {
            return;
        }
        if target.is_absolute() {
            return;
        }
        let rest: PathBuf = at.components().skip(1).collect();
        at = target.join(rest);
        if at.components().next().map(|c| c.as_os_str()) == Some(first.as_os_str()) {
            return;
        }
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
    let tls = match &settings.server.tls {
        Some(files) => Some(crate::net::server_tls(&files.cert, &files.key)?),
        None => None,
    };
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
    digests.extend(tls_digests(&settings)?);
    // The pool's size is fixed until a restart (the engine's); each agent's cap reloads.
    let total = previous
        .is_none()
        .then_some(settings.host.max_instances as usize);
    services
        .shares
        .configure(total, settings.limits.instances_per_agent as usize);
    Ok(Runtime {
        tls,
        chain: Arc::new(Chain::new(plugins)),
        fingerprint: fingerprint(text, &digests),
        settings: Arc::new(settings),
    })
}
