//! Runs and chats through a real HTTP provider (the scripted upstream): tool calls, structured
//! output and its repair, retries, timeouts, streaming, broken streams and disconnects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ares::llm::{
    ChatRequest, Message, Models, OpenAiProvider, Provider, ProviderError, Role, StreamEvent,
};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::helpers::{TestApp, sse_events};
use crate::upstream::{Reply, Upstream, answer, delta, finish, stream, tool_call};

/// A server whose `llama-3.3-70b` is the scripted upstream (`llama-3.1-8b` stays offline).
async fn app_with(replies: Vec<Reply>) -> (TestApp, Upstream, String) {
    let upstream = Upstream::start(replies).await;
    let mut models = Models::offline(&["llama-3.1-8b"]);
    let provider = OpenAiProvider::new("scripted", &upstream.base, None)
        .with_first_pause(Duration::from_millis(5));
    models.insert("llama-3.3-70b", Arc::new(provider));
    let app = TestApp::spawn_with_models(models).await;
    let key = app.tenant("acme").await;
    (app, upstream, key)
}

const VALID: &str = r#"{"risk_score": 0.73, "risk_level": "medium", "reasoning": "Elevated amount for merchant category"}"#;

fn risk_input() -> Value {
    json!({"message": "Analyze the risk profile for transaction TX-9921", "context": {"amount": 15000, "currency": "USD"}})
}

