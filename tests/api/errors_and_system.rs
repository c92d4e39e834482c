//! Authentication failures, routing errors, limits, request ids, and the system endpoints.

use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, TestApp};

#[tokio::test]
async fn every_auth_failure_is_the_same_json_401() {
    let app = TestApp::spawn().await;
    app.tenant("acme").await;
    let url = format!("{}/v1/agents", app.base);
    let requests = [
        app.client.get(&url),
        app.client
            .get(&url)
            .header("authorization", "Basic YWJjOmRlZg=="),
        app.client.get(&url).header("authorization", "Bearer"),
        app.client.get(&url).header("authorization", "Bearer nope"),
        app.client.get(&url).header(
            "authorization",
            "Bearer ares_0000000000000000000000000000000000000000000",
        ),
        app.client.get(&url).bearer_auth(ADMIN_TOKEN),
    ];
    let mut bodies = Vec::new();
    for req in requests {
        let r = app.send(req).await;
        assert_eq!(r.status, 401, "{}", r.text);
        assert_eq!(r.error_code(), "unauthorized");
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
        bodies.push(r.body["error"]["message"].clone());
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "one message for every failure: {bodies:?}"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_error_body() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    for path in ["/v1/nope", "/nope", "/v1/agents/risk-analyzer/nope"] {
        let r = app.get(path, &acme).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text);
        assert_eq!(r.error_code(), "not_found", "{path}");
    }
    let r = app.delete("/v1/usage", &acme).await;
    assert_eq!(r.status, 405, "{}", r.text);
    assert_eq!(r.error_code(), "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    let r = app
        .send(
            app.client
                .put(format!("{}/v1/api-keys", app.base))
                .bearer_auth(&acme),
        )
        .await;
    assert_eq!(r.header("allow"), Some("GET, POST"));
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let big = "x".repeat(1024 * 1024 + 1);
    let r = app
        .post(
            "/v1/chat",
            &acme,
            &json!({"messages": [{"role": "user", "content": big}], "model": "llama-3.1-8b"}),
        )
        .await;
    assert_eq!(r.status, 413, "{}", &r.text[..r.text.len().min(300)]);
    assert_eq!(r.error_code(), "payload_too_large");
    // Also without a Content-Length (chunked).
    let body = json!({"input": {"message": big}}).to_string();
    let stream = futures_util::stream::iter(
        body.into_bytes()
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let req = app
        .client
        .post(format!("{}/v1/agents/echo/run", app.base))
        .bearer_auth(&acme)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream));
    let r = app.send(req).await;
    assert_eq!(r.status, 413, "{}", &r.text[..r.text.len().min(300)]);
    assert_eq!(r.error_code(), "payload_too_large");
}

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_problem() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let req = app
        .client
        .post(format!("{}/v1/agents/echo/run", app.base))
        .bearer_auth(&acme)
        .header("content-type", "application/json")
        .body("{\"input\": ");
    let r = app.send(req).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error_code(), "invalid_request");
    let req = app
        .client
        .post(format!("{}/v1/agents/echo/run", app.base))
        .bearer_auth(&acme)
        .body("input=1");
    let r = app.send(req).await;
    assert!(r.status == 415 || r.status == 400, "{}", r.text);
    r.error_code();
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let r = app
        .send(
            app.client
                .get(format!("{}/v1/usage", app.base))
                .bearer_auth(&acme)
                .header("x-request-id", "trace-42"),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("trace-42"));
    let r = app.get("/v1/usage", &acme).await;
    let id = r.header("x-request-id").unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    let r = app.get("/v1/nope", &acme).await;
    assert_eq!(
        r.body["error"]["request_id"].as_str(),
        r.header("x-request-id")
    );
    let r = app
        .send(app.client.get(format!("{}/healthz", app.base)))
        .await;
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test]
async fn system_endpoints() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    app.run_agent(&acme, "echo", json!({"message": "m"})).await;
    let health = app
        .send(app.client.get(format!("{}/healthz", app.base)))
        .await;
    assert_eq!((health.status, health.text.as_str()), (200, "ok"));
    let ready = app
        .send(app.client.get(format!("{}/readyz", app.base)))
        .await;
    assert_eq!(ready.status, 200);
    let metrics = app
        .send(app.client.get(format!("{}/metrics", app.base)))
        .await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text.contains("ares_http_requests_total{route=\"/v1/agents/{name}/run\",method=\"POST\",status=\"200\"} 1"), "{}", metrics.text);
    assert!(
        metrics
            .text
            .contains("ares_runs_total{status=\"completed\"} 1")
    );
    // The run's start and its settlement, one at a time on an idle server.
    for line in [
        "ares_store_transactions_total 2",
        "ares_store_writes_total 2",
    ] {
        assert!(metrics.text.contains(line), "{line}: {}", metrics.text);
    }
    assert!(
        metrics
            .text
            .contains("ares_http_request_duration_seconds_bucket")
    );
    let spec = app
        .send(app.client.get(format!("{}/openapi.json", app.base)))
        .await;
    assert_eq!(spec.status, 200);
    assert!(
        spec.body["paths"]["/v1/agents"]["get"].is_object(),
        "{}",
        &spec.text[..200]
    );
    let yaml = app
        .send(app.client.get(format!("{}/openapi.yaml", app.base)))
        .await;
    assert!(yaml.text.contains("/v1/agents/{name}/run"));
    assert_eq!(yaml.header("content-type"), Some("application/yaml"));
    // Both editions are what `ares openapi` commits.
    assert_eq!(
        spec.text,
        ares::api::spec::v1(ares::api::spec::Edition::V30).to_string()
    );
    let v31 = app
        .send(app.client.get(format!("{}/openapi-3.1.json", app.base)))
        .await;
    assert_eq!(v31.status, 200);
    assert_eq!(v31.body["openapi"], "3.1.0");
    let v31_yaml = app
        .send(app.client.get(format!("{}/openapi-3.1.yaml", app.base)))
        .await;
    assert_eq!(
        v31_yaml.text,
        std::fs::read_to_string("openapi/v1-3.1.yaml").unwrap()
    );
    let docs = app.send(app.client.get(format!("{}/docs", app.base))).await;
    assert_eq!(docs.status, 200);
    assert!(docs.text.to_lowercase().contains("<html"));
    assert!(
        docs.text.contains("ARES V1 Client API"),
        "the page carries the spec"
    );
    // The reference page lists the tags in the document's order.
    let at = |tag: &str| {
        docs.text
            .find(&format!("{{\"name\":\"{tag}\""))
            .unwrap_or(usize::MAX)
    };
    let order = ["Agents", "Chat", "Usage", "API Keys", "Webhooks"].map(at);
    assert!(order.is_sorted() && order[4] != usize::MAX, "{order:?}");
    for external in ["<link href=\"http", "<script src=\"http"] {
        assert!(
            !docs.text.contains(external),
            "/docs loads nothing from the network ({external})"
        );
    }
}
