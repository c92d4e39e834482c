//! An OpenAI-compatible chat-completions client: OpenAI, Groq, Together, vLLM, Ollama,
//! llama.cpp's server. Native tool calls, JSON-schema responses, streaming with usage.
//!
//! A provider's answer is untrusted input: it is read into typed messages ([`wire`]) with
//! bounds on its size, token counts and tool calls. Rate limits, server errors and connection
//! failures are retried a bounded number of times. A failure is told to clients as the
//! provider's name, the status and a fixed reason; what the provider said, and its address,
//! go only to the log.

mod stream;
pub(crate) mod wire;

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use tracing::Instrument;

use super::{
    ChatRequest, ChatResponse, Provider, ProviderError, StreamEvent, TokenUsage, ToolCall,
};
use crate::config::Secret;

pub(crate) use stream::events;

/// Attempts of one call when the provider answers 429 or 5xx, or cannot be reached.
pub const ATTEMPTS: u32 = 3;
/// First pause between attempts; doubled each time, never more than [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(4);
/// The most tool calls one answer may ask for.
pub(crate) const MAX_TOOL_CALLS: usize = 128;
/// The largest complete answer read.
const MAX_ANSWER: usize = 8 << 20;
/// The most of an error answer's body read (for the log).
const MAX_ERROR_BODY: usize = 64 << 10;

pub struct OpenAiProvider {
    name: String,
    /// The chat-completions endpoint.
    url: String,
    /// `url` parsed once (given as text, every request would parse it again); `None` when it
    /// does not parse, and each call then fails on it as it would anyway.
    parsed: Option<reqwest::Url>,
    api_key: Option<Secret>,
    client: reqwest::Client,
    first_pause: Duration,
}

/// Why a call failed, as a client is told it: no word of the provider's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// An HTTP status other than success.
    Status(u16),
    Unreachable,
    /// The connection broke while the answer was read.
    BrokeOff,
    TooLarge,
    NotJson,
    /// JSON, but not a chat completion (token counts out of bounds included).
    Invalid,
    TooManyCalls,
    /// The provider reported an error mid-stream, or the stream's connection broke.
    MidStream,
    /// A stream event that is not a chat-completion chunk.
    BadEvent,
    EndedEarly,
}

impl Reason {
    /// Worth retrying (the call, or the client's request).
    fn transient(self) -> bool {
        match self {
            Reason::Status(s) => s == 429 || s >= 500,
            Reason::Unreachable
            | Reason::BrokeOff
            | Reason::MidStream
            | Reason::BadEvent
            | Reason::EndedEarly => true,
            Reason::TooLarge | Reason::NotJson | Reason::Invalid | Reason::TooManyCalls => false,
        }
    }

    /// What a client is told of a call to provider `p`.
    fn describe(self, p: &str) -> String {
        match self {
            Reason::Status(s) => format!("provider '{p}' answered {s} ({})", status_reason(s)),
            Reason::Unreachable => format!("provider '{p}' could not be reached"),
            Reason::BrokeOff => format!("provider '{p}' broke off its answer"),
            Reason::TooLarge => format!(
                "provider '{p}' sent an answer larger than {} MiB",
                MAX_ANSWER >> 20
            ),
            Reason::NotJson => format!("provider '{p}' sent an answer that is not valid JSON"),
            Reason::Invalid => {
                format!("provider '{p}' sent an answer that is not a valid chat completion")
            }
            Reason::TooManyCalls => {
                format!("provider '{p}' asked for more than {MAX_TOOL_CALLS} tool calls")
            }
            Reason::MidStream => format!("provider '{p}' failed mid-stream"),
            Reason::BadEvent => format!("provider '{p}' sent a bad stream event"),
            Reason::EndedEarly => format!("provider '{p}' ended the stream early"),
        }
    }
}

fn status_reason(status: u16) -> &'static str {
    match status {
        429 => "rate limited",
        401 | 403 => "not authorized",
        404 => "not found",
        400..=499 => "request refused",
        500..=599 => "server error",
        _ => "unexpected status",
    }
}

/// A failed call: the reason a client is told, and the detail only the log gets.
#[derive(Debug)]
pub(crate) struct Fault {
    reason: Reason,
    detail: String,
}

