//! Agents as configuration, checked without serving them: `ares validate` and `ares schema`.

use std::path::Path;

use crate::agents::{Catalog, LoadReport, load_dir};
use crate::config::Settings;

/// Every problem of every agent file under `dir`. With `settings`, model names are checked
/// against its models; without (the settings themselves failed to load), they are not.
pub fn validate_agents(dir: &Path, settings: Option<&Settings>) -> LoadReport {
    let catalog = match settings {
        Some(s) => Catalog::from_settings(s),
        None => Catalog {
            models: None,
            ..Catalog::from_settings(&Settings::default())
        },
    };
    load_dir(dir, &catalog)
}

/// The JSON Schema of agent files (committed as `contracts/agent.schema.json`).
pub fn agent_schema() -> &'static serde_json::Value {
    crate::agents::agent_schema()
}
