//! `/v1/agents/{name}/run` and `/runs`: run records, failures, history and counters.

use std::sync::Arc;

use ares::llm::{
    ChatRequest, ChatResponse, Models, Provider, ProviderError, StreamEvent, TokenUsage,
};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};

use crate::helpers::TestApp;

fn doc_input() -> Value {
    json!({
        "message": "Analyze the risk profile for transaction TX-9921",
        "context": {"amount": 15000, "currency": "USD", "merchant_category": "electronics"}
    })
}

#[tokio::test]
async fn a_run_answers_the_documented_record() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let r = app.run_agent(&acme, "risk-analyzer", doc_input()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = &r.body;
    assert_eq!(b["status"], "completed");
    assert_eq!(b["error"], Value::Null);
    assert_eq!(b["input"], doc_input());
    let out = &b["output"];
    let score = out["risk_score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score), "{out}");
    assert!(["low", "medium", "high"].contains(&out["risk_level"].as_str().unwrap()));
    assert!(out["reasoning"].is_string());
    assert!(b["tokens_used"].as_u64().unwrap() > 0);
    assert!(b["duration_ms"].is_u64());
    let started: chrono::DateTime<chrono::Utc> = b["started_at"].as_str().unwrap().parse().unwrap();
    let finished: chrono::DateTime<chrono::Utc> =
        b["finished_at"].as_str().unwrap().parse().unwrap();
    assert!(started <= finished);
    let agent = app.get_agent(&acme, "risk-analyzer").await;
    assert_eq!(b["agent_id"], agent.body["id"]);
    assert_eq!(
        uuid::Uuid::parse_str(b["id"].as_str().unwrap())
            .unwrap()
            .get_version_num(),
        7
    );
}

#[tokio::test]
async fn agents_without_output_schema_answer_with_a_response_text() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let r = app
        .run_agent(&acme, "echo", json!({"message": "hello"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body["output"]["response"]
            .as_str()
            .unwrap()
            .contains("hello")
    );
    assert_eq!(r.body["output"].as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn refusals_use_the_error_body() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let cases = [
        (
            "paused",
            json!({"input": {"message": "x"}}),
            409,
            "agent_disabled",
        ),
        (
            "nope",
            json!({"input": {"message": "x"}}),
            404,
            "agent_not_found",
        ),
        (
            "globex-only",
            json!({"input": {"message": "x"}}),
            404,
            "agent_not_found",
        ),
        (
            "echo",
            json!({"input": {"message": 5}}),
            422,
            "validation_failed",
        ),
        (
            "echo",
            json!({"input": {"message": "x", "context": [1]}}),
            422,
            "validation_failed",
        ),
        (
            "strict-input",
            json!({"input": {"message": "x", "context": {"amount": "lots"}}}),
            422,
            "validation_failed",
        ),
        (
            "strict-input",
            json!({"input": {"message": "x"}}),
            422,
            "validation_failed",
        ),
        ("echo", json!({"input": "text"}), 400, "invalid_request"),
        ("echo", json!({}), 400, "invalid_request"),
    ];
    for (agent, body, status, code) in cases {
        let r = app
            .post(&format!("/v1/agents/{agent}/run"), &acme, &body)
            .await;
        assert_eq!(r.status, status, "{agent} {body}: {}", r.text);
        assert_eq!(r.error_code(), code, "{agent} {body}");
    }
    let r = app
        .post(
            "/v1/agents/strict-input/run",
            &acme,
            &json!({"input": {"message": "x", "context": {"amount": "lots"}}}),
        )
        .await;
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("input.context.amount"),
        "{}",
        r.text
    );
    // None of the refusals was recorded as a run.
    let usage = app.usage(&acme).await;
    assert_eq!(usage.body["total_runs"], 0);
}

#[tokio::test]
async fn history_is_newest_first_and_counters_follow() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = app
            .run_agent(&acme, "echo", json!({"message": format!("run {i}")}))
            .await;
        assert_eq!(r.status, 200);
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    let r = app.list_runs(&acme, "echo", "?per_page=2").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], 5);
    let page1: Vec<&str> = r.body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(page1, [ids[4].as_str(), ids[3].as_str()]);
    let r3 = app.list_runs(&acme, "echo", "?page=3&per_page=2").await;
    assert_eq!(r3.body["runs"][0]["id"], ids[0].as_str());
    assert_eq!(r3.body["runs"].as_array().unwrap().len(), 1);
    // Each listed run is the same record the run answered with.
    assert_eq!(r.body["runs"][0]["input"], json!({"message": "run 4"}));
    assert_eq!(r.body["runs"][0]["status"], "completed");
    let agent = app.get_agent(&acme, "echo").await;
    assert_eq!(agent.body["total_runs"], 5);
    assert_eq!(agent.body["success_rate"], 1.0);
    assert_eq!(agent.body["last_run"], r.body["runs"][0]["started_at"]);
    // Another tenant sees none of it, and cannot list the agent's runs.
    let globex = app.tenant("globex").await;
    assert_eq!(app.list_runs(&globex, "echo", "").await.status, 404);
    assert_eq!(
        app.list_runs(&acme, "nope", "").await.error_code(),
        "agent_not_found"
    );
}

