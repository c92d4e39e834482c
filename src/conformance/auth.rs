//! Authentication: missing, malformed, unknown and revoked keys are all 401 with one body; a
//! created key works at once and its secret is never listed; a revoked key is refused on the
//! very next request by the instance that revoked it, and by every instance of a deployment
//! within [`REVOCATION_REACH`].

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::spec::Reply;
use super::{Auth, Ctx};

/// How soon every instance of a deployment refuses a revoked key (the instance that revoked it
/// refuses the next request; behind a balancer the kit cannot tell which one answers).
const REVOCATION_REACH: Duration = Duration::from_millis(100);

/// The shape of a body: its keys, recursively, with the type of each leaf.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("boolean"),
        Value::Null => Value::Null,
    }
}

/// A refusal: 401, the error body, code `unauthorized` (docs/errors.md) like the first refusal.
fn refused(ctx: &mut Ctx, r: &Reply, first: &Option<Reply>, what: &str) {
    if !ctx.expect_status(r, 401) {
        // A body that is not an error at all says more than the status alone.
        if r.body.get("error").is_none() {
            ctx.fail(super::Failure::new(
                "/error",
                json!("the error body"),
                json!(super::report::clip(&r.text)),
                format!("{what} is refused with the error body"),
            ));
        }
        return;
    }
    ctx.expect(
        "/error/code",
        json!("unauthorized"),
        r.body["error"]["code"].clone(),
        &format!("{what}: code"),
    );
    if let Some(f) = first {
        ctx.expect(
            "",
            shape(&f.body),
            shape(&r.body),
            &format!("{what}: the same body shape as a missing key"),
        );
        ctx.expect(
            "/error/message",
            f.body["error"]["message"].clone(),
            r.body["error"]["message"].clone(),
            &format!("{what}: the same message as a missing key (nothing told apart)"),
        );
    }
}

/// A key the deployment cannot know: well formed, random.
fn unknown_key() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let tail: String = (0..43)
        .map(|_| {
            let c = rng.random_range(0..62u8);
            (match c {
                0..=9 => b'0' + c,
                10..=35 => b'a' + c - 10,
                _ => b'A' + c - 36,
            }) as char
        })
        .collect();
    format!("ares_{tail}")
}

pub async fn check(ctx: &mut Ctx) {
    ctx.start("auth", "refusals_alike");
    let first = ctx.get("/v1/agents", Auth::None).await;
    if let Some(r) = &first {
        refused(ctx, r, &None, "a missing key");
    }
    let unknown = unknown_key();
    ctx.remember_secret(&unknown);
    let cases = [
        (
            Auth::Header("malformed key (no Bearer)", ctx_key_text()),
            "a header without Bearer",
        ),
        (
            Auth::Header("malformed key (not ares_)", "Bearer not-a-key".into()),
            "a malformed key",
        ),
        (
            Auth::Header("empty bearer", "Bearer ".into()),
            "an empty bearer",
        ),
        (Auth::Key("unknown key", unknown), "an unknown key"),
    ];
    for (auth, what) in cases {
        for path in ["/v1/agents", "/v1/usage", "/v1/api-keys"] {
            if let Some(r) = ctx.get(path, auth.clone()).await {
                refused(ctx, &r, &first, what);
            }
        }
    }
    ctx.finish();

    if let Some(reason) = ctx.destructive_refused() {
        for name in [
            "created_key_usable",
            "secret_never_listed",
            "revoked_key_refused",
        ] {
            ctx.skip("auth", name, reason.clone());
        }
        return;
    }

    ctx.start("auth", "created_key_usable");
    let created = ctx.create_key(Auth::A, "ares-conformance").await;
    if let Some((_, secret)) = &created
        && let Some(r) = ctx
            .get("/v1/agents", Auth::Key("created key", secret.clone()))
            .await
    {
        ctx.expect_status(&r, 200);
    }
    ctx.finish();
    let Some((id, secret)) = created else {
        ctx.skip("auth", "secret_never_listed", "no key was created");
        ctx.skip("auth", "revoked_key_refused", "no key was created");
        return;
    };

    ctx.start("auth", "secret_never_listed");
    if let Some(r) = ctx.get("/v1/api-keys", Auth::A).await
        && ctx.expect_status(&r, 200)
    {
        let keys = r.body["keys"].as_array().cloned().unwrap_or_default();
        match keys.iter().position(|k| k["id"] == json!(id)) {
            Some(i) => {
                let prefix: String = secret.chars().take(9).collect();
                ctx.expect(
                    &format!("/keys/{i}/prefix"),
                    json!(prefix),
                    keys[i]["prefix"].clone(),
                    "the prefix is the secret's first 9 characters",
                );
                ctx.expect(
                    &format!("/keys/{i}/name"),
                    json!("ares-conformance"),
                    keys[i]["name"].clone(),
                    "the key's name",
                );
            }
            None => {
                ctx.fail(super::Failure::new(
                    "/keys",
                    json!(format!("a key with id {id}")),
                    json!("none"),
                    "a created key is listed".into(),
                ));
            }
        }
        ctx.ensure(
            !r.text.contains(&secret),
            "/keys",
            json!("no secret in the list"),
            json!("the created key's secret"),
            "a key's secret is never listed",
        );
    }
    ctx.finish();

    ctx.start("auth", "revoked_key_refused");
    if let Some(r) = ctx
        .send("DELETE", &format!("/v1/api-keys/{id}"), Auth::A, None, &[])
        .await
        && ctx.expect_status(&r, 204)
    {
        ctx.key_revoked(&id);
        let revoked = Instant::now();
        loop {
            let Some(r) = ctx
                .get("/v1/agents", Auth::Key("revoked key", secret.clone()))
                .await
            else {
                break;
            };
            if r.status == 200 && revoked.elapsed() < REVOCATION_REACH {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            refused(ctx, &r, &first, "a revoked key");
            break;
        }
        if let Some(r) = ctx.get("/v1/api-keys", Auth::A).await {
            let ids: Vec<Value> = r.body["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|k| k["id"].clone())
                .collect();
            ctx.ensure(
                !ids.contains(&json!(id)),
                "/keys",
                json!(format!("no key with id {id}")),
                json!(ids),
                "a revoked key is not listed",
            );
        }
        let reply = ctx
            .send("DELETE", &format!("/v1/api-keys/{id}"), Auth::A, None, &[])
            .await;
        ctx.expect_error(reply.as_ref(), 404, "api_key_not_found", "a second revoke");
    }
    ctx.finish();
}

/// A header value that is a key-looking token without the `Bearer` scheme.
fn ctx_key_text() -> String {
    "ares_notbearer0000000000000000000000000000".to_string()
}
