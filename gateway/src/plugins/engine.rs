//! The one process-wide wasmtime `Engine` (every plugin version shares it, as wasmtime's
//! advisory on mixing engines asks), its `Linker`, and the epoch ticker that enforces hook
//! deadlines.
//!
//! Tuned from measurements on this project's 2-core machine (`docs/performance.md`): the
//! pooling allocator with `linear_memory_keep_resident` and `table_keep_resident` makes a fresh
//! instance ~6 µs instead of ~24 µs and keeps two threads from fighting over `madvise`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::Plugin;
use super::host::HostState;

/// How often the epoch advances; the granularity of hook deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Engine, linker and the ticker thread that drives deadlines.
pub struct PluginEngine {
    pub engine: Engine,
    pub linker: Linker<HostState>,
    stop: Arc<AtomicBool>,
}

/// Limits for the whole engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Largest memory any plugin instance may have.
    pub max_memory_bytes: usize,
    /// Component instances alive at once (fresh per call plus idle pooled ones).
    pub max_instances: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start the plugin engine: {0}")]
pub struct EngineError(String);

impl PluginEngine {
    pub fn new(limits: EngineLimits) -> Result<Self, EngineError> {
        let err = |e: wasmtime::Error| EngineError(format!("{e:#}"));
        let n = limits.max_instances;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            // A Rust wasip2 component holds a few core instances (module, adapter shims); a
            // Python (componentize-py) or JavaScript (StarlingMonkey) one holds dozens, with
            // several memories and tables. The floors let a small pool still admit those; they
            // only reserve address space, and a Rust plugin's per-call cost does not change.
            .total_core_instances(n.saturating_mul(8).max(256))
            .total_memories(n.saturating_mul(2).max(64))
            .total_tables(n.saturating_mul(4).max(128))
            .total_stacks(n)
            .max_memory_size(limits.max_memory_bytes)
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(err)?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(err)?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(err)?;

        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("palisade-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })
            .map_err(|e| EngineError(e.to_string()))?;
        Ok(PluginEngine {
            engine,
            linker,
            stop,
        })
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
