//! Chats: a conversation with a model or with the agent of a type, answered whole and recorded
//! in usage (its tokens also when the model failed or the client went away).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::detach::{Detached, panicked};
use super::error::{EngineError, Result, invalid};
use super::runs::IdempotencyKey;
use super::tool_loop::{Delivery, Ended, Progress, converse};
use super::{ChatInput, ChatOutput, Engine};
use crate::agents::{Agent, AgentStatus};
use crate::llm::{ChatRequest, Message, ModelRoute, ProviderError, Role};
use crate::store::{ChatRecord, Period, StoreError, Tenant};

/// How long a chat without an agent may wait for the model (an agent's chat uses its
/// `timeout_ms`); for a stream, the longest silence between two pieces.
pub const CHAT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a chat talks to: the model route, the agent of its `agent_type` (if any), and the
/// request for the model.
pub(super) struct Prepared {
    pub route: ModelRoute,
    pub agent: Option<Arc<Agent>>,
    pub request: ChatRequest,
    pub period: Period,
}

impl Prepared {
    /// Model calls that may request tools.
    pub(super) fn iterations(&self) -> u32 {
        self.agent
            .as_ref()
            .map_or(0, |a| a.spec.max_tool_iterations)
    }

    /// The time limit of the chat: its agent's `timeout_ms`, else [`CHAT_TIMEOUT`].
    pub(super) fn limit(&self) -> Duration {
        self.agent
            .as_ref()
            .map_or(CHAT_TIMEOUT, |a| Duration::from_millis(a.spec.timeout_ms))
    }
}

impl Engine {
    /// Resolves a chat's model and agent, and refuses it when the period's tokens are used up.
    pub(super) async fn prepare_chat(&self, tenant: &Tenant, input: ChatInput) -> Result<Prepared> {
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
        let period = self.period();
        self.check_tokens(tenant, &period).await?;
        let request = chat_request(&route, agent.as_deref(), input.messages);
        Ok(Prepared {
            route,
            agent,
            request,
            period,
        })
    }

    /// Refuses a chat once the period's settled tokens reach the quota: from the figure read
    /// with the tenant at authentication, else from the store.
    async fn check_tokens(&self, tenant: &Tenant, period: &Period) -> Result<()> {
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

    /// A complete chat answer, recorded in usage. A provider failure is
    /// [`EngineError::Upstream`]; the tokens it spent are still recorded. The conversation
    /// finishes even if its caller goes away (it moves to a task of its own then,
    /// [`Detached`]), so a client that leaves does not keep its tokens from being recorded.
    ///
    /// With an idempotency key, a repeat of the request answers the first answer (`true`:
    /// replayed) without running again.
    #[tracing::instrument(skip(self, tenant, input, key), fields(tenant = %tenant.slug))]
    pub async fn chat(
        self: &Arc<Self>,
        tenant: &Tenant,
        input: ChatInput,
        key: Option<IdempotencyKey>,
    ) -> Result<(ChatOutput, bool)> {
        let chat = self.prepare_chat(tenant, input).await?;
        let (engine, owner) = (Arc::clone(self), tenant.clone());
        let answer = async move {
            Detached::new(async move { engine.complete_chat(&owner, chat).await }.in_current_span())
                .await
                .map_err(|panic| panicked("a chat", &panic))?
        };
        match key {
            Some(key) => self.chat_once(tenant, &key, answer).await,
            None => Ok((answer.await?, false)),
        }
    }

    async fn complete_chat(&self, tenant: &Tenant, chat: Prepared) -> Result<ChatOutput> {
        let limit = chat.limit();
        let talk = converse(
            &chat.route,
            chat.request.clone(),
            chat.iterations(),
            Delivery::Complete {
                deadline: Instant::now() + limit,
            },
            &self.telemetry.tool_calls,
            &Progress::quiet(Arc::clone(&self.clock)),
        )
        .await;
        let turn = match talk.ended {
            Ended::Answered(t) => t,
            failed => {
                let error = match failed {
                    Ended::Failed(e) => e,
                    _ => ProviderError::Transient(format!(
                        "the model did not answer within {} ms",
                        limit.as_millis()
                    )),
                };
                // Tokens spent before the failure are still the tenant's.
                if talk.tokens > 0 {
                    self.record_chat(tenant, &chat, "error", talk.tokens)
                        .await?;
                }
                return Err(EngineError::Upstream(error));
            }
        };
        let out = ChatOutput {
            id: uuid::Uuid::now_v7().to_string(),
            content: turn.content,
            model: chat.route.name.clone(),
            tokens_used: talk.tokens,
            finish_reason: turn.finish_reason,
        };
        let record = ChatRecord {
            id: out.id.clone(),
            tenant: tenant.slug.clone(),
            model: out.model.clone(),
            finish_reason: out.finish_reason.clone(),
            tokens_used: out.tokens_used,
            created_at: self.clock.now(),
        };
        self.save_chat(record, chat.period).await?;
        Ok(out)
    }

    /// Records the usage of a chat that has no answer to return (failed, or streamed).
    pub(super) async fn record_chat(
        &self,
        tenant: &Tenant,
        chat: &Prepared,
        finish_reason: &str,
        tokens: u64,
    ) -> Result<(), StoreError> {
        let record = ChatRecord {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: tenant.slug.clone(),
            model: chat.route.name.clone(),
            finish_reason: finish_reason.to_string(),
            tokens_used: tokens,
            created_at: self.clock.now(),
        };
        self.save_chat(record, chat.period).await
    }

    /// Records a chat's usage; while the database is away, in the background (the chat
    /// happened and its tokens are the tenant's).
    async fn save_chat(&self, record: ChatRecord, period: Period) -> Result<(), StoreError> {
        let spent = record.tokens_used;
        self.keyring
            .spent(&record.tenant, period.start.date_naive(), spent);
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
}

/// The model request of a chat: the agent's system prompt (if any) before the conversation.
fn chat_request(route: &ModelRoute, agent: Option<&Agent>, messages: Vec<Message>) -> ChatRequest {
    let mut all = Vec::with_capacity(messages.len() + 1);
    if let Some(a) = agent {
        all.push(Message::new(Role::System, a.spec.system_prompt.clone()));
    }
    all.extend(messages);
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
