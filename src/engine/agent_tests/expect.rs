//! The expectations of a case checked against a finished run: each that does not hold is a
//! diagnostic at its place in the tests file.

use serde_json::Value;

use crate::agents::{AgentTests, ExpectedStatus, LoadedCase, ValueCheck};
use crate::diag::Diagnostic;
use crate::store::{RunRecord, RunStatus, Step, StepKind};

/// What a case's run showed, and every expectation of `case` that it does not meet.
pub(super) fn check(
    tests: &AgentTests,
    case: &LoadedCase,
    run: &RunRecord,
    steps: &[Step],
) -> Vec<Diagnostic> {
    let at = case.pointer();
    let expect = &case.spec.expect;
    let mut out: Vec<(String, String)> = Vec::new();
    let expected = expect.status.unwrap_or(ExpectedStatus::Completed);
    let status_ok = matches!(
        (expected, run.status),
        (ExpectedStatus::Completed, RunStatus::Completed)
            | (ExpectedStatus::Failed, RunStatus::Failed)
    );
    if !status_ok {
        let pointer = if expect.status.is_some() {
            format!("{at}/expect/status")
        } else {
            at.clone()
        };
        let why = run
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        let default = if expect.status.is_none() {
            " (the default)"
        } else {
            ""
        };
        out.push((
            pointer,
            format!(
                "expected status {}{default}, got {}{why}",
                expected.as_str(),
                run.status.as_str()
            ),
        ));
    }
    // A run that should have completed and did not has no output to check: its status says why.
    let output_checks = status_ok || expected == ExpectedStatus::Failed;
    if output_checks {
        check_output(case, run.output.as_ref(), &mut out);
    }
    let called: Vec<&str> = steps
        .iter()
        .filter(|s| s.kind == StepKind::Tool)
        .map(|s| s.name.as_str())
        .collect();
    for (j, tool) in expect.tool_called.iter().enumerate() {
        if !called.contains(&tool.as_str()) {
            let list = if called.is_empty() {
                "none".to_string()
            } else {
                called.join(", ")
            };
            out.push((
                format!("{at}/expect/tool_called/{j}"),
                format!("tool `{tool}` was not called (tools called: {list})"),
            ));
        }
    }
    for (j, tool) in expect.tool_not_called.iter().enumerate() {
        let n = called.iter().filter(|c| **c == tool).count();
        if n > 0 {
            out.push((
                format!("{at}/expect/tool_not_called/{j}"),
                format!("tool `{tool}` was called {n} times"),
            ));
        }
    }
    if let Some(max) = expect.max_tokens
        && run.tokens_used > max
    {
        out.push((
            format!("{at}/expect/max_tokens"),
            format!("the run used {} tokens, more than {max}", run.tokens_used),
        ));
    }
    let took = run.duration_ms.unwrap_or_default();
    if let Some(max) = expect.max_duration_ms
        && took > max
    {
        out.push((
            format!("{at}/expect/max_duration_ms"),
            format!("the run took {took} ms, more than {max}"),
        ));
    }
    out.into_iter()
        .map(|(pointer, message)| tests.diagnostic(&pointer, message))
        .collect()
}

/// The output's schema and values.
fn check_output(case: &LoadedCase, output: Option<&Value>, out: &mut Vec<(String, String)>) {
    let at = case.pointer();
    let expect = &case.spec.expect;
    let Some(output) = output else {
        if expect.output_schema.is_some() || !expect.values.is_empty() {
            out.push((
                format!("{at}/expect"),
                "the run has no output to check".to_string(),
            ));
        }
        return;
    };
    if let Some(validator) = &case.output_validator
        && let Some(e) = validator.iter_errors(output).next()
    {
        let (pointer, whose) = if expect.output_schema.is_some() {
            (format!("{at}/expect/output_schema"), "the case's")
        } else {
            (at.clone(), "the agent's")
        };
        out.push((
            pointer,
            format!(
                "the output does not match {whose} output_schema at '{}': {e}",
                e.instance_path()
            ),
        ));
    }
    for (j, check) in expect.values.iter().enumerate() {
        let pattern = case.patterns.get(j).and_then(Option::as_ref);
        if let Err(message) = check_value(check, pattern, output) {
            out.push((format!("{at}/expect/values/{j}"), message));
        }
    }
}

