//! An OpenAI-compatible chat-completions client: OpenAI, Groq, Together, vLLM, Ollama,
//! llama.cpp's server. Native tool calls, JSON-schema responses, streaming with usage.
//!
//! Parsing is tolerant where servers differ (missing `usage`, `content: null`, extra fields);
//! rate limits and server errors are retried a bounded number of times.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};
use serde_json::{Value, json};

use super::{
    ChatRequest, ChatResponse, Message, Provider, ProviderError, Role, StreamEvent, TokenUsage,
    ToolCall,
};
use crate::config::Secret;

/// Attempts of one call when the provider answers 429 or 5xx, or cannot be reached.
pub const ATTEMPTS: u32 = 3;
/// First pause between attempts; doubled each time, never more than [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(4);

pub struct OpenAiProvider {
    name: String,
    base_url: String,
    api_key: Option<Secret>,
    client: reqwest::Client,
    first_pause: Duration,
}

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn message(m: &Message) -> Value {
    let mut v = json!({"role": role(m.role), "content": m.content});
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    v
}

/// The request body: every option the engine sets is sent.
pub fn body(req: &ChatRequest, stream: bool) -> Value {
    let mut b = json!({
        "model": req.model,
        "messages": req.messages.iter().map(message).collect::<Vec<_>>(),
    });
    if let Some(t) = req.temperature {
        b["temperature"] = json!(t);
    }
    if let Some(m) = req.max_tokens {
        b["max_tokens"] = json!(m);
    }
    if !req.tools.is_empty() {
        b["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}))
            .collect();
        b["tool_choice"] = json!("auto");
    }
    if let Some(schema) = &req.response_schema {
        b["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": false}
        });
    }
    if stream {
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

fn usage(v: &Value) -> TokenUsage {
    TokenUsage {
        prompt: v["prompt_tokens"].as_u64().unwrap_or(0),
        completion: v["completion_tokens"].as_u64().unwrap_or(0),
    }
}

fn tool_calls(v: &Value) -> Vec<ToolCall> {
    v.as_array()
        .map(|calls| {
            calls
                .iter()
                .enumerate()
                .map(|(i, c)| ToolCall {
                    id: c["id"]
                        .as_str()
                        .map_or_else(|| format!("call_{i}"), String::from),
                    name: c["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    arguments: match &c["function"]["arguments"] {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    },
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a complete (non-streamed) answer.
pub fn parse_response(v: &Value) -> Result<ChatResponse, ProviderError> {
    let choice = v["choices"]
        .get(0)
        .ok_or_else(|| ProviderError::Fatal(format!("the answer has no choices: {}", short(v))))?;
    let msg = &choice["message"];
    let calls = tool_calls(&msg["tool_calls"]);
    let finish_reason = choice["finish_reason"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| {
            if calls.is_empty() {
                "stop".into()
            } else {
                "tool_calls".into()
            }
        });
    Ok(ChatResponse {
        content: msg["content"].as_str().unwrap_or_default().to_string(),
        tool_calls: calls,
        finish_reason,
        usage: usage(&v["usage"]),
    })
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(300).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

/// The error a provider's HTTP answer stands for.
fn http_error(status: u16, text: &str) -> ProviderError {
    let detail = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or(v["error"].as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| text.chars().take(300).collect());
    let message = format!("the model provider answered {status}: {detail}");
    if status == 429 || status >= 500 {
        ProviderError::Transient(message)
    } else {
        ProviderError::Fatal(message)
    }
}

/// How long the provider asked us to wait (`Retry-After` in seconds), capped.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: f64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(
        secs.clamp(0.0, MAX_PAUSE.as_secs_f64()),
    ))
}

/// Accumulates a streamed answer's tool calls, which arrive in pieces by index.
#[derive(Default)]
struct CallParts {
    calls: Vec<ToolCall>,
}

impl CallParts {
    fn add(&mut self, deltas: &Value) {
        for d in deltas.as_array().into_iter().flatten() {
            let index = d["index"]
                .as_u64()
                .unwrap_or(self.calls.len().saturating_sub(1) as u64)
                as usize;
            while self.calls.len() <= index {
                let n = self.calls.len();
                self.calls.push(ToolCall {
                    id: format!("call_{n}"),
                    name: String::new(),
                    arguments: String::new(),
                });
            }
            let call = &mut self.calls[index];
            if let Some(id) = d["id"].as_str() {
                call.id = id.to_string();
            }
            if let Some(name) = d["function"]["name"].as_str() {
                call.name.push_str(name);
            }
            match &d["function"]["arguments"] {
                Value::String(s) => call.arguments.push_str(s),
                Value::Null => {}
                other => call.arguments.push_str(&other.to_string()),
            }
        }
    }
}

impl OpenAiProvider {
    /// A provider at `base_url` (e.g. `https://api.groq.com/openai/v1`), its key read from the
    /// environment variable `api_key_env` (servers without keys, like a local llama.cpp, need none).
    pub fn new(name: &str, base_url: &str, api_key_env: Option<&str>) -> Self {
        let api_key = api_key_env.and_then(|var| match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                tracing::warn!(
                    provider = name,
                    variable = var,
                    "the provider's API key variable is not set; calling without a key"
                );
                None
            }
        });
        OpenAiProvider {
            name: name.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .pool_idle_timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client with these settings builds"),
            first_pause: FIRST_PAUSE,
        }
    }

    /// Shorter pauses between retries (tests).
    pub fn with_first_pause(mut self, pause: Duration) -> Self {
        self.first_pause = pause;
        self
    }

    /// Sends the request, retrying 429, 5xx and connection failures; returns the successful response.
    async fn send(&self, body: &Value) -> Result<reqwest::Response, ProviderError> {
        let url = format!("{}/chat/completions", self.base_url);
        let bytes = serde_json::to_vec(body).map_err(|e| ProviderError::Fatal(e.to_string()))?;
        let mut pause = self.first_pause;
        let mut attempt = 1;
        loop {
            let mut req = self
                .client
                .post(&url)
                .header("content-type", "application/json")
                .body(bytes.clone());
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key.expose());
            }
            let (error, wait) = match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let wait = retry_after(resp.headers());
                    let text = resp.text().await.unwrap_or_default();
                    (http_error(status, &text), wait)
                }
                Err(e) => (
                    ProviderError::Transient(format!("cannot reach the model provider: {e}")),
                    None,
                ),
            };
            if matches!(error, ProviderError::Fatal(_)) || attempt >= ATTEMPTS {
                tracing::warn!(provider = %self.name, attempt, error = %error, "model call failed");
                return Err(error);
            }
            let wait = wait.unwrap_or(pause).min(MAX_PAUSE);
            tracing::info!(provider = %self.name, attempt, error = %error, wait_ms = wait.as_millis() as u64, "retrying model call");
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(MAX_PAUSE);
            attempt += 1;
        }
    }
}

