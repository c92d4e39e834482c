//! `/v1/chat` and `/v1/chat/stream`: a conversation with a model, or with the agent of a type.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::auth::ApiKeyAuth;
use super::error::responses;
use super::wire::document_example;
use super::wire::{JsonBody, Sse};
use super::{ApiTags, App, idempotency};
use crate::engine::{ChatChunk, ChatInput, Message, Role};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Deserialize, serde::Serialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model finished its answer (also any reason a provider gives that is not below).
    Stop,
    /// The answer reached its token limit.
    Length,
    /// The model asked for tools.
    ToolCalls,
    /// The provider filtered the answer.
    ContentFilter,
    /// The provider failed mid-stream (streams only; `error` says why).
    Error,
}

impl FinishReason {
    /// The reason a provider (or the engine) gave, as one of the API's.
    pub fn of(reason: &str) -> FinishReason {
        match reason {
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            "error" => FinishReason::Error,
            _ => FinishReason::Stop,
        }
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, Object, serde::Deserialize, serde::Serialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    /// The message's text.
    #[oai(validator(max_length = 1000000))]
    pub content: String,
}

/// A conversation to continue. Give a `model`, an `agent_type`, or both: the tenant's active
/// agent of that type supplies the system prompt (and the model, unless one is given).
#[derive(Debug, Clone, Object, serde::Deserialize, serde::Serialize)]
#[oai(example)]
pub struct ChatRequest {
    /// The conversation so far, oldest first; at least one message.
    #[oai(validator(min_items = 1, max_items = 1000))]
    pub messages: Vec<ChatMessage>,
    /// Logical model name, e.g. `llama-3.3-70b`.
    #[oai(nullable)]
    pub model: Option<String>,
    /// Use the tenant's active agent of this type, e.g. `analyst`.
    #[oai(nullable)]
    pub agent_type: Option<String>,
}

/// The model's complete answer.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ChatResponse {
    /// Id of this message (UUIDv7).
    pub id: String,
    /// The answer's text.
    pub content: String,
    /// The logical model that answered.
    pub model: String,
    /// Prompt and completion tokens, as the provider reported them.
    pub tokens_used: u64,
    /// Why the answer ended.
    pub finish_reason: FinishReason,
}

/// One server-sent event of a streamed answer: `data: {"delta": "...", "finish_reason": null}`;
/// the last one has `delta: ""`, a `finish_reason` and `tokens_used`.
#[derive(Debug, Clone, Object)]
pub struct ChatStreamChunk {
    /// The next piece of the answer's text.
    pub delta: String,
    /// Null until the last event; then why the answer ended (`error` when the provider failed mid-stream).
    #[oai(nullable)]
    pub finish_reason: Option<FinishReason>,
    /// Tokens used by the whole answer; only on the last event.
    #[oai(skip_serializing_if_is_none)]
    pub tokens_used: Option<u64>,
    /// What went wrong; only on a last event with `finish_reason: "error"`.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
}

impl From<ChatChunk> for ChatStreamChunk {
    fn from(c: ChatChunk) -> Self {
        ChatStreamChunk {
            delta: c.delta,
            finish_reason: c.finish_reason.as_deref().map(FinishReason::of),
            tokens_used: c.tokens_used,
            error: c.error,
        }
    }
}

