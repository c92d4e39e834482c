//! Runs as resources: by id, in the background, cancelled, followed, and idempotent.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::upstream::{Reply, Upstream, answer, tool_call};

/// [`crate::hardening::app_with`], and the key of tenant `acme`.
async fn app_with(replies: Vec<Reply>) -> (TestApp, Upstream, String) {
    let (app, upstream) = crate::hardening::app_with(replies).await;
    let key = app.tenant("acme").await;
    (app, upstream, key)
}

fn post(app: &TestApp, path: &str, key: &str, body: &Value) -> reqwest::RequestBuilder {
    app.client
        .post(format!("{}{path}", app.base))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
}

fn run_body(message: &str) -> Value {
    json!({"input": {"message": message}})
}

/// Waits until the run is no longer `running`, at most 10 s, and returns it.
async fn settled(app: &TestApp, key: &str, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let r = app.get(&format!("/v1/runs/{id}"), key).await;
        assert_eq!(r.status, 200, "{}", r.text);
        if r.body["status"] != "running" {
            return r.body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still running: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The events of a run's event stream: `(id, event, data)`.
fn events(text: &str) -> Vec<(u64, String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let (mut id, mut event, mut data) = (0, String::new(), Value::Null);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().unwrap();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data = serde_json::from_str(v.trim()).unwrap();
            }
        }
        out.push((id, event, data));
    }
    out
}

#[tokio::test]
async fn a_run_is_fetched_by_id_with_its_steps_and_only_by_its_tenant() {
    let (app, _upstream, key) = app_with(vec![
        tool_call("calculator", r#"{"expression":"2*21"}"#, 10, 5),
        tool_call("calculator", r#"{"expression":"42+1"}"#, 20, 5),
        answer("43", 30, 5),
    ])
    .await;
    let r = app
        .run_agent(&key, "quick-tools", json!({"message": "compute"}))
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    assert_eq!(r.body["agent_name"], "quick-tools");
    let id = r.body["id"].as_str().unwrap();
    let got = app.get(&format!("/v1/runs/{id}"), &key).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.body, r.body, "the answer and the stored record agree");
    let steps = got.body["steps"].as_array().unwrap();
    let kinds: Vec<&str> = steps.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["model", "tool", "model", "tool", "model"]);
    assert_eq!(steps[1]["name"], "calculator");
    assert_eq!(steps[1]["arguments"], r#"{"expression":"2*21"}"#);
    assert_eq!(steps[1]["result"], "42");
    let tokens: u64 = steps.iter().map(|s| s["tokens"].as_u64().unwrap()).sum();
    assert_eq!(tokens, 75);
    assert_eq!(got.body["tokens_used"], tokens);
    // Listings leave steps out.
    let listed = app.list_runs(&key, "quick-tools", "").await;
    assert!(
        listed.body["runs"][0].get("steps").is_none(),
        "{}",
        listed.text
    );
    assert_eq!(listed.body["runs"][0]["agent_name"], "quick-tools");
    // Another tenant's key finds nothing.
    let other = app.tenant("globex").await;
    let r = app.get(&format!("/v1/runs/{id}"), &other).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "run_not_found");
    assert_eq!(app.get("/v1/runs/no-such-run", &key).await.status, 404);
}

