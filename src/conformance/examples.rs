//! The V1 document's own examples (`contracts/document/`), sent to the deployment: each answer
//! has the status and the shape of the documented one (every documented field, of its JSON type).

use serde_json::{Value, json};

use super::{Auth, Ctx, Failure};

/// The document's examples as data, as committed in `contracts/document/`.
const DOCUMENT: [(&str, &str); 10] = [
    (
        "listAgents",
        include_str!("../../contracts/document/listAgents.json"),
    ),
    (
        "getAgent",
        include_str!("../../contracts/document/getAgent.json"),
    ),
    (
        "runAgent",
        include_str!("../../contracts/document/runAgent.json"),
    ),
    (
        "listAgentRuns",
        include_str!("../../contracts/document/listAgentRuns.json"),
    ),
    ("chat", include_str!("../../contracts/document/chat.json")),
    (
        "chatStream",
        include_str!("../../contracts/document/chatStream.json"),
    ),
    (
        "getUsage",
        include_str!("../../contracts/document/getUsage.json"),
    ),
    (
        "listApiKeys",
        include_str!("../../contracts/document/listApiKeys.json"),
    ),
    (
        "createApiKey",
        include_str!("../../contracts/document/createApiKey.json"),
    ),
    (
        "revokeApiKey",
        include_str!("../../contracts/document/revokeApiKey.json"),
    ),
];

/// The example of `operation`.
pub fn document(operation: &str) -> Value {
    DOCUMENT
        .iter()
        .find(|(op, _)| *op == operation)
        .map(|(_, text)| serde_json::from_str(text).expect("a document example is JSON"))
        .unwrap_or(Value::Null)
}

