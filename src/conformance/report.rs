//! The kit's results: a check (name, requests sent, failures with their JSON pointer, expected
//! and actual values), and the report as text, JSON or JUnit XML, with every secret masked.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One way a response differs from what the contract says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Where in the response (JSON pointer; `""` is the whole response or its status line).
    pub pointer: String,
    pub expected: Value,
    pub actual: Value,
    pub message: String,
}

impl Failure {
    pub fn new(
        pointer: &str,
        expected: impl Into<Value>,
        actual: impl Into<Value>,
        message: String,
    ) -> Failure {
        Failure {
            pointer: pointer.to_string(),
            expected: expected.into(),
            actual: actual.into(),
            message,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// A request as reported: method, path and query, which key sent it (by role, never the key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub method: String,
    pub path: String,
    pub auth: String,
    /// The status answered, or `null` when there was no answer.
    pub status: Option<u16>,
}

/// One named check and what it found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub group: String,
    pub outcome: Outcome,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub requests: Vec<Sent>,
    pub failures: Vec<Failure>,
    pub duration_ms: u64,
}

/// Every check of one run of the kit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub base_url: String,
    pub checks: Vec<CheckResult>,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Report {
    pub fn new(base_url: &str, checks: Vec<CheckResult>) -> Report {
        let count = |o: Outcome| checks.iter().filter(|c| c.outcome == o).count();
        Report {
            base_url: base_url.to_string(),
            passed: count(Outcome::Pass),
            failed: count(Outcome::Fail),
            skipped: count(Outcome::Skip),
            checks,
        }
    }

    /// Whether no check failed.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }

    /// The report with every occurrence of each secret masked, wherever it appears.
    pub fn redacted(&self, secrets: &[String]) -> Report {
        let value = serde_json::to_value(self).expect("a report serializes");
        serde_json::from_value(redact_value(value, secrets)).expect("a masked report reads back")
    }

    /// One line per check, its failures under it, and the summary.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for c in &self.checks {
            let mark = match c.outcome {
                Outcome::Pass => "pass",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "skip",
            };
            let last = c
                .requests
                .last()
                .map(|r| format!("  [{} {}]", r.method, r.path))
                .unwrap_or_default();
            match &c.reason {
                Some(reason) => {
                    let _ = writeln!(out, "{mark} {}: {reason}", c.name);
                }
                None => {
                    let _ = writeln!(out, "{mark} {}{last}", c.name);
                }
            }
            for f in &c.failures {
                let _ = writeln!(
                    out,
                    "     at {}: {}\n       expected: {}\n       actual:   {}",
                    pointer_text(&f.pointer),
                    f.message,
                    short(&f.expected),
                    short(&f.actual)
                );
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "{}", self.summary());
        out
    }

    pub fn summary(&self) -> String {
        format!(
            "conformance of {}: {} passed, {} failed, {} skipped",
            self.base_url, self.passed, self.failed, self.skipped
        )
    }

    /// JUnit XML: a testsuite per group, a testcase per check; skipped as `<skipped/>`.
    pub fn junit(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites name=\"ares conformance\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
            self.checks.len(),
            self.failed,
            self.skipped
        );
        let mut groups: Vec<&str> = Vec::new();
        for c in &self.checks {
            if !groups.contains(&c.group.as_str()) {
                groups.push(&c.group);
            }
        }
        for g in groups {
            let cases: Vec<&CheckResult> = self.checks.iter().filter(|c| c.group == g).collect();
            let count = |o: Outcome| cases.iter().filter(|c| c.outcome == o).count();
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
                crate::junit::escape(g),
                cases.len(),
                count(Outcome::Fail),
                count(Outcome::Skip)
            );
            for c in cases {
                let _ = write!(
                    out,
                    "    <testcase classname=\"conformance.{}\" name=\"{}\" time=\"{:.3}\"",
                    crate::junit::escape(&c.group),
                    crate::junit::escape(&c.name),
                    c.duration_ms as f64 / 1000.0
                );
                match c.outcome {
                    Outcome::Pass => {
                        let _ = writeln!(out, "/>");
                    }
                    Outcome::Skip => {
                        let _ = writeln!(
                            out,
                            ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                            crate::junit::escape(c.reason.as_deref().unwrap_or(""))
                        );
                    }
                    Outcome::Fail => {
                        let first = c.failures.first();
                        let message = first
                            .map(|f| format!("at {}: {}", pointer_text(&f.pointer), f.message))
                            .unwrap_or_default();
                        let mut body = String::new();
                        for r in &c.requests {
                            let _ = writeln!(
                                body,
                                "{} {} ({}) -> {:?}",
                                r.method, r.path, r.auth, r.status
                            );
                        }
                        for f in &c.failures {
                            let _ = writeln!(
                                body,
                                "at {}: {}\n  expected: {}\n  actual:   {}",
                                pointer_text(&f.pointer),
                                f.message,
                                short(&f.expected),
                                short(&f.actual)
                            );
                        }
                        let _ = writeln!(
                            out,
                            ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                            crate::junit::escape(&message),
                            crate::junit::escape(&body)
                        );
                    }
                }
            }
            let _ = writeln!(out, "  </testsuite>");
        }
        out.push_str("</testsuites>\n");
        out
    }
}

