//! The HTTP layer: the V1 client API and the admin API (poem-openapi), errors, auth, metrics.
//!
//! The only module that knows HTTP and wire types. A handler converts the request, calls one of
//! the engine's use cases, and converts its answer; it reaches nothing else.

pub mod admin;
pub mod agents;
pub mod auth;
pub mod chat;
pub mod compat;
pub mod error;
pub mod json_object;
pub mod keys;
pub mod metrics;
pub mod request_id;
pub mod runs;
pub mod spec;
pub mod usage;
pub mod webhooks;
pub mod wire;

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::Data;
use poem::{Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Response, Route, handler};
use poem_openapi::{ExtraHeader, OpenApiService, Tags};

use crate::engine::Engine;
use error::{ApiError, ErrorCode};
use metrics::Metrics;

/// What every handler can reach: the engine's use cases, and the HTTP metrics.
pub struct App {
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
}

#[derive(Tags)]
pub enum ApiTags {
    /// Agents configured for your tenant: list, inspect, run, and run history.
    Agents,
    /// Conversations with a model or with the agent of a type, complete or streamed.
    Chat,
    /// Usage of the current billing period against the tenant's quotas.
    Usage,
    /// The tenant's API keys.
    #[oai(rename = "API Keys")]
    ApiKeys,
    /// Endpoints that are told when a run ends, with signed, retried deliveries.
    Webhooks,
}

impl ApiTags {
    /// The order of the V1 document (Agents, Chat, Usage, API Keys), then what `ares` adds.
    pub const IN_ORDER: [ApiTags; 5] = [
        ApiTags::Agents,
        ApiTags::Chat,
        ApiTags::Usage,
        ApiTags::ApiKeys,
        ApiTags::Webhooks,
    ];
}

pub const MAX_PER_PAGE: u32 = 100;
/// Highest page number accepted (far beyond any real listing).
pub const MAX_PAGE: u32 = 1_000_000;

pub fn default_page() -> u32 {
    1
}
pub fn default_per_page() -> u32 {
    20
}

/// A checked page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: u32,
    pub per_page: u32,
}

impl Page {
    pub fn new(page: u32, per_page: u32) -> Result<Page, ApiError> {
        if page == 0 || page > MAX_PAGE {
            return Err(ApiError::invalid(format!(
                "page: must be between 1 and {MAX_PAGE}, got {page}"
            )));
        }
        if per_page == 0 || per_page > MAX_PER_PAGE {
            return Err(ApiError::invalid(format!(
                "per_page: must be between 1 and {MAX_PER_PAGE}, got {per_page}"
            )));
        }
        Ok(Page { page, per_page })
    }

    /// Items before this page.
    pub fn offset(&self) -> u64 {
        u64::from(self.page - 1) * u64::from(self.per_page)
    }

    /// Items on a full page.
    pub fn limit(&self) -> u64 {
        u64::from(self.per_page)
    }
}

