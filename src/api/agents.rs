//! `/v1/agents`: list, inspect, run, and read run history.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::auth::ApiKeyAuth;
use super::error::responses;
use super::json_object::JsonObject;
use super::wire::document_example;
use super::wire::{JsonBody, Timestamp};
use super::{ApiTags, App, Page, idempotency, prefers_async};
use crate::engine::{AgentVersion, AgentView, RunAsk, RunRecord, RunStatus, Step, StepKind};

/// Whether an agent takes runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum AgentState {
    /// Takes runs.
    Active,
    /// Refuses runs with 409 `agent_disabled`.
    Disabled,
}

impl From<crate::engine::AgentStatus> for AgentState {
    fn from(s: crate::engine::AgentStatus) -> Self {
        match s {
            crate::engine::AgentStatus::Active => AgentState::Active,
            crate::engine::AgentStatus::Disabled => AgentState::Disabled,
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum RunState {
    /// In flight (a background run, or one followed before it ends).
    Running,
    /// Ended with an output.
    Completed,
    /// Ended with an error (still recorded and counted).
    Failed,
    /// Stopped by a cancel request.
    Cancelled,
}

impl From<RunStatus> for RunState {
    fn from(s: RunStatus) -> Self {
        match s {
            RunStatus::Running => RunState::Running,
            RunStatus::Completed => RunState::Completed,
            RunStatus::Failed => RunState::Failed,
            RunStatus::Cancelled => RunState::Cancelled,
        }
    }
}

/// An agent's configuration as listed.
#[derive(Debug, Clone, Object)]
pub struct AgentConfigSummary {
    /// Logical model name.
    pub model: String,
    /// Built-in tools the agent may call.
    pub tools: Vec<String>,
}

/// An agent's full configuration.
#[derive(Debug, Clone, Object)]
pub struct AgentConfig {
    /// Logical model name.
    pub model: String,
    /// The system prompt of every run.
    pub system_prompt: String,
    /// Built-in tools the agent may call.
    pub tools: Vec<String>,
    /// Tokens the model may generate per call.
    pub max_tokens: u32,
    /// Sampling temperature; null for the model's default.
    #[oai(nullable)]
    pub temperature: Option<f64>,
    /// Model calls that may request tools in one run (always sent by ares; optional for other servers of this API).
    #[oai(skip_serializing_if_is_none)]
    pub max_tool_iterations: Option<u32>,
    /// Wall-clock limit of a run, in milliseconds (always sent by ares; optional for other servers of this API).
    #[oai(skip_serializing_if_is_none)]
    pub timeout_ms: Option<u64>,
    /// JSON Schema a run's `input` must satisfy; null when any input is accepted.
    #[oai(nullable)]
    pub input_schema: Option<JsonObject>,
    /// JSON Schema of a run's `output`; null when the output is `{"response": text}`.
    #[oai(nullable)]
    pub output_schema: Option<JsonObject>,
}

/// An agent in a listing.
#[derive(Debug, Clone, Object)]
pub struct AgentSummary {
    /// Stable id of this tenant's agent (UUIDv5 of tenant and name).
    pub id: String,
    /// The agent's name, used in URLs.
    pub name: String,
    /// Kind of work, e.g. `classifier`.
    pub agent_type: String,
    /// `active`, or `disabled` (refuses runs).
    pub status: AgentState,
    pub config: AgentConfigSummary,
    /// The version of the definition served now: a short hash of it, which changes with any
    /// change that matters (always sent by ares; optional for other servers of this API).
    #[oai(skip_serializing_if_is_none)]
    pub version: Option<String>,
    /// When this tenant's agent was first seen by the server.
    pub created_at: Timestamp,
    /// Start of the latest run; null before the first.
    #[oai(nullable)]
    pub last_run: Option<Timestamp>,
    /// Runs so far, completed and failed.
    pub total_runs: u64,
    /// Completed runs divided by all runs; 0 before the first run.
    pub success_rate: f64,
}

/// One agent with its full configuration.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct AgentDetail {
    /// Stable id of this tenant's agent (UUIDv5 of tenant and name).
    pub id: String,
    /// The agent's name, used in URLs.
    pub name: String,
    /// Kind of work, e.g. `classifier`.
    pub agent_type: String,
    /// `active`, or `disabled` (refuses runs).
    pub status: AgentState,
    /// What the agent is for; null when the file gives no description.
    #[oai(nullable)]
    pub description: Option<String>,
    pub config: AgentConfig,
    /// The version of the definition served now: a short hash of it, which changes with any
    /// change that matters (always sent by ares; optional for other servers of this API).
    #[oai(skip_serializing_if_is_none)]
    pub version: Option<String>,
    /// When this tenant's agent was first seen by the server.
    pub created_at: Timestamp,
    /// Start of the latest run; null before the first.
    #[oai(nullable)]
    pub last_run: Option<Timestamp>,
    /// Runs so far, completed and failed.
    pub total_runs: u64,
    /// Completed runs divided by all runs; 0 before the first run.
    pub success_rate: f64,
}

/// A page of agents.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct AgentList {
    /// The agents of this page.
    pub agents: Vec<AgentSummary>,
    /// All agents of the tenant, not only this page's.
    pub total: u64,
    /// The page number, from 1.
    pub page: u32,
    /// The page size.
    pub per_page: u32,
}

/// One version of an agent's definition, as first served.
#[derive(Debug, Clone, Object)]
pub struct AgentVersionItem {
    /// The version: a short hash of the definition.
    pub version: String,
    /// When a server first served it.
    pub first_served_at: Timestamp,
    /// The git revision of the last commit that touched the agent's file then (or
    /// `ARES_AGENTS_REV`); null when unknown.
    #[oai(nullable)]
    pub source_rev: Option<String>,
    /// The definition, as the agent file gave it with every default filled in.
    pub config: JsonObject,
}

/// A page of an agent's versions, newest first.
#[derive(Debug, Clone, Object)]
pub struct AgentVersionList {
    /// The versions of this page, newest first.
    pub versions: Vec<AgentVersionItem>,
    /// All versions of the agent ever served, not only this page's.
    pub total: u64,
    /// The page number, from 1.
    pub page: u32,
    /// The page size.
    pub per_page: u32,
}

impl From<AgentVersion> for AgentVersionItem {
    fn from(v: AgentVersion) -> Self {
        AgentVersionItem {
            version: v.version,
            first_served_at: v.first_served_at.into(),
            source_rev: v.source_rev,
            config: match v.config {
                serde_json::Value::Object(m) => JsonObject(m),
                _ => JsonObject::default(),
            },
        }
    }
}

/// The input of a run.
#[derive(Debug, Clone, Object, serde::Deserialize)]
#[oai(example)]
pub struct RunRequest {
    /// `message` (text for the model) and `context` (any JSON object), or whatever the agent's input_schema asks for.
    pub input: JsonObject,
}

/// One run of an agent.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct RunResponse {
    /// The run's id (UUIDv7).
    pub id: String,
    /// Id of the agent that ran.
    pub agent_id: String,
    /// Name of the agent that ran (always sent by ares; optional for other servers of this API).
    #[oai(skip_serializing_if_is_none)]
    pub agent_name: Option<String>,
    /// The version of the agent's definition that ran (always sent by ares for runs it
    /// records; optional for other servers of this API).
    #[oai(skip_serializing_if_is_none)]
    pub agent_version: Option<String>,
    /// `completed`, `failed` or `cancelled` (`running` while a run is in flight).
    pub status: RunState,
    /// The input as given.
    pub input: JsonObject,
    /// The agent's output; null when the run failed.
    #[oai(nullable)]
    pub output: Option<JsonObject>,
    /// Why the run failed; null when it completed.
    #[oai(nullable)]
    pub error: Option<String>,
    /// When the run started.
    pub started_at: Timestamp,
    /// When the run ended; null while running.
    #[oai(nullable)]
    pub finished_at: Option<Timestamp>,
    /// Wall-clock time of the run in milliseconds; null while running.
    #[oai(nullable)]
    pub duration_ms: Option<u64>,
    /// Model tokens used, as the provider reported them.
    pub tokens_used: u64,
    /// The run's model calls and tool calls, in order. In a run's own record (its answer,
    /// `GET /v1/runs/{id}`, its events); left out of the items of `GET /v1/agents/{name}/runs`.
    #[oai(skip_serializing_if_is_none)]
    pub steps: Option<Vec<RunStep>>,
}