#[tokio::test]
async fn a_background_run_answers_at_once_and_is_found_at_its_location() {
    let (app, _upstream, key) = app_with(vec![Reply::Later(
        Duration::from_millis(500),
        Box::new(answer("later", 10, 5)),
    )])
    .await;
    let r = app
        .send(
            post(&app, "/v1/agents/quick/run", &key, &run_body("hi"))
                .header("prefer", "respond-async"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "running");
    assert_eq!(r.header("preference-applied"), Some("respond-async"));
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/runs/{id}").as_str())
    );
    let done = settled(&app, &key, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["tokens_used"], 15);
    // Without the header, as before: the finished run.
    let (app, _upstream, key) = app_with(vec![answer("now", 1, 1)]).await;
    let r = app
        .send(
            post(&app, "/v1/agents/quick/run", &key, &run_body("hi"))
                .header("prefer", "return=minimal"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "completed");
}

#[tokio::test]
async fn a_cancel_stops_the_model_call_and_settles_the_run() {
    let (app, upstream, key) = app_with(vec![Reply::Hang, answer("fine", 1, 1)]).await;
    let started = app
        .send(
            post(&app, "/v1/agents/quick/run", &key, &run_body("wait"))
                .header("prefer", "respond-async"),
        )
        .await;
    let id = started.body["id"].as_str().unwrap().to_string();
    // The model call is under way.
    let start = Instant::now();
    while upstream.requests().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = Instant::now();
    let r = app
        .post(&format!("/v1/runs/{id}/cancel"), &key, &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "cancelled", "{}", r.text);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "cancelled after {:?}",
        asked.elapsed()
    );
    // The provider's request was dropped, and the prompt it had is counted.
    let waited = Instant::now();
    while !upstream.cancelled() && waited.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(upstream.cancelled(), "the provider's request was closed");
    let prompt: u64 = upstream.requests()[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["content"].as_str().unwrap_or("").len() as u64).div_ceil(4))
        .sum();
    assert!(prompt > 0);
    assert_eq!(r.body["tokens_used"], prompt, "{}", r.text);
    // Again: the same answer; usage counts it once, as a run.
    let again = app
        .post(&format!("/v1/runs/{id}/cancel"), &key, &json!({}))
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["status"], "cancelled");
    let usage = app.usage(&key).await.body;
    assert_eq!(usage["total_runs"], 1);
    assert_eq!(usage["total_tokens"], prompt);
    let report = app.app.engine.check().await.unwrap();
    assert_eq!(report.violations, [], "{:?}", report.violations);
    // A run that completed cannot be cancelled.
    let done = app
        .run_agent(&key, "quick", json!({"message": "now"}))
        .await;
    let done_id = done.body["id"].as_str().unwrap();
    let r = app
        .post(&format!("/v1/runs/{done_id}/cancel"), &key, &json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.error_code(), "run_finished");
}