impl Provider for OpenAiProvider {
    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatResponse, ProviderError>> {
        Box::pin(async move {
            let resp = self.send(&body(&req, false)).await?;
            let text = resp.text().await.map_err(|e| {
                ProviderError::Transient(format!("reading the provider's answer: {e}"))
            })?;
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                ProviderError::Fatal(format!(
                    "the provider's answer is not JSON ({e}): {}",
                    text.chars().take(200).collect::<String>()
                ))
            })?;
            parse_response(&v)
        })
    }

    fn chat_stream(
        &self,
        req: ChatRequest,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<StreamEvent, ProviderError>>, ProviderError>>
    {
        Box::pin(async move {
            let resp = self.send(&body(&req, true)).await?;
            Ok(sse_events(resp.bytes_stream()).boxed())
        })
    }
}

/// Turns the provider's server-sent events into stream events; ends with `Done` (or an error).
pub fn sse_events<S, B, E>(
    bytes: S,
) -> impl futures_util::Stream<Item = Result<StreamEvent, ProviderError>> + Send + 'static
where
    S: futures_util::Stream<Item = Result<B, E>> + Send + Unpin + 'static,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    struct State<S> {
        bytes: S,
        buf: Vec<u8>,
        pending: std::collections::VecDeque<Result<StreamEvent, ProviderError>>,
        calls: CallParts,
        usage: TokenUsage,
        finish: Option<String>,
        done: bool,
    }
    let state = State {
        bytes,
        buf: Vec::new(),
        pending: Default::default(),
        calls: CallParts::default(),
        usage: TokenUsage::default(),
        finish: None,
        done: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(e) = st.pending.pop_front() {
                return Some((e, st));
            }
            if st.done {
                return None;
            }
            // Handle every complete line in the buffer.
            while let Some(nl) = st.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = st.buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim();
                let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                if data == "[DONE]" {
                    st.done = true;
                    break;
                }
                let v: Value = match serde_json::from_str(data) {
                    Ok(v) => v,
                    Err(e) => {
                        st.pending.push_back(Err(ProviderError::Transient(format!(
                            "the provider sent a bad stream event ({e})"
                        ))));
                        st.done = true;
                        break;
                    }
                };
                if v.get("error").is_some_and(|e| !e.is_null()) {
                    let msg = v["error"]["message"]
                        .as_str()
                        .map_or_else(|| v["error"].to_string(), String::from);
                    st.pending.push_back(Err(ProviderError::Transient(format!(
                        "the provider failed mid-stream: {msg}"
                    ))));
                    st.done = true;
                    break;
                }
                if v["usage"].is_object() {
                    st.usage = usage(&v["usage"]);
                }
                if let Some(choice) = v["choices"].get(0) {
                    if let Some(text) = choice["delta"]["content"].as_str()
                        && !text.is_empty()
                    {
                        st.pending
                            .push_back(Ok(StreamEvent::Delta(text.to_string())));
                    }
                    st.calls.add(&choice["delta"]["tool_calls"]);
                    if let Some(f) = choice["finish_reason"].as_str() {
                        st.finish = Some(f.to_string());
                    }
                }
            }
            if st.done {
                if !st.pending.iter().any(Result::is_err) {
                    let calls = std::mem::take(&mut st.calls.calls);
                    let finish_reason = st.finish.take().unwrap_or_else(|| {
                        if calls.is_empty() {
                            "stop".into()
                        } else {
                            "tool_calls".into()
                        }
                    });
                    st.pending.push_back(Ok(StreamEvent::Done {
                        finish_reason,
                        usage: st.usage,
                        tool_calls: calls,
                    }));
                }
                continue;
            }
            match st.bytes.next().await {
                Some(Ok(chunk)) => st.buf.extend_from_slice(chunk.as_ref()),
                Some(Err(e)) => {
                    st.pending.push_back(Err(ProviderError::Transient(format!(
                        "the provider's stream broke: {e}"
                    ))));
                    st.done = true;
                }
                None => {
                    // A stream that ends without [DONE] after a finish reason is complete enough;
                    // one that ends before any finish reason was cut off.
                    if st.finish.is_none() {
                        st.pending.push_back(Err(ProviderError::Transient(
                            "the provider's stream ended early".into(),
                        )));
                    }
                    st.done = true;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolSpec;

    #[test]
    fn the_body_carries_every_option() {
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![
                Message::new(Role::System, "s"),
                Message::new(Role::User, "u"),
            ],
            temperature: Some(0.2),
            max_tokens: Some(77),
            tools: vec![ToolSpec {
                name: "calculator".into(),
                description: "d".into(),
                parameters: json!({"type": "object"}),
            }],
            response_schema: Some(json!({"type": "object"})),
        };
        let b = body(&req, true);
        assert_eq!(b["temperature"], 0.2);
        assert_eq!(b["max_tokens"], 77);
        assert_eq!(b["tools"][0]["function"]["name"], "calculator");
        assert_eq!(
            b["response_format"]["json_schema"]["schema"],
            json!({"type": "object"})
        );
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["messages"][1], json!({"role": "user", "content": "u"}));
    }

    #[test]
    fn tolerant_response_parsing() {
        let v = json!({"choices": [{"message": {"content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"1+1\"}"}}
        ]}}]});
        let r = parse_response(&v).unwrap();
        assert_eq!(r.content, "");
        assert_eq!(r.finish_reason, "tool_calls");
        assert_eq!(r.tool_calls[0].name, "calculator");
        assert_eq!(r.usage, TokenUsage::default());
        assert!(matches!(
            parse_response(&json!({})),
            Err(ProviderError::Fatal(_))
        ));
    }

    #[tokio::test]
    async fn streams_assemble_text_tool_calls_and_usage() {
        let events = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n",
            "\ndata: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"function\":{\"name\":\"calc\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n",
        ];
        let chunks: Vec<_> = events
            .iter()
            .map(|e| Ok::<_, std::io::Error>(e.as_bytes().to_vec()))
            .collect();
        let s = futures_util::stream::iter(chunks);
        let out: Vec<_> = sse_events(s).collect().await;
        assert_eq!(out[0], Ok(StreamEvent::Delta("Hel".into())));
        assert_eq!(out[1], Ok(StreamEvent::Delta("lo".into())));
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
        assert_eq!(tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(out.len(), 3);
    }

    #[tokio::test]
    async fn a_cut_stream_is_an_error() {
        let s = futures_util::stream::iter([Ok::<_, std::io::Error>(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n".to_vec(),
        )]);
        let out: Vec<_> = sse_events(s).collect().await;
        assert_eq!(out[0], Ok(StreamEvent::Delta("x".into())));
        assert!(matches!(&out[1], Err(ProviderError::Transient(m)) if m.contains("ended early")));
    }
}
