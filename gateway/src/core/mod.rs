//! The leaf layer: ids, the clock, domain types, resolved settings, the error type and its one
//! map to responses, and the drain. It imports nothing else of the crate, so every other layer
//! may use it and it can never be part of an import circle (`tests/layers.rs` checks the whole
//! order).

pub mod clock;
pub mod domain;
pub mod drain;
pub mod error;
pub mod ids;
pub mod settings;
