//! Real processes for the reliability tests: a SurrealDB server (built by
//! `scripts/surreal-server`, its binary in `ARES_TEST_SURREAL`), `ares serve` instances on it,
//! and a steady OpenAI-compatible upstream with a fixed latency. Every process writes its log
//! into the suite's log folder, which `scripts/check-logs` searches for secrets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::web::Data;
use poem::{EndpointExt, Response, Route, handler, post};
use serde_json::{Value, json};

pub use crate::helpers::JsonBody;
use crate::helpers::{log_dir, remember_secret};

/// Tokens the steady upstream reports for every answer: 10 prompt + 5 completion.
pub const TOKENS_PER_CALL: u64 = 15;

/// The reliability tests run one at a time: each starts several processes and loads them, and
/// two cores shared among several such tests would measure the machine, not `ares`.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn random_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn log_file(name: &str) -> (std::fs::File, PathBuf) {
    let path = log_dir().join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    (file, path)
}

/// Has the child killed when the thread that starts it ends, so a test binary that aborts
/// (where no `Drop` runs) leaves no server running. Children are started on their test's
/// thread, which outlives them (Linux; elsewhere cleanup is `Drop`'s alone).
pub fn dies_with_test(cmd: &mut Command) -> &mut Command {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec the closure only makes async-signal-safe calls
        // (prctl, getppid, kill) and allocates nothing.
        let parent = std::process::id() as libc::pid_t;
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // The test may have ended before the call above.
                if libc::getppid() != parent {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                Ok(())
            });
        }
    }
    cmd
}

fn spawn_logged(cmd: &mut Command, name: &str) -> Child {
    let (out, _) = log_file(name);
    let err = out.try_clone().unwrap();
    dies_with_test(cmd)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The SurrealDB server binary; `None` skips the test, except in CI where `scripts/test`
/// always builds it.
pub fn surreal_bin() -> Option<PathBuf> {
    match std::env::var("ARES_TEST_SURREAL") {
        Ok(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "ARES_TEST_SURREAL is not set; scripts/test builds the SurrealDB server"
            );
            eprintln!("skipped: set ARES_TEST_SURREAL (scripts/test does) to run this test");
            None
        }
    }
}

/// A SurrealDB server on 127.0.0.1 with a random port and password, storing on disk so that
/// it can be stopped and started again with its data.
pub struct Surreal {
    bin: PathBuf,
    child: Option<Child>,
    pub port: u16,
    pub user: String,
    pub pass: String,
    data: tempfile::TempDir,
}

