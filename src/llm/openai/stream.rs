//! A streamed answer: the provider's server-sent events (parsed by eventsource-stream) turned
//! into [`StreamEvent`]s, ending with `Done` or an error.

use std::collections::BTreeMap;

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::stream::{Stream, StreamExt};

use super::wire::{self, Chunk, ToolCallDelta};
use super::{Fault, MAX_TOOL_CALLS, Reason};
use crate::llm::{StreamEvent, TokenUsage, ToolCall};

/// The longest line of a stream. eventsource-stream parses an unfinished line again from its
/// start with each chunk that extends it, so a line without end costs quadratic time.
const MAX_LINE: usize = 1 << 20;

/// The stream's bytes, failing once a line grows past [`MAX_LINE`].
fn bounded_lines<S, B, E>(bytes: S) -> impl Stream<Item = Result<B, Fault>>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    let mut open = 0usize;
    bytes.map(move |chunk| {
        let chunk = chunk.map_err(|e| Fault::new(Reason::MidStream, e))?;
        let b = chunk.as_ref();
        open = match b.iter().rposition(|c| matches!(c, b'\n' | b'\r')) {
            Some(end) => b.len() - end - 1,
            None => open.saturating_add(b.len()),
        };
        if open > MAX_LINE {
            return Err(Fault::new(
                Reason::BadEvent,
                format_args!("a line longer than {MAX_LINE} bytes"),
            ));
        }
        Ok(chunk)
    })
}

/// A streamed answer's tool calls, which arrive in pieces by index.
#[derive(Default)]
struct CallParts {
    calls: BTreeMap<u64, Part>,
    /// The index of the last piece, for pieces that give none.
    last: Option<u64>,
}

#[derive(Default)]
struct Part {
    id: Option<String>,
    name: String,
    arguments: String,
}

impl CallParts {
    fn add(&mut self, deltas: Vec<ToolCallDelta>) -> Result<(), Fault> {
        for d in deltas {
            let index = d.index.or(self.last).unwrap_or(0);
            if self.calls.len() >= MAX_TOOL_CALLS && !self.calls.contains_key(&index) {
                return Err(Fault::new(
                    Reason::TooManyCalls,
                    format_args!("a tool call with index {index} after {MAX_TOOL_CALLS} others"),
                ));
            }
            self.last = Some(index);
            let part = self.calls.entry(index).or_default();
            if d.id.is_some() {
                part.id = d.id;
            }
            if let Some(name) = d.function.name {
                part.name.push_str(&name);
            }
            part.arguments.push_str(&d.function.arguments.0);
        }
        Ok(())
    }

    /// The calls in the order of their indexes.
    fn finish(self) -> Vec<ToolCall> {
        self.calls
            .into_values()
            .enumerate()
            .map(|(i, p)| ToolCall {
                id: p.id.unwrap_or_else(|| format!("call_{i}")),
                name: p.name,
                arguments: p.arguments,
            })
            .collect()
    }
}

struct State<S> {
    events: S,
    calls: CallParts,
    usage: TokenUsage,
    finish: Option<String>,
    /// The last item was given: `Done` or an error.
    over: bool,
}

