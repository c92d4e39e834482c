//! Hot reload of agents.d: valid changes are swapped in, invalid ones refused while the last good set serves.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ares::agents::{AgentRegistry, Catalog, Revisions};

fn catalog() -> Catalog {
    Catalog {
        models: Some(["m".to_string()].into()),
        tools: ares::tools::names().map(String::from).collect(),
    }
}

fn write(dir: &Path, rel: &str, prompt: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        path,
        format!("agent_type: analyst\nmodel: m\nsystem_prompt: {prompt}\n"),
    )
    .unwrap();
}

/// Waits (at most 20 s) for `cond`; the file watcher is asynchronous.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn changes_are_swapped_in_and_invalid_sets_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "acme/one.yaml", "first");
    let registry = Arc::new(AgentRegistry::load(dir.path(), catalog(), Revisions::None).unwrap());
    let _watch = registry.watch(Duration::from_millis(50)).unwrap();
    let before = registry.snapshot();

    write(dir.path(), "acme/two.yaml", "second");
    eventually("two.yaml appears", || {
        registry.snapshot().get("acme", "two").is_some()
    })
    .await;
    assert!(
        before.get("acme", "two").is_none(),
        "a snapshot never changes under its reader"
    );
    assert!(registry.status().last_errors.is_none());

    // A broken file: the reload is refused and the last good set keeps serving.
    let attempts = registry.status().attempts;
    std::fs::write(
        dir.path().join("acme/one.yaml"),
        "agent_type: analyst\nmodel: nope\n",
    )
    .unwrap();
    eventually("the broken reload is attempted", || {
        registry.status().attempts > attempts
    })
    .await;
    let status = registry.status();
    let errors = status
        .last_errors
        .expect("the reload was refused")
        .to_string();
    assert!(
        errors.contains("one.yaml:1:1: missing required field `system_prompt`"),
        "{errors}"
    );
    let served = registry.snapshot();
    assert_eq!(
        served.get("acme", "one").unwrap().spec.system_prompt,
        "first"
    );
    assert!(served.get("acme", "two").is_some());

    // Fixing it swaps in the new set.
    write(dir.path(), "acme/one.yaml", "fixed");
    eventually("the fix is served", || {
        registry
            .snapshot()
            .get("acme", "one")
            .unwrap()
            .spec
            .system_prompt
            == "fixed"
    })
    .await;
    assert!(registry.status().last_errors.is_none());

    // Deleting a file removes its agent.
    std::fs::remove_file(dir.path().join("acme/two.yaml")).unwrap();
    eventually("two.yaml is gone", || {
        registry.snapshot().get("acme", "two").is_none()
    })
    .await;
}

#[test]
fn an_invalid_folder_refuses_to_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("acme")).unwrap();
    std::fs::write(dir.path().join("acme/x.yaml"), "model: [\n").unwrap();
    let errors = AgentRegistry::load(dir.path(), catalog(), Revisions::None)
        .err()
        .expect("refused");
    assert_eq!(errors.0.len(), 1);
    assert!(
        errors.0[0].to_string().contains("x.yaml:2:1: invalid YAML"),
        "{}",
        errors
    );
}

/// Through the server: a new agent file is served without a restart; a broken edit is refused
/// and the last good agents keep serving.
#[tokio::test]
async fn the_server_serves_reloaded_agents() {
    let dir = tempfile::tempdir().unwrap();
    let agent = |prompt: &str| {
        format!("agent_type: assistant\nmodel: llama-3.1-8b\nsystem_prompt: {prompt}\n")
    };
    std::fs::create_dir_all(dir.path().join("acme")).unwrap();
    std::fs::write(dir.path().join("acme/first.yaml"), agent("one")).unwrap();
    let mut settings = crate::helpers::test_settings();
    settings.agents_dir = dir.path().to_path_buf();
    let app = crate::helpers::TestApp::spawn_with(settings).await;
    let acme = app.tenant("acme").await;
    let names = || async {
        let r = app.list_agents(&acme, "").await;
        r.body["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names().await, ["first"]);

    std::fs::write(dir.path().join("acme/second.yaml"), agent("two")).unwrap();
    let start = Instant::now();
    while names().await != ["first", "second"] {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "second.yaml was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let attempts = app.app.engine.reload_status().attempts;
    std::fs::write(dir.path().join("acme/second.yaml"), "agent_type: [broken\n").unwrap();
    eventually("the broken reload is attempted", || {
        app.app.engine.reload_status().attempts > attempts
    })
    .await;
    assert_eq!(
        names().await,
        ["first", "second"],
        "the last good set keeps serving"
    );
    let r = app
        .run_agent(
            &acme,
            "second",
            serde_json::json!({"message": "still here"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed");
}
