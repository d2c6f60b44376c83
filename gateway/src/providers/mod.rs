//! Upstream providers: their configuration (`config`), clients (`client`, one per provider),
//! the dialects they speak (`dialect`, `anthropic`, `gemini`, `translate`, `sse`, `chunks`),
//! and how a call picks and moves between them (`routes`, `failover`, `breaker`).

pub mod anthropic;
pub mod breaker;
pub mod chunks;
pub mod client;
pub mod dialect;
pub mod failover;
pub mod gemini;
pub mod routes;
pub mod sse;
pub mod translate;

pub use crate::core::settings::providers as config;