impl Fault {
    fn new(reason: Reason, detail: impl fmt::Display) -> Fault {
        Fault {
            reason,
            detail: detail.to_string(),
        }
    }

    /// The error a client sees.
    fn into_error(self, provider: &str) -> ProviderError {
        let message = self.reason.describe(provider);
        if self.reason.transient() {
            ProviderError::Transient(message)
        } else {
            ProviderError::Fatal(message)
        }
    }

    /// The error a client sees; the detail goes to the log, in the current span.
    fn report(self, provider: &str, url: &str) -> ProviderError {
        tracing::warn!(url, reason = ?self.reason, detail = %self.detail, "the provider's answer failed");
        self.into_error(provider)
    }
}

/// The start of a text the provider sent, for the log.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(300) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.into_owned(),
    }
}

/// An error with its causes (reqwest's own message leaves them out).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads a complete (non-streamed) answer.
pub(crate) fn parse(body: &[u8]) -> Result<ChatResponse, Fault> {
    let answer: wire::Completion = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            // The serde error only: the answer may carry the model's text.
            Fault::new(Reason::Invalid, e)
        } else {
            Fault::new(
                Reason::NotJson,
                format_args!("{e}; the answer: {}", excerpt(body)),
            )
        }
    })?;
    let Some(choice) = answer.choices.into_iter().next() else {
        return Err(Fault::new(Reason::Invalid, "the answer has no choices"));
    };
    let calls = choice.message.tool_calls;
    if calls.len() > MAX_TOOL_CALLS {
        return Err(Fault::new(
            Reason::TooManyCalls,
            format_args!("{} tool calls", calls.len()),
        ));
    }
    let tool_calls: Vec<ToolCall> = calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| ToolCall {
            id: c.id.unwrap_or_else(|| format!("call_{i}")),
            name: c.function.name.unwrap_or_default(),
            arguments: c.function.arguments.0,
        })
        .collect();
    Ok(ChatResponse {
        content: choice.message.content.unwrap_or_default(),
        finish_reason: choice
            .finish_reason
            .unwrap_or_else(|| wire::default_finish(&tool_calls)),
        tool_calls,
        usage: answer.usage.map(TokenUsage::from).unwrap_or_default(),
    })
}

/// How long the provider asked us to wait: `Retry-After` as a finite number of seconds, not
/// negative, or as an HTTP date; at most [`MAX_PAUSE`]. Anything else is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<f64>() {
        // `min` first: a huge number of seconds is no duration. Negative ones are refused.
        Ok(secs) if secs.is_finite() => {
            Duration::try_from_secs_f64(secs.min(MAX_PAUSE.as_secs_f64())).ok()?
        }
        Ok(_) => return None,
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_PAUSE))
}

/// The pauses between attempts: `first`, doubled each time up to [`MAX_PAUSE`], each plus a
/// random part of as much again (the retry loop caps the sum at [`MAX_PAUSE`]).
fn backoff(first: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_factor(2.0)
        .with_max_delay(MAX_PAUSE)
        .with_max_times(ATTEMPTS as usize - 1)
        .with_jitter()
}

/// An attempt's outcome in the log: the HTTP status, or none for a connection failure.
#[derive(Clone, Copy)]
enum Status {
    Http(u16),
    ConnectError,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Http(s) => write!(f, "{s}"),
            Status::ConnectError => f.write_str("connect_error"),
        }
    }
}

