//! Agents as code: the version on agents and runs, the versions served, `ares version` and
//! `ares plan`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, test_settings};
use crate::procs::{ADMIN, Ares};

const PROMPT_V1: &str = "agent_type: assistant\nmodel: llama-3.1-8b\nsystem_prompt: |\n  You answer briefly.\n  In English.\nmax_tokens: 256\n";
const PROMPT_V2: &str = "agent_type: assistant\nmodel: llama-3.1-8b\nsystem_prompt: |\n  You answer briefly.\n  In French.\nmax_tokens: 256\n";

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Runs git in `dir`; its trimmed standard output.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=ares", "-c", "user.email=ares@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn commit(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// `ares ARGS`: exit code, standard output, standard error.
fn ares(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ares"));
    cmd.args(args).env("ARES_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run ares");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ares version FILE`.
fn version_of(file: &Path) -> String {
    let (code, out, err) = ares(&["version", &file.display().to_string()], &[]);
    assert_eq!(code, 0, "{err}");
    let v = out.trim().to_string();
    assert_eq!(v.len(), 12, "{v}");
    v
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn formatting_comments_and_spelled_out_defaults_keep_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a/acme/bot.yaml");
    let b = dir.path().join("b/acme/bot.yaml");
    let c = dir.path().join("c/acme/bot.yaml");
    write(&a, PROMPT_V1);
    write(
        &b,
        "# The support bot.\nmax_tokens: 256   # per call\nsystem_prompt: \"You answer briefly.\\nIn English.\\n\"\nmodel: llama-3.1-8b\nagent_type: assistant\nstatus: active\n",
    );
    write(&c, PROMPT_V2);
    assert_eq!(version_of(&a), version_of(&b));
    assert_ne!(version_of(&a), version_of(&c));
    // An invalid file has no version: its errors, exit 1.
    let bad = dir.path().join("d/acme/bot.yaml");
    write(&bad, "model: [\n");
    let (code, _, err) = ares(&["version", &bad.display().to_string()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("bot.yaml:"), "{err}");
}

#[tokio::test]
async fn runs_carry_the_version_that_ran_and_every_version_served_is_listed() {
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    let file = repo.path().join("agents/acme/bot.yaml");
    write(&file, PROMPT_V1);
    let rev1 = commit(repo.path(), "bot");
    let v1 = version_of(&file);

    let mut settings = test_settings();
    settings.agents_dir = repo.path().join("agents");
    let app = TestApp::spawn_with(settings).await;
    let key = app.tenant("acme").await;

    let agent = app.get_agent(&key, "bot").await;
    assert_eq!(agent.status, 200, "{}", agent.text);
    assert_eq!(agent.body["version"], json!(v1));
    let list = app.list_agents(&key, "").await;
    let listed = list.body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "bot")
        .unwrap();
    assert_eq!(listed["version"], json!(v1));
    let first = app.run_agent(&key, "bot", json!({"message": "hi"})).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["agent_version"], json!(v1));

    // A prompt change, committed and hot-reloaded.
    write(&file, PROMPT_V2);
    let rev2 = commit(repo.path(), "bot answers in French");
    let v2 = version_of(&file);
    assert_ne!(v1, v2);
    eventually("the new version is served", || async {
        app.get_agent(&key, "bot").await.body["version"] == json!(v2)
    })
    .await;
    let second = app.run_agent(&key, "bot", json!({"message": "hi"})).await;
    assert_eq!(second.body["agent_version"], json!(v2));

    // History keeps the version each run ran.
    let runs = app.list_runs(&key, "bot", "").await;
    let versions: Vec<&Value> = runs.body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["agent_version"])
        .collect();
    assert_eq!(versions, [&json!(v2), &json!(v1)], "{}", runs.text);
    let id = first.body["id"].as_str().unwrap();
    let again = app.get(&format!("/v1/runs/{id}"), &key).await;
    assert_eq!(again.body["agent_version"], json!(v1));

    // Every version served, newest first, with its revision and definition.
    eventually("both versions are recorded", || async {
        app.get("/v1/agents/bot/versions", &key).await.body["total"] == json!(2)
    })
    .await;
    let page = app.get("/v1/agents/bot/versions", &key).await.body;
    let items = page["versions"].as_array().unwrap();
    let got: Vec<(&Value, &Value)> = items
        .iter()
        .map(|v| (&v["version"], &v["source_rev"]))
        .collect();
    assert_eq!(
        got,
        [(&json!(v2), &json!(rev2)), (&json!(v1), &json!(rev1))],
        "{page}"
    );
    assert_eq!(
        items[1]["config"]["system_prompt"],
        json!("You answer briefly.\nIn English.\n")
    );
    assert_eq!(
        (page["page"].clone(), page["per_page"].clone()),
        (json!(1), json!(20))
    );
    let second_page = app
        .get("/v1/agents/bot/versions?per_page=1&page=2", &key)
        .await;
    assert_eq!(second_page.body["versions"][0]["version"], json!(v1));
    // Another tenant does not see acme's agent, nor its versions.
    let other = app.tenant("globex").await;
    let hidden = app.get("/v1/agents/bot/versions", &other).await;
    assert_eq!(hidden.status, 404, "{}", hidden.text);
    app.stop().await;
}

/// `ares plan` against the database a server wrote: a prompt change exits 2 and shows the
/// change; the folder served exits 0; a folder with errors exits 1.
#[tokio::test]
async fn plan_shows_what_a_folder_would_change() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    let bot = agents.join("acme/bot.yaml");
    write(&bot, PROMPT_V1);
    write(&agents.join("acme/old.yaml"), PROMPT_V1);
    write(&agents.join("_global/helper.yaml"), PROMPT_V1);
    let db = format!("surrealkv://{}", dir.path().join("db").display());
    let agents_dir = agents.display().to_string();
    let env = vec![
        ("ARES_DATABASE_URL".to_string(), db.clone()),
        ("ARES_AGENTS_DIR".to_string(), agents_dir.clone()),
        ("ARES_ADMIN_TOKEN".to_string(), ADMIN.to_string()),
        (
            "ARES_PROVIDERS".to_string(),
            "{offline: {kind: offline}}".to_string(),
        ),
        (
            "ARES_MODELS".to_string(),
            "{llama-3.1-8b: {provider: offline, id: llama-3.1-8b}}".to_string(),
        ),
    ];
    // Against a database no server has used yet (read as it is, nothing migrated): every
    // agent is to be added.
    let fresh = format!("surrealkv://{}", dir.path().join("fresh").display());
    let (code, out, err) = ares(
        &["--database", &fresh, "plan", &agents_dir],
        &[
            ("ARES_PROVIDERS", "{offline: {kind: offline}}"),
            (
                "ARES_MODELS",
                "{llama-3.1-8b: {provider: offline, id: llama-3.1-8b}}",
            ),
        ],
    );
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("3 to add, 0 to change, 0 to remove"), "{err}");

    let mut server = Ares::start("plan", &env).await;
    let key = server.tenant("acme", json!({})).await;
    eventually("the served set is recorded", || async {
        server.get("/v1/agents/helper/versions", &key).await.body["total"] == json!(1)
    })
    .await;
    assert!(server.terminate(), "ares serve stops gracefully");

    let cli_env: Vec<(&str, &str)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("ARES_MODELS") || k.starts_with("ARES_PROVIDERS"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let plan = |format: &str| {
        ares(
            &["--database", &db, "plan", &agents_dir, "--format", format],
            &cli_env,
        )
    };

    let (code, out, err) = plan("text");
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains("0 to add, 0 to change, 0 to remove"), "{err}");

    write(&bot, PROMPT_V2);
    std::fs::remove_file(agents.join("acme/old.yaml")).unwrap();
    write(&agents.join("beta/new.yaml"), PROMPT_V1);
    let (code, out, err) = plan("text");
    assert_eq!(code, 2, "{out}\n{err}");
    let (v1, v2) = (
        version_of(&agents.join("_global/helper.yaml")),
        version_of(&bot),
    );
    for expected in [
        "tenant acme:".to_string(),
        format!("  ~ bot ({v1} -> {v2})"),
        "      /system_prompt:".to_string(),
        "        -In English.".to_string(),
        "        +In French.".to_string(),
        format!("  - old ({v1})"),
        "tenant beta:".to_string(),
        format!("  + new ({v1})"),
    ] {
        assert!(
            out.lines().any(|l| l == expected),
            "{expected:?} missing from:\n{out}"
        );
    }
    assert!(
        !out.contains("_global"),
        "the global agent did not change:\n{out}"
    );
    assert!(err.contains("1 to add, 1 to change, 1 to remove"), "{err}");

    let (code, out, err) = plan("json");
    assert_eq!(code, 2, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    let change = &json["owners"][0]["changed"][0];
    assert_eq!(change["name"], "bot");
    assert_eq!(change["fields"][0]["path"], "/system_prompt");
    assert_eq!(
        change["fields"][0]["after"],
        "You answer briefly.\nIn French.\n"
    );

    write(&bot, "model: [\n");
    let (code, out, err) = plan("text");
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("bot.yaml:"), "{err}");
}
