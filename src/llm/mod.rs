//! Model providers: the `Provider` trait the engine calls, and its implementations.
//!
//! The only module that knows a provider's protocol. The engine speaks in [`ChatRequest`] and
//! [`ChatResponse`]; each provider translates.

pub mod cassette;
mod offline;
pub mod openai;
#[cfg(test)]
mod properties;
pub mod schema_instance;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde_json::Value;

use crate::config::{ProviderKind, Settings};

pub use offline::OfflineProvider;
pub use openai::OpenAiProvider;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Tool calls the assistant asked for (assistant messages).
    pub tool_calls: Vec<ToolCall>,
    /// The call this message answers (tool messages).
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

/// A call the model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments, as the JSON text the model produced.
    pub arguments: String,
}

/// What the engine asks a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The provider's own model id.
    pub model: String,
    pub messages: Vec<Message>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub tools: Vec<ToolSpec>,
    /// When set, the answer must be a JSON object satisfying this schema.
    pub response_schema: Option<Value>,
}

/// Token usage as the provider reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt: u64,
    pub completion: u64,
}

impl TokenUsage {
    /// Prompt and completion; saturates rather than overflows.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// A provider's complete answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    /// `stop`, `length`, `tool_calls`, ...
    pub finish_reason: String,
    pub usage: TokenUsage,
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Delta(String),
    /// The end: why it stopped, what it used, and the tool calls it asked for (if any).
    Done {
        finish_reason: String,
        usage: TokenUsage,
        tool_calls: Vec<ToolCall>,
    },
}

/// Why a provider call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    /// Worth retrying: rate limited or a server error upstream.
    #[error("provider unavailable: {0}")]
    Transient(String),
    /// Not worth retrying: bad request, bad key, unknown model.
    #[error("provider error: {0}")]
    Fatal(String),
}

/// A model provider.
pub trait Provider: Send + Sync {
    /// One complete answer.
    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatResponse, ProviderError>>;
    /// The answer as a stream of deltas ending with [`StreamEvent::Done`].
    fn chat_stream(
        &self,
        req: ChatRequest,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<StreamEvent, ProviderError>>, ProviderError>>;
}

/// A logical model resolved to its provider.
#[derive(Clone)]
pub struct ModelRoute {
    pub name: String,
    pub provider: Arc<dyn Provider>,
    /// The provider's model id.
    pub id: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
}

/// Every logical model of the settings, with its provider.
#[derive(Clone, Default)]
pub struct Models {
    routes: BTreeMap<String, ModelRoute>,
}

impl Models {
    /// Builds the providers the settings declare.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Models> {
        Models::with_providers(settings, |name, p| match p.kind {
            ProviderKind::Offline => Arc::new(OfflineProvider),
            ProviderKind::Openai => Arc::new(OpenAiProvider::new(
                name,
                p.base_url.as_deref().unwrap_or_default(),
                p.api_key_env.as_deref(),
            )),
        })
    }

    /// The models of the settings, each provider of the settings made by `make` from its name
    /// and settings (a replay answers for all of them, and builds none).
    pub fn with_providers(
        settings: &Settings,
        make: impl Fn(&str, &crate::config::ProviderSettings) -> Arc<dyn Provider>,
    ) -> anyhow::Result<Models> {
        let mut providers: BTreeMap<&str, Arc<dyn Provider>> = BTreeMap::new();
        for (name, p) in &settings.providers {
            providers.insert(name, make(name, p));
        }
        let mut routes = BTreeMap::new();
        for (name, m) in &settings.models {
            let provider = providers
                .get(m.provider.as_str())
                .ok_or_else(|| {
                    anyhow::anyhow!("model `{name}`: unknown provider `{}`", m.provider)
                })?
                .clone();
            routes.insert(
                name.clone(),
                ModelRoute {
                    name: name.clone(),
                    provider,
                    id: m.id.clone(),
                    temperature: m.temperature,
                    max_tokens: m.max_tokens,
                },
            );
        }
        Ok(Models { routes })
    }

    /// Only the offline provider, for the given model names (tests, tools).
    pub fn offline(names: &[&str]) -> Models {
        let provider: Arc<dyn Provider> = Arc::new(OfflineProvider);
        Models {
            routes: names
                .iter()
                .map(|n| {
                    let route = ModelRoute {
                        name: n.to_string(),
                        provider: provider.clone(),
                        id: n.to_string(),
                        temperature: None,
                        max_tokens: None,
                    };
                    (n.to_string(), route)
                })
                .collect(),
        }
    }

    /// Routes `name` to `provider` (replacing any route of that name).
    pub fn insert(&mut self, name: &str, provider: Arc<dyn Provider>) {
        let route = ModelRoute {
            name: name.to_string(),
            provider,
            id: name.to_string(),
            temperature: None,
            max_tokens: None,
        };
        self.routes.insert(name.to_string(), route);
    }

    /// The same routes, each provider replaced by what `f` makes of it (recording or replaying
    /// its exchanges); model ids and defaults stay.
    pub fn map_providers(self, f: impl Fn(Arc<dyn Provider>) -> Arc<dyn Provider>) -> Models {
        let routes = self
            .routes
            .into_iter()
            .map(|(name, route)| {
                let provider = f(route.provider.clone());
                (name, ModelRoute { provider, ..route })
            })
            .collect();
        Models { routes }
    }

    pub fn get(&self, name: &str) -> Option<&ModelRoute> {
        self.routes.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::TokenUsage;

    #[test]
    fn a_total_saturates() {
        let usage = TokenUsage {
            prompt: u64::MAX,
            completion: 1,
        };
        assert_eq!(usage.total(), u64::MAX);
    }
}