/// A provider whose answers are scripted per test.
struct Scripted(Result<&'static str, ProviderError>);

impl Provider for Scripted {
    fn chat(&self, _req: ChatRequest) -> BoxFuture<'_, Result<ChatResponse, ProviderError>> {
        let answer = self.0.clone().map(|content| ChatResponse {
            content: content.to_string(),
            tool_calls: vec![],
            finish_reason: "stop".into(),
            usage: TokenUsage {
                prompt: 10,
                completion: 5,
            },
        });
        Box::pin(async move { answer })
    }
    fn chat_stream(
        &self,
        _req: ChatRequest,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<StreamEvent, ProviderError>>, ProviderError>>
    {
        Box::pin(async { Err(ProviderError::Fatal("not scripted".into())) })
    }
}

async fn app_with(provider: Scripted) -> TestApp {
    let mut models = Models::offline(&["llama-3.1-8b"]);
    models.insert("llama-3.3-70b", Arc::new(provider));
    TestApp::spawn_with_models(models).await
}

#[tokio::test]
async fn invalid_output_is_a_failed_run_recorded_and_counted() {
    let app = app_with(Scripted(Ok(
        r#"{"risk_score": 7, "risk_level": "medium", "reasoning": "r"}"#,
    )))
    .await;
    let acme = app.tenant("acme").await;
    let r = app.run_agent(&acme, "risk-analyzer", doc_input()).await;
    assert_eq!(r.status, 200, "a failed run is still a 200: {}", r.text);
    assert_eq!(r.body["status"], "failed");
    assert_eq!(r.body["output"], Value::Null);
    let error = r.body["error"].as_str().unwrap();
    assert!(
        error.contains("/risk_score") && error.contains("repair"),
        "{error}"
    );
    assert_eq!(
        r.body["tokens_used"], 30,
        "the answer and the one repair attempt"
    );
    let agent = app.get_agent(&acme, "risk-analyzer").await;
    assert_eq!(agent.body["total_runs"], 1);
    assert_eq!(agent.body["success_rate"], 0.0);
    let usage = app.usage(&acme).await;
    assert_eq!(usage.body["total_runs"], 1);
    assert_eq!(usage.body["total_tokens"], 30);
    let history = app.list_runs(&acme, "risk-analyzer", "").await;
    assert_eq!(history.body["runs"][0]["status"], "failed");
    assert_eq!(history.body["runs"][0]["error"], error);
}

#[tokio::test]
async fn provider_errors_are_failed_runs_not_500s() {
    let app = app_with(Scripted(Err(ProviderError::Transient(
        "upstream 503".into(),
    ))))
    .await;
    let acme = app.tenant("acme").await;
    let r = app.run_agent(&acme, "risk-analyzer", doc_input()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "failed");
    assert!(r.body["error"].as_str().unwrap().contains("upstream 503"));
    let r = app
        .run_agent(&acme, "risk-analyzer", json!({"message": "x"}))
        .await;
    assert_eq!(r.body["status"], "failed");
    assert_eq!(
        app.get_agent(&acme, "risk-analyzer").await.body["total_runs"],
        2
    );
}

#[tokio::test]
async fn output_that_is_not_json_fails_the_run() {
    let app = app_with(Scripted(Ok("I think the risk is medium."))).await;
    let acme = app.tenant("acme").await;
    let r = app.run_agent(&acme, "risk-analyzer", doc_input()).await;
    assert_eq!(r.body["status"], "failed");
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("not a JSON object")
    );
}