impl<S> State<S>
where
    S: Stream<Item = Result<eventsource_stream::Event, EventStreamError<Fault>>> + Unpin,
{
    fn end(&mut self, item: Result<StreamEvent, Fault>) -> Option<Result<StreamEvent, Fault>> {
        self.over = true;
        Some(item)
    }

    fn done(&mut self) -> Result<StreamEvent, Fault> {
        let tool_calls = std::mem::take(&mut self.calls).finish();
        Ok(StreamEvent::Done {
            finish_reason: self
                .finish
                .take()
                .unwrap_or_else(|| wire::default_finish(&tool_calls)),
            usage: self.usage,
            tool_calls,
        })
    }

    /// The next item; `None` once the last was given.
    async fn next(&mut self) -> Option<Result<StreamEvent, Fault>> {
        if self.over {
            return None;
        }
        loop {
            let event = match self.events.next().await {
                Some(Ok(event)) => event,
                Some(Err(EventStreamError::Transport(fault))) => return self.end(Err(fault)),
                Some(Err(EventStreamError::Utf8(e))) => {
                    return self.end(Err(Fault::new(Reason::BadEvent, e)));
                }
                Some(Err(EventStreamError::Parser(e))) => {
                    return self.end(Err(Fault::new(Reason::BadEvent, e)));
                }
                // A stream that ends without [DONE] after a finish reason is complete enough;
                // one that ends before any finish reason was cut off.
                None if self.finish.is_some() => {
                    let done = self.done();
                    return self.end(done);
                }
                None => {
                    return self.end(Err(Fault::new(
                        Reason::EndedEarly,
                        "the stream ended before a finish reason",
                    )));
                }
            };
            if event.data.trim() == "[DONE]" {
                let done = self.done();
                return self.end(done);
            }
            let chunk: Chunk = match serde_json::from_str(&event.data) {
                Ok(c) => c,
                // The serde error only: the event may carry the model's text.
                Err(e) => return self.end(Err(Fault::new(Reason::BadEvent, e))),
            };
            if let Some(error) = chunk.error {
                return self.end(Err(Fault::new(Reason::MidStream, error.message())));
            }
            if let Some(usage) = chunk.usage {
                self.usage = usage.into();
            }
            let Some(choice) = chunk.choices.into_iter().next() else {
                continue;
            };
            if let Err(fault) = self.calls.add(choice.delta.tool_calls) {
                return self.end(Err(fault));
            }
            if choice.finish_reason.is_some() {
                self.finish = choice.finish_reason;
            }
            if let Some(text) = choice.delta.content
                && !text.is_empty()
            {
                return Some(Ok(StreamEvent::Delta(text)));
            }
        }
    }
}

