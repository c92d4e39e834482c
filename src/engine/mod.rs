//! The engine: runs agents and chats for a tenant, with quotas, records and usage.
//!
//! Knows nothing of HTTP: the API layer converts its results and errors to the wire.

pub mod meter;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::stream::{BoxStream, StreamExt};
use serde_json::{Map, Value};

use crate::agents::{Agent, AgentRegistry, AgentStatus};
use crate::config::Settings;
use crate::llm::{
    ChatRequest, Message, ModelRoute, Models, ProviderError, Role, StreamEvent, TokenUsage,
};
use crate::store::{ChatRecord, Period, RunRecord, RunStatus, Store, StoreError, Tenant};

pub use meter::Meter;

/// Why the engine refused a request (a run that was attempted is never an error: it is a
/// `failed` run record).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no agent named '{0}' in this tenant")]
    AgentNotFound(String),
    #[error("agent '{0}' is disabled")]
    AgentDisabled(String),
    /// A request value that is not acceptable; `field` is its JSON path in the request.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    QuotaExceeded(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> EngineError {
    EngineError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The stable id of a tenant's agent: UUIDv5 of the tenant and the agent name.
pub fn agent_id(tenant: &str, name: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("ares/agent/{tenant}/{name}").as_bytes(),
    )
    .to_string()
}

/// A chat request, as the engine sees it.
#[derive(Debug, Clone)]
pub struct ChatInput {
    pub messages: Vec<Message>,
    pub model: Option<String>,
    pub agent_type: Option<String>,
}

/// A complete chat answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatOutput {
    pub id: String,
    pub content: String,
    pub model: String,
    pub tokens_used: u64,
    pub finish_reason: String,
}

/// One event of a streamed chat; the last has a `finish_reason` and `tokens_used`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatChunk {
    pub delta: String,
    pub finish_reason: Option<String>,
    pub tokens_used: Option<u64>,
    pub error: Option<String>,
}

pub struct Engine {
    pub store: Store,
    pub agents: Arc<AgentRegistry>,
    pub models: Models,
    pub settings: Arc<Settings>,
    pub meter: Meter,
    pub tool_calls: ToolCalls,
    pub ops: OpsCounters,
}

/// What the background work of an instance did, for metrics.
#[derive(Default)]
pub struct OpsCounters {
    /// Records of finished runs and chats waiting for the database to return.
    pub pending_records: Arc<std::sync::atomic::AtomicU64>,
    /// Runs of stopped instances this one failed as interrupted.
    pub interrupted_runs: std::sync::atomic::AtomicU64,
    /// Runs and chats deleted by retention.
    pub purged: std::sync::atomic::AtomicU64,
}

