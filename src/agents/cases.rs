//! Agent tests as configuration: `<agent>.tests.yaml` beside an agent file — its cases, their
//! expectations, its JSON Schema, and reading a folder's tests files with located errors.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::Catalog;
use super::load::{
    CASSETTE_SUFFIX, GLOBAL_DIR, parse_located, read_bounded, sorted_entries, tested_agent,
};
use super::registry::{Agent, AgentSet};
use super::spec::compile_embedded;
use crate::diag::Diagnostic;
use crate::yaml::{Located, push_pointer};

/// The tests of one agent, as written in `<agent>.tests.yaml` beside `<agent>.yaml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ares agent tests")]
pub struct TestsSpec {
    /// The cases, run in this order.
    #[schemars(length(min = 1, max = 1000))]
    pub cases: Vec<Case>,
}

/// One case: a run's input and what its run must show.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Names the case in reports and cassettes; unique within the file.
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
    /// The run's `input`, as a client sends it to `POST /v1/agents/{name}/run`.
    pub input: Map<String, Value>,
    /// What the run must show; with nothing, only that it completes.
    #[serde(default)]
    pub expect: Expect,
    /// How many times the case runs.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub repeat: u32,
    /// The share of the runs that must pass (0 to 1).
    #[serde(default = "all")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub pass_rate: f64,
}

fn one() -> u32 {
    1
}
fn all() -> f64 {
    1.0
}

/// The expectations of a case; every one given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The run's final status [default: `completed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "ExpectedStatus")]
    pub status: Option<ExpectedStatus>,
    /// A JSON Schema the output must satisfy [default: the agent's own `output_schema`, when it has one].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::spec::object_schema")]
    pub output_schema: Option<Value>,
    /// Checks of values in the output, each at a JSON pointer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub values: Vec<ValueCheck>,
    /// Tools the run must have called (each at least once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tool_called: Vec<String>,
    /// Tools the run must not have called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tool_not_called: Vec<String>,
    /// Most tokens the run may use (all its model calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64")]
    pub max_tokens: Option<u64>,
    /// Longest the run may take, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64")]
    pub max_duration_ms: Option<u64>,
}

/// The final status a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedStatus {
    Completed,
    Failed,
}

impl ExpectedStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpectedStatus::Completed => "completed",
            ExpectedStatus::Failed => "failed",
        }
    }
}

/// One check of the value at `pointer` in the output: exactly one of `equals`, `one_of`,
/// `contains`, `matches`, or a range (`min`, `max`, or both).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueCheck {
    /// A JSON pointer (RFC 6901) into the output, e.g. `/risk_level`; empty for the whole output.
    pub pointer: String,
    /// The value must equal this one.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Value")]
    pub equals: Option<Value>,
    /// The value must equal one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<Value>", length(min = 1))]
    pub one_of: Option<Vec<Value>>,
    /// A string value must contain this text; a list value must hold this element.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Value")]
    pub contains: Option<Value>,
    /// A string value must match this regular expression (Rust `regex` syntax, unanchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub matches: Option<String>,
    /// A number value must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64")]
    pub min: Option<f64>,
    /// A number value must be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64")]
    pub max: Option<f64>,
}

/// A field that is present is `Some`, even when its value is `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The JSON Schema of a tests file, as committed in `contracts/agent-tests.schema.json`.
pub fn tests_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(crate::schema_check::schema_of::<TestsSpec>)
}

fn tests_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| jsonschema::validator_for(tests_schema()).expect("the tests schema compiles"))
}

/// One valid case, with what its checks need compiled.
#[derive(Debug, Clone)]
pub struct LoadedCase {
    /// Its place in the file's `cases`.
    pub index: usize,
    pub spec: Case,
    /// The schema the output must satisfy: the case's own, else the agent's.
    pub output_validator: Option<Arc<jsonschema::Validator>>,
    /// The compiled `matches` of each of `spec.expect.values` (`None` for other checks).
    pub patterns: Vec<Option<regex::Regex>>,
}

impl LoadedCase {
    /// The JSON pointer of this case in its file.
    pub fn pointer(&self) -> String {
        format!("/cases/{}", self.index)
    }
}