/// Objects whose members belong to the agent, not to the contract: their fields are not compared.
fn free_form(pointer: &str) -> bool {
    let last = pointer.rsplit('/').next().unwrap_or("");
    matches!(
        last,
        "input" | "output" | "context" | "input_schema" | "output_schema"
    )
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every place where `actual` lacks a field of `example` or holds another JSON type. `null` on
/// either side matches anything (the document's `null`s and the API's not-yet values); an
/// integer is a number; each item of an array is compared with the example's first.
pub fn shape_diff(example: &Value, actual: &Value, pointer: &str, out: &mut Vec<Failure>) {
    match (example, actual) {
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Object(e), Value::Object(a)) => {
            if free_form(pointer) {
                return;
            }
            for (k, ev) in e {
                let p = crate::yaml::push_pointer(pointer, k);
                match a.get(k) {
                    Some(av) => shape_diff(ev, av, &p, out),
                    None => out.push(Failure::new(
                        &p,
                        json!(format!("a {} like the document's {}", type_name(ev), ev)),
                        json!("missing"),
                        "the document's example has this field".into(),
                    )),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if let Some(first) = e.first() {
                for (i, av) in a.iter().enumerate() {
                    shape_diff(first, av, &format!("{pointer}/{i}"), out);
                }
            }
        }
        (e, a) => {
            let (te, ta) = (type_name(e), type_name(a));
            if te != ta
                && !(te == "number" && ta == "integer")
                && !(te == "integer" && ta == "number")
            {
                out.push(Failure::new(
                    pointer,
                    json!(format!("a {te} like the document's {e}")),
                    a.clone(),
                    "the document's example gives this field another JSON type".into(),
                ));
            }
        }
    }
}

/// Sends one example (its path and request adapted to the deployment's agent) and compares.
async fn one(ctx: &mut Ctx, operation: &str, method: &str, path: &str, body: Option<Value>) {
    let doc = document(operation);
    ctx.start("examples", operation);
    let Some(r) = ctx.send(method, path, Auth::A, body.as_ref(), &[]).await else {
        return ctx.finish();
    };
    let status = doc["status"].as_u64().unwrap_or(200) as u16;
    if ctx.expect_status(&r, status) {
        let mut diffs = Vec::new();
        if let Some(events) = doc["events"].as_array() {
            let live: Vec<Value> = super::spec::sse_events(&r.text)
                .into_iter()
                .filter_map(Result::ok)
                .collect();
            for (i, ev) in live.iter().enumerate() {
                // The last documented event is the final one, the first the others.
                let example = if i + 1 == live.len() {
                    events.last()
                } else {
                    events.first()
                };
                shape_diff(
                    example.unwrap_or(&Value::Null),
                    ev,
                    &format!("/events/{i}"),
                    &mut diffs,
                );
            }
        } else if !doc["response"].is_null() {
            shape_diff(&doc["response"], &r.body, "", &mut diffs);
        } else {
            ctx.ensure(
                r.text.is_empty(),
                "",
                json!("no body"),
                json!(super::report::clip(&r.text)),
                "the document's answer has no body",
            );
        }
        for d in diffs {
            ctx.fail(d);
        }
    }
    ctx.finish();
}

pub async fn check(ctx: &mut Ctx) {
    let agent = ctx.agent.clone().expect("an agent was chosen");
    one(
        ctx,
        "listAgents",
        "GET",
        "/v1/agents?page=1&per_page=20",
        None,
    )
    .await;
    one(
        ctx,
        "getAgent",
        "GET",
        &format!("/v1/agents/{}", agent.name),
        None,
    )
    .await;
    let run = document("runAgent")["request"].clone();
    one(
        ctx,
        "runAgent",
        "POST",
        &format!("/v1/agents/{}/run", agent.name),
        Some(run),
    )
    .await;
    one(
        ctx,
        "listAgentRuns",
        "GET",
        &format!("/v1/agents/{}/runs?page=1&per_page=20", agent.name),
        None,
    )
    .await;
    let chat = ctx.chat_body();
    one(ctx, "chat", "POST", "/v1/chat", Some(chat.clone())).await;
    one(ctx, "chatStream", "POST", "/v1/chat/stream", Some(chat)).await;
    one(ctx, "getUsage", "GET", "/v1/usage", None).await;
    one(ctx, "listApiKeys", "GET", "/v1/api-keys", None).await;
    if let Some(reason) = ctx.destructive_refused() {
        ctx.skip("examples", "createApiKey", reason.clone());
        ctx.skip("examples", "revokeApiKey", reason);
        return;
    }
    let create = document("createApiKey");
    ctx.start("examples", "createApiKey");
    let body = create["request"].clone();
    if let Some(r) = ctx.post("/v1/api-keys", Auth::A, &body).await {
        let secret = r.body["secret"].as_str().unwrap_or_default().to_string();
        ctx.remember_secret(&secret);
        if ctx.expect_status(&r, 201) {
            let id = r.body["key"].as_str().unwrap_or_default().to_string();
            // Revoked by the next example; at the end too, should that fail.
            ctx.created_keys.push((Auth::A, id.clone()));
            let mut diffs = Vec::new();
            shape_diff(&create["response"], &r.body, "", &mut diffs);
            for d in diffs {
                ctx.fail(d);
            }
            ctx.finish();
            if !id.is_empty() {
                one(
                    ctx,
                    "revokeApiKey",
                    "DELETE",
                    &format!("/v1/api-keys/{id}"),
                    None,
                )
                .await;
                return;
            }
        }
    }
    ctx.finish();
    ctx.skip("examples", "revokeApiKey", "no key was created to revoke");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_document_example_parses() {
        for (op, _) in DOCUMENT {
            assert_eq!(document(op)["operation"], json!(op));
        }
    }

    #[test]
    fn shapes_differ_by_pointer() {
        let example = document("listAgents")["response"].clone();
        let mut live = example.clone();
        let mut out = Vec::new();
        shape_diff(&example, &live, "", &mut out);
        assert!(out.is_empty(), "{out:?}");
        let total = live.as_object_mut().unwrap().remove("total").unwrap();
        live["count"] = total;
        live["agents"][0]["total_runs"] = json!("many");
        live["agents"][0]["last_run"] = Value::Null;
        live["agents"][0]["config"]["tools"] = json!([]);
        shape_diff(&example, &live, "", &mut out);
        let pointers: Vec<&str> = out.iter().map(|f| f.pointer.as_str()).collect();
        assert_eq!(pointers, ["/agents/0/total_runs", "/total"]);
    }
}
