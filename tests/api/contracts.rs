//! The V1 document's examples (`contracts/document/*.json`) against the spec and a live server.

use serde_json::{Value, json};

use crate::helpers::{TestApp, sse_events};

struct Example {
    file: String,
    v: Value,
}

fn examples() -> Vec<Example> {
    let mut files: Vec<_> = std::fs::read_dir("contracts/document")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| Example {
            file: p.display().to_string(),
            v: serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap(),
        })
        .collect()
}

fn document_body(e: &Value) -> String {
    match (&e["response"], &e["events"]) {
        (_, Value::Array(events)) => events.iter().map(|ev| format!("data: {ev}\n\n")).collect(),
        (Value::Null, _) => String::new(),
        (r, _) => r.to_string(),
    }
}

#[test]
fn every_documented_response_satisfies_the_spec() {
    let all = examples();
    assert_eq!(all.len(), 10, "one example per V1 endpoint");
    let spec: Value = serde_json::from_str(&ares::api::v1_service().spec()).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-request-id", "example".parse().unwrap());
    for Example { file, v } in all {
        let method = v["method"].as_str().unwrap();
        let path = v["path"]
            .as_str()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .replace("{id}", "key-uuid");
        // The operation the example documents exists in the spec under its id.
        let found = spec["paths"].as_object().unwrap().values().any(|item| {
            item.get(method.to_lowercase())
                .is_some_and(|op| op["operationId"] == v["operation"])
        });
        assert!(
            found,
            "{file}: no operation {} ({method}) in the spec",
            v["operation"]
        );
        let status = v["status"].as_u64().unwrap() as u16;
        if let Err(e) =
            crate::conformance::check(method, &path, status, &headers, &document_body(&v))
        {
            panic!("{file}: the documented response does not satisfy the spec: {e}");
        }
    }
}

/// Every field the document shows is in the live response, with the same JSON type.
fn assert_shape(doc: &Value, live: &Value, at: &str) {
    match (doc, live) {
        (Value::Object(d), Value::Object(l)) => {
            for (k, dv) in d {
                let lv = l
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} is documented but missing from {live}"));
                assert_shape(dv, lv, &format!("{at}.{k}"));
            }
        }
        (Value::Array(d), Value::Array(l)) => {
            if let Some(d0) = d.first() {
                // A documented item with a name is compared with the live item of that name.
                let l0 = match d0.get("name") {
                    Some(name) => l.iter().find(|x| x.get("name") == Some(name)),
                    None => l.first(),
                };
                let l0 = l0.unwrap_or_else(|| panic!("{at}: no live item like {d0} in {live}"));
                assert_shape(d0, l0, &format!("{at}[0]"));
            }
        }
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => {}
        _ => panic!("{at}: documented {doc}, got {live}"),
    }
}

#[tokio::test]
async fn every_documented_request_works_against_a_live_server() {
    let app = TestApp::spawn().await;
    let key = app.tenant("acme").await;
    // The state the document's examples show: a used key that expires.
    let android = app
        .create_key(
            &key,
            json!({"name": "android-production", "expires_in_days": 365}),
        )
        .await;
    app.usage(android.body["secret"].as_str().unwrap()).await;
    app.flush_usage().await;
    let mut examples = examples();
    // Run first, so that agents have runs; revoke last.
    examples.sort_by_key(|e| match e.v["operation"].as_str().unwrap() {
        "runAgent" => 0,
        "revokeApiKey" => 2,
        _ => 1,
    });
    for Example { file, v } in examples {
        let method = v["method"].as_str().unwrap();
        let mut path = v["path"].as_str().unwrap().to_string();
        if path.contains("{id}") {
            let id = app
                .create_key(&key, json!({"name": "to-revoke"}))
                .await
                .body["key"]
                .as_str()
                .unwrap()
                .to_string();
            path = path.replace("{id}", &id);
        }
        let url = format!("{}{path}", app.base);
        let mut req = app
            .client
            .request(method.parse().unwrap(), url)
            .bearer_auth(&key);
        if !v["request"].is_null() {
            req = req
                .header("content-type", "application/json")
                .body(v["request"].to_string());
        }
        let r = app.send(req).await;
        assert_eq!(
            r.status as u64,
            v["status"].as_u64().unwrap(),
            "{file}: {}",
            r.text
        );
        match (&v["response"], &v["events"]) {
            (_, Value::Array(events)) => {
                let live = sse_events(&r.text);
                assert_shape(&events[0], &live[0], "first event");
                assert_shape(events.last().unwrap(), live.last().unwrap(), "last event");
            }
            (Value::Null, _) => assert_eq!(r.text, "", "{file}"),
            (doc, _) => {
                // The document's secret is shortened with "..."; ours is whole.
                assert_shape(doc, &r.body, &file);
            }
        }
    }
}