/// Tool calls made so far, by tool and outcome (`ok` or `error`), for metrics.
#[derive(Default)]
pub struct ToolCalls(std::sync::Mutex<std::collections::BTreeMap<(String, &'static str), u64>>);

impl ToolCalls {
    fn record(&self, tool: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((tool.to_string(), outcome))
            .or_default() += 1;
    }

    /// `((tool, outcome), count)` rows.
    pub fn snapshot(&self) -> Vec<((String, &'static str), u64)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// The user message of a run: the input's message, then its context as JSON.
fn run_prompt(input: &Map<String, Value>) -> String {
    let mut text = input
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let rest: Map<String, Value> = input
        .iter()
        .filter(|(k, _)| *k != "message")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !rest.is_empty() {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str("Input (JSON):\n");
        text.push_str(&Value::Object(rest).to_string());
    }
    text
}

/// How long a chat without an agent may wait for the model (an agent's chat uses its
/// `timeout_ms`); for a stream, the longest silence between two pieces.
pub const CHAT_TIMEOUT: Duration = Duration::from_secs(120);

/// Estimated tokens of a text when the provider has not said (a cancelled stream).
fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

impl Engine {
    pub fn period(&self) -> Period {
        Period::containing(Utc::now(), self.settings.billing.period_start_day)
    }

    /// Checks a run's `input`: `message` a string, `context` an object, then the agent's `input_schema`.
    fn check_input(agent: &Agent, input: &Map<String, Value>) -> Result<(), EngineError> {
        if let Some(m) = input.get("message")
            && !m.is_string()
        {
            return Err(invalid(
                "input.message",
                format!("expected a string, got {m}"),
            ));
        }
        if let Some(c) = input.get("context")
            && !c.is_object()
        {
            return Err(invalid(
                "input.context",
                format!("expected an object, got {c}"),
            ));
        }
        if let Some(v) = &agent.input_validator {
            let value = Value::Object(input.clone());
            if let Some(e) = v.iter_errors(&value).next() {
                let path = e.instance_path().to_string();
                let field = format!("input{}", path.replace('/', "."));
                return Err(invalid(
                    field,
                    format!("does not match the agent's input_schema: {e}"),
                ));
            }
        }
        Ok(())
    }

    /// Runs agent `name` for `tenant`. Refusals (unknown agent, bad input, quota) are errors;
    /// a run that started is always answered as its stored record, `completed` or `failed`.
    #[tracing::instrument(skip(self, tenant, input), fields(tenant = %tenant.slug))]
    pub async fn run_agent(
        &self,
        tenant: &Tenant,
        name: &str,
        input: Map<String, Value>,
    ) -> Result<RunRecord, EngineError> {
        let agents = self.agents.snapshot();
        let agent = agents
            .get(&tenant.slug, name)
            .ok_or_else(|| EngineError::AgentNotFound(name.to_string()))?
            .clone();
        drop(agents);
        if agent.spec.status == AgentStatus::Disabled {
            return Err(EngineError::AgentDisabled(name.to_string()));
        }
        Self::check_input(&agent, &input)?;
        let now = Utc::now();
        let period = Period::containing(now, self.settings.billing.period_start_day);
        let quota_exceeded = || {
            EngineError::QuotaExceeded(format!(
                "run quota ({} runs) or token quota ({} tokens) of this billing period is used up; it resets at {}",
                tenant.quota_runs,
                tenant.quota_tokens,
                (period.end + chrono::Duration::seconds(1))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ))
        };
        let mut run = RunRecord::running(
            &tenant.slug,
            name,
            agent_id(&tenant.slug, name),
            Value::Object(input.clone()),
            now,
        );
        let reservation = self
            .store
            .begin_run(&period, tenant.quota_runs, tenant.quota_tokens, &mut run)
            .await?
            .ok_or_else(quota_exceeded)?;
        let clock = Instant::now();
        let limit = Duration::from_millis(agent.spec.timeout_ms);
        let outcome = match tokio::time::timeout(limit, self.execute(&agent, &input)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::failed(
                format!("the run timed out after {} ms", agent.spec.timeout_ms),
                0,
            ),
        };
        run.status = if outcome.error.is_none() {
            RunStatus::Completed
        } else {
            RunStatus::Failed
        };
        run.output = outcome.output;
        run.error = outcome.error;
        run.tokens_used = outcome.tokens;
        run.finished_at = Some(Utc::now());
        run.duration_ms = Some(clock.elapsed().as_millis() as u64);
        if let Some(e) = &run.error {
            tracing::warn!(agent = name, run = %run.id, error = %e, "run failed");
        }
        match self.store.finish_run(&reservation, &run).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(run = %run.id, "the run was already final in the database; its outcome was not stored again")
            }
            // The model work is done and paid for: answer it, and store it when the database
            // is back rather than lose it.
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(run = %run.id, error = %e, "the database is unavailable; the run's record will be stored when it returns");
                let (store, run) = (self.store.clone(), run.clone());
                self.store_later(format!("run {}", run.id), move || {
                    let (store, reservation, run) =
                        (store.clone(), reservation.clone(), run.clone());
                    Box::pin(async move { store.finish_run(&reservation, &run).await.map(|_| ()) })
                });
            }
            Err(e) => return Err(e.into()),
        }
        Ok(run)
    }

    /// Retries an idempotent write in the background while the database is away (a run's
    /// final state, a chat's usage). If this instance stops first, a run is failed as
    /// interrupted by the next instance.
    fn store_later<F>(&self, what: String, write: F)
    where
        F: Fn() -> futures_util::future::BoxFuture<'static, Result<(), StoreError>>
            + Send
            + 'static,
    {
        use std::sync::atomic::Ordering;
        let pending = Arc::clone(&self.ops.pending_records);
        pending.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(500);
            loop {
                tokio::time::sleep(wait).await;
                match write().await {
                    Ok(()) => {
                        tracing::info!("the record of {what} is stored");
                        break;
                    }
                    Err(StoreError::Unavailable(_)) => {
                        wait = (wait * 2).min(Duration::from_secs(10));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "storing the record of {what} failed");
                        break;
                    }
                }
            }
            pending.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// The model work of a run: the tool loop, then the output checked against the agent's
    /// `output_schema`, with one repair attempt that shows the model what was wrong.
    async fn execute(&self, agent: &Agent, input: &Map<String, Value>) -> Outcome {
        let Some(route) = self.models.get(&agent.spec.model) else {
            return Outcome::failed(format!("model '{}' is not configured", agent.spec.model), 0);
        };
        let req = ChatRequest {
            model: route.id.clone(),
            messages: vec![
                Message::new(Role::System, agent.spec.system_prompt.clone()),
                Message::new(Role::User, run_prompt(input)),
            ],
            temperature: agent.spec.temperature.or(route.temperature),
            max_tokens: Some(agent.spec.max_tokens),
            tools: crate::tools::specs(&agent.spec.tools),
            response_schema: agent.spec.output_schema.clone(),
        };
        let (turn, mut tokens) =
            tool_loop(route, req, agent.spec.max_tool_iterations, &self.tool_calls).await;
        let turn = match turn {
            Ok(t) => t,
            Err(e) => return Outcome::failed(e, tokens),
        };
        let (Some(validator), Some(schema)) = (&agent.output_validator, &agent.spec.output_schema)
        else {
            return Outcome::completed(serde_json::json!({"response": turn.content}), tokens);
        };
        let problem = match check_output(validator, &turn.content) {
            Ok(v) => return Outcome::completed(v, tokens),
            Err(p) => p,
        };
        tracing::info!(agent = %agent.name, %problem, "output does not match the schema; asking the model to repair it");
        let mut messages = turn.messages;
        messages.push(Message::new(Role::Assistant, turn.content));
        messages.push(Message::new(
            Role::User,
            format!(
                "Your answer is not valid: {problem}. Answer again with only a JSON object that satisfies this JSON Schema, and nothing else:\n{schema}"
            ),
        ));
        let repair = ChatRequest {
            model: route.id.clone(),
            messages,
            temperature: agent.spec.temperature.or(route.temperature),
            max_tokens: Some(agent.spec.max_tokens),
            tools: Vec::new(),
            response_schema: Some(schema.clone()),
        };
        match route.provider.chat(repair).await {
            Ok(answer) => {
                tokens += answer.usage.total();
                match check_output(validator, &answer.content) {
                    Ok(v) => Outcome::completed(v, tokens),
                    Err(p) => {
                        Outcome::failed(format!("{p} (also after one repair attempt)"), tokens)
                    }
                }
            }
            Err(e) => Outcome::failed(format!("{problem}; the repair attempt failed: {e}"), tokens),
        }
    }

    /// Resolves a chat's model and the system prompt of the agent it names.
    fn resolve_chat(
        &self,
        tenant: &Tenant,
        input: &ChatInput,
    ) -> Result<(ModelRoute, Option<Arc<Agent>>), EngineError> {
        if input.messages.is_empty() {
            return Err(invalid("messages", "must contain at least one message"));
        }
        let agent = match &input.agent_type {
            None => None,
            Some(t) => {
                let agents = self.agents.snapshot();
                let found = agents
                    .list(&tenant.slug)
                    .into_iter()
                    .find(|a| a.spec.agent_type == *t && a.spec.status == AgentStatus::Active)
                    .cloned();
                Some(found.ok_or_else(|| {
                    invalid(
                        "agent_type",
                        format!("no active agent of type '{t}' in this tenant"),
                    )
                })?)
            }
        };
        let model = input
            .model
            .clone()
            .or_else(|| agent.as_ref().map(|a| a.spec.model.clone()))
            .ok_or_else(|| invalid("model", "give a model, an agent_type, or both"))?;
        let route = self.models.get(&model).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.models.names().collect();
            invalid(
                "model",
                format!("unknown model '{model}'; available: {}", known.join(", ")),
            )
        })?;
        Ok((route, agent))
    }

    fn chat_request(
        route: &ModelRoute,
        agent: Option<&Agent>,
        messages: &[Message],
    ) -> ChatRequest {
        let mut all = Vec::with_capacity(messages.len() + 1);
        if let Some(a) = agent {
            all.push(Message::new(Role::System, a.spec.system_prompt.clone()));
        }
        all.extend(messages.iter().cloned());
        ChatRequest {
            model: route.id.clone(),
            messages: all,
            temperature: agent.and_then(|a| a.spec.temperature).or(route.temperature),
            max_tokens: agent.map(|a| a.spec.max_tokens).or(route.max_tokens),
            tools: agent
                .map(|a| crate::tools::specs(&a.spec.tools))
                .unwrap_or_default(),
            response_schema: None,
        }
    }

    /// Refuses a chat once the period's settled tokens reach the quota: from the figure read
    /// with the tenant at authentication, else from the store.
    async fn check_tokens(&self, tenant: &Tenant, period: &Period) -> Result<(), EngineError> {
        let left = match tenant.period_tokens {
            Some(used) => used < tenant.quota_tokens,
            None => {
                self.store
                    .tokens_left(&tenant.slug, period, tenant.quota_tokens)
                    .await?
            }
        };
        if left {
            Ok(())
        } else {
            Err(EngineError::QuotaExceeded(format!(
                "token quota ({} tokens) of this billing period is used up",
                tenant.quota_tokens
            )))
        }
    }

    /// A complete chat answer, recorded in usage.
    #[tracing::instrument(skip(self, tenant, input), fields(tenant = %tenant.slug))]
    pub async fn chat(
        &self,
        tenant: &Tenant,
        input: ChatInput,
    ) -> Result<Result<ChatOutput, ProviderError>, EngineError> {
        let (route, agent) = self.resolve_chat(tenant, &input)?;
        let period = self.period();
        self.check_tokens(tenant, &period).await?;
        let req = Self::chat_request(&route, agent.as_deref(), &input.messages);
        let iterations = agent.as_ref().map_or(0, |a| a.spec.max_tool_iterations);
        let limit = chat_limit(agent.as_deref());
        let (turn, tokens) =
            match tokio::time::timeout(limit, tool_loop(&route, req, iterations, &self.tool_calls))
                .await
            {
                Ok(done) => done,
                Err(_) => (
                    Err(format!(
                        "the model did not answer within {} ms",
                        limit.as_millis()
                    )),
                    0,
                ),
            };
        let turn = match turn {
            Ok(t) => t,
            Err(e) => {
                // Tokens spent before the failure are still the tenant's.
                if tokens > 0 {
                    self.record(tenant, &route.name, "error", tokens, &period)
                        .await?;
                }
                return Ok(Err(ProviderError::Fatal(e)));
            }
        };
        let out = ChatOutput {
            id: uuid::Uuid::now_v7().to_string(),
            content: turn.content,
            model: route.name.clone(),
            tokens_used: tokens,
            finish_reason: turn.finish_reason,
        };
        let record = ChatRecord {
            id: out.id.clone(),
            tenant: tenant.slug.clone(),
            model: out.model.clone(),
            finish_reason: out.finish_reason.clone(),
            tokens_used: out.tokens_used,
            created_at: Utc::now(),
        };
        self.save_chat(record, period).await?;
        Ok(Ok(out))
    }

    /// Records a chat's usage; while the database is away, in the background (the chat
    /// happened and its tokens are the tenant's).
    async fn save_chat(&self, record: ChatRecord, period: Period) -> Result<(), StoreError> {
        match self.store.record_chat(&record, &period).await {
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(chat = %record.id, error = %e, "the database is unavailable; the chat's usage will be stored when it returns");
                let store = self.store.clone();
                self.store_later(format!("chat {}", record.id), move || {
                    let (store, record) = (store.clone(), record.clone());
                    Box::pin(async move { store.record_chat(&record, &period).await })
                });
                Ok(())
            }
            other => other,
        }
    }

    async fn record(
        &self,
        tenant: &Tenant,
        model: &str,
        finish_reason: &str,
        tokens: u64,
        period: &Period,
    ) -> Result<(), StoreError> {
        let record = ChatRecord {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: tenant.slug.clone(),
            model: model.to_string(),
            finish_reason: finish_reason.to_string(),
            tokens_used: tokens,
            created_at: Utc::now(),
        };
        self.save_chat(record, *period).await
    }

    /// A streamed chat. A task drives the provider and forwards each piece; it stops (and
    /// cancels the provider's request) as soon as the client goes away, and records the
    /// tokens used in every case: reported by the provider, or estimated from what was
    /// produced when the stream was cut short.
    pub async fn chat_stream(
        self: &Arc<Self>,
        tenant: &Tenant,
        input: ChatInput,
    ) -> Result<BoxStream<'static, ChatChunk>, EngineError> {
        let (route, agent) = self.resolve_chat(tenant, &input)?;
        let period = self.period();
        self.check_tokens(tenant, &period).await?;
        let req = Self::chat_request(&route, agent.as_deref(), &input.messages);
        let iterations = agent.as_ref().map_or(0, |a| a.spec.max_tool_iterations);
        let limit = chat_limit(agent.as_deref());
        let (tx, rx) = tokio::sync::mpsc::channel::<ChatChunk>(64);
        let engine = Arc::clone(self);
        let tenant = tenant.clone();
        tokio::spawn(async move {
            let (finish_reason, tokens) =
                drive_stream(&route, req, iterations, limit, &tx, &engine.tool_calls).await;
            if let Err(e) = engine
                .record(&tenant, &route.name, &finish_reason, tokens, &period)
                .await
            {
                tracing::error!(error = %e, tenant = %tenant.slug, "recording a streamed chat's usage failed");
            }
        });
        Ok(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
        )
        .boxed())
    }
}