/// One step of a run: a model call or a tool call.
#[derive(Debug, Clone, Object)]
pub struct RunStep {
    /// `model` or `tool`.
    pub kind: String,
    /// The model's name, or the tool's.
    pub name: String,
    /// A tool call's arguments as the model gave them (cut at 16 KiB); null for model calls.
    #[oai(nullable)]
    pub arguments: Option<String>,
    /// A tool call's result (cut at 16 KiB); null for model calls and failed tool calls.
    #[oai(nullable)]
    pub result: Option<String>,
    /// Tokens of a model call; 0 for tool calls.
    pub tokens: u64,
    /// When the step started.
    pub started_at: Timestamp,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Why it failed; null when it did not.
    #[oai(nullable)]
    pub error: Option<String>,
}

impl From<Step> for RunStep {
    fn from(s: Step) -> Self {
        RunStep {
            kind: match s.kind {
                StepKind::Model => "model",
                StepKind::Tool => "tool",
            }
            .to_string(),
            name: s.name,
            arguments: s.arguments,
            result: s.result,
            tokens: s.tokens,
            started_at: s.started_at.into(),
            duration_ms: s.duration_ms,
            error: s.error,
        }
    }
}

impl RunResponse {
    /// A run's own record, with its steps.
    pub fn with_steps(run: RunRecord, steps: Vec<Step>) -> Self {
        RunResponse {
            steps: Some(steps.into_iter().map(RunStep::from).collect()),
            ..run.into()
        }
    }
}

