//! The engine's use cases without HTTP: a run, a chat, usage across a billing period's end.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{ChatInput, Engine, EngineError, ManualClock, NewTenant, RunAsk, RunStatus, Tenant};
use crate::config::{ModelSettings, ProviderKind, ProviderSettings, Settings};
use crate::llm::{Message, Models, Role};
use crate::store::Store;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// The fixture agents, offline models and an in-memory database, on `clock`.
async fn engine(clock: ManualClock) -> Arc<Engine> {
    let mut settings = Settings {
        agents_dir: "fixtures/agents".into(),
        ..Settings::default()
    };
    settings.database.url = "mem://".into();
    settings.providers.insert(
        "offline".into(),
        ProviderSettings {
            kind: ProviderKind::Offline,
            base_url: None,
            api_key_env: None,
        },
    );
    for m in ["llama-3.3-70b", "llama-3.1-8b"] {
        settings.models.insert(
            m.into(),
            ModelSettings {
                provider: "offline".into(),
                id: m.into(),
                temperature: None,
                max_tokens: None,
            },
        );
    }
    let store = Store::connect(&settings.database).await.unwrap();
    let models = Models::from_settings(&settings).unwrap();
    Arc::new(Engine::new(settings, store, models, Arc::new(clock)).unwrap())
}

/// Tenant `acme` with a quota of `runs` runs, as a request of its key would see it.
async fn acme(engine: &Engine, runs: u64) -> Tenant {
    let (_, key) = engine
        .provision_tenant(NewTenant {
            slug: "acme".into(),
            quota_runs: Some(runs),
            ..NewTenant::default()
        })
        .await
        .unwrap();
    engine.authenticate(&key.secret).await.unwrap().tenant
}

#[tokio::test]
async fn a_run_and_a_chat_are_recorded_in_usage() {
    let engine = engine(ManualClock::at(Utc::now())).await;
    let tenant = acme(&engine, 10).await;

    let run = engine
        .run_agent(
            &tenant,
            "echo",
            json!({"message": "hello"}).as_object().unwrap().clone(),
            RunAsk::default(),
        )
        .await
        .unwrap()
        .run;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert!(run.tokens_used > 0);
    assert!(run.output.is_some());

    let chat = engine
        .chat(
            &tenant,
            ChatInput {
                messages: vec![Message::new(Role::User, "Hi there")],
                model: Some("llama-3.1-8b".into()),
                agent_type: None,
            },
            None,
        )
        .await
        .unwrap()
        .0;
    assert!(!chat.content.is_empty());
    assert_eq!(chat.model, "llama-3.1-8b");

    let history = engine.list_runs(&tenant, "echo", 0, 20).await.unwrap();
    assert_eq!(history.total, 1);
    assert_eq!(history.items[0].id, run.id);

    engine.flush_usage().await.unwrap();
    let usage = engine.usage(&tenant).await.unwrap().usage;
    assert_eq!(usage.total_runs, 1);
    assert_eq!(usage.total_tokens, run.tokens_used + chat.tokens_used);
    assert_eq!(usage.total_api_calls, 1, "the authentication of `acme`");

    let unknown = engine
        .run_agent(&tenant, "nobody", Default::default(), RunAsk::default())
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, EngineError::AgentNotFound(_)),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn a_new_billing_period_starts_at_the_month_boundary() {
    let clock = ManualClock::at(at("2026-01-31T23:59:00Z"));
    let engine = engine(clock.clone()).await;
    let tenant = acme(&engine, 1).await;
    let input = || json!({"message": "hi"}).as_object().unwrap().clone();

    let january = engine
        .run_agent(&tenant, "echo", input(), RunAsk::default())
        .await
        .unwrap()
        .run;
    assert_eq!(january.started_at, at("2026-01-31T23:59:00Z"));
    let refused = engine
        .run_agent(&tenant, "echo", input(), RunAsk::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, EngineError::QuotaExceeded(m) if m.contains("2026-02-01T00:00:00Z")),
        "the quota of one run is used up until February: {refused:?}"
    );
    let report = engine.usage(&tenant).await.unwrap();
    assert_eq!(report.period.start, at("2026-01-01T00:00:00Z"));
    assert_eq!(report.usage.total_runs, 1);

    clock.advance(chrono::Duration::minutes(2));
    let report = engine.usage(&tenant).await.unwrap();
    assert_eq!(report.period.start, at("2026-02-01T00:00:00Z"));
    assert_eq!(report.period.end, at("2026-02-28T23:59:59Z"));
    assert_eq!(report.usage.total_runs, 0, "January's run stays in January");
    let february = engine
        .run_agent(&tenant, "echo", input(), RunAsk::default())
        .await
        .unwrap()
        .run;
    assert_eq!(february.status, RunStatus::Completed);
    assert_eq!(engine.usage(&tenant).await.unwrap().usage.total_runs, 1);
    let days: Vec<String> = engine
        .usage(&tenant)
        .await
        .unwrap()
        .usage
        .days
        .into_iter()
        .map(|d| d.date)
        .collect();
    assert_eq!(days, ["2026-02-01"]);
}

