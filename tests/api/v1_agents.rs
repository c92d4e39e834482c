//! `/v1/agents`: listing, pagination, details and tenant isolation.

use serde_json::Value;

use crate::helpers::{ACME_AGENTS, TestApp, agent_names as names};

#[tokio::test]
async fn list_shows_the_tenant_and_global_agents_by_name() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let r = app.list_agents(&acme, "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(names(&r.body), ACME_AGENTS);
    assert_eq!(r.body["total"], 6);
    assert_eq!(r.body["page"], 1);
    assert_eq!(r.body["per_page"], 20);
    let risk = &r.body["agents"][3];
    assert_eq!(risk["agent_type"], "classifier");
    assert_eq!(risk["status"], "active");
    assert_eq!(
        risk["config"],
        serde_json::json!({"model": "llama-3.3-70b", "tools": ["calculator"]})
    );
    assert_eq!(risk["total_runs"], 0);
    assert_eq!(risk["success_rate"], 0.0);
    assert_eq!(risk["last_run"], Value::Null);
    assert!(
        risk["created_at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .is_ok()
    );
    assert!(uuid::Uuid::parse_str(risk["id"].as_str().unwrap()).is_ok());
    assert_eq!(r.body["agents"][2]["status"], "disabled");
}

#[tokio::test]
async fn tenants_see_only_their_own_agents() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    assert_eq!(
        names(&app.list_agents(&globex, "").await.body),
        ["analyst", "globex-only"]
    );
    let r = app.get_agent(&globex, "risk-analyzer").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "agent_not_found");
    assert_eq!(app.get_agent(&acme, "globex-only").await.status, 404);
    // A global agent has a different id in each tenant, and separate counters.
    let a = app.get_agent(&acme, "analyst").await.body["id"].clone();
    let g = app.get_agent(&globex, "analyst").await.body["id"].clone();
    assert_ne!(a, g);
}

#[tokio::test]
async fn pages_partition_the_list() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let mut seen = Vec::new();
    for page in 1..=3 {
        let r = app
            .list_agents(&acme, &format!("?page={page}&per_page=2"))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["total"], 6);
        assert_eq!(r.body["per_page"], 2);
        seen.extend(names(&r.body));
    }
    assert_eq!(seen, ACME_AGENTS);
    let beyond = app.list_agents(&acme, "?page=9&per_page=2").await;
    assert_eq!(beyond.status, 200);
    assert_eq!(names(&beyond.body), Vec::<String>::new());
    assert_eq!(beyond.body["total"], 6);
}

#[tokio::test]
async fn bad_paging_is_a_named_4xx() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    for (query, status, code, field) in [
        ("?page=0", 400, "invalid_request", "page"),
        ("?per_page=0", 400, "invalid_request", "per_page"),
        ("?per_page=101", 400, "invalid_request", "per_page"),
        ("?page=abc", 400, "invalid_request", "page"),
        ("?per_page=-1", 400, "invalid_request", "per_page"),
    ] {
        let r = app.list_agents(&acme, query).await;
        assert_eq!(r.status, status, "{query}: {}", r.text);
        assert_eq!(r.error_code(), code, "{query}");
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(field),
            "{query}: {}",
            r.text
        );
    }
}

#[tokio::test]
async fn details_show_the_full_config_and_a_stable_creation_time() {
    let app = TestApp::spawn().await;
    let acme = app.tenant("acme").await;
    let r = app.get_agent(&acme, "risk-analyzer").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let c = &r.body["config"];
    assert_eq!(c["model"], "llama-3.3-70b");
    assert!(
        c["system_prompt"]
            .as_str()
            .unwrap()
            .starts_with("You are a risk analysis agent")
    );
    assert_eq!(c["tools"], serde_json::json!(["calculator"]));
    assert_eq!(c["max_tokens"], 2048);
    assert_eq!(
        c["output_schema"]["required"],
        serde_json::json!(["risk_score", "risk_level", "reasoning"])
    );
    let listed = app.list_agents(&acme, "").await;
    let in_list = listed.body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "risk-analyzer")
        .unwrap()
        .clone();
    assert_eq!(in_list["id"], r.body["id"]);
    assert_eq!(in_list["created_at"], r.body["created_at"]);
    let again = app.get_agent(&acme, "risk-analyzer").await;
    assert_eq!(again.body["created_at"], r.body["created_at"]);
    let missing = app.get_agent(&acme, "nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "agent_not_found");
}
