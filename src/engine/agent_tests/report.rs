//! What `ares test` prints: a table of the cases, the failing expectations, a summary line;
//! and its JUnit XML, written by hand with every attribute and text escaped.

use std::fmt::Write as _;

use super::{CaseResult, TestReport};

impl TestReport {
    /// One line per case: agent, case, result, tokens and milliseconds (of all its runs).
    pub fn table(&self) -> String {
        let rows: Vec<[String; 5]> = self
            .cases
            .iter()
            .map(|c| {
                [
                    c.agent.clone(),
                    c.name.clone(),
                    result(c),
                    c.runs.iter().map(|r| r.tokens).sum::<u64>().to_string(),
                    c.runs
                        .iter()
                        .map(|r| r.duration_ms)
                        .sum::<u64>()
                        .to_string(),
                ]
            })
            .collect();
        let head = ["AGENT", "CASE", "RESULT", "TOKENS", "MS"].map(String::from);
        let mut widths = head.clone().map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&head).chain(&rows) {
            let _ = writeln!(
                out,
                "{:<a$}  {:<b$}  {:<c$}  {:>d$}  {:>e$}",
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                a = widths[0],
                b = widths[1],
                c = widths[2],
                d = widths[3],
                e = widths[4],
            );
        }
        out
    }

    /// Every failing expectation of a failed case, one per line, at its file:line:column.
    pub fn failures(&self) -> Vec<String> {
        self.cases
            .iter()
            .filter(|c| !c.passed())
            .flat_map(|c| c.runs.iter().flat_map(|r| &r.failures))
            .map(ToString::to_string)
            .collect()
    }

    /// `N cases: P passed, F failed (R runs, T tokens)`.
    pub fn summary(&self) -> String {
        let passed = self.cases.iter().filter(|c| c.passed()).count();
        let runs: usize = self.cases.iter().map(|c| c.runs.len()).sum();
        let tokens: u64 = self
            .cases
            .iter()
            .flat_map(|c| &c.runs)
            .map(|r| r.tokens)
            .sum();
        format!(
            "{} cases: {passed} passed, {} failed ({runs} runs, {tokens} tokens)",
            self.cases.len(),
            self.cases.len() - passed
        )
    }
}

