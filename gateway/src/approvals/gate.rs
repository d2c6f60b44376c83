//! The gate: a held call in, an admission out. Find-or-create the approval for the exact
//! operation, wait (bounded) for its decision, and claim an approved one for execution so it
//! runs once however many identical retries race for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_store::{
    Approval, ApprovalState, Claim, Decision, Execution, NewApproval, Store, StoreError, User,
};
use tokio::sync::Notify;

use super::fingerprint::{canonical_arguments, fingerprint, sha256_hex};
use super::webhook::Webhook;
use crate::core::domain::Hold;
pub use crate::core::domain::{ApprovalStatus as Status, Refusal};
use crate::core::drain::Drain;
use crate::core::error::CallError;
use crate::core::settings::approvals::ApprovalSettings;
use crate::plugins::bindings::{Call, CallKind};

/// How often a waiting call looks at its record (decisions on other replicas arrive this way;
/// decisions on this one wake it at once).
const POLL: Duration = Duration::from_millis(250);

/// A held call: what the plugin chain was asked to run and the hold that stopped it.
pub struct HeldCall<'a> {
    pub call: &'a Call,
    /// The plugin whose verdict was the hold.
    pub plugin: &'a str,
    pub hold: &'a Hold,
}

/// What the gate decided about a held call.
#[derive(Debug)]
pub enum Admission {
    /// Approved and claimed by this call: run it, then [`Gate::record_outcome`].
    Proceed(ExecutionClaim),
    /// Already executed by an earlier identical call: here is what it returned.
    AlreadyExecuted { status: Status, outcome: String },
    /// Not going on: pending (the wait ran out), rejected or expired. `status.state` says which.
    Refused(Refusal),
}

/// The right to execute an approved operation, held by exactly one call. Record its outcome
/// with [`Gate::record_outcome`]; dropped unrecorded (the call was lost midway), it records
/// that the operation may have run, so it is never run a second time.
#[derive(Debug)]
pub struct ExecutionClaim {
    pub status: Status,
    /// When this claim was taken: an outcome is recorded only against this claim, so a run
    /// whose claim an admin released cannot overwrite the next run's.
    claimed_at: Option<i64>,
    store: Option<Store>,
    decided: Arc<Notify>,
    /// Closing an abandoned claim is work a graceful shutdown waits for.
    drain: Drain,
}

impl ExecutionClaim {
    pub fn approval_id(&self) -> &str {
        &self.status.id
    }
}

impl Drop for ExecutionClaim {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        let id = self.status.id.clone();
        let claimed_at = self.claimed_at;
        let decided = self.decided.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            self.drain.spawn(async move {
                let outcome = serde_json::json!({
                    "status": 0,
                    "body": "the approved call was started but its outcome was not kept",
                })
                .to_string();
                if let Err(e) = store
                    .record_approval_outcome(&id, claimed_at, &outcome)
                    .await
                {
                    tracing::error!(approval = %id, "cannot close an abandoned execution: {e}");
                }
                decided.notify_waiters();
            });
        }
    }
}

/// Turns holds into approvals and votes into decisions. One per gateway.
pub struct Gate {
    store: Store,
    drain: Drain,
    webhook: Webhook,
    /// Woken on every decision and outcome made through this process.
    decided: Arc<Notify>,
}

fn kind_name(k: CallKind) -> &'static str {
    match k {
        CallKind::LlmCall => "llm-call",
        CallKind::ToolCall => "tool-call",
        CallKind::ToolList => "tool-list",
    }
}

fn store_error(e: StoreError) -> CallError {
    CallError::Internal(format!("approval store: {e}"))
}

/// Whether `user` is the person `owner` names (by user name or e-mail, case-insensitively).
pub fn is_owner(owner: &str, user: &User) -> bool {
    let owner = owner.trim();
    !owner.is_empty()
        && (owner.eq_ignore_ascii_case(&user.name)
            || (!user.email.is_empty() && owner.eq_ignore_ascii_case(&user.email)))
}

impl Gate {
    pub fn new(store: Store, drain: Drain) -> Gate {
        Gate {
            store,
            drain,
            webhook: Webhook::default(),
            decided: Arc::new(Notify::new()),
        }
    }

    /// Admit a held call: attach it to the approval for its exact operation (opening one, and
    /// announcing it, if there is none), wait up to `settings.wait` for a decision, then say
    /// whether it may run. Errors only when the store fails.
    pub async fn admit(
        &self,
        settings: &ApprovalSettings,
        held: HeldCall<'_>,
    ) -> Result<Admission, CallError> {
        self.admit_waiting(settings, held, settings.wait).await
    }

