//! JSON Schemas of settings and agent files: generated from the Rust types, and a located
//! document checked against one, each failure worded for a person.
//!
//! jsonschema's own messages describe the schema; these describe the fix: the expected type
//! and range, the allowed values, the unknown field and the ones that are allowed.

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use crate::diag::Diagnostic;
use crate::yaml::{Located, push_pointer};

/// A located document, already checked against its schema, read as `T`; a failure is located
/// at the field serde stopped at.
pub fn decode<T: serde::de::DeserializeOwned>(file: &str, doc: &Located) -> Result<T, Diagnostic> {
    serde_path_to_error::deserialize(&doc.value).map_err(|e| {
        let pointer = format!("/{}", e.path().to_string().replace('.', "/"));
        Diagnostic::field(file, doc, &pointer, e.inner().to_string())
    })
}

/// The JSON Schema (2020-12, subschemas inlined) of a Rust type.
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    serde_json::to_value(generator.into_root_schema_for::<T>()).expect("a schema serializes")
}

/// Checks `doc` (read from `file`) against `validator`, compiled from `schema`.
pub fn check(file: &str, doc: &Located, schema: &Value, validator: &Validator) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for error in validator.iter_errors(&doc.value) {
        let pointer = error.instance_path().to_string();
        let node = schema_node(schema, &error.schema_path().to_string());
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = node
                    .and_then(|n| n.get("properties"))
                    .and_then(Value::as_object)
                    .map(|p| {
                        p.keys()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                for field in unexpected {
                    let at = push_pointer(&pointer, field);
                    let message = if allowed.is_empty() {
                        format!("unknown field `{field}`")
                    } else {
                        format!("unknown field `{field}`; expected one of {allowed}")
                    };
                    out.push(Diagnostic::at(file, doc.key_pos(&at), at.clone(), message));
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                out.push(Diagnostic::at(
                    file,
                    doc.pos(&pointer),
                    pointer,
                    format!("missing required field `{name}`"),
                ));
            }
            _ => out.push(Diagnostic::field(
                file,
                doc,
                &pointer,
                describe(&error, node),
            )),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The subschema that a schema path (ending in the failing keyword) points at.
fn schema_node<'a>(schema: &'a Value, schema_path: &str) -> Option<&'a Value> {
    let parent = schema_path.rsplit_once('/').map_or("", |(p, _)| p);
    schema.pointer(parent)
}

fn type_name(t: &str) -> &'static str {
    match t {
        "integer" => "an integer",
        "number" => "a number",
        "string" => "a string",
        "boolean" => "true or false",
        "array" => "a list",
        "object" => "a mapping",
        "null" => "nothing",
        _ => "a value",
    }
}

/// "a number between 0 and 2", from the subschema's type and bounds.
fn expectation(node: Option<&Value>) -> String {
    let node = node.cloned().unwrap_or(Value::Null);
    let types: Vec<String> = match node.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str())
            .filter(|t| *t != "null")
            .map(String::from)
            .collect(),
        _ => vec![],
    };
    let mut s = match types.as_slice() {
        [] => "a value".to_string(),
        [one] => type_name(one).to_string(),
        many => many
            .iter()
            .map(|t| type_name(t))
            .collect::<Vec<_>>()
            .join(" or "),
    };
    let min = node.get("minimum").or(node.get("exclusiveMinimum"));
    let max = node.get("maximum").or(node.get("exclusiveMaximum"));
    match (min.map(number), max.map(number)) {
        (Some(lo), Some(hi)) => s.push_str(&format!(" between {lo} and {hi}")),
        (Some(lo), None) => s.push_str(&format!(" of at least {lo}")),
        (None, Some(hi)) => s.push_str(&format!(" of at most {hi}")),
        (None, None) => {}
    }
    if let Some(Value::String(p)) = node.get("pattern") {
        s.push_str(&format!(" matching {p}"));
    }
    s
}

/// A schema bound as a person writes it: `2`, not `2.0`.
fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => v.to_string(),
    }
}

/// Shows the value a user wrote, shortened.
fn got(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

fn describe(error: &ValidationError<'_>, node: Option<&Value>) -> String {
    let instance = error.instance();
    match error.kind() {
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(_) | TypeKind::Multiple(_) => expectation(node),
            };
            format!("expected {expected}, got {}", got(instance))
        }
        ValidationErrorKind::Minimum { .. }
        | ValidationErrorKind::Maximum { .. }
        | ValidationErrorKind::ExclusiveMinimum { .. }
        | ValidationErrorKind::ExclusiveMaximum { .. } => {
            format!("expected {}, got {}", expectation(node), got(instance))
        }
        ValidationErrorKind::Enum { options } => {
            let allowed = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            format!("expected one of {allowed}, got {}", got(instance))
        }
        ValidationErrorKind::Constant { expected_value } => {
            format!("expected {expected_value}, got {}", got(instance))
        }
        ValidationErrorKind::MinLength { limit: 1 } => "must not be empty".to_string(),
        ValidationErrorKind::MinLength { limit } => {
            format!("must be at least {limit} characters long")
        }
        ValidationErrorKind::MaxLength { limit } => format!(
            "must be at most {limit} characters long, got {}",
            instance.as_str().map_or(0, |s| s.chars().count())
        ),
        ValidationErrorKind::MinItems { limit } => format!("must have at least {limit} items"),
        ValidationErrorKind::MaxItems { limit } => format!("must have at most {limit} items"),
        ValidationErrorKind::UniqueItems => format!("items must be unique, got {}", got(instance)),
        ValidationErrorKind::Pattern { pattern } => {
            format!(
                "expected a string matching {pattern}, got {}",
                got(instance)
            )
        }
        _ => error.to_string(),
    }
}
