//! The built-in offline provider: deterministic, no network, and not a language model.
//!
//! It lets a fresh checkout serve and test with no key. It answers chat with a fixed sentence
//! that quotes the last user message, answers structured requests with a value built from the
//! requested schema, never calls tools, and counts tokens as whitespace-separated words.

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{
    ChatRequest, ChatResponse, Provider, ProviderError, Role, StreamEvent, TokenUsage,
    schema_instance,
};

pub struct OfflineProvider;

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// A stable seed from the conversation, so equal requests get equal answers.
fn seed(req: &ChatRequest) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for m in &req.messages {
        for b in m.content.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl OfflineProvider {
    fn answer(req: &ChatRequest) -> ChatResponse {
        let prompt: u64 = req.messages.iter().map(|m| words(&m.content) + 1).sum();
        let content = match &req.response_schema {
            Some(schema) => schema_instance::instance(schema, seed(req)).to_string(),
            None => {
                let last = req
                    .messages
                    .iter()
                    .rev()
                    .find(|m| m.role == Role::User)
                    .map_or("", |m| m.content.as_str());
                let quoted: String = last.chars().take(80).collect();
                let ellipsis = if last.chars().count() > 80 { "..." } else { "" };
                format!(
                    "This answer comes from the ares offline provider, which is not a language model. \
                     Configure a real provider in ares.yaml for real answers. You said: \"{quoted}{ellipsis}\""
                )
            }
        };
        let mut completion = words(&content).max(1);
        let mut finish_reason = "stop".to_string();
        let content = match req.max_tokens {
            Some(max) if completion > u64::from(max) && req.response_schema.is_none() => {
                completion = u64::from(max);
                finish_reason = "length".into();
                content
                    .split_whitespace()
                    .take(max as usize)
                    .collect::<Vec<_>>()
                    .join(" ")
            }
            _ => content,
        };
        ChatResponse {
            content,
            tool_calls: Vec::new(),
            finish_reason,
            usage: TokenUsage { prompt, completion },
        }
    }
}

impl Provider for OfflineProvider {
    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatResponse, ProviderError>> {
        Box::pin(async move { Ok(Self::answer(&req)) })
    }

    fn chat_stream(
        &self,
        req: ChatRequest,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<StreamEvent, ProviderError>>, ProviderError>>
    {
        Box::pin(async move {
            let answer = Self::answer(&req);
            let mut events: Vec<Result<StreamEvent, ProviderError>> = Vec::new();
            for (i, word) in answer.content.split(' ').enumerate() {
                let delta = if i == 0 {
                    word.to_string()
                } else {
                    format!(" {word}")
                };
                events.push(Ok(StreamEvent::Delta(delta)));
            }
            events.push(Ok(StreamEvent::Done {
                finish_reason: answer.finish_reason,
                usage: answer.usage,
                tool_calls: Vec::new(),
            }));
            Ok(stream::iter(events).boxed())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Message;

    fn req(text: &str) -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![
                Message::new(Role::System, "be brief"),
                Message::new(Role::User, text),
            ],
            temperature: None,
            max_tokens: None,
            tools: vec![],
            response_schema: None,
        }
    }

    #[tokio::test]
    async fn deterministic_and_counts_tokens() {
        let a = OfflineProvider.chat(req("hello there")).await.unwrap();
        let b = OfflineProvider.chat(req("hello there")).await.unwrap();
        assert_eq!(a, b);
        assert!(a.content.contains("not a language model"));
        assert!(a.content.contains("hello there"));
        assert_eq!(a.usage.prompt, 2 + 1 + 2 + 1);
        assert_eq!(
            a.usage.completion,
            a.content.split_whitespace().count() as u64
        );
    }

    #[tokio::test]
    async fn stream_concatenates_to_the_answer() {
        let whole = OfflineProvider.chat(req("stream me")).await.unwrap();
        let mut s = OfflineProvider.chat_stream(req("stream me")).await.unwrap();
        let mut text = String::new();
        let mut done = None;
        while let Some(e) = s.next().await {
            match e.unwrap() {
                StreamEvent::Delta(d) => text.push_str(&d),
                StreamEvent::Done {
                    finish_reason,
                    usage,
                    ..
                } => done = Some((finish_reason, usage)),
            }
        }
        assert_eq!(text, whole.content);
        assert_eq!(done, Some(("stop".to_string(), whole.usage)));
    }
}
