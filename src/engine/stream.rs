//! Streamed chats: a task talks with the model and forwards each piece; it stops (and cancels
//! the provider's request) as soon as the client goes away, and records the tokens used in every
//! case: reported by the provider, or estimated from what was produced when cut short.

use std::sync::Arc;

use futures_util::stream::{BoxStream, StreamExt};
use tracing::Instrument;

use super::error::Result;
use super::tool_loop::{Delivery, Ended, Progress, converse};
use super::{ChatChunk, ChatInput, Engine};
use crate::store::Tenant;

impl Engine {
    /// A streamed chat: pieces of the answer, the last with a `finish_reason` and
    /// `tokens_used` (`finish_reason: "error"` and an `error` when the model failed).
    #[tracing::instrument(skip(self, tenant, input), fields(tenant = %tenant.slug))]
    pub async fn chat_stream(
        self: &Arc<Self>,
        tenant: &Tenant,
        input: ChatInput,
    ) -> Result<BoxStream<'static, ChatChunk>> {
        let chat = self.prepare_chat(tenant, input).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<ChatChunk>(64);
        let engine = Arc::clone(self);
        let tenant = tenant.clone();
        tokio::spawn(
            async move {
                let delivery = Delivery::Streamed {
                    tx: &tx,
                    silence: chat.limit(),
                };
                let talk = converse(
                    &chat.route,
                    chat.request.clone(),
                    chat.iterations(),
                    delivery,
                    &engine.telemetry.tool_calls,
                    &Progress::quiet(Arc::clone(&engine.clock)),
                )
                .await;
                let last = |finish: &str, error: Option<String>| ChatChunk {
                    delta: String::new(),
                    finish_reason: Some(finish.to_string()),
                    tokens_used: Some(talk.tokens),
                    error,
                };
                let finish_reason = match talk.ended {
                    Ended::Answered(turn) => {
                        let _ = tx.send(last(&turn.finish_reason, None)).await;
                        turn.finish_reason
                    }
                    Ended::Failed(e) => {
                        let _ = tx.send(last("error", Some(e.to_string()))).await;
                        "error".to_string()
                    }
                    Ended::TimedOut => "error".to_string(),
                    Ended::Cancelled => "cancelled".to_string(),
                };
                if let Err(e) = engine
                    .record_chat(&tenant, &chat, &finish_reason, talk.tokens)
                    .await
                {
                    tracing::error!(error = %e, tenant = %tenant.slug, "recording a streamed chat's usage failed");
                }
            }
            .in_current_span(),
        );
        Ok(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
        )
        .boxed())
    }
}