/// Whether a `Prefer` header asks for `respond-async` (RFC 7240; other preferences ignored).
pub fn prefers_async(prefer: Option<&str>) -> bool {
    prefer.is_some_and(|p| {
        p.split(',').any(|pref| {
            pref.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("respond-async")
        })
    })
}

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A request's `Idempotency-Key` with the request's fingerprint (method, path and body), or a
/// 400 naming the header when the key is not up to 255 printable ASCII characters (spaces
/// included). A key that is empty once its surrounding spaces are trimmed is no key.
pub fn idempotency(
    headers: &poem::http::HeaderMap,
    method: &str,
    path: &str,
    body: &impl serde::Serialize,
) -> Result<Option<crate::engine::IdempotencyKey>, ApiError> {
    use sha2::{Digest, Sha256};
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = raw.as_bytes().trim_ascii();
    if key.is_empty() {
        return Ok(None);
    }
    if key.len() > MAX_IDEMPOTENCY_KEY || !key.iter().all(|b| (b' '..=b'~').contains(b)) {
        return Err(ApiError::invalid(format!(
            "Idempotency-Key: must be at most {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )));
    }
    let mut hash = Sha256::new();
    hash.update(method.as_bytes());
    hash.update(b"\n");
    hash.update(path.as_bytes());
    hash.update(b"\n");
    hash.update(serde_json::to_vec(body).unwrap_or_default());
    let fingerprint = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Some(crate::engine::IdempotencyKey {
        key: String::from_utf8_lossy(key).into_owned(),
        fingerprint,
    }))
}

fn request_id_header() -> ExtraHeader {
    ExtraHeader::new("X-Request-Id")
        .description("Id of this request: the client's X-Request-Id when it sent a usable one, else a new UUIDv7.")
}

pub type V1Apis = (
    agents::AgentsApi,
    runs::RunsApi,
    chat::ChatApi,
    usage::UsageApi,
    keys::KeysApi,
    webhooks::WebhooksApi,
);

/// The V1 client API, as served under `/v1` and described in `openapi/v1.yaml`.
pub fn v1_service() -> OpenApiService<V1Apis, ()> {
    OpenApiService::new(
        (
            agents::AgentsApi,
            runs::RunsApi,
            chat::ChatApi,
            usage::UsageApi,
            keys::KeysApi,
            webhooks::WebhooksApi,
        ),
        "ARES V1 Client API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "The primary interface for clients integrating ARES. Every endpoint is scoped to the tenant of the \
         API key sent as `Authorization: Bearer ares_...`: you only see your own agents, runs, usage and keys. \
         Errors answer with `{\"error\": {\"code\", \"message\", \"request_id\"}}`.",
    )
    .server("http://127.0.0.1:8080")
    .url_prefix("/v1")
    .extra_response_header::<String, _>(request_id_header())
}

/// The platform admin API, under `/admin/v1`, described in `openapi/admin.yaml`.
pub fn admin_service() -> OpenApiService<admin::AdminApi, ()> {
    OpenApiService::new(admin::AdminApi, "ARES Admin API", env!("CARGO_PKG_VERSION"))
        .description(
            "Tenant provisioning for the platform operator, guarded by `Authorization: Bearer $ARES_ADMIN_TOKEN`. \
             Off when ARES_ADMIN_TOKEN is unset. API keys never authenticate here.",
        )
        .server("http://127.0.0.1:8080")
        .url_prefix("/admin/v1")
        .extra_response_header::<String, _>(request_id_header())
}

/// Turns any error poem raised (routing, parsing, auth, limits) into the one JSON error body.
fn to_api_error(err: poem::Error, admin: bool) -> ApiError {
    if let Some(e) = err.downcast_ref::<ApiError>() {
        return e.clone();
    }
    if err.is::<poem_openapi::error::AuthorizationError>() {
        return if admin {
            ApiError::unauthorized_admin()
        } else {
            ApiError::unauthorized()
        };
    }
    match err.status() {
        StatusCode::NOT_FOUND => ApiError::new(
            ErrorCode::NotFound,
            "no such route; see /openapi.json for the API",
        ),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            ErrorCode::MethodNotAllowed,
            "this route does not accept this method",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(ErrorCode::PayloadTooLarge, err.to_string()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as JSON with Content-Type: application/json",
        ),
        StatusCode::UNAUTHORIZED => ApiError::unauthorized(),
        s if s.is_server_error() => {
            tracing::error!(error = %err, "request failed");
            ApiError::internal()
        }
        s => ApiError {
            status: s.as_u16(),
            ..ApiError::invalid(err.to_string())
        },
    }
}

async fn catch(err: poem::Error, admin: bool) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    to_api_error(err, admin).into_response()
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
async fn readyz(app: Data<&Arc<App>>) -> Response {
    if app.engine.ready().await {
        "ready".into_response()
    } else {
        ApiError::unavailable().into_response()
    }
}

/// The instance's reliability figures, for `/metrics`.
fn ops_samples(figures: &crate::engine::Figures) -> [metrics::Sample; 9] {
    [
        (
            "ares_webhook_oldest_pending_seconds",
            "gauge",
            "Age of the oldest webhook delivery still to be delivered, in seconds (0: none).",
            figures.webhook_oldest_pending_seconds,
        ),
        (
            "ares_database_up",
            "gauge",
            "1 while the database answers, 0 while this instance finds it unreachable.",
            u64::from(figures.database_up),
        ),
        (
            "ares_run_records_pending",
            "gauge",
            "Records of finished runs and chats waiting for the database to return.",
            figures.pending_records,
        ),
        (
            "ares_runs_interrupted_total",
            "counter",
            "Runs of stopped instances that this instance failed as interrupted.",
            figures.interrupted_runs,
        ),
        (
            "ares_history_purged_total",
            "counter",
            "Runs and chats deleted by retention.",
            figures.purged,
        ),
        (
            "ares_keys_verified_in_memory_total",
            "counter",
            "Requests whose API key was verified in memory (kept in step through the database's change feed).",
            figures.keys_in_memory,
        ),
        (
            "ares_keys_read_from_database_total",
            "counter",
            "Requests whose API key was read from the database: not yet held, or memory not in step with the change feed.",
            figures.keys_from_database,
        ),
        (
            "ares_store_transactions_total",
            "counter",
            "Transactions that wrote chats, run starts and run settlements (a busy instance writes many in one).",
            figures.ledger.transactions,
        ),
        (
            "ares_store_writes_total",
            "counter",
            "Chats, run starts and run settlements written; over ares_store_transactions_total, the writes per commit.",
            figures.ledger.writes,
        ),
    ]
}

#[handler]
fn metrics_text(app: Data<&Arc<App>>) -> Response {
    let figures = app.engine.figures();
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(app.metrics.render(
            &figures.tool_calls,
            &figures.webhook_attempts,
            &ops_samples(&figures),
        ))
}

/// The V1 spec of `edition`, as JSON or YAML, made once.
fn document(edition: spec::Edition, yaml: bool) -> impl Endpoint + use<> {
    let doc = spec::v1(edition);
    let (body, content_type) = if yaml {
        (spec::yaml(&doc), "application/yaml")
    } else {
        (doc.to_string(), "application/json")
    };
    poem::endpoint::make_sync(move |_| {
        Response::builder()
            .content_type(content_type)
            .body(body.clone())
    })
}

/// The API reference page (ReDoc, served from the binary) of the published V1 spec (tags in
/// the document's order), without the web fonts it would fetch from the internet, so that it
/// works offline.
fn docs_page<T: poem_openapi::OpenApi, W: poem_openapi::Webhook>(
    service: &OpenApiService<T, W>,
) -> impl Endpoint + use<T, W> {
    let html: String = service
        .redoc_html()
        .replacen(
            &service.spec(),
            &spec::v1(spec::Edition::V30).to_string(),
            1,
        )
        .lines()
        .filter(|l| !l.contains("fonts.googleapis.com"))
        .collect::<Vec<_>>()
        .join("\n");
    poem::endpoint::make_sync(move |_| poem::web::Html(html.clone()))
}

/// The methods each path of the specs accepts, for the `Allow` header of a 405 (RFC 9110).
fn allowed_methods(path: &str) -> Option<String> {
    static TABLE: std::sync::OnceLock<Vec<(Vec<String>, String)>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut rows = Vec::new();
        for spec in [v1_service().spec(), admin_service().spec()] {
            let doc: serde_json::Value = serde_json::from_str(&spec).unwrap_or_default();
            for (template, item) in doc["paths"].as_object().into_iter().flatten() {
                let mut methods: Vec<String> = item
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(m, _)| m.to_uppercase())
                    .collect();
                methods.sort();
                rows.push((
                    template.split('/').map(String::from).collect(),
                    methods.join(", "),
                ));
            }
        }
        rows
    });
    let parts: Vec<&str> = path.split('/').collect();
    table
        .iter()
        .find(|(segments, _)| {
            segments.len() == parts.len()
                && segments
                    .iter()
                    .zip(&parts)
                    .all(|(s, p)| (s.starts_with('{') && !p.is_empty()) || s == p)
        })
        .map(|(_, methods)| methods.clone())
}

