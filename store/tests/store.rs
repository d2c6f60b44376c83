//! One suite, two backends: every test below is a function of a [`TestDb`] and runs twice, on
//! SQLite in a fresh temporary file and on PostgreSQL in a fresh schema (dropped afterwards).
//!
//! PostgreSQL is `postgres://postgres@127.0.0.1:5432/test` unless `PALISADE_TEST_PG_URL` says
//! otherwise. If it cannot be reached the PostgreSQL half fails, unless `PALISADE_SKIP_PG=1`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use palisade_store::export::{self, AGENT_CSV_COLUMNS, AUDIT_CSV_COLUMNS, ExportFormat};
use palisade_store::ledger::{Amount, Reservation, Unit, Window};
use palisade_store::time::{format_rfc3339_ms, now_ms, parse_rfc3339_ms};
use palisade_store::{
    AgentStatus, AgentUpdate, AuditFilter, AuditRecord, ConfigAgent, NewAgent, NewAuditEvent, Role,
    Store, StoreError, hash_secret,
};
use serde_json::json;
use sqlx::SqlitePool;

#[macro_use]
mod common;

use common::*;

on_both!(
    migrations_are_idempotent,
    agents_crud,
    config_sync,
    concurrent_config_sync,
    keys_lifecycle,
    users_roles_tokens,
    the_last_admin_stays,
    audit_concurrent_appends_form_one_chain,
    audit_verify_finds_changed_row,
    audit_verify_finds_deleted_middle_row,
    audit_verify_finds_deleted_last_row,
    audit_filters,
    audit_stream_can_be_dropped,
    csv_and_jsonl_export_round_trip,
    agents_csv_round_trip,
    ledger_reserve_settle_release,
    ledger_concurrent_reservations_never_overspend,
);

// ---------------------------------------------------------------------------------------------
// Helpers

fn agent(id: &str) -> NewAgent {
    NewAgent {
        id: id.into(),
        name: format!("{id} bot"),
        owner: "alice@example.com".into(),
        team: "support".into(),
        description: "answers customers".into(),
        purpose: "customer-facing chat".into(),
        labels: BTreeMap::from([("env".into(), "prod".into())]),
        models: vec!["gpt-4o".into()],
        tools: vec!["search".into()],
        budgets: json!({"usd_per_day": 5.5, "tokens_per_hour": 100000}),
        limits: palisade_store::AgentLimits {
            rpm: Some(60),
            tpm: None,
            concurrent: Some(4),
        },
    }
}

fn event(agent: &str, time_ms: i64) -> NewAuditEvent {
    NewAuditEvent {
        time_ms,
        request_id: format!("req-{}", random_suffix()),
        run_id: "run-1".into(),
        chain: vec!["alice".into(), agent.into()],
        agent: Some(agent.into()),
        owner: Some("alice@example.com".into()),
        team: Some("support".into()),
        kind: "llm".into(),
        target: "gpt-4o".into(),
        provider: Some("openai".into()),
        decided_by: None,
        verdicts: json!([{"plugin": "model-allow", "verdict": "allow"}]),
        policy_version: "p-1".into(),
        input_tokens: 10,
        output_tokens: 20,
        cost_micro_usd: 1234,
        latency_us: 5678,
        status: 200,
        error_code: None,
        truncated: false,
        body: None,
    }
}

async fn collect(store: &Store, filter: AuditFilter) -> Vec<AuditRecord> {
    store.audit_stream(filter).try_collect().await.unwrap()
}