/// One valid tests file.
#[derive(Debug, Clone)]
pub struct AgentTests {
    /// The file, as found under the folder given.
    pub file: PathBuf,
    /// The tenant folder, or `None` for `_global`.
    pub tenant: Option<String>,
    /// The agent tested (the file name without `.tests.yaml`).
    pub agent: String,
    /// The document, so that a failing expectation can be named by its line and column.
    pub doc: Located,
    pub cases: Vec<LoadedCase>,
}

impl AgentTests {
    /// The cassette of these tests: `<agent>.cassette.json` beside the tests file.
    pub fn cassette_path(&self) -> PathBuf {
        self.file
            .with_file_name(format!("{}{CASSETTE_SUFFIX}", self.agent))
    }

    /// A problem at `pointer` of this file.
    pub fn diagnostic(&self, pointer: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::field(
            &self.file.display().to_string(),
            &self.doc,
            pointer,
            message,
        )
    }
}

/// What reading a folder's tests files found.
#[derive(Debug, Default)]
pub struct TestsReport {
    /// Every tests file without an error, ordered by path.
    pub files: Vec<AgentTests>,
    /// Every problem, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// Tests files read.
    pub read: usize,
}

/// Whether `pointer` is a JSON pointer (RFC 6901): empty, or `/`-separated tokens in which
/// `~` only starts `~0` or `~1`.
pub fn is_json_pointer(pointer: &str) -> bool {
    if pointer.is_empty() {
        return true;
    }
    if !pointer.starts_with('/') {
        return false;
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return false;
        }
    }
    true
}

/// Reads every tests file under `dir` (`<tenant>/<agent>.tests.yaml`, `_global/...`) and checks
/// it against the agents of `agents`; folders and names the agent loader reports are skipped.
pub fn load_tests(dir: &Path, agents: &AgentSet, catalog: &Catalog) -> TestsReport {
    let mut report = TestsReport::default();
    if !dir.is_dir() {
        return report;
    }
    let mut ignored = Vec::new();
    for folder in sorted_entries(dir, &mut ignored) {
        if !folder.is_dir() {
            continue;
        }
        let name = folder
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let tenant = (name != GLOBAL_DIR).then_some(name);
        if tenant.as_deref().is_some_and(|t| !super::is_valid_name(t)) {
            continue;
        }
        for path in sorted_entries(&folder, &mut ignored) {
            let Some(agent) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(tested_agent)
                .map(String::from)
            else {
                continue;
            };
            if path.is_dir() {
                continue;
            }
            report.read += 1;
            let file = path.display().to_string();
            let bytes = match read_bounded(&path) {
                Ok(b) => b,
                Err(message) => {
                    report.diagnostics.push(Diagnostic::file(&file, message));
                    continue;
                }
            };
            let own = agents.own(tenant.as_deref(), &agent);
            let beside = ["yaml", "yml"]
                .iter()
                .any(|ext| folder.join(format!("{agent}.{ext}")).is_file());
            let target = match (own, beside) {
                (Some(a), _) => Target::Agent(a),
                // The agent file has errors of its own, reported by the agent loader.
                (None, true) => Target::Broken,
                (None, false) => Target::Missing,
            };
            if let Some(tests) = parse_tests(
                &file,
                &bytes,
                tenant.as_deref(),
                &agent,
                target,
                catalog,
                &mut report.diagnostics,
            ) {
                report.files.push(AgentTests {
                    file: path.clone(),
                    ..tests
                });
            }
        }
    }
    report.diagnostics.sort();
    report
}

/// The agent a tests file is checked against.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Agent(&'a Agent),
    /// Its agent file exists but has errors: the file is checked alone.
    Broken,
    /// No agent file of that name beside it.
    Missing,
}

