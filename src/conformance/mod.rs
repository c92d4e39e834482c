//! `ares conformance`: a client of a live deployment's V1 API that checks it keeps the contract
//! (the spec, the document's examples, pagination, auth, tenant isolation, streaming, usage, and
//! the additive features it declares). It speaks HTTP only: nothing here reaches the engine.
//!
//! A file per group of checks; this file holds the session every check sends through, which
//! checks each response against the embedded spec and records the request (never a secret).

mod auth;
mod examples;
mod features;
mod isolation;
mod pagination;
pub mod report;
pub mod spec;
mod stream;
mod usage;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use report::{CheckResult, Failure, Outcome, Report, Sent};
use spec::Reply;

/// What to check and with which keys.
#[derive(Debug, Clone)]
pub struct Options {
    /// The deployment, e.g. `https://staging.example.com` (no trailing `/v1`).
    pub base_url: String,
    /// Tenant A's key: every check uses it.
    pub key: String,
    /// Another tenant's key, for the isolation checks; it also allows the destructive ones.
    pub key_b: Option<String>,
    /// The admin token, only to be masked if it ever shows in an answer.
    pub admin_token: Option<String>,
    /// The agent to run (default: the document's `risk-analyzer` if listed, else the first).
    pub agent: Option<String>,
    /// Allow the checks that create and revoke keys without `key_b`.
    pub destructive: bool,
    /// Timeout of one request.
    pub timeout: Duration,
}

/// Why the kit could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("{0}")]
    Setup(String),
    #[error("cannot reach {url}: {error}")]
    Connect { url: String, error: String },
}

/// Which key a request carries, named by its role in reports.
#[derive(Debug, Clone)]
pub enum Auth {
    A,
    B,
    None,
    /// A raw `Authorization` header value, and its label.
    Header(&'static str, String),
    /// A secret the kit was given or created, and its label.
    Key(&'static str, String),
}

impl Auth {
    fn label(&self) -> String {
        match self {
            Auth::A => "key A".into(),
            Auth::B => "key B".into(),
            Auth::None => "no key".into(),
            Auth::Header(l, _) | Auth::Key(l, _) => (*l).into(),
        }
    }
}

/// What the deployment's own spec declares beyond the document.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub run_by_id: bool,
    pub cancel: bool,
    pub idempotency: bool,
    pub webhooks: bool,
    /// `Prefer: respond-async` on a run (202 and `Location`).
    pub background: bool,
    pub run_events: bool,
    pub versions: bool,
    /// Where the spec was found, if anywhere.
    pub spec_at: Option<String>,
}

/// The agent the checks run, as the deployment describes it.
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    pub model: String,
    pub agent_type: String,
}

/// The session: HTTP client, keys, the check in progress and the results so far.
pub struct Ctx {
    http: reqwest::Client,
    base: String,
    key_a: String,
    key_b: Option<String>,
    destructive_allowed: Option<String>,
    secrets: Vec<String>,
    results: Vec<CheckResult>,
    current: Option<(CheckResult, Instant)>,
    pub features: Features,
    pub agent: Option<Agent>,
    /// Keys the kit created, revoked at the end by the key that made them: (auth, id).
    created_keys: Vec<(Auth, String)>,
    /// Webhooks the kit registered, removed at the end.
    created_webhooks: Vec<String>,
}

/// The document's example input of a run.
pub fn example_input() -> Value {
    examples::document("runAgent")["request"].clone()
}

impl Ctx {
    fn new(o: &Options) -> Result<Ctx, Unreachable> {
        let http = reqwest::Client::builder()
            .timeout(o.timeout)
            .build()
            .map_err(|e| Unreachable::Setup(format!("cannot build an HTTP client: {e}")))?;
        let mut secrets = vec![o.key.clone()];
        secrets.extend(o.key_b.clone());
        secrets.extend(o.admin_token.clone());
        let destructive_allowed = if o.key_b.is_some() {
            Some("--key-b".to_string())
        } else if o.destructive {
            Some("--destructive".to_string())
        } else {
            None
        };
        Ok(Ctx {
            http,
            base: o.base_url.trim_end_matches('/').to_string(),
            key_a: o.key.clone(),
            key_b: o.key_b.clone(),
            destructive_allowed,
            secrets,
            results: Vec::new(),
            current: None,
            features: Features::default(),
            agent: None,
            created_keys: Vec::new(),
            created_webhooks: Vec::new(),
        })
    }