impl Surreal {
    pub async fn start(bin: PathBuf) -> Surreal {
        let mut s = Surreal {
            bin,
            child: None,
            port: free_port(),
            user: format!("ares-{:08x}", rand::random::<u32>()),
            pass: random_token(),
            data: tempfile::tempdir().unwrap(),
        };
        s.resume().await;
        s
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Runs a `surreal` client command (`export`, `import`) against this server as its user;
    /// panics with the command's output when it fails.
    pub fn client(&self, command: &str, namespace: &str, database: &str, file: &Path) {
        let out = Command::new(&self.bin)
            .args([
                command,
                "--endpoint",
                &format!("http://127.0.0.1:{}", self.port),
                "--username",
                &self.user,
                "--password",
                &self.pass,
                "--namespace",
                namespace,
                "--database",
                database,
            ])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "surreal {command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the server (SIGKILL): the database disappears from under its clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
    }

    /// Starts the server (again) on the same port and data, and waits until it answers.
    pub async fn resume(&mut self) {
        let store = format!("surrealkv://{}", self.data.path().join("db").display());
        let child = spawn_logged(
            Command::new(&self.bin).args([
                "start",
                "--bind",
                &format!("127.0.0.1:{}", self.port),
                "--user",
                &self.user,
                "--pass",
                &self.pass,
                "--log",
                "warn",
                &store,
            ]),
            &format!("surreal-{}", self.port),
        );
        self.child = Some(child);
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/health", self.port);
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the SurrealDB server did not come up (see its log in {})",
                log_dir().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Surreal {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What every reliability test starts from: a SurrealDB server, a steady upstream, an agents
/// folder and the settings the instances share, held one test at a time.
pub struct Cluster {
    pub surreal: Surreal,
    pub agents: tempfile::TempDir,
    pub env: Vec<(String, String)>,
    pub upstream: SteadyUpstream,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// `None` (the test is skipped) without the SurrealDB server binary, outside CI.
    pub async fn start(upstream_delay: Duration) -> Option<Cluster> {
        let bin = surreal_bin()?;
        let serial = one_at_a_time().await;
        let surreal = Surreal::start(bin).await;
        let upstream = SteadyUpstream::start(upstream_delay).await;
        let agents = agents_dir();
        let env = cluster_env(&surreal, agents.path(), &upstream);
        Some(Cluster {
            surreal,
            agents,
            env,
            upstream,
            _serial: serial,
        })
    }
}

/// An `ares serve` process.
pub struct Ares {
    child: Option<Child>,
    pub name: String,
    pub port: u16,
    pub base: String,
    env: Vec<(String, String)>,
    pub client: reqwest::Client,
}

pub const ADMIN: &str = "cluster-admin-token-4d1f0c9b";

/// Settings every instance of a test shares: the database, the agents folder, the upstream.
pub fn cluster_env(
    surreal: &Surreal,
    agents: &Path,
    upstream: &SteadyUpstream,
) -> Vec<(String, String)> {
    remember_secret(ADMIN);
    remember_secret(&surreal.pass);
    let e = |k: &str, v: String| (k.to_string(), v);
    vec![
        e("ARES_DATABASE_URL", surreal.url()),
        e("ARES_DATABASE_USER", surreal.user.clone()),
        e("ARES_DATABASE_PASS", surreal.pass.clone()),
        e("ARES_DATABASE_NAMESPACE", "reliability".into()),
        e("ARES_DATABASE_NAME", random_token()),
        e("ARES_AGENTS_DIR", agents.display().to_string()),
        e("ARES_ADMIN_TOKEN", ADMIN.into()),
        e(
            "ARES_PROVIDERS",
            format!(
                "{{steady: {{kind: openai, base_url: \"{}\", api_key_env: ARES_TEST_UPSTREAM_KEY}}}}",
                upstream.base
            ),
        ),
        e(
            "ARES_MODELS",
            "{steady-model: {provider: steady, id: steady-model}}".into(),
        ),
        e("ARES_TEST_UPSTREAM_KEY", "unused".into()),
        // Load tests measure throughput, not rate limits (per key or per tenant).
        e("ARES_QUOTA_REQUESTS_PER_MINUTE", "0".into()),
        e("ARES_QUOTA_TENANT_REQUESTS_PER_MINUTE", "0".into()),
        e("ARES_LOG", "info,ares=debug".into()),
    ]
}

/// `env` with `key` set to `value` (added or replaced).
pub fn with_var(env: &[(String, String)], key: &str, value: String) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env.iter().filter(|(k, _)| k != key).cloned().collect();
    out.push((key.to_string(), value));
    out
}

/// The value of `key` in `env`.
pub fn var(env: &[(String, String)], key: &str) -> String {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{key} is not set"))
}

impl Ares {
    /// Starts `ares serve` with `env` and waits until it is ready.
    pub async fn start(name: &str, env: &[(String, String)]) -> Ares {
        let port = free_port();
        let mut a = Ares {
            child: None,
            name: name.to_string(),
            port,
            base: format!("http://127.0.0.1:{port}"),
            env: env.to_vec(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        a.restart().await;
        a
    }

    /// Starts the process again (after [`Ares::kill9`]) on the same port.
    pub async fn restart(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ares"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .env("ARES_CONFIG", "fixtures/cluster/ares.yaml");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(spawn_logged(
            &mut cmd,
            &format!("ares-{}-{}", self.name, self.port),
        ));
        let start = Instant::now();
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "ares {} exited with {status}; see its log in {}",
                    self.name,
                    log_dir().display()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "ares {} did not become ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, and waits for the graceful stop (the database closed); whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        // SAFETY: kill(2) on the pid of a child not yet waited for.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        c.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// SIGKILL: no graceful shutdown, no last flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} on {}: {e}", self.name));
        Reply::read(resp).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.call(reqwest::Method::GET, path, key, None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Reply {
        self.call(reqwest::Method::POST, path, key, Some(body))
            .await
    }

    /// Creates a tenant through the admin API; its first key's secret.
    pub async fn tenant(&self, slug: &str, extra: Value) -> String {
        let mut body = json!({"slug": slug});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let r = self.post("/admin/v1/tenants", ADMIN, &body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        let secret = r.body["api_key"]["secret"].as_str().unwrap().to_string();
        remember_secret(&secret);
        secret
    }

    /// Runs `agent` with a message; the reply.
    pub async fn run(&self, key: &str, agent: &str, message: &str) -> Reply {
        self.post(
            &format!("/v1/agents/{agent}/run"),
            key,
            &json!({"input": {"message": message}}),
        )
        .await
    }

    /// Every run of `agent`, newest first, paging through the history.
    pub async fn all_runs(&self, key: &str, agent: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for page in 1.. {
            let r = self
                .get(
                    &format!("/v1/agents/{agent}/runs?page={page}&per_page=100"),
                    key,
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            let runs = r.body["runs"].as_array().unwrap().clone();
            let done = runs.len() < 100;
            out.extend(runs);
            if done {
                break;
            }
        }
        out
    }

    /// The process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Ares {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `ares check` against the instances' database: exit code and output.
pub fn ares_check(env: &[(String, String)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ares"));
    cmd.arg("check")
        .env("ARES_CONFIG", "fixtures/cluster/ares.yaml");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        log_dir().join(format!("ares-check-{}.log", free_port())),
        &text,
    )
    .unwrap();
    (out.status.code().unwrap_or(-1), text)
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub async fn read(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
            headers,
        }
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// An OpenAI-compatible upstream that answers every chat completion after a fixed delay, with
/// [`TOKENS_PER_CALL`] tokens, as JSON or as a stream. A JSON answer's headers come at once and
/// its body after the delay, led by a space every 50 ms meanwhile (JSON allows leading
/// whitespace), so that a client that goes away is noticed: see [`SteadyUpstream::dropped`].
pub struct SteadyUpstream {
    pub base: String,
    state: Arc<Steady>,
    _server: tokio::task::JoinHandle<()>,
}

struct Steady {
    delay: Duration,
    /// Chat completions asked for.
    requests: std::sync::atomic::AtomicU64,
    /// JSON answers whose client went away before their body was complete.
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// Counts an answer dropped before it was complete.
struct Unfinished(Arc<std::sync::atomic::AtomicU64>, bool);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[handler]
async fn steady_completions(state: Data<&Arc<Steady>>, body: String) -> Response {
    state
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let usage =
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": TOKENS_PER_CALL});
    if req["stream"] == json!(true) {
        tokio::time::sleep(state.delay).await;
        let mut text = String::new();
        for piece in ["steady ", "as ", "she goes"] {
            let chunk = json!({"id": "c", "object": "chat.completion.chunk", "model": "steady-model",
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
            text.push_str(&format!("data: {chunk}\n\n"));
        }
        let last = json!({"id": "c", "object": "chat.completion.chunk", "model": "steady-model",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage});
        text.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
        return Response::builder()
            .content_type("text/event-stream")
            .body(text);
    }
    let answer = json!({"id": "c", "object": "chat.completion", "model": "steady-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "steady as she goes"},
            "finish_reason": "stop"}],
        "usage": usage});
    let until = tokio::time::Instant::now() + state.delay;
    let guard = Unfinished(Arc::clone(&state.dropped), false);
    let body = futures_util::stream::unfold(
        (Some(guard), Some(answer.to_string())),
        move |(guard, answer)| async move {
            let mut guard = guard?;
            let now = tokio::time::Instant::now();
            if now < until {
                tokio::time::sleep((until - now).min(Duration::from_millis(50))).await;
                if tokio::time::Instant::now() < until {
                    return Some((
                        Ok::<_, std::io::Error>(b" ".to_vec()),
                        (Some(guard), answer),
                    ));
                }
            }
            guard.1 = true;
            let answer = answer?;
            Some((Ok(answer.into_bytes()), (None, None)))
        },
    );
    Response::builder()
        .content_type("application/json")
        .body(poem::Body::from_bytes_stream(body))
}

impl SteadyUpstream {
    pub async fn start(delay: Duration) -> SteadyUpstream {
        let state = Arc::new(Steady {
            delay,
            requests: Default::default(),
            dropped: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Route::new()
            .at("/v1/chat/completions", post(steady_completions))
            .data(Arc::clone(&state));
        let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
        let server = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor).run(app).await;
        });
        SteadyUpstream {
            base: format!("http://{addr}/v1"),
            state,
            _server: server,
        }
    }

    /// Chat completions asked for so far.
    pub fn requests(&self) -> u64 {
        self.state
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// JSON answers whose client went away before they were complete.
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A fresh agents folder with `_global/worker.yaml` (every tenant's) on the steady model.
pub fn agents_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let global = dir.path().join("_global");
    std::fs::create_dir_all(&global).unwrap();
    std::fs::write(
        global.join("worker.yaml"),
        "agent_type: worker\nmodel: steady-model\nsystem_prompt: You work steadily.\nmax_tokens: 64\ntimeout_ms: 30000\n",
    )
    .unwrap();
    dir
}

#[cfg(target_os = "linux")]
#[test]
fn a_child_is_killed_when_the_thread_that_started_it_ends() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = std::thread::spawn(|| {
        dies_with_test(&mut Command::new("sleep"))
            .arg("60")
            .spawn()
            .unwrap()
    })
    .join()
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}
