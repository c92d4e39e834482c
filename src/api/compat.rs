//! Whether a new edition of an OpenAPI 3.0 spec breaks a client written against an older one:
//! a path, operation or response status removed, a field a response promised no longer
//! required, a type changed, an enum value removed, a new required request field or parameter.
//! Additions pass.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// One change that breaks a client of the old spec, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaking {
    /// `METHOD /path`, then where in the operation.
    pub at: String,
    pub what: String,
}

impl std::fmt::Display for Breaking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.what)
    }
}

/// Which way a schema's values travel: what a client sends, or what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Request,
    Response,
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every change from `old` to `new` that breaks a client of `old`.
pub fn breaking_changes(old: &Value, new: &Value) -> Vec<Breaking> {
    let mut out = Vec::new();
    let empty = Map::new();
    let new_paths = new["paths"].as_object().unwrap_or(&empty);
    for (path, old_item) in old["paths"].as_object().unwrap_or(&empty) {
        let Some(new_item) = new_paths.get(path) else {
            out.push(Breaking {
                at: path.clone(),
                what: "path removed".into(),
            });
            continue;
        };
        for method in METHODS {
            let Some(old_op) = old_item.get(method) else {
                continue;
            };
            let at = format!("{} {path}", method.to_uppercase());
            let Some(new_op) = new_item.get(method) else {
                out.push(Breaking {
                    at,
                    what: "operation removed".into(),
                });
                continue;
            };
            let cx = Cx { old, new };
            cx.parameters(&at, old_op, new_op, &mut out);
            if let Some(new_body) = new_op.pointer("/requestBody/content") {
                let old_body = old_op.pointer("/requestBody/content");
                for (media, new_media) in new_body.as_object().unwrap_or(&empty) {
                    match old_body.and_then(|b| b.get(media)) {
                        Some(old_media) => cx.schema(
                            &format!("{at} request {media}"),
                            &old_media["schema"],
                            &new_media["schema"],
                            Flow::Request,
                            &mut Vec::new(),
                            &mut out,
                        ),
                        None if new_op.pointer("/requestBody/required")
                            == Some(&Value::Bool(true))
                            && old_body.is_none() =>
                        {
                            out.push(Breaking {
                                at: at.clone(),
                                what: "a required request body added".into(),
                            })
                        }
                        None => {}
                    }
                }
            }
            let new_responses = new_op["responses"].as_object().unwrap_or(&empty);
            for (status, old_resp) in old_op["responses"].as_object().unwrap_or(&empty) {
                let Some(new_resp) = new_responses.get(status) else {
                    out.push(Breaking {
                        at: at.clone(),
                        what: format!("response {status} removed"),
                    });
                    continue;
                };
                for (media, old_media) in old_resp["content"].as_object().unwrap_or(&empty) {
                    let where_ = format!("{at} response {status} {media}");
                    match new_resp["content"].get(media) {
                        Some(new_media) => cx.schema(
                            &where_,
                            &old_media["schema"],
                            &new_media["schema"],
                            Flow::Response,
                            &mut Vec::new(),
                            &mut out,
                        ),
                        None => out.push(Breaking {
                            at: where_,
                            what: "media type removed".into(),
                        }),
                    }
                }
            }
        }
    }
    out
}

/// The two documents, for resolving references.
struct Cx<'a> {
    old: &'a Value,
    new: &'a Value,
}

