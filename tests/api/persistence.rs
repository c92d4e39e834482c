//! Restarting on the same `surrealkv://` directory keeps tenants, keys, runs and usage.

use serde_json::json;

use crate::helpers::{TestApp, test_settings};

#[tokio::test]
async fn a_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings();
    settings.database.url = format!("surrealkv://{}", dir.path().join("db").display());

    let app = TestApp::spawn_with(settings.clone()).await;
    let acme = app.tenant("acme").await;
    let mut run = app
        .run_agent(&acme, "echo", json!({"message": "persist me"}))
        .await
        .body;
    // As listed: without its steps.
    run.as_object_mut().unwrap().remove("steps");
    let extra = app.create_key(&acme, json!({"name": "second"})).await.body["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let before = app.usage(&acme).await.body;
    let agent_before = app.get_agent(&acme, "echo").await.body;
    app.stop().await;

    // The embedded store releases its file lock once its last handle is gone, which happens
    // in the background just after the server stops.
    let mut store = None;
    for _ in 0..200 {
        match ares::store::Store::connect(&settings.database).await {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let app = TestApp::spawn_on(settings, store.expect("the database reopens")).await;
    let after = app.usage(&extra).await;
    assert_eq!(
        after.status, 200,
        "the second key still works: {}",
        after.text
    );
    assert_eq!(after.body["total_runs"], before["total_runs"]);
    assert_eq!(after.body["total_tokens"], before["total_tokens"]);
    // Calls before the restart were written at shutdown: the get_agent after `before`, and this one.
    assert_eq!(
        after.body["total_api_calls"].as_u64().unwrap(),
        before["total_api_calls"].as_u64().unwrap() + 2
    );
    let runs = app.list_runs(&acme, "echo", "").await;
    assert_eq!(runs.body["runs"][0], run);
    let agent_after = app.get_agent(&acme, "echo").await.body;
    assert_eq!(agent_after["created_at"], agent_before["created_at"]);
    assert_eq!(agent_after["total_runs"], 1);
    assert_eq!(
        app.list_keys(&acme).await.body["keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