/// A failed attempt.
struct Failed {
    attempt: u32,
    status: Status,
    duration_ms: u64,
    retry_after: Option<Duration>,
    fault: Fault,
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The whole body, or `None` once it passes `cap` bytes.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> reqwest::Result<Option<Vec<u8>>> {
    let expected = resp.content_length().unwrap_or(0).min(cap as u64);
    let mut body = Vec::with_capacity(expected as usize);
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// What an error answer says: its `error.message`, else the start of its text.
async fn error_detail(resp: reqwest::Response) -> String {
    match read_capped(resp, MAX_ERROR_BODY).await {
        Ok(Some(body)) => match serde_json::from_slice::<wire::ErrorBody>(&body) {
            Ok(wire::ErrorBody { error: Some(e) }) => excerpt(e.message().as_bytes()),
            _ => excerpt(&body),
        },
        Ok(None) => format!("an error body over {MAX_ERROR_BODY} bytes"),
        Err(e) => format!("the error body broke off: {}", error_chain(&e)),
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
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        OpenAiProvider {
            name: name.to_string(),
            parsed: reqwest::Url::parse(&url).ok(),
            url,
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

    /// The span of one call, a child of the current one.
    fn span(&self, model: &str) -> tracing::Span {
        tracing::info_span!("provider_call", provider = %self.name, model = %model)
    }

    /// A complete answer.
    async fn complete(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let resp = self.send(&wire::body(req, false)).await?;
        let fault = match read_capped(resp, MAX_ANSWER).await {
            Ok(Some(body)) => match parse(&body) {
                Ok(answer) => return Ok(answer),
                Err(fault) => fault,
            },
            Ok(None) => Fault::new(
                Reason::TooLarge,
                format_args!("an answer over {MAX_ANSWER} bytes"),
            ),
            Err(e) => Fault::new(Reason::BrokeOff, error_chain(&e)),
        };
        Err(fault.report(&self.name, &self.url))
    }

    /// One attempt: the response if it succeeded.
    async fn attempt(&self, attempt: u32, body: Vec<u8>) -> Result<reqwest::Response, Failed> {
        let started = Instant::now();
        let req = match &self.parsed {
            Some(url) => self.client.post(url.clone()),
            None => self.client.post(&self.url),
        };
        let mut req = req.header(CONTENT_TYPE, "application/json").body(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key.expose());
        }
        let (status, retry_after, fault) = match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                tracing::debug!(
                    attempt,
                    status = resp.status().as_u16(),
                    duration_ms = millis(started),
                    "the provider answered"
                );
                return Ok(resp);
            }
            Ok(resp) => {
                let status = resp.status().as_u16();
                let wait = retry_after(resp.headers());
                let detail = error_detail(resp).await;
                (
                    Status::Http(status),
                    wait,
                    Fault::new(Reason::Status(status), detail),
                )
            }
            Err(e) => (
                Status::ConnectError,
                None,
                Fault::new(Reason::Unreachable, error_chain(&e)),
            ),
        };
        Err(Failed {
            attempt,
            status,
            duration_ms: millis(started),
            retry_after,
            fault,
        })
    }

    /// Sends the request, retrying 429, 5xx and connection failures; returns the successful response.
    async fn send(&self, body: &wire::Request<'_>) -> Result<reqwest::Response, ProviderError> {
        let body = serde_json::to_vec(body).map_err(|e| {
            tracing::warn!(error = %e, "the request could not be encoded");
            ProviderError::Fatal(format!(
                "the request to provider '{}' could not be encoded",
                self.name
            ))
        })?;
        let mut attempt = 0;
        let result = (|| {
            attempt += 1;
            self.attempt(attempt, body.clone())
        })
        .retry(backoff(self.first_pause))
        .when(|f: &Failed| f.fault.reason.transient())
        .adjust(|f, next| next.map(|pause| f.retry_after.unwrap_or(pause).min(MAX_PAUSE)))
        .notify(|f, wait| {
            tracing::info!(
                attempt = f.attempt,
                status = %f.status,
                duration_ms = f.duration_ms,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                detail = %f.fault.detail,
                "the provider call failed; retrying"
            );
        })
        .await;
        result.map_err(|f| {
            tracing::warn!(
                attempt = f.attempt,
                status = %f.status,
                duration_ms = f.duration_ms,
                url = %self.url,
                detail = %f.fault.detail,
                "the provider call failed"
            );
            f.fault.into_error(&self.name)
        })
    }
}

impl Provider for OpenAiProvider {
    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatResponse, ProviderError>> {
        Box::pin(async move {
            // Made when first polled, so a child of the span of whoever awaits the call.
            let span = self.span(&req.model);
            self.complete(&req).instrument(span).await
        })
    }