/// Checks the bytes of one tests file of agent `agent` of `tenant` (`None`: `_global`),
/// pushing every problem onto `diags`; returns the tests when there was none.
pub fn parse_tests(
    file: &str,
    bytes: &[u8],
    tenant: Option<&str>,
    agent: &str,
    target: Target<'_>,
    catalog: &Catalog,
    diags: &mut Vec<Diagnostic>,
) -> Option<AgentTests> {
    let before = diags.len();
    if let Target::Missing = target {
        diags.push(Diagnostic::file(
            file,
            format!(
                "no agent `{agent}` beside this tests file: a tests file sits next to the agent it tests, as `{agent}.yaml`"
            ),
        ));
    }
    let doc = parse_located(file, bytes, diags)?;
    let mut found = crate::schema_check::check(file, &doc, tests_schema(), tests_validator());
    let agent_def = match target {
        Target::Agent(a) => Some(a),
        _ => None,
    };
    let compiled = check(file, &doc, agent_def, catalog, &mut found);
    found.sort();
    diags.extend(found);
    if diags.len() > before {
        return None;
    }
    let spec: TestsSpec = match crate::schema_check::decode(file, &doc) {
        Ok(spec) => spec,
        Err(d) => {
            diags.push(d);
            return None;
        }
    };
    let cases = spec
        .cases
        .into_iter()
        .zip(compiled)
        .enumerate()
        .map(|(index, (spec, compiled))| LoadedCase {
            index,
            spec,
            output_validator: compiled.output,
            patterns: compiled.patterns,
        })
        .collect();
    Some(AgentTests {
        file: PathBuf::from(file),
        tenant: tenant.map(String::from),
        agent: agent.to_string(),
        doc,
        cases,
    })
}

/// What the checks of one case need, compiled.
struct CompiledCase {
    output: Option<Arc<jsonschema::Validator>>,
    patterns: Vec<Option<regex::Regex>>,
}

/// The rules a JSON Schema cannot say: unique case names, JSON pointers, regular expressions,
/// one check per value entry, embedded schemas, known tools. They read the document itself, so
/// they run even when the schema found errors, and a file's every error is reported at once.
fn check(
    file: &str,
    doc: &Located,
    agent: Option<&Agent>,
    catalog: &Catalog,
    out: &mut Vec<Diagnostic>,
) -> Vec<CompiledCase> {
    let cases = doc
        .value
        .get("cases")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut names = BTreeSet::new();
    let mut compiled = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let at = format!("/cases/{i}");
        if let Some(name) = case.get("name").and_then(Value::as_str)
            && !names.insert(name)
        {
            out.push(Diagnostic::field(
                file,
                doc,
                &format!("{at}/name"),
                format!("duplicate case name `{name}`: each case of a file needs its own name"),
            ));
        }
        let expect = case.get("expect").cloned().unwrap_or(Value::Null);
        let own_schema = expect
            .get("output_schema")
            .filter(|s| s.is_object())
            .and_then(|s| {
                compile_embedded(file, doc, &format!("{at}/expect/output_schema"), s, out)
            });
        let output = own_schema.or_else(|| agent.and_then(|a| a.output_validator.clone()));
        let values = expect
            .get("values")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let patterns = values
            .iter()
            .enumerate()
            .map(|(j, v)| check_value(file, doc, &format!("{at}/expect/values/{j}"), v, out))
            .collect();
        for field in ["tool_called", "tool_not_called"] {
            let tools = expect
                .get(field)
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (j, tool) in tools.iter().enumerate() {
                let Some(tool) = tool.as_str() else { continue };
                let pointer = push_pointer(&format!("{at}/expect/{field}"), &j.to_string());
                if !catalog.tools.contains(tool) {
                    out.push(Diagnostic::field(
                        file,
                        doc,
                        &pointer,
                        format!(
                            "unknown tool `{tool}`; built-in tools are {}",
                            list(catalog.tools.iter())
                        ),
                    ));
                } else if field == "tool_called"
                    && let Some(a) = agent
                    && !a.spec.tools.iter().any(|t| t == tool)
                {
                    out.push(Diagnostic::field(
                        file,
                        doc,
                        &pointer,
                        format!(
                            "the agent does not offer `{tool}` (its tools: {}), so no run can call it",
                            list(a.spec.tools.iter())
                        ),
                    ));
                }
            }
        }
        compiled.push(CompiledCase { output, patterns });
    }
    compiled
}

