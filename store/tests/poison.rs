//! What agents and dropped callers must not be able to do to the store (issue 14), on SQLite (a
//! fresh file) and PostgreSQL (a fresh schema, dropped afterwards):
//! - NUL and other control characters in every agent-supplied string of an audit event are
//!   stored (NUL replaced), the chain verifies, and the row reads back;
//! - a refused event is a data error, can be quarantined in the dead-letter table, and the log
//!   goes on; real database refusals and an unreachable server are classified as data and
//!   transient errors;
//! - callers dropped in the middle of reserve, settle and audit appends leave no pooled
//!   connection inside a transaction: the next reserve and append succeed.
//!
//! `PALISADE_TEST_PG_URL` overrides the PostgreSQL URL; `PALISADE_SKIP_PG=1` skips that half
//! when it is unreachable.

use std::time::Duration;

use futures_util::TryStreamExt;
use palisade_store::ledger::{Amount, Reservation, Unit, Window};
use palisade_store::{AuditFilter, NewAuditEvent, Store, StoreError};
use serde_json::json;
use sha2::{Digest, Sha256};

#[macro_use]
mod common;

use common::*;

on_both!(
    control_characters_everywhere_are_stored_and_verify,
    refused_events_are_data_errors_and_quarantined,
    database_refusals_are_classified,
    dropped_callers_leave_no_transaction_open,
);

/// Every control character worth trying: NUL, the C0 range's usual suspects, DEL, a C1 one.
const NASTY: &str = "a\u{0}b\u{1}\t\n\r\u{1b}[31m\u{7f}\u{85}\u{0}";

/// `NASTY` as stored: each NUL replaced, everything else kept.
fn stored(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

fn nasty_event() -> NewAuditEvent {
    let n = |p: &str| format!("{p}{NASTY}");
    NewAuditEvent {
        time_ms: 1_772_978_531_000,
        request_id: n("req"),
        run_id: n("run"),
        chain: vec![n("alice"), n("bot")],
        agent: Some(n("agent")),
        owner: Some(n("owner")),
        team: Some(n("team")),
        kind: n("llm"),
        target: n("gpt-4o-mini"),
        provider: Some(n("openai")),
        decided_by: Some(n("pii")),
        verdicts: json!([{"plugin": n("pii"), n("key"): {"nested": [n("deep"), 1, null]}}]),
        policy_version: n("p"),
        input_tokens: 1,
        output_tokens: 2,
        cost_micro_usd: 3,
        latency_us: 4,
        status: 400,
        error_code: Some(n("invalid_request")),
        truncated: true,
        body: Some(n("{\"model\":\"gpt\"}")),
    }
}

async fn control_characters_everywhere_are_stored_and_verify(db: &TestDb) {
    let s = &db.store;
    let event = nasty_event();
    let seqs = s.append_audit(std::slice::from_ref(&event)).await.unwrap();
    // The chain goes on after it.
    let mut plain = nasty_event();
    plain.request_id = "plain".into();
    plain.kind = "llm".into();
    s.append_audit(&[plain]).await.unwrap();
    let report = s.verify_audit().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.rows, 2);

    // Searching by the string the agent sent finds the stored row.
    let filter = AuditFilter {
        request_id: Some(event.request_id.clone()),
        ..Default::default()
    };
    let rows: Vec<_> = s.audit_stream(filter).try_collect().await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r.seq, seqs[0]);
    let expected = |v: &str| stored(v);
    assert_eq!(r.request_id, expected(&event.request_id));
    assert_eq!(r.run_id, expected(&event.run_id));
    assert_eq!(
        r.chain,
        event.chain.iter().map(|c| expected(c)).collect::<Vec<_>>()
    );
    for (got, sent) in [
        (&r.agent, &event.agent),
        (&r.owner, &event.owner),
        (&r.team, &event.team),
        (&r.provider, &event.provider),
        (&r.decided_by, &event.decided_by),
        (&r.error_code, &event.error_code),
        (&r.body, &event.body),
    ] {
        assert_eq!(got.as_deref(), sent.as_deref().map(stored).as_deref());
    }
    assert_eq!(r.kind, expected(&event.kind));
    assert_eq!(r.target, expected(&event.target));
    assert_eq!(r.policy_version, expected(&event.policy_version));
    let verdicts = serde_json::to_string(&r.verdicts).unwrap();
    assert!(!verdicts.contains("\\u0000"), "{verdicts}");
    assert_eq!(
        r.verdicts[0][format!("key{}", stored(NASTY))]["nested"][0],
        json!(format!("deep{}", stored(NASTY)))
    );
    // The control characters other than NUL are kept as sent.
    assert!(r.target.contains("\u{1b}[31m\u{7f}\u{85}"));
    assert!(r.body.as_deref().unwrap().contains('\n'));
}