/// A schema with its `$ref` followed and its `allOf` members merged (poem-openapi writes a
/// field's description as `allOf: [{$ref}, {description}]`).
fn flatten(doc: &Value, schema: &Value, depth: usize) -> (Value, Option<String>) {
    let mut name = None;
    let mut s = schema.clone();
    for _ in 0..32 {
        let Some(r) = s.get("$ref").and_then(Value::as_str) else {
            break;
        };
        name = r.rsplit('/').next().map(String::from);
        s = doc
            .pointer(r.trim_start_matches('#'))
            .cloned()
            .unwrap_or(Value::Null);
    }
    if depth < 8
        && let Some(members) = s.get("allOf").and_then(Value::as_array).cloned()
        && let Some(obj) = s.as_object_mut()
    {
        obj.remove("allOf");
        for m in members {
            let (m, n) = flatten(doc, &m, depth + 1);
            name = name.or(n);
            for (k, v) in m.as_object().into_iter().flatten() {
                match (k.as_str(), obj.get_mut(k)) {
                    ("required", Some(Value::Array(req))) => {
                        req.extend(v.as_array().cloned().unwrap_or_default())
                    }
                    ("properties", Some(Value::Object(props))) => {
                        for (pk, pv) in v.as_object().into_iter().flatten() {
                            props.insert(pk.clone(), pv.clone());
                        }
                    }
                    (_, None) => {
                        obj.insert(k.clone(), v.clone());
                    }
                    _ => {}
                }
            }
        }
    }
    (s, name)
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

impl Cx<'_> {
    fn parameters(&self, at: &str, old_op: &Value, new_op: &Value, out: &mut Vec<Breaking>) {
        let key = |p: &Value| {
            (
                p["in"].as_str().unwrap_or_default().to_string(),
                p["name"].as_str().unwrap_or_default().to_string(),
            )
        };
        let old_params: Vec<&Value> = old_op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        for p in new_op["parameters"].as_array().into_iter().flatten() {
            let (place, name) = key(p);
            let old_p = old_params
                .iter()
                .find(|o| key(o) == (place.clone(), name.clone()));
            let required = p["required"] == Value::Bool(true);
            match old_p {
                None if required => out.push(Breaking {
                    at: at.into(),
                    what: format!("a required {place} parameter `{name}` added"),
                }),
                Some(o) if required && o["required"] != Value::Bool(true) => out.push(Breaking {
                    at: at.into(),
                    what: format!("{place} parameter `{name}` made required"),
                }),
                Some(o) => self.schema(
                    &format!("{at} {place} parameter `{name}`"),
                    &o["schema"],
                    &p["schema"],
                    Flow::Request,
                    &mut Vec::new(),
                    out,
                ),
                None => {}
            }
        }
    }

    /// Compares a schema of the old spec with its counterpart in the new one.
    fn schema(
        &self,
        at: &str,
        old: &Value,
        new: &Value,
        flow: Flow,
        seen: &mut Vec<(String, String)>,
        out: &mut Vec<Breaking>,
    ) {
        let (old, old_name) = flatten(self.old, old, 0);
        let (new, new_name) = flatten(self.new, new, 0);
        if let (Some(a), Some(b)) = (&old_name, &new_name) {
            let pair = (a.clone(), b.clone());
            if seen.contains(&pair) {
                return;
            }
            seen.push(pair);
        }
        let mut push = |what: String| {
            out.push(Breaking {
                at: at.into(),
                what,
            })
        };
        if let (Some(a), Some(b)) = (old.get("type"), new.get("type"))
            && a != b
        {
            push(format!("type changed from {a} to {b}"));
            return;
        }
        if old.get("nullable") == Some(&Value::Bool(true))
            && new.get("nullable") != Some(&Value::Bool(true))
            && flow == Flow::Request
        {
            push("null no longer accepted".into());
        }
        if old.get("nullable") != Some(&Value::Bool(true))
            && new.get("nullable") == Some(&Value::Bool(true))
            && flow == Flow::Response
        {
            push("may now be null".into());
        }
        match (old.get("enum"), new.get("enum")) {
            (Some(a), Some(b)) => {
                let removed: Vec<String> = strings(a).difference(&strings(b)).cloned().collect();
                if !removed.is_empty() {
                    push(format!("enum values removed: {}", removed.join(", ")));
                }
            }
            (None, Some(_)) if flow == Flow::Request => {
                push("values restricted to an enum".into());
            }
            (Some(_), None) if flow == Flow::Response => {
                push("no longer restricted to its enum values".into());
            }
            _ => {}
        }
        let empty = Map::new();
        let old_props = old["properties"].as_object().unwrap_or(&empty);
        let new_props = new["properties"].as_object().unwrap_or(&empty);
        let old_req = strings(&old["required"]);
        let new_req = strings(&new["required"]);
        match flow {
            Flow::Response => {
                for field in old_req.difference(&new_req) {
                    push(format!("required field `{field}` removed or made optional"));
                }
            }
            Flow::Request => {
                for field in new_req.difference(&old_req) {
                    push(format!("new required request field `{field}`"));
                }
            }
        }
        for (field, old_field) in old_props {
            if let Some(new_field) = new_props.get(field) {
                self.schema(
                    &format!("{at} /{field}"),
                    old_field,
                    new_field,
                    flow,
                    seen,
                    out,
                );
            }
        }
        if let (Some(a), Some(b)) = (old.get("items"), new.get("items")) {
            self.schema(&format!("{at} /[]"), a, b, flow, seen, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> Value {
        json!({
            "openapi": "3.0.0",
            "paths": {
                "/v1/things": {
                    "get": {
                        "parameters": [{"in": "query", "name": "page", "required": false, "schema": {"type": "integer"}}],
                        "responses": {
                            "200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Things"}}}},
                            "401": {"content": {"application/json": {"schema": {"type": "object"}}}}
                        }
                    },
                    "post": {
                        "requestBody": {"required": true, "content": {"application/json": {"schema": {
                            "type": "object", "required": ["name"],
                            "properties": {"name": {"type": "string"}, "kind": {"type": "string", "enum": ["a", "b"]}}
                        }}}},
                        "responses": {"201": {"content": {"application/json": {"schema": {"type": "object"}}}}}
                    }
                }
            },
            "components": {"schemas": {
                "Things": {"type": "object", "required": ["things", "total"], "properties": {
                    "things": {"type": "array", "items": {"$ref": "#/components/schemas/Thing"}},
                    "total": {"type": "integer"}
                }},
                "Thing": {"type": "object", "required": ["status"], "properties": {
                    "status": {"allOf": [{"$ref": "#/components/schemas/Status"}, {"description": "d"}]},
                    "note": {"type": "string", "nullable": true}
                }},
                "Status": {"type": "string", "enum": ["on", "off"]}
            }}
        })
    }

    fn after(change: impl FnOnce(&mut Value)) -> Vec<String> {
        let old = spec();
        let mut new = spec();
        change(&mut new);
        breaking_changes(&old, &new)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_same_spec_and_additions_pass() {
        assert!(after(|_| {}).is_empty());
        let added = after(|s| {
            s["paths"]["/v1/new"] = json!({"get": {"responses": {}}});
            s["paths"]["/v1/things"]["get"]["responses"]["404"] = json!({});
            s["components"]["schemas"]["Thing"]["properties"]["extra"] = json!({"type": "string"});
            s["components"]["schemas"]["Status"]["enum"] = json!(["on", "off", "paused"]);
            s["paths"]["/v1/things"]["get"]["parameters"]
                .as_array_mut()
                .unwrap()
                .push(json!({"in": "query", "name": "q", "required": false, "schema": {"type": "string"}}));
            let body =
                "/paths/~1v1~1things/post/requestBody/content/application~1json/schema/properties";
            s.pointer_mut(body).unwrap()["tag"] = json!({"type": "string"});
        });
        assert!(added.is_empty(), "{added:?}");
    }

    #[test]
    fn each_breaking_change_is_named_where_it_is() {
        type Change = Box<dyn FnOnce(&mut Value)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|s| {
                    s["paths"].as_object_mut().unwrap().remove("/v1/things");
                }),
                "/v1/things: path removed",
            ),
            (
                Box::new(|s| {
                    s["paths"]["/v1/things"]
                        .as_object_mut()
                        .unwrap()
                        .remove("post");
                }),
                "POST /v1/things: operation removed",
            ),
            (
                Box::new(|s| {
                    s["paths"]["/v1/things"]["get"]["responses"]
                        .as_object_mut()
                        .unwrap()
                        .remove("401");
                }),
                "GET /v1/things: response 401 removed",
            ),
            (
                Box::new(|s| s["components"]["schemas"]["Things"]["required"] = json!(["things"])),
                "GET /v1/things response 200 application/json: required field `total` removed or made optional",
            ),
            (
                Box::new(|s| {
                    s["components"]["schemas"]["Things"]["properties"]["total"]["type"] =
                        json!("string")
                }),
                "GET /v1/things response 200 application/json /total: type changed from \"integer\" to \"string\"",
            ),
            (
                Box::new(|s| s["components"]["schemas"]["Status"]["enum"] = json!(["on"])),
                "GET /v1/things response 200 application/json /things /[] /status: enum values removed: off",
            ),
            (
                Box::new(|s| {
                    let p = "/paths/~1v1~1things/post/requestBody/content/application~1json/schema";
                    s.pointer_mut(p).unwrap()["required"] = json!(["name", "kind"]);
                }),
                "POST /v1/things request application/json: new required request field `kind`",
            ),
            (
                Box::new(|s| {
                    s["paths"]["/v1/things"]["get"]["parameters"][0]["required"] = json!(true);
                }),
                "GET /v1/things: query parameter `page` made required",
            ),
            (
                Box::new(|s| {
                    s["components"]["schemas"]["Thing"]["properties"]["status"]["nullable"] =
                        json!(true);
                }),
                "GET /v1/things response 200 application/json /things /[] /status: may now be null",
            ),
        ];
        for (change, expected) in cases {
            assert_eq!(after(change), vec![expected.to_string()]);
        }
    }
}
