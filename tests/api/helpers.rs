//! `TestApp`: a real `ares` server on 127.0.0.1 with a fresh in-memory database, and one typed
//! method per endpoint.

use std::path::PathBuf;
use std::sync::Arc;

use ares::api::App;
use ares::config::{ModelSettings, ProviderKind, ProviderSettings, Secret, Settings};
use ares::engine::{Engine, ManualClock, SystemClock};
use ares::server::Application;
use ares::store::Store;
use serde_json::{Value, json};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Where the suite's logs go: `ARES_TEST_LOG_DIR` (set by `scripts/test`, which searches them
/// for secrets afterwards), else a folder under the build's temporary directory.
pub fn log_dir() -> PathBuf {
    let dir = std::env::var_os("ARES_TEST_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ares-logs"));
    std::fs::create_dir_all(&dir).expect("the log folder can be made");
    dir
}

/// Records a secret the suite handled, so that `scripts/check-logs` can prove no log holds it.
pub fn remember_secret(secret: &str) {
    use std::io::Write as _;
    static FILE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_writer = FILE.lock().unwrap_or_else(|p| p.into_inner());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir().join("secrets.txt"))
        .expect("the secrets list can be written");
    writeln!(f, "{secret}").expect("the secrets list can be written");
}

/// The last lines every in-process server logged (at `info`, `ares` at `debug`), for tests
/// that check what a log line carries.
static CAPTURED: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
/// Lines kept in [`CAPTURED`]; older ones are dropped.
const CAPTURE_LINES: usize = 50_000;

/// Writes log lines into [`CAPTURED`].
struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut lines = CAPTURED.lock().unwrap_or_else(|p| p.into_inner());
        for line in String::from_utf8_lossy(buf).lines() {
            if lines.len() == CAPTURE_LINES {
                lines.pop_front();
            }
            lines.push_back(line.to_string());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured log lines that contain `needle`.
pub fn log_lines_with(needle: &str) -> Vec<String> {
    CAPTURED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// Logs of the in-process servers: into the log folder when `ARES_TEST_LOG_DIR` is set
/// (debug level for `ares`), else through the test harness's capture; and always into
/// [`CAPTURED`].
fn init_test_logs() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, fmt};
    let out = if std::env::var_os("ARES_TEST_LOG_DIR").is_some() {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir().join("in-process.log"))
            .expect("the in-process log can be opened");
        fmt::layer()
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .with_filter(EnvFilter::new("info,ares=debug"))
            .boxed()
    } else {
        fmt::layer()
            .with_test_writer()
            .with_filter(EnvFilter::try_from_env("ARES_LOG").unwrap_or_else(|_| "warn".into()))
            .boxed()
    };
    let capture = fmt::layer()
        .with_ansi(false)
        .with_writer(|| Capture)
        .with_filter(EnvFilter::new("info,ares=debug"));
    let _ = tracing_subscriber::registry()
        .with(out)
        .with(capture)
        .try_init();
    remember_secret(ADMIN_TOKEN);
}

/// A response: status, JSON body (or `Value::Null`), and headers.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the one error body shape and returns its code.
    pub fn error_code(&self) -> &str {
        let e = &self.body["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {}",
            self.text
        );
        assert!(
            e["request_id"].as_str().is_some_and(|m| !m.is_empty()),
            "no request_id: {}",
            self.text
        );
        assert_eq!(
            e["request_id"].as_str(),
            self.header("x-request-id"),
            "request id in body and header"
        );
        e["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {}", self.text))
    }
}