/// Two engines on one database, as two instances of a deployment, each reading the key change
/// feed as it does when it serves; and the secret of tenant `acme`'s first key.
async fn two_instances() -> (Arc<Engine>, Arc<Engine>, Tenant, crate::store::NewKey) {
    let a = engine(ManualClock::at(Utc::now())).await;
    let b = Arc::new(
        Engine::new(
            (*a.settings).clone(),
            a.store.clone(),
            a.models.clone(),
            Arc::new(super::SystemClock),
        )
        .unwrap(),
    );
    let (tenant, key) = a
        .provision_tenant(NewTenant {
            slug: "acme".into(),
            ..NewTenant::default()
        })
        .await
        .unwrap();
    (a, b, tenant, key)
}

/// Authenticates `secret` on `engine` until the key is verified in memory (the change feed
/// read once, the key then held).
async fn held_in_memory(engine: &Engine, secret: &str) {
    let in_memory = || engine.figures().keys_in_memory;
    let before = in_memory();
    for _ in 0..200 {
        engine.authenticate(secret).await.unwrap();
        if in_memory() > before {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the key was never verified in memory");
}

#[tokio::test]
async fn a_key_revoked_on_one_instance_is_refused_by_both() {
    let (a, b, tenant, key) = two_instances().await;
    let syncs = [
        tokio::spawn(Arc::clone(&a).sync_keys()),
        tokio::spawn(Arc::clone(&b).sync_keys()),
    ];
    held_in_memory(&a, &key.secret).await;
    held_in_memory(&b, &key.secret).await;

    a.revoke_key(&tenant, &key.key.id).await.unwrap();
    // The instance that revoked refuses the next request.
    assert!(matches!(
        a.authenticate(&key.secret).await,
        Err(EngineError::Unauthorized)
    ));
    // The other learns it from the change feed: well before it would read the tenant's tokens
    // (and so the key) again anyway.
    let soon = super::keyring::USAGE_FRESH / 2;
    let revoked = std::time::Instant::now();
    while b.authenticate(&key.secret).await.is_ok() {
        assert!(
            revoked.elapsed() < soon,
            "the other instance still accepts a key revoked {soon:?} ago"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Its quota changes reach the other instance the same way.
    let key2 = a.create_key("acme", "second", None).await.unwrap();
    held_in_memory(&b, &key2.secret).await;
    a.update_tenant(
        "acme",
        &crate::store::TenantPatch {
            quota_tokens: Some(7),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let changed = std::time::Instant::now();
    while b
        .authenticate(&key2.secret)
        .await
        .unwrap()
        .tenant
        .quota_tokens
        != 7
    {
        assert!(
            changed.elapsed() < soon,
            "the other instance still has the quota of {soon:?} ago"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for s in syncs {
        s.abort();
    }
}

#[tokio::test]
async fn without_the_change_feed_keys_are_read_from_the_database() {
    let (a, b, tenant, key) = two_instances().await;
    let sync = tokio::spawn(Arc::clone(&b).sync_keys());
    held_in_memory(&b, &key.secret).await;
    // Whatever keeps instances in step stops: the key held is trusted no longer than the lag.
    sync.abort();
    a.revoke_key(&tenant, &key.key.id).await.unwrap();
    tokio::time::sleep(super::keyring::MAX_LAG + std::time::Duration::from_millis(10)).await;
    let from_database = b.figures().keys_from_database;
    assert!(matches!(
        b.authenticate(&key.secret).await,
        Err(EngineError::Unauthorized)
    ));
    assert_eq!(b.figures().keys_from_database, from_database + 1);
}

#[tokio::test]
async fn chats_see_the_tokens_of_the_chats_before_them_when_keys_are_in_memory() {
    let (a, _b, _tenant, key) = two_instances().await;
    a.update_tenant(
        "acme",
        &crate::store::TenantPatch {
            quota_tokens: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sync = tokio::spawn(Arc::clone(&a).sync_keys());
    held_in_memory(&a, &key.secret).await;
    let chat = || ChatInput {
        messages: vec![Message::new(Role::User, "hello".to_string())],
        model: Some("llama-3.1-8b".into()),
        agent_type: None,
    };
    let caller = a.authenticate(&key.secret).await.unwrap();
    let (answer, _) = a.chat(&caller.tenant, chat(), None).await.unwrap();
    assert!(answer.tokens_used >= 3);
    let caller = a.authenticate(&key.secret).await.unwrap();
    assert!(matches!(
        a.chat(&caller.tenant, chat(), None).await,
        Err(EngineError::QuotaExceeded(_))
    ));
    sync.abort();
}
