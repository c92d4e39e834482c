//! What a careless client or a broken provider can no longer do: leave a run unsettled, keep
//! tokens from being counted, or make a run's fields disagree.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ares::llm::{
    ChatRequest, ChatResponse, Models, OpenAiProvider, Provider, ProviderError, StreamEvent,
};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};

use crate::helpers::{TestApp, test_settings};
use crate::upstream::{Reply, Upstream, answer, tool_call};

/// A server on `fixtures/agents-hardening` (tenant `acme`: `quick`, `quick-tools`) whose
/// `llama-3.3-70b` is `provider`.
pub async fn app_on(provider: Arc<dyn Provider>) -> TestApp {
    app_on_with(provider, test_settings()).await
}

/// [`app_on`] with these `settings` (their agents folder replaced).
pub async fn app_on_with(
    provider: Arc<dyn Provider>,
    mut settings: ares::config::Settings,
) -> TestApp {
    settings.agents_dir = "fixtures/agents-hardening".into();
    let store = ares::store::Store::connect(&settings.database)
        .await
        .unwrap();
    let mut models = Models::from_settings(&settings).unwrap();
    models.insert("llama-3.3-70b", provider);
    TestApp::spawn_full(settings, store, models).await
}

/// [`app_on`] a scripted upstream answering `replies`.
pub async fn app_with(replies: Vec<Reply>) -> (TestApp, Upstream) {
    let upstream = Upstream::start(replies).await;
    let provider = OpenAiProvider::new("scripted", &upstream.base, None)
        .with_first_pause(Duration::from_millis(5));
    (app_on(Arc::new(provider)).await, upstream)
}

/// Waits until `done` holds, at most 15 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `body` to `path` and gives up after 300 ms, as a client whose connection is reset.
async fn abandon(app: &TestApp, key: &str, path: &str, body: Value) {
    let sent = app
        .client
        .post(format!("{}{path}", app.base))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        sent.is_err(),
        "the request should still be running: {sent:?}"
    );
}