/// The time limit of a chat: its agent's `timeout_ms`, else [`CHAT_TIMEOUT`].
fn chat_limit(agent: Option<&Agent>) -> Duration {
    agent.map_or(CHAT_TIMEOUT, |a| Duration::from_millis(a.spec.timeout_ms))
}

/// A conversation's last answer and the messages that led to it.
struct Turn {
    content: String,
    finish_reason: String,
    messages: Vec<Message>,
}

/// Calls the model, runs the tools it asks for, and calls it again, at most `iterations` times;
/// returns the final answer and the tokens of every call (also when a call failed).
async fn tool_loop(
    route: &ModelRoute,
    mut req: ChatRequest,
    iterations: u32,
    counts: &ToolCalls,
) -> (Result<Turn, String>, u64) {
    let mut tokens = 0;
    let mut used = 0;
    loop {
        let offer_tools = used < iterations && !req.tools.is_empty();
        let mut call = req.clone();
        if offer_tools {
            // Servers differ in combining tools with a JSON answer format; the answer is
            // checked (and repaired) afterwards anyway.
            call.response_schema = None;
        } else {
            call.tools.clear();
        }
        let answer = match route.provider.chat(call).await {
            Ok(a) => a,
            Err(e) => return (Err(e.to_string()), tokens),
        };
        tokens += answer.usage.total();
        if !offer_tools || answer.tool_calls.is_empty() {
            let messages = req.messages;
            return (
                Ok(Turn {
                    content: answer.content,
                    finish_reason: answer.finish_reason,
                    messages,
                }),
                tokens,
            );
        }
        used += 1;
        run_tools(&mut req.messages, answer.content, answer.tool_calls, counts).await;
    }
}

