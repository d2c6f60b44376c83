//! Domain types that errors carry, shared by the layers above: a plugin's request for human
//! approval ([`Hold`]), where an approval stands ([`ApprovalStatus`], [`Refusal`]) and why a
//! delegation chain token was refused ([`ChainError`]).

use palisade_store::{Approval, ApprovalState, Execution};
use serde::Serialize;

/// A plugin's request for human approval (the WIT `hold` record, as the host keeps it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Name of the rule that asked for approval.
    pub rule: String,
    /// How many distinct humans must approve.
    pub approvals: u8,
    /// Which approver group may vote.
    pub group: String,
    /// How long the request stays open, in seconds.
    pub ttl_secs: u32,
    /// One line shown to approvers.
    pub summary: String,
}

/// Where an approval stands, as the agent and the approvers see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApprovalStatus {
    pub id: String,
    pub state: ApprovalState,
    pub execution: Execution,
    pub approvals: i64,
    pub approvals_needed: i64,
    pub group: String,
    pub rule: String,
    /// The rejecting approver's reason, or why it expired.
    pub reason: Option<String>,
    pub expires_at: i64,
    /// Seconds until it expires (0 once it has).
    pub expires_in_secs: i64,
}

impl ApprovalStatus {
    pub fn of(a: &Approval) -> ApprovalStatus {
        let now = palisade_store::time::now_ms();
        ApprovalStatus {
            id: a.id.clone(),
            state: a.state,
            execution: a.execution,
            approvals: a.approvals(),
            approvals_needed: a.approvals_needed,
            group: a.group.clone(),
            rule: a.rule.clone(),
            reason: a.reason.clone(),
            expires_at: a.expires_at,
            expires_in_secs: ((a.expires_at - now).max(0) + 999) / 1000,
        }
    }

    /// A sentence a model can act on.
    pub fn message(&self) -> String {
        match self.state {
            ApprovalState::Pending => format!(
                "approval {} pending, {} of {} approvals from group '{}' (rule '{}'), expires in \
                 {} s; retry the same call unchanged once approved (changed arguments need a new \
                 approval)",
                self.id,
                self.approvals,
                self.approvals_needed,
                self.group,
                self.rule,
                self.expires_in_secs
            ),
            ApprovalState::Approved => format!(
                "approval {} approved; an identical call is executing it now: retry the same \
                 call unchanged to get its result",
                self.id
            ),
            ApprovalState::Rejected => format!(
                "approval {} {}; this call will not be approved, do not retry it",
                self.id,
                self.reason.as_deref().unwrap_or("rejected")
            ),
            ApprovalState::Expired => format!(
                "approval {} expired: {}; retrying the same call opens a new request",
                self.id,
                self.reason.as_deref().unwrap_or("no decision in time")
            ),
        }
    }

    /// The stable error code of a call stopped here.
    pub fn code(&self) -> &'static str {
        match self.state {
            ApprovalState::Pending | ApprovalState::Approved => "approval_pending",
            ApprovalState::Rejected => "approval_rejected",
            ApprovalState::Expired => "approval_expired",
        }
    }

    /// For `_meta` of an MCP tool result and the `approval` field of an error.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// A held call that may not go on (yet): pending, rejected or expired.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .status.message())]
pub struct Refusal {
    pub plugin: String,
    pub status: ApprovalStatus,
}

/// Why a `palisade-chain` token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Not a token this gateway (or a replica sharing its key) signed, or cut short.
    #[error("the palisade-chain token is invalid: {0}")]
    Invalid(&'static str),
    /// A genuine token past its maximum age.
    #[error("the palisade-chain token expired {age_secs} s after issue (max age {max_age_secs} s)")]
    Expired { age_secs: u64, max_age_secs: u64 },
    /// The agent only acts for other agents and sent no token.
    #[error(
        "agent '{agent}' may only be called within a delegation chain: send the palisade-chain header you got from the agent that delegated to it"
    )]
    Required { agent: String },
}

impl ChainError {
    /// The stable code agents and the audit see.
    pub fn code(&self) -> &'static str {
        match self {
            ChainError::Invalid(_) => "chain_invalid",
            ChainError::Expired { .. } => "chain_expired",
            ChainError::Required { .. } => "chain_required",
        }
    }
}