fn runs_of(page: &Value) -> Vec<Value> {
    page["runs"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn runs_whose_clients_go_away_still_settle_with_their_tokens_and_reservations() {
    let slow = |_| {
        Reply::Later(
            Duration::from_millis(1500),
            Box::new(answer("done", 20, 10)),
        )
    };
    let mut replies: Vec<Reply> = (0..5).map(slow).collect();
    replies.push(answer("the sixth", 1, 1));
    let (app, _upstream) = app_with(replies).await;
    let key = app.tenant_with("acme", json!({"quota_runs": 6})).await;
    let input = json!({"input": {"message": "take your time"}});
    let clients: Vec<_> = (0..5)
        .map(|_| abandon(&app, &key, "/v1/agents/quick/run", input.clone()))
        .collect();
    futures_util::future::join_all(clients).await;

    eventually("every abandoned run settles", || async {
        let page = app.list_runs(&key, "quick", "").await.body;
        let runs = runs_of(&page);
        runs.len() == 5 && runs.iter().all(|r| r["status"] != "running")
    })
    .await;
    for run in runs_of(&app.list_runs(&key, "quick", "").await.body) {
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["tokens_used"], 30, "{run}");
    }
    let usage = app.usage(&key).await.body;
    assert_eq!(usage["total_runs"], 5, "{usage}");
    assert_eq!(usage["total_tokens"], 150, "{usage}");
    let report = app.app.engine.check().await.unwrap();
    assert_eq!(report.violations, [], "{:?}", report.violations);
    // No reservation leaked: the sixth run of a quota of six starts, the seventh does not.
    let sixth = app
        .run_agent(&key, "quick", json!({"message": "now"}))
        .await;
    assert_eq!(sixth.body["status"], "completed", "{}", sixth.text);
    let seventh = app
        .run_agent(&key, "quick", json!({"message": "again"}))
        .await;
    assert_eq!(seventh.status, 429, "{}", seventh.text);
}

/// A provider that panics: a bug below the engine.
struct Panicking;

impl Provider for Panicking {
    fn chat(&self, _: ChatRequest) -> BoxFuture<'_, Result<ChatResponse, ProviderError>> {
        Box::pin(async { panic!("a provider bug") })
    }
    fn chat_stream(
        &self,
        _: ChatRequest,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<StreamEvent, ProviderError>>, ProviderError>>
    {
        Box::pin(async { panic!("a provider bug") })
    }
}

#[tokio::test]
async fn a_run_whose_model_work_panics_is_failed_and_counted() {
    let app = app_on(Arc::new(Panicking)).await;
    let key = app.tenant("acme").await;
    let r = app.run_agent(&key, "quick", json!({"message": "hi"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "failed", "{}", r.text);
    assert!(
        !r.text.contains("a provider bug"),
        "the panic stays in the log: {}",
        r.text
    );
    assert_eq!(app.usage(&key).await.body["total_runs"], 1);
    let report = app.app.engine.check().await.unwrap();
    assert_eq!(report.violations, [], "{:?}", report.violations);
}

#[tokio::test]
async fn a_run_that_times_out_counts_the_tokens_already_reported() {
    let (app, _upstream) = app_with(vec![
        tool_call("calculator", r#"{"expression":"2*21"}"#, 40, 10),
        Reply::Hang,
    ])
    .await;
    let key = app.tenant("acme").await;
    let r = app
        .run_agent(&key, "quick-tools", json!({"message": "compute"}))
        .await;
    assert_eq!(r.body["status"], "failed", "{}", r.text);
    assert_eq!(r.body["error"], "the run timed out after 800 ms");
    assert_eq!(r.body["tokens_used"], 50, "{}", r.text);
    assert_eq!(app.usage(&key).await.body["total_tokens"], 50);
}

#[tokio::test]
async fn a_chat_that_times_out_counts_the_tokens_already_reported() {
    let (app, _upstream) = app_with(vec![
        tool_call("calculator", r#"{"expression":"2*21"}"#, 40, 10),
        Reply::Hang,
    ])
    .await;
    let key = app.tenant("acme").await;
    let r = app
        .chat(
            &key,
            json!({"messages": [{"role": "user", "content": "compute"}], "agent_type": "quick-tools"}),
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert_eq!(r.error_code(), "upstream_error");
    assert_eq!(app.usage(&key).await.body["total_tokens"], 50);
}

#[tokio::test]
async fn a_chat_whose_client_goes_away_is_still_counted() {
    let (app, _upstream) = app_with(vec![Reply::Later(
        Duration::from_millis(1500),
        Box::new(answer("late", 30, 20)),
    )])
    .await;
    let key = app.tenant("acme").await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "model": "llama-3.3-70b"});
    abandon(&app, &key, "/v1/chat", body).await;
    eventually("the abandoned chat's tokens are counted", || async {
        app.usage(&key).await.body["total_tokens"] == 50
    })
    .await;
}

#[tokio::test]
async fn a_runs_duration_is_the_time_between_its_start_and_its_end() {
    let (app, _upstream) = app_with(vec![Reply::Later(
        Duration::from_millis(40),
        Box::new(answer("done", 1, 1)),
    )])
    .await;
    let key = app.tenant("acme").await;
    let r = app.run_agent(&key, "quick", json!({"message": "hi"})).await;
    let at = |field: &str| {
        r.body[field]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    let between = (at("finished_at") - at("started_at")).num_milliseconds();
    assert!(between >= 40, "{}", r.text);
    assert_eq!(r.body["duration_ms"], between, "{}", r.text);
    let listed = runs_of(&app.list_runs(&key, "quick", "").await.body);
    assert_eq!(listed[0]["duration_ms"], between);
}

#[tokio::test]
async fn a_runs_input_and_output_are_bounded_as_stored() {
    let long = "x".repeat(300 * 1024);
    let (app, _upstream) = app_with(vec![answer(&long, 5, 5)]).await;
    let key = app.tenant("acme").await;
    let r = app.run_agent(&key, "quick", json!({"message": long})).await;
    assert_eq!(r.status, 422, "{}", &r.text[..r.text.len().min(300)]);
    assert_eq!(r.error_code(), "validation_failed");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("input: is "), "{message}");
    assert!(message.contains("262144"), "{message}");
    // An answer larger than the output's limit fails the run instead of being stored.
    let r = app
        .run_agent(&key, "quick", json!({"message": "say a lot"}))
        .await;
    assert_eq!(
        r.body["status"],
        "failed",
        "{}",
        &r.text[..r.text.len().min(300)]
    );
    assert!(r.body["output"].is_null());
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("max_run_output_bytes"),
        "{}",
        r.body["error"]
    );
    assert!(r.text.len() < 10_000, "nothing of the answer is kept");
    assert_eq!(r.body["tokens_used"], 10, "its tokens are still counted");
}

#[tokio::test]
async fn a_tenant_holds_a_bounded_number_of_keys_and_shares_one_rate() {
    let mut settings = test_settings();
    settings.limits.max_keys_per_tenant = 3;
    settings.quotas.requests_per_minute = 1000;
    settings.quotas.tenant_requests_per_minute = 6;
    let app = TestApp::spawn_with(settings).await;
    let first = app.tenant("acme").await;
    let mut keys = vec![first.clone()];
    for name in ["second", "third"] {
        let r = app.create_key(&first, json!({"name": name})).await;
        assert_eq!(r.status, 201, "{}", r.text);
        keys.push(r.body["secret"].as_str().unwrap().to_string());
    }
    let r = app.create_key(&first, json!({"name": "fourth"})).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.error_code(), "key_limit_reached");
    assert!(r.body["error"]["message"].as_str().unwrap().contains('3'));
    // Revoking one frees its place.
    let listed = app.list_keys(&first).await.body;
    let third_id = listed["keys"][2]["id"].as_str().unwrap().to_string();
    assert_eq!(app.revoke_key(&first, &third_id).await.status, 204);
    keys.pop();
    assert_eq!(
        app.create_key(&first, json!({"name": "again"}))
            .await
            .status,
        201
    );
    // Six requests a minute for the tenant, whichever keys send them: six were sent with the
    // first key, so the next one, with another key, is refused (each key alone may send 1000).
    let r = app.usage(&keys[1]).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.error_code(), "rate_limited");
    assert!(r.header("retry-after").is_some());
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tenant"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn the_operator_issues_a_key_for_a_tenant_that_revoked_its_last() {
    use crate::helpers::ADMIN_TOKEN;
    let app = TestApp::spawn().await;
    let key = app.tenant("acme").await;
    let id = app.list_keys(&key).await.body["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(app.revoke_key(&key, &id).await.status, 204);
    assert_eq!(app.usage(&key).await.status, 401, "locked out");
    let r = app
        .post(
            "/admin/v1/tenants/acme/api-keys",
            ADMIN_TOKEN,
            &json!({"name": "recovery", "expires_in_days": 7}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let secret = r.body["secret"].as_str().unwrap();
    assert!(r.body["key"].is_string());
    assert_eq!(app.usage(secret).await.status, 200);
    let listed = app.list_keys(secret).await.body;
    assert_eq!(listed["keys"][0]["name"], "recovery");
    assert!(listed["keys"][0]["expires_at"].is_string());
    let r = app
        .post(
            "/admin/v1/tenants/nobody/api-keys",
            ADMIN_TOKEN,
            &json!({"name": "x"}),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "tenant_not_found");
    let r = app
        .post(
            "/admin/v1/tenants/acme/api-keys",
            &key,
            &json!({"name": "x"}),
        )
        .await;
    assert_eq!(r.status, 401, "API keys never authenticate the admin API");
}

/// A few hundred connections sending their headers a byte at a time neither keep a normal
/// client from being served nor stay open past the header timeout.
#[tokio::test]
async fn slow_clients_are_disconnected_and_do_not_hold_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut settings = test_settings();
    settings.limits.header_timeout = ares::config::HumanDuration(Duration::from_secs(1));
    let app = TestApp::spawn_with(settings).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let slow: Vec<_> = (0..300)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
                let start = Instant::now();
                let head = b"GET /v1/usage HTTP/1.1\r\nHost: x\r\nX-Slow: ";
                let mut closed = None;
                for byte in head.iter().chain(std::iter::repeat(&b'a')) {
                    if s.write_all(&[*byte]).await.is_err() {
                        closed = Some(start.elapsed());
                        break;
                    }
                    let mut buf = [0u8; 512];
                    let read = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf));
                    if let Ok(Ok(0) | Err(_)) = read.await {
                        closed = Some(start.elapsed());
                        break;
                    }
                    if start.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                }
                closed
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While they trickle, a normal client is served.
    let key = app.tenant("acme").await;
    assert_eq!(app.usage(&key).await.status, 200);
    for s in slow {
        let closed = s.await.unwrap();
        let after = closed.expect("a slow connection stayed open for 10 s");
        assert!(after < Duration::from_secs(3), "closed after {after:?}");
    }
}
