//! Server settings: `ares.yaml`, then `ARES_*` environment overrides, into typed structs.
//!
//! The file is checked like agent files are (JSON Schema generated from these types, then
//! semantic rules), so every error names the file, line and field, or the variable it came from.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diag::{Diagnostic, Diagnostics};
use crate::yaml::{self, Located};

/// A value that never prints: passwords and tokens.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Everything `ares serve` and the other commands need to know, from `ares.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ares server settings (ares.yaml)")]
pub struct Settings {
    /// Address and port the HTTP server listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where tenants, keys, runs and usage are stored.
    #[serde(default)]
    pub database: DatabaseSettings,
    /// Folder of agent definitions (`<tenant>/<agent>.yaml`, `_global/<agent>.yaml`).
    #[serde(default = "default_agents_dir")]
    pub agents_dir: PathBuf,
    /// The source revision recorded for every agent file, for deployments that ship the
    /// folder without `.git`; when absent, the last commit that touched each file (if the
    /// folder is in a git work tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub agents_rev: Option<String>,
    /// How usage periods are cut.
    #[serde(default)]
    pub billing: BillingSettings,
    /// Quotas a new tenant gets unless it is created with its own.
    #[serde(default)]
    pub quotas: QuotaSettings,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitSettings,
    /// How long run and chat history is kept (daily usage is always kept, for billing).
    #[serde(default)]
    pub retention: RetentionSettings,
    /// How instances sharing one database find runs that a stopped instance left behind.
    #[serde(default)]
    pub instances: InstanceSettings,
    /// How long `Idempotency-Key`s are kept.
    #[serde(default)]
    pub idempotency: IdempotencySettings,
    /// How webhook deliveries are sent and retried.
    #[serde(default)]
    pub webhooks: WebhookSettings,
    /// Model providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSettings>,
    /// Logical model names (what agents and clients say) mapped to a provider's model.
    #[serde(default)]
    pub models: BTreeMap<String, ModelSettings>,
    /// Bearer token of the admin API; only from `ARES_ADMIN_TOKEN`, never from the file.
    #[serde(skip)]
    #[schemars(skip)]
    pub admin_token: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// How long one attempt may take before it counts as failed (at least 100ms).
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
    /// The pause before the first retry; each next pause doubles, with jitter (at least 100ms).
    #[serde(default = "default_webhook_first_retry")]
    pub first_retry: HumanDuration,
    /// The longest pause between two attempts.
    #[serde(default = "default_webhook_max_retry")]
    pub max_retry: HumanDuration,
    /// Attempts of one delivery before it is `failed`.
    #[serde(default = "default_webhook_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// Attempts sent to one endpoint at the same time, at most.
    #[serde(default = "default_webhook_per_endpoint")]
    #[schemars(range(min = 1, max = 64))]
    pub per_endpoint: usize,
    /// Whether endpoints may be private, loopback or link-local addresses (tests, private
    /// networks). Off by default: a tenant must not reach the deployment's own network.
    #[serde(default)]
    pub allow_private_addresses: bool,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            timeout: default_webhook_timeout(),
            first_retry: default_webhook_first_retry(),
            max_retry: default_webhook_max_retry(),
            max_attempts: default_webhook_attempts(),
            per_endpoint: default_webhook_per_endpoint(),
            allow_private_addresses: false,
        }
    }
}

fn default_webhook_timeout() -> HumanDuration {
    HumanDuration::secs(5)
}
fn default_webhook_first_retry() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_webhook_max_retry() -> HumanDuration {
    HumanDuration::secs(3600)
}
fn default_webhook_attempts() -> u32 {
    12
}
fn default_webhook_per_endpoint() -> usize {
    4
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    /// How long a request's `Idempotency-Key` and its answer are kept (at least 1h): a repeat
    /// within it is answered without running again.
    #[serde(default = "default_idempotency_ttl")]
    pub ttl: HumanDuration,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        IdempotencySettings {
            ttl: default_idempotency_ttl(),
        }
    }
}

