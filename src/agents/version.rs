//! An agent's version (a short hash of its effective definition) and the git revision its
//! file came from.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::spec::AgentSpec;

/// Hex digits of a version: 48 bits, enough that two definitions of one agent never share one.
const VERSION_LEN: usize = 12;

/// The version of a definition: the first hex digits of the SHA-256 of its canonical JSON
/// (keys sorted, no spaces, defaults filled in), so formatting, comments, key order and
/// spelling out a default do not change it.
pub fn version_of(spec: &AgentSpec) -> String {
    let value = serde_json::to_value(spec).unwrap_or(Value::Null);
    let digest = Sha256::digest(canonical_json(&value).as_bytes());
    let mut hex = String::with_capacity(VERSION_LEN);
    for b in digest.iter().take(VERSION_LEN / 2) {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// `value` as JSON text with every object's keys in sorted order and no whitespace.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let ordered: BTreeMap<&String, Value> =
                    map.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// Where the source revision of agent files comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Revisions {
    /// The last commit that touched each file, when the folder is in a git work tree.
    #[default]
    Git,
    /// One revision for every file (`ARES_AGENTS_REV`: files shipped without `.git`).
    Fixed(String),
    /// None recorded (tests, tools).
    None,
}

impl Revisions {
    /// The revision of each of `files` (paths under `dir`), where one is known.
    pub fn of(&self, dir: &Path, files: &[PathBuf]) -> BTreeMap<PathBuf, String> {
        match self {
            Revisions::Fixed(rev) => files.iter().map(|f| (f.clone(), rev.clone())).collect(),
            Revisions::None => BTreeMap::new(),
            Revisions::Git => last_commits(dir, files).unwrap_or_default(),
        }
    }
}

/// The last commit that touched each of `files`, from one `git log` over `dir` read newest
/// first and stopped once every file is found; `None` when git is missing or `dir` is not
/// in a work tree. Files never committed have no entry.
fn last_commits(dir: &Path, files: &[PathBuf]) -> Option<BTreeMap<PathBuf, String>> {
    let dir = dir.canonicalize().ok()?;
    let mut wanted: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for f in files {
        if let Ok(rel) = f.canonicalize().ok()?.strip_prefix(&dir) {
            wanted.insert(rel.to_path_buf(), f.clone());
        }
    }
    if wanted.is_empty() {
        return Some(BTreeMap::new());
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args([
            "log",
            "--format=commit %H",
            "--name-only",
            "--relative",
            "--",
            ".",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let mut found = BTreeMap::new();
    let mut missing: BTreeSet<&PathBuf> = wanted.keys().collect();
    let mut commit = String::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(hash) = line.strip_prefix("commit ") {
            commit = hash.to_string();
        } else if !line.is_empty() {
            let rel = PathBuf::from(&line);
            if missing.remove(&rel) {
                found.insert(wanted[&rel].clone(), commit.clone());
                if missing.is_empty() {
                    break;
                }
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::{Catalog, parse_agent};

    fn version(text: &str) -> String {
        let mut diags = Vec::new();
        let agent = parse_agent(
            "a.yaml",
            text.as_bytes(),
            None,
            "a",
            &Catalog::default(),
            &mut diags,
        )
        .unwrap_or_else(|| panic!("{diags:?}"));
        version_of(&agent.spec)
    }

    #[test]
    fn formatting_comments_order_and_spelled_out_defaults_keep_the_version() {
        let plain = "agent_type: t\nmodel: m\nsystem_prompt: Be brief.\n";
        let v = version(plain);
        assert_eq!(v.len(), VERSION_LEN);
        assert!(v.chars().all(|c| c.is_ascii_hexdigit()), "{v}");
        for same in [
            "# a comment\nmodel: m\nagent_type: t\nsystem_prompt: 'Be brief.'\n",
            "{agent_type: t, model: m, system_prompt: Be brief., max_tokens: 1024, status: active}",
        ] {
            assert_eq!(version(same), v, "{same}");
        }
        for other in [
            "agent_type: t\nmodel: m\nsystem_prompt: Be briefer.\n",
            "agent_type: t\nmodel: m\nsystem_prompt: Be brief.\nmax_tokens: 10\n",
            "agent_type: t\nmodel: m\nsystem_prompt: Be brief.\nstatus: disabled\n",
        ] {
            assert_ne!(version(other), v, "{other}");
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v: Value =
            serde_json::from_str(r#"{"b": {"z": 1, "a": [ {"y": 2, "x": 1} ]}, "a": 0}"#).unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":0,"b":{"a":[{"x":1,"y":2}],"z":1}}"#
        );
    }

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn each_file_gets_the_last_commit_that_touched_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        git(root, &["init", "-q"]);
        std::fs::create_dir(root.join("acme")).unwrap();
        let (a, b, c) = (
            root.join("acme/a.yaml"),
            root.join("acme/b.yaml"),
            root.join("acme/c.yaml"),
        );
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "1").unwrap();
        git(root, &["add", "."]);
        git(root, &["commit", "-q", "-m", "first"]);
        std::fs::write(&b, "2").unwrap();
        git(root, &["commit", "-q", "-am", "second"]);
        std::fs::write(&c, "never committed").unwrap();
        let head = |rev: &str| {
            let out = Command::new("git")
                .arg("-C")
                .arg(root)
                .args(["rev-parse", rev])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let revs = Revisions::Git.of(root, &[a.clone(), b.clone(), c.clone()]);
        assert_eq!(revs.get(&a), Some(&head("HEAD~1")));
        assert_eq!(revs.get(&b), Some(&head("HEAD")));
        assert_eq!(revs.get(&c), None);
        // A folder outside any work tree has no revisions; a fixed one applies to all.
        let plain = tempfile::tempdir().unwrap();
        let f = plain.path().join("x.yaml");
        std::fs::write(&f, "1").unwrap();
        assert!(
            Revisions::Git
                .of(plain.path(), std::slice::from_ref(&f))
                .is_empty()
        );
        assert_eq!(
            Revisions::Fixed("v1.2".into()).of(plain.path(), std::slice::from_ref(&f))[&f],
            "v1.2"
        );
    }
}
