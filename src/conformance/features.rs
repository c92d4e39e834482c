//! The additive features a deployment may declare in its spec beyond the document: runs by id,
//! cancel, `Idempotency-Key`, webhooks. Each is checked when declared, else skipped as such.

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
        if let Some(r) = ctx
            .get(&format!("/v1/runs/{}", unknown_id()), Auth::A)
            .await
            && ctx.expect_status(&r, 404)
        {
            ctx.expect(
                "/error/code",
                json!("run_not_found"),
                r.body["error"]["code"].clone(),
                "an unknown run",
            );
        }
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
            if let Some(c) = ctx
                .post(&format!("/v1/runs/{id}/cancel"), Auth::A, &json!({}))
                .await
                && ctx.expect_status(&c, 409)
            {
                ctx.expect(
                    "/error/code",
                    json!("run_finished"),
                    c.body["error"]["code"].clone(),
                    "cancelling a finished run",
                );
            }
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
        if let Some(r) = ctx
            .send(
                "POST",
                &path,
                Auth::A,
                Some(&other),
                &[("idempotency-key", &key)],
            )
            .await
            && ctx.expect_status(&r, 422)
        {
            ctx.expect(
                "/error/code",
                json!("idempotency_key_reused"),
                r.body["error"]["code"].clone(),
                "the same key with another body",
            );
        }
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
}