fn pointer_text(pointer: &str) -> String {
    if pointer.is_empty() {
        "(the response)".to_string()
    } else {
        pointer.to_string()
    }
}

/// A value on one line, cut at 300 characters.
pub fn short(v: &Value) -> String {
    clip(&v.to_string())
}

/// Text cut at 300 characters.
pub fn clip(text: &str) -> String {
    if text.chars().count() > 300 {
        format!("{}…", text.chars().take(300).collect::<String>())
    } else {
        text.to_string()
    }
}

/// `secret` as it may be shown: its first characters (as the API's `prefix`) and a mask.
pub fn mask(secret: &str) -> String {
    let head: String = secret.chars().take(9).collect();
    format!("{head}****")
}

/// `text` with every occurrence of each secret masked.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        out = out.replace(s.as_str(), &mask(s));
    }
    out
}

fn redact_value(v: Value, secrets: &[String]) -> Value {
    match v {
        Value::String(s) => Value::String(redact(&s, secrets)),
        Value::Array(a) => Value::Array(a.into_iter().map(|v| redact_value(v, secrets)).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (redact(&k, secrets), redact_value(v, secrets)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report() -> Report {
        let check =
            |name: &str, outcome, failures: Vec<Failure>, reason: Option<&str>| CheckResult {
                name: name.into(),
                group: "auth".into(),
                outcome,
                reason: reason.map(String::from),
                requests: vec![Sent {
                    method: "GET".into(),
                    path: "/v1/agents".into(),
                    auth: "key A".into(),
                    status: Some(200),
                }],
                failures,
                duration_ms: 3,
            };
        let secret = "ares_SECRETSECRETSECRETSECRET0123456789";
        Report::new(
            "http://x",
            vec![
                check("auth.one", Outcome::Pass, vec![], None),
                check(
                    "auth.two",
                    Outcome::Fail,
                    vec![Failure::new(
                        "/keys/0/secret",
                        json!("none"),
                        json!(secret),
                        format!("listed {secret} <&>"),
                    )],
                    None,
                ),
                check("auth.three", Outcome::Skip, vec![], Some("needs --key-b")),
            ],
        )
    }

    #[test]
    fn secrets_are_masked_everywhere() {
        let secret = "ares_SECRETSECRETSECRETSECRET0123456789".to_string();
        let r = report().redacted(std::slice::from_ref(&secret));
        let all = format!(
            "{}{}{}",
            r.text(),
            r.junit(),
            serde_json::to_string(&r).unwrap()
        );
        assert!(!all.contains(&secret), "{all}");
        assert!(all.contains("ares_SECR****"));
        assert_eq!(
            redact("a ares_SECRETSECRETSECRETSECRET0123456789 b", &[secret]),
            "a ares_SECR**** b"
        );
    }

    #[test]
    fn junit_has_a_testcase_per_check() {
        let xml = report().junit();
        assert_eq!(xml.matches("<testcase ").count(), 3);
        assert!(xml.contains("<skipped message=\"needs --key-b\"/>"));
        assert!(xml.contains("<failure message=\"at /keys/0/secret: listed"));
        assert!(xml.contains("&lt;&amp;&gt;"));
        assert!(xml.contains("tests=\"3\" failures=\"1\" skipped=\"1\""));
    }

    #[test]
    fn text_has_a_line_per_check_and_the_summary() {
        let text = report().text();
        assert!(text.contains("pass auth.one"));
        assert!(text.contains("FAIL auth.two"));
        assert!(text.contains("at /keys/0/secret"));
        assert!(text.contains("skip auth.three: needs --key-b"));
        assert!(text.ends_with("1 passed, 1 failed, 1 skipped\n"));
    }
}
