//! Every failure an operation can meet answers a status its response enum declares, with the
//! code the error table gives it: one table of (operation, failure) cases through one `check()`.
//! A status an operation does not declare would be answered as an opaque 500; this fails then.

use std::sync::Arc;
use std::time::Duration;

use ares::llm::{Models, OpenAiProvider};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, TestApp};
use crate::upstream::{Reply, Upstream};

/// Which credential a case sends.
#[derive(Clone, Copy)]
enum Key {
    /// A live key of `acme`.
    Acme,
    /// A key of a tenant limited to one request a minute, already used once.
    Throttled,
    /// A key of a tenant whose run and token quotas are 0.
    Spent,
    /// A key that does not exist.
    Unknown,
    /// The admin token.
    Admin,
    /// A wrong admin token.
    WrongAdmin,
}

struct Case {
    method: &'static str,
    path: String,
    key: Key,
    /// `None` sends no body.
    body: Body,
    code: &'static str,
}

/// A request body and its content type.
type Body = Option<(&'static str, String)>;

fn json_body(v: Value) -> Body {
    Some(("application/json", v.to_string()))
}

fn case(
    method: &'static str,
    path: impl Into<String>,
    key: Key,
    body: Body,
    code: &'static str,
) -> Case {
    Case {
        method,
        path: path.into(),
        key,
        body,
        code,
    }
}

/// Sends `c` and checks its status and code; the spec check of `TestApp::send` refuses a
/// status the operation does not declare.
async fn check(app: &TestApp, keys: &Keys, c: &Case) {
    let url = format!("{}{}", app.base, c.path);
    let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
    let secret = match c.key {
        Key::Acme => keys.acme.as_str(),
        Key::Throttled => keys.throttled.as_str(),
        Key::Spent => keys.spent.as_str(),
        Key::Unknown => "ares_0000000000000000000000000000000000000000000",
        Key::Admin => ADMIN_TOKEN,
        Key::WrongAdmin => "not-the-admin-token",
    };
    let mut req = app.client.request(method, url).bearer_auth(secret);
    if let Some((ctype, body)) = &c.body {
        req = req.header("content-type", *ctype).body(body.clone());
    }
    let r = app.send(req).await;
    let expected = ares::api::error::ErrorCode::ALL
        .iter()
        .find(|e| e.as_str() == c.code)
        .unwrap_or_else(|| panic!("{} is not in the error table", c.code));
    assert_eq!(
        (r.status, r.error_code()),
        (expected.status(), c.code),
        "{} {} with {}: {}",
        c.method,
        c.path,
        c.body.as_ref().map_or("no body", |b| b.1.as_str()),
        r.text
    );
}

struct Keys {
    acme: String,
    throttled: String,
    spent: String,
}

#[tokio::test]
async fn every_failure_answers_a_declared_status_with_its_code() {
    // `llama-3.3-70b` is an upstream that always fails: chats through it answer 502.
    let failing = Reply::Status(500, json!({"error": {"message": "down"}}), None);
    let upstream = Upstream::start(vec![failing; 64]).await;
    let mut models = Models::offline(&["llama-3.1-8b"]);
    let provider = OpenAiProvider::new("failing", &upstream.base, None)
        .with_first_pause(Duration::from_millis(1));
    models.insert("llama-3.3-70b", Arc::new(provider));
    let app = TestApp::spawn_with_models(models).await;
    let keys = Keys {
        acme: app.tenant("acme").await,
        throttled: app
            .tenant_with("throttled", json!({"rate_limit_per_minute": 1}))
            .await,
        spent: app
            .tenant_with("spent", json!({"quota_runs": 0, "quota_tokens": 0}))
            .await,
    };
    // The throttled key's one request of the minute.
    assert_eq!(app.usage(&keys.throttled).await.status, 200);
    let too_large = json_body(json!({"input": {"message": "x".repeat(2 << 20)}}));
    let run = || json_body(json!({"input": {"message": "hi"}}));
    let chat = |model: &str| {
        json_body(json!({"messages": [{"role": "user", "content": "hi"}], "model": model}))
    };
    let not_json = || Some(("application/json", "{not json".to_string()));
    let text = || Some(("text/plain", "hello".to_string()));
    use Key::*;
    let mut cases = vec![
        case("GET", "/v1/agents?page=0", Acme, None, "invalid_request"),
        case("GET", "/v1/agents/nobody", Acme, None, "agent_not_found"),
        case(
            "POST",
            "/v1/agents/nobody/run",
            Acme,
            run(),
            "agent_not_found",
        ),
        case(
            "POST",
            "/v1/agents/paused/run",
            Acme,
            run(),
            "agent_disabled",
        ),
        case(
            "POST",
            "/v1/agents/echo/run",
            Acme,
            not_json(),
            "invalid_request",
        ),
        case(
            "POST",
            "/v1/agents/echo/run",
            Acme,
            text(),
            "unsupported_media_type",
        ),
        case(
            "POST",
            "/v1/agents/echo/run",
            Acme,
            too_large.clone(),
            "payload_too_large",
        ),
        case(
            "POST",
            "/v1/agents/echo/run",
            Acme,
            json_body(json!({"input": {"message": 7}})),
            "validation_failed",
        ),
        case(
            "POST",
            "/v1/agents/analyst/run",
            Spent,
            run(),
            "quota_exceeded",
        ),
        case(
            "GET",
            "/v1/agents/nobody/runs",
            Acme,
            None,
            "agent_not_found",
        ),
        case(
            "GET",
            "/v1/agents/echo/runs?per_page=500",
            Acme,
            None,
            "invalid_request",
        ),
        case(
            "GET",
            "/v1/agents/nobody/versions",
            Acme,
            None,
            "agent_not_found",
        ),
        case(
            "GET",
            "/v1/agents/echo/versions?page=0",
            Acme,
            None,
            "invalid_request",
        ),
        case("POST", "/v1/chat", Acme, not_json(), "invalid_request"),
        case("POST", "/v1/chat", Acme, text(), "unsupported_media_type"),
        case(
            "POST",
            "/v1/chat",
            Acme,
            too_large.clone(),
            "payload_too_large",
        ),
        case(
            "POST",
            "/v1/chat",
            Acme,
            chat("no-such-model"),
            "validation_failed",
        ),
        case(
            "POST",
            "/v1/chat",
            Acme,
            chat("llama-3.3-70b"),
            "upstream_error",
        ),
        case(
            "POST",
            "/v1/chat",
            Spent,
            chat("llama-3.1-8b"),
            "quota_exceeded",
        ),
        case(
            "POST",
            "/v1/chat/stream",
            Acme,
            not_json(),
            "invalid_request",
        ),
        case(
            "POST",
            "/v1/chat/stream",
            Acme,
            text(),
            "unsupported_media_type",
        ),
        case(
            "POST",
            "/v1/chat/stream",
            Acme,
            too_large.clone(),
            "payload_too_large",
        ),
        case(
            "POST",
            "/v1/chat/stream",
            Acme,
            chat("no-such-model"),
            "validation_failed",
        ),
        case(
            "POST",
            "/v1/chat/stream",
            Spent,
            chat("llama-3.1-8b"),
            "quota_exceeded",
        ),
        case("POST", "/v1/api-keys", Acme, not_json(), "invalid_request"),
        case(
            "POST",
            "/v1/api-keys",
            Acme,
            text(),
            "unsupported_media_type",
        ),
        case(
            "POST",
            "/v1/api-keys",
            Acme,
            too_large.clone(),
            "payload_too_large",
        ),
        case(
            "POST",
            "/v1/api-keys",
            Acme,
            json_body(json!({"name": ""})),
            "invalid_request",
        ),
        case(
            "DELETE",
            "/v1/api-keys/no-such-key",
            Acme,
            None,
            "api_key_not_found",
        ),
        case(
            "POST",
            "/admin/v1/tenants",
            Admin,
            json_body(json!({"slug": "acme"})),
            "conflict",
        ),
        case(
            "POST",
            "/admin/v1/tenants",
            Admin,
            json_body(json!({"slug": "Not A Slug"})),
            "validation_failed",
        ),
        case(
            "POST",
            "/admin/v1/tenants",
            Admin,
            not_json(),
            "invalid_request",
        ),
        case(
            "POST",
            "/admin/v1/tenants",
            Admin,
            text(),
            "unsupported_media_type",
        ),
        case(
            "POST",
            "/admin/v1/tenants",
            Admin,
            too_large.clone(),
            "payload_too_large",
        ),
        case(
            "PATCH",
            "/admin/v1/tenants/nobody",
            Admin,
            json_body(json!({"quota_runs": 1})),
            "tenant_not_found",
        ),
        case(
            "PATCH",
            "/admin/v1/tenants/acme",
            Admin,
            not_json(),
            "invalid_request",
        ),
        case("GET", "/admin/v1/tenants", WrongAdmin, None, "unauthorized"),
        case(
            "POST",
            "/admin/v1/tenants",
            WrongAdmin,
            json_body(json!({"slug": "x"})),
            "unauthorized",
        ),
        case(
            "PATCH",
            "/admin/v1/tenants/acme",
            WrongAdmin,
            json_body(json!({})),
            "unauthorized",
        ),
    ];
    // Runs as resources and webhooks.
    let hook = app
        .post(
            "/v1/webhooks",
            &keys.acme,
            &json!({"url": "https://203.0.113.5/hook", "events": ["*"]}),
        )
        .await;
    assert_eq!(hook.status, 201, "{}", hook.text);
    let hook = hook.body["id"].as_str().unwrap().to_string();
    let deliveries = format!("/v1/webhooks/{hook}/deliveries/nothing/retry");
    cases.extend([
        case("GET", "/v1/runs/nothing", Acme, None, "run_not_found"),
        case(
            "POST",
            "/v1/runs/nothing/cancel",
            Acme,
            None,
            "run_not_found",
        ),
        case(
            "GET",
            "/v1/runs/nothing/events",
            Acme,
            None,
            "run_not_found",
        ),
        case("POST", "/v1/webhooks", Acme, not_json(), "invalid_request"),
        case(
            "POST",
            "/v1/webhooks",
            Acme,
            text(),
            "unsupported_media_type",
        ),
        case(
            "POST",
            "/v1/webhooks",
            Acme,
            too_large.clone(),
            "payload_too_large",
        ),
        case(
            "POST",
            "/v1/webhooks",
            Acme,
            json_body(json!({"url": "http://10.0.0.1/", "events": ["*"]})),
            "validation_failed",
        ),
        case(
            "DELETE",
            "/v1/webhooks/nothing",
            Acme,
            None,
            "webhook_not_found",
        ),
        case(
            "GET",
            "/v1/webhooks/nothing/deliveries",
            Acme,
            None,
            "webhook_not_found",
        ),
        case(
            "POST",
            "/v1/webhooks/nothing/deliveries/nothing/retry",
            Acme,
            None,
            "webhook_not_found",
        ),
        case("POST", deliveries, Acme, None, "delivery_not_found"),
    ]);
    // Every V1 operation: an unknown key, and a key over its rate limit.
    let hook_body = || json_body(json!({"url": "https://203.0.113.5/", "events": ["*"]}));
    let v1: [(&str, &str, Body); 19] = [
        ("GET", "/v1/agents", None),
        ("GET", "/v1/agents/echo", None),
        ("POST", "/v1/agents/echo/run", run()),
        ("GET", "/v1/agents/echo/runs", None),
        ("GET", "/v1/agents/echo/versions", None),
        ("POST", "/v1/chat", chat("llama-3.1-8b")),
        ("POST", "/v1/chat/stream", chat("llama-3.1-8b")),
        ("GET", "/v1/usage", None),
        ("GET", "/v1/api-keys", None),
        ("POST", "/v1/api-keys", json_body(json!({"name": "k"}))),
        ("DELETE", "/v1/api-keys/some-key", None),
        ("GET", "/v1/runs/some-run", None),
        ("POST", "/v1/runs/some-run/cancel", None),
        ("GET", "/v1/runs/some-run/events", None),
        ("GET", "/v1/webhooks", None),
        ("POST", "/v1/webhooks", hook_body()),
        ("DELETE", "/v1/webhooks/some-hook", None),
        ("GET", "/v1/webhooks/some-hook/deliveries", None),
        ("POST", "/v1/webhooks/some-hook/deliveries/some/retry", None),
    ];
    for (method, path, body) in v1 {
        cases.push(case(method, path, Unknown, body.clone(), "unauthorized"));
        cases.push(case(method, path, Throttled, body, "rate_limited"));
    }
    for c in &cases {
        check(&app, &keys, c).await;
    }
}
