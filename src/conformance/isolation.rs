//! Tenant isolation, with another tenant's key (`--key-b`): none of B's runs or keys is visible
//! to A or touchable by A; each is `404`, as if it did not exist.

use serde_json::{Value, json};

use super::{Auth, Ctx};

const GROUP: &str = "isolation";
const CHECKS: [&str; 5] = [
    "distinct_tenants",
    "runs_list",
    "run_by_id",
    "keys_list",
    "delete_other_tenants_key",
];

fn ids(v: &Value, field: &str) -> Vec<Value> {
    v[field]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["id"].clone())
        .collect()
}

pub async fn check(ctx: &mut Ctx) {
    if !ctx.has_b() {
        for name in CHECKS {
            ctx.skip(GROUP, name, "needs --key-b, a key of another tenant");
        }
        return;
    }
    ctx.start(GROUP, "distinct_tenants");
    let a_keys = ctx.get("/v1/api-keys", Auth::A).await;
    let b_keys = ctx.get("/v1/api-keys", Auth::B).await;
    let (Some(a_keys), Some(b_keys)) = (a_keys, b_keys) else {
        return ctx.finish();
    };
    ctx.expect_status(&a_keys, 200);
    ctx.expect_status(&b_keys, 200);
    let (a_ids, b_ids) = (ids(&a_keys.body, "keys"), ids(&b_keys.body, "keys"));
    let shared: Vec<&Value> = a_ids.iter().filter(|i| b_ids.contains(i)).collect();
    let distinct = shared.is_empty() && !b_ids.is_empty();
    ctx.ensure(
        distinct,
        "/keys",
        json!("B's keys, none of them A's"),
        json!(b_ids),
        "--key and --key-b are keys of two tenants",
    );
    ctx.finish();
    if !distinct {
        for name in &CHECKS[1..] {
            ctx.skip(GROUP, name, "--key and --key-b are not keys of two tenants");
        }
        return;
    }

    // A run of B, by an agent of B (the first listed).
    ctx.start(GROUP, "runs_list");
    let mut b_run: Option<(String, String)> = None;
    if let Some(r) = ctx.get("/v1/agents?per_page=100", Auth::B).await
        && ctx.expect_status(&r, 200)
    {
        let names: Vec<String> = r.body["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["name"].as_str().map(String::from))
            .collect();
        let mine = ctx.agent.clone().map(|a| a.name);
        // An agent of the same name in both tenants makes the listing check sharpest.
        let name = names
            .iter()
            .find(|n| Some(*n) == mine.as_ref())
            .or(names.first())
            .cloned();
        match name {
            Some(name) => {
                let input = super::example_input();
                if let Some(run) = ctx
                    .post(&format!("/v1/agents/{name}/run"), Auth::B, &input)
                    .await
                    && ctx.expect_status(&run, 200)
                {
                    b_run = run.body["id"]
                        .as_str()
                        .map(|id| (name.clone(), id.to_string()));
                }
            }
            None => ctx.fail(super::Failure::new(
                "/agents",
                json!("an agent of B"),
                json!([]),
                "tenant B has an agent to run".into(),
            )),
        }
    }
    if let Some((name, id)) = &b_run
        && let Some(r) = ctx
            .get(&format!("/v1/agents/{name}/runs?per_page=100"), Auth::A)
            .await
    {
        if r.status == 200 {
            let listed = ids(&r.body, "runs");
            if let Some(i) = listed.iter().position(|x| x == &json!(id)) {
                ctx.fail(super::Failure::new(
                    &format!("/runs/{i}/id"),
                    json!("none of B's runs"),
                    json!(id),
                    "A's run history lists a run of B".into(),
                ));
            }
        } else {
            ctx.expect_status(&r, 404);
        }
    }
    ctx.finish();

    if !ctx.features.run_by_id {
        ctx.skip(
            GROUP,
            "run_by_id",
            "the deployment's spec declares no GET /v1/runs/{id}",
        );
    } else if let Some((_, id)) = &b_run {
        ctx.start(GROUP, "run_by_id");
        if let Some(r) = ctx.get(&format!("/v1/runs/{id}"), Auth::A).await
            && !ctx.expect_status(&r, 404)
        {
            ctx.expect(
                "/id",
                json!(null),
                r.body["id"].clone(),
                "B's run is not A's to read",
            );
        }
        if ctx.features.cancel
            && let Some(r) = ctx
                .post(&format!("/v1/runs/{id}/cancel"), Auth::A, &json!({}))
                .await
        {
            ctx.expect_status(&r, 404);
        }
        ctx.finish();
    } else {
        ctx.skip(GROUP, "run_by_id", "B made no run");
    }

    ctx.start(GROUP, "keys_list");
    if let Some(r) = ctx.get("/v1/api-keys", Auth::A).await {
        for (i, id) in ids(&r.body, "keys").iter().enumerate() {
            ctx.ensure(
                !b_ids.contains(id),
                &format!("/keys/{i}/id"),
                json!("none of B's keys"),
                id.clone(),
                "A's key list holds a key of B",
            );
        }
    }
    ctx.finish();

    if let Some(reason) = ctx.destructive_refused() {
        ctx.skip(GROUP, "delete_other_tenants_key", reason);
        return;
    }
    ctx.start(GROUP, "delete_other_tenants_key");
    if let Some((id, _)) = ctx.create_key(Auth::B, "ares-conformance-isolation").await {
        let reply = ctx
            .send("DELETE", &format!("/v1/api-keys/{id}"), Auth::A, None, &[])
            .await;
        ctx.expect_error(
            reply.as_ref(),
            404,
            "api_key_not_found",
            "another tenant's key is not found",
        );
        if let Some(r) = ctx.get("/v1/api-keys", Auth::B).await {
            let listed = ids(&r.body, "keys");
            ctx.ensure(
                listed.contains(&json!(id)),
                "/keys",
                json!(format!("B's key {id}, still live")),
                json!(listed),
                "A's delete left B's key alone",
            );
        }
    }
    ctx.finish();
}