/// A page of an agent's runs, newest first.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct RunList {
    /// The runs of this page, newest first.
    pub runs: Vec<RunResponse>,
    /// All runs of the agent, not only this page's.
    pub total: u64,
    /// The page number, from 1.
    pub page: u32,
    /// The page size.
    pub per_page: u32,
}

impl From<RunRecord> for RunResponse {
    fn from(r: RunRecord) -> Self {
        let object = |v: serde_json::Value| match v {
            serde_json::Value::Object(m) => Some(JsonObject(m)),
            _ => None,
        };
        RunResponse {
            id: r.id,
            agent_id: r.agent_id,
            agent_name: Some(r.agent),
            agent_version: r.agent_version,
            status: r.status.into(),
            input: object(r.input).unwrap_or_default(),
            output: r.output.and_then(object),
            error: r.error,
            started_at: r.started_at.into(),
            finished_at: r.finished_at.map(Timestamp),
            duration_ms: r.duration_ms,
            tokens_used: r.tokens_used,
            steps: None,
        }
    }
}

fn schema_object(v: &Option<serde_json::Value>) -> Option<JsonObject> {
    match v {
        Some(serde_json::Value::Object(m)) => Some(JsonObject(m.clone())),
        _ => None,
    }
}

impl From<AgentView> for AgentSummary {
    fn from(v: AgentView) -> Self {
        let a = &v.agent;
        AgentSummary {
            id: v.id.clone(),
            name: a.name.clone(),
            agent_type: a.spec.agent_type.clone(),
            status: a.spec.status.into(),
            config: AgentConfigSummary {
                model: a.spec.model.clone(),
                tools: a.spec.tools.clone(),
            },
            version: Some(a.version.clone()),
            created_at: v.state.created_at.into(),
            last_run: v.state.last_run.map(Timestamp),
            total_runs: v.state.total_runs,
            success_rate: v.success_rate(),
        }
    }
}

impl From<AgentView> for AgentDetail {
    fn from(v: AgentView) -> Self {
        let a = &v.agent;
        AgentDetail {
            id: v.id.clone(),
            name: a.name.clone(),
            agent_type: a.spec.agent_type.clone(),
            status: a.spec.status.into(),
            description: a.spec.description.clone(),
            config: AgentConfig {
                model: a.spec.model.clone(),
                system_prompt: a.spec.system_prompt.clone(),
                tools: a.spec.tools.clone(),
                max_tokens: a.spec.max_tokens,
                temperature: a.spec.temperature,
                max_tool_iterations: Some(a.spec.max_tool_iterations),
                timeout_ms: Some(a.spec.timeout_ms),
                input_schema: schema_object(&a.spec.input_schema),
                output_schema: schema_object(&a.spec.output_schema),
            },
            version: Some(a.version.clone()),
            created_at: v.state.created_at.into(),
            last_run: v.state.last_run.map(Timestamp),
            total_runs: v.state.total_runs,
            success_rate: v.success_rate(),
        }
    }
}