    /// [`Gate::admit`] with an explicit bound on the wait (0: answer at once).
    pub async fn admit_waiting(
        &self,
        settings: &ApprovalSettings,
        held: HeldCall<'_>,
        wait: Duration,
    ) -> Result<Admission, CallError> {
        let call = held.call;
        let kind = kind_name(call.kind);
        let arguments = canonical_arguments(&call.body);
        let new = NewApproval {
            fingerprint: fingerprint(&call.agent.id, kind, &call.target, &arguments),
            arguments_sha256: sha256_hex(arguments.as_bytes()),
            arguments,
            agent_id: call.agent.id.clone(),
            owner: call.agent.owner.clone(),
            team: call.agent.team.clone(),
            kind: kind.to_string(),
            target: call.target.clone(),
            plugin: held.plugin.to_string(),
            rule: held.hold.rule.clone(),
            summary: held.hold.summary.clone(),
            group: held.hold.group.clone(),
            approvals_needed: i64::from(held.hold.approvals.max(1)),
            ttl_ms: i64::from(held.hold.ttl_secs) * 1000,
            request_id: call.request_id.clone(),
        };
        let attached = self.store.hold_approval(&new).await.map_err(store_error)?;
        if attached.created {
            tracing::info!(
                approval = %attached.approval.id,
                agent = %new.agent_id,
                target = %new.target,
                rule = %new.rule,
                "approval requested"
            );
            if let Some(w) = &settings.webhook {
                self.webhook.announce(w, &attached.approval);
            }
        }
        let deadline = Instant::now() + wait;
        let mut a = attached.approval;
        loop {
            let refuse = |a: &Approval| -> Result<Admission, CallError> {
                Ok(Admission::Refused(Refusal {
                    plugin: held.plugin.to_string(),
                    status: Status::of(a),
                }))
            };
            match a.state {
                ApprovalState::Rejected | ApprovalState::Expired => return refuse(&a),
                ApprovalState::Approved => {
                    match self
                        .store
                        .claim_approval(&a.id)
                        .await
                        .map_err(store_error)?
                    {
                        Claim::Claimed(a) => {
                            return Ok(Admission::Proceed(ExecutionClaim {
                                status: Status::of(&a),
                                claimed_at: a.claimed_at,
                                store: Some(self.store.clone()),
                                decided: self.decided.clone(),
                                drain: self.drain.clone(),
                            }));
                        }
                        Claim::Taken(t) if t.execution == Execution::Done => {
                            return Ok(Admission::AlreadyExecuted {
                                status: Status::of(&t),
                                outcome: t.outcome.clone().unwrap_or_default(),
                            });
                        }
                        Claim::Taken(t) | Claim::NotApproved(t) => a = t,
                    }
                    if Instant::now() >= deadline {
                        return refuse(&a);
                    }
                }
                ApprovalState::Pending => {
                    if Instant::now() >= deadline {
                        return refuse(&a);
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left.min(POLL), self.decided.notified()).await;
            a = self.store.get_approval(&a.id).await.map_err(store_error)?;
        }
    }

    /// Store what a claimed execution returned; later identical calls get it back.
    pub async fn record_outcome(
        &self,
        mut claim: ExecutionClaim,
        outcome: &str,
    ) -> Result<(), CallError> {
        claim.store = None;
        let done = self
            .store
            .record_approval_outcome(&claim.status.id, claim.claimed_at, outcome)
            .await
            .map_err(store_error);
        self.decided.notify_waiters();
        done
    }

    /// One human's vote. Refused (403) for the agent's owner (unless `owner_may_approve`) and
    /// for anyone outside the approval's group; Conflict (409) for a second vote by the same
    /// person or a request no longer pending.
    pub async fn decide(
        &self,
        settings: &ApprovalSettings,
        user: &User,
        id: &str,
        decision: Decision,
        reason: &str,
    ) -> Result<Approval, CallError> {
        let a = self.store.get_approval(id).await.map_err(|e| match e {
            StoreError::NotFound { .. } => CallError::NotFound {
                message: e.to_string(),
            },
            e => store_error(e),
        })?;
        if !settings.owner_may_approve && is_owner(&a.owner, user) {
            return Err(CallError::Forbidden(format!(
                "user '{}' owns agent '{}' and may not vote on its calls",
                user.name, a.agent_id
            )));
        }
        let groups = self
            .store
            .user_groups(&user.id)
            .await
            .map_err(store_error)?;
        if !groups.contains(&a.group) {
            return Err(CallError::Forbidden(format!(
                "user '{}' is not in approver group '{}', which decides approval {}",
                user.name, a.group, a.id
            )));
        }
        let voted = self
            .store
            .vote_approval(id, &user.id, &user.name, decision, reason)
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => CallError::Conflict(e.to_string()),
                StoreError::NotFound { .. } => CallError::NotFound {
                    message: e.to_string(),
                },
                e => store_error(e),
            })?;
        self.decided.notify_waiters();
        Ok(voted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, email: &str) -> User {
        User {
            id: "usr_x".into(),
            name: name.into(),
            email: email.into(),
            roles: vec![],
            created_at: 0,
            disabled_at: None,
        }
    }

    #[test]
    fn owner_by_name_or_email() {
        assert!(is_owner(
            "alice@example.com",
            &user("alice", "Alice@Example.com")
        ));
        assert!(is_owner("alice", &user("alice", "")));
        assert!(!is_owner(
            "alice@example.com",
            &user("carol", "carol@example.com")
        ));
        assert!(!is_owner("", &user("carol", "")));
    }

    #[test]
    fn messages_a_model_can_act_on() {
        let mut s = Status {
            id: "apr_1".into(),
            state: ApprovalState::Pending,
            execution: Execution::None,
            approvals: 1,
            approvals_needed: 2,
            group: "finance".into(),
            rule: "money".into(),
            reason: None,
            expires_at: 0,
            expires_in_secs: 60,
        };
        assert!(s.message().contains("apr_1 pending, 1 of 2"));
        assert!(s.message().contains("retry the same call unchanged"));
        assert_eq!(s.code(), "approval_pending");
        s.state = ApprovalState::Rejected;
        s.reason = Some("rejected by carol: wrong account".into());
        assert!(s.message().contains("wrong account"));
        assert_eq!(s.code(), "approval_rejected");
        s.state = ApprovalState::Expired;
        assert_eq!(s.code(), "approval_expired");
    }
}
