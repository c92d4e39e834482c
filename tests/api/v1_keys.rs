//! `/v1/api-keys`: listing, creation, expiry and revocation.

use ares::engine::ManualClock;
use serde_json::{Value, json};

use crate::helpers::TestApp;

#[tokio::test]
async fn the_first_key_is_listed_without_its_secret() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let r = app.list_keys(&acme).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let keys = r.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    let fields: Vec<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "id",
            "name",
            "prefix",
            "created_at",
            "expires_at",
            "last_used"
        ]
    );
    assert_eq!(k["prefix"], &acme[..9]);
    assert_eq!(k["expires_at"], Value::Null);
    assert!(
        !r.text.contains(&acme[9..]),
        "the secret never appears after creation"
    );
}

#[tokio::test]
async fn created_keys_work_and_revoked_ones_stop_at_once() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let r = app
        .create_key(
            &acme,
            json!({"name": "mobile-app-key", "expires_in_days": 365}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let fields: Vec<&str> = r
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, ["key", "secret"]);
    let id = r.body["key"].as_str().unwrap().to_string();
    let secret = r.body["secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("ares_") && secret.len() >= 5 + 43,
        "{secret}"
    );
    assert_eq!(app.usage(&secret).await.status, 200);
    let listed = app.list_keys(&acme).await;
    let new = listed.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(new["name"], "mobile-app-key");
    let expires: chrono::DateTime<chrono::Utc> =
        new["expires_at"].as_str().unwrap().parse().unwrap();
    let days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((364.9..=365.0).contains(&days), "{days}");

    let revoked = app.revoke_key(&acme, &id).await;
    assert_eq!(revoked.status, 204);
    assert_eq!(revoked.text, "");
    let r = app.usage(&secret).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "unauthorized");
    assert_eq!(
        app.list_keys(&acme).await.body["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let again = app.revoke_key(&acme, &id).await;
    assert_eq!(again.status, 404);
    assert_eq!(again.error_code(), "api_key_not_found");
}

#[tokio::test]
async fn keys_of_another_tenant_are_not_found_and_untouched() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    let globex_key_id = app.list_keys(&globex).await.body["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app.revoke_key(&acme, &globex_key_id).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "api_key_not_found");
    assert_eq!(
        app.usage(&globex).await.status,
        200,
        "globex's key still works"
    );
    assert_eq!(
        app.list_keys(&acme).await.body["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn expired_keys_are_refused() {
    let clock = ManualClock::at(chrono::Utc::now());
    let app = TestApp::spawn_with_clock(clock.clone()).await;
    let acme = app.tenant("acme").await;
    let r = app
        .create_key(&acme, json!({"name": "day", "expires_in_days": 1}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let day = r.body["secret"].as_str().unwrap().to_string();
    clock.advance(chrono::Duration::hours(23));
    assert_eq!(
        app.usage(&day).await.status,
        200,
        "valid before its day ends"
    );
    clock.advance(chrono::Duration::hours(2));
    let r = app.usage(&day).await;
    assert_eq!(r.status, 401, "expired after a day: {}", r.text);
    assert_eq!(r.error_code(), "unauthorized");
    assert_eq!(
        app.usage(&acme).await.status,
        200,
        "a key without expiry lives on"
    );
}

#[tokio::test]
async fn last_used_is_recorded() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    assert_eq!(
        app.list_keys(&acme).await.body["keys"][0]["last_used"],
        Value::Null
    );
    app.flush_usage().await;
    let used = app.list_keys(&acme).await.body["keys"][0]["last_used"].clone();
    assert!(used.as_str().is_some(), "{used}");
}

/// JSON Schema counts `30.0` as an integer: a whole number written with a fraction is taken.
#[tokio::test]
async fn a_whole_number_written_with_a_fraction_is_an_integer() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let r = app
        .create_key(&acme, json!({"name": "x", "expires_in_days": 30.0}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let listed = app.list_keys(&acme).await;
    let key = listed.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "x")
        .expect("the key is listed")
        .clone();
    let time =
        |v: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let lifetime = time(&key["expires_at"]) - time(&key["created_at"]);
    assert!(
        (lifetime - chrono::Duration::days(30)).num_seconds().abs() <= 60,
        "{lifetime}"
    );
}

#[tokio::test]
async fn bad_key_requests_name_the_field() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (
            json!({"name": "x", "expires_in_days": 0}),
            "expires_in_days",
        ),
        (
            json!({"name": "x", "expires_in_days": "soon"}),
            "expires_in_days",
        ),
        (
            json!({"name": "x", "expires_in_days": 1.5}),
            "expires_in_days",
        ),
        (json!({}), "name"),
    ] {
        let r = app.create_key(&acme, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert_eq!(r.error_code(), "invalid_request");
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(field),
            "{body}: {}",
            r.text
        );
    }
}
