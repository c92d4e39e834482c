//! Snapshots of every endpoint's success and error bodies, ids and times redacted.
//! `CI=true` never writes snapshots: a change is reviewed and committed by a person.

use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Reply, TestApp, sse_events};

/// Fields whose values change from run to run.
const VOLATILE: &[&str] = &[
    "id",
    "agent_id",
    "key",
    "secret",
    "request_id",
    "prefix",
    "created_at",
    "started_at",
    "finished_at",
    "last_run",
    "last_used",
    "expires_at",
    "period_start",
    "period_end",
    "date",
    "duration_ms",
];

/// Replaces RFC 3339 timestamps inside a text (`2026-12-01T00:00:00Z`) with `[timestamp]`.
fn redact_times(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let is_stamp = b.len() >= i + 20
            && b[i..i + 4].iter().all(u8::is_ascii_digit)
            && b[i + 4] == b'-'
            && b[i + 10] == b'T'
            && b[i + 13] == b':';
        if is_stamp {
            let mut j = i + 19;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                j += 1;
            }
            if j < b.len() && b[j] == b'Z' {
                j += 1;
            }
            out.push_str("[timestamp]");
            i = j;
        } else {
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn redact(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let v = if VOLATILE.contains(&k.as_str()) && !v.is_null() {
                        json!(format!("[{k}]"))
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        Value::String(s) => Value::String(redact_times(s)),
        other => other.clone(),
    }
}

fn shot(r: &Reply) -> Value {
    json!({"status": r.status, "body": redact(&r.body)})
}

#[tokio::test]
async fn every_endpoint_success_and_error_body() {
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
        shot(&app.run_agent(&key, "echo", json!({"message": "m"})).await)
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
