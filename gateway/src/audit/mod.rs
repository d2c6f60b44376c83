//! One audit event per call: who, what, which plugins said what, what it cost, how it ended.
//! For now events go to the log as JSON lines under the `palisade::audit` target; the store
//! issue makes this a hash-chained table.

use std::time::SystemTime;

use serde::Serialize;

use crate::plugins::PluginNote;

#[derive(Debug, Serialize)]
pub struct AuditEvent {
    pub time: SystemTime,
    pub request_id: String,
    pub run_id: String,
    pub chain: Vec<String>,
    pub agent: Option<String>,
    pub owner: Option<String>,
    pub kind: &'static str,
    pub target: String,
    pub provider: Option<String>,
    pub policy_version: String,
    /// The plugin whose verdict decided the outcome (deny, hold, failure), if any.
    pub decided_by: Option<String>,
    pub verdicts: Vec<PluginNote>,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub cost_micro_usd: u64,
    pub latency_us: u64,
    pub status: u16,
    pub error_code: Option<String>,
    pub truncated: bool,
}

/// Record an event.
pub fn record(event: &AuditEvent) {
    match serde_json::to_string(event) {
        Ok(line) => tracing::info!(target: "palisade::audit", "{line}"),
        Err(e) => tracing::error!(target: "palisade::audit", "cannot serialize audit event: {e}"),
    }
}
