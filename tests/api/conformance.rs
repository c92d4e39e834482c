//! Checks responses against the generated OpenAPI specs: the operation must declare the status,
//! its required headers must be present, and the body (each event, for a stream) must validate
//! against the declared schema. `TestApp` runs this on every response of every test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value, json};

struct Operation {
    spec: usize,
    method: String,
    template: String,
    segments: Vec<String>,
    op: Value,
}

struct Specs {
    components: Vec<Value>,
    operations: Vec<Operation>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

/// OpenAPI 3.0 schema keywords to JSON Schema 2020-12: `nullable` admits `null`.
fn convert(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(convert).collect()),
        Value::Object(o) => {
            let mut out: Map<String, Value> = o
                .iter()
                .filter(|(k, _)| *k != "nullable")
                .map(|(k, v)| (k.clone(), convert(v)))
                .collect();
            if o.get("nullable") == Some(&Value::Bool(true)) {
                match out.get("type").cloned() {
                    Some(Value::String(t)) => {
                        out.insert("type".into(), json!([t, "null"]));
                    }
                    _ => return json!({"anyOf": [Value::Object(out), {"type": "null"}]}),
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn specs() -> &'static Specs {
    static SPECS: OnceLock<Specs> = OnceLock::new();
    SPECS.get_or_init(|| {
        let docs: Vec<Value> = [
            ares::api::v1_service().spec(),
            ares::api::admin_service().spec(),
        ]
        .iter()
        .map(|s| serde_json::from_str(s).expect("the spec is JSON"))
        .collect();
        let mut operations = Vec::new();
        for (i, doc) in docs.iter().enumerate() {
            for (template, item) in doc["paths"].as_object().expect("paths") {
                for (method, op) in item.as_object().expect("path item") {
                    operations.push(Operation {
                        spec: i,
                        method: method.to_uppercase(),
                        template: template.clone(),
                        segments: template.split('/').map(String::from).collect(),
                        op: op.clone(),
                    });
                }
            }
        }
        Specs {
            components: docs.iter().map(|d| convert(&d["components"])).collect(),
            operations,
            validators: Mutex::new(HashMap::new()),
        }
    })
}

fn matches(segments: &[String], path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts.len() == segments.len()
        && segments
            .iter()
            .zip(&parts)
            .all(|(s, p)| (s.starts_with('{') && s.ends_with('}') && !p.is_empty()) || s == p)
}

fn validator(spec: usize, key: String, schema: &Value) -> Arc<jsonschema::Validator> {
    let specs = specs();
    let mut cache = specs.validators.lock().unwrap();
    cache
        .entry(key)
        .or_insert_with(|| {
            let mut root = convert(schema);
            if let Value::Object(o) = &mut root {
                o.insert("components".into(), specs.components[spec].clone());
            }
            Arc::new(jsonschema::validator_for(&root).expect("a spec schema compiles"))
        })
        .clone()
}

fn validate(spec: usize, key: String, schema: &Value, value: &Value) -> Result<(), String> {
    let v = validator(spec, key, schema);
    let errors: Vec<String> = v
        .iter_errors(value)
        .map(|e| format!("{} at '{}'", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Whether a response conforms to the spec. Routes the specs do not describe (health,
/// metrics, unknown paths, unsupported methods) are not checked.
pub fn check(
    method: &str,
    path: &str,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    text: &str,
) -> Result<(), String> {
    let specs = specs();
    let Some(op) = specs
        .operations
        .iter()
        .find(|o| o.method == method && matches(&o.segments, path))
    else {
        return Ok(());
    };
    let responses = &op.op["responses"];
    let Some(resp) = responses
        .get(status.to_string())
        .or(responses.get("default"))
    else {
        return Err(format!(
            "status {status} is not declared for {method} {}",
            op.template
        ));
    };
    for (name, h) in resp["headers"].as_object().into_iter().flatten() {
        if h["required"] == true && !headers.contains_key(name.to_lowercase().as_str()) {
            return Err(format!("required header {name} is missing"));
        }
    }
    let Some(content) = resp["content"].as_object() else {
        return if text.is_empty() {
            Ok(())
        } else {
            Err(format!("status {status} declares no body, got {text:?}"))
        };
    };
    let key = |media: &str| format!("{} {} {status} {media}", op.method, op.template);
    if let Some(sse) = content.get("text/event-stream") {
        let item = &sse["schema"];
        for line in text.lines().filter(|l| !l.is_empty()) {
            let data = line
                .strip_prefix("data: ")
                .ok_or_else(|| format!("not an SSE data line: {line:?}"))?;
            let event: Value = serde_json::from_str(data)
                .map_err(|e| format!("event is not JSON ({e}): {data}"))?;
            validate(op.spec, key("sse"), item, &event)
                .map_err(|e| format!("event {data}: {e}"))?;
        }
        return Ok(());
    }
    let (media, body) = content.iter().next().ok_or("no media type")?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("body is not JSON ({e})"))?;
    validate(op.spec, key(media), &body["schema"], &value)
}

#[test]
fn the_checker_catches_drift() {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-request-id", "r".parse().unwrap());
    let good = json!({"keys": [{"id": "k", "name": "n", "prefix": "ares_abcd", "created_at": "2026-03-01T00:00:00Z", "expires_at": null, "last_used": null}]});
    assert_eq!(
        check("GET", "/v1/api-keys", 200, &headers, &good.to_string()),
        Ok(())
    );
    let wrong_type = json!({"keys": [{"id": 5, "name": "n", "prefix": "p", "created_at": "2026-03-01T00:00:00Z"}]});
    assert!(
        check(
            "GET",
            "/v1/api-keys",
            200,
            &headers,
            &wrong_type.to_string()
        )
        .is_err()
    );
    let missing = json!({"items": []});
    assert!(check("GET", "/v1/api-keys", 200, &headers, &missing.to_string()).is_err());
    assert!(
        check("GET", "/v1/api-keys", 418, &headers, "{}")
            .unwrap_err()
            .contains("not declared")
    );
    assert!(
        check(
            "GET",
            "/v1/api-keys",
            200,
            &reqwest::header::HeaderMap::new(),
            &good.to_string()
        )
        .unwrap_err()
        .contains("X-REQUEST-ID")
    );
    let event = "data: {\"delta\": 5, \"finish_reason\": null}\n\n";
    assert!(check("POST", "/v1/chat/stream", 200, &headers, event).is_err());
    assert_eq!(check("GET", "/healthz", 200, &headers, "ok"), Ok(()));
}
