//! Signed webhooks: registration, deliveries retried with one id and verified by the Standard
//! Webhooks reference library, private destinations refused, endpoints kept apart.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poem::web::Data;
use poem::{EndpointExt, Request, Response, Route, handler, post};
use serde_json::{Value, json};

use crate::helpers::{TestApp, test_settings};
use crate::upstream::{Reply, Upstream};

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Value,
    pub body: String,
    pub at: Instant,
    /// When its answer was sent, or its connection dropped (`None` while it is waiting).
    pub ended: Option<Instant>,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct Script {
    /// Statuses to answer, in order; `otherwise` once they run out.
    statuses: Mutex<VecDeque<u16>>,
    /// The status answered after `statuses` (200 unless set).
    otherwise: Mutex<Option<u16>>,
    /// How long to take before answering.
    delay: Mutex<Duration>,
    received: Mutex<Vec<Received>>,
}

/// A webhook receiver on 127.0.0.1 that answers the scripted statuses.
pub struct Receiver {
    pub url: String,
    script: Arc<Script>,
    _server: tokio::task::JoinHandle<()>,
}

/// Marks a request as ended when its handler returns or is dropped with its connection.
struct Ends(Arc<Script>, usize);

impl Drop for Ends {
    fn drop(&mut self) {
        self.0.received.lock().unwrap()[self.1].ended = Some(Instant::now());
    }
}

#[handler]
async fn receive(script: Data<&Arc<Script>>, req: &Request, body: String) -> Response {
    let headers: serde_json::Map<String, Value> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .filter_map(|h| {
                let v = req.headers().get(*h)?.to_str().ok()?;
                Some((h.to_string(), Value::String(v.to_string())))
            })
            .collect();
    let status = script
        .statuses
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| script.otherwise.lock().unwrap().unwrap_or(200));
    let index = {
        let mut received = script.received.lock().unwrap();
        received.push(Received {
            headers: Value::Object(headers),
            body,
            at: Instant::now(),
            ended: None,
            status,
        });
        received.len() - 1
    };
    let _ends = Ends(Arc::clone(&script), index);
    let delay = *script.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    Response::builder()
        .status(poem::http::StatusCode::from_u16(status).unwrap())
        .finish()
}

impl Receiver {
    pub async fn start(statuses: &[u16]) -> Receiver {
        let script = Arc::new(Script::default());
        script.statuses.lock().unwrap().extend(statuses);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = Route::new()
            .at("/hook", post(receive))
            .data(Arc::clone(&script));
        let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
        let server = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor).run(app).await;
        });
        Receiver {
            url,
            script,
            _server: server,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.script.received.lock().unwrap().clone()
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.script.delay.lock().unwrap() = delay;
    }

    /// Answers `status` once the scripted statuses ran out.
    pub fn answer_with(&self, status: u16) {
        *self.script.otherwise.lock().unwrap() = Some(status);
    }

    /// Waits until `n` requests came, at most 15 s.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{} of {n} deliveries came",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Settings whose retries take milliseconds and whose endpoints may be on 127.0.0.1.
pub fn quick_webhooks(settings: &mut ares::config::Settings) {
    let w = &mut settings.webhooks;
    w.first_retry = ares::config::HumanDuration(Duration::from_millis(100));
    w.max_retry = ares::config::HumanDuration(Duration::from_millis(400));
    w.timeout = ares::config::HumanDuration(Duration::from_secs(1));
    w.max_attempts = 5;
    w.allow_private_addresses = true;
}

async fn app() -> TestApp {
    let mut settings = test_settings();
    quick_webhooks(&mut settings);
    TestApp::spawn_with(settings).await
}