responses! {
    ListAgentsResponse {
        ok {
        /// A page of the tenant's agents, by name.
        Ok(Json<AgentList>) = 200,
        }
        errors {
            BadRequest = 400: "A query parameter is not a number, or out of range (`invalid_request`).",
            Unauthorized = 401: "Missing or invalid API key.",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

responses! {
    GetAgentResponse {
        ok {
        /// The agent.
        Ok(Json<AgentDetail>) = 200,
        }
        errors {
            Unauthorized = 401: "Missing or invalid API key.",
            NotFound = 404: "No agent of that name in this tenant (`agent_not_found`).",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

responses! {
    RunAgentResponse {
        ok {
        /// The run, completed, failed or cancelled. A failed run is still a 200: it happened and was recorded.
        Ok(
            Json<RunResponse>,
            /// `true` when this answers an earlier request with the same `Idempotency-Key`.
            #[oai(header = "Idempotent-Replayed")] Option<String>
        ) = 200,
        /// The run has started in the background (`Prefer: respond-async`); follow it at `Location`.
        Accepted(
            Json<RunResponse>,
            /// Where the run is: `/v1/runs/{id}`.
            #[oai(header = "Location")] String,
            /// `respond-async`.
            #[oai(header = "Preference-Applied")] String,
            /// `true` when this answers an earlier request with the same `Idempotency-Key`.
            #[oai(header = "Idempotent-Replayed")] Option<String>
        ) = 202,
        }
        errors {
            BadRequest = 400: "The body is not JSON of the right shape.",
            Unauthorized = 401: "Missing or invalid API key.",
            NotFound = 404: "No agent of that name in this tenant (`agent_not_found`).",
            Conflict = 409: "The agent is disabled (`agent_disabled`), or a request with this `Idempotency-Key` is still running (`idempotency_key_in_use`).",
            TooLarge = 413: "The body is larger than the configured limit.",
            UnsupportedMediaType = 415: "The body is not sent as `application/json`.",
            Invalid = 422: "The input does not satisfy the agent's input rules (the message names the field), or the `Idempotency-Key` was used for another request (`idempotency_key_reused`).",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { QuotaExceeded: "The tenant's run or token quota for this period is used up (`quota_exceeded`), or the API key sent more requests than its per-minute limit (`rate_limited`, with `Retry-After`)." }
    }
}

responses! {
    ListRunsResponse {
        ok {
        /// A page of the agent's runs, newest first.
        Ok(Json<RunList>) = 200,
        }
        errors {
            BadRequest = 400: "A query parameter is not a number, or out of range (`invalid_request`).",
            Unauthorized = 401: "Missing or invalid API key.",
            NotFound = 404: "No agent of that name in this tenant (`agent_not_found`).",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

responses! {
    ListAgentVersionsResponse {
        ok {
        /// A page of the agent's versions, newest first.
        Ok(Json<AgentVersionList>) = 200,
        }
        errors {
            BadRequest = 400: "A query parameter is not a number, or out of range (`invalid_request`).",
            Unauthorized = 401: "Missing or invalid API key.",
            NotFound = 404: "No agent of that name in this tenant (`agent_not_found`).",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

pub struct AgentsApi;

#[OpenApi(tag = "ApiTags::Agents")]
impl AgentsApi {
    /// List agents
    ///
    /// Returns a paginated list of agents configured for your tenant, ordered by name.
    #[oai(path = "/agents", method = "get", operation_id = "listAgents")]
    async fn list(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        /// Page number, from 1 (at most 1,000,000).
        #[oai(
            default = "super::default_page",
            validator(minimum(value = "1"), maximum(value = "1000000"))
        )]
        page: Query<u32>,
        /// Results per page, 1 to 100.
        #[oai(
            default = "super::default_per_page",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        per_page: Query<u32>,
    ) -> ListAgentsResponse {
        let page = match Page::new(page.0, per_page.0) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        match app
            .engine
            .list_agents(&auth.0.tenant, page.offset(), page.limit())
            .await
        {
            Ok(listing) => ListAgentsResponse::Ok(Json(AgentList {
                agents: listing.items.into_iter().map(AgentSummary::from).collect(),
                total: listing.total,
                page: page.page,
                per_page: page.per_page,
            })),
            Err(e) => e.into(),
        }
    }

    /// Get agent details
    ///
    /// Returns full details for a single agent of your tenant.
    #[oai(path = "/agents/:name", method = "get", operation_id = "getAgent")]
    async fn get(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        /// The agent's name.
        name: Path<String>,
    ) -> GetAgentResponse {
        match app.engine.get_agent(&auth.0.tenant, &name.0).await {
            Ok(view) => GetAgentResponse::Ok(Json(view.into())),
            Err(e) => e.into(),
        }
    }

    /// Run an agent
    ///
    /// Executes the agent with the given input and answers with the run record. A run that
    /// fails (model error, invalid output, timeout) is answered with status 200, `status:
    /// "failed"` and an `error`; it is recorded and counted like any run.
    #[oai(path = "/agents/:name/run", method = "post", operation_id = "runAgent")]
    // One parameter per part of the operation the spec describes.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        /// The agent's name.
        name: Path<String>,
        /// `respond-async` to have the run start in the background: answered at once with 202
        /// and the run as it stands, followed at `Location`.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// Any unique string (up to 255 characters), e.g. a UUID: a repeat of this request with
        /// the same key, within 24 h, runs nothing and answers the first request's run.
        #[oai(
            name = "Idempotency-Key",
            validator(max_length = 255, pattern = "^[ -~]*$")
        )]
        _idempotency_key: Header<Option<String>>,
        body: JsonBody<RunRequest>,
        req: &poem::Request,
    ) -> RunAgentResponse {
        // The key is read from the raw header: a value that is not text is refused, not missed.
        let input = body.0.input.0;
        let path = format!("/v1/agents/{}/run", name.0);
        let key = match idempotency(req.headers(), "POST", &path, &input) {
            Ok(k) => k,
            Err(e) => return e.into(),
        };
        let ask = RunAsk {
            background: prefers_async(prefer.0.as_deref()),
            idempotency: key,
        };
        match app
            .engine
            .run_agent(&auth.0.tenant, &name.0, input, ask)
            .await
        {
            Ok(answer) => {
                if !answer.replayed && answer.run.status != crate::engine::RunStatus::Running {
                    app.metrics
                        .record_run(answer.run.status.as_str(), answer.run.tokens_used);
                }
                let replayed = answer.replayed.then(|| "true".to_string());
                let location = format!("/v1/runs/{}", answer.run.id);
                let body = Json(RunResponse::with_steps(answer.run, answer.steps));
                if answer.background {
                    RunAgentResponse::Accepted(body, location, "respond-async".into(), replayed)
                } else {
                    RunAgentResponse::Ok(body, replayed)
                }
            }
            Err(e) => e.into(),
        }
    }

    /// List agent runs
    ///
    /// Returns the run history of an agent, newest first.
    #[oai(
        path = "/agents/:name/runs",
        method = "get",
        operation_id = "listAgentRuns"
    )]
    async fn runs(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        /// The agent's name.
        name: Path<String>,
        /// Page number, from 1 (at most 1,000,000).
        #[oai(
            default = "super::default_page",
            validator(minimum(value = "1"), maximum(value = "1000000"))
        )]
        page: Query<u32>,
        /// Results per page, 1 to 100.
        #[oai(
            default = "super::default_per_page",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        per_page: Query<u32>,
    ) -> ListRunsResponse {
        let page = match Page::new(page.0, per_page.0) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        match app
            .engine
            .list_runs(&auth.0.tenant, &name.0, page.offset(), page.limit())
            .await
        {
            Ok(listing) => ListRunsResponse::Ok(Json(RunList {
                runs: listing.items.into_iter().map(RunResponse::from).collect(),
                total: listing.total,
                page: page.page,
                per_page: page.per_page,
            })),
            Err(e) => e.into(),
        }
    }

    /// List agent versions
    ///
    /// Returns every version of the agent's definition a server has served, newest first,
    /// each with its definition and the git revision it came from. Runs name the version
    /// that ran in `agent_version`.
    #[oai(
        path = "/agents/:name/versions",
        method = "get",
        operation_id = "listAgentVersions"
    )]
    async fn versions(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        /// The agent's name.
        name: Path<String>,
        /// Page number, from 1 (at most 1,000,000).
        #[oai(
            default = "super::default_page",
            validator(minimum(value = "1"), maximum(value = "1000000"))
        )]
        page: Query<u32>,
        /// Results per page, 1 to 100.
        #[oai(
            default = "super::default_per_page",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        per_page: Query<u32>,
    ) -> ListAgentVersionsResponse {
        let page = match Page::new(page.0, per_page.0) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        match app
            .engine
            .agent_versions(&auth.0.tenant, &name.0, page.offset(), page.limit())
            .await
        {
            Ok(listing) => ListAgentVersionsResponse::Ok(Json(AgentVersionList {
                versions: listing
                    .items
                    .into_iter()
                    .map(AgentVersionItem::from)
                    .collect(),
                total: listing.total,
                page: page.page,
                per_page: page.per_page,
            })),
            Err(e) => e.into(),
        }
    }
}

document_example!(AgentList, "listAgents.json", "response");

document_example!(AgentDetail, "getAgent.json", "response");

document_example!(RunRequest, "runAgent.json", "request");

document_example!(RunResponse, "runAgent.json", "response");

document_example!(RunList, "listAgentRuns.json", "response");