responses! {
    ChatEndpointResponse {
        ok {
        /// The answer.
        Ok(
            Json<ChatResponse>,
            /// `true` when this answers an earlier request with the same `Idempotency-Key`.
            #[oai(header = "Idempotent-Replayed")] Option<String>
        ) = 200,
        }
        errors {
            BadRequest = 400: "The body is not JSON of the right shape (e.g. an unknown role).",
            Unauthorized = 401: "Missing or invalid API key.",
            Conflict = 409: "A request with this `Idempotency-Key` is still being answered (`idempotency_key_in_use`).",
            TooLarge = 413: "The body is larger than the configured limit.",
            UnsupportedMediaType = 415: "The body is not sent as `application/json`.",
            Invalid = 422: "Unknown model or agent_type, or neither given (the message names the field), or the `Idempotency-Key` was used for another request (`idempotency_key_reused`).",
            Upstream = 502: "The model provider failed (`upstream_error`).",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { QuotaExceeded: "The tenant's token quota for this period is used up (`quota_exceeded`), or the API key sent more requests than its per-minute limit (`rate_limited`, with `Retry-After`)." }
    }
}

responses! {
    ChatStreamResponse {
        ok {
        /// A stream of server-sent events, each `data: <ChatStreamChunk>`.
        Ok(Sse<ChatStreamChunk>) = 200,
        }
        errors {
            BadRequest = 400: "The body is not JSON of the right shape (e.g. an unknown role).",
            Unauthorized = 401: "Missing or invalid API key.",
            TooLarge = 413: "The body is larger than the configured limit.",
            UnsupportedMediaType = 415: "The body is not sent as `application/json`.",
            Invalid = 422: "Unknown model or agent_type, or neither given; the message names the field.",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { QuotaExceeded: "The tenant's token quota for this period is used up (`quota_exceeded`), or the API key sent more requests than its per-minute limit (`rate_limited`, with `Retry-After`)." }
    }
}

fn input(body: ChatRequest) -> ChatInput {
    ChatInput {
        messages: body
            .messages
            .into_iter()
            .map(|m| {
                let role = match m.role {
                    ChatRole::System => Role::System,
                    ChatRole::User => Role::User,
                    ChatRole::Assistant => Role::Assistant,
                };
                Message::new(role, m.content)
            })
            .collect(),
        model: body.model,
        agent_type: body.agent_type,
    }
}

pub struct ChatApi;

#[OpenApi(tag = "ApiTags::Chat")]
impl ChatApi {
    /// Send a chat message
    ///
    /// Sends the conversation to a model (or the agent of a type) and answers with the complete response.
    #[oai(path = "/chat", method = "post", operation_id = "chat")]
    async fn chat(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        /// Any unique string (up to 255 characters), e.g. a UUID: a repeat of this request with
        /// the same key, within 24 h, is answered the first answer without calling the model.
        #[oai(
            name = "Idempotency-Key",
            validator(max_length = 255, pattern = "^[ -~]*$")
        )]
        _idempotency_key: Header<Option<String>>,
        body: JsonBody<ChatRequest>,
        req: &poem::Request,
    ) -> ChatEndpointResponse {
        // The key is read from the raw header: a value that is not text is refused, not missed.
        let key = match idempotency(req.headers(), "POST", "/v1/chat", &body.0) {
            Ok(k) => k,
            Err(e) => return e.into(),
        };
        match app.engine.chat(&auth.0.tenant, input(body.0), key).await {
            Ok((out, replayed)) => {
                if !replayed {
                    app.metrics.record_tokens(out.tokens_used);
                }
                ChatEndpointResponse::Ok(
                    Json(ChatResponse {
                        id: out.id,
                        content: out.content,
                        model: out.model,
                        tokens_used: out.tokens_used,
                        finish_reason: FinishReason::of(&out.finish_reason),
                    }),
                    replayed.then(|| "true".to_string()),
                )
            }
            Err(e) => e.into(),
        }
    }

    /// Stream a chat response
    ///
    /// Same request as `/v1/chat`; the answer arrives as server-sent events, one `data:` line
    /// per piece of text, the last with `finish_reason` and `tokens_used`.
    #[oai(path = "/chat/stream", method = "post", operation_id = "chatStream")]
    async fn stream(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        body: JsonBody<ChatRequest>,
    ) -> ChatStreamResponse {
        let engine = Arc::clone(&app.engine);
        match engine.chat_stream(&auth.0.tenant, input(body.0)).await {
            Ok(stream) => {
                use futures_util::StreamExt;
                let metrics = Arc::clone(&app.metrics);
                let events = stream
                    .map(move |c| {
                        if let Some(t) = c.tokens_used {
                            metrics.record_tokens(t);
                        }
                        ChatStreamChunk::from(c)
                    })
                    .boxed();
                ChatStreamResponse::Ok(Sse(events))
            }
            Err(e) => e.into(),
        }
    }
}

document_example!(ChatRequest, "chat.json", "request");

document_example!(ChatResponse, "chat.json", "response");