/// Adds `Allow` to every 405 response.
pub struct AllowHeader;

impl<E: Endpoint> poem::Middleware<E> for AllowHeader {
    type Output = AllowHeaderEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        AllowHeaderEndpoint(ep)
    }
}

pub struct AllowHeaderEndpoint<E>(E);

impl<E: Endpoint> Endpoint for AllowHeaderEndpoint<E> {
    type Output = Response;
    async fn call(&self, req: poem::Request) -> poem::Result<Response> {
        let path = req.uri().path().to_string();
        let mut resp = self.0.call(req).await?.into_response();
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED
            && let Some(value) = allowed_methods(&path).and_then(|m| m.parse().ok())
        {
            resp.headers_mut().insert(poem::http::header::ALLOW, value);
        }
        Ok(resp)
    }
}

/// Rejects bodies over `max` bytes with 413, whether or not they declare their length.
pub struct BodyLimit(pub usize);

impl<E: Endpoint> poem::Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        BodyLimitEndpoint(ep, self.0)
    }
}

pub struct BodyLimitEndpoint<E>(E, usize);

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;
    async fn call(&self, mut req: poem::Request) -> poem::Result<E::Output> {
        let too_large = || {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than {} bytes", self.1),
            )
        };
        let declared = req
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(n) if n > self.1 as u64 => return Err(too_large().into()),
            Some(_) => {}
            None => {
                let body = req.take_body();
                if !body.is_empty() {
                    let bytes = body
                        .into_bytes_limit(self.1)
                        .await
                        .map_err(|_| too_large())?;
                    req.set_body(bytes);
                }
            }
        }
        self.0.call(req).await
    }
}

/// Every route of the server.
pub fn routes(app: Arc<App>) -> impl Endpoint<Output = Response> {
    let v1 = v1_service();
    let admin = admin_service();
    let docs = docs_page(&v1);
    let settings = app.engine.settings();
    let max_body = settings.limits.max_body_bytes;
    let with_admin = settings.admin_token.is_some();
    let metrics = Arc::clone(&app.metrics);
    let mut route = Route::new()
        .nest(
            "/v1",
            v1.into_endpoint().catch_all_error(|e| catch(e, false)),
        )
        .at("/openapi.json", document(spec::Edition::V30, false))
        .at("/openapi.yaml", document(spec::Edition::V30, true))
        .at("/openapi-3.1.json", document(spec::Edition::V31, false))
        .at("/openapi-3.1.yaml", document(spec::Edition::V31, true))
        .at("/docs", docs)
        .at("/healthz", healthz)
        .at("/readyz", readyz)
        .at("/metrics", metrics_text);
    if with_admin {
        route = route.nest(
            "/admin/v1",
            admin.into_endpoint().catch_all_error(|e| catch(e, true)),
        );
    }
    route
        .with(BodyLimit(max_body))
        .data(app)
        .catch_all_error(|e| catch(e, false))
        .with(AllowHeader)
        .with(request_id::RequestId)
        .with(metrics::Track(metrics))
}
