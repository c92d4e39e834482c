//! `ares conformance` as a process: all checks pass against a real `ares serve`, and against a
//! broken double of the API (a proxy in front of a real `ares` that renames a field, accepts a
//! revoked key, or leaks another tenant's run) each break is reported by check name and JSON
//! pointer with exit code 1. No secret ever appears in what the kit prints or writes.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};

use poem::http::StatusCode;
use poem::web::Data;
use poem::{EndpointExt, Request, Response, Route, handler};
use serde_json::{Value, json};

use crate::procs::{ADMIN, Ares};

/// `ares serve` with the shipped agents and the offline provider, on `mem://`, with two tenants:
/// `demo` (A, has `risk-analyzer`) and `other` (B).
async fn deployment() -> (Ares, String, String) {
    let env: Vec<(String, String)> = [
        ("ARES_CONFIG", "ares.yaml"),
        ("ARES_DATABASE_URL", "mem://"),
        ("ARES_AGENTS_DIR", "agents.d"),
        ("ARES_ADMIN_TOKEN", ADMIN),
        ("ARES_QUOTA_REQUESTS_PER_MINUTE", "0"),
        ("ARES_LOG", "warn"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let ares = Ares::start("conformance", &env).await;
    let a = ares.tenant("demo", json!({})).await;
    let b = ares.tenant("other", json!({})).await;
    (ares, a, b)
}

/// What one run of the kit printed, its exit code and its JSON report.
struct Run {
    code: i32,
    out: String,
    report: Value,
}

/// Runs `ares conformance` against `base` (in a blocking thread: the servers keep serving).
async fn kit(base: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("conformance.xml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ares"));
    cmd.args([
        "conformance",
        "--base-url",
        base,
        "--format",
        "json",
        "--junit",
    ])
    .arg(&junit)
    .args(args)
    .env_remove("ARES_ADMIN_TOKEN");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let xml = std::fs::read_to_string(&junit).unwrap_or_default();
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the report is JSON ({e}): {stdout}\n{stderr}"));
    assert_eq!(
        xml.matches("<testcase ").count(),
        report["checks"].as_array().unwrap().len(),
        "a JUnit testcase per check: {xml}"
    );
    Run {
        code: out.status.code().unwrap_or(-1),
        out: format!("{stdout}\n{stderr}\n{xml}"),
        report,
    }
}

/// The checks of a JSON report.
fn checks(report: &Value) -> impl Iterator<Item = &Value> {
    report["checks"].as_array().unwrap().iter()
}

fn outcomes(report: &Value, outcome: &str) -> Vec<String> {
    checks(report)
        .filter(|c| c["outcome"] == outcome)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// The failures of check `name`: (pointer, expected, actual).
fn failures(report: &Value, name: &str) -> Vec<(String, Value, Value)> {
    checks(report)
        .filter(|c| c["name"] == name)
        .flat_map(|c| c["failures"].as_array().unwrap().clone())
        .map(|f| {
            (
                f["pointer"].as_str().unwrap().to_string(),
                f["expected"].clone(),
                f["actual"].clone(),
            )
        })
        .collect()
}

fn assert_no_secret(out: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!out.contains(s.as_str()), "a secret was printed: {out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kit_passes_against_ares_and_skips_destructive_checks_without_consent() {
    let (ares, a, b) = deployment().await;
    let run = kit(
        &ares.base,
        &["--key", &a, "--key-b", &b, "--admin-token", ADMIN],
    )
    .await;
    assert_eq!(
        outcomes(&run.report, "fail"),
        Vec::<String>::new(),
        "{}",
        run.out
    );
    assert_eq!(
        outcomes(&run.report, "skip"),
        Vec::<String>::new(),
        "{}",
        run.out
    );
    assert_eq!(run.code, 0, "{}", run.out);
    let passed = outcomes(&run.report, "pass");
    for group in [
        "examples.",
        "pagination.",
        "auth.",
        "isolation.",
        "stream.",
        "usage.",
        "features.",
    ] {
        assert!(
            passed.iter().any(|n| n.starts_with(group)),
            "{group}: {passed:?}"
        );
    }
    assert_no_secret(&run.out, &[a.clone(), b.clone(), ADMIN.to_string()]);

    // Without --key-b or --destructive: nothing is created or revoked, and that is reported.
    let key_ids = |v: Value| -> Vec<Value> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].clone())
            .collect()
    };
    let keys_before = key_ids(ares.get("/v1/api-keys", &a).await.body);
    let run = kit(&ares.base, &["--key", &a]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    let skipped = outcomes(&run.report, "skip");
    for name in [
        "auth.revoked_key_refused",
        "examples.createApiKey",
        "isolation.run_by_id",
    ] {
        assert!(skipped.contains(&name.to_string()), "{name}: {skipped:?}");
    }
    let reason = run.report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "auth.revoked_key_refused")
        .unwrap()["reason"]
        .clone();
    assert!(
        reason.as_str().unwrap().contains("--destructive"),
        "{reason}"
    );
    assert_eq!(
        key_ids(ares.get("/v1/api-keys", &a).await.body),
        keys_before
    );
    assert_no_secret(&run.out, std::slice::from_ref(&a));
}

/// How the double breaks the contract.
#[derive(Clone, Copy, PartialEq)]
enum Break {
    /// `total` is `count` in `GET /v1/agents`.
    RenameTotal,
    /// A revoked key still works (as the key that created it).
    RevokedKeyWorks,
    /// `GET /v1/runs/{id}` of B's run answers A.
    LeakRun,
}

