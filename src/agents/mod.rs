//! Agents as configuration: definitions in `agents.d`, their JSON Schema, loading with
//! located errors, the registry the server reads (hot-reloaded, swapped atomically), and the
//! agents' tests files.

mod cases;
mod load;
mod registry;
mod spec;
mod version;

use std::collections::BTreeSet;

pub use cases::{
    AgentTests, Case, Expect, ExpectedStatus, LoadedCase, Target, TestsReport, TestsSpec,
    ValueCheck, is_json_pointer, load_tests, parse_tests, tests_schema,
};
pub use load::{
    CASSETTE_SUFFIX, GLOBAL_DIR, LoadReport, TESTS_SUFFIX, is_test_companion, is_valid_name,
    load_dir, parse_agent,
};
pub use registry::{Agent, AgentRegistry, AgentSet, ReloadStatus, ReloadWatcher};
pub use spec::{AgentSpec, AgentStatus, agent_schema};
pub use version::{Revisions, canonical_json, version_of};

/// What agent files may refer to: the models of `ares.yaml` and the built-in tools.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Known model names; `None` skips the check (when `ares.yaml` itself failed to load).
    pub models: Option<BTreeSet<String>>,
    pub tools: BTreeSet<String>,
}

impl Catalog {
    /// The catalog of a server with these settings.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Catalog {
            models: Some(settings.models.keys().cloned().collect()),
            tools: crate::tools::names().map(String::from).collect(),
        }
    }
}

#[cfg(test)]
mod properties;
