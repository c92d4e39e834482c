//! The agent definition: the fields of one `agents.d` file, its schema, and its semantic rules.

use std::sync::{Arc, OnceLock};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Catalog;
use crate::diag::Diagnostic;
use crate::yaml::{Located, push_pointer};

/// Whether an agent accepts runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    #[default]
    Active,
    Disabled,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Disabled => "disabled",
        }
    }
}

/// One agent, as written in `agents.d/<tenant>/<name>.yaml`. The file stem is its name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ares agent definition")]
pub struct AgentSpec {
    /// What kind of work the agent does (e.g. `classifier`, `analyst`); chat requests can pick an agent by it.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"))]
    pub agent_type: String,
    /// `disabled` agents are listed but refuse runs.
    #[serde(default)]
    pub status: AgentStatus,
    /// A human-readable summary for people browsing agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2000))]
    pub description: Option<String>,
    /// Logical model name, defined under `models` in `ares.yaml`.
    #[schemars(length(min = 1, max = 128))]
    pub model: String,
    /// Instructions sent as the system message of every run.
    #[schemars(length(min = 1, max = 100000))]
    pub system_prompt: String,
    /// Built-in tools the model may call.
    #[serde(default)]
    #[schemars(length(max = 32), extend("uniqueItems" = true))]
    pub tools: Vec<String>,
    /// Upper bound on tokens the model may generate per call.
    #[serde(default = "default_max_tokens")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_tokens: u32,
    /// Sampling temperature; the model's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f64>,
    /// Most model calls that may request tools in one run.
    #[serde(default = "default_max_tool_iterations")]
    #[schemars(range(min = 0, max = 50))]
    pub max_tool_iterations: u32,
    /// Wall-clock limit of one run, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 100, max = 3600000))]
    pub timeout_ms: u64,
    /// JSON Schema that a run's `input` must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "object_schema")]
    pub input_schema: Option<Value>,
    /// JSON Schema (of an object) that a run's `output` must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "object_schema")]
    pub output_schema: Option<Value>,
}

fn default_max_tokens() -> u32 {
    1024
}
fn default_max_tool_iterations() -> u32 {
    4
}
fn default_timeout_ms() -> u64 {
    60_000
}

/// The schema of a field holding an embedded JSON Schema (agent files and tests files).
pub(super) fn object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "An embedded JSON Schema (2020-12 unless it says otherwise in `$schema`)."
    })
}

/// The JSON Schema of an agent file, as committed in `contracts/agent.schema.json`.
pub fn agent_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(crate::schema_check::schema_of::<AgentSpec>)
}

pub(super) fn agent_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| jsonschema::validator_for(agent_schema()).expect("the agent schema compiles"))
}

fn list(names: impl Iterator<Item = impl AsRef<str>>) -> String {
    let all: Vec<String> = names.map(|n| format!("`{}`", n.as_ref())).collect();
    if all.is_empty() {
        "none".to_string()
    } else {
        all.join(", ")
    }
}

/// Checks the JSON Schema embedded at `at` (a JSON pointer) and compiles it.
pub(super) fn compile_embedded(
    file: &str,
    doc: &Located,
    at: &str,
    schema: &Value,
    out: &mut Vec<Diagnostic>,
) -> Option<Arc<jsonschema::Validator>> {
    let error = match jsonschema::meta::validate(schema) {
        Err(e) => e,
        Ok(()) => match jsonschema::validator_for(schema) {
            Ok(v) => return Some(Arc::new(v)),
            Err(e) => e,
        },
    };
    // Both errors locate the problem inside the embedded schema.
    let pointer = format!("{at}{}", error.instance_path());
    out.push(Diagnostic::field(
        file,
        doc,
        &pointer,
        format!("not a valid JSON Schema: {error}"),
    ));
    None
}

/// Compiled embedded schemas of a valid agent.
pub(super) struct Compiled {
    pub input: Option<Arc<jsonschema::Validator>>,
    pub output: Option<Arc<jsonschema::Validator>>,
}

/// The rules a JSON Schema cannot say: references to models and tools, embedded schemas, blank
/// prompts. They read the document itself, so they run (on the fields of the right type) even
/// when the schema found errors, and a file's every error is reported at once.
pub(super) fn check(
    file: &str,
    doc: &Located,
    catalog: &Catalog,
    out: &mut Vec<Diagnostic>,
) -> Compiled {
    let v = &doc.value;
    if let Some(prompt) = v.get("system_prompt").and_then(Value::as_str)
        && !prompt.is_empty()
        && prompt.trim().is_empty()
    {
        out.push(Diagnostic::field(
            file,
            doc,
            "/system_prompt",
            "must not be blank",
        ));
    }
    if let (Some(models), Some(model)) = (&catalog.models, v.get("model").and_then(Value::as_str))
        && !models.contains(model)
    {
        out.push(Diagnostic::field(
            file,
            doc,
            "/model",
            format!(
                "unknown model `{model}`; ares.yaml defines {}",
                list(models.iter())
            ),
        ));
    }
    let tools = v
        .get("tools")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, tool) in tools.iter().enumerate() {
        if let Some(tool) = tool.as_str()
            && !catalog.tools.contains(tool)
        {
            out.push(Diagnostic::field(
                file,
                doc,
                &push_pointer("/tools", &i.to_string()),
                format!(
                    "unknown tool `{tool}`; built-in tools are {}",
                    list(catalog.tools.iter())
                ),
            ));
        }
    }
    let input = v
        .get("input_schema")
        .filter(|s| s.is_object())
        .and_then(|s| compile_embedded(file, doc, "/input_schema", s, out));
    let output = v
        .get("output_schema")
        .filter(|s| s.is_object())
        .and_then(|s| {
            if s.get("type").and_then(Value::as_str) != Some("object") {
                out.push(Diagnostic::field(
                    file,
                    doc,
                    "/output_schema",
                    "must describe an object (`type: object`): a run's output is a JSON object",
                ));
                return None;
            }
            compile_embedded(file, doc, "/output_schema", s, out)
        });
    Compiled { input, output }
}
