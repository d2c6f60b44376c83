//! Palisade: a policy gateway for AI agents.
//!
//! Agents send every LLM call through Palisade; each call passes a chain of sandboxed
//! WebAssembly policy plugins (`wit/policy.wit`) before and after it reaches the provider. Data
//! flows one way: `server` (ingress) → `call` (identity, plugin chain, upstream, audit) →
//! `providers`; no module reaches back up.
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod approvals;
pub mod audit;
pub mod call;
pub mod chain;
pub mod cli;
pub mod console;
pub mod core;
pub mod demo;
#[cfg(test)]
mod error_table;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod net;
pub mod plugins;
pub mod providers;
pub mod registry;
pub mod server;
pub mod wire;

// The resolved config and the error type keep their public names for users of the library.
pub use crate::core::{error, settings as config};
