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
        let reservation = self
            .store
            .reserve_run(&tenant.slug, &period, tenant.quota_runs, tenant.quota_tokens, now)
            .await?
            .ok_or_else(|| {
                EngineError::QuotaExceeded(format!(
                    "run quota ({} runs) or token quota ({} tokens) of this billing period is used up; it resets at {}",
                    tenant.quota_runs,
                    tenant.quota_tokens,
                    (period.end + chrono::Duration::seconds(1)).to_rfc3339()
                ))
            })?;
        let mut run = RunRecord {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: tenant.slug.clone(),
            agent: name.to_string(),
            agent_id: agent_id(&tenant.slug, name),
            status: RunStatus::Running,
            input: Value::Object(input.clone()),
            output: None,
            error: None,
            started_at: now,
            finished_at: None,
            duration_ms: None,
            tokens_used: 0,
        };
        self.store.start_run(&run).await?;
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
        self.store.finish_run(&reservation, &run).await?;
        Ok(run)
    }

    /// The model work of a run: one call asking for the agent's output.
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
            tools: Vec::new(),
            response_schema: agent.spec.output_schema.clone(),
        };
        let answer = match route.provider.chat(req).await {
            Ok(a) => a,
            Err(e) => return Outcome::failed(e.to_string(), 0),
        };
        let tokens = answer.usage.total();
        match &agent.output_validator {
            None => Outcome::completed(serde_json::json!({"response": answer.content}), tokens),
            Some(v) => match serde_json::from_str::<Value>(&answer.content) {
                Ok(Value::Object(o)) => {
                    let value = Value::Object(o);
                    let problem = v.iter_errors(&value).next().map(|e| {
                        format!(
                            "the model's output does not match the output_schema at '{}': {e}",
                            e.instance_path()
                        )
                    });
                    match problem {
                        None => Outcome::completed(value, tokens),
                        Some(p) => Outcome::failed(p, tokens),
                    }
                }
                _ => Outcome::failed(
                    "the model's output is not a JSON object, as the output_schema requires"
                        .to_string(),
                    tokens,
                ),
            },
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
            tools: Vec::new(),
            response_schema: None,
        }
    }

    async fn check_tokens(&self, tenant: &Tenant, period: &Period) -> Result<(), EngineError> {
        if self
            .store
            .tokens_left(&tenant.slug, period, tenant.quota_tokens)
            .await?
        {
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
        let answer = match route.provider.chat(req).await {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let out = ChatOutput {
            id: uuid::Uuid::now_v7().to_string(),
            content: answer.content,
            model: route.name.clone(),
            tokens_used: answer.usage.total(),
            finish_reason: answer.finish_reason,
        };
        let record = ChatRecord {
            id: out.id.clone(),
            tenant: tenant.slug.clone(),
            model: out.model.clone(),
            finish_reason: out.finish_reason.clone(),
            tokens_used: out.tokens_used,
            created_at: Utc::now(),
        };
        self.store.record_chat(&record, &period).await?;
        Ok(Ok(out))
    }

    /// A streamed chat. Its usage is recorded when it ends, and also when the client goes away
    /// first (with the tokens estimated from what was produced).
    pub async fn chat_stream(
        self: &Arc<Self>,
        tenant: &Tenant,
        input: ChatInput,
    ) -> Result<BoxStream<'static, ChatChunk>, EngineError> {
        let (route, agent) = self.resolve_chat(tenant, &input)?;
        let period = self.period();
        self.check_tokens(tenant, &period).await?;
        let req = Self::chat_request(&route, agent.as_deref(), &input.messages);
        let prompt_estimate: u64 = req
            .messages
            .iter()
            .map(|m| estimate_tokens(&m.content))
            .sum();
        let mut guard = StreamUsage {
            engine: Arc::clone(self),
            record: Some(ChatRecord {
                id: uuid::Uuid::now_v7().to_string(),
                tenant: tenant.slug.clone(),
                model: route.name.clone(),
                finish_reason: "cancelled".into(),
                tokens_used: prompt_estimate,
                created_at: Utc::now(),
            }),
            period,
        };
        let upstream = match route.provider.chat_stream(req).await {
            Ok(s) => s,
            Err(e) => {
                guard.finish("error", prompt_estimate);
                let chunk = ChatChunk {
                    delta: String::new(),
                    finish_reason: Some("error".into()),
                    tokens_used: Some(0),
                    error: Some(e.to_string()),
                };
                return Ok(futures_util::stream::iter([chunk]).boxed());
            }
        };
        let stream = futures_util::stream::unfold(
            (upstream, guard, false),
            move |(mut upstream, mut guard, done)| async move {
                if done {
                    return None;
                }
                let chunk = match upstream.next().await {
                    Some(Ok(StreamEvent::Delta(d))) => {
                        guard.add(estimate_tokens(&d));
                        ChatChunk {
                            delta: d,
                            finish_reason: None,
                            tokens_used: None,
                            error: None,
                        }
                    }
                    Some(Ok(StreamEvent::Done {
                        finish_reason,
                        usage,
                    })) => {
                        let tokens = if usage == TokenUsage::default() {
                            guard.tokens()
                        } else {
                            usage.total()
                        };
                        guard.finish(&finish_reason, tokens);
                        ChatChunk {
                            delta: String::new(),
                            finish_reason: Some(finish_reason),
                            tokens_used: Some(tokens),
                            error: None,
                        }
                    }
                    Some(Err(e)) => {
                        let tokens = guard.tokens();
                        guard.finish("error", tokens);
                        ChatChunk {
                            delta: String::new(),
                            finish_reason: Some("error".into()),
                            tokens_used: Some(tokens),
                            error: Some(e.to_string()),
                        }
                    }
                    None => {
                        let tokens = guard.tokens();
                        guard.finish("stop", tokens);
                        ChatChunk {
                            delta: String::new(),
                            finish_reason: Some("stop".into()),
                            tokens_used: Some(tokens),
                            error: None,
                        }
                    }
                };
                let last = chunk.finish_reason.is_some();
                Some((chunk, (upstream, guard, last)))
            },
        );
        Ok(stream.boxed())
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

/// Records a stream's usage exactly once: at its end, or when it is dropped unfinished.
struct StreamUsage {
    engine: Arc<Engine>,
    record: Option<ChatRecord>,
    period: Period,
}

impl StreamUsage {
    fn add(&mut self, tokens: u64) {
        if let Some(r) = &mut self.record {
            r.tokens_used += tokens;
        }
    }

    fn tokens(&self) -> u64 {
        self.record.as_ref().map_or(0, |r| r.tokens_used)
    }

    fn finish(&mut self, finish_reason: &str, tokens: u64) {
        if let Some(mut r) = self.record.take() {
            r.finish_reason = finish_reason.to_string();
            r.tokens_used = tokens;
            self.spawn_record(r);
        }
    }

    fn spawn_record(&self, record: ChatRecord) {
        let engine = Arc::clone(&self.engine);
        let period = self.period;
        let task = async move {
            if let Err(e) = engine.store.record_chat(&record, &period).await {
                tracing::error!(error = %e, chat = %record.id, "recording a streamed chat's usage failed");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(task);
            }
            Err(_) => tracing::error!("no runtime to record a streamed chat's usage"),
        }
    }
}

impl Drop for StreamUsage {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            tracing::info!(chat = %r.id, "stream ended before completion; recording usage so far");
            self.spawn_record(r);
        }
    }
}