async fn register(app: &TestApp, key: &str, url: &str, events: Value) -> (String, String) {
    let r = app
        .post("/v1/webhooks", key, &json!({"url": url, "events": events}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let secret = r.body["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (r.body["id"].as_str().unwrap().to_string(), secret)
}

/// Checks every attempt's signature with the Standard Webhooks reference library (Python
/// `standardwebhooks`, installed by `scripts/test`), and with ares's own signing.
fn verify(secret: &str, attempts: &[Received]) {
    for a in attempts {
        let h = &a.headers;
        let expected = ares::engine::sign_webhook(
            secret,
            h["webhook-id"].as_str().unwrap(),
            h["webhook-timestamp"].as_str().unwrap().parse().unwrap(),
            &a.body,
        );
        assert_eq!(h["webhook-signature"], json!(expected));
    }
    let Ok(python) = std::env::var("ARES_TEST_WEBHOOK_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "ARES_TEST_WEBHOOK_PYTHON is not set; scripts/test installs the verifier"
        );
        eprintln!(
            "skipped: set ARES_TEST_WEBHOOK_PYTHON (scripts/test does) to verify with standardwebhooks"
        );
        return;
    };
    let library = |body_suffix: &str| {
        let file = tempfile::NamedTempFile::new().unwrap();
        let list: Vec<Value> = attempts
            .iter()
            .map(|a| json!({"headers": a.headers, "body": format!("{}{body_suffix}", a.body)}))
            .collect();
        std::fs::write(file.path(), serde_json::to_string(&list).unwrap()).unwrap();
        std::process::Command::new(&python)
            .arg("contracts/webhooks/verify.py")
            .arg(secret)
            .arg(file.path())
            .output()
            .unwrap()
    };
    let out = library("");
    assert!(
        out.status.success(),
        "standardwebhooks refused a signature: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("{} signatures verified", attempts.len())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The library does check: a body changed by one byte is refused.
    assert!(
        !library(" ").status.success(),
        "standardwebhooks accepted a changed body"
    );
}

#[tokio::test]
async fn a_receiver_answering_500_500_200_gets_three_signed_attempts_of_one_event() {
    let app = app().await;
    let key = app.tenant("acme").await;
    let receiver = Receiver::start(&[500, 500, 200]).await;
    let (hook, secret) = register(&app, &key, &receiver.url, json!(["run.completed"])).await;
    let run = app
        .run_agent(&key, "echo", json!({"message": "tell me"}))
        .await;
    assert_eq!(run.body["status"], "completed", "{}", run.text);
    let attempts = receiver.wait_for(3).await;
    let ids: Vec<&Value> = attempts.iter().map(|a| &a.headers["webhook-id"]).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one id: {ids:?}");
    verify(&secret, &attempts);
    let event: Value = serde_json::from_str(&attempts[2].body).unwrap();
    assert_eq!(event["type"], "run.completed");
    assert!(event["timestamp"].is_string());
    let mut expected = run.body.clone();
    expected.as_object_mut().unwrap().remove("steps");
    assert_eq!(event["data"], expected, "the data is the run record");
    // The delivery's history.
    let start = Instant::now();
    let delivery = loop {
        let r = app
            .get(&format!("/v1/webhooks/{hook}/deliveries"), &key)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let d = r.body["deliveries"][0].clone();
        if d["state"] == "delivered" {
            assert_eq!(r.body["total"], 1);
            break d;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{}", r.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(delivery["attempts"], 3);
    assert_eq!(delivery["last_status"], 200);
    assert_eq!(delivery["event_id"], *ids[0]);
    assert_eq!(delivery["run_id"], run.body["id"]);
    // Sent again on request: the same event, the same id.
    let d = delivery["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/v1/webhooks/{hook}/deliveries/{d}/retry"),
            &key,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let again = receiver.wait_for(4).await;
    assert_eq!(again[3].headers["webhook-id"], *ids[0]);
    verify(&secret, &again[3..]);
    // Only the events asked for: a failed run is not sent to this endpoint.
    let failed = app
        .run_agent(&key, "strict-input", json!({"message": 1}))
        .await;
    assert_eq!(failed.status, 422);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 4);
}

#[tokio::test]
async fn endpoints_are_the_tenants_own_and_their_secrets_are_shown_once() {
    let app = app().await;
    let key = app.tenant("acme").await;
    let other = app.tenant("globex").await;
    let receiver = Receiver::start(&[]).await;
    let (hook, secret) = register(&app, &key, &receiver.url, json!(["*"])).await;
    let listed = app.get("/v1/webhooks", &key).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["webhooks"][0]["id"], json!(hook));
    assert_eq!(listed.body["webhooks"][0]["events"], json!(["*"]));
    assert!(!listed.text.contains(&secret), "the secret is never listed");
    assert_eq!(
        app.get("/v1/webhooks", &other).await.body["webhooks"],
        json!([])
    );
    for (method, path) in [
        (reqwest::Method::DELETE, format!("/v1/webhooks/{hook}")),
        (
            reqwest::Method::GET,
            format!("/v1/webhooks/{hook}/deliveries"),
        ),
    ] {
        let r = app
            .send(
                app.client
                    .request(method, format!("{}{path}", app.base))
                    .bearer_auth(&other),
            )
            .await;
        assert_eq!(r.status, 404, "{path}: {}", r.text);
        assert_eq!(r.error_code(), "webhook_not_found");
    }
    let r = app
        .post(
            "/v1/webhooks",
            &key,
            &json!({"url": receiver.url, "events": ["run.started"]}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code()),
        (400, "invalid_request"),
        "{}",
        r.text
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("events"),
        "{}",
        r.text
    );
    let r = app
        .send(
            app.client
                .delete(format!("{}/v1/webhooks/{hook}", app.base))
                .bearer_auth(&key),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        app.get("/v1/webhooks", &key).await.body["webhooks"],
        json!([])
    );
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let app = TestApp::spawn().await;
    let key = app.tenant("acme").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.8/hook",
        "http://[::1]:80/hook",
        "http://localhost/hook",
    ] {
        let r = app
            .post("/v1/webhooks", &key, &json!({"url": url, "events": ["*"]}))
            .await;
        assert_eq!(r.status, 422, "{url}: {}", r.text);
        assert_eq!(r.error_code(), "validation_failed");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("url:"),
            "{}",
            r.text
        );
    }
    let r = app
        .post(
            "/v1/webhooks",
            &key,
            &json!({"url": "ftp://example.com/x", "events": ["*"]}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code()),
        (400, "invalid_request"),
        "{}",
        r.text
    );
    assert!(
        r.body["error"]["message"].as_str().unwrap().contains("url"),
        "{}",
        r.text
    );
    // Allowed in these settings (as the other tests do).
    let app = app_allowing_private().await;
    let key = app.tenant("acme").await;
    let r = app
        .post(
            "/v1/webhooks",
            &key,
            &json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

async fn app_allowing_private() -> TestApp {
    app().await
}

/// A slow endpoint of one tenant holds only its own deliveries: another tenant's event goes
/// out while the slow one's attempts are still waiting for their answer.
#[tokio::test]
async fn a_slow_endpoint_does_not_delay_another_tenants_deliveries() {
    let app = app().await;
    let slow_key = app.tenant("acme").await;
    let fast_key = app.tenant("globex").await;
    let slow = Receiver::start(&[]).await;
    slow.set_delay(Duration::from_secs(5));
    let fast = Receiver::start(&[]).await;
    register(&app, &slow_key, &slow.url, json!(["*"])).await;
    register(&app, &fast_key, &fast.url, json!(["*"])).await;
    for i in 0..6 {
        let r = app
            .run_agent(&slow_key, "echo", json!({"message": format!("slow {i}")}))
            .await;
        assert_eq!(r.status, 200);
    }
    // The slow endpoint's attempts are in flight (its bound: four at once).
    slow.wait_for(4).await;
    let r = app
        .run_agent(&fast_key, "globex-only", json!({"message": "fast"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let got = fast.wait_for(1).await;
    // The slow endpoint holds each attempt 5 s: an event that waited for it arrives after
    // that; 4 s leaves a loaded machine room to send it.
    let before_slow_answers = slow.received()[0].at + Duration::from_secs(4);
    assert!(
        got[0].at < before_slow_answers,
        "the other tenant's event waited for the slow endpoint"
    );
    assert!(
        slow.received().len() <= 4,
        "at most four attempts at once to one endpoint"
    );
}

/// Failed and cancelled runs are sent, each only to the endpoints that asked for its event.
#[tokio::test]
async fn failed_and_cancelled_runs_go_to_the_endpoints_that_asked() {
    let upstream = Upstream::start(vec![
        Reply::Status(400, json!({"error": {"message": "bad request"}}), None),
        Reply::Hang,
    ])
    .await;
    let provider = ares::llm::OpenAiProvider::new("scripted", &upstream.base, None)
        .with_first_pause(Duration::from_millis(5));
    let mut settings = test_settings();
    quick_webhooks(&mut settings);
    let app = crate::hardening::app_on_with(Arc::new(provider), settings).await;
    let key = app.tenant("acme").await;
    let failures = Receiver::start(&[]).await;
    let cancels = Receiver::start(&[]).await;
    let everything = Receiver::start(&[]).await;
    register(&app, &key, &failures.url, json!(["run.failed"])).await;
    register(&app, &key, &cancels.url, json!(["run.cancelled"])).await;
    let (_, secret) = register(&app, &key, &everything.url, json!(["*"])).await;

    let failed = app
        .run_agent(&key, "quick", json!({"message": "fail"}))
        .await;
    assert_eq!(failed.body["status"], "failed", "{}", failed.text);
    let started = app
        .send(
            app.client
                .post(format!("{}/v1/agents/quick/run", app.base))
                .bearer_auth(&key)
                .header("prefer", "respond-async")
                .header("content-type", "application/json")
                .body(json!({"input": {"message": "wait"}}).to_string()),
        )
        .await;
    assert_eq!(started.status, 202, "{}", started.text);
    let id = started.body["id"].as_str().unwrap();
    let start = Instant::now();
    while upstream.requests().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the model call never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = app
        .post(&format!("/v1/runs/{id}/cancel"), &key, &json!({}))
        .await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.text);

    let body = |r: &Received| serde_json::from_str::<Value>(&r.body).unwrap();
    let got = failures.wait_for(1).await;
    assert_eq!(body(&got[0])["type"], "run.failed");
    assert_eq!(body(&got[0])["data"]["id"], failed.body["id"]);
    let got = cancels.wait_for(1).await;
    assert_eq!(body(&got[0])["type"], "run.cancelled");
    assert_eq!(body(&got[0])["data"]["id"], json!(id));
    assert_eq!(body(&got[0])["data"]["status"], "cancelled");
    let all = everything.wait_for(2).await;
    let mut types: Vec<Value> = all.iter().map(|r| body(r)["type"].clone()).collect();
    types.sort_by_key(|t| t.to_string());
    assert_eq!(types, [json!("run.cancelled"), json!("run.failed")]);
    verify(&secret, &all);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        failures.received().len(),
        1,
        "only run.failed went to its endpoint"
    );
    assert_eq!(
        cancels.received().len(),
        1,
        "only run.cancelled went to its endpoint"
    );
    // What the metrics say of them.
    let metrics = app
        .send(app.client.get(format!("{}/metrics", app.base)))
        .await
        .text;
    assert!(
        metrics.contains("ares_webhook_attempts_total{outcome=\"delivered\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ares_webhook_oldest_pending_seconds"),
        "{metrics}"
    );
}

/// A tenant has at most `limits.max_webhooks_per_tenant` endpoints.
#[tokio::test]
async fn a_tenant_registers_at_most_its_limit_of_endpoints() {
    let mut settings = test_settings();
    quick_webhooks(&mut settings);
    settings.limits.max_webhooks_per_tenant = 2;
    let app = TestApp::spawn_with(settings).await;
    let key = app.tenant("acme").await;
    let (first, _) = register(&app, &key, "http://127.0.0.1:9/a", json!(["*"])).await;
    register(&app, &key, "http://127.0.0.1:9/b", json!(["*"])).await;
    let r = app
        .post(
            "/v1/webhooks",
            &key,
            &json!({"url": "http://127.0.0.1:9/c", "events": ["*"]}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.error_code(), "webhook_limit_reached");
    // Another tenant's endpoints are its own count.
    let other = app.tenant("globex").await;
    register(&app, &other, "http://127.0.0.1:9/c", json!(["*"])).await;
    let r = app
        .send(
            app.client
                .delete(format!("{}/v1/webhooks/{first}", app.base))
                .bearer_auth(&key),
        )
        .await;
    assert_eq!(r.status, 204);
    register(&app, &key, "http://127.0.0.1:9/c", json!(["*"])).await;
}

/// One endpoint's backlog never fills the dispatcher's batch: another endpoint's event goes
/// out at once, not after the backlog's attempts.
#[tokio::test]
async fn a_backlog_at_one_endpoint_does_not_hold_back_another() {
    let mut settings = test_settings();
    quick_webhooks(&mut settings);
    settings.webhooks.per_endpoint = 1;
    settings.webhooks.first_retry = ares::config::HumanDuration(Duration::from_secs(30));
    let app = TestApp::spawn_with(settings).await;
    let busy_key = app.tenant("acme").await;
    let other_key = app.tenant("globex").await;
    let backlog = Receiver::start(&[]).await;
    backlog.answer_with(500);
    backlog.set_delay(Duration::from_millis(800));
    let other = Receiver::start(&[]).await;
    register(&app, &busy_key, &backlog.url, json!(["*"])).await;
    register(&app, &other_key, &other.url, json!(["*"])).await;
    // More events than one poll of the dispatcher takes, at one attempt a second.
    for i in 0..80 {
        let r = app
            .run_agent(&busy_key, "echo", json!({"message": format!("{i}")}))
            .await;
        assert_eq!(r.status, 200);
    }
    let before = backlog.received().len();
    let r = app
        .run_agent(&other_key, "globex-only", json!({"message": "me"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    other.wait_for(1).await;
    let meanwhile = backlog.received().len() - before;
    assert!(
        meanwhile <= 2,
        "the other endpoint's event waited for {meanwhile} of the backlog's attempts"
    );
}
