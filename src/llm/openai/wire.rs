//! The OpenAI chat-completions protocol as typed messages: the request `ares` sends, and the
//! complete answer, streamed chunk and error body it reads.
//!
//! Reading is tolerant where servers differ: a field that is missing or `null` takes its
//! default, unknown fields are ignored, and a tool call's `arguments` may be the JSON itself
//! instead of its text. Token counts are checked ([`Tokens`]): they end up in the store.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::llm::{ChatRequest, Message, Role, TokenUsage, ToolCall};

/// The most tokens one call may report for its prompt, or for its completion.
pub const MAX_TOKENS: u64 = 1_000_000_000;

// The request.

#[derive(Serialize)]
pub struct Request<'a> {
    model: &'a str,
    messages: Vec<RequestMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct RequestMessage<'a> {
    role: &'static str,
    content: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<RequestToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
struct RequestToolCall<'a> {
    id: &'a str,
    r#type: &'static str,
    function: FunctionCall<'a>,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct Tool<'a> {
    r#type: &'static str,
    function: FunctionSpec<'a>,
}

#[derive(Serialize)]
struct FunctionSpec<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

#[derive(Serialize)]
struct ResponseFormat<'a> {
    r#type: &'static str,
    json_schema: JsonSchema<'a>,
}

#[derive(Serialize)]
struct JsonSchema<'a> {
    name: &'static str,
    schema: &'a Value,
    strict: bool,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn message(m: &Message) -> RequestMessage<'_> {
    RequestMessage {
        role: role(m.role),
        content: &m.content,
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| RequestToolCall {
                id: &c.id,
                r#type: "function",
                function: FunctionCall {
                    name: &c.name,
                    arguments: &c.arguments,
                },
            })
            .collect(),
        tool_call_id: m.tool_call_id.as_deref(),
    }
}

/// The request body: every option the engine sets is sent.
pub fn body(req: &ChatRequest, stream: bool) -> Request<'_> {
    let tools: Vec<Tool> = req
        .tools
        .iter()
        .map(|t| Tool {
            r#type: "function",
            function: FunctionSpec {
                name: &t.name,
                description: &t.description,
                parameters: &t.parameters,
            },
        })
        .collect();
    Request {
        model: &req.model,
        messages: req.messages.iter().map(message).collect(),
        temperature: req.temperature,
        max_tokens: req.max_tokens,
        tool_choice: (!tools.is_empty()).then_some("auto"),
        tools,
        response_format: req.response_schema.as_ref().map(|schema| ResponseFormat {
            r#type: "json_schema",
            json_schema: JsonSchema {
                name: "output",
                schema,
                strict: false,
            },
        }),
        stream: stream.then_some(true),
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
    }
}

// What the provider sends.

/// A field that may be `null` as well as missing: both give the default.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A complete (non-streamed) answer.
#[derive(Deserialize)]
pub struct Completion {
    #[serde(default, deserialize_with = "nullable")]
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Deserialize)]
pub struct Choice {
    #[serde(default, deserialize_with = "nullable")]
    pub message: AnswerMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct AnswerMessage {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub tool_calls: Vec<AnswerToolCall>,
}

#[derive(Deserialize)]
pub struct AnswerToolCall {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub function: Function,
}

/// A tool call's function, whole (complete answers) or a piece of it (stream deltas).
#[derive(Deserialize, Default)]
pub struct Function {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Arguments,
}

/// A tool call's arguments as JSON text: the protocol sends text, some servers the JSON itself.
#[derive(Default)]
pub struct Arguments(pub String);

impl<'de> Deserialize<'de> for Arguments {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Arguments(match Value::deserialize(d)? {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        }))
    }
}

#[derive(Deserialize)]
pub struct Usage {
    #[serde(default)]
    prompt_tokens: Tokens,
    #[serde(default)]
    completion_tokens: Tokens,
}

impl From<Usage> for TokenUsage {
    fn from(u: Usage) -> TokenUsage {
        TokenUsage {
            prompt: u.prompt_tokens.0,
            completion: u.completion_tokens.0,
        }
    }
}

/// A token count: a whole number from 0 to [`MAX_TOKENS`] (`null` is 0). Anything else —
/// negative, fractional, beyond `i64`, not a number — makes the answer invalid.
#[derive(Default)]
pub struct Tokens(u64);