    fn chat_stream(
        &self,
        req: ChatRequest,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<StreamEvent, ProviderError>>, ProviderError>>
    {
        Box::pin(async move {
            let span = self.span(&req.model);
            let resp = self
                .send(&wire::body(&req, true))
                .instrument(span.clone())
                .await?;
            let (name, url) = (self.name.clone(), self.url.clone());
            // The stream is read later, maybe elsewhere: its failures are logged in the call's span.
            let events = events(resp.bytes_stream())
                .map(move |item| item.map_err(|fault| span.in_scope(|| fault.report(&name, &url))));
            Ok(events.boxed())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Message, Role, ToolSpec};
    use serde_json::{Value, json};

    #[test]
    fn the_body_carries_every_option() {
        let mut req = ChatRequest {
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
        req.messages.push(Message {
            role: Role::Assistant,
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "calculator".into(),
                arguments: "{}".into(),
            }],
            tool_call_id: None,
        });
        req.messages.push(Message {
            tool_call_id: Some("c1".into()),
            ..Message::new(Role::Tool, "2")
        });
        let b = serde_json::to_value(wire::body(&req, true)).unwrap();
        assert_eq!(b["model"], "m");
        assert_eq!(b["temperature"], 0.2);
        assert_eq!(b["max_tokens"], 77);
        assert_eq!(
            b["tools"][0],
            json!({"type": "function", "function": {"name": "calculator", "description": "d", "parameters": {"type": "object"}}})
        );
        assert_eq!(b["tool_choice"], "auto");
        assert_eq!(
            b["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}, "strict": false}})
        );
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["messages"][0], json!({"role": "system", "content": "s"}));
        assert_eq!(b["messages"][1], json!({"role": "user", "content": "u"}));
        assert_eq!(
            b["messages"][2],
            json!({"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}
            ]})
        );
        assert_eq!(
            b["messages"][3],
            json!({"role": "tool", "content": "2", "tool_call_id": "c1"})
        );

        let plain = ChatRequest {
            model: "m".into(),
            messages: vec![Message::new(Role::User, "u")],
            temperature: None,
            max_tokens: None,
            tools: vec![],
            response_schema: None,
        };
        assert_eq!(
            serde_json::to_value(wire::body(&plain, false)).unwrap(),
            json!({"model": "m", "messages": [{"role": "user", "content": "u"}]}),
            "options the engine did not set are left out"
        );
    }

    fn parse_value(v: Value) -> Result<ChatResponse, Fault> {
        parse(v.to_string().as_bytes())
    }

    #[test]
    fn tolerant_response_parsing() {
        let r = parse_value(json!({"id": "x", "choices": [{"message": {"content": null, "refusal": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"1+1\"}"}},
            {"function": {"name": "lookup", "arguments": {"q": "x"}}}
        ]}}]}))
        .unwrap();
        assert_eq!(r.content, "");
        assert_eq!(r.finish_reason, "tool_calls");
        assert_eq!(r.tool_calls[0].name, "calculator");
        assert_eq!(r.tool_calls[1].id, "call_1");
        assert_eq!(r.tool_calls[1].arguments, "{\"q\":\"x\"}");
        assert_eq!(r.usage, TokenUsage::default());

        let r = parse_value(json!({"choices": [{"message": {"content": "hi", "tool_calls": null}, "finish_reason": null}], "usage": null}))
            .unwrap();
        assert_eq!(
            (r.content.as_str(), r.finish_reason.as_str()),
            ("hi", "stop")
        );

