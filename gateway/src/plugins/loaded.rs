//! A plugin loaded and ready: read, hashed, compiled (or taken from the on-disk cache), linked
//! against the host (`instantiate_pre` refuses a component of another world or with imports we
//! do not grant), and smoke-tested with its config. All of this happens off the request path;
//! per call only instantiation is left, or not even that for a pooled plugin.
//!
//! The smoke test's `init` also tells whether the plugin declared itself stateless
//! (`host.declare-stateless`); with no `instances` in its `[[plugins]]` table, that decides
//! between a pooled and a fresh instance per call, once, here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::Component;

use super::bindings::{Hooks, PluginPre};
use super::host::{CallHolds, CallKinds, HostServices, HostState};
use super::instance::Instance;
use crate::core::error::PluginFault;
use crate::core::settings::{Instances, PluginSettings};

/// Largest plugin file accepted (Python and JS components are tens of MB).
const MAX_PLUGIN_BYTES: u64 = 128 << 20;
/// Idle pooled instances kept per plugin.
const MAX_IDLE: usize = 32;
/// How long a call waits for a free instance slot before failing with `plugin_unavailable`.
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// Why a plugin could not be loaded; the old chain keeps running.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin '{plugin}': cannot read {path}: {message}")]
    Read {
        plugin: String,
        path: PathBuf,
        message: String,
    },
    #[error("plugin '{plugin}': {path} is not a valid Wasm component: {message}")]
    Compile {
        plugin: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "plugin '{plugin}': {path} does not fit the palisade:policy/plugin world or imports \
         something the host does not grant: {message}"
    )]
    WrongWorld {
        plugin: String,
        path: PathBuf,
        message: String,
    },
    #[error("plugin '{plugin}' failed its load check: {fault}")]
    Smoke { plugin: String, fault: PluginFault },
}

/// A compiled component, shared by chain generations while its bytes are unchanged.
#[derive(Clone)]
pub struct Compiled {
    pub sha256: String,
    pub component: Component,
    pub pre: PluginPre<HostState>,
}

pub struct LoadedPlugin {
    pub name: Arc<str>,
    pub settings: PluginSettings,
    pub sha256: String,
    pub hooks: Hooks,
    /// Whether the load check's `init` called `declare-stateless`.
    pub declared_stateless: bool,
    /// The kinds of call the plugin decides about (`declare-kinds` in the load check's `init`;
    /// every kind if it declared none): its hooks are not run for calls of other kinds.
    pub kinds: CallKinds,
    /// How this plugin's instances live: the operator's `instances`, or else pooled if the
    /// plugin declared itself stateless and fresh if not.
    pub instances: Instances,
    pub pre: PluginPre<HostState>,
    pub compiled: Compiled,
    pub services: Arc<HostServices>,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Instance>>,
}