fn default_idempotency_ttl() -> HumanDuration {
    HumanDuration::secs(24 * 3600)
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `surrealkv://DIR` (embedded, on disk), `mem://` (in memory) or `ws://HOST:PORT` (a SurrealDB server).
    #[serde(default = "default_database_url")]
    #[schemars(length(min = 1))]
    pub url: String,
    /// SurrealDB namespace.
    #[serde(default = "default_ares")]
    #[schemars(length(min = 1))]
    pub namespace: String,
    /// SurrealDB database.
    #[serde(default = "default_ares")]
    #[schemars(length(min = 1))]
    pub database: String,
    /// User to sign in as on a SurrealDB server (`ws://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password for `user`; prefer `ARES_DATABASE_PASS` over writing it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// How long one database call may take before the request answers 503 `unavailable`.
    #[serde(default = "default_database_timeout")]
    pub timeout: HumanDuration,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BillingSettings {
    /// Day of the month (UTC) on which a billing period starts; 1 is the calendar month.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 28))]
    pub period_start_day: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    /// Runs (agent runs and chats) per billing period.
    #[serde(default = "default_quota_runs")]
    pub runs: u64,
    /// Model tokens per billing period.
    #[serde(default = "default_quota_tokens")]
    pub tokens: u64,
    /// Requests per minute per API key (bursts up to the same number); 0 is no limit.
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: u64,
    /// Requests per minute of all a tenant's keys together (bursts up to the same number);
    /// 0 is no limit.
    #[serde(default = "default_tenant_requests_per_minute")]
    pub tenant_requests_per_minute: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Runs and chats older than this are deleted in the background; unset keeps them forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// How often the purge looks for old history.
    #[serde(default = "default_retention_interval")]
    pub interval: HumanDuration,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSettings {
    /// How long an instance's lease lasts; it is renewed every third of it. Runs of an instance
    /// whose lease ran out are marked `failed` (interrupted) by any other instance.
    #[serde(default = "default_lease")]
    pub lease: HumanDuration,
}

/// A duration as people write it, in humantime's syntax: `500ms`, `30s`, `15m`, `12h`, `90d`,
/// `1h 30m`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub std::time::Duration);

/// The JSON Schema `format` of a [`HumanDuration`], checked by [`HumanDuration::parse`].
const DURATION_FORMAT: &str = "human-duration";

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        HumanDuration(std::time::Duration::from_secs(s))
    }

    /// Parses one or more `<number><unit>` terms, such as `90d` or `1h 30m`.
    pub fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                format!("expected a duration such as 30s, 15m or 1h 30m, got {text:?}: {e}")
            })
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": DURATION_FORMAT,
            "description": "One or more numbers with a unit (ms, s, m, h, d, w, ...), e.g. 30s, 90d, 1h 30m."
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest accepted request body; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1024, max = 67108864))]
    pub max_body_bytes: usize,
    /// Largest run `input` stored, as JSON bytes; a larger one is refused with 422.
    #[serde(default = "default_max_run_bytes")]
    #[schemars(range(min = 1024, max = 16777216))]
    pub max_run_input_bytes: usize,
    /// Largest run `output` stored, as JSON bytes; a larger one fails the run.
    #[serde(default = "default_max_run_bytes")]
    #[schemars(range(min = 1024, max = 16777216))]
    pub max_run_output_bytes: usize,
    /// Live (not revoked) API keys a tenant may hold; creating one more is refused with 409.
    #[serde(default = "default_max_keys_per_tenant")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_keys_per_tenant: u64,
    /// Webhook endpoints a tenant may register; registering one more is refused with 409.
    #[serde(default = "default_max_webhooks_per_tenant")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_webhooks_per_tenant: u64,
    /// Longest time a client may take to send a request's headers; then the connection is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: HumanDuration,
    /// Longest a connection may stay without a byte read or written; then it is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
}