struct Double {
    upstream: String,
    brk: Break,
    key_b: String,
    client: reqwest::Client,
    /// Created keys: id → (secret, the Authorization that created it).
    created: Mutex<HashMap<String, (String, String)>>,
    /// Revoked secrets → the Authorization answered instead.
    revoked: Mutex<HashMap<String, String>>,
    /// Every secret seen in an answer.
    secrets: Mutex<HashSet<String>>,
}

async fn forward(
    d: &Double,
    method: &poem::http::Method,
    path: &str,
    auth: Option<&str>,
    req: &Request,
    body: &[u8],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let m = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
    let mut r = d.client.request(m, format!("{}{path}", d.upstream));
    for (k, v) in req.headers() {
        if !matches!(k.as_str(), "host" | "authorization" | "content-length") {
            r = r.header(k.as_str(), v.as_bytes());
        }
    }
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let resp = r.body(body.to_vec()).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

#[handler]
async fn double(req: &Request, body: poem::Body, d: Data<&Arc<Double>>) -> Response {
    let d: &Double = d.0;
    let body = body.into_vec().await.unwrap();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let bare = req.uri().path().to_string();
    let method = req.method().clone();
    let mut auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    if d.brk == Break::RevokedKeyWorks
        && let Some(a) = &auth
        && let Some(instead) = d
            .revoked
            .lock()
            .unwrap()
            .get(a.trim_start_matches("Bearer "))
            .cloned()
    {
        auth = Some(instead);
    }
    let (mut status, mut headers, mut bytes) =
        forward(d, &method, &path, auth.as_deref(), req, &body).await;
    if d.brk == Break::LeakRun && method == "GET" && bare.starts_with("/v1/runs/") && status == 404
    {
        let b = format!("Bearer {}", d.key_b);
        (status, headers, bytes) = forward(d, &method, &path, Some(&b), req, &body).await;
    }
    if method == "POST" && bare == "/v1/api-keys" && status == 201 {
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let secret = v["secret"].as_str().unwrap().to_string();
        d.secrets.lock().unwrap().insert(secret.clone());
        d.created.lock().unwrap().insert(
            v["key"].as_str().unwrap().to_string(),
            (secret, auth.clone().unwrap_or_default()),
        );
    }
    if method == "DELETE" && bare.starts_with("/v1/api-keys/") && status == 204 {
        let id = bare.trim_start_matches("/v1/api-keys/");
        if let Some((secret, creator)) = d.created.lock().unwrap().get(id).cloned() {
            d.revoked.lock().unwrap().insert(secret, creator);
        }
    }
    if d.brk == Break::RenameTotal && method == "GET" && bare == "/v1/agents" && status == 200 {
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        let total = v.as_object_mut().unwrap().remove("total").unwrap();
        v["count"] = total;
        bytes = v.to_string().into_bytes();
    }
    let mut out = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (k, v) in &headers {
        if !matches!(
            k.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    out.body(bytes)
}

/// The double on 127.0.0.1; its base URL and its state.
async fn start_double(upstream: &str, brk: Break, key_b: &str) -> (String, Arc<Double>) {
    let state = Arc::new(Double {
        upstream: upstream.to_string(),
        brk,
        key_b: key_b.to_string(),
        client: reqwest::Client::new(),
        created: Default::default(),
        revoked: Default::default(),
        secrets: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Route::new().at("/*path", double).data(Arc::clone(&state));
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
    tokio::spawn(async move {
        let _ = poem::Server::new_with_acceptor(acceptor).run(app).await;
    });
    (format!("http://{addr}"), state)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_break_of_a_broken_double_is_reported_by_check_and_pointer() {
    let (ares, a, b) = deployment().await;
    let cases: [(Break, &[&str], &str, &str); 3] = [
        (
            Break::RenameTotal,
            // Every check that reads GET /v1/agents.
            &[
                "setup.agent",
                "examples.listAgents",
                "pagination.agents_pages",
                "pagination.past_the_end",
                "auth.created_key_usable",
                "isolation.runs_list",
            ],
            "examples.listAgents",
            "/total",
        ),
        (
            Break::RevokedKeyWorks,
            &["auth.revoked_key_refused"],
            "auth.revoked_key_refused",
            "/error",
        ),
        (
            Break::LeakRun,
            &["isolation.run_by_id"],
            "isolation.run_by_id",
            "/id",
        ),
    ];
    for (brk, failed, name, pointer) in cases {
        let (base, state) = start_double(&ares.base, brk, &b).await;
        let run = kit(&base, &["--key", &a, "--key-b", &b]).await;
        assert_eq!(run.code, 1, "{}", run.out);
        assert_eq!(outcomes(&run.report, "fail"), failed, "{}", run.out);
        let found = failures(&run.report, name);
        assert!(
            found.iter().any(|(p, _, _)| p == pointer),
            "{name} at {pointer}: {found:?}"
        );
        let mut secrets = vec![a.clone(), b.clone()];
        secrets.extend(state.secrets.lock().unwrap().iter().cloned());
        assert_no_secret(&run.out, &secrets);
        match brk {
            Break::RenameTotal => {
                let f = found.iter().find(|(p, _, _)| p == "/total").unwrap();
                assert_eq!(f.2, json!("missing"));
                // Nothing else is reported: every failure is the missing `total`.
                for check in failed {
                    for (p, _, _) in failures(&run.report, check) {
                        assert_eq!(p, "/total", "{check}: {}", run.out);
                    }
                }
            }
            Break::RevokedKeyWorks => {
                let status = failures(&run.report, name)
                    .into_iter()
                    .find(|(p, _, _)| p.is_empty())
                    .unwrap();
                assert_eq!((status.1, status.2), (json!(401), json!(200)));
            }
            Break::LeakRun => {
                let leaked = found.iter().find(|(p, _, _)| p == "/id").unwrap();
                assert!(leaked.2.is_string(), "B's run id: {leaked:?}");
            }
        }
    }
}
