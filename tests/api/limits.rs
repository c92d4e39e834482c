//! Per-key rate limits and history retention, on an in-process server.

use std::time::{Duration, Instant};

use ares::config::HumanDuration;
use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, JsonBody, TestApp, test_settings};

#[tokio::test]
async fn each_key_is_held_to_its_tenants_rate_limit() {
    let app = TestApp::spawn().await;
    let key = app
        .tenant_with("acme", json!({"rate_limit_per_minute": 3}))
        .await;
    let other_tenant = app.tenant("globex").await;
    let second = app.create_key(&key, json!({"name": "second"})).await;
    assert_eq!(second.status, 201, "{}", second.text);
    let second = second.body["secret"].as_str().unwrap().to_string();

    for _ in 0..2 {
        assert_eq!(app.list_agents(&key, "").await.status, 200);
    }
    let refused = app.list_agents(&key, "").await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(refused.error_code(), "rate_limited");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3 requests per minute")
    );
    // 3 per minute refills one request every 20 s.
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&wait), "Retry-After: {wait}");
    // A run is refused the same way, before anything else happens.
    let run = app.run_agent(&key, "echo", json!({"message": "hi"})).await;
    assert_eq!((run.status, run.error_code()), (429, "rate_limited"));

    // Another key of the tenant, and another tenant, have their own allowance.
    assert_eq!(app.list_agents(&second, "").await.status, 200);
    assert_eq!(app.list_agents(&other_tenant, "").await.status, 200);

    // The operator lifts the limit (0: none); it applies to the next request.
    let r = app
        .send(
            app.client
                .patch(format!("{}/admin/v1/tenants/acme", app.base))
                .bearer_auth(ADMIN_TOKEN)
                .json_body(&json!({"rate_limit_per_minute": 0})),
        )
        .await;
    assert_eq!(r.body["rate_limit_per_minute"], json!(0), "{}", r.text);
    for _ in 0..20 {
        assert_eq!(app.list_agents(&key, "").await.status, 200);
    }

    // Refused requests are not counted as API calls: 1 key creation + 2 + 20 listings + this read.
    app.flush_usage().await;
    let usage = app.usage(&key).await.body;
    assert_eq!(
        usage["total_api_calls"],
        json!(1 + 2 + 20 + 1 + 1),
        "{usage}"
    );
}

#[tokio::test]
async fn the_default_limit_comes_from_the_settings() {
    let mut settings = test_settings();
    settings.quotas.requests_per_minute = 2;
    let app = TestApp::spawn_with(settings).await;
    let key = app.tenant("acme").await;
    assert_eq!(app.usage(&key).await.status, 200);
    assert_eq!(app.usage(&key).await.status, 200);
    let r = app.usage(&key).await;
    assert_eq!((r.status, r.error_code()), (429, "rate_limited"));
    assert_eq!(r.header("retry-after"), Some("30"));
}

#[tokio::test]
async fn old_history_is_purged_in_the_background_and_usage_stays() {
    let mut settings = test_settings();
    settings.retention.max_age = Some(HumanDuration::secs(2));
    settings.retention.interval = HumanDuration::secs(1);
    let app = TestApp::spawn_with(settings).await;
    let key = app.tenant("acme").await;
    for i in 0..3 {
        let r = app
            .run_agent(&key, "echo", json!({"message": format!("old {i}")}))
            .await;
        assert_eq!(r.body["status"], "completed", "{}", r.text);
    }
    let chat = app
        .chat(
            &key,
            json!({"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "old"}]}),
        )
        .await;
    assert_eq!(chat.status, 200, "{}", chat.text);
    let before = app.usage(&key).await.body;
    assert_eq!(
        app.list_runs(&key, "echo", "").await.body["total"],
        json!(3)
    );

    // Requests go on while the purge runs beside them.
    let start = Instant::now();
    loop {
        let r = app.list_runs(&key, "echo", "").await;
        assert_eq!(r.status, 200, "{}", r.text);
        if r.body["total"] == json!(0) {
            assert_eq!(r.body["runs"], json!([]));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not purged: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = app.usage(&key).await.body;
    for field in ["total_runs", "total_tokens"] {
        assert_eq!(
            after[field], before[field],
            "{field}: {before} then {after}"
        );
    }
    // New runs are listed as usual, numbered after the purged ones.
    let r = app.run_agent(&key, "echo", json!({"message": "new"})).await;
    let page = app.list_runs(&key, "echo", "").await.body;
    assert_eq!(page["total"], json!(1), "{page}");
    assert_eq!(page["runs"][0]["run_id"], r.body["run_id"]);
    let metrics = app
        .send_unchecked(app.client.get(format!("{}/metrics", app.base)))
        .await
        .text;
    let purged: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ares_history_purged_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(purged >= 4, "{metrics}");
}
