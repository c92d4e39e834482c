//! The table of broken agent files under `fixtures/agents-invalid/`, with their exact messages.

use std::path::Path;

use ares::agents::{Catalog, load_dir};

fn catalog() -> Catalog {
    Catalog {
        models: Some(["llama-3.3-70b".to_string()].into()),
        tools: ares::tools::names().map(String::from).collect(),
    }
}

#[test]
fn every_error_in_every_file_is_reported_with_its_place() {
    let report = load_dir(Path::new("fixtures/agents-invalid"), &catalog());
    let text: Vec<String> = report.diagnostics.iter().map(ToString::to_string).collect();
    insta::assert_snapshot!(text.join("\n"));
    // The valid files of the folder still load: _global/ok.yaml, and acme/twin.yaml (its
    // twin.yml is the duplicate).
    assert_eq!(report.agents.len(), 2);
    assert!(report.agents.get("acme", "twin").is_some());
    assert!(report.agents.get("acme", "ok").is_some());
}

#[test]
fn the_issue_example_message() {
    let report = load_dir(Path::new("fixtures/agents-invalid"), &catalog());
    let line = report
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .find(|d| d.contains("bad-temperature"))
        .expect("bad-temperature.yaml is reported");
    assert_eq!(
        line,
        "fixtures/agents-invalid/acme/bad-temperature.yaml:7:14: /temperature: expected a number between 0 and 2, got \"hot\""
    );
}

#[test]
fn the_shipped_agents_are_valid() {
    let settings = ares::config::Settings::load_from_env(Path::new("ares.yaml"), true)
        .expect("ares.yaml is valid");
    let report = load_dir(Path::new("agents.d"), &Catalog::from_settings(&settings));
    assert_eq!(report.diagnostics, vec![], "agents.d has errors");
    let set = report.agents;
    let risk = set
        .get("demo", "risk-analyzer")
        .expect("demo/risk-analyzer");
    assert_eq!(risk.spec.agent_type, "classifier");
    assert_eq!(risk.spec.tools, ["calculator"]);
    let output = risk
        .output_validator
        .as_ref()
        .expect("risk-analyzer has an output schema");
    assert!(output.is_valid(
        &serde_json::json!({"risk_score": 0.73, "risk_level": "medium", "reasoning": "r"})
    ));
    assert!(!output.is_valid(
        &serde_json::json!({"risk_score": 1.5, "risk_level": "medium", "reasoning": "r"})
    ));
    assert!(!output.is_valid(
        &serde_json::json!({"risk_score": 0.5, "risk_level": "extreme", "reasoning": "r"})
    ));
    assert_eq!(
        set.get("demo", "analyst")
            .expect("global analyst")
            .spec
            .agent_type,
        "analyst"
    );
    assert!(set.list("demo").len() >= 4);
    // Global agents are offered to every tenant, tenant agents only to their own.
    assert!(set.get("someone-else", "analyst").is_some());
    assert!(set.get("someone-else", "risk-analyzer").is_none());
}

#[test]
fn a_tenant_file_wins_over_a_global_one() {
    let dir = tempfile::tempdir().unwrap();
    let agent = |prompt: &str| {
        format!("agent_type: analyst\nmodel: llama-3.3-70b\nsystem_prompt: {prompt}\n")
    };
    std::fs::create_dir_all(dir.path().join("_global")).unwrap();
    std::fs::create_dir_all(dir.path().join("acme")).unwrap();
    std::fs::write(dir.path().join("_global/analyst.yaml"), agent("global")).unwrap();
    std::fs::write(dir.path().join("acme/analyst.yaml"), agent("acme's own")).unwrap();
    let report = load_dir(dir.path(), &catalog());
    assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
    assert_eq!(
        report
            .agents
            .get("acme", "analyst")
            .unwrap()
            .spec
            .system_prompt,
        "acme's own"
    );
    assert_eq!(
        report
            .agents
            .get("other", "analyst")
            .unwrap()
            .spec
            .system_prompt,
        "global"
    );
    let names: Vec<_> = report
        .agents
        .list("acme")
        .iter()
        .map(|a| a.tenant.clone())
        .collect();
    assert_eq!(
        names,
        vec![Some("acme".to_string())],
        "one analyst for acme, its own"
    );
}
