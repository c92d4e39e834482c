//! Agents as configuration, checked without serving them: `ares validate` and `ares schema`.

use std::path::Path;

use crate::agents::{Catalog, LoadReport, load_dir, load_tests};
use crate::config::Settings;
use crate::diag::Diagnostic;

/// What `ares validate` found in an agents folder.
#[derive(Debug)]
pub struct Validation {
    /// Agent files read.
    pub files: usize,
    /// Valid agents.
    pub agents: usize,
    /// Tests files read (`<agent>.tests.yaml`).
    pub tests_files: usize,
    /// Cases of the valid tests files.
    pub cases: usize,
    /// Every problem of the agent and tests files, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
}

/// Every problem of every agent file and tests file under `dir`. With `settings`, model names
/// are checked against its models; without (the settings themselves failed to load), they
/// are not.
pub fn validate_agents(dir: &Path, settings: Option<&Settings>) -> Validation {
    let catalog = match settings {
        Some(s) => Catalog::from_settings(s),
        None => Catalog {
            models: None,
            ..Catalog::from_settings(&Settings::default())
        },
    };
    let LoadReport {
        agents,
        mut diagnostics,
        files,
    } = load_dir(dir, &catalog);
    let tests = load_tests(dir, &agents, &catalog);
    diagnostics.extend(tests.diagnostics);
    diagnostics.sort();
    Validation {
        files,
        agents: agents.len(),
        tests_files: tests.read,
        cases: tests.files.iter().map(|t| t.cases.len()).sum(),
        diagnostics,
    }
}

/// The JSON Schema of agent files (committed as `contracts/agent.schema.json`).
pub fn agent_schema() -> &'static serde_json::Value {
    crate::agents::agent_schema()
}

/// The JSON Schema of agent tests files (committed as `contracts/agent-tests.schema.json`).
pub fn tests_schema() -> &'static serde_json::Value {
    crate::agents::tests_schema()
}