#[tokio::test]
async fn a_run_sends_every_option_and_uses_the_providers_usage() {
    let (app, upstream, key) = app_with(vec![answer(VALID, 120, 30)]).await;
    let r = app.run_agent(&key, "risk-analyzer", risk_input()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    assert_eq!(
        r.body["output"],
        serde_json::from_str::<Value>(VALID).unwrap()
    );
    assert_eq!(r.body["tokens_used"], 150);
    let sent = &upstream.requests()[0];
    assert_eq!(sent["model"], "llama-3.3-70b");
    assert_eq!(sent["temperature"], 0.1);
    assert_eq!(sent["max_tokens"], 2048);
    assert_eq!(sent["messages"][0]["role"], "system");
    assert!(
        sent["messages"][0]["content"]
            .as_str()
            .unwrap()
            .starts_with("You are a risk analysis agent")
    );
    let user = sent["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("TX-9921") && user.contains("15000"), "{user}");
    assert_eq!(sent["tools"][0]["function"]["name"], "calculator");
}

#[tokio::test]
async fn tool_calls_are_executed_and_their_tokens_summed() {
    let (app, upstream, key) = app_with(vec![
        tool_call("calculator", r#"{"expression": "15000 * 0.03"}"#, 100, 10),
        answer(VALID, 140, 30),
    ])
    .await;
    let r = app.run_agent(&key, "risk-analyzer", risk_input()).await;
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    assert_eq!(r.body["tokens_used"], 280);
    let second = &upstream.requests()[1];
    let messages = second["messages"].as_array().unwrap();
    let call = &messages[2];
    assert_eq!(call["role"], "assistant");
    assert_eq!(call["tool_calls"][0]["function"]["name"], "calculator");
    let result = &messages[3];
    assert_eq!(result["role"], "tool");
    assert_eq!(result["tool_call_id"], "call_1");
    assert_eq!(result["content"], "450");
}

#[tokio::test]
async fn tool_errors_go_back_to_the_model_and_iterations_are_bounded() {
    // analyst allows 4 tool iterations by default; the model keeps calling tools.
    let mut replies = vec![tool_call("calculator", r#"{"expression": "1 / 0"}"#, 10, 1)];
    for _ in 0..3 {
        replies.push(tool_call("calculator", r#"{"expression": "2 + 2"}"#, 10, 1));
    }
    replies.push(answer("done", 10, 1));
    let upstream = Upstream::start(replies).await;
    let mut models = Models::offline(&["llama-3.1-8b"]);
    models.insert(
        "llama-3.3-70b",
        Arc::new(OpenAiProvider::new("scripted", &upstream.base, None)),
    );
    let app = TestApp::spawn_with_models(models).await;
    let key = app.tenant("acme").await;
    let r = app
        .run_agent(&key, "analyst", json!({"message": "divide"}))
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    assert_eq!(r.body["output"]["response"], "done");
    let requests = upstream.requests();
    assert_eq!(
        requests.len(),
        5,
        "4 tool turns, then a last call without tools"
    );
    assert_eq!(
        requests[1]["messages"][3]["content"],
        "error: division by zero"
    );
    assert!(
        requests[4].get("tools").is_none(),
        "no tools are offered once the iterations are used up"
    );
}

#[tokio::test]
async fn invalid_output_is_repaired_once() {
    let bad = r#"{"risk_score": 1.7, "risk_level": "medium", "reasoning": "r"}"#;
    let (app, upstream, key) = app_with(vec![answer(bad, 100, 20), answer(VALID, 150, 30)]).await;
    let r = app.run_agent(&key, "risk-analyzer", risk_input()).await;
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    assert_eq!(r.body["tokens_used"], 300);
    let repair = &upstream.requests()[1];
    let last = repair["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        last.contains("/risk_score"),
        "the validation error is fed back: {last}"
    );
    assert_eq!(repair["response_format"]["type"], "json_schema");
    assert!(repair.get("tools").is_none());
}

#[tokio::test]
async fn output_still_invalid_after_the_repair_fails_the_run_naming_the_path() {
    let bad = r#"{"risk_score": 0.5, "risk_level": "extreme", "reasoning": "r"}"#;
    let (app, _upstream, key) = app_with(vec![answer(bad, 10, 5), answer(bad, 10, 5)]).await;
    let r = app.run_agent(&key, "risk-analyzer", risk_input()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "failed");
    let error = r.body["error"].as_str().unwrap();
    assert!(error.contains("/risk_level"), "{error}");
    assert_eq!(r.body["tokens_used"], 30);
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_then_fail_clearly() {
    let limited = json!({"error": {"message": "Rate limit reached", "type": "rate_limit"}});
    let (app, upstream, key) = app_with(vec![
        Reply::Status(429, limited.clone(), Some("0")),
        Reply::Status(503, json!({"error": {"message": "overloaded"}}), None),
        answer(VALID, 10, 5),
    ])
    .await;
    let r = app.run_agent(&key, "risk-analyzer", risk_input()).await;
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    assert_eq!(upstream.requests().len(), 3);

    let (app, upstream, key) = app_with(vec![
        Reply::Status(500, json!({"error": {"message": "boom"}}), None),
        Reply::Status(500, json!({"error": {"message": "boom"}}), None),
        Reply::Status(500, json!({"error": {"message": "still boom"}}), None),
    ])
    .await;
    let r = app.run_agent(&key, "risk-analyzer", risk_input()).await;
    assert_eq!(r.status, 200, "never a 500 for a provider fault");
    assert_eq!(r.body["status"], "failed");
    assert_eq!(
        r.body["error"],
        "provider unavailable: provider 'scripted' answered 500 (server error)"
    );
    assert_hides(&upstream, &r.body["error"], "still boom");
    assert_eq!(upstream.requests().len(), 3, "bounded retries");

    // A client error is not retried.
    let (app, upstream, key) = app_with(vec![Reply::Status(
        400,
        json!({"error": {"message": "bad model"}}),
        None,
    )])
    .await;
    let r = app.run_agent(&key, "risk-analyzer", risk_input()).await;
    assert_eq!(r.body["status"], "failed");
    assert_eq!(
        r.body["error"],
        "provider error: provider 'scripted' answered 400 (request refused)"
    );
    assert_hides(&upstream, &r.body["error"], "bad model");
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn a_retry_after_that_is_no_number_of_seconds_is_ignored() {
    let limited = json!({"error": {"message": "Rate limit reached"}});
    let (app, upstream, key) = app_with(vec![
        Reply::Status(429, limited.clone(), Some("NaN")),
        Reply::Status(429, limited, Some("-1")),
        answer(VALID, 10, 5),
    ])
    .await;
    let start = Instant::now();
    let r = app.run_agent(&key, "risk-analyzer", risk_input()).await;
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    assert_eq!(upstream.requests().len(), 3);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn token_counts_beyond_bounds_fail_the_call_and_leave_usage_whole() {
    let (app, _upstream, key) = app_with(vec![Reply::Json(json!({
        "choices": [{"message": {"content": VALID}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9_223_372_036_854_775_808u64, "completion_tokens": 1}
    }))])
    .await;
    let r = app.run_agent(&key, "risk-analyzer", risk_input()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "failed");
    assert_eq!(
        r.body["error"],
        "provider error: provider 'scripted' sent an answer that is not a valid chat completion"
    );
    assert_eq!(r.body["tokens_used"], 0);
    let usage = app.usage(&key).await;
    assert_eq!(usage.status, 200, "{}", usage.text);
    assert_eq!(usage.body["total_tokens"], 0);
}

#[tokio::test]
async fn a_run_that_outlives_its_timeout_fails() {
    let (app, _upstream, key) = app_with(vec![Reply::Hang]).await;
    let start = Instant::now();
    let r = app
        .run_agent(&key, "slow", json!({"message": "wait"}))
        .await;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(r.body["status"], "failed");
    assert_eq!(r.body["error"], "the run timed out after 500 ms");
    assert!(r.body["duration_ms"].as_u64().unwrap() >= 500);
    assert_eq!(
        app.usage(&key).await.body["total_runs"],
        1,
        "a timed-out run is counted"
    );
}

#[tokio::test]
async fn chat_through_a_provider_and_its_failures() {
    let (app, upstream, key) = app_with(vec![answer("Q1 revenue grew 12%.", 40, 8)]).await;
    let body = json!({"messages": [{"role": "user", "content": "Summarize Q1 revenue trends."}], "model": "llama-3.3-70b"});
    let r = app.chat(&key, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["content"], "Q1 revenue grew 12%.");
    assert_eq!(r.body["tokens_used"], 48);
    assert_eq!(
        upstream.requests()[0]["messages"],
        json!([{"role": "user", "content": "Summarize Q1 revenue trends."}])
    );

    let (app, upstream, key) = app_with(vec![Reply::Status(
        401,
        json!({"error": {"message": "invalid api key"}}),
        None,
    )])
    .await;
    let r = app.chat(&key, body).await;
    assert_upstream_error(&r, "provider 'scripted' answered 401 (not authorized)");
    assert_hides(&upstream, &r.body, "invalid api key");
}

#[tokio::test]
async fn chat_by_agent_type_uses_its_prompt_and_tools() {
    let (app, upstream, key) = app_with(vec![
        tool_call(
            "calculator",
            r#"{"expression": "(120 - 100) / 100 * 100"}"#,
            30,
            5,
        ),
        answer("Revenue grew 20%.", 50, 6),
    ])
    .await;
    let r = app
        .chat(&key, json!({"messages": [{"role": "user", "content": "Growth from 100 to 120?"}], "agent_type": "analyst"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["content"], "Revenue grew 20%.");
    assert_eq!(r.body["tokens_used"], 91);
    let requests = upstream.requests();
    assert_eq!(
        requests[0]["messages"][0]["content"],
        "You are a careful analyst."
    );
    assert_eq!(requests[1]["messages"][3]["content"], "20");
}

#[tokio::test]
async fn streams_relay_deltas_and_the_providers_usage() {
    let (app, upstream, key) = app_with(vec![stream(
        &["Based on", " the data,", " Q1 revenue"],
        20,
        9,
    )])
    .await;
    let r = app
        .chat_stream(
            &key,
            json!({"messages": [{"role": "user", "content": "Explain"}], "model": "llama-3.3-70b"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = sse_events(&r.text);
    assert_eq!(
        events,
        vec![
            json!({"delta": "Based on", "finish_reason": null}),
            json!({"delta": " the data,", "finish_reason": null}),
            json!({"delta": " Q1 revenue", "finish_reason": null}),
            json!({"delta": "", "finish_reason": "stop", "tokens_used": 29}),
        ]
    );
    let sent = &upstream.requests()[0];
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    wait_for_tokens(&app, &key, 29).await;
}

#[tokio::test]
async fn a_stream_broken_midway_ends_with_an_error_event() {
    let chunks = vec![
        (Duration::ZERO, delta("Partial")),
        (Duration::ZERO, "data: {not json\n\n".to_string()),
    ];
    let (app, _upstream, key) = app_with(vec![Reply::Stream(chunks)]).await;
    let r = app
        .chat_stream(
            &key,
            json!({"messages": [{"role": "user", "content": "x"}], "model": "llama-3.3-70b"}),
        )
        .await;
    let events = sse_events(&r.text);
    assert_eq!(
        events[0],
        json!({"delta": "Partial", "finish_reason": null})
    );
    let last = events.last().unwrap();
    assert_eq!(last["finish_reason"], "error");
    assert_eq!(last["delta"], "");
    assert!(
        last["error"].as_str().unwrap().contains("bad stream event"),
        "{last}"
    );
    assert!(last["tokens_used"].as_u64().unwrap() > 0);

    // A stream that stops before finishing is an error too.
    let (app, _upstream, key) =
        app_with(vec![Reply::Stream(vec![(Duration::ZERO, delta("cut"))])]).await;
    let r = app
        .chat_stream(
            &key,
            json!({"messages": [{"role": "user", "content": "x"}], "model": "llama-3.3-70b"}),
        )
        .await;
    let last = sse_events(&r.text).last().unwrap().clone();
    assert_eq!(last["finish_reason"], "error");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("provider 'scripted' ended the stream early")
    );
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_and_its_tokens_are_recorded() {
    let mut chunks: Vec<(Duration, String)> = vec![(Duration::ZERO, delta("first words "))];
    for _ in 0..100 {
        chunks.push((Duration::from_millis(100), delta("more words ")));
    }
    chunks.push((Duration::ZERO, finish(10, 200)));
    let (app, upstream, key) = app_with(vec![Reply::Stream(chunks)]).await;
    let resp = app
        .client
        .post(format!("{}/v1/chat/stream", app.base))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(json!({"messages": [{"role": "user", "content": "long story"}], "model": "llama-3.3-70b"}).to_string())
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    use futures_util::StreamExt;
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("first words"));
    drop(body);
    let start = Instant::now();
    while !upstream.cancelled() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the upstream request was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The tokens produced so far (estimated, as the provider never reported usage) are recorded.
    let start = Instant::now();
    loop {
        let tokens = app.usage(&key).await.body["total_tokens"].as_u64().unwrap();
        if tokens > 0 {
            assert!(
                tokens < 210,
                "only what was produced before the disconnect: {tokens}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no usage recorded after the disconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A 502 `upstream_error` whose message contains `fragment`.
fn assert_upstream_error(r: &crate::helpers::Reply, fragment: &str) {
    assert_eq!(r.status, 502, "{}", r.text);
    assert_eq!(r.error_code(), "upstream_error");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(fragment), "{fragment:?} not in {}", r.text);
}

async fn wait_for_tokens(app: &TestApp, key: &str, expected: u64) {
    let start = Instant::now();
    loop {
        let tokens = app.usage(key).await.body["total_tokens"].as_u64().unwrap();
        if tokens == expected {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "usage says {tokens} tokens, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn chats_and_streams_are_bounded_by_the_agents_timeout() {
    // `patient` is the `slow` agent: timeout_ms 500.
    let (app, _upstream, key) = app_with(vec![Reply::Hang, Reply::Hang]).await;
    let body =
        json!({"messages": [{"role": "user", "content": "hello?"}], "agent_type": "patient"});
    let start = Instant::now();
    let r = app.chat(&key, body.clone()).await;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_upstream_error(&r, "within 500 ms");

    let start = Instant::now();
    let r = app.chat_stream(&key, body).await;
    assert!(start.elapsed() < Duration::from_secs(5));
    let last = sse_events(&r.text).last().unwrap().clone();
    assert_eq!(last["finish_reason"], "error");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("nothing for 500 ms"),
        "{last}"
    );
}

#[tokio::test]
async fn every_log_line_of_a_failing_provider_call_carries_the_request_id() {
    let failing = Reply::Status(500, json!({"error": {"message": "upstream broke"}}), None);
    let (app, _upstream, key) = app_with(vec![failing; 3]).await;
    let id = format!("log-check-{}", uuid::Uuid::now_v7());
    let r = app
        .send(
            app.client
                .post(format!("{}/v1/agents/risk-analyzer/run", app.base))
                .bearer_auth(&key)
                .header("x-request-id", &id)
                .header("content-type", "application/json")
                .body(json!({"input": risk_input()}).to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "failed", "{}", r.text);
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    let lines = crate::helpers::log_lines_with(&format!("request_id={id}"));
    for depth in ["ares::llm", "ares::engine"] {
        assert!(
            lines.iter().any(|l| l.contains(depth)),
            "no line of {depth} carries the request id; the request's lines: {lines:#?}"
        );
    }
}

#[tokio::test]
async fn what_the_provider_said_and_where_it_lives_stay_out_of_answers() {
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "model": "llama-3.3-70b"});
    // Not JSON: a proxy's page.
    let (app, upstream, key) =
        app_with(vec![Reply::Raw("<html>502 from gateway 10.1.2.3</html>")]).await;
    let r = app.chat(&key, body.clone()).await;
    assert_upstream_error(
        &r,
        "provider 'scripted' sent an answer that is not valid JSON",
    );
    assert_hides(&upstream, &r.body, "10.1.2.3");

    // A provider that cannot be reached.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut models = Models::offline(&["llama-3.1-8b"]);
    let provider = OpenAiProvider::new("scripted", &format!("http://{addr}/v1"), None)
        .with_first_pause(Duration::from_millis(5));
    models.insert("llama-3.3-70b", Arc::new(provider));
    let app = TestApp::spawn_with_models(models).await;
    let key = app.tenant("acme").await;
    let r = app.chat(&key, body.clone()).await;
    assert_upstream_error(&r, "provider 'scripted' could not be reached");
    assert!(!r.text.contains(&addr), "{}", r.text);

    // An error reported mid-stream.
    let (app, upstream, key) = app_with(vec![Reply::Stream(vec![
        (Duration::ZERO, delta("Partial")),
        (
            Duration::ZERO,
            "data: {\"error\": {\"message\": \"worker 10.1.2.3 died; key sk-***abc\"}}\n\n".into(),
        ),
    ])])
    .await;
    let r = app.chat_stream(&key, body).await;
    let last = sse_events(&r.text).last().unwrap().clone();
    assert_eq!(last["finish_reason"], "error");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .ends_with("provider 'scripted' failed mid-stream"),
        "{last}"
    );
    assert_hides(&upstream, &last, "10.1.2.3");
    assert!(!last.to_string().contains("sk-"), "{last}");
}

/// Checks that neither the upstream's address nor `said` appear in what a client got.
fn assert_hides(upstream: &Upstream, answer: &Value, said: &str) {
    let addr = upstream
        .base
        .trim_start_matches("http://")
        .trim_end_matches("/v1");
    let text = answer.to_string();
    assert!(!text.contains(addr), "the address {addr} in {text}");
    assert!(!text.contains(said), "{said:?} in {text}");
}

/// A sink for the log lines of one test's thread.
#[derive(Clone, Default)]
struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    /// Logs this thread's events (debug and up) into the sink while the guard lives.
    fn capture() -> (Lines, tracing::subscriber::DefaultGuard) {
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || sink.clone())
            .finish();
        (lines, tracing::subscriber::set_default(subscriber))
    }

    fn matching(&self, fragment: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(fragment))
            .map(String::from)
            .collect()
    }
}

fn hello(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![Message::new(Role::User, "hi")],
        temperature: None,
        max_tokens: None,
        tools: vec![],
        response_schema: None,
    }
}

#[tokio::test]
async fn provider_calls_log_each_attempt_inside_the_callers_span() {
    let upstream = Upstream::start(vec![
        Reply::Status(503, json!({"error": {"message": "overloaded"}}), Some("0")),
        Reply::Status(503, json!({"error": {"message": "still overloaded"}}), None),
        Reply::Status(503, json!({"error": {"message": "gave up"}}), None),
        Reply::Stream(vec![
            (Duration::ZERO, delta("a")),
            (
                Duration::ZERO,
                "data: {\"error\": {\"message\": \"worker died\"}}\n\n".into(),
            ),
        ]),
    ])
    .await;
    let provider = OpenAiProvider::new("local", &upstream.base, None)
        .with_first_pause(Duration::from_millis(5));
    let request_span = || tracing::info_span!("request", request_id = "r-1");
    let (lines, _guard) = Lines::capture();
    let scope = "request{request_id=\"r-1\"}:provider_call{provider=local model=m1}:";

    let error = provider
        .chat(hello("m1"))
        .instrument(request_span())
        .await
        .unwrap_err();
    assert_eq!(
        error,
        ProviderError::Transient("provider 'local' answered 503 (server error)".into())
    );
    let retries = lines.matching("retrying");
    assert_eq!(retries.len(), 2, "{retries:?}");
    for (i, line) in retries.iter().enumerate() {
        assert!(line.contains(" INFO ") && line.contains(scope), "{line}");
        assert!(line.contains(&format!("attempt={}", i + 1)), "{line}");
        assert!(
            line.contains("status=503") && line.contains("duration_ms="),
            "{line}"
        );
    }
    let failed = lines.matching("the provider call failed attempt");
    assert_eq!(failed.len(), 1, "{failed:?}");
    let line = &failed[0];
    assert!(line.contains(" WARN ") && line.contains(scope), "{line}");
    assert!(
        line.contains("attempt=3") && line.contains("status=503"),
        "{line}"
    );
    assert!(
        line.contains(&upstream.base) && line.contains("detail=gave up"),
        "{line}"
    );

    // A stream's failure is logged in the span of the call that started it, wherever the
    // stream is read.
    let stream = provider
        .chat_stream(hello("m1"))
        .instrument(request_span())
        .await
        .unwrap();
    let events: Vec<_> = futures_util::StreamExt::collect(stream).await;
    assert_eq!(events[0], Ok(StreamEvent::Delta("a".into())));
    assert_eq!(
        events[1],
        Err(ProviderError::Transient(
            "provider 'local' failed mid-stream".into()
        ))
    );
    let failed = lines.matching("worker died");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].contains(" WARN ") && failed[0].contains(scope),
        "{}",
        failed[0]
    );

    // A connection failure is logged as such.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let unreachable =
        OpenAiProvider::new("local", &base, None).with_first_pause(Duration::from_millis(5));
    let error = unreachable
        .chat(hello("m1"))
        .instrument(request_span())
        .await
        .unwrap_err();
    assert_eq!(
        error,
        ProviderError::Transient("provider 'local' could not be reached".into())
    );
    assert_eq!(lines.matching("status=connect_error").len(), 3);
}
