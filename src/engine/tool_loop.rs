//! The one conversation loop of runs, chats and streams: call the model, run the tools it asks
//! for, call it again, at most the agent's `max_tool_iterations` times, within a deadline; every
//! model call's tokens are counted, also when the conversation fails, times out or is cut off.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ChatChunk;
use super::clock::Clock;
use super::telemetry::ToolCalls;
use crate::llm::{ChatRequest, Message, ModelRoute, ProviderError, Role, StreamEvent, ToolCall};
use crate::store::{Step, StepKind};

/// Longest tool arguments or result kept in a step.
const STEP_TEXT_BYTES: usize = 16 * 1024;

/// What a conversation reports as it goes, for a caller that may stop it early (a cancelled
/// run) or follows it (a run's steps): each step as it ends, and the tokens spent so far —
/// those reported by finished model calls, and the estimated prompt of a call in progress.
pub(super) struct Progress {
    clock: Arc<dyn Clock>,
    reported: AtomicU64,
    in_call: AtomicU64,
    steps: Option<mpsc::UnboundedSender<Step>>,
}

impl Progress {
    /// Progress told to nobody (chats).
    pub(super) fn quiet(clock: Arc<dyn Clock>) -> Progress {
        Progress {
            clock,
            reported: AtomicU64::new(0),
            in_call: AtomicU64::new(0),
            steps: None,
        }
    }

    /// Progress whose steps are sent to `steps` as they end (runs).
    pub(super) fn with_steps(
        clock: Arc<dyn Clock>,
        steps: mpsc::UnboundedSender<Step>,
    ) -> Progress {
        Progress {
            steps: Some(steps),
            ..Progress::quiet(clock)
        }
    }

    /// Tokens spent so far, a call in progress counted by its prompt.
    pub(super) fn tokens(&self) -> u64 {
        self.reported
            .load(Ordering::Relaxed)
            .saturating_add(self.in_call.load(Ordering::Relaxed))
    }

    fn step(&self, step: Step) {
        if let Some(tx) = &self.steps {
            let _ = tx.send(step);
        }
    }
}

/// `text` cut to [`STEP_TEXT_BYTES`].
fn bounded(text: &str) -> String {
    if text.len() <= STEP_TEXT_BYTES {
        return text.to_string();
    }
    let mut cut = STEP_TEXT_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}

/// How the model's answers are taken.
pub(super) enum Delivery<'a> {
    /// Each answer whole, the last by `deadline`.
    Complete { deadline: Instant },
    /// Each answer piece by piece, each piece forwarded to `tx` as it comes; `silence` is the
    /// longest wait for the next piece.
    Streamed {
        tx: &'a mpsc::Sender<ChatChunk>,
        silence: Duration,
    },
}

/// A conversation's last answer and the messages that led to it.
pub(super) struct Turn {
    pub content: String,
    pub finish_reason: String,
    pub messages: Vec<Message>,
}

/// How a conversation ended.
pub(super) enum Ended {
    Answered(Turn),
    Failed(ProviderError),
    /// The deadline of a complete conversation passed.
    TimedOut,
    /// The client of a stream went away.
    Cancelled,
}

/// How a conversation ended, and the tokens of every model call it made.
pub(super) struct Conversation {
    pub ended: Ended,
    pub tokens: u64,
}

/// One model call's answer.
struct Answer {
    content: String,
    tool_calls: Vec<ToolCall>,
    finish_reason: String,
}

/// Talks with the model until it answers without asking for tools (or may no longer ask).
pub(super) async fn converse(
    route: &ModelRoute,
    mut req: ChatRequest,
    iterations: u32,
    delivery: Delivery<'_>,
    tools: &ToolCalls,
    progress: &Progress,
) -> Conversation {
    let mut tokens = 0u64;
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
        progress
            .in_call
            .store(prompt_estimate(&call), Ordering::Relaxed);
        let started_at = progress.clock.now();
        let clock = Instant::now();
        let (answer, spent) = match &delivery {
            Delivery::Complete { deadline } => complete(route, call, *deadline).await,
            Delivery::Streamed { tx, silence } => streamed(route, call, tx, *silence).await,
        };
        tokens = tokens.saturating_add(spent);
        progress.reported.fetch_add(spent, Ordering::Relaxed);
        progress.in_call.store(0, Ordering::Relaxed);
        progress.step(Step {
            kind: StepKind::Model,
            name: route.name.clone(),
            arguments: None,
            result: None,
            tokens: spent,
            started_at,
            duration_ms: clock.elapsed().as_millis() as u64,
            error: match &answer {
                Ok(_) => None,
                Err(Ended::Failed(e)) => Some(e.to_string()),
                Err(Ended::TimedOut) => Some("timed out".into()),
                Err(Ended::Cancelled) => Some("cancelled".into()),
                Err(Ended::Answered(_)) => None,
            },
        });
        let answer = match answer {
            Ok(a) => a,
            Err(ended) => return Conversation { ended, tokens },
        };
        if !offer_tools || answer.tool_calls.is_empty() {
            let turn = Turn {
                content: answer.content,
                finish_reason: answer.finish_reason,
                messages: req.messages,
            };
            return Conversation {
                ended: Ended::Answered(turn),
                tokens,
            };
        }
        used += 1;
        run_tools(
            &mut req.messages,
            answer.content,
            answer.tool_calls,
            tools,
            progress,
        )
        .await;
    }
}

