//! The V1 spec the kit checks against (`openapi/v1.yaml`, embedded): finding the operation of a
//! request, and checking a response's status, headers, `Content-Type` and body against it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value, json};

use super::report::Failure;

/// The committed V1 spec, as this binary was built with it.
pub const V1_YAML: &str = include_str!("../../openapi/v1.yaml");

/// One operation of a spec.
pub struct Operation {
    pub method: String,
    pub template: String,
    pub operation_id: String,
    segments: Vec<String>,
    pub op: Value,
}

/// A parsed spec, with its schemas converted to JSON Schema and compiled on demand.
pub struct Spec {
    components: Value,
    pub operations: Vec<Operation>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

/// The embedded V1 spec.
pub fn v1() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let doc = crate::yaml::parse(V1_YAML)
            .expect("openapi/v1.yaml is YAML")
            .value;
        Spec::new(&doc)
    })
}

/// OpenAPI 3.0 schema keywords to JSON Schema 2020-12: `nullable` admits `null`. A 3.1 schema
/// (already JSON Schema) passes through unchanged.
pub fn convert(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(convert).collect()),
        Value::Object(o) => {
            let mut out: Map<String, Value> = o
                .iter()
                .filter(|(k, _)| *k != "nullable" && *k != "example")
                .map(|(k, v)| (k.clone(), convert(v)))
                .collect();
            if o.get("nullable") == Some(&Value::Bool(true)) {
                match out.get("type").cloned() {
                    Some(Value::String(t)) => {
                        out.insert("type".into(), json!([t, "null"]));
                        if let Some(Value::Array(e)) = out.get_mut("enum")
                            && !e.contains(&Value::Null)
                        {
                            e.push(Value::Null);
                        }
                    }
                    _ => return json!({"anyOf": [Value::Object(out), {"type": "null"}]}),
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// The type and subtype of a media type, lowercase, without parameters.
pub fn essence(media: &str) -> String {
    media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The value at `pointer`, or `null` when there is none (for reports).
pub fn at(value: &Value, pointer: &str) -> Value {
    value.pointer(pointer).cloned().unwrap_or(Value::Null)
}

impl Spec {
    /// A spec from its JSON (or YAML-as-JSON) document.
    pub fn new(doc: &Value) -> Spec {
        let mut operations = Vec::new();
        for (template, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                if !op.is_object() || method == "parameters" {
                    continue;
                }
                operations.push(Operation {
                    method: method.to_uppercase(),
                    template: template.clone(),
                    operation_id: op["operationId"].as_str().unwrap_or_default().to_string(),
                    segments: template.split('/').map(String::from).collect(),
                    op: op.clone(),
                });
            }
        }
        Spec {
            components: convert(&doc["components"]),
            operations,
            validators: Mutex::new(HashMap::new()),
        }
    }

    /// The operation a request's method and path (query ignored) belong to.
    pub fn operation(&self, method: &str, path: &str) -> Option<&Operation> {
        let path = path.split('?').next().unwrap_or(path);
        let parts: Vec<&str> = path.split('/').collect();
        // Segment by segment; a `{param}` matches any non-empty segment.
        self.operations.iter().find(|o| {
            o.method == method
                && o.segments.len() == parts.len()
                && o.segments.iter().zip(&parts).all(|(s, p)| {
                    (s.starts_with('{') && s.ends_with('}') && !p.is_empty()) || s == p
                })
        })
    }

    /// Whether the spec declares an operation for `method` and `template`.
    pub fn declares(&self, method: &str, template: &str) -> bool {
        self.operations
            .iter()
            .any(|o| o.method == method && o.template == template)
    }

    /// Whether `operation_id` takes a header parameter `name` (case-insensitive).
    pub fn takes_header(&self, operation_id: &str, name: &str) -> bool {
        self.operations
            .iter()
            .filter(|o| o.operation_id == operation_id)
            .flat_map(|o| o.op["parameters"].as_array().into_iter().flatten())
            .any(|p| {
                p["in"] == "header"
                    && p["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
    }

    /// Whether `operation_id` declares the response `status`.
    pub fn answers(&self, operation_id: &str, status: u16) -> bool {
        self.operations
            .iter()
            .filter(|o| o.operation_id == operation_id)
            .any(|o| o.op["responses"].get(status.to_string()).is_some())
    }

    fn validator(&self, key: &str, schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
        let mut cache = self.validators.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = cache.get(key) {
            return Ok(Arc::clone(v));
        }
        let mut root = convert(schema);
        if let Value::Object(o) = &mut root {
            o.insert("components".into(), self.components.clone());
        }
        let v = Arc::new(
            jsonschema::validator_for(&root)
                .map_err(|e| format!("the spec's schema does not compile: {e}"))?,
        );
        cache.insert(key.to_string(), Arc::clone(&v));
        Ok(v)
    }

    /// Every way `value` breaks `schema`, each at its JSON pointer (a missing required property
    /// at the pointer it would have).
    pub fn validate(&self, key: &str, schema: &Value, value: &Value, base: &str) -> Vec<Failure> {
        let v = match self.validator(key, schema) {
            Ok(v) => v,
            Err(e) => return vec![Failure::new(base, "a schema that compiles", Value::Null, e)],
        };
        v.iter_errors(value)
            .map(|e| {
                let mut pointer = e.instance_path().as_str().to_string();
                let kind = e.kind();
                let (expected, actual) = match kind {
                    jsonschema::error::ValidationErrorKind::Required { property } => {
                        let name = property.as_str().unwrap_or_default();
                        pointer = crate::yaml::push_pointer(&pointer, name);
                        (
                            json!(format!("property '{name}' present")),
                            json!("missing"),
                        )
                    }
                    _ => (
                        json!(format!("a value satisfying '{}'", kind.keyword())),
                        e.instance().clone().into_owned(),
                    ),
                };
                Failure::new(
                    &format!("{base}{pointer}"),
                    expected,
                    actual,
                    format!("spec: {e}"),
                )
            })
            .collect()
    }
}

/// A response as read by the kit.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Every way a response breaks the spec: a status the operation does not declare, a required
/// header missing, another `Content-Type`, a body (each event, for a stream) not matching the
/// declared schema; and, for an error, not the one error body with the request's id.
pub fn check_response(spec: &Spec, method: &str, path: &str, reply: &Reply) -> Vec<Failure> {
    let mut out = Vec::new();
    let Some(op) = spec.operation(method, path) else {
        return out;
    };
    let status = reply.status;
    let responses = &op.op["responses"];
    let Some(resp) = responses
        .get(status.to_string())
        .or(responses.get("default"))
    else {
        let declared: Vec<&String> = responses
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
            .collect();
        out.push(Failure::new(
            "",
            json!(format!(
                "a status declared for {method} {}: {declared:?}",
                op.template
            )),
            json!(status),
            format!(
                "spec: status {status} is not declared for {method} {}",
                op.template
            ),
        ));
        return out;
    };
    for (name, h) in resp["headers"].as_object().into_iter().flatten() {
        if h["required"] == true
            && !reply
                .headers
                .contains_key(name.to_ascii_lowercase().as_str())
        {
            out.push(Failure::new(
                "",
                json!(format!("header {name}")),
                json!("missing"),
                format!("spec: required header {name} is missing"),
            ));
        }
    }
    let content_type = reply
        .header("content-type")
        .map(essence)
        .unwrap_or_default();
    let Some(content) = resp["content"].as_object() else {
        if !reply.text.is_empty() {
            out.push(Failure::new(
                "",
                json!("no body"),
                json!(super::report::clip(&reply.text)),
                format!(
                    "spec: status {status} of {} declares no body",
                    op.operation_id
                ),
            ));
        }
        return out;
    };
    let Some((media, body)) = content.iter().find(|(m, _)| essence(m) == content_type) else {
        let declared: Vec<String> = content.keys().map(|m| essence(m)).collect();
        out.push(Failure::new(
            "",
            json!(format!("Content-Type one of {declared:?}")),
            json!(reply.header("content-type")),
            format!("spec: Content-Type of {} {status}", op.operation_id),
        ));
        return out;
    };
    let key = format!("{} {} {status} {media}", op.method, op.template);
    if essence(media) == "text/event-stream" {
        for (i, event) in sse_events(&reply.text).into_iter().enumerate() {
            match event {
                Ok(v) => {
                    out.extend(spec.validate(&key, &body["schema"], &v, &format!("/events/{i}")))
                }
                Err(e) => out.push(Failure::new(
                    &format!("/events/{i}"),
                    json!("a JSON `data:` event"),
                    json!(super::report::clip(&e)),
                    "spec: not an SSE JSON event".into(),
                )),
            }
        }
        return out;
    }
    if reply.body.is_null() && reply.text.trim() != "null" {
        out.push(Failure::new(
            "",
            json!("a JSON body"),
            json!(super::report::clip(&reply.text)),
            "spec: the body is not JSON".into(),
        ));
        return out;
    }
    out.extend(spec.validate(&key, &body["schema"], &reply.body, ""));
    if status >= 400 {
        out.extend(error_body(reply));
    }
    out
}

/// Whether an error answer is the one error body, its `request_id` the `X-Request-Id` header.
pub fn error_body(reply: &Reply) -> Vec<Failure> {
    let mut out = Vec::new();
    for field in ["code", "message", "request_id"] {
        let pointer = format!("/error/{field}");
        if reply
            .body
            .pointer(&pointer)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            out.push(Failure::new(
                &pointer,
                json!("a non-empty string"),
                at(&reply.body, &pointer),
                "the error body is {\"error\": {\"code\", \"message\", \"request_id\"}}".into(),
            ));
        }
    }
    let header = reply.header("x-request-id");
    if let (Some(h), Some(b)) = (
        header,
        reply
            .body
            .pointer("/error/request_id")
            .and_then(Value::as_str),
    ) && h != b
    {
        out.push(Failure::new(
            "/error/request_id",
            json!(h),
            json!(b),
            "the error's request_id is the X-Request-Id header".into(),
        ));
    }
    out
}

/// The events of a server-sent event stream: each event's joined `data:` lines as JSON, or the
/// offending text. Lines other than `data:`, `event:`, `id:`, `retry:` and comments are errors.
pub fn sse_events(text: &str) -> Vec<Result<Value, String>> {
    let mut out = Vec::new();
    let mut data: Vec<&str> = Vec::new();
    let flush = |data: &mut Vec<&str>, out: &mut Vec<Result<Value, String>>| {
        if !data.is_empty() {
            let joined = data.join("\n");
            out.push(serde_json::from_str(&joined).map_err(|_| joined.clone()));
            data.clear();
        }
    };
    for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if line.is_empty() {
            flush(&mut data, &mut out);
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        } else if line.starts_with(':')
            || ["event:", "id:", "retry:"]
                .iter()
                .any(|p| line.starts_with(p))
        {
        } else {
            out.push(Err(line.to_string()));
        }
    }
    flush(&mut data, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, content_type: &str, text: &str) -> Reply {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-request-id", "r-1".parse().unwrap());
        headers.insert("content-type", content_type.parse().unwrap());
        Reply {
            status,
            headers,
            text: text.into(),
            body: serde_json::from_str(text).unwrap_or(Value::Null),
        }
    }

    fn pointers(f: &[Failure]) -> Vec<&str> {
        f.iter().map(|f| f.pointer.as_str()).collect()
    }

    #[test]
    fn a_renamed_field_is_reported_at_its_pointer() {
        let good = json!({"agents": [], "total": 0, "page": 1, "per_page": 20});
        let ok = check_response(
            v1(),
            "GET",
            "/v1/agents?page=1",
            &reply(200, "application/json; charset=utf-8", &good.to_string()),
        );
        assert!(ok.is_empty(), "{ok:?}");
        let renamed = json!({"agents": [], "count": 0, "page": 1, "per_page": 20});
        let bad = check_response(
            v1(),
            "GET",
            "/v1/agents",
            &reply(200, "application/json", &renamed.to_string()),
        );
        assert_eq!(pointers(&bad), ["/total"]);
        assert_eq!(bad[0].actual, json!("missing"));
    }

    #[test]
    fn status_content_type_and_error_body_are_checked() {
        let f = check_response(
            v1(),
            "GET",
            "/v1/agents",
            &reply(418, "application/json", "{}"),
        );
        assert!(f[0].message.contains("not declared"), "{f:?}");
        let f = check_response(v1(), "GET", "/v1/agents", &reply(200, "text/plain", "{}"));
        assert!(f[0].message.contains("Content-Type"), "{f:?}");
        let other_id =
            json!({"error": {"code": "unauthorized", "message": "m", "request_id": "r-2"}});
        let f = check_response(
            v1(),
            "GET",
            "/v1/agents",
            &reply(401, "application/json", &other_id.to_string()),
        );
        assert_eq!(pointers(&f), ["/error/request_id"]);
        let f = check_response(
            v1(),
            "GET",
            "/v1/agents",
            &reply(401, "application/json", "{\"message\": \"no\"}"),
        );
        assert!(pointers(&f).contains(&"/error"), "{f:?}");
    }

    #[test]
    fn stream_events_are_checked_one_by_one() {
        let good = "data: {\"delta\": \"a\", \"finish_reason\": null}\n\ndata: {\"delta\": \"\", \"finish_reason\": \"stop\", \"tokens_used\": 3}\n\n";
        assert!(
            check_response(
                v1(),
                "POST",
                "/v1/chat/stream",
                &reply(200, "text/event-stream", good)
            )
            .is_empty()
        );
        let bad = "data: {\"delta\": \"a\", \"finish_reason\": null}\n\ndata: {\"delta\": 5, \"finish_reason\": null}\n\nnonsense\n";
        let f = check_response(
            v1(),
            "POST",
            "/v1/chat/stream",
            &reply(200, "text/event-stream", bad),
        );
        assert_eq!(pointers(&f), ["/events/1/delta", "/events/2"]);
    }

    #[test]
    fn nullable_becomes_a_null_type() {
        assert_eq!(
            convert(&json!({"type": "string", "nullable": true, "enum": ["a"]})),
            json!({"type": ["string", "null"], "enum": ["a", null]})
        );
    }
}
