//! Reads an `agents.d` folder: every file, every error, in one pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Catalog;
use super::registry::{Agent, AgentSet};
use super::spec::{AgentSpec, agent_schema, agent_validator, check};
use crate::diag::Diagnostic;
use crate::yaml;

/// The folder of agents offered to every tenant.
pub const GLOBAL_DIR: &str = "_global";

/// How the name of a tests file ends: `<agent>.tests.yaml`.
pub const TESTS_SUFFIX: &str = ".tests.yaml";
/// How the name of a cassette ends: `<agent>.cassette.json`, beside the tests file.
pub const CASSETTE_SUFFIX: &str = ".cassette.json";

/// The agent a file named `file_name` tests, when it is a tests file.
pub fn tested_agent(file_name: &str) -> Option<&str> {
    file_name
        .strip_suffix(TESTS_SUFFIX)
        .or_else(|| file_name.strip_suffix(".tests.yml"))
}

/// Whether a file of an agents folder belongs to the tests of an agent (a tests file or a
/// cassette) rather than being an agent itself.
pub fn is_test_companion(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| tested_agent(n).is_some() || n.ends_with(CASSETTE_SUFFIX))
}

/// Largest agent file read; anything bigger is a mistake, not an agent.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Names of agents and tenants: lowercase letters, digits and `-`, 1–64 characters,
/// starting and ending with a letter or digit.
pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

const NAME_RULE: &str =
    "use 1-64 lowercase letters, digits and `-`, starting and ending with a letter or digit";

/// What loading a folder found.
#[derive(Debug)]
pub struct LoadReport {
    /// The agents of every file that had no error.
    pub agents: AgentSet,
    /// Every problem, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// Agent files read.
    pub files: usize,
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

pub(super) fn sorted_entries(dir: &Path, diags: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| !is_hidden(p))
                .collect();
            v.sort();
            v
        }
        Err(e) => {
            diags.push(Diagnostic::file(
                dir.display().to_string(),
                format!("cannot read folder: {e}"),
            ));
            Vec::new()
        }
    }
}

/// Loads one file; returns the agent when it has no error.
fn load_file(
    path: &Path,
    tenant: Option<&str>,
    name: &str,
    catalog: &Catalog,
    diags: &mut Vec<Diagnostic>,
) -> Option<Agent> {
    let file = path.display().to_string();
    let bytes = match read_bounded(path) {
        Ok(b) => b,
        Err(message) => {
            diags.push(Diagnostic::file(&file, message));
            return None;
        }
    };
    parse_agent(&file, &bytes, tenant, name, catalog, diags).map(|a| Agent {
        file: path.to_path_buf(),
        ..a
    })
}

/// The bytes of a regular file (a link to one is followed), at most [`MAX_FILE_BYTES`]: a
/// device, a pipe or a huge file is refused, never read without bound.
pub(super) fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let regular = |m: &std::fs::Metadata| {
        if !m.is_file() {
            Err("not a regular file: agent files are plain files".to_string())
        } else if m.len() > MAX_FILE_BYTES {
            Err(format!("file is larger than {MAX_FILE_BYTES} bytes"))
        } else {
            Ok(())
        }
    };
    // Checked before opening: opening a pipe for reading waits for a writer.
    regular(&std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?)?;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    regular(&file.metadata().map_err(|e| format!("cannot read: {e}"))?)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("file is larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok(bytes)
}

/// Checks the bytes of one agent file named `name` (its stem) of `tenant` (`None`: `_global`),
/// pushing every problem onto `diags`; returns the agent when there was none.
pub fn parse_agent(
    file: &str,
    bytes: &[u8],
    tenant: Option<&str>,
    name: &str,
    catalog: &Catalog,
    diags: &mut Vec<Diagnostic>,
) -> Option<Agent> {
    let before = diags.len();
    if !is_valid_name(name) {
        diags.push(Diagnostic::file(
            file,
            format!("invalid agent name `{name}` (the file name): {NAME_RULE}"),
        ));
    }
    let doc = parse_located(file, bytes, diags)?;
    let mut found = crate::schema_check::check(file, &doc, agent_schema(), agent_validator());
    let compiled = check(file, &doc, catalog, &mut found);
    found.sort();
    diags.extend(found);
    if diags.len() > before {
        return None;
    }
    let spec: AgentSpec = match crate::schema_check::decode(file, &doc) {
        Ok(spec) => spec,
        Err(d) => {
            diags.push(d);
            return None;
        }
    };
    Some(Agent {
        tenant: tenant.map(String::from),
        name: name.to_string(),
        file: PathBuf::from(file),
        version: super::version_of(&spec),
        source_rev: None,
        input_validator: compiled.input,
        output_validator: compiled.output,
        spec,
    })
}

