//! Approval records, votes, execution claims and approver groups, on SQLite (a fresh file) and
//! PostgreSQL (a fresh schema, dropped afterwards). `PALISADE_TEST_PG_URL` overrides the
//! PostgreSQL URL; `PALISADE_SKIP_PG=1` skips that half when it is unreachable.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use palisade_store::{ApprovalState, Claim, Decision, Execution, NewApproval, Store, StoreError};

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

async fn run_sqlite(test: impl AsyncFnOnce(&Store)) {
    let path = std::env::temp_dir().join(format!("palisade-approvals-{}.db", suffix()));
    let store = Store::open_sqlite(&path).await.expect("open SQLite");
    let outcome = AssertUnwindSafe(test(&store)).catch_unwind().await;
    store.close().await;
    for s in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{s}", path.display()));
    }
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

async fn run_postgres(test: impl AsyncFnOnce(&Store)) {
    let url = std::env::var("PALISADE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
    let schema = format!("t_{}", suffix());
    let store = match Store::connect_pg_schema(&url, &schema).await {
        Ok(s) => s,
        Err(e) if std::env::var("PALISADE_SKIP_PG").as_deref() == Ok("1") => {
            eprintln!("PostgreSQL unreachable ({e}); skipped as PALISADE_SKIP_PG=1 asks");
            return;
        }
        Err(e) => panic!("PostgreSQL at {url} is needed: {e}"),
    };
    let outcome = AssertUnwindSafe(test(&store)).catch_unwind().await;
    store.close().await;
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                crate::run_sqlite(super::$name).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                crate::run_postgres(super::$name).await
            }
        }
    )*};
}

on_both!(
    identical_holds_attach_to_one_record,
    concurrent_holds_attach_to_one_record,
    distinct_votes_and_rejection,
    claim_is_exactly_once,
    a_dead_claim_is_released_once_and_never_a_fresh_one,
    expiry_is_told_once_then_reopens,
    groups_membership,
);

fn new(fingerprint: &str, needed: i64, ttl_ms: i64) -> NewApproval {
    NewApproval {
        fingerprint: fingerprint.into(),
        agent_id: "support-bot".into(),
        owner: "alice@example.com".into(),
        team: "support".into(),
        kind: "tool-call".into(),
        target: "mail__send_email".into(),
        arguments: r#"{"to":"x@example.com"}"#.into(),
        arguments_sha256: "00".repeat(32),
        plugin: "approvals".into(),
        rule: "email".into(),
        summary: "send an email".into(),
        group: "ops".into(),
        approvals_needed: needed,
        ttl_ms,
        request_id: "req_1".into(),
    }
}

async fn identical_holds_attach_to_one_record(s: &Store) {
    let a = s.hold_approval(&new("fp1", 1, 60_000)).await.unwrap();
    assert!(a.created);
    assert_eq!(a.approval.state, ApprovalState::Pending);
    let b = s.hold_approval(&new("fp1", 1, 60_000)).await.unwrap();
    assert!(!b.created);
    assert_eq!(a.approval.id, b.approval.id);
    let c = s.hold_approval(&new("fp2", 1, 60_000)).await.unwrap();
    assert!(c.created);
    assert_ne!(c.approval.id, a.approval.id);
    let pending = s
        .list_approvals(Some(ApprovalState::Pending), 100)
        .await
        .unwrap();
    assert_eq!(pending.len(), 2);
    assert!(
        s.list_approvals(Some(ApprovalState::Approved), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn concurrent_holds_attach_to_one_record(s: &Store) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.hold_approval(&new("fp-race", 1, 60_000)).await })
        })
        .collect();
    let mut ids = Vec::new();
    let mut created = 0;
    for t in tasks {
        let a = t.await.unwrap().unwrap();
        created += usize::from(a.created);
        ids.push(a.approval.id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(created, 1);
}

async fn distinct_votes_and_rejection(s: &Store) {
    let id = s
        .hold_approval(&new("fp-two", 2, 60_000))
        .await
        .unwrap()
        .approval
        .id;
    let a = s
        .vote_approval(&id, "usr_1", "carol", Decision::Approve, "")
        .await
        .unwrap();
    assert_eq!((a.state, a.approvals()), (ApprovalState::Pending, 1));
    // The same person twice does not count.
    let again = s
        .vote_approval(&id, "usr_1", "carol", Decision::Approve, "")
        .await
        .unwrap_err();
    assert!(matches!(again, StoreError::Conflict { .. }), "{again}");
    assert_eq!(s.get_approval(&id).await.unwrap().approvals(), 1);
    let b = s
        .vote_approval(&id, "usr_2", "dave", Decision::Approve, "ok")
        .await
        .unwrap();
    assert_eq!((b.state, b.approvals()), (ApprovalState::Approved, 2));
    assert!(b.decided_at.is_some());
    // Decided: no more votes.
    let late = s
        .vote_approval(&id, "usr_3", "erin", Decision::Reject, "")
        .await
        .unwrap_err();
    assert!(matches!(late, StoreError::Conflict { .. }));

    // Any rejection is final, even after an approval.
    let id = s
        .hold_approval(&new("fp-rej", 2, 60_000))
        .await
        .unwrap()
        .approval
        .id;
    s.vote_approval(&id, "usr_1", "carol", Decision::Approve, "")
        .await
        .unwrap();
    let r = s
        .vote_approval(&id, "usr_2", "dave", Decision::Reject, "wrong account")
        .await
        .unwrap();
    assert_eq!(r.state, ApprovalState::Rejected);
    assert!(r.reason.as_deref().unwrap().contains("wrong account"));
    assert!(
        s.vote_approval(&id, "usr_3", "erin", Decision::Approve, "")
            .await
            .is_err()
    );
    // An identical retry attaches to the rejected record.
    let again = s.hold_approval(&new("fp-rej", 2, 60_000)).await.unwrap();
    assert_eq!(
        (again.approval.id, again.approval.state),
        (id, ApprovalState::Rejected)
    );
}

async fn claim_is_exactly_once(s: &Store) {
    let id = s
        .hold_approval(&new("fp-claim", 1, 60_000))
        .await
        .unwrap()
        .approval
        .id;
    assert!(matches!(
        s.claim_approval(&id).await.unwrap(),
        Claim::NotApproved(_)
    ));
    s.vote_approval(&id, "usr_1", "carol", Decision::Approve, "")
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            let id = id.clone();
            tokio::spawn(async move { s.claim_approval(&id).await })
        })
        .collect();
    let mut claimed = 0;
    for t in tasks {
        if let Claim::Claimed(_) = t.await.unwrap().unwrap() {
            claimed += 1;
        }
    }
    assert_eq!(claimed, 1);
    s.record_approval_outcome(&id, None, "sent").await.unwrap();
    assert!(s.record_approval_outcome(&id, None, "again").await.is_err());
    let Claim::Taken(a) = s.claim_approval(&id).await.unwrap() else {
        panic!("a done execution is taken");
    };
    assert_eq!(
        (a.execution, a.outcome.as_deref()),
        (Execution::Done, Some("sent"))
    );
}