    /// Every secret the kit knows, to be masked in any output.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// Whether B's key was given.
    pub fn has_b(&self) -> bool {
        self.key_b.is_some()
    }

    /// `None` when destructive checks may run, else the reason they are skipped.
    pub fn destructive_refused(&self) -> Option<String> {
        match self.destructive_allowed {
            Some(_) => None,
            None => Some(
                "destructive (creates or revokes keys): pass --key-b (a second tenant) or --destructive"
                    .into(),
            ),
        }
    }

    /// Starts a check; what is sent and found until [`Ctx::finish`] belongs to it.
    pub fn start(&mut self, group: &str, name: &str) {
        self.finish();
        self.current = Some((
            CheckResult {
                name: format!("{group}.{name}"),
                group: group.to_string(),
                outcome: Outcome::Pass,
                reason: None,
                requests: Vec::new(),
                failures: Vec::new(),
                duration_ms: 0,
            },
            Instant::now(),
        ));
    }

    /// Ends the check in progress: failed if it found anything.
    pub fn finish(&mut self) {
        if let Some((mut c, started)) = self.current.take() {
            c.duration_ms = started.elapsed().as_millis() as u64;
            if !c.failures.is_empty() {
                c.outcome = Outcome::Fail;
            }
            self.results.push(c);
        }
    }

    /// Records a check that did not run, and why.
    pub fn skip(&mut self, group: &str, name: &str, reason: impl Into<String>) {
        self.finish();
        self.results.push(CheckResult {
            name: format!("{group}.{name}"),
            group: group.to_string(),
            outcome: Outcome::Skip,
            reason: Some(reason.into()),
            requests: Vec::new(),
            failures: Vec::new(),
            duration_ms: 0,
        });
    }

    /// A failure of the check in progress.
    pub fn fail(&mut self, f: Failure) {
        if let Some((c, _)) = &mut self.current {
            c.failures.push(f);
        }
    }

    /// Fails unless `expected == actual`, reporting `pointer`.
    pub fn expect(&mut self, pointer: &str, expected: Value, actual: Value, message: &str) -> bool {
        if expected == actual {
            return true;
        }
        self.fail(Failure::new(pointer, expected, actual, message.to_string()));
        false
    }

    /// Fails unless `ok`, reporting `pointer` with what was expected and found.
    pub fn ensure(
        &mut self,
        ok: bool,
        pointer: &str,
        expected: Value,
        actual: Value,
        message: &str,
    ) -> bool {
        if !ok {
            self.fail(Failure::new(pointer, expected, actual, message.to_string()));
        }
        ok
    }

    /// Fails unless there is a reply, with `status` and the error body's `code`.
    pub fn expect_error(&mut self, reply: Option<&Reply>, status: u16, code: &str, what: &str) {
        if let Some(r) = reply
            && self.expect_status(r, status)
        {
            self.expect(
                "/error/code",
                json!(code),
                r.body["error"]["code"].clone(),
                what,
            );
        }
    }

    /// Fails unless the reply has `status`.
    pub fn expect_status(&mut self, reply: &Reply, status: u16) -> bool {
        if reply.status == status {
            return true;
        }
        let detail = reply
            .body
            .pointer("/error/code")
            .and_then(Value::as_str)
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        self.fail(Failure::new(
            "",
            json!(status),
            json!(reply.status),
            format!("HTTP status{detail}"),
        ));
        false
    }

