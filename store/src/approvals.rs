//! Human approvals: a held call's record, bound to its exact operation by a fingerprint (agent,
//! kind, target, canonical arguments), the humans' votes on it, its execution once approved,
//! and the approver groups users belong to.
//!
//! Life of a record: `pending` until enough distinct members of its group approve (`approved`),
//! one of them rejects (`rejected`, final), or its TTL passes (`expired`). Execution is tracked
//! apart: `none`, then `running` once one call has claimed it (atomically, so two identical
//! retries cannot both run it), then `done` with the stored outcome later retries get back.
//!
//! Which record an identical call attaches to ([`Store::hold_approval`]): the newest with its
//! fingerprint, unless that one expired and an agent was already told so, in which case a new
//! request opens. Who may vote (owner, group) is checked by the caller; this module guarantees
//! one counted vote per person and the state transitions.

use serde::{Deserialize, Serialize};

use crate::error::is_unique_violation;
use crate::secret::new_id;
use crate::time::now_ms;
use crate::{BeginWrite, Store, StoreError, on_pool};

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
            ApprovalState::Expired => "expired",
        }
    }
}

impl std::str::FromStr for ApprovalState {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "pending" => Ok(ApprovalState::Pending),
            "approved" => Ok(ApprovalState::Approved),
            "rejected" => Ok(ApprovalState::Rejected),
            "expired" => Ok(ApprovalState::Expired),
            _ => Err(StoreError::Invalid(format!(
                "approval status must be pending, approved, rejected or expired, got {s:?}"
            ))),
        }
    }
}

/// Whether an approved operation has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    /// Not yet.
    None,
    /// One call claimed it and is running it now.
    Running,
    /// It ran; `outcome` holds what it returned.
    Done,
}

impl Execution {
    fn parse(s: &str) -> Result<Execution, StoreError> {
        match s {
            "none" => Ok(Execution::None),
            "running" => Ok(Execution::Running),
            "done" => Ok(Execution::Done),
            _ => Err(StoreError::Corrupt(format!("approval execution {s:?}"))),
        }
    }
}

/// A vote's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }
}

/// One human's vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vote {
    pub voter_id: String,
    pub voter_name: String,
    pub decision: Decision,
    pub reason: String,
    pub time_ms: i64,
}

/// A held operation waiting for (or past) its humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub id: String,
    pub fingerprint: String,
    pub agent_id: String,
    pub owner: String,
    pub team: String,
    /// `llm-call` or `tool-call`.
    pub kind: String,
    /// The model alias or the namespaced tool name.
    pub target: String,
    /// Canonical JSON of the arguments (tool arguments, or the chat request).
    pub arguments: String,
    pub arguments_sha256: String,
    pub plugin: String,
    pub rule: String,
    pub summary: String,
    pub group: String,
    pub approvals_needed: i64,
    /// The request that opened it.
    pub request_id: String,
    pub state: ApprovalState,
    /// The rejecting approver's reason, or why it expired.
    pub reason: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub decided_at: Option<i64>,
    pub execution: Execution,
    pub claimed_at: Option<i64>,
    pub executed_at: Option<i64>,
    /// What the execution returned, for retries after it.
    pub outcome: Option<String>,
    /// Votes in the order they were cast.
    pub votes: Vec<Vote>,
}

impl Approval {
    /// Approving votes counted so far (one per person, by construction).
    pub fn approvals(&self) -> i64 {
        self.votes
            .iter()
            .filter(|v| v.decision == Decision::Approve)
            .count() as i64
    }
}

/// What a hold asks for.
#[derive(Debug, Clone, Default)]
pub struct NewApproval {
    pub fingerprint: String,
    pub agent_id: String,
    pub owner: String,
    pub team: String,
    pub kind: String,
    pub target: String,
    pub arguments: String,
    pub arguments_sha256: String,
    pub plugin: String,
    pub rule: String,
    pub summary: String,
    pub group: String,
    pub approvals_needed: i64,
    pub ttl_ms: i64,
    pub request_id: String,
}

/// The record a hold attached to, and whether it opened a new one.
#[derive(Debug, Clone)]
pub struct Attached {
    pub approval: Approval,
    pub created: bool,
}

