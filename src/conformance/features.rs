//! The additive features a deployment may declare in its spec beyond the document: runs by id,
//! cancel, `Idempotency-Key`, webhooks, background runs, a run's events, agent versions. Each
//! is checked when declared, else skipped as such.

use serde_json::json;

use super::{Auth, Ctx};

const GROUP: &str = "features";

/// A run id no deployment holds (a UUIDv7 of now, never issued).
fn unknown_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub async fn check(ctx: &mut Ctx) {
    let agent = ctx.agent.clone().expect("an agent was chosen").name;
    let f = ctx.features.clone();
    let undeclared = |what: &str| format!("the deployment's spec declares no {what}");

    // A finished run, for the by-id and cancel checks.
    let mut run = None;
    if f.run_by_id {
        ctx.start(GROUP, "run_by_id");
        run = ctx.run_agent(Auth::A, &agent).await;
        if let Some(r) = &run {
            let id = r.body["id"].as_str().unwrap_or_default().to_string();
            if let Some(got) = ctx.get(&format!("/v1/runs/{id}"), Auth::A).await
                && ctx.expect_status(&got, 200)
            {
                for field in [
                    "id",
                    "agent_id",
                    "status",
                    "tokens_used",
                    "started_at",
                    "finished_at",
                    "output",
                    "error",
                ] {
                    ctx.expect(
                        &format!("/{field}"),
                        r.body[field].clone(),
                        got.body[field].clone(),
                        "the run by id is the run as it was answered",
                    );
                }
                ctx.expect(
                    "/agent_name",
                    json!(agent),
                    got.body["agent_name"].clone(),
                    "the run by id names its agent",
                );
            }
        }
        let reply = ctx
            .get(&format!("/v1/runs/{}", unknown_id()), Auth::A)
            .await;
        ctx.expect_error(reply.as_ref(), 404, "run_not_found", "an unknown run");
        ctx.finish();
    } else {
        ctx.skip(GROUP, "run_by_id", undeclared("GET /v1/runs/{id}"));
    }

    if f.cancel {
        ctx.start(GROUP, "cancel");
        if run.is_none() {
            run = ctx.run_agent(Auth::A, &agent).await;
        }
        if let Some(r) = &run {
            let id = r.body["id"].as_str().unwrap_or_default().to_string();
            let reply = ctx
                .post(&format!("/v1/runs/{id}/cancel"), Auth::A, &json!({}))
                .await;
            ctx.expect_error(
                reply.as_ref(),
                409,
                "run_finished",
                "cancelling a finished run",
            );
        }
        if let Some(c) = ctx
            .post(
                &format!("/v1/runs/{}/cancel", unknown_id()),
                Auth::A,
                &json!({}),
            )
            .await
        {
            ctx.expect_status(&c, 404);
        }
        ctx.finish();
    } else {
        ctx.skip(GROUP, "cancel", undeclared("POST /v1/runs/{id}/cancel"));
    }

    if f.idempotency {
        ctx.start(GROUP, "idempotency_key");
        let key = format!("ares-conformance-{}", unknown_id());
        let path = format!("/v1/agents/{agent}/run");
        let input = super::example_input();
        let first = ctx
            .send(
                "POST",
                &path,
                Auth::A,
                Some(&input),
                &[("idempotency-key", &key)],
            )
            .await;
        let again = ctx
            .send(
                "POST",
                &path,
                Auth::A,
                Some(&input),
                &[("idempotency-key", &key)],
            )
            .await;
        if let (Some(first), Some(again)) = (first, again)
            && ctx.expect_status(&first, 200)
            && ctx.expect_status(&again, 200)
        {
            ctx.expect(
                "/id",
                first.body["id"].clone(),
                again.body["id"].clone(),
                "a repeat answers the first run",
            );
            ctx.expect(
                "",
                json!("Idempotent-Replayed: true"),
                json!(format!(
                    "Idempotent-Replayed: {}",
                    again.header("idempotent-replayed").unwrap_or("(none)")
                )),
                "a repeat says it is one",
            );
        }
        let mut other = input.clone();
        other["input"]["message"] = json!("another body under the same key");
        let r = ctx
            .send(
                "POST",
                &path,
                Auth::A,
                Some(&other),
                &[("idempotency-key", &key)],
            )
            .await;
        ctx.expect_error(
            r.as_ref(),
            422,
            "idempotency_key_reused",
            "the same key with another body",
        );
        ctx.finish();
    } else {
        ctx.skip(
            GROUP,
            "idempotency_key",
            undeclared("Idempotency-Key header on runAgent"),
        );
    }

    if f.webhooks {
        ctx.start(GROUP, "webhooks");
        // A documentation address (TEST-NET-1): public, never routed, never delivered to.
        let body = json!({"url": "https://192.0.2.1/ares-conformance", "events": ["run.completed"], "description": "ares conformance"});
        if let Some(r) = ctx.post("/v1/webhooks", Auth::A, &body).await
            && ctx.expect_status(&r, 201)
        {
            let id = r.body["id"].as_str().unwrap_or_default().to_string();
            let secret = r.body["secret"].as_str().unwrap_or_default().to_string();
            ctx.remember_secret(&secret);
            ctx.webhook_created(&id);
            if let Some(l) = ctx.get("/v1/webhooks", Auth::A).await
                && ctx.expect_status(&l, 200)
            {
                let listed: Vec<_> = l.body["webhooks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|w| w["id"].clone())
                    .collect();
                ctx.ensure(
                    listed.contains(&json!(id)),
                    "/webhooks",
                    json!(format!("the webhook {id}")),
                    json!(listed),
                    "a registered webhook is listed",
                );
                ctx.ensure(
                    secret.is_empty() || !l.text.contains(&secret),
                    "/webhooks",
                    json!("no signing secret"),
                    json!("the secret"),
                    "a webhook's secret is never listed",
                );
            }
            if let Some(d) = ctx
                .get(&format!("/v1/webhooks/{id}/deliveries"), Auth::A)
                .await
            {
                ctx.expect_status(&d, 200);
            }
            if let Some(d) = ctx
                .send("DELETE", &format!("/v1/webhooks/{id}"), Auth::A, None, &[])
                .await
                && ctx.expect_status(&d, 204)
            {
                ctx.webhook_deleted(&id);
                if let Some(again) = ctx
                    .send("DELETE", &format!("/v1/webhooks/{id}"), Auth::A, None, &[])
                    .await
                {
                    ctx.expect_status(&again, 404);
                }
            }
        }
        ctx.finish();
    } else {
        ctx.skip(
            GROUP,
            "webhooks",
            undeclared("POST and DELETE /v1/webhooks"),
        );
    }

    if f.background && f.run_by_id {
        ctx.start(GROUP, "background_run");
        let body = json!({"input": {"message": "A background run of the conformance kit."}});
        let path = format!("/v1/agents/{agent}/run");
        if let Some(r) = ctx
            .send(
                "POST",
                &path,
                Auth::A,
                Some(&body),
                &[("prefer", "respond-async")],
            )
            .await
            && ctx.expect_status(&r, 202)
        {
            let id = r.body["id"].as_str().unwrap_or_default().to_string();
            ctx.expect(
                "/headers/location",
                json!(format!("/v1/runs/{id}")),
                json!(r.header("location")),
                "a background run is found at its Location",
            );
            if let Some(got) = ctx.get(&format!("/v1/runs/{id}"), Auth::A).await
                && ctx.expect_status(&got, 200)
            {
                ctx.expect(
                    "/id",
                    json!(id),
                    got.body["id"].clone(),
                    "the run at its Location",
                );
            }
        }
        ctx.finish();
    } else {
        ctx.skip(
            GROUP,
            "background_run",
            undeclared("Prefer: respond-async on runAgent with GET /v1/runs/{id}"),
        );
    }

    if f.run_events {
        ctx.start(GROUP, "run_events");
        if run.is_none() {
            run = ctx.run_agent(Auth::A, &agent).await;
        }
        if let Some(r) = &run {
            let id = r.body["id"].as_str().unwrap_or_default().to_string();
            if let Some(e) = ctx.get(&format!("/v1/runs/{id}/events"), Auth::A).await
                && ctx.expect_status(&e, 200)
            {
                run_events(ctx, &e.text, &id, &r.body["status"]);
            }
        }
        ctx.finish();
    } else {
        ctx.skip(GROUP, "run_events", undeclared("GET /v1/runs/{id}/events"));
    }

    if f.versions {
        ctx.start(GROUP, "agent_versions");
        let current = match ctx.get(&format!("/v1/agents/{agent}"), Auth::A).await {
            Some(a) if ctx.expect_status(&a, 200) => a.body["version"].clone(),
            _ => serde_json::Value::Null,
        };
        // A deployment records what it serves in the background: give it a moment.
        let mut listed = Vec::new();
        for _ in 0..20 {
            if let Some(v) = ctx
                .get(&format!("/v1/agents/{agent}/versions"), Auth::A)
                .await
                && ctx.expect_status(&v, 200)
            {
                listed = v.body["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| x["version"].clone())
                    .collect();
            }
            if current.is_null() || listed.contains(&current) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        ctx.ensure(
            current.is_null() || listed.contains(&current),
            "/versions",
            json!(format!("the version served now, {current}")),
            json!(listed),
            "the agent's version is among its versions",
        );
        let reply = ctx
            .get(&format!("/v1/agents/{}/versions", unknown_id()), Auth::A)
            .await;
        ctx.expect_error(
            reply.as_ref(),
            404,
            "agent_not_found",
            "the versions of an unknown agent",
        );
        ctx.finish();
    } else {
        ctx.skip(
            GROUP,
            "agent_versions",
            undeclared("GET /v1/agents/{name}/versions"),
        );
    }
}

/// A finished run's events: each with an `id:`, ids increasing, the last an `event: run`
/// whose data is the run's final record.
fn run_events(ctx: &mut Ctx, text: &str, id: &str, status: &serde_json::Value) {
    let mut events: Vec<(Option<u64>, Option<String>, serde_json::Value)> = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let (mut eid, mut name, mut data) = (None, None, String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                eid = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        events.push((eid, name, serde_json::from_str(&data).unwrap_or_default()));
    }
    let ids: Vec<Option<u64>> = events.iter().map(|e| e.0).collect();
    ctx.ensure(
        !ids.is_empty() && ids.iter().all(Option::is_some) && ids.windows(2).all(|w| w[0] < w[1]),
        "/events",
        json!("ids that increase"),
        json!(ids),
        "every event of a run has an id, and they increase",
    );
    let last = events.last();
    ctx.expect(
        "/events/-1/event",
        json!("run"),
        json!(last.and_then(|e| e.1.clone())),
        "the last event is the run's final record",
    );
    if let Some((_, _, data)) = last {
        ctx.expect(
            "/events/-1/data/run/id",
            json!(id),
            data["run"]["id"].clone(),
            "the run's own record",
        );
        ctx.expect(
            "/events/-1/data/run/status",
            status.clone(),
            data["run"]["status"].clone(),
            "the run's final status",
        );
    }
}
