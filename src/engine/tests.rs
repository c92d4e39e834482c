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
