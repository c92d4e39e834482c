//! End to end against a real model: SmolLM2-135M-Instruct behind llama.cpp's OpenAI-compatible
//! server (started by `scripts/test` through `scripts/model-server`, its URL in
//! `ARES_TEST_MODEL_URL`). Asserts protocol and shape, not wording.

use std::path::PathBuf;

use ares::config::{ModelSettings, ProviderKind, ProviderSettings};
use serde_json::json;

use crate::helpers::{TestApp, sse_events, test_settings};

/// The model server's base URL; without one the test is skipped, except in CI where the
/// test script always starts it.
fn model_url() -> Option<String> {
    match std::env::var("ARES_TEST_MODEL_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "ARES_TEST_MODEL_URL is not set; scripts/test starts the model server"
            );
            eprintln!(
                "skipped: set ARES_TEST_MODEL_URL (scripts/test does) to run the real-model test"
            );
            None
        }
    }
}

#[tokio::test]
async fn runs_tools_and_streams_with_a_real_model() {
    let Some(url) = model_url() else { return };
    let mut settings = test_settings();
    settings.agents_dir = PathBuf::from("fixtures/agents-real");
    settings.providers.insert(
        "llama-cpp".into(),
        ProviderSettings {
            kind: ProviderKind::Openai,
            base_url: Some(url),
            api_key_env: Some("ARES_TEST_MODEL_KEY".into()),
        },
    );
    settings.models.insert(
        "smollm2".into(),
        ModelSettings {
            provider: "llama-cpp".into(),
            id: "smollm2".into(),
            temperature: None,
            max_tokens: None,
        },
    );
    let app = TestApp::spawn_with(settings).await;
    let key = app.tenant("acme").await;

    let r = app
        .run_agent(
            &key,
            "chatty",
            json!({"message": "What colour is the sky?"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    assert!(
        r.body["output"]["response"]
            .as_str()
            .is_some_and(|s| !s.trim().is_empty()),
        "{}",
        r.text
    );
    assert!(r.body["tokens_used"].as_u64().unwrap() > 0);

    let r = app
        .run_agent(&key, "calc", json!({"message": "What is 15000 * 0.03?"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        ["completed", "failed"].contains(&r.body["status"].as_str().unwrap()),
        "{}",
        r.text
    );
    let metrics = app
        .send(app.client.get(format!("{}/metrics", app.base)))
        .await
        .text;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ares_tool_calls_total{tool=\"calculator\"")),
        "the model called the calculator and ares ran it:\n{metrics}"
    );

    let r = app
        .chat_stream(
            &key,
            json!({"messages": [{"role": "user", "content": "Say hello."}], "model": "smollm2"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = sse_events(&r.text);
    let (last, deltas) = events.split_last().expect("events");
    assert!(!deltas.is_empty(), "{}", r.text);
    for e in deltas {
        assert!(
            e["delta"].is_string() && e["finish_reason"].is_null(),
            "{e}"
        );
    }
    assert_eq!(last["delta"], "");
    assert!(last["finish_reason"].is_string());
    assert!(last["tokens_used"].as_u64().unwrap() > 0, "{last}");

    let usage = app.usage(&key).await;
    assert_eq!(usage.body["total_runs"], 2);
    assert!(usage.body["total_tokens"].as_u64().unwrap() > 0);
}