        let r = parse_value(json!({"choices": [{"message": {"content": "hi"}, "finish_reason": "length"}], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}))
            .unwrap();
        assert_eq!((r.finish_reason.as_str(), r.usage.total()), ("length", 9));
    }

    #[test]
    fn answers_that_are_not_chat_completions_are_refused() {
        let reason = |bytes: &[u8]| parse(bytes).unwrap_err().reason;
        assert_eq!(reason(b"<html>bad gateway</html>"), Reason::NotJson);
        assert_eq!(reason(b"{\"choices\": ["), Reason::NotJson);
        assert_eq!(reason(b"{}"), Reason::Invalid);
        assert_eq!(reason(b"{\"choices\": []}"), Reason::Invalid);
        assert_eq!(reason(b"{\"choices\": 3}"), Reason::Invalid);
        assert_eq!(reason(b"[1]"), Reason::Invalid);
    }

    #[test]
    fn token_counts_out_of_bounds_make_an_answer_invalid() {
        let tokens = |n: &str| {
            let text = format!(
                "{{\"choices\": [{{\"message\": {{\"content\": \"x\"}}}}], \"usage\": {{\"prompt_tokens\": {n}, \"completion_tokens\": 1}}}}"
            );
            parse(text.as_bytes())
                .map(|r| r.usage.prompt)
                .map_err(|f| f.reason)
        };
        assert_eq!(tokens("1000000000"), Ok(1_000_000_000));
        assert_eq!(tokens("12.0"), Ok(12));
        for n in [
            "1000000001",
            "9223372036854775808",
            "18446744073709551615",
            "1e300",
            "-1",
            "2.5",
            "\"3\"",
        ] {
            assert_eq!(tokens(n), Err(Reason::Invalid), "{n}");
        }
    }

    #[test]
    fn more_than_the_most_tool_calls_are_refused() {
        let call = json!({"id": "c", "function": {"name": "f", "arguments": "{}"}});
        let calls =
            |n: usize| json!({"choices": [{"message": {"tool_calls": vec![call.clone(); n]}}]});
        assert_eq!(
            parse_value(calls(MAX_TOOL_CALLS)).unwrap().tool_calls.len(),
            MAX_TOOL_CALLS
        );
        assert_eq!(
            parse_value(calls(MAX_TOOL_CALLS + 1)).unwrap_err().reason,
            Reason::TooManyCalls
        );
    }

    #[test]
    fn the_client_is_told_the_provider_the_status_and_a_fixed_reason() {
        let f = |reason| {
            Fault::new(reason, "http://10.0.0.5:8000 said: key sk-***abc").into_error("groq")
        };
        assert_eq!(
            f(Reason::Status(503)),
            ProviderError::Transient("provider 'groq' answered 503 (server error)".into())
        );
        assert_eq!(
            f(Reason::Status(429)),
            ProviderError::Transient("provider 'groq' answered 429 (rate limited)".into())
        );
        assert_eq!(
            f(Reason::Status(401)),
            ProviderError::Fatal("provider 'groq' answered 401 (not authorized)".into())
        );
        assert_eq!(
            f(Reason::Unreachable),
            ProviderError::Transient("provider 'groq' could not be reached".into())
        );
        assert_eq!(
            f(Reason::NotJson),
            ProviderError::Fatal("provider 'groq' sent an answer that is not valid JSON".into())
        );
        assert_eq!(
            f(Reason::MidStream),
            ProviderError::Transient("provider 'groq' failed mid-stream".into())
        );
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_a_bound() {
        let body = |n: usize| reqwest::Response::from(poem::http::Response::new(vec![b'x'; n]));
        let read = |n: usize| async move { read_capped(body(n), 10).await.unwrap() };
        assert_eq!(read(10).await.map(|b| b.len()), Some(10));
        assert_eq!(read(0).await, Some(vec![]));
        assert_eq!(read(11).await, None);
    }

    fn retry_after_of(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, value.parse().unwrap());
        retry_after(&headers)
    }

    #[test]
    fn retry_after_takes_only_finite_non_negative_seconds_or_a_date_capped() {
        assert_eq!(retry_after_of("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after_of(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(retry_after_of("0"), Some(Duration::ZERO));
        for huge in ["5", "1e300", "99999999999999999999999"] {
            assert_eq!(retry_after_of(huge), Some(MAX_PAUSE), "{huge}");
        }
        for bad in [
            "NaN", "nan", "-1", "-1e300", "inf", "-inf", "1e400", "soon", "",
        ] {
            assert_eq!(retry_after_of(bad), None, "{bad:?}");
        }
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
        assert_eq!(retry_after_of(&later), Some(MAX_PAUSE));
        let earlier = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
        assert_eq!(retry_after_of(&earlier), Some(Duration::ZERO));
    }

    #[test]
    fn the_backoff_doubles_from_the_first_pause_for_each_retry() {
        use backon::BackoffBuilder;
        let first = Duration::from_millis(250);
        let pauses: Vec<Duration> = backoff(first).build().collect();
        assert_eq!(pauses.len(), ATTEMPTS as usize - 1);
        for (i, p) in pauses.iter().enumerate() {
            let base = first * 2u32.pow(i as u32);
            assert!(*p >= base && *p <= base * 2, "pause {i}: {p:?}");
        }
    }
}
