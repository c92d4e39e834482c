//! The admin API: tenants and quotas, guarded by the admin token.

use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, JsonBody, TestApp, test_settings};

#[tokio::test]
async fn tenants_are_created_listed_and_updated() {
    let app = TestApp::spawn().await;
    let r = app
        .post(
            "/admin/v1/tenants",
            ADMIN_TOKEN,
            &json!({"slug": "acme", "name": "Acme Corp", "quota_runs": 7}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["tenant"]["slug"], "acme");
    assert_eq!(r.body["tenant"]["name"], "Acme Corp");
    assert_eq!(r.body["tenant"]["quota_runs"], 7);
    assert_eq!(
        r.body["tenant"]["quota_tokens"], 10_000_000,
        "the settings' default"
    );
    assert!(
        r.body["api_key"]["secret"]
            .as_str()
            .unwrap()
            .starts_with("ares_")
    );
    assert!(r.body["api_key"]["key"].is_string());

    let dup = app
        .post("/admin/v1/tenants", ADMIN_TOKEN, &json!({"slug": "acme"}))
        .await;
    assert_eq!(dup.status, 409);
    assert_eq!(dup.error_code(), "conflict");
    let bad = app
        .post(
            "/admin/v1/tenants",
            ADMIN_TOKEN,
            &json!({"slug": "Not Valid"}),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert!(
        bad.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("slug")
    );

    let list = app.get("/admin/v1/tenants", ADMIN_TOKEN).await;
    assert_eq!(list.body["tenants"][0]["slug"], "acme");
    let patched = app
        .send(
            app.client
                .patch(format!("{}/admin/v1/tenants/acme", app.base))
                .bearer_auth(ADMIN_TOKEN)
                .json_body(&json!({"quota_tokens": 99})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.body["quota_tokens"], 99);
    assert_eq!(patched.body["quota_runs"], 7);
    let secret = r.body["api_key"]["secret"].as_str().unwrap();
    assert_eq!(
        app.usage(secret).await.body["quota_tokens"],
        99,
        "new quotas apply at once"
    );
    let missing = app
        .send(
            app.client
                .patch(format!("{}/admin/v1/tenants/nope", app.base))
                .bearer_auth(ADMIN_TOKEN)
                .json_body(&json!({"quota_runs": 1})),
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "tenant_not_found");
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_token_and_nothing_else() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    for token in [acme.as_str(), "wrong", ""] {
        let r = app.get("/admin/v1/tenants", token).await;
        assert_eq!(r.status, 401, "{token}: {}", r.text);
        assert_eq!(r.error_code(), "unauthorized");
    }
    let r = app
        .send(app.client.get(format!("{}/admin/v1/tenants", app.base)))
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "unauthorized");
}

#[tokio::test]
async fn without_a_token_the_admin_api_is_off() {
    let mut settings = test_settings();
    settings.admin_token = None;
    let app = TestApp::spawn_with(settings).await;
    // The admin spec is not served either, so the 404 is not checked against it.
    let r = app
        .send_unchecked(
            app.client
                .get(format!("{}/admin/v1/tenants", app.base))
                .bearer_auth("anything"),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
}
