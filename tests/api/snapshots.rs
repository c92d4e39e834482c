//! Snapshots of every endpoint's success and error bodies. insta redacts ids and times once
//! each has been checked for its shape (a UUID, an RFC 3339 time, ...), so a field of the wrong
//! shape still fails. `CI=true` never writes snapshots: a change is reviewed and committed by a
//! person.

use insta::internals::Content;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Reply, TestApp, sse_events};

/// Whether a value has the shape its field must have.
type Shape = fn(&Content) -> bool;

/// Fields whose values change from run to run, at any depth, and the shape each must have.
const VOLATILE: &[(&str, Shape)] = &[
    ("id", is_uuid),
    ("agent_id", is_uuid),
    ("key", is_uuid),
    ("request_id", is_uuid),
    ("secret", is_secret),
    ("prefix", is_key_prefix),
    ("created_at", is_time),
    ("started_at", is_time),
    ("finished_at", is_time),
    ("last_run", is_time),
    ("first_served_at", is_time),
    ("last_used", is_time),
    ("expires_at", is_time),
    ("period_start", is_time),
    ("period_end", is_time),
    ("date", is_date),
    ("duration_ms", |v| v.as_u64().is_some()),
];

fn is_uuid(v: &Content) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 36 && uuid::Uuid::parse_str(s).is_ok())
}

fn is_time(v: &Content) -> bool {
    v.as_str().is_some_and(is_rfc3339)
}

fn is_rfc3339(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

fn is_date(v: &Content) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok())
}