/// One value check; the error says what was found.
fn check_value(
    check: &ValueCheck,
    pattern: Option<&regex::Regex>,
    output: &Value,
) -> Result<(), String> {
    let p = &check.pointer;
    let shown_at = if p.is_empty() { "the output" } else { p };
    let Some(value) = output.pointer(p) else {
        return Err(format!(
            "nothing at {shown_at} in the output {}",
            shown(output)
        ));
    };
    let got = shown(value);
    if let Some(expected) = &check.equals {
        if !same(value, expected) {
            return Err(format!("{shown_at} is {got}, expected {}", shown(expected)));
        }
    } else if let Some(options) = &check.one_of {
        if !options.iter().any(|o| same(value, o)) {
            return Err(format!(
                "{shown_at} is {got}, expected one of {}",
                shown(&Value::Array(options.clone()))
            ));
        }
    } else if let Some(needle) = &check.contains {
        let holds = match (value, needle) {
            (Value::String(s), Value::String(n)) => s.contains(n.as_str()),
            (Value::Array(items), n) => items.iter().any(|i| same(i, n)),
            (Value::String(_), n) => {
                return Err(format!(
                    "{shown_at} is a string; `contains` of a string takes a string, not {}",
                    shown(n)
                ));
            }
            _ => {
                return Err(format!(
                    "{shown_at} is {got}: `contains` checks a string or a list"
                ));
            }
        };
        if !holds {
            return Err(format!(
                "{shown_at} is {got}, which does not contain {}",
                shown(needle)
            ));
        }
    } else if let (Some(source), Some(regex)) = (&check.matches, pattern) {
        let Some(s) = value.as_str() else {
            return Err(format!("{shown_at} is {got}, not a string to match"));
        };
        if !regex.is_match(s) {
            return Err(format!(
                "{shown_at} is {got}, which does not match /{source}/"
            ));
        }
    } else if check.min.is_some() || check.max.is_some() {
        let Some(n) = value.as_f64() else {
            return Err(format!("{shown_at} is {got}, not a number"));
        };
        if let Some(lo) = check.min
            && n < lo
        {
            return Err(format!("{shown_at} is {got}, less than the min {lo}"));
        }
        if let Some(hi) = check.max
            && n > hi
        {
            return Err(format!("{shown_at} is {got}, more than the max {hi}"));
        }
    }
    Ok(())
}

/// JSON equality in which numbers are equal by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        // Integers compare exactly; with a fraction on either side, as floats.
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            x.as_f64() == y.as_f64()
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// A value in a message, shortened.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        format!("{}...", s.chars().take(117).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(v: Value) -> (ValueCheck, Option<regex::Regex>) {
        let check: ValueCheck = serde_json::from_value(v).unwrap();
        let pattern = check
            .matches
            .as_deref()
            .map(|p| regex::Regex::new(p).unwrap());
        (check, pattern)
    }

    fn run(v: Value) -> Result<(), String> {
        let (check, pattern) = entry(v);
        let output = json!({
            "level": "high", "score": 0.8, "n": 3, "tags": ["a", "b"],
            "text": "Refund of 20 EUR", "none": null
        });
        check_value(&check, pattern.as_ref(), &output)
    }

    /// Each kind of check passes on a value that satisfies it and fails, saying what it found,
    /// on one that does not.
    #[test]
    fn every_check_holds_and_fails() {
        for (ok, bad, found) in [
            (
                json!({"pointer": "/level", "equals": "high"}),
                json!({"pointer": "/level", "equals": "low"}),
                "/level is \"high\", expected \"low\"",
            ),
            (
                json!({"pointer": "/n", "equals": 3.0}),
                json!({"pointer": "/n", "equals": 4}),
                "/n is 3, expected 4",
            ),
            (
                json!({"pointer": "/none", "equals": null}),
                json!({"pointer": "/missing", "equals": null}),
                "nothing at /missing",
            ),
            (
                json!({"pointer": "/level", "one_of": ["low", "high"]}),
                json!({"pointer": "/level", "one_of": ["low", "medium"]}),
                "expected one of [\"low\",\"medium\"]",
            ),
            (
                json!({"pointer": "/text", "contains": "20 EUR"}),
                json!({"pointer": "/text", "contains": "USD"}),
                "does not contain \"USD\"",
            ),
            (
                json!({"pointer": "/tags", "contains": "b"}),
                json!({"pointer": "/tags", "contains": "c"}),
                "/tags is [\"a\",\"b\"], which does not contain \"c\"",
            ),
            (
                json!({"pointer": "/text", "matches": "^Refund of \\d+"}),
                json!({"pointer": "/text", "matches": "^\\d+$"}),
                "does not match /^\\d+$/",
            ),
            (
                json!({"pointer": "/score", "min": 0.5, "max": 1}),
                json!({"pointer": "/score", "max": 0.5}),
                "/score is 0.8, more than the max 0.5",
            ),
            (
                json!({"pointer": "/score", "min": 0.8}),
                json!({"pointer": "/score", "min": 0.9}),
                "less than the min 0.9",
            ),
            (
                json!({"pointer": "", "contains": "x"}),
                json!({"pointer": "/level", "min": 1}),
                "/level is \"high\", not a number",
            ),
        ] {
            let first = run(ok.clone());
            if ok["pointer"] == "" {
                // The whole output is an object: `contains` does not apply to it.
                assert!(
                    first
                        .unwrap_err()
                        .contains("`contains` checks a string or a list")
                );
            } else {
                assert_eq!(first, Ok(()), "{ok}");
            }
            let e = run(bad.clone()).unwrap_err();
            assert!(e.contains(found), "{bad}: {e}");
        }
    }
}