/// Checks one entry of `values`; returns its compiled `matches`.
fn check_value(
    file: &str,
    doc: &Located,
    at: &str,
    v: &Value,
    out: &mut Vec<Diagnostic>,
) -> Option<regex::Regex> {
    let entry = v.as_object()?;
    if let Some(p) = entry.get("pointer").and_then(Value::as_str)
        && !is_json_pointer(p)
    {
        out.push(Diagnostic::field(
            file,
            doc,
            &format!("{at}/pointer"),
            format!(
                "`{p}` is not a JSON pointer: it is empty (the whole output) or starts with `/`, e.g. `/risk_level` or `/items/0`, with `~` written `~0` and `/` in a key `~1`"
            ),
        ));
    }
    let kinds: Vec<&str> = ["equals", "one_of", "contains", "matches"]
        .into_iter()
        .filter(|k| entry.contains_key(*k))
        .chain((entry.contains_key("min") || entry.contains_key("max")).then_some("min/max"))
        .collect();
    match kinds.as_slice() {
        [] => out.push(Diagnostic::field(
            file,
            doc,
            at,
            "no check: give one of `equals`, `one_of`, `contains`, `matches`, or `min`/`max`",
        )),
        [_] => {}
        many => out.push(Diagnostic::field(
            file,
            doc,
            at,
            format!(
                "more than one check ({}): give one per entry, and another entry with the same pointer for another check",
                many.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
    if let (Some(lo), Some(hi)) = (
        entry.get("min").and_then(Value::as_f64),
        entry.get("max").and_then(Value::as_f64),
    ) && lo > hi
    {
        out.push(Diagnostic::field(
            file,
            doc,
            &format!("{at}/max"),
            format!("is below `min` ({lo}): no number can satisfy both"),
        ));
    }
    let pattern = entry.get("matches").and_then(Value::as_str)?;
    match regex::Regex::new(pattern) {
        Ok(r) => Some(r),
        Err(e) => {
            out.push(Diagnostic::field(
                file,
                doc,
                &format!("{at}/matches"),
                format!(
                    "not a valid regular expression: {}",
                    one_line(&e.to_string())
                ),
            ));
            None
        }
    }
}

/// A multi-line message (regex errors draw the pattern) on one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn list(names: impl Iterator<Item = impl AsRef<str>>) -> String {
    let all: Vec<String> = names.map(|n| format!("`{}`", n.as_ref())).collect();
    if all.is_empty() {
        "none".to_string()
    } else {
        all.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog {
            models: None,
            tools: crate::tools::names().map(String::from).collect(),
        }
    }

    fn parse(text: &str) -> (Option<AgentTests>, Vec<String>) {
        let mut diags = Vec::new();
        let tests = parse_tests(
            "t.tests.yaml",
            text.as_bytes(),
            Some("acme"),
            "echo",
            Target::Broken,
            &catalog(),
            &mut diags,
        );
        (tests, diags.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn json_pointers() {
        for ok in ["", "/", "/a", "/a/0", "/a~0b", "/a~1b", "/~01"] {
            assert!(is_json_pointer(ok), "{ok}");
        }
        for bad in ["a", "a/b", "/a~", "/a~2", "#/a"] {
            assert!(!is_json_pointer(bad), "{bad}");
        }
    }

    #[test]
    fn companions_are_not_agents() {
        for (name, companion) in [
            ("echo.tests.yaml", true),
            ("echo.tests.yml", true),
            ("echo.cassette.json", true),
            ("echo.yaml", false),
            ("tests.yaml", false),
        ] {
            assert_eq!(
                super::super::load::is_test_companion(Path::new(name)),
                companion,
                "{name}"
            );
        }
    }

    #[test]
    fn a_valid_file_defaults_repeat_and_pass_rate() {
        let (tests, errors) = parse(
            "cases:\n  - name: a\n    input: {message: hi}\n    expect:\n      values:\n        - {pointer: /x, equals: null}\n",
        );
        assert_eq!(errors, Vec::<String>::new());
        let case = &tests.unwrap().cases[0];
        assert_eq!(case.spec.repeat, 1);
        assert_eq!(case.spec.pass_rate, 1.0);
        assert_eq!(case.spec.expect.values[0].equals, Some(Value::Null));
    }

    /// Every error of a file at once, each at its line and column.
    #[test]
    fn errors_are_located() {
        let text = "\
cases:
  - name: a
    input: {message: hi}
    expect:
      status: done
      values:
        - {pointer: risk, equals: 1}
        - {pointer: /a, matches: '(unclosed'}
        - {pointer: /b}
        - {pointer: /c, equals: 1, min: 2}
      tool_called: [abacus]
      colour: red
  - name: a
    input: {}
    repeat: 0
";
        let (tests, errors) = parse(text);
        assert!(tests.is_none());
        for expected in [
            "t.tests.yaml:5:15: /cases/0/expect/status: expected one of \"completed\", \"failed\", got \"done\"",
            "t.tests.yaml:7:21: /cases/0/expect/values/0/pointer: `risk` is not a JSON pointer",
            "t.tests.yaml:8:34: /cases/0/expect/values/1/matches: not a valid regular expression",
            "t.tests.yaml:9:11: /cases/0/expect/values/2: no check",
            "t.tests.yaml:10:11: /cases/0/expect/values/3: more than one check (`equals`, `min/max`)",
            "t.tests.yaml:11:21: /cases/0/expect/tool_called/0: unknown tool `abacus`",
            "t.tests.yaml:12:7: /cases/0/expect/colour: unknown field `colour`",
            "t.tests.yaml:13:11: /cases/1/name: duplicate case name `a`",
            "t.tests.yaml:15:13: /cases/1/repeat: expected an integer between 1 and 100, got 0",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(expected)),
                "{expected}\nnot in\n{errors:#?}"
            );
        }
        assert_eq!(errors.len(), 9, "{errors:#?}");
    }

    #[test]
    fn a_tests_file_needs_its_agent() {
        let mut diags = Vec::new();
        let tests = parse_tests(
            "acme/ghost.tests.yaml",
            b"cases: [{name: a, input: {}}]",
            Some("acme"),
            "ghost",
            Target::Missing,
            &catalog(),
            &mut diags,
        );
        assert!(tests.is_none());
        assert!(
            diags[0].to_string().contains("no agent `ghost` beside"),
            "{diags:?}"
        );
    }

    /// A folder's tests files: the agent beside each is found, a broken agent file leaves its
    /// tests checked alone, a missing one is an error, and neither is taken for an agent.
    #[test]
    fn a_folder_s_tests_files_are_read_beside_their_agents() {
        let dir = tempfile::tempdir().unwrap();
        let acme = dir.path().join("acme");
        std::fs::create_dir(&acme).unwrap();
        let agent = "agent_type: a\nmodel: m\nsystem_prompt: hi\noutput_schema: {type: object}\n";
        let case = "cases: [{name: a, input: {}}]\n";
        std::fs::write(acme.join("echo.yaml"), agent).unwrap();
        std::fs::write(acme.join("echo.tests.yaml"), case).unwrap();
        std::fs::write(acme.join("echo.cassette.json"), "{}").unwrap();
        std::fs::write(acme.join("broken.yaml"), "agent_type: [\n").unwrap();
        std::fs::write(acme.join("broken.tests.yaml"), case).unwrap();
        std::fs::write(acme.join("ghost.tests.yaml"), case).unwrap();
        std::fs::write(dir.path().join("stray.tests.yaml"), case).unwrap();
        let agents = super::super::load_dir(dir.path(), &catalog());
        let files: Vec<String> = agents
            .diagnostics
            .iter()
            .map(|d| d.file.rsplit('/').next().unwrap().to_string())
            .collect();
        assert_eq!(
            files,
            ["broken.yaml", "stray.tests.yaml"],
            "{:#?}",
            agents.diagnostics
        );
        assert_eq!(agents.files, 2);
        let tests = load_tests(dir.path(), &agents.agents, &catalog());
        assert_eq!(tests.read, 3);
        let found: Vec<&str> = tests.files.iter().map(|t| t.agent.as_str()).collect();
        assert_eq!(found, ["broken", "echo"]);
        assert_eq!(tests.diagnostics.len(), 1, "{:#?}", tests.diagnostics);
        assert!(tests.diagnostics[0].message.contains("no agent `ghost`"));
        // The agent's own output_schema is the case's default.
        assert!(tests.files[1].cases[0].output_validator.is_some());
        assert!(tests.files[0].cases[0].output_validator.is_none());
        assert_eq!(
            tests.files[1].cassette_path(),
            acme.join("echo.cassette.json")
        );
    }
}