/// How a provider is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible chat-completions endpoint.
    Openai,
    /// The built-in offline provider: deterministic, no network, not a language model.
    Offline,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    pub kind: ProviderKind,
    /// Base URL of an `openai` provider, e.g. `https://api.groq.com/openai/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Environment variable holding the provider's API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// Name of a provider in `providers`.
    #[schemars(length(min = 1))]
    pub provider: String,
    /// The provider's own model id.
    #[schemars(length(min = 1))]
    pub id: String,
    /// Default sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f64>,
    /// Default completion token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens: Option<u32>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_agents_dir() -> PathBuf {
    "agents.d".into()
}
fn default_database_url() -> String {
    "surrealkv://data".into()
}
fn default_ares() -> String {
    "ares".into()
}
fn one() -> u32 {
    1
}
fn default_quota_runs() -> u64 {
    100_000
}
fn default_quota_tokens() -> u64 {
    10_000_000
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_requests_per_minute() -> u64 {
    1200
}
fn default_tenant_requests_per_minute() -> u64 {
    6000
}
fn default_max_run_bytes() -> usize {
    256 * 1024
}
fn default_max_keys_per_tenant() -> u64 {
    100
}
fn default_max_webhooks_per_tenant() -> u64 {
    20
}
fn default_header_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration::secs(120)
}
fn default_database_timeout() -> HumanDuration {
    HumanDuration::secs(5)
}
fn default_retention_interval() -> HumanDuration {
    HumanDuration::secs(600)
}
fn default_lease() -> HumanDuration {
    HumanDuration::secs(30)
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: default_database_url(),
            namespace: default_ares(),
            database: default_ares(),
            user: None,
            password: None,
            timeout: default_database_timeout(),
        }
    }
}
impl Default for BillingSettings {
    fn default() -> Self {
        BillingSettings {
            period_start_day: 1,
        }
    }
}
impl Default for QuotaSettings {
    fn default() -> Self {
        QuotaSettings {
            runs: default_quota_runs(),
            tokens: default_quota_tokens(),
            requests_per_minute: default_requests_per_minute(),
            tenant_requests_per_minute: default_tenant_requests_per_minute(),
        }
    }
}
impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            max_age: None,
            interval: default_retention_interval(),
        }
    }
}
impl Default for InstanceSettings {
    fn default() -> Self {
        InstanceSettings {
            lease: default_lease(),
        }
    }
}
impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_body_bytes: default_max_body_bytes(),
            max_run_input_bytes: default_max_run_bytes(),
            max_run_output_bytes: default_max_run_bytes(),
            max_keys_per_tenant: default_max_keys_per_tenant(),
            max_webhooks_per_tenant: default_max_webhooks_per_tenant(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// How an environment variable's text becomes a value.
#[derive(Clone, Copy)]
enum EnvKind {
    /// Taken as it is.
    Text,
    /// Parsed as YAML (numbers, or a flow mapping such as `{a: {provider: x, id: y}}`).
    Yaml,
}

/// Every `ARES_*` variable that overrides a setting, with the field it sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("ARES_LISTEN", "/listen"),
    ("ARES_DATABASE_URL", "/database/url"),
    ("ARES_DATABASE_NAMESPACE", "/database/namespace"),
    ("ARES_DATABASE_NAME", "/database/database"),
    ("ARES_DATABASE_USER", "/database/user"),
    ("ARES_DATABASE_PASS", "/database/password"),
    ("ARES_DATABASE_TIMEOUT", "/database/timeout"),
    ("ARES_AGENTS_DIR", "/agents_dir"),
    ("ARES_AGENTS_REV", "/agents_rev"),
    ("ARES_BILLING_PERIOD_START_DAY", "/billing/period_start_day"),
    ("ARES_QUOTA_RUNS", "/quotas/runs"),
    ("ARES_QUOTA_TOKENS", "/quotas/tokens"),
    (
        "ARES_QUOTA_REQUESTS_PER_MINUTE",
        "/quotas/requests_per_minute",
    ),
    (
        "ARES_QUOTA_TENANT_REQUESTS_PER_MINUTE",
        "/quotas/tenant_requests_per_minute",
    ),
    ("ARES_MAX_BODY_BYTES", "/limits/max_body_bytes"),
    ("ARES_MAX_RUN_INPUT_BYTES", "/limits/max_run_input_bytes"),
    ("ARES_MAX_RUN_OUTPUT_BYTES", "/limits/max_run_output_bytes"),
    ("ARES_MAX_KEYS_PER_TENANT", "/limits/max_keys_per_tenant"),
    (
        "ARES_MAX_WEBHOOKS_PER_TENANT",
        "/limits/max_webhooks_per_tenant",
    ),
    ("ARES_HEADER_TIMEOUT", "/limits/header_timeout"),
    ("ARES_IDLE_TIMEOUT", "/limits/idle_timeout"),
    ("ARES_RETENTION_MAX_AGE", "/retention/max_age"),
    ("ARES_RETENTION_INTERVAL", "/retention/interval"),
    ("ARES_INSTANCE_LEASE", "/instances/lease"),
    ("ARES_IDEMPOTENCY_TTL", "/idempotency/ttl"),
    ("ARES_WEBHOOKS", "/webhooks"),
    ("ARES_PROVIDERS", "/providers"),
    ("ARES_MODELS", "/models"),
];