/// SHA-256 of a file's bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Read a plugin file (size-capped) and hash it.
pub fn read_plugin(name: &str, path: &Path) -> Result<(Vec<u8>, String), LoadError> {
    let read_err = |message: String| LoadError::Read {
        plugin: name.to_string(),
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| read_err(e.to_string()))?;
    if meta.len() > MAX_PLUGIN_BYTES {
        return Err(read_err(format!(
            "larger than {} MiB",
            MAX_PLUGIN_BYTES >> 20
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
    let digest = sha256_hex(&bytes);
    Ok((bytes, digest))
}

fn cache_path(engine: &Engine, cache_dir: &Path, sha256: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    cache_dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()))
}

/// Load a component from the cache, or compile it and fill the cache. Blocking: run it on a
/// blocking thread.
fn component_from_cache(
    engine: &Engine,
    cache_dir: &Path,
    sha256: &str,
    bytes: &[u8],
) -> wasmtime::Result<Component> {
    let cached = cache_path(engine, cache_dir, sha256);
    if cached.exists() {
        // SAFETY: `deserialize_file` trusts its input to be wasmtime's own output. Files in the
        // cache are only ever written below by this process, named by the SHA-256 of their
        // source and the engine's compatibility hash; a file that fails to load is recompiled.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(engine, &cached) };
        match loaded {
            Ok(c) => return Ok(c),
            Err(e) => tracing::warn!(path = %cached.display(), "ignoring bad cache entry: {e:#}"),
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Ok(serialized) = component.serialize() {
        let write = std::fs::create_dir_all(cache_dir).and_then(|_| {
            let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, &serialized)?;
            std::fs::rename(&tmp, &cached)
        });
        if let Err(e) = write {
            tracing::warn!(dir = %cache_dir.display(), "cannot write compile cache: {e}");
        }
    }
    Ok(component)
}

/// Compile and link a plugin's bytes. Blocking (compilation takes tens of milliseconds).
pub fn compile(
    engine: &Engine,
    linker: &wasmtime::component::Linker<HostState>,
    cache_dir: &Path,
    settings: &PluginSettings,
    bytes: &[u8],
    sha256: String,
) -> Result<Compiled, LoadError> {
    let (plugin, path) = (settings.name.clone(), settings.path.clone());
    let component = component_from_cache(engine, cache_dir, &sha256, bytes).map_err(|e| {
        LoadError::Compile {
            plugin: plugin.clone(),
            path: path.clone(),
            message: format!("{e:#}"),
        }
    })?;
    let wrong = |e: wasmtime::Error| LoadError::WrongWorld {
        plugin: plugin.clone(),
        path: path.clone(),
        message: format!("{e:#}"),
    };
    let pre = linker.instantiate_pre(&component).map_err(wrong)?;
    let pre = PluginPre::new(pre).map_err(wrong)?;
    // Build the copy-on-write memory image now rather than on the first call.
    if let Err(e) = component.initialize_copy_on_write_image() {
        tracing::debug!(plugin, "no copy-on-write image: {e:#}");
    }
    Ok(Compiled {
        sha256,
        component,
        pre,
    })
}

impl LoadedPlugin {
    /// Smoke-test a compiled plugin with its config (instantiate + `init`) and keep it.
    pub async fn new(
        settings: PluginSettings,
        compiled: Compiled,
        services: Arc<HostServices>,
        slots: Arc<Semaphore>,
    ) -> Result<LoadedPlugin, LoadError> {
        let mut plugin = LoadedPlugin {
            name: Arc::from(settings.name.as_str()),
            sha256: compiled.sha256.clone(),
            hooks: Hooks::empty(),
            declared_stateless: false,
            kinds: CallKinds::ALL,
            instances: Instances::Fresh,
            pre: compiled.pre.clone(),
            compiled,
            settings,
            services,
            slots,
            idle: Mutex::new(Vec::new()),
        };
        let smoke: Arc<str> = Arc::from("load-check");
        let (inst, hooks) = plugin
            .instantiate(&smoke, &Arc::default())
            .await
            .map_err(|fault| LoadError::Smoke {
                plugin: plugin.settings.name.clone(),
                fault,
            })?;
        plugin.hooks = hooks;
        plugin.declared_stateless = inst.declared_stateless();
        plugin.kinds = inst.declared_kinds();
        plugin.instances = match plugin.settings.instances {
            Some(configured) => configured,
            None if plugin.declared_stateless => Instances::Pooled,
            None => Instances::Fresh,
        };
        if plugin.instances == Instances::Pooled {
            // The load check's instance is ready for real calls; it has served none yet.
            plugin
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(inst);
        }
        Ok(plugin)
    }

    /// Where [`LoadedPlugin::instances`] came from: `config` (the operator's `instances`),
    /// `declared` (pooled because the plugin declared itself stateless) or `default` (fresh).
    pub fn instances_from(&self) -> &'static str {
        match (self.settings.instances, self.declared_stateless) {
            (Some(_), _) => "config",
            (None, true) => "declared",
            (None, false) => "default",
        }
    }

    async fn instantiate(
        &self,
        request_id: &Arc<str>,
        holds: &Arc<CallHolds>,
    ) -> Result<(Instance, Hooks), PluginFault> {
        let permit = tokio::time::timeout(SLOT_WAIT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                PluginFault::Busy(format!(
                    "all plugin instance slots busy for {} s (raise plugin_host.max_instances)",
                    SLOT_WAIT.as_secs()
                ))
            })?
            .map_err(|_| PluginFault::Unavailable("gateway is shutting down".into()))?;
        Instance::create(self, request_id, holds, permit).await
    }

    /// An instance for one call: a fresh one, or an idle pooled one.
    pub async fn checkout(
        &self,
        request_id: &Arc<str>,
        holds: &Arc<CallHolds>,
    ) -> Result<Instance, PluginFault> {
        if self.instances == Instances::Pooled {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            if let Some(mut inst) = idle {
                inst.rebind(request_id, holds);
                return Ok(inst);
            }
        }
        Ok(self.instantiate(request_id, holds).await?.0)
    }

    /// Give an instance back after its call: pooled ones are kept unless they trapped, were left
    /// mid-hook by a cancelled call, served `max_calls` calls or grew past half their memory cap.
    pub fn checkin(&self, mut inst: Instance) {
        if self.instances != Instances::Pooled || !inst.reusable() {
            return;
        }
        inst.end_call();
        inst.calls += 1;
        if inst.calls >= self.settings.max_calls
            || inst.peak_memory() > self.settings.memory_bytes / 2
        {
            return;
        }
        inst.rebind(&Arc::from(""), &Arc::default());
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(inst);
        }
    }
}