impl<'de> Deserialize<'de> for Tokens {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
            return Ok(Tokens(0));
        };
        let count = match n.as_u64() {
            Some(u) => Some(u),
            // `12.0` is a whole number too.
            None => n
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_TOKENS as f64)
                .map(|f| f as u64),
        };
        match count {
            Some(c) if c <= MAX_TOKENS => Ok(Tokens(c)),
            _ => Err(D::Error::custom(format_args!(
                "a token count must be a whole number from 0 to {MAX_TOKENS}, got {n}"
            ))),
        }
    }
}

/// One event of a streamed answer.
#[derive(Deserialize)]
pub struct Chunk {
    #[serde(default, deserialize_with = "nullable")]
    pub choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Set when the provider failed mid-stream.
    #[serde(default)]
    pub error: Option<ErrorDetail>,
}

#[derive(Deserialize)]
pub struct ChunkChoice {
    #[serde(default, deserialize_with = "nullable")]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct Delta {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A piece of a streamed tool call; the pieces of one call share its `index`.
#[derive(Deserialize)]
pub struct ToolCallDelta {
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub function: Function,
}

/// The body of an error answer.
#[derive(Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error: Option<ErrorDetail>,
}

/// An error as providers give it: an object with a `message`, or a bare string.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum ErrorDetail {
    Text(String),
    Object {
        #[serde(default)]
        message: Option<String>,
    },
}

impl ErrorDetail {
    pub fn message(&self) -> &str {
        match self {
            ErrorDetail::Text(m) | ErrorDetail::Object { message: Some(m) } => m,
            ErrorDetail::Object { message: None } => "(no message)",
        }
    }
}

/// The finish reason of an answer that gave none.
pub fn default_finish(calls: &[ToolCall]) -> String {
    if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn usage(v: Value) -> Result<TokenUsage, serde_json::Error> {
        serde_json::from_value::<Usage>(v).map(TokenUsage::from)
    }

    #[test]
    fn token_counts_are_whole_numbers_within_bounds() {
        assert_eq!(
            usage(json!({"prompt_tokens": 5, "completion_tokens": 3.0, "total_tokens": 8}))
                .unwrap(),
            TokenUsage {
                prompt: 5,
                completion: 3
            }
        );
        assert_eq!(
            usage(json!({"prompt_tokens": null})).unwrap(),
            TokenUsage::default()
        );
        assert_eq!(
            usage(json!({"prompt_tokens": MAX_TOKENS})).unwrap().prompt,
            MAX_TOKENS
        );
        for bad in [
            json!(MAX_TOKENS + 1),
            json!(9_223_372_036_854_775_808u64),
            json!(u64::MAX),
            json!(1e300),
            json!(-1),
            json!(-0.5),
            json!(2.5),
            json!("12"),
            json!([1]),
        ] {
            assert!(
                usage(json!({"prompt_tokens": bad.clone()})).is_err(),
                "{bad} was accepted"
            );
            assert!(
                usage(json!({"completion_tokens": bad.clone()})).is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn arguments_may_be_text_json_or_null() {
        let f = |v: Value| serde_json::from_value::<Function>(v).unwrap().arguments.0;
        assert_eq!(f(json!({"arguments": "{\"a\":1}"})), "{\"a\":1}");
        assert_eq!(f(json!({"arguments": {"a": 1}})), "{\"a\":1}");
        assert_eq!(f(json!({"arguments": null})), "");
        assert_eq!(f(json!({})), "");
    }

    #[test]
    fn error_bodies_as_objects_or_strings() {
        let m = |v: Value| {
            serde_json::from_value::<ErrorBody>(v)
                .unwrap()
                .error
                .map(|e| e.message().to_string())
        };
        assert_eq!(
            m(json!({"error": {"message": "boom", "code": 5}})).unwrap(),
            "boom"
        );
        assert_eq!(m(json!({"error": "boom"})).unwrap(), "boom");
        assert_eq!(m(json!({"error": {"type": "x"}})).unwrap(), "(no message)");
        assert_eq!(m(json!({"error": null})), None);
        assert_eq!(m(json!({"detail": "x"})), None);
    }
}