fn env_kind(pointer: &str) -> EnvKind {
    match pointer {
        "/billing/period_start_day"
        | "/quotas/runs"
        | "/quotas/tokens"
        | "/quotas/requests_per_minute"
        | "/quotas/tenant_requests_per_minute"
        | "/limits/max_body_bytes"
        | "/limits/max_run_input_bytes"
        | "/limits/max_run_output_bytes"
        | "/limits/max_keys_per_tenant"
        | "/limits/max_webhooks_per_tenant"
        | "/providers"
        | "/models"
        | "/webhooks" => EnvKind::Yaml,
        _ => EnvKind::Text,
    }
}

/// The JSON Schema of `ares.yaml`.
pub fn settings_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(crate::schema_check::schema_of::<Settings>)
}

fn settings_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        jsonschema::options()
            .should_validate_formats(true)
            .with_format(DURATION_FORMAT, |text| HumanDuration::parse(text).is_ok())
            .build(settings_schema())
            .expect("the settings schema compiles")
    })
}

/// Sets `value` at `pointer` inside `root`, creating mappings on the way.
fn set_pointer(root: &mut Value, pointer: &str, value: Value) {
    let mut node = root;
    let tokens: Vec<&str> = pointer.split('/').skip(1).collect();
    for (i, token) in tokens.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Default::default());
        }
        let map = node.as_object_mut().expect("made an object above");
        if i + 1 == tokens.len() {
            map.insert((*token).to_string(), value);
            return;
        }
        node = map
            .entry((*token).to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

impl Settings {
    /// Reads `path` (a missing file is an error only when `required`), applies the
    /// `ARES_*` variables that `env` returns, and checks the result.
    pub fn load(
        path: &Path,
        required: bool,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, Diagnostics> {
        let file = path.display().to_string();
        let mut doc = match std::fs::read_to_string(path) {
            Ok(text) => {
                yaml::parse(&text).map_err(|e| Diagnostics(vec![Diagnostic::yaml(&file, e)]))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Located::default(),
            Err(e) => {
                return Err(Diagnostics(vec![Diagnostic::file(
                    &file,
                    format!("cannot read: {e}"),
                )]));
            }
        };
        if doc.value.is_null() {
            doc.value = Value::Object(Default::default());
        }
        let mut diags = Vec::new();
        let mut from_env: Vec<(&str, &str)> = Vec::new();
        for (var, pointer) in ENV_OVERRIDES {
            let Some(text) = env(var) else { continue };
            let value = match env_kind(pointer) {
                EnvKind::Text => Value::String(text),
                EnvKind::Yaml => match yaml::parse(&text) {
                    Ok(v) => v.value,
                    Err(e) => {
                        diags.push(Diagnostic::file(
                            format!("${var}"),
                            format!("invalid YAML: {}", e.message),
                        ));
                        continue;
                    }
                },
            };
            set_pointer(&mut doc.value, pointer, value);
            from_env.push((var, pointer));
        }
        // A problem under an overridden field belongs to the variable, not the file.
        let relocate = |d: Diagnostic| -> Diagnostic {
            match from_env
                .iter()
                .find(|(_, p)| d.pointer == *p || d.pointer.starts_with(&format!("{p}/")))
            {
                Some((var, _)) => Diagnostic {
                    file: format!("${var}"),
                    line: None,
                    column: None,
                    ..d
                },
                None => d,
            }
        };
        diags.extend(
            crate::schema_check::check(&file, &doc, settings_schema(), settings_validator())
                .into_iter()
                .map(relocate),
        );
        if !diags.is_empty() {
            return Err(Diagnostics(diags));
        }
        let mut settings: Settings =
            crate::schema_check::decode(&file, &doc).map_err(|d| Diagnostics(vec![relocate(d)]))?;
        settings.admin_token = env("ARES_ADMIN_TOKEN")
            .filter(|t| !t.is_empty())
            .map(Secret);
        let diags: Vec<Diagnostic> = settings
            .check(&file, &doc)
            .into_iter()
            .map(relocate)
            .collect();
        if diags.is_empty() {
            Ok(settings)
        } else {
            Err(Diagnostics(diags))
        }
    }

    /// Reads settings from the process environment.
    pub fn load_from_env(path: &Path, required: bool) -> Result<Settings, Diagnostics> {
        Settings::load(path, required, &|k| std::env::var(k).ok())
    }

    /// Rules that a schema cannot say.
    fn check(&self, file: &str, doc: &Located) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            out.push(Diagnostic::field(
                file,
                doc,
                "/listen",
                format!(
                    "expected an address such as 127.0.0.1:8080, got {:?}",
                    self.listen
                ),
            ));
        }
        let url = &self.database.url;
        if !["mem://", "surrealkv://", "ws://"]
            .iter()
            .any(|s| url.starts_with(s))
        {
            out.push(Diagnostic::field(
                file,
                doc,
                "/database/url",
                format!("expected a URL starting with surrealkv://, mem:// or ws://, got {url:?}"),
            ));
        }
        let at_least = [
            ("/database/timeout", self.database.timeout, 100),
            ("/instances/lease", self.instances.lease, 1000),
            ("/retention/interval", self.retention.interval, 1000),
            ("/limits/header_timeout", self.limits.header_timeout, 100),
            ("/limits/idle_timeout", self.limits.idle_timeout, 1000),
            ("/idempotency/ttl", self.idempotency.ttl, 3_600_000),
            ("/webhooks/timeout", self.webhooks.timeout, 100),
            ("/webhooks/first_retry", self.webhooks.first_retry, 100),
            ("/webhooks/max_retry", self.webhooks.max_retry, 100),
        ];
        for (pointer, value, min_ms) in at_least {
            if value.0 < std::time::Duration::from_millis(min_ms) {
                out.push(Diagnostic::field(
                    file,
                    doc,
                    pointer,
                    format!(
                        "expected at least {}, got {value}",
                        HumanDuration(std::time::Duration::from_millis(min_ms))
                    ),
                ));
            }
        }
        for (name, p) in &self.providers {
            let at = yaml::push_pointer("/providers", name);
            if p.kind == ProviderKind::Openai {
                if p.base_url.as_deref().is_none_or(str::is_empty) {
                    out.push(Diagnostic::field(
                        file,
                        doc,
                        &at,
                        "a provider of kind `openai` needs `base_url`",
                    ));
                }
                if p.api_key_env.as_deref().is_none_or(str::is_empty) {
                    out.push(Diagnostic::field(
                        file,
                        doc,
                        &at,
                        "a provider of kind `openai` needs `api_key_env`, the variable holding its key",
                    ));
                }
            }
        }
        for (name, m) in &self.models {
            if !self.providers.contains_key(&m.provider) {
                let at = yaml::push_pointer(&yaml::push_pointer("/models", name), "provider");
                let known = self
                    .providers
                    .keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                out.push(Diagnostic::field(
                    file,
                    doc,
                    &at,
                    format!(
                        "unknown provider `{}`; providers defined: {}",
                        m.provider,
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known
                        }
                    ),
                ));
            }
        }
        out
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::load(Path::new(""), false, &|_| None).expect("defaults are valid")
    }
}