#[tokio::test]
async fn a_followed_run_resumes_after_its_last_event_without_loss_or_repeat() {
    let slow = |reply| Reply::Later(Duration::from_millis(200), Box::new(reply));
    let (app, _upstream, key) = app_with(vec![
        slow(tool_call("calculator", r#"{"expression":"1+1"}"#, 10, 5)),
        slow(tool_call("calculator", r#"{"expression":"2+2"}"#, 10, 5)),
        slow(answer("4", 10, 5)),
    ])
    .await;
    let started = app
        .send(
            post(&app, "/v1/agents/quick-tools/run", &key, &run_body("go"))
                .header("prefer", "respond-async"),
        )
        .await;
    let id = started.body["id"].as_str().unwrap().to_string();
    let path = format!("{}/v1/runs/{id}/events", app.base);
    // Follow until three events have come, then drop the connection.
    let mut resp = app
        .client
        .get(&path)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut text = String::new();
    while events(&text).len() < 3 {
        let chunk = resp.chunk().await.unwrap().expect("more events");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(resp);
    let first = events(&text);
    let last_id = first.last().unwrap().0;
    let rest = app
        .client
        .get(&path)
        .bearer_auth(&key)
        .header("last-event-id", last_id.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut joined = first.clone();
    joined.extend(events(&rest));
    // The run has ended: a follow from the start replays everything.
    let whole = events(
        &app.client
            .get(&path)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(joined, whole);
    let ids: Vec<u64> = whole.iter().map(|e| e.0).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    let names: Vec<&str> = whole.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(names, ["step", "step", "step", "step", "step", "run"]);
    let end = &whole[5].2["run"];
    assert_eq!(end["status"], "completed");
    assert_eq!(end["steps"].as_array().unwrap().len(), 5);
    assert_eq!(whole[1].2["step"]["kind"], "tool");
    // After the last event there is nothing more.
    let after = app
        .client
        .get(&path)
        .bearer_auth(&key)
        .header("last-event-id", "6")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(events(&after).is_empty(), "{after}");
    let r = app
        .send(
            app.client
                .get(&path)
                .bearer_auth(&key)
                .header("last-event-id", "soon"),
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn a_repeat_with_the_same_idempotency_key_runs_nothing_and_answers_the_first() {
    let (app, upstream, key) = app_with(vec![answer("once", 10, 5), answer("k2", 10, 5)]).await;
    let send = |body: Value, k: &'static str| {
        app.send(post(&app, "/v1/agents/quick/run", &key, &body).header("idempotency-key", k))
    };
    let first = send(run_body("pay the invoice"), "invoice-17").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = send(run_body("pay the invoice"), "invoice-17").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    assert_eq!(upstream.requests().len(), 1, "one model call");
    let usage = app.usage(&key).await.body;
    assert_eq!(
        (usage["total_runs"].clone(), usage["total_tokens"].clone()),
        (json!(1), json!(15))
    );
    // The same key with another body.
    let other = send(run_body("pay it twice"), "invoice-17").await;
    assert_eq!(other.status, 422, "{}", other.text);
    assert_eq!(other.error_code(), "idempotency_key_reused");
    // A first request refused after its key was claimed (no run left in the quota) leaves
    // the key free: once the quota allows, the same key runs.
    let quota = |runs: u64| {
        app.send(
            app.client
                .patch(format!("{}/admin/v1/tenants/acme", app.base))
                .bearer_auth(crate::helpers::ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(json!({"quota_runs": runs}).to_string()),
        )
    };
    assert_eq!(quota(1).await.status, 200);
    let keyed =
        || post(&app, "/v1/agents/quick/run", &key, &run_body("x")).header("idempotency-key", "k2");
    let refused = app.send(keyed()).await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(quota(5).await.status, 200);
    let r = app.send(keyed()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("idempotent-replayed"), None);
    // Too long a key is refused; an empty one is none.
    let long = app
        .send(
            post(&app, "/v1/agents/quick/run", &key, &run_body("x"))
                .header("idempotency-key", "k".repeat(256)),
        )
        .await;
    assert_eq!(long.status, 400, "{}", long.text);
    assert!(long.text.contains("Idempotency-Key"), "{}", long.text);
}

#[tokio::test]
async fn concurrent_repeats_of_one_key_make_one_run() {
    let (app, upstream, key) = app_with(vec![Reply::Later(
        Duration::from_millis(300),
        Box::new(answer("once", 10, 5)),
    )])
    .await;
    let requests = (0..20).map(|_| {
        app.send(
            post(&app, "/v1/agents/quick/run", &key, &run_body("once only"))
                .header("idempotency-key", "batch-9"),
        )
    });
    let answers = futures_util::future::join_all(requests).await;
    let mut ids = std::collections::BTreeSet::new();
    for r in &answers {
        match r.status {
            200 => {
                ids.insert(r.body["id"].as_str().unwrap().to_string());
            }
            409 => assert_eq!(r.error_code(), "idempotency_key_in_use"),
            other => panic!("{other}: {}", r.text),
        }
    }
    assert!(ids.len() <= 1, "{ids:?}");
    assert_eq!(upstream.requests().len(), 1, "one model call");
    let runs = app.list_runs(&key, "quick", "").await.body;
    assert_eq!(runs["total"], 1);
    // Once it has run, a repeat answers it.
    let r = app
        .send(
            post(&app, "/v1/agents/quick/run", &key, &run_body("once only"))
                .header("idempotency-key", "batch-9"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["id"], runs["runs"][0]["id"]);
}

#[tokio::test]
async fn a_chat_with_an_idempotency_key_is_answered_once() {
    let (app, upstream, key) = app_with(vec![answer("hello", 7, 3), answer("again?", 7, 3)]).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "model": "llama-3.3-70b"});
    let send = || app.send(post(&app, "/v1/chat", &key, &body).header("idempotency-key", "chat-1"));
    let first = send().await;
    assert_eq!(first.status, 200, "{}", first.text);
    let again = send().await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    assert_eq!(upstream.requests().len(), 1);
    assert_eq!(app.usage(&key).await.body["total_tokens"], 10);
}
