//! A minimal OpenAI-compatible upstream for the benchmarks: answers every chat completion after a
//! fixed latency, as JSON or as a stream of `--chunks` SSE events with usage.
//!
//! `cargo run --release --example bench_upstream -- --port 9000 --latency-ms 50 --chunks 20`

use std::time::{Duration, Instant};

use poem::web::Data;
use poem::{Body, EndpointExt, Response, Route, handler, post};
use serde_json::{Value, json};

#[derive(Clone, Copy)]
struct Config {
    latency: Duration,
    chunks: usize,
}

const STRUCTURED: &str =
    r#"{"risk_score": 0.42, "risk_level": "low", "reasoning": "benchmark answer"}"#;

#[handler]
async fn completions(cfg: Data<&Config>, body: String) -> Response {
    let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if !cfg.latency.is_zero() {
        // tokio's timer ticks in milliseconds: its sleep would add 0–2 ms depending on when
        // within a tick the request arrived, so the "fixed" latency would depend on the
        // caller's own timing. A blocking thread's sleep (timer slack set to 1 µs in `main`)
        // keeps to the deadline within tens of microseconds whoever calls.
        let deadline = Instant::now() + cfg.latency;
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        })
        .await
        .expect("the sleeping thread does not panic");
    }
    let structured = req.get("response_format").is_some();
    if req["stream"] == true {
        let chunks = cfg.chunks;
        let mut events = Vec::with_capacity(chunks + 3);
        for i in 0..chunks {
            let piece = if i == 0 {
                "word".to_string()
            } else {
                " word".to_string()
            };
            events.push(format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})));
        }
        events.push(format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        ));
        events.push(format!(
            "data: {}\n\n",
            json!({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": chunks, "total_tokens": 20 + chunks}})
        ));
        events.push("data: [DONE]\n\n".to_string());
        let stream = futures_util::stream::iter(
            events
                .into_iter()
                .map(|e| Ok::<_, std::io::Error>(e.into_bytes())),
        );
        return Response::builder()
            .content_type("text/event-stream")
            .body(Body::from_bytes_stream(stream));
    }
    let content = if structured {
        STRUCTURED
    } else {
        "benchmark answer"
    };
    let answer = json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "model": req["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
    });
    Response::builder()
        .content_type("application/json")
        .body(answer.to_string())
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> std::io::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Linux lets a sleeping thread wake up to 50 µs late by default; the latency is meant
        // to be fixed.
        .on_thread_start(|| {
            // SAFETY: prctl with PR_SET_TIMERSLACK takes one integer argument and only
            // changes the calling thread's timer slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        })
        .build()?
        .block_on(serve())
}

async fn serve() -> std::io::Result<()> {
    let cfg = Config {
        latency: Duration::from_millis(arg("--latency-ms", 0)),
        chunks: arg("--chunks", 20) as usize,
    };
    let port = arg("--port", 9000);
    let app = Route::new()
        .at("/v1/chat/completions", post(completions))
        .data(cfg);
    poem::Server::new(poem::listener::TcpListener::bind(format!(
        "127.0.0.1:{port}"
    )))
    .run(app)
    .await
}
