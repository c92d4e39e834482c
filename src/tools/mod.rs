//! Built-in tools that agents may call: their descriptions for the model, and their execution
//! in-process within limits (argument and result size, time).

pub mod calculator;

use std::time::Duration;

use serde_json::{Value, json};

use crate::llm::ToolSpec;

/// Largest arguments a tool accepts, in bytes of JSON.
pub const MAX_ARGS_BYTES: usize = 64 * 1024;
/// Largest result given back to the model; longer results are cut.
pub const MAX_RESULT_BYTES: usize = 16 * 1024;
/// Longest a tool may run.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The built-in tools, by name, with the description given to the model.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "calculator",
        "Evaluates an arithmetic expression and returns the number. Supports + - * / % ^, parentheses, \
         pi, e, and sqrt, abs, ln, log, log2, log10, exp, sin, cos, tan, asin, acos, atan, floor, ceil, round, pow, min, max.",
    ),
    (
        "current_time",
        "Returns the current date and time in UTC, in RFC 3339.",
    ),
    (
        "json_extract",
        "Extracts the value at a JSON pointer (e.g. /items/0/price) from a JSON document and returns it as JSON.",
    ),
];

/// Names of the built-in tools.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(name, _)| *name)
}

/// The JSON Schema of a tool's arguments.
fn parameters(name: &str) -> Value {
    match name {
        "calculator" => json!({
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "The expression, e.g. 15000 * 0.03"}},
            "required": ["expression"]
        }),
        "json_extract" => json!({
            "type": "object",
            "properties": {
                "document": {"description": "The JSON document (a value, or a string holding JSON)"},
                "pointer": {"type": "string", "description": "An RFC 6901 JSON pointer, e.g. /items/0/price"}
            },
            "required": ["document", "pointer"]
        }),
        _ => json!({"type": "object", "properties": {}}),
    }
}

/// What the model is told about the tools `names`.
pub fn specs<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<ToolSpec> {
    names
        .into_iter()
        .filter_map(|n| BUILTIN.iter().find(|(name, _)| name == n))
        .map(|(name, description)| ToolSpec {
            name: name.to_string(),
            description: description.to_string(),
            parameters: parameters(name),
        })
        .collect()
}

fn arg<'a>(args: &'a Value, name: &str) -> Result<&'a Value, String> {
    args.get(name)
        .ok_or_else(|| format!("missing argument `{name}`"))
}

fn run_sync(name: &str, args: &Value) -> Result<String, String> {
    match name {
        "calculator" => {
            let expr = arg(args, "expression")?
                .as_str()
                .ok_or("`expression` must be a string")?;
            calculator::evaluate(expr).map(calculator::format)
        }
        "current_time" => Ok(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "json_extract" => {
            let doc = arg(args, "document")?;
            let pointer = arg(args, "pointer")?
                .as_str()
                .ok_or("`pointer` must be a string")?;
            let parsed;
            let doc = match doc {
                Value::String(s) => {
                    parsed = serde_json::from_str::<Value>(s)
                        .map_err(|e| format!("`document` is not JSON: {e}"))?;
                    &parsed
                }
                other => other,
            };
            let pointer = if pointer.is_empty() || pointer.starts_with('/') {
                pointer.to_string()
            } else {
                format!("/{pointer}")
            };
            doc.pointer(&pointer)
                .map(Value::to_string)
                .ok_or_else(|| format!("nothing at `{pointer}`"))
        }
        other => Err(format!("unknown tool `{other}`")),
    }
}

/// Runs tool `name` on the JSON text `arguments` the model produced. The result (or the error,
/// worded for the model) is what the model reads next; a tool never fails the run.
pub async fn run(name: &str, arguments: &str) -> Result<String, String> {
    if arguments.len() > MAX_ARGS_BYTES {
        return Err(format!("arguments are larger than {MAX_ARGS_BYTES} bytes"));
    }
    let args: Value = if arguments.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(arguments)
            .map_err(|e| format!("arguments are not a JSON object: {e}"))?
    };
    let name = name.to_string();
    let task = tokio::task::spawn_blocking(move || run_sync(&name, &args));
    let mut out = match tokio::time::timeout(TIMEOUT, task).await {
        Ok(Ok(result)) => result?,
        Ok(Err(_)) => return Err("the tool failed".into()),
        Err(_) => return Err(format!("the tool took longer than {} s", TIMEOUT.as_secs())),
    };
    if out.len() > MAX_RESULT_BYTES {
        let mut cut = MAX_RESULT_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(" ...[truncated]");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tools_run_and_explain_failures() {
        assert_eq!(
            run("calculator", r#"{"expression": "15000 * 0.03"}"#)
                .await
                .unwrap(),
            "450"
        );
        assert!(
            run("calculator", r#"{"expression": 5}"#)
                .await
                .unwrap_err()
                .contains("must be a string")
        );
        assert!(
            run("calculator", "not json")
                .await
                .unwrap_err()
                .contains("not a JSON object")
        );
        let now = run("current_time", "{}").await.unwrap();
        assert!(
            now.parse::<chrono::DateTime<chrono::Utc>>().is_ok(),
            "{now}"
        );
        let doc = r#"{"document": {"items": [{"price": 9.5}]}, "pointer": "/items/0/price"}"#;
        assert_eq!(run("json_extract", doc).await.unwrap(), "9.5");
        let doc = r#"{"document": "{\"a\": {\"b\": \"x\"}}", "pointer": "a/b"}"#;
        assert_eq!(run("json_extract", doc).await.unwrap(), "\"x\"");
        assert!(
            run("json_extract", r#"{"document": {}, "pointer": "/nope"}"#)
                .await
                .unwrap_err()
                .contains("nothing at")
        );
        assert!(run("rm", "{}").await.unwrap_err().contains("unknown tool"));
    }

    #[test]
    fn specs_describe_the_named_tools() {
        let names = vec!["calculator".to_string(), "json_extract".to_string()];
        let specs = specs(&names);
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].parameters["required"], json!(["expression"]));
    }
}