async fn refused_events_are_data_errors_and_quarantined(db: &TestDb) {
    let s = &db.store;
    s.append_audit(&[nasty_event()]).await.unwrap();
    // An event the store refuses: nothing of its batch is written.
    let mut bad = nasty_event();
    bad.kind = String::new();
    let err = s
        .append_audit(&[nasty_event(), bad.clone()])
        .await
        .unwrap_err();
    assert!(err.is_data() && !err.is_transient(), "{err:?}");
    assert_eq!(s.audit_head().await.unwrap().0, 1);

    let reason = format!("{err} \u{0} (quoted value)");
    let id = s.quarantine_audit(&bad, &reason).await.unwrap();
    let letters = s.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l.id, id);
    assert_eq!(l.request_id, stored(&bad.request_id));
    assert_eq!(l.reason, stored(&reason));
    assert!(!l.event.contains("\\u0000"), "{}", l.event);
    assert_eq!(
        l.event_sha256,
        hex::encode(Sha256::digest(l.event.as_bytes()))
    );
    let back: NewAuditEvent = serde_json::from_str(&l.event).unwrap();
    assert_eq!(back.target, stored(&bad.target));
    assert_eq!(s.dead_letter_count().await.unwrap(), 1);

    // The log goes on, its chain intact: the quarantined event is outside it.
    s.append_audit(&[nasty_event()]).await.unwrap();
    let report = s.verify_audit().await.unwrap();
    assert!(report.ok && report.rows == 2, "{report:?}");
}

async fn database_refusals_are_classified(db: &TestDb) {
    // A NOT NULL column given NULL: an integrity constraint (SQLite 19, PostgreSQL 23502).
    let e = db
        .exec_err(
            "INSERT INTO audit_dead_letter (time_ms, request_id, event, event_sha256, reason) \
             VALUES (1, $1, NULL, '', '')",
            "r",
        )
        .await;
    assert!(e.is_data() && !e.is_transient(), "{e:?}");
    if let Raw::Postgres(_) = db.raw {
        // The poison of the issue: PostgreSQL refuses NUL in text (SQLSTATE 22021).
        let e = db.exec_err("SELECT $1::text", "gpt-4o-mini\u{0}").await;
        assert!(e.is_data() && !e.is_transient(), "{e:?}");
    }
    // Nobody listens on port 1: unreachable is transient, not the rows' fault.
    let refused = <sqlx::PgConnection as sqlx::Connection>::connect("postgres://u@127.0.0.1:1/t");
    let e = StoreError::from(refused.await.unwrap_err());
    assert!(e.is_transient() && !e.is_data(), "{e:?}");
}

fn usd(scope: &str, amount: u64) -> Amount {
    Amount {
        scope: scope.into(),
        unit: Unit::MicroUsd,
        window: Window::Total,
        amount,
        limit: u64::MAX >> 8,
    }
}

/// One governed call's store work: reserve, then settle, then its audit event.
async fn call_work(store: Store, i: usize) {
    let amounts = [usd("agent:load", 5), usd(&format!("run:{}", i % 4), 5)];
    if let Ok(Reservation::Held(id)) = store.reserve(&amounts, Duration::from_secs(60)).await {
        let _ = store.settle(id, 3, 0).await;
    }
    let mut e = nasty_event();
    e.request_id = format!("load-{i}");
    let _ = store.append_audit(&[e]).await;
}

async fn dropped_callers_leave_no_transaction_open(db: &TestDb) {
    let s = &db.store;
    for round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..32 {
            let store = s.clone();
            let work = call_work(store, round * 100 + i);
            tasks.push(tokio::spawn(async move {
                match i % 3 {
                    // Dropped after a few hundred microseconds: somewhere mid-transaction.
                    0 => {
                        let tiny = Duration::from_micros(50 + (i as u64 * 97) % 3000);
                        let _ = tokio::time::timeout(tiny, work).await;
                    }
                    // Dropped right after its first poll.
                    1 => {
                        tokio::select! {
                            biased;
                            _ = work => {}
                            _ = tokio::task::yield_now() => {}
                        }
                    }
                    // Runs until aborted from outside.
                    _ => work.await,
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        // The next calls are served, promptly: no pooled connection is stuck inside a
        // transaction. Sequential acquisitions go round every idle connection of the pool.
        tokio::time::timeout(Duration::from_secs(20), async {
            for _ in 0..16 {
                let r = s
                    .reserve(&[usd("agent:next", 1)], Duration::from_secs(60))
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: reserve after drops: {e}"));
                let Reservation::Held(id) = r else {
                    panic!("round {round}: {r:?}")
                };
                s.settle(id, 1, 0).await.unwrap();
            }
            s.append_audit(&[nasty_event()])
                .await
                .unwrap_or_else(|e| panic!("round {round}: append after drops: {e}"));
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: the store is wedged"));
    }
    let report = s.verify_audit().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(
        s.spent("agent:next", Unit::MicroUsd, Window::Total)
            .await
            .unwrap(),
        5 * 16
    );
}