/// Estimated tokens of a request's prompt.
fn prompt_estimate(call: &ChatRequest) -> u64 {
    call.messages
        .iter()
        .map(|m| estimate_tokens(&m.content))
        .sum()
}

/// One complete answer, and its tokens.
async fn complete(
    route: &ModelRoute,
    call: ChatRequest,
    deadline: Instant,
) -> (Result<Answer, Ended>, u64) {
    match tokio::time::timeout_at(deadline, route.provider.chat(call)).await {
        Ok(Ok(a)) => {
            let tokens = a.usage.total();
            let answer = Answer {
                content: a.content,
                tool_calls: a.tool_calls,
                finish_reason: a.finish_reason,
            };
            (Ok(answer), tokens)
        }
        Ok(Err(error)) => (Err(Ended::Failed(error)), 0),
        Err(_) => (Err(Ended::TimedOut), 0),
    }
}

/// Estimated tokens of a text when the provider has not said (a stream cut short).
fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// One streamed answer, its pieces forwarded to `tx`, and its tokens: as the provider reports
/// them, else estimated from the prompt and what was produced.
async fn streamed(
    route: &ModelRoute,
    call: ChatRequest,
    tx: &mpsc::Sender<ChatChunk>,
    silence: Duration,
) -> (Result<Answer, Ended>, u64) {
    let prompt = prompt_estimate(&call);
    let quiet = || {
        Ended::Failed(ProviderError::Transient(format!(
            "the model sent nothing for {} ms",
            silence.as_millis()
        )))
    };
    let opened = tokio::select! {
        s = tokio::time::timeout(silence, route.provider.chat_stream(call)) => s,
        () = tx.closed() => return (Err(Ended::Cancelled), prompt),
    };
    let mut upstream = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => return (Err(Ended::Failed(error)), 0),
        Err(_) => return (Err(quiet()), 0),
    };
    let mut produced = String::new();
    let estimate = |produced: &str| prompt.saturating_add(estimate_tokens(produced));
    loop {
        let event = tokio::select! {
            e = tokio::time::timeout(silence, upstream.next()) => e,
            // The client went away: dropping `upstream` cancels the provider's request.
            () = tx.closed() => return (Err(Ended::Cancelled), estimate(&produced)),
        };
        let Ok(event) = event else {
            return (Err(quiet()), estimate(&produced));
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
                    return (Err(Ended::Cancelled), estimate(&produced));
                }
            }
            Some(Ok(StreamEvent::Done {
                finish_reason,
                usage,
                tool_calls,
            })) => {
                let tokens = if usage == Default::default() {
                    estimate(&produced)
                } else {
                    usage.total()
                };
                let answer = Answer {
                    content: produced,
                    tool_calls,
                    finish_reason,
                };
                return (Ok(answer), tokens);
            }
            Some(Err(error)) => return (Err(Ended::Failed(error)), estimate(&produced)),
            // A stream that ends without saying why: complete, with estimated tokens.
            None => {
                let tokens = estimate(&produced);
                let answer = Answer {
                    content: produced,
                    tool_calls: Vec::new(),
                    finish_reason: "stop".into(),
                };
                return (Ok(answer), tokens);
            }
        }
    }
}

/// Appends the assistant's tool calls and each tool's result to the conversation.
async fn run_tools(
    messages: &mut Vec<Message>,
    content: String,
    calls: Vec<ToolCall>,
    counts: &ToolCalls,
    progress: &Progress,
) {
    let started_at = progress.clock.now();
    let clock = Instant::now();
    let results = futures_util::future::join_all(calls.iter().map(|c| async {
        let r = crate::tools::run(&c.name, &c.arguments).await;
        (r, clock.elapsed())
    }))
    .await;
    messages.push(Message {
        role: Role::Assistant,
        content,
        tool_calls: calls.clone(),
        tool_call_id: None,
    });
    for (call, (result, took)) in calls.into_iter().zip(results) {
        tracing::debug!(tool = %call.name, ok = result.is_ok(), "tool call");
        counts.record(&call.name, result.is_ok());
        progress.step(Step {
            kind: StepKind::Tool,
            name: bounded(&call.name),
            arguments: Some(bounded(&call.arguments)),
            result: result.as_ref().ok().map(|r| bounded(r)),
            tokens: 0,
            started_at,
            duration_ms: took.as_millis() as u64,
            error: result.as_ref().err().map(|e| bounded(e)),
        });
        messages.push(Message {
            role: Role::Tool,
            content: result.unwrap_or_else(|e| format!("error: {e}")),
            tool_calls: Vec::new(),
            tool_call_id: Some(call.id),
        });
    }
}
