//! The specs as published: the documents poem-openapi generates, with the tags in the V1
//! document's order, and the OpenAPI 3.1 edition of the V1 spec, where each server-sent event
//! is described as what it is.

use serde_json::{Map, Value, json};

use super::ApiTags;

/// Which edition of the OpenAPI specification a document follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edition {
    /// OpenAPI 3.0.0, for the generators that need it.
    V30,
    /// OpenAPI 3.1.0 (JSON Schema 2020-12).
    V31,
}

/// The V1 spec, as served at `/openapi.json` (3.0) or `/openapi-3.1.json`.
pub fn v1(edition: Edition) -> Value {
    let mut doc = published(&super::v1_service().spec());
    let schemas = doc
        .pointer("/components/schemas")
        .cloned()
        .unwrap_or_default();
    enum_refs(&mut doc, &schemas, edition);
    match edition {
        Edition::V30 => doc,
        Edition::V31 => to_openapi31(doc),
    }
}

/// Writes each field whose type is an enum as a plain `$ref` to it, where poem-openapi wraps
/// the reference in `allOf` to give the field its description: generators read a reference
/// to an enum as the enum's type, but not an `allOf` of it. 3.0 ignores what sits beside a
/// `$ref`, so there the field's description goes (the enum has its own); 3.1 keeps it.
fn enum_refs(v: &mut Value, schemas: &Value, edition: Edition) {
    match v {
        Value::Object(map) => {
            for child in map.values_mut() {
                enum_refs(child, schemas, edition);
            }
            let Some(Value::Array(members)) = map.get("allOf") else {
                return;
            };
            let Some(reference) = members
                .first()
                .and_then(|m| m.get("$ref"))
                .and_then(Value::as_str)
                .map(String::from)
            else {
                return;
            };
            let is_enum = reference
                .strip_prefix("#/components/schemas/")
                .and_then(|name| schemas.get(name))
                .is_some_and(|t| t.get("enum").is_some());
            let annotations_only = members.iter().skip(1).all(|m| {
                m.as_object()
                    .is_some_and(|o| o.keys().all(|k| k == "description"))
            });
            if !is_enum || !annotations_only {
                return;
            }
            map.remove("allOf");
            if edition == Edition::V30 {
                map.clear();
            }
            map.insert("$ref".into(), Value::String(reference));
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| enum_refs(i, schemas, edition)),
        _ => {}
    }
}

/// The admin spec (OpenAPI 3.0).
pub fn admin() -> Value {
    published(&super::admin_service().spec())
}

/// A document as YAML (the committed files).
pub fn yaml(doc: &Value) -> String {
    serde_yaml::to_string(doc).unwrap_or_default()
}

/// A document as pretty JSON.
pub fn json_text(doc: &Value) -> String {
    serde_json::to_string_pretty(doc).unwrap_or_default()
}

/// A generated document with its tags in [`ApiTags::IN_ORDER`] (poem-openapi sorts them by
/// name; the reference page lists them in this order).
fn published(generated: &str) -> Value {
    let mut doc: Value = serde_json::from_str(generated).unwrap_or_default();
    if let Some(tags) = doc.get_mut("tags").and_then(Value::as_array_mut) {
        let rank = |t: &Value| {
            let name = t["name"].as_str().unwrap_or_default();
            ApiTags::IN_ORDER
                .iter()
                .position(|tag| poem_openapi::Tags::name(tag) == name)
                .unwrap_or(usize::MAX)
        };
        tags.sort_by_key(rank);
    }
    let enums = doc
        .pointer("/components/schemas")
        .cloned()
        .unwrap_or_default();
    inline_nullable_enums(&mut doc, &enums);
    doc
}

/// Writes each nullable reference to an enum (poem-openapi's `allOf: [{$ref}, ...]` beside
/// `nullable`, which OpenAPI 3.0 cannot read: a `$ref`'s values do not include null) as the
/// enum itself, with null among its values.
fn inline_nullable_enums(v: &mut Value, schemas: &Value) {
    match v {
        Value::Object(map) => {
            for child in map.values_mut() {
                inline_nullable_enums(child, schemas);
            }
            if map.get("nullable") != Some(&Value::Bool(true)) {
                return;
            }
            let target = map
                .get("allOf")
                .and_then(|all| all.get(0))
                .and_then(|first| first.get("$ref"))
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .and_then(|name| schemas.get(name));
            let Some(target) = target.filter(|t| t.get("enum").is_some()) else {
                return;
            };
            let mut values = target["enum"].as_array().cloned().unwrap_or_default();
            values.push(Value::Null);
            map.remove("allOf");
            map.insert("type".into(), target["type"].clone());
            map.insert("enum".into(), Value::Array(values));
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| inline_nullable_enums(i, schemas)),
        _ => {}
    }
}