    /// Sends a request, records it, checks the answer against the spec. `None` (and a failure)
    /// when no answer came.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        auth: Auth,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Option<Reply> {
        let url = format!("{}{path}", self.base);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut req = self.http.request(m, &url);
        let label = auth.label();
        match &auth {
            Auth::A => req = req.bearer_auth(&self.key_a),
            Auth::B => req = req.bearer_auth(self.key_b.as_deref().unwrap_or_default()),
            Auth::None => {}
            Auth::Header(_, v) => req = req.header("authorization", v),
            Auth::Key(_, k) => req = req.bearer_auth(k),
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let answer = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                match resp.text().await {
                    Ok(text) => Ok(Reply {
                        status,
                        headers,
                        body: serde_json::from_str(&text).unwrap_or(Value::Null),
                        text,
                    }),
                    Err(e) => Err(format!("reading the answer: {e}")),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let sent = Sent {
            method: method.to_string(),
            path: path.to_string(),
            auth: label,
            status: answer.as_ref().ok().map(|r| r.status),
        };
        if let Some((c, _)) = &mut self.current {
            c.requests.push(sent);
        }
        match answer {
            Ok(reply) => {
                for f in spec::check_response(spec::v1(), method, path, &reply) {
                    self.fail(f);
                }
                Some(reply)
            }
            Err(e) => {
                self.fail(Failure::new(
                    "",
                    json!("an HTTP answer"),
                    json!(e),
                    format!("{method} {path}: no answer"),
                ));
                None
            }
        }
    }

    pub async fn get(&mut self, path: &str, auth: Auth) -> Option<Reply> {
        self.send("GET", path, auth, None, &[]).await
    }

    pub async fn post(&mut self, path: &str, auth: Auth, body: &Value) -> Option<Reply> {
        self.send("POST", path, auth, Some(body), &[]).await
    }

    /// A secret to mask from now on.
    pub fn remember_secret(&mut self, secret: &str) {
        if !secret.is_empty() && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_string());
        }
    }

    /// Creates a key with `auth` (201 expected); its id and secret. The kit revokes it at the end.
    pub async fn create_key(&mut self, auth: Auth, name: &str) -> Option<(String, String)> {
        let r = self
            .post("/v1/api-keys", auth.clone(), &json!({"name": name}))
            .await?;
        if !self.expect_status(&r, 201) {
            return None;
        }
        let id = r.body["key"].as_str().unwrap_or_default().to_string();
        let secret = r.body["secret"].as_str().unwrap_or_default().to_string();
        self.remember_secret(&secret);
        self.ensure(
            !id.is_empty(),
            "/key",
            json!("the key's id"),
            r.body["key"].clone(),
            "a created key names its id",
        );
        self.ensure(
            secret.starts_with("ares_"),
            "/secret",
            json!("ares_..."),
            json!(report::mask(&secret)),
            "a created key's secret",
        );
        self.created_keys.push((auth, id.clone()));
        Some((id, secret))
    }

    /// Notes that a key the kit created is revoked already.
    pub fn key_revoked(&mut self, id: &str) {
        self.created_keys.retain(|(_, k)| k != id);
    }

    pub fn webhook_created(&mut self, id: &str) {
        self.created_webhooks.push(id.to_string());
    }

    pub fn webhook_deleted(&mut self, id: &str) {
        self.created_webhooks.retain(|w| w != id);
    }

    /// Runs `agent` with the document's example input, as `auth`; the answer when it is 200.
    pub async fn run_agent(&mut self, auth: Auth, agent: &str) -> Option<Reply> {
        let r = self
            .post(&format!("/v1/agents/{agent}/run"), auth, &example_input())
            .await?;
        self.expect_status(&r, 200).then_some(r)
    }

    /// Revokes what the kit created (keys, webhooks); runs stay, the API deletes none.
    async fn clean_up(&mut self) {
        if self.created_keys.is_empty() && self.created_webhooks.is_empty() {
            return;
        }
        self.start("cleanup", "revoke_created");
        for (auth, id) in std::mem::take(&mut self.created_keys) {
            if let Some(r) = self
                .send("DELETE", &format!("/v1/api-keys/{id}"), auth, None, &[])
                .await
            {
                self.ensure(
                    r.status == 204 || r.status == 404,
                    "",
                    json!("204 (or 404: revoked already)"),
                    json!(r.status),
                    "revoking a key the kit created",
                );
            }
        }
        for id in std::mem::take(&mut self.created_webhooks) {
            if let Some(r) = self
                .send("DELETE", &format!("/v1/webhooks/{id}"), Auth::A, None, &[])
                .await
            {
                self.ensure(
                    r.status == 204,
                    "",
                    json!(204),
                    json!(r.status),
                    "deleting a webhook the kit registered",
                );
            }
        }
        self.finish();
    }

    /// Finds what the deployment declares: its spec at `/openapi.json` or `/v1/openapi.json`.
    async fn discover(&mut self) -> Result<(), Unreachable> {
        self.start("discovery", "deployment_spec");
        let mut found = None;
        for path in ["/openapi.json", "/v1/openapi.json"] {
            let url = format!("{}{path}", self.base);
            let resp = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| Unreachable::Connect {
                    url: url.clone(),
                    error: e.to_string(),
                })?;
            let status = resp.status().as_u16();
            if let Some((c, _)) = &mut self.current {
                c.requests.push(Sent {
                    method: "GET".into(),
                    path: path.into(),
                    auth: "no key".into(),
                    status: Some(status),
                });
            }
            if status == 200
                && let Ok(text) = resp.text().await
                && let Ok(doc) = serde_json::from_str::<Value>(&text)
                && doc["paths"].is_object()
            {
                found = Some((path.to_string(), doc));
                break;
            }
        }
        match found {
            Some((path, doc)) => {
                let live = spec::Spec::new(&doc);
                self.features = Features {
                    run_by_id: live.declares("GET", "/v1/runs/{id}"),
                    cancel: live.declares("POST", "/v1/runs/{id}/cancel"),
                    idempotency: live.takes_header("runAgent", "Idempotency-Key"),
                    webhooks: live.declares("POST", "/v1/webhooks")
                        && live.declares("DELETE", "/v1/webhooks/{id}"),
                    background: live.takes_header("runAgent", "Prefer")
                        && live.answers("runAgent", 202),
                    run_events: live.declares("GET", "/v1/runs/{id}/events"),
                    versions: live.declares("GET", "/v1/agents/{name}/versions"),
                    spec_at: Some(path),
                };
                // Every operation of the document must be in the deployment's spec.
                for (method, template) in DOCUMENT_OPERATIONS {
                    self.ensure(
                        live.declares(method, template),
                        "/paths",
                        json!(format!("{method} {template}")),
                        json!("missing"),
                        "the deployment's spec declares every operation of the document",
                    );
                }
                self.finish();
            }
            None => {
                self.current = None;
                self.skip(
                    "discovery",
                    "deployment_spec",
                    "the deployment serves no spec at /openapi.json or /v1/openapi.json; additive features are skipped",
                );
            }
        }
        Ok(())
    }

    /// Chooses the agent the checks run: `wanted`, or the document's `risk-analyzer`, or the
    /// first listed.
    async fn choose_agent(&mut self, wanted: Option<&str>) {
        self.start("setup", "agent");
        let Some(r) = self.get("/v1/agents?per_page=100", Auth::A).await else {
            return self.finish();
        };
        if !self.expect_status(&r, 200) {
            return self.finish();
        }
        let names: Vec<String> = r.body["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["name"].as_str().map(String::from))
            .collect();
        let name = match wanted {
            Some(w) => w.to_string(),
            None if names.iter().any(|n| n == "risk-analyzer") => "risk-analyzer".into(),
            None => match names.first() {
                Some(n) => n.clone(),
                None => {
                    self.fail(Failure::new(
                        "/agents",
                        json!("at least one agent"),
                        json!([]),
                        "the tenant of --key has no agent to run".into(),
                    ));
                    return self.finish();
                }
            },
        };
        let Some(r) = self.get(&format!("/v1/agents/{name}"), Auth::A).await else {
            return self.finish();
        };
        if self.expect_status(&r, 200) {
            self.agent = Some(Agent {
                name,
                model: r.body["config"]["model"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                agent_type: r.body["agent_type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        self.finish();
    }

    /// The chat request of the document, with the chosen agent's model and type.
    pub fn chat_body(&self) -> Value {
        let mut body = examples::document("chat")["request"].clone();
        if let Some(a) = &self.agent {
            body["model"] = json!(a.model);
            body["agent_type"] = json!(a.agent_type);
        }
        body
    }
}

/// The operations of the V1 document (method, path template).
pub const DOCUMENT_OPERATIONS: [(&str, &str); 10] = [
    ("GET", "/v1/agents"),
    ("GET", "/v1/agents/{name}"),
    ("POST", "/v1/agents/{name}/run"),
    ("GET", "/v1/agents/{name}/runs"),
    ("POST", "/v1/chat"),
    ("POST", "/v1/chat/stream"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/api-keys"),
    ("POST", "/v1/api-keys"),
    ("DELETE", "/v1/api-keys/{id}"),
];

/// Runs every check against the deployment; `Err` when it cannot be reached at all.
pub async fn run(options: &Options) -> Result<(Report, Vec<String>), Unreachable> {
    let mut ctx = Ctx::new(options)?;
    ctx.discover().await?;
    ctx.choose_agent(options.agent.as_deref()).await;
    if ctx.agent.is_some() {
        examples::check(&mut ctx).await;
        pagination::check(&mut ctx).await;
        auth::check(&mut ctx).await;
        isolation::check(&mut ctx).await;
        stream::check(&mut ctx).await;
        usage::check(&mut ctx).await;
        features::check(&mut ctx).await;
    }
    ctx.clean_up().await;
    ctx.finish();
    let report = Report::new(&ctx.base, std::mem::take(&mut ctx.results));
    Ok((report.redacted(&ctx.secrets), ctx.secrets.clone()))
}
