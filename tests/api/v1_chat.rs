//! `/v1/chat` and `/v1/chat/stream`.

use serde_json::{Value, json};

use crate::helpers::{TestApp, sse_events};

fn ask(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}], "model": "llama-3.3-70b"})
}

#[tokio::test]
async fn chat_answers_the_documented_shape() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let r = app.chat(&acme, ask("Summarize Q1 revenue trends.")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let keys: Vec<&str> = r
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["id", "content", "model", "tokens_used", "finish_reason"]
    );
    assert_eq!(r.body["model"], "llama-3.3-70b");
    assert_eq!(r.body["finish_reason"], "stop");
    assert!(
        r.body["content"]
            .as_str()
            .unwrap()
            .contains("Summarize Q1 revenue trends.")
    );
    assert!(r.body["tokens_used"].as_u64().unwrap() > 0);
    let usage = app.usage(&acme).await;
    assert_eq!(usage.body["total_tokens"], r.body["tokens_used"]);
    assert_eq!(usage.body["total_runs"], 0, "a chat is not an agent run");
}

#[tokio::test]
async fn agent_type_supplies_the_model() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let r = app
        .chat(
            &acme,
            json!({"messages": [{"role": "user", "content": "hi"}], "agent_type": "analyst"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["model"], "llama-3.3-70b");
    // Both: the agent's prompt with the given model.
    let r = app
        .chat(&acme, json!({"messages": [{"role": "user", "content": "hi"}], "agent_type": "analyst", "model": "llama-3.1-8b"}))
        .await;
    assert_eq!(r.body["model"], "llama-3.1-8b");
}

#[tokio::test]
async fn bad_chat_requests_name_the_field() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"}),
            422,
            "model",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "agent_type": "poet"}),
            422,
            "agent_type",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            422,
            "model",
        ),
        (
            json!({"messages": [], "model": "llama-3.3-70b"}),
            400,
            "messages",
        ),
        (
            json!({"messages": [{"role": "robot", "content": "x"}], "model": "llama-3.3-70b"}),
            400,
            "role",
        ),
        (json!({"model": "llama-3.3-70b"}), 400, "messages"),
    ];
    for (body, status, field) in cases {
        for path in ["/v1/chat", "/v1/chat/stream"] {
            let r = app.post(path, &acme, &body).await;
            assert_eq!(r.status, status, "{path} {body}: {}", r.text);
            r.error_code();
            assert!(
                r.body["error"]["message"].as_str().unwrap().contains(field),
                "{path} {body}: {}",
                r.text
            );
        }
    }
}

#[tokio::test]
async fn stream_events_are_exactly_as_documented() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let whole = app.chat(&acme, ask("Explain quantum computing.")).await;
    let r = app
        .chat_stream(&acme, ask("Explain quantum computing."))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(&r.text);
    assert!(events.len() >= 3, "{}", r.text);
    let (last, deltas) = events.split_last().unwrap();
    for e in deltas {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["delta", "finish_reason"], "{e}");
        assert_eq!(e["finish_reason"], Value::Null);
    }
    assert_eq!(last["delta"], "");
    assert_eq!(last["finish_reason"], "stop");
    assert_eq!(last["tokens_used"], whole.body["tokens_used"]);
    let text: String = deltas
        .iter()
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, whole.body["content"].as_str().unwrap());
    // Every event line is `data: {...}` followed by a blank line.
    for line in r.text.lines().filter(|l| !l.is_empty()) {
        assert!(line.starts_with("data: "), "{line}");
    }
}

#[tokio::test]
async fn a_finished_stream_is_counted_in_usage() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let r = app.chat_stream(&acme, ask("count me")).await;
    let tokens = sse_events(&r.text).last().unwrap()["tokens_used"]
        .as_u64()
        .unwrap();
    // Usage of a stream is written when it ends, just after the last event.
    let mut total = 0;
    for _ in 0..100 {
        total = app.usage(&acme).await.body["total_tokens"]
            .as_u64()
            .unwrap();
        if total == tokens {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(total, tokens);
}