/// `pass`, `FAIL`, or for a repeated case `pass 4/5` / `FAIL 2/5 (pass_rate 0.8)`.
fn result(c: &CaseResult) -> String {
    let word = if c.passed() { "pass" } else { "FAIL" };
    if c.runs.len() == 1 {
        return word.to_string();
    }
    let mut s = format!("{word} {}/{}", c.passes(), c.runs.len());
    if c.pass_rate < 1.0 {
        let _ = write!(s, " (pass_rate {})", c.pass_rate);
    }
    s
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The report as JUnit XML: a `testsuite` per tests file, a `testcase` per case and run. A run
/// that failed is a `failure` when its case failed; when its case still passed (its
/// `pass_rate` allows some failures), the run's failures are in its `system-out`.
pub fn junit_xml(report: &TestReport) -> String {
    let mut suites: Vec<(&str, Vec<&CaseResult>)> = Vec::new();
    for c in &report.cases {
        match suites.last_mut() {
            Some((agent, cases)) if *agent == c.agent => cases.push(c),
            _ => suites.push((&c.agent, vec![c])),
        }
    }
    let failed = |c: &CaseResult| {
        if c.passed() {
            0
        } else {
            c.runs.iter().filter(|r| !r.passed()).count()
        }
    };
    let total_ms = |cs: &[&CaseResult]| -> u64 {
        cs.iter().flat_map(|c| &c.runs).map(|r| r.duration_ms).sum()
    };
    let all: Vec<&CaseResult> = report.cases.iter().collect();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"ares test\" tests=\"{}\" failures=\"{}\" errors=\"0\" time=\"{}\">",
        all.iter().map(|c| c.runs.len()).sum::<usize>(),
        all.iter().map(|c| failed(c)).sum::<usize>(),
        seconds(total_ms(&all))
    );
    for (agent, cases) in &suites {
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\" time=\"{}\">",
            crate::junit::escape(agent),
            cases.iter().map(|c| c.runs.len()).sum::<usize>(),
            cases.iter().map(|c| failed(c)).sum::<usize>(),
            seconds(total_ms(cases))
        );
        for c in cases {
            for (i, run) in c.runs.iter().enumerate() {
                let name = if c.runs.len() > 1 {
                    format!("{} (run {} of {})", c.name, i + 1, c.runs.len())
                } else {
                    c.name.clone()
                };
                let _ = write!(
                    x,
                    "    <testcase classname=\"{}\" name=\"{}\" file=\"{}\" time=\"{}\"",
                    crate::junit::escape(&agent.replace('/', ".")),
                    crate::junit::escape(&name),
                    crate::junit::escape(&c.file.display().to_string()),
                    seconds(run.duration_ms)
                );
                if run.passed() {
                    x.push_str("/>\n");
                    continue;
                }
                x.push_str(">\n");
                let text: Vec<String> = run.failures.iter().map(ToString::to_string).collect();
                if c.passed() {
                    let _ = writeln!(
                        x,
                        "      <system-out>{}\n(the case passes: {} of {} runs passed, pass_rate {})</system-out>",
                        crate::junit::escape(&text.join("\n")),
                        c.passes(),
                        c.runs.len(),
                        c.pass_rate
                    );
                } else {
                    let _ = writeln!(
                        x,
                        "      <failure message=\"{}\" type=\"expectation\">{}</failure>",
                        crate::junit::escape(&run.failures[0].message),
                        crate::junit::escape(&text.join("\n"))
                    );
                }
                x.push_str("    </testcase>\n");
            }
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::super::CaseRun;
    use super::*;
    use crate::diag::Diagnostic;

    fn run(failure: Option<&str>) -> CaseRun {
        CaseRun {
            status: None,
            tokens: 3,
            duration_ms: 1234,
            failures: failure
                .map(|m| Diagnostic::file("a.tests.yaml", m))
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn a_repeated_case_passes_at_its_rate() {
        let case = |pass_rate, runs| CaseResult {
            file: "a.tests.yaml".into(),
            agent: "demo/a".into(),
            name: "c".into(),
            pass_rate,
            runs,
        };
        let three = || vec![run(None), run(Some("no")), run(None)];
        assert!(!case(1.0, three()).passed());
        assert!(case(0.6, three()).passed());
        assert!(case(2.0 / 3.0, three()).passed());
        assert!(!case(0.7, three()).passed());
        assert!(case(0.0, vec![run(Some("no"))]).passed());
        assert_eq!(result(&case(0.6, three())), "pass 2/3 (pass_rate 0.6)");
    }

    #[test]
    fn junit_has_a_testcase_per_run_and_failures_with_messages() {
        let report = TestReport {
            cases: vec![
                CaseResult {
                    file: "d/a.tests.yaml".into(),
                    agent: "demo/a".into(),
                    name: "x <y>".into(),
                    pass_rate: 1.0,
                    runs: vec![run(None), run(Some("bad & worse"))],
                },
                CaseResult {
                    file: "d/a.tests.yaml".into(),
                    agent: "demo/a".into(),
                    name: "z".into(),
                    pass_rate: 1.0,
                    runs: vec![run(None)],
                },
            ],
            ..TestReport::default()
        };
        let xml = junit_xml(&report);
        assert_eq!(xml.matches("<testcase ").count(), 3, "{xml}");
        assert_eq!(xml.matches("<testsuite ").count(), 1, "{xml}");
        assert!(xml.contains("name=\"x &lt;y&gt; (run 2 of 2)\""), "{xml}");
        assert!(
            xml.contains("<failure message=\"bad &amp; worse\" type=\"expectation\">"),
            "{xml}"
        );
        assert!(xml.contains("tests=\"3\" failures=\"1\""), "{xml}");
        assert!(xml.contains("time=\"1.234\""), "{xml}");
    }
}
