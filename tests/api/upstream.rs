//! A scripted OpenAI-compatible upstream on 127.0.0.1: each request gets the next scripted
//! reply (an answer, an error status, a stream, or silence), and every request body is kept.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::web::Data;
use poem::{Body, EndpointExt, Response, Route, handler, post};
use serde_json::{Value, json};

/// What the upstream answers one request with.
#[derive(Clone)]
pub enum Reply {
    /// 200 with this JSON body.
    Json(Value),
    /// 200 with this body, whatever it is.
    Raw(&'static str),
    /// An error status with a JSON body, and a `Retry-After` as sent.
    Status(u16, Value, Option<&'static str>),
    /// 200 `text/event-stream`: each chunk after its pause. The stream ends after the last one.
    Stream(Vec<(Duration, String)>),
    /// Never finishes its answer (a timeout).
    Hang,
    /// This reply after a pause.
    Later(Duration, Box<Reply>),
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Value>>,
    /// Set when a stream's body, or a hanging answer, was dropped before it ended (the client
    /// went away).
    cancelled: AtomicBool,
}

pub struct Upstream {
    pub base: String,
    script: Arc<Script>,
    _server: tokio::task::JoinHandle<()>,
}

/// Sets the `cancelled` flag if dropped before the stream finished.
struct Guard(Arc<Script>, bool);

impl Guard {
    /// The stream ran to its end: not a cancellation.
    fn complete(mut self) {
        self.1 = true;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.store(true, Ordering::SeqCst);
        }
    }
}

#[handler]
async fn completions(script: Data<&Arc<Script>>, body: String) -> Response {
    let script = Arc::clone(script.0);
    script
        .requests
        .lock()
        .unwrap()
        .push(serde_json::from_str(&body).unwrap_or(Value::Null));
    let mut reply = script.replies.lock().unwrap().pop_front();
    if let Some(Reply::Later(pause, later)) = reply {
        tokio::time::sleep(pause).await;
        reply = Some(*later);
    }
    match reply {
        None => Response::builder()
            .status(poem::http::StatusCode::INTERNAL_SERVER_ERROR)
            .body("the script ran out of replies"),
        Some(Reply::Json(v)) => Response::builder()
            .content_type("application/json")
            .body(v.to_string()),
        Some(Reply::Raw(text)) => Response::builder()
            .content_type("application/json")
            .body(text),
        Some(Reply::Status(status, v, retry_after)) => {
            let mut b = Response::builder()
                .status(poem::http::StatusCode::from_u16(status).unwrap())
                .content_type("application/json");
            if let Some(s) = retry_after {
                b = b.header("retry-after", s);
            }
            b.body(v.to_string())
        }
        Some(Reply::Later(..)) => Response::builder()
            .status(poem::http::StatusCode::INTERNAL_SERVER_ERROR)
            .body("a later reply may not be later again"),
        // Headers at once, then a body that never ends: a space (leading JSON whitespace)
        // every 50 ms, so that a client that goes away is noticed at the next one.
        Some(Reply::Hang) => {
            let stream = futures_util::stream::unfold(Guard(script, false), |guard| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok::<_, std::io::Error>(b" ".to_vec()), guard))
            });
            Response::builder()
                .content_type("application/json")
                .body(Body::from_bytes_stream(stream))
        }
        Some(Reply::Stream(chunks)) => {
            let stream = futures_util::stream::unfold(
                (chunks.into_iter(), Guard(script, false)),
                |(mut it, guard)| async move {
                    match it.next() {
                        Some((pause, text)) => {
                            tokio::time::sleep(pause).await;
                            Some((Ok::<_, std::io::Error>(text.into_bytes()), (it, guard)))
                        }
                        None => {
                            guard.complete();
                            None
                        }
                    }
                },
            );
            Response::builder()
                .content_type("text/event-stream")
                .body(Body::from_bytes_stream(stream))
        }
    }
}

impl Upstream {
    pub async fn start(replies: Vec<Reply>) -> Upstream {
        let script = Arc::new(Script::default());
        script.replies.lock().unwrap().extend(replies);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        let app = Route::new()
            .at("/v1/chat/completions", post(completions))
            .data(Arc::clone(&script));
        let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
        let server = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor).run(app).await;
        });
        Upstream {
            base,
            script,
            _server: server,
        }
    }

    /// The request bodies received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.script.requests.lock().unwrap().clone()
    }

    pub fn cancelled(&self) -> bool {
        self.script.cancelled.load(Ordering::SeqCst)
    }
}

/// A complete answer with text.
pub fn answer(text: &str, prompt: u64, completion: u64) -> Reply {
    Reply::Json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    }))
}

/// A complete answer that calls one tool.
pub fn tool_call(name: &str, arguments: &str, prompt: u64, completion: u64) -> Reply {
    Reply::Json(json!({
        "id": "chatcmpl-2", "object": "chat.completion", "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
        ]}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    }))
}

/// An SSE chunk carrying a piece of text.
pub fn delta(text: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    )
}

/// The closing SSE chunks: finish reason, usage, `[DONE]`.
pub fn finish(prompt: u64, completion: u64) -> String {
    format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}})
    )
}

/// A whole stream of the given pieces, without pauses.
pub fn stream(pieces: &[&str], prompt: u64, completion: u64) -> Reply {
    let mut chunks: Vec<(Duration, String)> =
        pieces.iter().map(|p| (Duration::ZERO, delta(p))).collect();
    chunks.push((Duration::ZERO, finish(prompt, completion)));
    Reply::Stream(chunks)
}