/// Loads every agent under `dir`: `<tenant>/<agent>.yaml` and `_global/<agent>.yaml`.
pub fn load_dir(dir: &Path, catalog: &Catalog) -> LoadReport {
    let mut diags = Vec::new();
    let mut files = 0;
    let mut tenants: BTreeMap<String, BTreeMap<String, Arc<Agent>>> = BTreeMap::new();
    let mut global = BTreeMap::new();
    if !dir.is_dir() {
        diags.push(Diagnostic::file(
            dir.display().to_string(),
            "agents folder not found",
        ));
    }
    for entry in if dir.is_dir() {
        sorted_entries(dir, &mut diags)
    } else {
        Vec::new()
    } {
        let shown = entry.display().to_string();
        if !entry.is_dir() {
            if is_test_companion(&entry) {
                diags.push(Diagnostic::file(
                    shown,
                    "tests files and cassettes belong beside their agent, in its tenant folder or _global/",
                ));
            } else if is_yaml(&entry) {
                diags.push(Diagnostic::file(
                    shown,
                    "agent files belong in a tenant folder: <agents dir>/<tenant>/<agent>.yaml, or _global/ for every tenant",
                ));
            }
            continue;
        }
        let folder = entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let tenant = (folder != GLOBAL_DIR).then_some(folder.as_str());
        if tenant.is_some() && !is_valid_name(&folder) {
            diags.push(Diagnostic::file(
                &shown,
                format!("invalid tenant folder name `{folder}`: {NAME_RULE}, or `{GLOBAL_DIR}`"),
            ));
            continue;
        }
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        for path in sorted_entries(&entry, &mut diags) {
            if path.is_dir() {
                diags.push(Diagnostic::file(
                    path.display().to_string(),
                    "nested folders are not read: agents live one level below their tenant folder",
                ));
                continue;
            }
            // Tests files and their cassettes sit beside the agents they test.
            if !is_yaml(&path) || is_test_companion(&path) {
                continue;
            }
            files += 1;
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            if let Some(first) = seen.get(&name) {
                diags.push(Diagnostic::file(
                    path.display().to_string(),
                    format!(
                        "duplicate agent name `{name}`: also defined by {}",
                        first.display()
                    ),
                ));
                continue;
            }
            seen.insert(name.clone(), path.clone());
            if let Some(agent) = load_file(&path, tenant, &name, catalog, &mut diags) {
                let target = match tenant {
                    Some(t) => tenants.entry(t.to_string()).or_default(),
                    None => &mut global,
                };
                target.insert(name, Arc::new(agent));
            }
        }
    }
    diags.sort();
    LoadReport {
        agents: AgentSet::new(tenants, global),
        diagnostics: diags,
        files,
    }
}

/// A file's bytes as a located YAML document, or its error (not UTF-8, not YAML) in `diags`.
pub(super) fn parse_located(
    file: &str,
    bytes: &[u8],
    diags: &mut Vec<Diagnostic>,
) -> Option<yaml::Located> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        diags.push(Diagnostic::file(file, "not UTF-8 text"));
        return None;
    };
    match yaml::parse(text) {
        Ok(doc) => Some(doc),
        Err(e) => {
            diags.push(Diagnostic::yaml(file, e));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "risk-analyzer", "x1", "1x", &"a".repeat(64)] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Risk", "a_b", "a.b", "é", &"a".repeat(65)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    /// Devices, pipes and huge files behind agent file names are refused, never read.
    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_read_and_only_so_much() {
        let dir = tempfile::tempdir().unwrap();
        let acme = dir.path().join("acme");
        std::fs::create_dir(&acme).unwrap();
        std::os::unix::fs::symlink("/dev/zero", acme.join("zeros.yaml")).unwrap();
        let fifo = acme.join("pipe.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let big = acme.join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        std::os::unix::fs::symlink(&big, acme.join("link.yaml")).unwrap();
        let report = load_dir(dir.path(), &Catalog::default());
        let messages: Vec<String> = report.diagnostics.iter().map(ToString::to_string).collect();
        for (file, message) in [
            ("zeros.yaml", "not a regular file"),
            ("pipe.yaml", "not a regular file"),
            ("big.yaml", "larger than"),
            ("link.yaml", "larger than"),
        ] {
            assert!(
                messages
                    .iter()
                    .any(|m| m.contains(file) && m.contains(message)),
                "{file}: {message} in {messages:#?}"
            );
        }
    }
}