/// Environment lookups for tests: a fixed map.
pub fn env_from(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ares.yaml");
        std::fs::write(&path, text).unwrap();
        Settings::load(&path, true, &env_from(env)).map_err(|d| {
            d.0.iter()
                .map(|d| {
                    d.to_string()
                        .replace(&path.display().to_string(), "ares.yaml")
                })
                .collect()
        })
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let s = load("", &[]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080");
        assert_eq!(s.database.url, "surrealkv://data");
        assert_eq!(s.agents_dir, PathBuf::from("agents.d"));
        assert_eq!(s.billing.period_start_day, 1);
        assert_eq!(s.limits.max_body_bytes, 1 << 20);
    }

    #[test]
    fn durations_have_units_and_lower_bounds() {
        let s = load(
            "retention: {max_age: 90d, interval: 1h 30m}\ninstances: {lease: 10s}\n",
            &[("ARES_DATABASE_TIMEOUT", "1500ms")],
        )
        .unwrap();
        assert_eq!(
            s.retention.max_age.unwrap().0,
            std::time::Duration::from_secs(90 * 86_400)
        );
        assert_eq!(s.retention.interval.0, std::time::Duration::from_secs(5400));
        assert_eq!(s.instances.lease.0, std::time::Duration::from_secs(10));
        assert_eq!(s.database.timeout.0, std::time::Duration::from_millis(1500));
        assert_eq!(s.database.timeout.to_string(), "1s 500ms");
        assert_eq!(HumanDuration::secs(7200).to_string(), "2h");
        assert!(HumanDuration::parse("10").is_err());
        assert!(HumanDuration::parse("99999999999999999999d").is_err());
        let errs = load(
            "instances: {lease: 10ms}\n",
            &[("ARES_RETENTION_MAX_AGE", "soon")],
        )
        .unwrap_err();
        assert_eq!(
            errs,
            vec![
                "$ARES_RETENTION_MAX_AGE: /retention/max_age: \"soon\" is not a \"human-duration\""
            ]
        );
        let errs = load("instances: {lease: 10ms}\n", &[]).unwrap_err();
        assert_eq!(
            errs,
            vec!["ares.yaml:1:20: /instances/lease: expected at least 1s, got 10ms"]
        );
    }

    #[test]
    fn durations_read_as_written_and_print_back() {
        let minutes = std::time::Duration::from_secs(60);
        for (text, expected) in [
            ("15m", 15 * minutes),
            ("15min", 15 * minutes),
            (" 2h ", 120 * minutes),
            ("1.5h", 90 * minutes),
            ("1w", 7 * 24 * 60 * minutes),
            ("250ms", std::time::Duration::from_millis(250)),
        ] {
            assert_eq!(
                HumanDuration::parse(text),
                Ok(HumanDuration(expected)),
                "{text}"
            );
        }
        // `M` is a month (30.44 days), not a minute.
        assert_eq!(
            HumanDuration::parse("1M").unwrap().0,
            std::time::Duration::from_secs(2_630_016)
        );
        for text in ["90d", "1h 30m", "1s 500ms", "2months 3days"] {
            let d = HumanDuration::parse(text).unwrap();
            assert_eq!(HumanDuration::parse(&d.to_string()), Ok(d), "{text} -> {d}");
        }
        let e = HumanDuration::parse("30 parsecs").unwrap_err();
        assert!(e.starts_with("expected a duration such as 30s, 15m or 1h 30m, got \"30 parsecs\": unknown time unit \"parsecs\""), "{e}");
    }

    #[test]
    fn a_bad_duration_is_reported_with_the_other_schema_errors() {
        let errs = load("quotas: {runs: many}\nretention: {interval: soon}\n", &[]).unwrap_err();
        assert_eq!(
            errs,
            vec![
                "ares.yaml:1:16: /quotas/runs: expected an integer of at least 0, got \"many\"",
                "ares.yaml:2:23: /retention/interval: \"soon\" is not a \"human-duration\"",
            ]
        );
    }

    #[test]
    fn env_overrides_the_file() {
        let s = load(
            "listen: 0.0.0.0:1\nquotas: {runs: 5}\n",
            &[
                ("ARES_LISTEN", "127.0.0.1:9"),
                ("ARES_QUOTA_TOKENS", "77"),
                ("ARES_ADMIN_TOKEN", "t"),
            ],
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:9");
        assert_eq!(s.quotas.runs, 5);
        assert_eq!(s.quotas.tokens, 77);
        assert_eq!(s.admin_token.unwrap().expose(), "t");
    }

    #[test]
    fn errors_name_line_field_and_variable() {
        let errs = load(
            "listen: nowhere\nquotas:\n  runs: many\nbogus: 1\nmodels:\n  m: {provider: nope, id: x}\n",
            &[("ARES_MAX_BODY_BYTES", "12")],
        )
        .unwrap_err();
        assert_eq!(
            errs,
            vec![
                "$ARES_MAX_BODY_BYTES: /limits/max_body_bytes: expected an integer between 1024 and 67108864, got 12",
                "ares.yaml:3:9: /quotas/runs: expected an integer of at least 0, got \"many\"",
                "ares.yaml:4:1: /bogus: unknown field `bogus`; expected one of `listen`, `database`, `agents_dir`, `agents_rev`, `billing`, `quotas`, `limits`, `retention`, `instances`, `idempotency`, `webhooks`, `providers`, `models`",
            ]
        );
        let errs = load(
            "listen: nowhere\nmodels:\n  m: {provider: nope, id: x}\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            errs,
            vec![
                "ares.yaml:1:9: /listen: expected an address such as 127.0.0.1:8080, got \"nowhere\"",
                "ares.yaml:3:17: /models/m/provider: unknown provider `nope`; providers defined: none",
            ]
        );
    }

    #[test]
    fn openai_providers_need_url_and_key_variable() {
        let errs = load("providers:\n  groq: {kind: openai}\n", &[]).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with(
            "ares.yaml:2:9: /providers/groq: a provider of kind `openai` needs `base_url`"
        ));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = load("database: {password: hunter2}\n", &[]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_missing_required_file_is_an_error() {
        let e = Settings::load(Path::new("/nonexistent/ares.yaml"), true, &|_| None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/ares.yaml: cannot read"),
            "{e}"
        );
    }
}