/// What claiming an approved operation for execution found.
#[derive(Debug, Clone)]
pub enum Claim {
    /// This caller runs it, and must record the outcome.
    Claimed(Approval),
    /// Someone else claimed it first (running or done); here is the record as it stands.
    Taken(Approval),
    /// It is not approved (pending, rejected or expired).
    NotApproved(Approval),
}

const COLUMNS: &str = "id, fingerprint, agent_id, owner, team, kind, target, arguments, \
     arguments_sha256, plugin, rule, summary, group_name, approvals_needed, request_id, state, \
     reason, created_at, expires_at, decided_at, expiry_told, execution, claimed_at, \
     executed_at, outcome";

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    fingerprint: String,
    agent_id: String,
    owner: String,
    team: String,
    kind: String,
    target: String,
    arguments: String,
    arguments_sha256: String,
    plugin: String,
    rule: String,
    summary: String,
    group_name: String,
    approvals_needed: i64,
    request_id: String,
    state: String,
    reason: Option<String>,
    created_at: i64,
    expires_at: i64,
    decided_at: Option<i64>,
    expiry_told: bool,
    execution: String,
    claimed_at: Option<i64>,
    executed_at: Option<i64>,
    outcome: Option<String>,
}

impl Row {
    fn into_approval(self, votes: Vec<Vote>) -> Result<Approval, StoreError> {
        Ok(Approval {
            state: self
                .state
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("approval state {:?}", self.state)))?,
            execution: Execution::parse(&self.execution)?,
            id: self.id,
            fingerprint: self.fingerprint,
            agent_id: self.agent_id,
            owner: self.owner,
            team: self.team,
            kind: self.kind,
            target: self.target,
            arguments: self.arguments,
            arguments_sha256: self.arguments_sha256,
            plugin: self.plugin,
            rule: self.rule,
            summary: self.summary,
            group: self.group_name,
            approvals_needed: self.approvals_needed,
            request_id: self.request_id,
            reason: self.reason,
            created_at: self.created_at,
            expires_at: self.expires_at,
            decided_at: self.decided_at,
            claimed_at: self.claimed_at,
            executed_at: self.executed_at,
            outcome: self.outcome,
            votes,
        })
    }
}

#[derive(sqlx::FromRow)]
struct VoteRow {
    voter_id: String,
    voter_name: String,
    decision: String,
    reason: String,
    time_ms: i64,
}

impl VoteRow {
    fn into_vote(self) -> Result<Vote, StoreError> {
        let decision = match self.decision.as_str() {
            "approve" => Decision::Approve,
            "reject" => Decision::Reject,
            other => return Err(StoreError::Corrupt(format!("vote decision {other:?}"))),
        };
        Ok(Vote {
            voter_id: self.voter_id,
            voter_name: self.voter_name,
            decision,
            reason: self.reason,
            time_ms: self.time_ms,
        })
    }
}

const EXPIRED_REASON: &str = "no decision before the approval's deadline";

const INSERT: &str = "INSERT INTO approvals (id, fingerprint, agent_id, owner, team, kind, \
     target, arguments, arguments_sha256, plugin, rule, summary, group_name, approvals_needed, \
     request_id, state, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
     $11, $12, $13, $14, $15, 'pending', $16, $17)";

/// Expire pending requests past their deadline (within the caller's connection or
/// transaction): all of them, or only those whose `$col` equals `$val`. Narrow updates keep
/// concurrent transactions from locking each other's rows.
macro_rules! expire_due {
    ($conn:expr, $now:expr) => {
        sqlx::query(
            "UPDATE approvals SET state = 'expired', reason = $1, decided_at = expires_at \
             WHERE state = 'pending' AND expires_at <= $2",
        )
        .bind(EXPIRED_REASON)
        .bind($now)
        .execute($conn)
        .await
    };
    ($conn:expr, $now:expr, $col:literal = $val:expr) => {
        sqlx::query(concat!(
            "UPDATE approvals SET state = 'expired', reason = $1, decided_at = expires_at \
             WHERE state = 'pending' AND expires_at <= $2 AND ",
            $col,
            " = $3"
        ))
        .bind(EXPIRED_REASON)
        .bind($now)
        .bind($val)
        .execute($conn)
        .await
    };
}