/// `ares_` and `len` letters or digits.
fn is_key_text(v: &Content, len: usize) -> bool {
    v.as_str()
        .and_then(|s| s.strip_prefix("ares_"))
        .is_some_and(|rest| rest.len() == len && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn is_secret(v: &Content) -> bool {
    is_key_text(v, 43)
}

fn is_key_prefix(v: &Content) -> bool {
    is_key_text(v, 4)
}

/// Settings that replace each volatile field with `[field]` after checking its shape; a null
/// stays null.
fn redactions() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    for &(field, shape) in VOLATILE {
        settings.add_redaction(
            &format!(".**.{field}"),
            insta::dynamic_redaction(move |value, path| {
                if value.is_nil() {
                    return value;
                }
                assert!(shape(&value), "{path} has the wrong shape: {value:?}");
                Content::from(format!("[{field}]"))
            }),
        );
    }
    settings
}

/// A message ending in an RFC 3339 time, the time replaced with `[timestamp]`.
fn redact_trailing_time(value: Content, path: insta::internals::ContentPath<'_>) -> String {
    let message = value.as_str().unwrap_or_default();
    let (text, time) = message.rsplit_once(' ').unwrap_or_default();
    assert!(
        is_rfc3339(time),
        "{path} does not end in a time: {message:?}"
    );
    format!("{text} [timestamp]")
}

fn shot(r: &Reply) -> Value {
    json!({"status": r.status, "body": r.body})
}

#[tokio::test]
async fn every_endpoint_success_and_error_body() {
    let _redactions = redactions().bind_to_scope();
    let app = TestApp::spawn().await;
    let created = app
        .post(
            "/admin/v1/tenants",
            ADMIN_TOKEN,
            &json!({"slug": "acme", "name": "Acme", "quota_runs": 3}),
        )
        .await;
    let key = created.body["api_key"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let run_input = json!({"message": "Evaluate this transaction", "context": {"amount": 15000, "currency": "USD"}});
    let chat = json!({"messages": [{"role": "user", "content": "Summarize Q1 revenue trends."}], "model": "llama-3.3-70b"});

    insta::assert_json_snapshot!("admin_create_tenant", shot(&created));
    insta::assert_json_snapshot!(
        "admin_list_tenants",
        shot(&app.get("/admin/v1/tenants", ADMIN_TOKEN).await)
    );
    insta::assert_json_snapshot!(
        "admin_duplicate_tenant",
        shot(
            &app.post("/admin/v1/tenants", ADMIN_TOKEN, &json!({"slug": "acme"}))
                .await
        )
    );

    insta::assert_json_snapshot!(
        "run_agent",
        shot(
            &app.run_agent(&key, "risk-analyzer", run_input.clone())
                .await
        )
    );
    insta::assert_json_snapshot!(
        "run_agent_invalid_input",
        shot(
            &app.run_agent(&key, "strict-input", json!({"message": "x"}))
                .await
        )
    );
    insta::assert_json_snapshot!(
        "run_agent_disabled",
        shot(&app.run_agent(&key, "paused", json!({"message": "x"})).await)
    );
    insta::assert_json_snapshot!(
        "run_agent_not_found",
        shot(&app.run_agent(&key, "nope", json!({"message": "x"})).await)
    );
    insta::assert_json_snapshot!(
        "run_agent_bad_body",
        shot(
            &app.post("/v1/agents/echo/run", &key, &json!({"input": 7}))
                .await
        )
    );

    insta::assert_json_snapshot!(
        "list_agents",
        shot(&app.list_agents(&key, "?per_page=2").await)
    );
    insta::assert_json_snapshot!(
        "list_agents_bad_page",
        shot(&app.list_agents(&key, "?page=0").await)
    );
    insta::assert_json_snapshot!(
        "get_agent",
        shot(&app.get_agent(&key, "risk-analyzer").await)
    );
    insta::assert_json_snapshot!(
        "get_agent_not_found",
        shot(&app.get_agent(&key, "nope").await)
    );
    insta::assert_json_snapshot!(
        "list_runs",
        shot(&app.list_runs(&key, "risk-analyzer", "").await)
    );
    // The background work records the set served as the server starts; recorded here too,
    // so that the listing does not wait for it (the same set: nothing changes).
    app.app.engine.record_served().await.unwrap();
    let versions = "/v1/agents/risk-analyzer/versions";
    // The revision is the last commit that touched the fixture (tested in versions.rs).
    insta::assert_json_snapshot!(
        "list_agent_versions",
        shot(&app.get(versions, &key).await),
        {".body.versions[].source_rev" => "[source_rev]"}
    );

    insta::assert_json_snapshot!("chat", shot(&app.chat(&key, chat.clone()).await));
    insta::assert_json_snapshot!(
        "chat_unknown_model",
        shot(
            &app.chat(
                &key,
                json!({"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"})
            )
            .await
        )
    );
    let stream = app.chat_stream(&key, chat).await;
    insta::assert_json_snapshot!("chat_stream_events", sse_events(&stream.text));

    // The quota is 3 runs: risk-analyzer made one, these make two more.
    for _ in 0..2 {
        assert_eq!(
            app.run_agent(&key, "echo", json!({"message": "m"}))
                .await
                .status,
            200
        );
    }
    insta::assert_json_snapshot!(
        "run_quota_exceeded",
        shot(&app.run_agent(&key, "echo", json!({"message": "m"})).await),
        {".body.error.message" => insta::dynamic_redaction(redact_trailing_time)}
    );

    insta::assert_json_snapshot!(
        "create_key",
        shot(
            &app.create_key(
                &key,
                json!({"name": "mobile-app-key", "expires_in_days": 365})
            )
            .await
        )
    );
    insta::assert_json_snapshot!(
        "create_key_invalid",
        shot(&app.create_key(&key, json!({"name": ""})).await)
    );
    // Key use is written every second; written now, so that the listing shows it whatever
    // the time the test took.
    app.flush_usage().await;
    insta::assert_json_snapshot!("list_keys", shot(&app.list_keys(&key).await));
    insta::assert_json_snapshot!(
        "revoke_key_not_found",
        shot(&app.revoke_key(&key, "nope").await)
    );

    app.flush_usage().await;
    insta::assert_json_snapshot!("usage", shot(&app.usage(&key).await));
    insta::assert_json_snapshot!("unauthorized", shot(&app.usage("ares_not_a_key").await));
    insta::assert_json_snapshot!("no_such_route", shot(&app.get("/v1/nope", &key).await));
}