/// Test settings: fixture agents, offline models, in-memory database, an admin token.
pub fn test_settings() -> Settings {
    let mut s = Settings {
        agents_dir: PathBuf::from("fixtures/agents"),
        listen: "127.0.0.1:0".into(),
        ..Settings::default()
    };
    s.database.url = "mem://".into();
    s.providers.insert(
        "offline".into(),
        ProviderSettings {
            kind: ProviderKind::Offline,
            base_url: None,
            api_key_env: None,
        },
    );
    for m in ["llama-3.3-70b", "llama-3.1-8b"] {
        s.models.insert(
            m.into(),
            ModelSettings {
                provider: "offline".into(),
                id: m.into(),
                temperature: None,
                max_tokens: None,
            },
        );
    }
    s.admin_token = Some(Secret::new(ADMIN_TOKEN));
    s
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub app: Arc<App>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(test_settings()).await
    }

    pub async fn spawn_with(settings: Settings) -> TestApp {
        let store = Store::connect(&settings.database).await.expect("database");
        Self::spawn_on(settings, store).await
    }

    pub async fn spawn_on(settings: Settings, store: Store) -> TestApp {
        let models = ares::llm::Models::from_settings(&settings).expect("models");
        Self::spawn_full(settings, store, models).await
    }

    /// With scripted providers in place of the settings' ones.
    pub async fn spawn_with_models(models: ares::llm::Models) -> TestApp {
        let settings = test_settings();
        let store = Store::connect(&settings.database).await.expect("database");
        Self::spawn_full(settings, store, models).await
    }

    /// With a clock the test moves (test settings, offline models).
    pub async fn spawn_with_clock(clock: ManualClock) -> TestApp {
        let settings = test_settings();
        let store = Store::connect(&settings.database).await.expect("database");
        let models = ares::llm::Models::from_settings(&settings).expect("models");
        let engine = Engine::new(settings, store, models, Arc::new(clock)).expect("engine");
        Self::spawn_engine(engine).await
    }

    pub async fn spawn_full(
        settings: Settings,
        store: Store,
        models: ares::llm::Models,
    ) -> TestApp {
        let engine = Engine::new(settings, store, models, Arc::new(SystemClock)).expect("engine");
        Self::spawn_engine(engine).await
    }

    /// Serves `engine` on a free port of 127.0.0.1.
    pub async fn spawn_engine(engine: Engine) -> TestApp {
        static LOGS: std::sync::Once = std::sync::Once::new();
        LOGS.call_once(init_test_logs);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let application = Application::new(engine);
        let app = Arc::clone(&application.app);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            application
                .run(listener, async {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs");
        });
        TestApp {
            base,
            client: reqwest::Client::new(),
            app,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    /// Sends a request and checks the response against the spec (`conformance.rs`).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let req = req.build().expect("a valid request");
        let (method, path) = (req.method().to_string(), req.url().path().to_string());
        let r = self.execute(req).await;
        if let Err(e) = crate::conformance::check(&method, &path, r.status, &r.headers, &r.text) {
            panic!(
                "{method} {path} answered {} against the spec: {e}\n{}",
                r.status, r.text
            );
        }
        r
    }

    /// Sends a request to a route the served specs do not describe.
    pub async fn send_unchecked(&self, req: reqwest::RequestBuilder) -> Reply {
        self.execute(req.build().expect("a valid request")).await
    }

    async fn execute(&self, req: reqwest::Request) -> Reply {
        let resp = self.client.execute(req).await.expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        for secret in [&body["secret"], &body["api_key"]["secret"]] {
            if let Some(s) = secret.as_str() {
                remember_secret(s);
            }
        }
        Reply {
            status,
            body,
            text,
            headers,
        }
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.send(
            self.client
                .get(format!("{}{path}", self.base))
                .bearer_auth(key),
        )
        .await
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Reply {
        let req = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(req).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> Reply {
        self.send(
            self.client
                .delete(format!("{}{path}", self.base))
                .bearer_auth(key),
        )
        .await
    }

    /// Provisions a tenant through the admin API and returns its first key's secret.
    pub async fn tenant(&self, slug: &str) -> String {
        self.tenant_with(slug, json!({})).await
    }

    /// Provisions a tenant with extra fields (quotas) and returns its first key's secret.
    pub async fn tenant_with(&self, slug: &str, extra: Value) -> String {
        let mut body = json!({"slug": slug});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let r = self.post("/admin/v1/tenants", ADMIN_TOKEN, &body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["api_key"]["secret"].as_str().unwrap().to_string()
    }

    pub async fn list_agents(&self, key: &str, query: &str) -> Reply {
        self.get(&format!("/v1/agents{query}"), key).await
    }
    pub async fn get_agent(&self, key: &str, name: &str) -> Reply {
        self.get(&format!("/v1/agents/{name}"), key).await
    }
    pub async fn run_agent(&self, key: &str, name: &str, input: Value) -> Reply {
        self.post(
            &format!("/v1/agents/{name}/run"),
            key,
            &json!({"input": input}),
        )
        .await
    }
    pub async fn list_runs(&self, key: &str, name: &str, query: &str) -> Reply {
        self.get(&format!("/v1/agents/{name}/runs{query}"), key)
            .await
    }
    pub async fn chat(&self, key: &str, body: Value) -> Reply {
        self.post("/v1/chat", key, &body).await
    }
    pub async fn chat_stream(&self, key: &str, body: Value) -> Reply {
        self.post("/v1/chat/stream", key, &body).await
    }
    pub async fn usage(&self, key: &str) -> Reply {
        self.get("/v1/usage", key).await
    }
    pub async fn list_keys(&self, key: &str) -> Reply {
        self.get("/v1/api-keys", key).await
    }
    pub async fn create_key(&self, key: &str, body: Value) -> Reply {
        self.post("/v1/api-keys", key, &body).await
    }
    pub async fn revoke_key(&self, key: &str, id: &str) -> Reply {
        self.delete(&format!("/v1/api-keys/{id}"), key).await
    }

    /// Writes counted API calls now, as the server does every second.
    pub async fn flush_usage(&self) {
        self.app.engine.flush_usage().await.unwrap();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A JSON request body.
pub trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(v.to_string())
    }
}

/// What tenant `acme` is offered in `fixtures/agents`, by name: its own agents and `_global`'s.
pub const ACME_AGENTS: [&str; 6] = [
    "analyst",
    "echo",
    "paused",
    "risk-analyzer",
    "slow",
    "strict-input",
];

/// The names of a `{"agents": [...]}` listing, in order.
pub fn agent_names(body: &Value) -> Vec<String> {
    body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect()
}

/// The `data:` payloads of a server-sent event stream, parsed.
pub fn sse_events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("event is not JSON ({e}): {d}")))
        .collect()
}