macro_rules! load_votes {
    ($conn:expr, $id:expr) => {{
        let rows: Vec<VoteRow> = sqlx::query_as(
            "SELECT voter_id, voter_name, decision, reason, time_ms FROM approval_votes \
             WHERE approval_id = $1 ORDER BY time_ms, voter_name",
        )
        .bind($id)
        .fetch_all($conn)
        .await?;
        rows.into_iter()
            .map(VoteRow::into_vote)
            .collect::<Result<Vec<_>, _>>()?
    }};
}

/// `new` with every string made storable ([`crate::safe`]): the target, arguments and summary
/// come from the agent's call.
fn safe_approval(new: &NewApproval) -> NewApproval {
    let mut new = new.clone();
    let NewApproval {
        fingerprint,
        agent_id,
        owner,
        team,
        kind,
        target,
        arguments,
        arguments_sha256,
        plugin,
        rule,
        summary,
        group,
        approvals_needed: _,
        ttl_ms: _,
        request_id,
    } = &mut new;
    for s in [
        fingerprint,
        agent_id,
        owner,
        team,
        kind,
        target,
        arguments,
        arguments_sha256,
        plugin,
        rule,
        summary,
        group,
        request_id,
    ] {
        crate::safe::text_mut(s);
    }
    new
}

impl Store {
    /// Find the record an identical call attaches to, or open a new pending one. Runs in one
    /// exclusive transaction, so concurrent identical holds attach to the same record.
    pub async fn hold_approval(&self, new: &NewApproval) -> Result<Attached, StoreError> {
        if new.approvals_needed < 1 {
            return Err(StoreError::Invalid(
                "an approval needs at least one approver".into(),
            ));
        }
        let now = now_ms();
        let latest_sql = format!(
            "SELECT {COLUMNS} FROM approvals WHERE fingerprint = $1 \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        );
        let new = safe_approval(new);
        let (id, created) = self
            .detached(move |store| async move {
                let new = &new;
                Ok(on_pool!(store, |pool| {
                    let mut tx = pool.begin_exclusive().await?;
                    expire_due!(&mut *tx, now, "fingerprint" = &new.fingerprint)?;
                    let latest: Option<Row> = sqlx::query_as(&latest_sql)
                        .bind(&new.fingerprint)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let found = match latest {
                        Some(r) if r.state == "expired" && !r.expiry_told => {
                            // This retry is the one told of the expiry; the next one opens anew.
                            sqlx::query("UPDATE approvals SET expiry_told = TRUE WHERE id = $1")
                                .bind(&r.id)
                                .execute(&mut *tx)
                                .await?;
                            Some(r.id)
                        }
                        Some(r) if r.state == "expired" => None,
                        Some(r) => Some(r.id),
                        None => None,
                    };
                    let out = match found {
                        Some(id) => (id, false),
                        None => {
                            let id = new_id("apr_");
                            sqlx::query(INSERT)
                                .bind(&id)
                                .bind(&new.fingerprint)
                                .bind(&new.agent_id)
                                .bind(&new.owner)
                                .bind(&new.team)
                                .bind(&new.kind)
                                .bind(&new.target)
                                .bind(&new.arguments)
                                .bind(&new.arguments_sha256)
                                .bind(&new.plugin)
                                .bind(&new.rule)
                                .bind(&new.summary)
                                .bind(&new.group)
                                .bind(new.approvals_needed)
                                .bind(&new.request_id)
                                .bind(now)
                                .bind(now.saturating_add(new.ttl_ms.max(0)))
                                .execute(&mut *tx)
                                .await?;
                            (id, true)
                        }
                    };
                    tx.commit().await?;
                    out
                }))
            })
            .await?;
        Ok(Attached {
            approval: self.get_approval(&id).await?,
            created,
        })
    }

    /// One approval with its votes; a pending one past its deadline is expired first.
    pub async fn get_approval(&self, id: &str) -> Result<Approval, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM approvals WHERE id = $1");
        let now = now_ms();
        on_pool!(self, |pool| {
            expire_due!(pool, now, "id" = id)?;
            let row: Option<Row> = sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?;
            let row = row.ok_or_else(|| StoreError::not_found("approval", id))?;
            let votes = load_votes!(pool, id);
            row.into_approval(votes)
        })
    }

