//! Properties of the API, through HTTP: pagination, authentication, input handling, tenant
//! isolation and usage accounting, each over generated inputs.

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::{Value, json};

use crate::helpers::{TestApp, agent_names as names};

/// A new number for each call: tenant slugs stay unique across cases (and shrinking).
fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One runtime for every case of a property (proptest cases are synchronous).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/api/properties.proptest-regressions",
        ))),
        ..Config::default()
    }
}

/// A server and a key of tenant `acme`, shared by the cases of one property.
fn app() -> (TestApp, String) {
    runtime().block_on(async {
        let app = TestApp::spawn().await;
        let key = app.tenant("acme").await;
        (app, key)
    })
}

#[test]
fn pages_partition_the_list() {
    let (app, key) = app();
    let all = names(
        &runtime()
            .block_on(app.list_agents(&key, "?per_page=100"))
            .body,
    );
    proptest!(config(24), |(per_page in 1u32..=8)| {
        runtime().block_on(async {
            let mut seen = Vec::new();
            let pages = (all.len() as u32).div_ceil(per_page) + 1;
            for page in 1..=pages {
                let r = app.list_agents(&key, &format!("?page={page}&per_page={per_page}")).await;
                prop_assert_eq!(r.status, 200);
                prop_assert_eq!(r.body["total"].as_u64(), Some(all.len() as u64), "total is constant");
                let items = names(&r.body);
                prop_assert!(items.len() <= per_page as usize);
                seen.extend(items);
            }
            prop_assert_eq!(&seen, &all, "no item twice, none missing");
            Ok(())
        })?;
    });
}

#[test]
fn anything_but_a_live_key_is_a_json_401() {
    let (app, _key) = app();
    proptest!(config(64), |(value in "[ -~]{0,80}")| {
        runtime().block_on(async {
            let req = app.client.get(format!("{}/v1/usage", app.base));
            let req = match reqwest::header::HeaderValue::from_str(&value) {
                Ok(v) => req.header("authorization", v),
                Err(_) => req,
            };
            let r = app.send(req).await;
            prop_assert_eq!(r.status, 401, "{:?}: {}", value, r.text);
            prop_assert_eq!(r.error_code(), "unauthorized");
            Ok(())
        })?;
    });
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("input".to_string()),
                    Just("messages".to_string()),
                    Just("name".to_string()),
                    Just("model".to_string()),
                    "[a-z_]{1,8}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn arbitrary_bodies_and_queries_are_4xx_with_the_error_body_never_5xx() {
    let (app, key) = app();
    proptest!(config(96), |(body in any_json(), path in prop_oneof![Just("/v1/agents/echo/run"), Just("/v1/chat"), Just("/v1/chat/stream"), Just("/v1/api-keys")], query in "[a-z_=&0-9%-]{0,30}")| {
        runtime().block_on(async {
            let r = app.post(path, &key, &body).await;
            prop_assert!(r.status < 500, "{} {}: {}", path, body, r.text);
            if r.status >= 400 {
                r.error_code();
            }
            let r = app.list_agents(&key, &format!("?{query}")).await;
            prop_assert!(r.status == 200 || r.status == 400, "?{}: {}", query, r.text);
            if r.status == 400 {
                prop_assert_eq!(r.error_code(), "invalid_request");
            }
            Ok(())
        })?;
    });
}

#[test]
fn tenants_never_see_or_touch_each_other() {
    let (app, _) = app();
    proptest!(config(12), |(a in "[a-z][a-z0-9]{2,10}", b in "[a-z][a-z0-9]{2,10}", runs in 0usize..3)| {
        prop_assume!(a != b);
        runtime().block_on(async {
            let a = format!("t-{a}-{}", unique());
            let b = format!("u-{b}-{}", unique());
            let ka = app.tenant(&a).await;
            let kb = app.tenant(&b).await;
            for _ in 0..runs {
                app.run_agent(&ka, "analyst", json!({"message": "a's run"})).await;
            }
            // b sees none of a's runs, usage or keys, and cannot revoke a's key.
            prop_assert_eq!(app.list_runs(&kb, "analyst", "").await.body["total"].as_u64(), Some(0));
            prop_assert_eq!(app.usage(&kb).await.body["total_runs"].as_u64(), Some(0));
            let a_keys = app.list_keys(&ka).await;
            let a_key_id = a_keys.body["keys"][0]["id"].as_str().unwrap().to_string();
            let b_keys = app.list_keys(&kb).await;
            prop_assert!(b_keys.body["keys"].as_array().unwrap().iter().all(|k| k["id"] != a_key_id.as_str()));
            let r = app.revoke_key(&kb, &a_key_id).await;
            prop_assert_eq!(r.status, 404);
            prop_assert_eq!(app.usage(&ka).await.status, 200);
            prop_assert_eq!(app.list_runs(&ka, "analyst", "").await.body["total"].as_u64(), Some(runs as u64));
            Ok(())
        })?;
    });
}

#[test]
fn usage_totals_are_the_sums_of_days_and_of_runs() {
    let (app, _) = app();
    proptest!(config(10), |(slug in "[a-z]{4,10}", messages in proptest::collection::vec("[a-z ]{1,40}", 0..5))| {
        runtime().block_on(async {
            let key = app.tenant(&format!("u-{slug}-{}", unique())).await;
            let mut tokens = 0;
            for m in &messages {
                let r = app.run_agent(&key, "analyst", json!({"message": m})).await;
                prop_assert_eq!(r.status, 200, "{}", r.text);
                tokens += r.body["tokens_used"].as_u64().unwrap();
            }
            let u = app.usage(&key).await.body;
            let days = u["daily_usage"].as_array().unwrap();
            let sum = |f: &str| days.iter().map(|d| d[f].as_u64().unwrap()).sum::<u64>();
            prop_assert_eq!(u["total_runs"].as_u64(), Some(messages.len() as u64));
            prop_assert_eq!(u["total_tokens"].as_u64(), Some(tokens));
            prop_assert_eq!(sum("runs"), messages.len() as u64);
            prop_assert_eq!(sum("tokens"), tokens);
            prop_assert_eq!(sum("api_calls"), u["total_api_calls"].as_u64().unwrap());
            Ok(())
        })?;
    });
}
