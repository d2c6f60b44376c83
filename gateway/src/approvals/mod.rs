//! Human approvals enforced at the gateway. A plugin's `hold` verdict stops a call until enough
//! distinct humans of a group approve that exact operation; this module turns a hold into an
//! approval record ([`Gate::admit`]), lets humans vote ([`Gate::decide`]), and makes sure an
//! approved operation runs once ([`ExecutionClaim`], [`Gate::record_outcome`]).
//!
//! Ingress code (the LLM call path and the MCP endpoint) needs two calls:
//! ```text
//! match gate.admit(&settings, HeldCall { call, plugin, hold }).await? {
//!     Admission::Proceed(claim) => { run it; gate.record_outcome(claim, &outcome).await }
//!     Admission::AlreadyExecuted { outcome, .. } => answer with the stored outcome
//!     Admission::Refused(refusal) => answer with refusal.status.message() and .to_json()
//! }
//! ```
//! The records, votes and claims live in the store (`palisade_store::approvals`); the gate adds
//! the fingerprint, the bounded wait for a decision, who may vote, and the webhook.

mod fingerprint;
mod gate;
mod webhook;

pub use crate::core::settings::approvals::{
    ApprovalSettings, DEFAULT_WAIT, MAX_WAIT, RawApprovals, WebhookSettings,
};
pub use fingerprint::{canonical_arguments, fingerprint, sha256_hex};
pub use gate::{Admission, ExecutionClaim, Gate, HeldCall, Refusal, Status, is_owner};
pub use webhook::{SIGNATURE_HEADER, payload as webhook_payload, sign as sign_webhook};
