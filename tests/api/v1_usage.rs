//! `/v1/usage` and quotas.

use chrono::{Datelike, Utc};
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn usage_of_a_new_tenant() {
    let app = TestApp::spawn().await;
    let acme = app
        .tenant_with("acme", json!({"quota_runs": 50, "quota_tokens": 5000}))
        .await;
    let r = app.usage(&acme).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = &r.body;
    let now = Utc::now();
    let start = format!("{:04}-{:02}-01T00:00:00Z", now.year(), now.month());
    assert_eq!(
        b["period_start"].as_str().unwrap().replace(".000", ""),
        start
    );
    let end: chrono::DateTime<Utc> = b["period_end"].as_str().unwrap().parse().unwrap();
    assert_eq!(end.month(), now.month());
    assert_eq!((end + chrono::Duration::seconds(1)).day(), 1);
    assert_eq!(b["total_runs"], 0);
    assert_eq!(b["total_tokens"], 0);
    assert_eq!(b["total_api_calls"], 1, "this request is counted");
    assert_eq!(b["quota_runs"], 50);
    assert_eq!(b["quota_tokens"], 5000);
    assert_eq!(b["daily_usage"][0]["date"], now.date_naive().to_string());
}

#[tokio::test]
async fn totals_are_the_sums_of_runs_chats_and_calls() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let mut tokens = 0;
    for _ in 0..3 {
        tokens += app
            .run_agent(&acme, "echo", json!({"message": "m"}))
            .await
            .body["tokens_used"]
            .as_u64()
            .unwrap();
    }
    tokens += app
        .chat(
            &acme,
            json!({"messages": [{"role": "user", "content": "c"}], "model": "llama-3.1-8b"}),
        )
        .await
        .body["tokens_used"]
        .as_u64()
        .unwrap();
    app.list_agents(&acme, "").await;
    let r401 = app.list_agents("ares_wrong", "").await;
    assert_eq!(r401.status, 401);
    app.flush_usage().await;
    let r = app.usage(&acme).await;
    let b = &r.body;
    assert_eq!(b["total_runs"], 3);
    assert_eq!(b["total_tokens"], tokens);
    assert_eq!(
        b["total_api_calls"], 6,
        "3 runs, 1 chat, 1 list, this usage; not the 401"
    );
    let days = b["daily_usage"].as_array().unwrap();
    let sum = |f: &str| days.iter().map(|d| d[f].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("runs"), 3);
    assert_eq!(sum("tokens"), tokens);
    assert_eq!(sum("api_calls"), 6);
    // Another tenant's usage is its own.
    let globex = app.tenant("globex").await;
    assert_eq!(app.usage(&globex).await.body["total_runs"], 0);
}

#[tokio::test]
async fn the_run_quota_refuses_with_429_before_any_model_call() {
    let app = TestApp::spawn().await;
    let acme = app.tenant_with("acme", json!({"quota_runs": 2})).await;
    for _ in 0..2 {
        assert_eq!(
            app.run_agent(&acme, "echo", json!({"message": "m"}))
                .await
                .body["status"],
            "completed"
        );
    }
    let r = app.run_agent(&acme, "echo", json!({"message": "m"})).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.error_code(), "quota_exceeded");
    let u = app.usage(&acme).await;
    assert_eq!(u.body["total_runs"], 2);
    assert_eq!(app.get_agent(&acme, "echo").await.body["total_runs"], 2);
}

#[tokio::test]
async fn the_token_quota_refuses_runs_and_chats_once_used_up() {
    let app = TestApp::spawn().await;
    let acme = app.tenant_with("acme", json!({"quota_tokens": 10})).await;
    let first = app.run_agent(&acme, "echo", json!({"message": "m"})).await;
    assert_eq!(first.body["status"], "completed");
    assert!(first.body["tokens_used"].as_u64().unwrap() >= 10);
    let r = app.run_agent(&acme, "echo", json!({"message": "m"})).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "quota_exceeded");
    let body = json!({"messages": [{"role": "user", "content": "c"}], "model": "llama-3.1-8b"});
    assert_eq!(app.chat(&acme, body.clone()).await.status, 429);
    assert_eq!(app.chat_stream(&acme, body.clone()).await.status, 429);

    // Chats alone use the quota up too: the next request sees the tokens the last one spent.
    let globex = app.tenant_with("globex", json!({"quota_tokens": 3})).await;
    let chat = app.chat(&globex, body.clone()).await;
    assert_eq!(chat.status, 200, "{}", chat.text);
    assert!(
        chat.body["tokens_used"].as_u64().unwrap() >= 3,
        "{}",
        chat.text
    );
    let refused = app.chat_stream(&globex, body).await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (429, "quota_exceeded")
    );
}

#[tokio::test]
async fn concurrent_runs_never_overshoot_the_run_quota() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let acme = app.tenant_with("acme", json!({"quota_runs": 5})).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (app, key) = (app.clone(), acme.clone());
        tasks.push(tokio::spawn(async move {
            app.run_agent(&key, "echo", json!({"message": "m"}))
                .await
                .status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        15,
        "{statuses:?}"
    );
    assert_eq!(app.usage(&acme).await.body["total_runs"], 5);
}