/// The provider's server-sent events as stream events; ends with `Done` or an error.
pub fn events<S, B, E>(bytes: S) -> impl Stream<Item = Result<StreamEvent, Fault>> + Send + 'static
where
    S: Stream<Item = Result<B, E>> + Send + Unpin + 'static,
    B: AsRef<[u8]> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let state = State {
        events: bounded_lines(bytes).eventsource(),
        calls: CallParts::default(),
        usage: TokenUsage::default(),
        finish: None,
        over: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        let item = st.next().await?;
        Some((item, st))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(chunks: &[&[u8]]) -> Vec<Result<StreamEvent, Fault>> {
        let chunks: Vec<_> = chunks
            .iter()
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect();
        events(futures_util::stream::iter(chunks)).collect().await
    }

    fn reason(item: &Result<StreamEvent, Fault>) -> Option<Reason> {
        item.as_ref().err().map(|f| f.reason)
    }

    #[tokio::test]
    async fn streams_assemble_text_tool_calls_and_usage() {
        let out = run(&[
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n",
            b"\ndata: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"function\":{\"name\":\"calc\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n",
        ])
        .await;
        assert_eq!(out[0].as_ref().unwrap(), &StreamEvent::Delta("Hel".into()));
        assert_eq!(out[1].as_ref().unwrap(), &StreamEvent::Delta("lo".into()));
        let Ok(StreamEvent::Done {
            finish_reason,
            usage,
            tool_calls,
        }) = &out[2]
        else {
            panic!("{out:?}")
        };
        assert_eq!(finish_reason, "tool_calls");
        assert_eq!(usage.total(), 8);
        assert_eq!(
            tool_calls,
            &[ToolCall {
                id: "c1".into(),
                name: "calc".into(),
                arguments: "{\"a\":1}".into()
            }]
        );
        assert_eq!(out.len(), 3);
    }

    #[tokio::test]
    async fn events_split_anywhere_and_crlf_lines_are_read_alike() {
        let text = "data: {\"choices\":[{\"delta\":{\"content\":\"h\u{e9}\"},\"finish_reason\":\"stop\"}]}\r\n\r\ndata: [DONE]\r\n\r\n";
        let bytes = text.as_bytes();
        for split in 1..bytes.len() {
            let out = run(&[&bytes[..split], &bytes[split..]]).await;
            assert_eq!(out.len(), 2, "split at {split}: {out:?}");
            assert_eq!(
                out[0].as_ref().unwrap(),
                &StreamEvent::Delta("h\u{e9}".into())
            );
            assert!(
                matches!(&out[1], Ok(StreamEvent::Done { finish_reason, .. }) if finish_reason == "stop")
            );
        }
    }

    #[tokio::test]
    async fn a_cut_stream_is_an_error() {
        let out = run(&[b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"]).await;
        assert_eq!(out[0].as_ref().unwrap(), &StreamEvent::Delta("x".into()));
        assert_eq!(reason(&out[1]), Some(Reason::EndedEarly));
        assert_eq!(out.len(), 2);
    }

    #[tokio::test]
    async fn a_finished_stream_without_done_is_complete() {
        let out = run(&[b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":\"length\"}]}\n\n"]).await;
        assert!(
            matches!(&out[1], Ok(StreamEvent::Done { finish_reason, usage, .. }) if finish_reason == "length" && *usage == TokenUsage::default())
        );
        assert_eq!(out.len(), 2);
    }

    #[tokio::test]
    async fn errors_mid_stream_end_it() {
        let out = run(&[
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n",
            b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"y\"}}]}\n\n",
        ])
        .await;
        assert_eq!(out.len(), 2, "{out:?}");
        let fault = out[1].as_ref().unwrap_err();
        assert_eq!(fault.reason, Reason::MidStream);
        assert_eq!(fault.detail, "overloaded");

        let out = run(&[b"data: {not json\n\n"]).await;
        assert_eq!(reason(&out[0]), Some(Reason::BadEvent));
        assert_eq!(out.len(), 1);

        let broken = futures_util::stream::iter([
            Ok(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n".to_vec()),
            Err("connection reset"),
        ]);
        let out: Vec<_> = events(broken).collect().await;
        assert_eq!(reason(&out[1]), Some(Reason::MidStream));
        assert_eq!(out.len(), 2);
    }

    #[tokio::test]
    async fn tool_calls_are_capped_and_sparse_indexes_cost_nothing() {
        let call = |index: u64| {
            format!(
                "data: {{\"choices\":[{{\"delta\":{{\"tool_calls\":[{{\"index\":{index},\"function\":{{\"name\":\"f\",\"arguments\":\"{{}}\"}}}}]}}}}]}}\n\n"
            )
        };
        let done = "data: [DONE]\n\n";
        let text = format!("{}{}{done}", call(0), call(4_000_000_000));
        let out = run(&[text.as_bytes()]).await;
        let Ok(StreamEvent::Done { tool_calls, .. }) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(tool_calls.len(), 2);
        assert_eq!(tool_calls[1].id, "call_1");

        let most: String = (0..MAX_TOOL_CALLS as u64).map(call).collect();
        let out = run(&[format!("{most}{done}").as_bytes()]).await;
        assert!(
            matches!(&out[0], Ok(StreamEvent::Done { tool_calls, .. }) if tool_calls.len() == MAX_TOOL_CALLS)
        );

        let too_many: String = (0..=MAX_TOOL_CALLS as u64)
            .map(|i| call(i * 1000))
            .collect();
        let out = run(&[format!("{too_many}{done}").as_bytes()]).await;
        assert_eq!(reason(&out[0]), Some(Reason::TooManyCalls));
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn a_line_without_end_is_refused_once_too_long() {
        let piece = vec![b'x'; 64 * 1024];
        let mut chunks: Vec<&[u8]> = vec![b"data: "];
        chunks.extend(std::iter::repeat_n(
            piece.as_slice(),
            MAX_LINE / piece.len() + 1,
        ));
        let out = run(&chunks).await;
        assert_eq!(reason(&out[0]), Some(Reason::BadEvent));
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn invalid_usage_in_a_stream_is_a_bad_event() {
        let out = run(&[b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":-3}}\n\n"]).await;
        assert_eq!(reason(&out[0]), Some(Reason::BadEvent));
        let out = run(&[b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1e10}}\n\n"]).await;
        assert_eq!(reason(&out[0]), Some(Reason::BadEvent));
    }
}
