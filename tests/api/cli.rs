//! The `ares` command line, run as a process: exit codes and output formats.

use std::process::Command;

fn ares(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ares"))
        .args(args)
        .env_remove("ARES_CONFIG")
        .env_remove("ARES_AGENTS_DIR")
        .env_remove("ARES_DATABASE_URL")
        .output()
        .expect("run ares");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn validate_passes_on_the_shipped_agents() {
    let (code, stdout, stderr) = ares(&["validate"]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("5 agents in 5 files, no errors"),
        "{stderr}"
    );
}

#[test]
fn validate_reports_every_error_and_exits_1() {
    let (code, stdout, _) = ares(&["validate", "fixtures/agents-invalid"]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 20, "{stdout}");
    let files: std::collections::BTreeSet<&str> =
        lines.iter().map(|l| l.split(':').next().unwrap()).collect();
    assert!(
        files.len() >= 15,
        "errors from every broken file: {files:?}"
    );
    for line in &lines {
        assert!(line.starts_with("fixtures/agents-invalid/"), "{line}");
    }
}

#[test]
fn validate_json_lists_the_same_errors() {
    let (_, text, _) = ares(&["validate", "fixtures/agents-invalid"]);
    let (code, json, _) = ares(&["validate", "fixtures/agents-invalid", "--format", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON output");
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), text.lines().count());
    let first = &errors[0];
    for field in ["file", "line", "column", "pointer", "message"] {
        assert!(
            first.get(field).is_some() || field == "line" || field == "column",
            "{first}"
        );
    }
    assert_eq!(v["agents"], 2);
    let temperature = errors
        .iter()
        .find(|e| e["pointer"] == "/temperature")
        .expect("the temperature error");
    assert_eq!(temperature["line"], 7);
    assert_eq!(temperature["column"], 14);
    assert_eq!(
        temperature["file"],
        "fixtures/agents-invalid/acme/bad-temperature.yaml"
    );
}

#[test]
fn validate_reports_settings_errors_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ares.yaml");
    std::fs::write(&config, "listen: 1\nmodel: {}\n").unwrap();
    let (code, stdout, _) = ares(&["--config", config.to_str().unwrap(), "validate", "agents.d"]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("ares.yaml:2:1: /model: unknown field `model`"),
        "{stdout}"
    );
    // Without models from the settings, the agents are still checked otherwise.
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["validate", "--help"],
        vec!["schema", "--help"],
        vec!["test", "--help"],
    ] {
        let (code, stdout, _) = ares(&cmd);
        assert_eq!(code, 0, "{cmd:?}");
        assert!(stdout.contains("Usage: ares"), "{cmd:?}: {stdout}");
    }
}

#[test]
fn tenant_create_prints_the_secret_alone_on_its_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("surrealkv://{}", dir.path().join("db").display());
    let (code, stdout, stderr) = ares(&[
        "--database",
        &db,
        "tenant",
        "create",
        "acme",
        "--name",
        "Acme",
        "--quota-runs",
        "5",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let secret = stdout.lines().last().unwrap();
    assert!(
        secret.starts_with("ares_") && secret.len() == 48 && !secret.contains(' '),
        "{stdout}"
    );
    assert!(!stderr.contains(secret), "the secret is never logged");
    let (code, stdout, _) = ares(&["--database", &db, "tenant", "list"]);
    assert_eq!(code, 0);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("acme"))
        .expect("acme is listed");
    assert!(row.contains(" 5 ") && row.ends_with("Acme"), "{row}");
    let (code, _, stderr) = ares(&["--database", &db, "tenant", "create", "acme"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("already exists"), "{stderr}");
    let (code, _, stderr) = ares(&["--database", &db, "tenant", "create", "Not_Valid"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("slug"), "{stderr}");
}

/// An operator's command needs the database alone: a broken agents folder and a provider
/// whose key is not set stay untouched, and the embedded database is closed before exit.
#[test]
fn tenant_create_loads_no_agents_nor_providers_and_closes_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("surrealkv://{}", dir.path().join("db").display());
    let config = dir.path().join("ares.yaml");
    std::fs::write(
        &config,
        "providers:\n  remote: {kind: openai, base_url: \"http://127.0.0.1:9/v1\", api_key_env: ARES_TEST_UNSET_KEY}\n\
         models:\n  m: {provider: remote, id: m}\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let args = [
        "--config",
        &config,
        "--agents",
        "fixtures/agents-invalid",
        "--database",
        &db,
        "tenant",
        "create",
        "acme",
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_ares"))
        .args(args)
        .env("ARES_LOG", "info")
        .env_remove("ARES_TEST_UNSET_KEY")
        .output()
        .expect("run ares");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.lines().last().unwrap().starts_with("ares_"),
        "{stdout}"
    );
    for absent in ["agents folder", "ARES_TEST_UNSET_KEY", "WARN", "ERROR"] {
        assert!(!stderr.contains(absent), "{absent} in:\n{stderr}");
    }
    assert!(
        stderr.contains("LSM tree shutdown complete"),
        "the database is closed before the process exits:\n{stderr}"
    );
}

#[test]
fn openapi_prints_both_specs() {
    let (code, v1, _) = ares(&["openapi"]);
    assert_eq!(code, 0);
    assert!(v1.contains("/v1/agents/{name}/run"));
    let (_, admin, _) = ares(&["openapi", "--admin", "--json"]);
    let spec: serde_json::Value = serde_json::from_str(&admin).unwrap();
    assert!(spec["paths"]["/admin/v1/tenants"]["post"].is_object());
}

/// A reader that stops reading (`ares openapi | head -1`) ends the output, not the command:
/// it exits 0 without a panic.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ares"))
        .args(["openapi", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ares");
    let mut first = [0u8; 16];
    child
        .stdout
        .take()
        .expect("piped")
        .read_exact(&mut first)
        .unwrap();
    // The reader is gone; the spec (far larger than a pipe's buffer) is still being written.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(first.starts_with(b"{"), "{first:?}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