/// Appends the assistant's tool calls and each tool's result to the conversation.
async fn run_tools(
    messages: &mut Vec<Message>,
    content: String,
    calls: Vec<crate::llm::ToolCall>,
    counts: &ToolCalls,
) {
    let results = futures_util::future::join_all(
        calls
            .iter()
            .map(|c| crate::tools::run(&c.name, &c.arguments)),
    )
    .await;
    messages.push(Message {
        role: Role::Assistant,
        content,
        tool_calls: calls.clone(),
        tool_call_id: None,
    });
    for (call, result) in calls.into_iter().zip(results) {
        tracing::debug!(tool = %call.name, ok = result.is_ok(), "tool call");
        counts.record(&call.name, result.is_ok());
        messages.push(Message {
            role: Role::Tool,
            content: result.unwrap_or_else(|e| format!("error: {e}")),
            tool_calls: Vec::new(),
            tool_call_id: Some(call.id),
        });
    }
}

/// Streams one conversation (with tool turns) into `tx`; returns the finish reason and tokens.
async fn drive_stream(
    route: &ModelRoute,
    mut req: ChatRequest,
    iterations: u32,
    silence: Duration,
    tx: &tokio::sync::mpsc::Sender<ChatChunk>,
    counts: &ToolCalls,
) -> (String, u64) {
    let quiet = || format!("the model sent nothing for {} ms", silence.as_millis());
    let mut tokens = 0;
    let mut used = 0;
    let last = |finish: &str, tokens: u64, error: Option<String>| ChatChunk {
        delta: String::new(),
        finish_reason: Some(finish.to_string()),
        tokens_used: Some(tokens),
        error,
    };
    loop {
        let offer_tools = used < iterations && !req.tools.is_empty();
        let mut call = req.clone();
        if !offer_tools {
            call.tools.clear();
        }
        let prompt_estimate: u64 = call
            .messages
            .iter()
            .map(|m| estimate_tokens(&m.content))
            .sum();
        let started = tokio::select! {
            s = tokio::time::timeout(silence, route.provider.chat_stream(call)) => {
                s.unwrap_or_else(|_| Err(ProviderError::Transient(quiet())))
            }
            () = tx.closed() => return ("cancelled".into(), tokens + prompt_estimate),
        };
        let mut upstream = match started {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(last("error", tokens, Some(e.to_string()))).await;
                return ("error".into(), tokens);
            }
        };
        let mut produced = String::new();
        loop {
            let event = tokio::select! {
                e = tokio::time::timeout(silence, upstream.next()) => {
                    e.unwrap_or_else(|_| Some(Err(ProviderError::Transient(quiet()))))
                }
                // The client went away: dropping `upstream` cancels the provider's request.
                () = tx.closed() => return ("cancelled".into(), tokens + prompt_estimate + estimate_tokens(&produced)),
            };
            match event {
                Some(Ok(StreamEvent::Delta(d))) => {
                    produced.push_str(&d);
                    let chunk = ChatChunk {
                        delta: d,
                        finish_reason: None,
                        tokens_used: None,
                        error: None,
                    };
                    if tx.send(chunk).await.is_err() {
                        return (
                            "cancelled".into(),
                            tokens + prompt_estimate + estimate_tokens(&produced),
                        );
                    }
                }
                Some(Ok(StreamEvent::Done {
                    finish_reason,
                    usage,
                    tool_calls,
                })) => {
                    tokens += if usage == TokenUsage::default() {
                        prompt_estimate + estimate_tokens(&produced)
                    } else {
                        usage.total()
                    };
                    if offer_tools && !tool_calls.is_empty() {
                        used += 1;
                        run_tools(&mut req.messages, produced, tool_calls, counts).await;
                        break;
                    }
                    let _ = tx.send(last(&finish_reason, tokens, None)).await;
                    return (finish_reason, tokens);
                }
                Some(Err(e)) => {
                    tokens += prompt_estimate + estimate_tokens(&produced);
                    let _ = tx.send(last("error", tokens, Some(e.to_string()))).await;
                    return ("error".into(), tokens);
                }
                None => {
                    tokens += prompt_estimate + estimate_tokens(&produced);
                    let _ = tx.send(last("stop", tokens, None)).await;
                    return ("stop".into(), tokens);
                }
            }
        }
    }
}

/// The output as a JSON object satisfying the schema, or what is wrong with it.
fn check_output(validator: &jsonschema::Validator, content: &str) -> Result<Value, String> {
    let value = match serde_json::from_str::<Value>(content.trim()) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Err(
                "the model's output is not a JSON object, as the output_schema requires"
                    .to_string(),
            );
        }
    };
    let problem = validator.iter_errors(&value).next().map(|e| {
        format!(
            "the model's output does not match the output_schema at '{}': {e}",
            e.instance_path()
        )
    });
    match problem {
        None => Ok(value),
        Some(p) => Err(p),
    }
}

/// What a run's model work produced.
struct Outcome {
    output: Option<Value>,
    error: Option<String>,
    tokens: u64,
}

impl Outcome {
    fn completed(output: Value, tokens: u64) -> Self {
        Outcome {
            output: Some(output),
            error: None,
            tokens,
        }
    }
    fn failed(error: String, tokens: u64) -> Self {
        Outcome {
            output: None,
            error: Some(error),
            tokens,
        }
    }
}