/// The 3.1 edition of a 3.0 document: `nullable` becomes a `null` type, and the bodies of
/// `text/event-stream` responses describe each event (`data` a JSON string whose
/// `contentSchema` is the event's payload) instead of an array of payloads.
pub fn to_openapi31(mut doc: Value) -> Value {
    doc["openapi"] = json!("3.1.0");
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            for op in item
                .as_object_mut()
                .into_iter()
                .flat_map(|m| m.values_mut())
            {
                let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                    continue;
                };
                for response in responses.values_mut() {
                    if let Some(media) = response.pointer_mut("/content/text~1event-stream") {
                        let payload = media.get("schema").cloned().unwrap_or(json!({}));
                        media["schema"] = sse_event(payload);
                    }
                }
            }
        }
    }
    nullable_to_null_type(&mut doc);
    doc
}

/// One server-sent event whose `data` is the JSON text of `payload`.
fn sse_event(payload: Value) -> Value {
    json!({
        "type": "object",
        "description": "One server-sent event; its `data` is the JSON text of the payload.",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": payload,
            },
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
    })
}

/// Rewrites every schema's `nullable: true` as 3.1 says it: `null` among its types, or for a
/// schema without a `type` (a reference), `anyOf` it and `null`.
fn nullable_to_null_type(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for child in map.values_mut() {
                nullable_to_null_type(child);
            }
            if map.remove("nullable") != Some(Value::Bool(true)) {
                return;
            }
            match map.get_mut("type") {
                Some(Value::String(t)) => {
                    let t = std::mem::take(t);
                    map.insert("type".into(), json!([t, "null"]));
                    if let Some(Value::Array(values)) = map.get_mut("enum")
                        && !values.contains(&Value::Null)
                    {
                        values.push(Value::Null);
                    }
                }
                _ => {
                    // Keep the annotations outside; the value is the schema or null.
                    let mut inner = Map::new();
                    for key in ["$ref", "allOf", "anyOf", "oneOf", "enum", "const"] {
                        if let Some(x) = map.remove(key) {
                            inner.insert(key.into(), x);
                        }
                    }
                    map.insert(
                        "anyOf".into(),
                        json!([Value::Object(inner), {"type": "null"}]),
                    );
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(nullable_to_null_type),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_the_document() {
        let doc = v1(Edition::V30);
        let names: Vec<&str> = doc["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Agents", "Chat", "Usage", "API Keys", "Webhooks"]);
    }

    #[test]
    fn a_nullable_enum_is_written_out_with_null_among_its_values() {
        let doc = v1(Edition::V30);
        let finish =
            &doc["components"]["schemas"]["ChatStreamChunk"]["properties"]["finish_reason"];
        assert_eq!(finish["type"], "string");
        assert_eq!(finish["nullable"], true);
        assert_eq!(
            finish["enum"],
            json!([
                "stop",
                "length",
                "tool_calls",
                "content_filter",
                "error",
                null
            ])
        );
        assert!(finish.get("allOf").is_none());
        let v31 = v1(Edition::V31);
        let finish =
            &v31["components"]["schemas"]["ChatStreamChunk"]["properties"]["finish_reason"];
        assert_eq!(finish["type"], json!(["string", "null"]));
        assert_eq!(finish["enum"].as_array().unwrap().len(), 6, "null once");
    }

    #[test]
    fn a_field_of_an_enum_type_refers_to_the_enum() {
        let v30 = v1(Edition::V30);
        let status = &v30["components"]["schemas"]["RunResponse"]["properties"]["status"];
        assert_eq!(status, &json!({"$ref": "#/components/schemas/RunState"}));
        let v31 = v1(Edition::V31);
        let status = &v31["components"]["schemas"]["RunResponse"]["properties"]["status"];
        assert_eq!(status["$ref"], "#/components/schemas/RunState");
        assert!(
            status["description"].is_string(),
            "3.1 keeps the field's description"
        );
        // A reference to an object keeps its `allOf`.
        let step = &v30["components"]["schemas"]["RunEventData"]["properties"]["step"];
        assert!(step.get("allOf").is_some());
    }

    #[test]
    fn nullable_becomes_a_null_type() {
        let mut v = json!({
            "a": {"type": "string", "nullable": true, "enum": ["x"]},
            "b": {"allOf": [{"$ref": "#/c"}], "nullable": true, "description": "d"},
            "c": {"type": "string", "nullable": false},
        });
        nullable_to_null_type(&mut v);
        assert_eq!(
            v,
            json!({
                "a": {"type": ["string", "null"], "enum": ["x", null]},
                "b": {"description": "d", "anyOf": [{"allOf": [{"$ref": "#/c"}]}, {"type": "null"}]},
                "c": {"type": "string"},
            })
        );
    }

    #[test]
    fn the_31_edition_has_no_nullable_and_describes_each_stream_event() {
        let doc = v1(Edition::V31);
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(!doc.to_string().contains("\"nullable\""));
        for (path, payload) in [
            ("/v1/chat/stream", "ChatStreamChunk"),
            ("/v1/runs/{id}/events", "RunEventData"),
        ] {
            let op = doc["paths"][path]
                .as_object()
                .and_then(|item| item.values().next())
                .unwrap();
            let data = &op["responses"]["200"]["content"]["text/event-stream"]["schema"]["properties"]
                ["data"];
            assert_eq!(data["type"], "string", "{path}");
            let schema = data["contentSchema"].to_string();
            assert!(schema.contains(payload), "{path}: {schema}");
        }
    }
}