    /// Approvals, newest first, optionally only those in `state`; at most `limit`.
    pub async fn list_approvals(
        &self,
        state: Option<ApprovalState>,
        limit: i64,
    ) -> Result<Vec<Approval>, StoreError> {
        let now = now_ms();
        let sql = format!(
            "SELECT {COLUMNS} FROM approvals WHERE ($1 = '' OR state = $1) \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        let state = state.map(ApprovalState::as_str).unwrap_or("");
        on_pool!(self, |pool| {
            expire_due!(pool, now)?;
            let rows: Vec<Row> = sqlx::query_as(&sql)
                .bind(state)
                .bind(limit.max(0))
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let votes = load_votes!(pool, &r.id);
                out.push(r.into_approval(votes)?);
            }
            Ok(out)
        })
    }

    /// Record one person's vote and move the request on: any rejection is final; enough
    /// approvals approve it. Conflict if it is no longer pending (decided or expired) or if this
    /// person already voted (a second vote does not count). Who may vote is the caller's check.
    pub async fn vote_approval(
        &self,
        id: &str,
        voter_id: &str,
        voter_name: &str,
        decision: Decision,
        reason: &str,
    ) -> Result<Approval, StoreError> {
        let now = now_ms();
        // PostgreSQL: lock the row so concurrent voters count each other's votes. SQLite's
        // write transaction already serializes them.
        let lock = if self.backend_name() == "postgres" {
            " FOR UPDATE"
        } else {
            ""
        };
        let sql = format!("SELECT {COLUMNS} FROM approvals WHERE id = $1{lock}");
        let (owned_id, voter_id, voter_name, reason) = (
            id.to_string(),
            voter_id.to_string(),
            voter_name.to_string(),
            crate::safe::text(reason).into_owned(),
        );
        self.detached(move |store| async move {
            let (id, voter_id, voter_name, reason) = (
                owned_id.as_str(),
                voter_id.as_str(),
                voter_name.as_str(),
                reason.as_str(),
            );
            on_pool!(store, |pool| {
                let mut tx = pool.begin_write().await?;
                expire_due!(&mut *tx, now, "id" = id)?;
                let row: Option<Row> = sqlx::query_as(&sql)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let row = row.ok_or_else(|| StoreError::not_found("approval", id))?;
                if row.state != "pending" {
                    return Err(StoreError::conflict(
                        "approval",
                        id,
                        format!("is {} and takes no more votes", row.state),
                    ));
                }
                let inserted = sqlx::query(
                    "INSERT INTO approval_votes (approval_id, voter_id, voter_name, decision, \
                         reason, time_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(id)
                .bind(voter_id)
                .bind(voter_name)
                .bind(decision.as_str())
                .bind(reason)
                .bind(now)
                .execute(&mut *tx)
                .await;
                match inserted {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => {
                        return Err(StoreError::conflict(
                            "approval",
                            id,
                            format!("{voter_name} already voted; a second vote does not count"),
                        ));
                    }
                    Err(e) => return Err(e.into()),
                }
                match decision {
                    Decision::Reject => {
                        sqlx::query(
                            "UPDATE approvals SET state = 'rejected', reason = $1, decided_at = $2 \
                                 WHERE id = $3",
                        )
                        .bind(format!("rejected by {voter_name}: {reason}"))
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Decision::Approve => {
                        let approvals: i64 = sqlx::query_scalar(
                            "SELECT COUNT(*) FROM approval_votes \
                                 WHERE approval_id = $1 AND decision = 'approve'",
                        )
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                        if approvals >= row.approvals_needed {
                            sqlx::query(
                                "UPDATE approvals SET state = 'approved', decided_at = $1 \
                                     WHERE id = $2",
                            )
                            .bind(now)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                }
                tx.commit().await?;
                Ok::<(), StoreError>(())
            })
        })
        .await?;
        self.get_approval(id).await
    }

    /// Claim an approved operation for execution: exactly one caller ever gets
    /// [`Claim::Claimed`] for a record, however many race for it.
    pub async fn claim_approval(&self, id: &str) -> Result<Claim, StoreError> {
        let now = now_ms();
        let claimed = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE approvals SET execution = 'running', claimed_at = $1 \
                 WHERE id = $2 AND state = 'approved' AND execution = 'none'",
            )
            .bind(now)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        let approval = self.get_approval(id).await?;
        Ok(if claimed == 1 {
            Claim::Claimed(approval)
        } else if approval.state == ApprovalState::Approved {
            Claim::Taken(approval)
        } else {
            Claim::NotApproved(approval)
        })
    }

    /// Store what a claimed execution returned. Conflict unless it is running under the claim
    /// taken at `claimed_at` (`None`: any claim), so a run whose claim was released cannot
    /// overwrite the outcome of the run that claimed it next.
    pub async fn record_approval_outcome(
        &self,
        id: &str,
        claimed_at: Option<i64>,
        outcome: &str,
    ) -> Result<(), StoreError> {
        let done = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE approvals SET execution = 'done', executed_at = $1, outcome = $2 \
                 WHERE id = $3 AND execution = 'running' AND ($4 IS NULL OR claimed_at = $4)",
            )
            .bind(now_ms())
            .bind(outcome)
            .bind(id)
            .bind(claimed_at)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if done == 1 {
            Ok(())
        } else {
            Err(StoreError::conflict(
                "approval",
                id,
                "is not running; its outcome cannot be recorded",
            ))
        }
    }

    /// Give up a claim whose execution never reported back (its process died): the approval
    /// may be claimed, so run, once more. Only a claim taken before `claimed_before` (unix ms)
    /// is released, so a call still in flight is not. Conflict unless such a claim exists.
    pub async fn release_approval_claim(
        &self,
        id: &str,
        claimed_before: i64,
    ) -> Result<Approval, StoreError> {
        let released = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE approvals SET execution = 'none', claimed_at = NULL \
                 WHERE id = $1 AND execution = 'running' AND claimed_at < $2",
            )
            .bind(id)
            .bind(claimed_before)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if released == 1 {
            self.get_approval(id).await
        } else {
            // Not found is its own error; otherwise say why not.
            self.get_approval(id).await?;
            Err(StoreError::conflict(
                "approval",
                id,
                "has no execution claim old enough to release (none running, or claimed too \
                 recently)",
            ))
        }
    }

    /// Expire every pending request past its deadline; returns how many.
    pub async fn expire_approvals(&self) -> Result<u64, StoreError> {
        let now = now_ms();
        Ok(on_pool!(self, |pool| expire_due!(pool, now)?.rows_affected()))
    }

    /// Replace the approver groups a user belongs to. NotFound if there is no such user.
    pub async fn set_user_groups(
        &self,
        user_id: &str,
        groups: &[String],
    ) -> Result<Vec<String>, StoreError> {
        for g in groups {
            if g.trim().is_empty() || g.len() > 128 || g.chars().any(char::is_control) {
                return Err(StoreError::Invalid(format!(
                    "group name must be 1 to 128 printable characters, got {g:?}"
                )));
            }
        }
        self.get_user(user_id).await?;
        let mut groups = groups.to_vec();
        groups.sort();
        groups.dedup();
        let owned_user_id = user_id.to_string();
        let stored = groups.clone();
        self.detached(move |store| async move {
            let (user_id, groups) = (owned_user_id.as_str(), stored);
            on_pool!(store, |pool| {
                let mut tx = pool.begin_write().await?;
                sqlx::query("DELETE FROM user_groups WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                for g in &groups {
                    sqlx::query("INSERT INTO user_groups (user_id, group_name) VALUES ($1, $2)")
                        .bind(user_id)
                        .bind(g)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await?;
        Ok(groups)
    }

    /// The approver groups a user belongs to, sorted.
    pub async fn user_groups(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT group_name FROM user_groups WHERE user_id = $1 ORDER BY group_name",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?
        }))
    }
}
