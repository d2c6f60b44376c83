//! The plugin host: wasmtime component model, one engine, an `InstancePre` per plugin, a fresh
//! instance per call (or a pooled one, reused one call at a time, for a plugin that declared
//! itself stateless or that the operator configured so), deadlines and memory caps per hook, and
//! hot reload of the whole chain.
//!
//! - `bindings`: the generated host side of `wit/policy.wit`.
//! - `engine`: the engine, linker and epoch ticker.
//! - `deadline`: a hook's guest-time clock (waiting for a thread is not the plugin's work).
//! - `host`: host state and imports (`log`, `now-ms`, ledger, key-value, `declare-stateless`).
//! - `loaded`: compile, cache, link and smoke-test one plugin.
//! - `instance`: one instance; where faults are classified.
//! - `chain`: the ordered chain and a call's session through it.
//! - `shares`: each agent's fair share of the instance pool.
//! - `reload`: the swappable runtime and the file watcher.

pub mod bindings;
pub mod chain;
pub mod deadline;
pub mod engine;
pub mod host;
pub mod instance;
pub mod kv;
pub mod ledger;
pub mod loaded;
pub mod reload;
pub mod shares;

pub use chain::{CallSession, Chain, PluginNote, RequestDecision};
pub use host::HostServices;
pub use reload::{Overrides, Policy, ReloadError, ReloadStatus, Runtime, WatchHandle};