async fn a_dead_claim_is_released_once_and_never_a_fresh_one(s: &Store) {
    let id = s
        .hold_approval(&new("fp-release", 1, 60_000))
        .await
        .unwrap()
        .approval
        .id;
    // Nothing to release before a claim.
    assert!(s.release_approval_claim(&id, i64::MAX).await.is_err());
    s.vote_approval(&id, "usr_1", "carol", Decision::Approve, "")
        .await
        .unwrap();
    let Claim::Claimed(first) = s.claim_approval(&id).await.unwrap() else {
        panic!("claimed");
    };
    // A claim taken after the cut-off is a call still running: kept.
    let long_ago = palisade_store::time::now_ms() - 3_600_000;
    assert!(s.release_approval_claim(&id, long_ago).await.is_err());
    assert!(matches!(
        s.claim_approval(&id).await.unwrap(),
        Claim::Taken(_)
    ));
    // Released (its process died): claimable once more, exactly once.
    let a = s.release_approval_claim(&id, i64::MAX).await.unwrap();
    assert_eq!(a.execution, Execution::None);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let Claim::Claimed(second) = s.claim_approval(&id).await.unwrap() else {
        panic!("claimable once more");
    };
    assert!(matches!(
        s.claim_approval(&id).await.unwrap(),
        Claim::Taken(_)
    ));
    // The released run, should it come back, cannot record over the new one's claim.
    assert_ne!(first.claimed_at, second.claimed_at);
    assert!(
        s.record_approval_outcome(&id, first.claimed_at, "late")
            .await
            .is_err()
    );
    s.record_approval_outcome(&id, second.claimed_at, "sent")
        .await
        .unwrap();
    // A done execution is never released.
    assert!(s.release_approval_claim(&id, i64::MAX).await.is_err());
    assert!(
        s.release_approval_claim("apr_nope", i64::MAX)
            .await
            .is_err()
    );
}

async fn expiry_is_told_once_then_reopens(s: &Store) {
    let first = s
        .hold_approval(&new("fp-exp", 1, 1))
        .await
        .unwrap()
        .approval;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let a = s.get_approval(&first.id).await.unwrap();
    assert_eq!(a.state, ApprovalState::Expired);
    assert!(a.reason.is_some());
    assert!(
        s.vote_approval(&first.id, "usr_1", "carol", Decision::Approve, "")
            .await
            .is_err()
    );
    // The next identical call is told of the expiry...
    let told = s.hold_approval(&new("fp-exp", 1, 60_000)).await.unwrap();
    assert!(!told.created);
    assert_eq!(
        (told.approval.id.as_str(), told.approval.state),
        (first.id.as_str(), ApprovalState::Expired)
    );
    // ...and the one after opens a new request.
    let fresh = s.hold_approval(&new("fp-exp", 1, 60_000)).await.unwrap();
    assert!(fresh.created);
    assert_eq!(fresh.approval.state, ApprovalState::Pending);
}

async fn groups_membership(s: &Store) {
    let u = s
        .create_user(
            "carol",
            "carol@example.com",
            &[palisade_store::Role::Approver],
        )
        .await
        .unwrap();
    assert!(s.user_groups(&u.id).await.unwrap().is_empty());
    let g = s
        .set_user_groups(&u.id, &["ops".into(), "finance".into(), "ops".into()])
        .await
        .unwrap();
    assert_eq!(g, vec!["finance".to_string(), "ops".to_string()]);
    assert_eq!(s.user_groups(&u.id).await.unwrap(), g);
    s.set_user_groups(&u.id, &["ops".into()]).await.unwrap();
    assert_eq!(s.user_groups(&u.id).await.unwrap(), vec!["ops".to_string()]);
    assert!(matches!(
        s.set_user_groups("usr_none", &[]).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    assert!(matches!(
        s.set_user_groups(&u.id, &[" ".into()]).await.unwrap_err(),
        StoreError::Invalid(_)
    ));
}