async fn append_n(store: &Store, n: usize) -> Vec<i64> {
    let events: Vec<_> = (0..n).map(|i| event("bot", 1_000_000 + i as i64)).collect();
    store.append_audit(&events).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests

async fn migrations_are_idempotent(db: &TestDb) {
    db.store.create_agent(agent("a")).await.unwrap();
    let again = db.second_store().await;
    assert_eq!(again.get_agent("a").await.unwrap().id, "a");
    assert_eq!(again.audit_head().await.unwrap().0, 0);
    again.close().await;
}

async fn agents_crud(db: &TestDb) {
    let s = &db.store;
    let before = now_ms();
    let a = s.create_agent(agent("chatbot")).await.unwrap();
    assert_eq!(a.id, "chatbot");
    assert_eq!(a.name, "chatbot bot");
    assert_eq!(a.status, AgentStatus::Active);
    assert_eq!(a.source.as_str(), "api");
    assert_eq!(
        a.budgets,
        json!({"usd_per_day": 5.5, "tokens_per_hour": 100000})
    );
    assert_eq!(a.labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(
        (a.limits.rpm, a.limits.tpm, a.limits.concurrent),
        (Some(60), None, Some(4))
    );
    assert!(a.created_at >= before && a.created_at == a.updated_at);
    assert_eq!(a.last_seen_at, None);
    assert_eq!(s.get_agent("chatbot").await.unwrap(), a);

    let dup = s.create_agent(agent("chatbot")).await.unwrap_err();
    assert!(matches!(dup, StoreError::Conflict { .. }), "{dup}");
    let bad = s
        .create_agent(NewAgent {
            id: "has space".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(bad, StoreError::Invalid(_)), "{bad}");
    assert!(matches!(
        s.get_agent("nobody").await.unwrap_err(),
        StoreError::NotFound { .. }
    ));

    // Defaults: name from id, null budgets stored as {}.
    let b = s
        .create_agent(NewAgent {
            id: "another".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(b.name, "another");
    assert_eq!(b.budgets, json!({}));
    let ids: Vec<_> = s
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["another", "chatbot"]);

    let u = s
        .update_agent(
            "chatbot",
            AgentUpdate {
                owner: Some("bob@example.com".into()),
                models: Some(vec!["gpt-4o".into(), "claude".into()]),
                budgets: Some(json!({"usd_per_day": 1})),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(u.owner, "bob@example.com");
    assert_eq!(u.models, ["gpt-4o", "claude"]);
    assert_eq!(u.budgets, json!({"usd_per_day": 1}));
    assert_eq!(u.team, "support", "unset fields stay");
    assert!(u.updated_at >= a.updated_at);
    assert!(matches!(
        s.update_agent("nobody", AgentUpdate::default())
            .await
            .unwrap_err(),
        StoreError::NotFound { .. }
    ));
    let bad_budget = s
        .update_agent(
            "chatbot",
            AgentUpdate {
                budgets: Some(json!([1, 2])),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(bad_budget, StoreError::Invalid(_)));

    let susp = s
        .set_agent_status("chatbot", AgentStatus::Suspended)
        .await
        .unwrap();
    assert_eq!(susp.status, AgentStatus::Suspended);
    assert!(matches!(
        s.set_agent_status("nobody", AgentStatus::Active)
            .await
            .unwrap_err(),
        StoreError::NotFound { .. }
    ));

    s.touch_last_seen("chatbot", 5_000).await.unwrap();
    s.touch_last_seen("chatbot", 4_000).await.unwrap();
    s.touch_last_seen("nobody", 4_000).await.unwrap();
    assert_eq!(
        s.get_agent("chatbot").await.unwrap().last_seen_at,
        Some(5_000)
    );
}

async fn config_sync(db: &TestDb) {
    let s = &db.store;
    let (ka, kb, kc) = (
        "pk_config_a_secret",
        "pk_config_b_secret",
        "pk_config_a_next",
    );
    let declared = |a_key: &str, with_b: bool| {
        let mut v = vec![ConfigAgent {
            agent: agent("cfg-a"),
            key_sha256: vec![hash_secret(a_key)],
        }];
        if with_b {
            v.push(ConfigAgent {
                agent: agent("cfg-b"),
                key_sha256: vec![hash_secret(kb).to_uppercase()],
            });
        }
        v
    };

    let r = s.sync_config_agents(&declared(ka, true)).await.unwrap();
    assert_eq!(r.created, ["cfg-a", "cfg-b"]);
    assert_eq!(r.keys_added, 2);
    assert_eq!(
        s.get_agent("cfg-a").await.unwrap().source.as_str(),
        "config"
    );
    assert_eq!(s.authenticate(ka).await.unwrap().unwrap().agent.id, "cfg-a");
    assert_eq!(s.authenticate(kb).await.unwrap().unwrap().agent.id, "cfg-b");

    // Syncing the same declaration again changes nothing.
    let r = s.sync_config_agents(&declared(ka, true)).await.unwrap();
    assert_eq!(r, Default::default());

    // An API agent is never touched by a sync, even when the config declares its id.
    let api = s.create_agent(agent("api-agent")).await.unwrap();
    let mut with_api = declared(ka, true);
    with_api.push(ConfigAgent {
        agent: NewAgent {
            owner: "mallory".into(),
            ..agent("api-agent")
        },
        key_sha256: vec![],
    });
    let r = s.sync_config_agents(&with_api).await.unwrap();
    assert_eq!(r.skipped, ["api-agent"]);
    assert_eq!(s.get_agent("api-agent").await.unwrap(), api);

    // The config owns its agents: the API may not edit them.
    let err = s
        .update_agent(
            "cfg-a",
            AgentUpdate {
                owner: Some("x".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");

    // cfg-b leaves the config, cfg-a changes owner and key.
    let mut next = declared(kc, false);
    next[0].agent.owner = "carol@example.com".into();
    let r = s.sync_config_agents(&next).await.unwrap();
    assert_eq!(r.updated, ["cfg-a"]);
    assert_eq!(r.suspended, ["cfg-b"]);
    assert_eq!((r.keys_added, r.keys_revoked), (1, 1));
    assert_eq!(
        s.get_agent("cfg-a").await.unwrap().owner,
        "carol@example.com"
    );
    let b = s.get_agent("cfg-b").await.unwrap();
    assert_eq!(b.status, AgentStatus::Suspended, "suspended, not deleted");
    assert!(
        s.authenticate(ka).await.unwrap().is_none(),
        "old config key revoked"
    );
    assert!(s.authenticate(kc).await.unwrap().unwrap().is_active());
    let kb_auth = s.authenticate(kb).await.unwrap().unwrap();
    assert!(!kb_auth.is_active(), "suspended agent reported as such");
    assert_eq!(s.get_agent("api-agent").await.unwrap(), api);

    // An admin suspends cfg-a; cfg-b comes back. The admin's suspension survives the sync.
    s.set_agent_status("cfg-a", AgentStatus::Suspended)
        .await
        .unwrap();
    let mut back = declared(kc, true);
    back[0].agent.owner = "carol@example.com".into();
    let r = s.sync_config_agents(&back).await.unwrap();
    assert_eq!(r.reactivated, ["cfg-b"]);
    assert_eq!(
        s.get_agent("cfg-b").await.unwrap().status,
        AgentStatus::Active
    );
    assert_eq!(
        s.get_agent("cfg-a").await.unwrap().status,
        AgentStatus::Suspended
    );

    // Bad declarations change nothing.
    let mut twice = declared(kc, true);
    twice.push(twice[0].clone());
    assert!(matches!(
        s.sync_config_agents(&twice).await.unwrap_err(),
        StoreError::Invalid(_)
    ));
    let mut bad_hash = declared(kc, true);
    bad_hash[0].key_sha256 = vec!["not-hex".into()];
    assert!(matches!(
        s.sync_config_agents(&bad_hash).await.unwrap_err(),
        StoreError::Invalid(_)
    ));
    let mut stolen = declared(kc, true);
    stolen.push(ConfigAgent {
        agent: agent("cfg-new"),
        key_sha256: vec![hash_secret(kb)],
    });
    let err = s.sync_config_agents(&stolen).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(
        matches!(
            s.get_agent("cfg-new").await.unwrap_err(),
            StoreError::NotFound { .. }
        ),
        "a failed sync is rolled back"
    );
}

async fn concurrent_config_sync(db: &TestDb) {
    // Replicas starting together all sync the same config: none may fail, nothing is doubled.
    let declared: Vec<ConfigAgent> = (0..3)
        .map(|i| ConfigAgent {
            agent: agent(&format!("cfg-{i}")),
            key_sha256: vec![hash_secret(&format!("pk_replica_key_{i}"))],
        })
        .collect();
    let stores = [db.store.clone(), db.second_store().await];
    let mut tasks = Vec::new();
    for t in 0..6 {
        let store = stores[t % 2].clone();
        let declared = declared.clone();
        tasks.push(tokio::spawn(async move {
            store.sync_config_agents(&declared).await.unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += t.await.unwrap().created.len();
    }
    assert_eq!(created, 3, "each agent created once");
    assert_eq!(db.store.list_agents().await.unwrap().len(), 3);
    for i in 0..3 {
        assert_eq!(
            db.store.list_keys(&format!("cfg-{i}")).await.unwrap().len(),
            1
        );
        let auth = db
            .store
            .authenticate(&format!("pk_replica_key_{i}"))
            .await
            .unwrap();
        assert_eq!(auth.unwrap().agent.id, format!("cfg-{i}"));
    }
    stores[1].close().await;
}

async fn keys_lifecycle(db: &TestDb) {
    let s = &db.store;
    s.create_agent(agent("bot")).await.unwrap();
    s.create_agent(agent("other")).await.unwrap();

    let k1 = s.create_key("bot").await.unwrap();
    assert!(k1.secret.starts_with("pk_") && k1.secret.len() > 40);
    assert!(k1.secret.starts_with(&k1.prefix));
    assert!(
        !format!("{k1:?}").contains(&k1.secret),
        "Debug hides the secret"
    );
    let auth = s.authenticate(&k1.secret).await.unwrap().unwrap();
    assert_eq!(auth.agent.id, "bot");
    assert_eq!(auth.key_id, k1.id);
    assert!(auth.is_active());
    assert!(s.authenticate("pk_unknown").await.unwrap().is_none());
    assert!(matches!(
        s.create_key("nobody").await.unwrap_err(),
        StoreError::NotFound { .. }
    ));

    // Stored only as a hash.
    let leaked = match &db.raw {
        Raw::Sqlite(p) => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM agent_keys WHERE key_hash = $1 OR prefix = $1 OR id = $1",
        )
        .bind(&k1.secret)
        .fetch_one(p)
        .await
        .unwrap(),
        Raw::Postgres(p) => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM agent_keys WHERE key_hash = $1 OR prefix = $1 OR id = $1",
        )
        .bind(&k1.secret)
        .fetch_one(p)
        .await
        .unwrap(),
    };
    assert_eq!(leaked, 0);

    // Rotation without grace: the old key stops at once.
    let k2 = s.rotate_key("bot", &k1.id, Duration::ZERO).await.unwrap();
    assert!(s.authenticate(&k1.secret).await.unwrap().is_none());
    assert_eq!(
        s.authenticate(&k2.secret).await.unwrap().unwrap().key_id,
        k2.id
    );
    let err = s
        .rotate_key("bot", &k1.id, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(matches!(
        s.rotate_key("other", &k2.id, Duration::ZERO)
            .await
            .unwrap_err(),
        StoreError::NotFound { .. }
    ));

    // Rotation with grace: both work until the old one's time runs out.
    let k3 = s
        .rotate_key("bot", &k2.id, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(s.authenticate(&k2.secret).await.unwrap().is_some());
    assert!(s.authenticate(&k3.secret).await.unwrap().is_some());
    let keys = s.list_keys("bot").await.unwrap();
    assert_eq!(keys.len(), 3);
    let now = now_ms();
    let info = |id: &str| keys.iter().find(|k| k.id == id).unwrap().clone();
    assert!(!info(&k1.id).is_live(now));
    assert!(info(&k2.id).is_live(now));
    assert!(info(&k2.id).revoked_at.unwrap() > now + 3_500_000);
    assert!(info(&k3.id).revoked_at.is_none());
    assert_eq!(info(&k3.id).prefix, k3.prefix);

    // Revoking shortens the grace to now; revoking again is harmless.
    let r = s.revoke_key(&k2.id).await.unwrap();
    assert!(!r.is_live(now_ms() + 1));
    assert!(s.authenticate(&k2.secret).await.unwrap().is_none());
    s.revoke_key(&k2.id).await.unwrap();
    assert!(matches!(
        s.revoke_key("key_nope").await.unwrap_err(),
        StoreError::NotFound { .. }
    ));

    // A suspended agent's key still matches, and says so.
    s.set_agent_status("bot", AgentStatus::Suspended)
        .await
        .unwrap();
    let auth = s.authenticate(&k3.secret).await.unwrap().unwrap();
    assert_eq!(auth.agent.status, AgentStatus::Suspended);
    assert!(!auth.is_active());

    // A key registered by its hash.
    let info = s
        .add_key_hash("other", &hash_secret("pk_external"))
        .await
        .unwrap();
    assert_eq!(
        s.authenticate("pk_external").await.unwrap().unwrap().key_id,
        info.id
    );
    assert!(matches!(
        s.add_key_hash("bot", &hash_secret("pk_external"))
            .await
            .unwrap_err(),
        StoreError::Conflict { .. }
    ));
    assert!(matches!(
        s.add_key_hash("bot", "zz").await.unwrap_err(),
        StoreError::Invalid(_)
    ));

    s.touch_key_used(&k3.id, 9_000).await.unwrap();
    s.touch_key_used(&k3.id, 8_000).await.unwrap();
    assert_eq!(s.get_key(&k3.id).await.unwrap().last_used_at, Some(9_000));
    assert!(matches!(
        s.list_keys("nobody").await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

async fn users_roles_tokens(db: &TestDb) {
    let s = &db.store;
    let ann = s
        .create_user(
            "ann",
            "ann@example.com",
            &[Role::Auditor, Role::Approver, Role::Auditor],
        )
        .await
        .unwrap();
    assert_eq!(ann.roles, [Role::Approver, Role::Auditor]);
    assert!(ann.has_role(Role::Auditor) && !ann.has_role(Role::Admin));
    assert!(matches!(
        s.create_user("ann", "", &[]).await.unwrap_err(),
        StoreError::Conflict { .. }
    ));

    let t = s.create_user_token(&ann.id).await.unwrap();
    assert!(t.secret.starts_with("pt_"));
    assert_eq!(
        s.authenticate_user(&t.secret).await.unwrap(),
        Some(ann.clone())
    );
    assert!(s.authenticate_user("pt_wrong").await.unwrap().is_none());
    let tokens = s.list_user_tokens(&ann.id).await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0].last_used_at.is_some());
    s.revoke_user_token(&t.id).await.unwrap();
    assert!(s.authenticate_user(&t.secret).await.unwrap().is_none());
    assert!(matches!(
        s.revoke_user_token("tok_nope").await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    assert!(matches!(
        s.create_user_token("usr_nope").await.unwrap_err(),
        StoreError::NotFound { .. }
    ));

    let ann = s.set_user_roles(&ann.id, &[Role::Auditor]).await.unwrap();
    assert_eq!(ann.roles, [Role::Auditor]);

    // Bootstrap admin: idempotent.
    let boot = "bootstrap-token-from-env-0123456789";
    let root = s.ensure_admin("root", boot).await.unwrap();
    assert_eq!(root.roles, [Role::Admin]);
    let again = s.ensure_admin("root", boot).await.unwrap();
    assert_eq!(again, root);
    assert_eq!(s.list_user_tokens(&root.id).await.unwrap().len(), 1);
    assert_eq!(s.authenticate_user(boot).await.unwrap(), Some(root.clone()));
    // An existing user gains the admin role; another user's token is refused.
    let ann2 = s
        .ensure_admin("ann", "ann-bootstrap-token-0123456789")
        .await
        .unwrap();
    assert_eq!(ann2.roles, [Role::Admin, Role::Auditor]);
    assert!(matches!(
        s.ensure_admin("ann", boot).await.unwrap_err(),
        StoreError::Conflict { .. }
    ));
    assert!(matches!(
        s.ensure_admin("root", "short").await.unwrap_err(),
        StoreError::Invalid(_)
    ));
    let names: Vec<_> = s
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["ann", "root"]);
    assert_eq!(s.find_user("root").await.unwrap(), Some(root));
    assert_eq!(s.find_user("nobody").await.unwrap(), None);
}

async fn the_last_admin_stays(db: &TestDb) {
    let s = &db.store;
    let admin = |name: &'static str| async move {
        let u = s.create_user(name, "", &[Role::Admin]).await.unwrap();
        let t = s.create_user_token(&u.id).await.unwrap();
        (u, t)
    };
    let conflict = |e: StoreError| assert!(matches!(e, StoreError::Conflict { .. }), "{e}");

    // Two admins disable each other at once (two stores, as two replicas): one wins.
    let mut prev: Option<palisade_store::User> = None;
    for round in 0..4 {
        let (a, _) = admin(["a0", "a1", "a2", "a3"][round]).await;
        let (b, _) = admin(["b0", "b1", "b2", "b3"][round]).await;
        if let Some(p) = prev.take() {
            // The last round's admin steps down, leaving a and b.
            s.set_user_roles(&p.id, &[Role::Auditor]).await.unwrap();
        }
        let other = db.second_store().await;
        let (ra, rb) = tokio::join!(
            s.set_user_disabled(&a.id, true),
            other.set_user_disabled(&b.id, true)
        );
        assert!(ra.is_ok() != rb.is_ok(), "round {round}: {ra:?} {rb:?}");
        // Demoting each other: the survivor is alone, so both are refused now.
        let alive = if ra.is_ok() { &b } else { &a };
        conflict(
            s.set_user_roles(&alive.id, &[Role::Auditor])
                .await
                .unwrap_err(),
        );
        conflict(s.set_user_disabled(&alive.id, true).await.unwrap_err());
        // Cleared for the next round: the disabled one comes back and the survivor goes.
        let gone = if ra.is_ok() { &a } else { &b };
        s.set_user_disabled(&gone.id, false).await.unwrap();
        s.set_user_roles(&alive.id, &[Role::Auditor]).await.unwrap();
        conflict(
            s.set_user_roles(&gone.id, &[Role::Auditor])
                .await
                .unwrap_err(),
        );
        prev = Some(gone.clone());
        other.close().await;
    }

    // Demote and disable at once, on each other: one wins.
    let (c, _) = admin("c").await;
    let (d, _) = admin("d").await;
    s.set_user_roles(&prev.unwrap().id, &[Role::Auditor])
        .await
        .unwrap();
    let (rc, rd) = tokio::join!(
        s.set_user_roles(&c.id, &[Role::Approver]),
        s.set_user_disabled(&d.id, true)
    );
    assert!(rc.is_ok() != rd.is_ok(), "{rc:?} {rd:?}");
    let last = if rc.is_ok() { d } else { c };

    // The last admin's last live token stays; with a second one, either may go.
    let tokens = s.list_user_tokens(&last.id).await.unwrap();
    assert_eq!(tokens.len(), 1);
    conflict(s.revoke_user_token(&tokens[0].id).await.unwrap_err());
    let spare = s.create_user_token(&last.id).await.unwrap();
    s.revoke_user_token(&tokens[0].id).await.unwrap();
    s.revoke_user_token(&tokens[0].id).await.unwrap(); // already revoked: as it was
    conflict(s.revoke_user_token(&spare.id).await.unwrap_err());
    assert!(s.authenticate_user(&spare.secret).await.unwrap().is_some());
    // An admin without a live token does not count.
    let (e, et) = admin("e").await;
    let e_tokens = s.list_user_tokens(&e.id).await.unwrap();
    assert_eq!(e_tokens[0].id, et.id);
    s.revoke_user_token(&et.id).await.unwrap();
    conflict(s.set_user_disabled(&last.id, true).await.unwrap_err());
    // Non-admins and unknown users are not guarded.
    let f = s.create_user("f", "", &[Role::Auditor]).await.unwrap();
    s.set_user_disabled(&f.id, true).await.unwrap();
    assert!(matches!(
        s.set_user_disabled("usr_nope", true).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    assert!(matches!(
        s.set_user_roles("usr_nope", &[]).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

async fn audit_concurrent_appends_form_one_chain(db: &TestDb) {
    // Two stores on one database, as two gateway processes; 8 tasks, 500 events in batches.
    let stores = [db.store.clone(), db.second_store().await];
    let mut tasks = Vec::new();
    for t in 0..8usize {
        let store = stores[t % 2].clone();
        let quota = if t < 4 { 63 } else { 62 };
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            let mut sent = 0;
            let mut batch = 1 + t % 4;
            while sent < quota {
                let n = batch.min(quota - sent);
                let events: Vec<_> = (0..n)
                    .map(|i| event(&format!("agent-{t}"), (sent + i) as i64))
                    .collect();
                let got = store.append_audit(&events).await.unwrap();
                assert_eq!(got.len(), n);
                assert!(
                    got.windows(2).all(|w| w[1] == w[0] + 1),
                    "a batch is contiguous"
                );
                seqs.extend(got);
                sent += n;
                batch = batch % 5 + 1;
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=500).collect::<Vec<i64>>());

    let report = db.store.verify_audit().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.rows, 500);
    assert_eq!(report.last_seq, 500);
    let rows = collect(&db.store, AuditFilter::default()).await;
    assert_eq!(rows.len(), 500);
    assert_eq!(rows[0].prev_hash, palisade_store::audit::GENESIS_HASH);
    for w in rows.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    assert_eq!(report.last_hash, rows[499].hash);
    stores[1].close().await;
}

async fn audit_verify_finds_changed_row(db: &TestDb) {
    append_n(&db.store, 20).await;
    assert!(db.store.verify_audit().await.unwrap().ok);
    assert_eq!(
        db.exec("UPDATE audit_events SET status = 599 WHERE seq = 7")
            .await,
        1
    );
    let report = db.store.verify_audit().await.unwrap();
    assert!(!report.ok);
    let bad = report.first_bad.unwrap();
    assert_eq!(bad.seq, 7, "{}", bad.reason);
    assert_eq!(report.rows, 6);
}

async fn audit_verify_finds_deleted_middle_row(db: &TestDb) {
    append_n(&db.store, 20).await;
    assert_eq!(db.exec("DELETE FROM audit_events WHERE seq = 10").await, 1);
    let report = db.store.verify_audit().await.unwrap();
    let bad = report.first_bad.unwrap();
    assert_eq!(bad.seq, 10, "{}", bad.reason);
    assert!(bad.reason.contains("missing"), "{}", bad.reason);
}

async fn audit_verify_finds_deleted_last_row(db: &TestDb) {
    append_n(&db.store, 20).await;
    assert_eq!(db.exec("DELETE FROM audit_events WHERE seq = 20").await, 1);
    let report = db.store.verify_audit().await.unwrap();
    let bad = report.first_bad.unwrap();
    assert_eq!(bad.seq, 20, "{}", bad.reason);
    // Appending after a tampered tail does not hide it.
    append_n(&db.store, 2).await;
    assert_eq!(
        db.store
            .verify_audit()
            .await
            .unwrap()
            .first_bad
            .unwrap()
            .seq,
        20
    );
}

async fn audit_filters(db: &TestDb) {
    let t = |s: &str| parse_rfc3339_ms(s).unwrap();
    let (from, to) = (t("2026-03-08T00:00:00Z"), t("2026-03-15T00:00:00Z"));
    let mut events = Vec::new();
    for (agent, when) in [
        ("chatbot", "2026-03-07T23:59:59.999Z"),
        ("chatbot", "2026-03-08T00:00:00Z"),
        ("chatbot", "2026-03-10T12:00:00Z"),
        ("other", "2026-03-10T12:00:01Z"),
        ("chatbot", "2026-03-14T23:59:59.999Z"),
        ("chatbot", "2026-03-15T00:00:00Z"),
        ("other", "2026-03-20T00:00:00Z"),
    ] {
        events.push(event(agent, t(when)));
    }
    events[2].run_id = "run-2".into();
    events[2].status = 403;
    events[2].decided_by = Some("model-allow".into());
    events[3].team = Some("sales".into());
    events[3].owner = Some("bob@example.com".into());
    events[3].kind = "mcp".into();
    events[3].target = "crm.lookup".into();
    let seqs = db.store.append_audit(&events).await.unwrap();

    let week = collect(
        &db.store,
        AuditFilter {
            agent: Some("chatbot".into()),
            from_ms: Some(from),
            to_ms: Some(to),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        week.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [seqs[1], seqs[2], seqs[4]]
    );
    assert!(week.iter().all(|r| r.agent.as_deref() == Some("chatbot")));
    assert_eq!(week[0].request_id, events[1].request_id);
    assert_eq!(week[0].verdicts, events[1].verdicts);
    assert_eq!(week[0].chain, events[1].chain);

    let seqs_of = |rows: Vec<AuditRecord>| rows.into_iter().map(|r| r.seq).collect::<Vec<_>>();
    let one = |f: AuditFilter| {
        let store = db.store.clone();
        async move { seqs_of(collect(&store, f).await) }
    };
    assert_eq!(
        one(AuditFilter {
            team: Some("sales".into()),
            ..Default::default()
        })
        .await,
        [seqs[3]]
    );
    assert_eq!(
        one(AuditFilter {
            owner: Some("bob@example.com".into()),
            ..Default::default()
        })
        .await,
        [seqs[3]]
    );
    assert_eq!(
        one(AuditFilter {
            kind: Some("mcp".into()),
            target: Some("crm.lookup".into()),
            ..Default::default()
        })
        .await,
        [seqs[3]]
    );
    assert_eq!(
        one(AuditFilter {
            status: Some(403),
            ..Default::default()
        })
        .await,
        [seqs[2]]
    );
    assert_eq!(
        one(AuditFilter {
            run_id: Some("run-2".into()),
            ..Default::default()
        })
        .await,
        [seqs[2]]
    );
    assert_eq!(
        one(AuditFilter {
            request_id: Some(events[5].request_id.clone()),
            ..Default::default()
        })
        .await,
        [seqs[5]]
    );
    assert_eq!(
        one(AuditFilter {
            agent: Some("other".into()),
            from_ms: Some(from),
            ..Default::default()
        })
        .await,
        [seqs[3], seqs[6]]
    );
    assert_eq!(
        one(AuditFilter {
            after_seq: Some(seqs[2]),
            limit: Some(2),
            ..Default::default()
        })
        .await,
        [seqs[3], seqs[4]]
    );
    // A value that looks like SQL is only a value.
    assert!(
        one(AuditFilter {
            agent: Some("x' OR '1'='1".into()),
            ..Default::default()
        })
        .await
        .is_empty()
    );
}

async fn audit_stream_can_be_dropped(db: &TestDb) {
    append_n(&db.store, 600).await;
    let first: Vec<_> = db
        .store
        .audit_stream(AuditFilter::default())
        .take(5)
        .collect()
        .await;
    assert_eq!(first.len(), 5);
    // The abandoned query must not hold the database: writes and reads go on.
    tokio::time::timeout(Duration::from_secs(20), async {
        append_n(&db.store, 3).await;
        assert!(db.store.verify_audit().await.unwrap().ok);
    })
    .await
    .expect("store usable after dropping a stream");
}

fn nasty_event(i: i64) -> NewAuditEvent {
    let mut e = event("chat,bot \"prod\"", 1_772_978_531_123 + i);
    e.target = "tool,with,commas".into();
    e.body = Some(format!(
        "line one\nline \"two\", with comma\r\nline three {i} — ünïcödé\n"
    ));
    e.error_code = Some("quota\"exceeded".into());
    e.chain = vec!["alice".into(), "planner, v2".into()];
    e.verdicts = json!([{"plugin": "pii", "verdict": "deny", "reason": "has \"SSN\",\nmultiline"}]);
    e.decided_by = Some("pii".into());
    e
}

async fn csv_and_jsonl_export_round_trip(db: &TestDb) {
    let events: Vec<_> = (0..5).map(nasty_event).collect();
    db.store.append_audit(&events).await.unwrap();
    let records = collect(&db.store, AuditFilter::default()).await;

    let mut csv_bytes = Vec::new();
    let n = export::write_audit(
        db.store.audit_stream(AuditFilter::default()),
        ExportFormat::Csv,
        &mut csv_bytes,
    )
    .await
    .unwrap();
    assert_eq!(n, 5);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(csv_bytes.as_slice());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, AUDIT_CSV_COLUMNS);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 5);
    let col = |row: &csv::StringRecord, name: &str| -> String {
        let i = AUDIT_CSV_COLUMNS.iter().position(|c| *c == name).unwrap();
        row[i].to_string()
    };
    for (row, (rec, ev)) in rows.iter().zip(records.iter().zip(&events)) {
        assert_eq!(row.len(), AUDIT_CSV_COLUMNS.len());
        assert_eq!(col(row, "seq"), rec.seq.to_string());
        assert_eq!(col(row, "time"), format_rfc3339_ms(ev.time_ms));
        assert_eq!(parse_rfc3339_ms(&col(row, "time")).unwrap(), ev.time_ms);
        assert_eq!(col(row, "agent"), "chat,bot \"prod\"");
        assert_eq!(col(row, "target"), "tool,with,commas");
        assert_eq!(&col(row, "body"), ev.body.as_ref().unwrap());
        assert_eq!(col(row, "error_code"), "quota\"exceeded");
        assert_eq!(col(row, "chain"), "alice;planner, v2");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&col(row, "verdicts")).unwrap(),
            ev.verdicts
        );
        assert_eq!(col(row, "hash"), rec.hash);
        assert_eq!(col(row, "prev_hash"), rec.prev_hash);
        assert_eq!(col(row, "cost_micro_usd"), "1234");
        assert_eq!(col(row, "truncated"), "false");
        assert_eq!(col(row, "provider"), "openai");
    }
    assert_eq!(
        rows[0][1].to_string(),
        "2026-03-08T14:02:11.123Z",
        "RFC 3339 UTC with milliseconds"
    );

    let mut jsonl = Vec::new();
    export::write_audit(
        db.store.audit_stream(AuditFilter::default()),
        ExportFormat::Jsonl,
        &mut jsonl,
    )
    .await
    .unwrap();
    let text = String::from_utf8(jsonl).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "one line per event, newlines escaped");
    for (line, rec) in lines.iter().zip(&records) {
        let back: AuditRecord = serde_json::from_str(line).unwrap();
        assert_eq!(&back, rec);
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["time"], format_rfc3339_ms(rec.time_ms));
    }
}

async fn agents_csv_round_trip(db: &TestDb) {
    let s = &db.store;
    let mut a = agent("chatbot");
    a.description = "Says \"hello\", politely,\nand\r\nwaves".into();
    a.purpose = "support, sales".into();
    a.models = vec!["gpt-4o".into(), "claude-sonnet".into()];
    a.tools = vec![];
    a.labels.insert("note".into(), "a,\"b\"".into());
    s.create_agent(a.clone()).await.unwrap();
    s.create_agent(agent("plain")).await.unwrap();
    s.touch_last_seen("plain", 1_772_978_531_123).await.unwrap();
    let agents = s.list_agents().await.unwrap();

    let out = export::agents_csv(&agents);
    let mut reader = csv::Reader::from_reader(out.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, AGENT_CSV_COLUMNS);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    let col = |row: &csv::StringRecord, name: &str| -> String {
        let i = AGENT_CSV_COLUMNS.iter().position(|c| *c == name).unwrap();
        row[i].to_string()
    };
    let r = &rows[0];
    assert_eq!(col(r, "id"), "chatbot");
    assert_eq!(col(r, "description"), a.description);
    assert_eq!(col(r, "purpose"), "support, sales");
    assert_eq!(col(r, "owner"), "alice@example.com");
    assert_eq!(col(r, "team"), "support");
    assert_eq!(col(r, "status"), "active");
    assert_eq!(col(r, "models"), "gpt-4o;claude-sonnet");
    assert_eq!(col(r, "tools"), "");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&col(r, "budgets")).unwrap(),
        a.budgets
    );
    assert_eq!(
        serde_json::from_str::<BTreeMap<String, String>>(&col(r, "labels")).unwrap(),
        a.labels
    );
    assert_eq!(
        parse_rfc3339_ms(&col(r, "created_at")).unwrap(),
        agents[0].created_at
    );
    assert_eq!(col(r, "last_seen_at"), "");
    assert_eq!(col(&rows[1], "last_seen_at"), "2026-03-08T14:02:11.123Z");
}

// ---------------------------------------------------------------------------------------------
// Backend-specific

#[tokio::test]
async fn sqlite_file_is_wal_and_in_memory_works() {
    let path = std::env::temp_dir().join(format!("palisade-store-wal-{}.db", random_suffix()));
    let store = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert_eq!(store.backend_name(), "sqlite");
    store.create_agent(agent("a")).await.unwrap();
    let raw = SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    raw.close().await;
    store.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }

    let mem = Store::connect("sqlite::memory:").await.unwrap();
    // Several pooled connections must see one database.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mem = mem.clone();
        tasks.push(tokio::spawn(async move {
            mem.create_agent(agent(&format!("m{i}"))).await.unwrap();
            mem.append_audit(&[event("m", i)]).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(mem.list_agents().await.unwrap().len(), 4);
    assert!(mem.verify_audit().await.unwrap().ok);
}

#[tokio::test]
async fn bad_urls_are_refused() {
    assert!(matches!(
        Store::connect("mysql://localhost/x").await.unwrap_err(),
        StoreError::Invalid(_)
    ));
    assert!(matches!(
        Store::connect_pg_schema(DEFAULT_PG_URL, "bad-name")
            .await
            .unwrap_err(),
        StoreError::Invalid(_)
    ));
}

fn usd(scope: &str, amount: u64, limit: u64) -> Amount {
    Amount {
        scope: scope.into(),
        unit: Unit::MicroUsd,
        window: Window::Total,
        amount,
        limit,
    }
}

fn held(r: Reservation) -> i64 {
    match r {
        Reservation::Held(id) => id,
        Reservation::Exceeded(e) => panic!("exceeded: {e:?}"),
    }
}

async fn ledger_reserve_settle_release(db: &TestDb) {
    let s = &db.store;
    let hour = Duration::from_secs(3600);
    let a = held(s.reserve(&[usd("agent:a", 60, 100)], hour).await.unwrap());

    // All or nothing: b fits, a does not, so neither is held.
    match s
        .reserve(&[usd("agent:b", 10, 100), usd("agent:a", 50, 100)], hour)
        .await
        .unwrap()
    {
        Reservation::Exceeded(e) => {
            assert_eq!(e.scope, "agent:a");
            assert_eq!((e.spent, e.reserved, e.limit), (0, 60, 100));
            assert_eq!((e.unit, e.window), (Unit::MicroUsd, Window::Total));
        }
        other => panic!("{other:?}"),
    }
    let b = held(s.reserve(&[usd("agent:b", 100, 100)], hour).await.unwrap());

    // Settling replaces the hold with the real spend, per unit.
    let both = held(
        s.reserve(
            &[
                usd("team:t", 5, 1000),
                Amount {
                    unit: Unit::Tokens,
                    window: Window::Month,
                    ..usd("team:t", 500, 10_000)
                },
            ],
            hour,
        )
        .await
        .unwrap(),
    );
    s.settle(both, 7, 321).await.unwrap();
    assert_eq!(
        s.spent("team:t", Unit::MicroUsd, Window::Total)
            .await
            .unwrap(),
        7
    );
    assert_eq!(
        s.spent("team:t", Unit::Tokens, Window::Month)
            .await
            .unwrap(),
        321
    );
    assert_eq!(
        s.spent("team:t", Unit::Tokens, Window::Total)
            .await
            .unwrap(),
        0,
        "a counter per window"
    );

    s.settle(a, 30, 0).await.unwrap();
    assert_eq!(
        s.spent("agent:a", Unit::MicroUsd, Window::Total)
            .await
            .unwrap(),
        30
    );
    assert!(matches!(
        s.settle(a, 1, 0).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    // 30 spent + 70 fits; one more does not.
    let c = held(s.reserve(&[usd("agent:a", 70, 100)], hour).await.unwrap());
    assert!(matches!(
        s.reserve(&[usd("agent:a", 1, 100)], hour).await.unwrap(),
        Reservation::Exceeded(_)
    ));
    s.release(c).await.unwrap();
    s.release(c).await.unwrap();
    held(s.reserve(&[usd("agent:a", 70, 100)], hour).await.unwrap());

    // A reservation whose process died expires.
    s.release(b).await.unwrap();
    let stale = held(
        s.reserve(&[usd("agent:c", 100, 100)], Duration::ZERO)
            .await
            .unwrap(),
    );
    assert!(matches!(
        s.reserve(&[usd("agent:c", 1, 100)], hour).await.unwrap(),
        Reservation::Exceeded(_)
    ));
    assert!(s.expire_reservations().await.unwrap() >= 1);
    held(s.reserve(&[usd("agent:c", 100, 100)], hour).await.unwrap());
    assert!(matches!(
        s.settle(stale, 1, 0).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    assert_eq!(
        s.spent("agent:c", Unit::MicroUsd, Window::Total)
            .await
            .unwrap(),
        0
    );
}

async fn ledger_concurrent_reservations_never_overspend(db: &TestDb) {
    // 2 stores (2 processes), 16 tasks, each wanting 10 of a limit of 100 on two shared
    // counters: exactly 10 reservations fit, whatever the interleaving.
    let stores = [db.store.clone(), db.second_store().await];
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = stores[t % 2].clone();
        tasks.push(tokio::spawn(async move {
            let amounts = [usd("agent:x", 10, 100), usd("team:y", 10, 100)];
            store
                .reserve(&amounts, Duration::from_secs(60))
                .await
                .unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        if let Reservation::Held(id) = t.await.unwrap() {
            ids.push(id);
        }
    }
    assert_eq!(ids.len(), 10);
    // Settle them concurrently, each twice: spend is counted once per reservation.
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().copied().enumerate() {
        for k in 0..2 {
            let store = stores[(i + k) % 2].clone();
            tasks.push(tokio::spawn(
                async move { store.settle(id, 9, 0).await.is_ok() },
            ));
        }
    }
    let mut settled = 0;
    for t in tasks {
        settled += usize::from(t.await.unwrap());
    }
    assert_eq!(settled, 10);
    assert_eq!(
        db.store
            .spent("agent:x", Unit::MicroUsd, Window::Total)
            .await
            .unwrap(),
        90
    );
    // 90 spent, nothing held: 10 more fit, 11 do not.
    assert!(matches!(
        db.store
            .reserve(&[usd("agent:x", 11, 100)], Duration::from_secs(60))
            .await
            .unwrap(),
        Reservation::Exceeded(_)
    ));
    held(
        db.store
            .reserve(&[usd("agent:x", 10, 100)], Duration::from_secs(60))
            .await
            .unwrap(),
    );
    stores[1].close().await;
}
