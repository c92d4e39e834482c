//! Recorded model answers: a cassette file holds every provider exchange of an agent's tests
//! (the request as sent, the answer or the error), a recording provider writes them, and a
//! replay provider answers from them without any network.
//!
//! Requests are matched by their canonical form — model, messages, tools, temperature, token
//! limit and response format as JSON — not by their order: a replayed run gets the answer of
//! the first unused recorded exchange whose request equals its own, and a request the cassette
//! does not hold fails, saying where it differs from the nearest recorded one.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    ChatRequest, ChatResponse, Provider, ProviderError, Role, StreamEvent, TokenUsage, ToolCall,
};

/// What the cassettes of this version of `ares` look like; another version is refused.
pub const CASSETTE_VERSION: u32 = 1;

/// The recorded exchanges of one agent's tests: `<agent>.cassette.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cassette {
    pub version: u32,
    /// The agent whose tests made it.
    pub agent: String,
    /// One entry per case, in the order of the tests file.
    pub cases: Vec<CassetteCase>,
}

/// The runs of one case, one per repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassetteCase {
    pub name: String,
    pub runs: Vec<Tape>,
}

/// The exchanges of one run, in the order they happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tape {
    pub exchanges: Vec<Exchange>,
}

/// One provider call: the request in canonical form, and what the provider answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    pub request: Value,
    pub response: Recorded,
}

/// A provider's answer, or its error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Recorded {
    Answer {
        content: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<RecordedCall>,
        finish_reason: String,
        prompt_tokens: u64,
        completion_tokens: u64,
    },
    Error {
        /// `transient` or `fatal`.
        kind: String,
        message: String,
    },
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl Recorded {
    fn of(result: &Result<ChatResponse, ProviderError>) -> Recorded {
        match result {
            Ok(a) => Recorded::Answer {
                content: a.content.clone(),
                tool_calls: a
                    .tool_calls
                    .iter()
                    .map(|c| RecordedCall {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                    })
                    .collect(),
                finish_reason: a.finish_reason.clone(),
                prompt_tokens: a.usage.prompt,
                completion_tokens: a.usage.completion,
            },
            Err(ProviderError::Transient(m)) => Recorded::Error {
                kind: "transient".into(),
                message: m.clone(),
            },
            Err(ProviderError::Fatal(m)) => Recorded::Error {
                kind: "fatal".into(),
                message: m.clone(),
            },
        }
    }

    fn result(&self) -> Result<ChatResponse, ProviderError> {
        match self {
            Recorded::Answer {
                content,
                tool_calls,
                finish_reason,
                prompt_tokens,
                completion_tokens,
            } => Ok(ChatResponse {
                content: content.clone(),
                tool_calls: tool_calls
                    .iter()
                    .map(|c| ToolCall {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                    })
                    .collect(),
                finish_reason: finish_reason.clone(),
                usage: TokenUsage {
                    prompt: *prompt_tokens,
                    completion: *completion_tokens,
                },
            }),
            Recorded::Error { kind, message } if kind == "transient" => {
                Err(ProviderError::Transient(message.clone()))
            }
            Recorded::Error { message, .. } => Err(ProviderError::Fatal(message.clone())),
        }
    }
}

impl Cassette {
    /// An empty cassette of `agent`.
    pub fn new(agent: &str) -> Cassette {
        Cassette {
            version: CASSETTE_VERSION,
            agent: agent.to_string(),
            cases: Vec::new(),
        }
    }

    /// Reads a cassette file.
    pub fn read(path: &Path) -> Result<Cassette, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the cassette {}: {e}", path.display()))?;
        let cassette: Cassette = serde_json::from_str(&text)
            .map_err(|e| format!("the cassette {} is not valid: {e}", path.display()))?;
        if cassette.version != CASSETTE_VERSION {
            return Err(format!(
                "the cassette {} has version {}; this ares reads version {CASSETTE_VERSION}: record it again",
                path.display(),
                cassette.version
            ));
        }
        Ok(cassette)
    }

    /// The file's text: pretty JSON, fields in a fixed order, a final newline.
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a cassette serializes");
        text.push('\n');
        text
    }

    /// The recorded runs of case `name`.
    pub fn case(&self, name: &str) -> Option<&CassetteCase> {
        self.cases.iter().find(|c| c.name == name)
    }
}

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// The canonical form of a request, as recorded and as matched: what a provider is sent.
pub fn canonical(req: &ChatRequest) -> Value {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let mut v = json!({"role": role(m.role), "content": m.content});
            if !m.tool_calls.is_empty() {
                v["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|c| json!({"id": c.id, "name": c.name, "arguments": c.arguments}))
                    .collect();
            }
            if let Some(id) = &m.tool_call_id {
                v["tool_call_id"] = json!(id);
            }
            v
        })
        .collect();
    let tools: Vec<Value> = req
        .tools
        .iter()
        .map(|t| json!({"name": t.name, "description": t.description, "parameters": t.parameters}))
        .collect();
    json!({
        "model": req.model,
        "temperature": req.temperature,
        "max_tokens": req.max_tokens,
        "messages": messages,
        "tools": tools,
        "response_format": req.response_schema,
    })
}

/// An answer as a stream: its content as one delta, then the end.
fn as_stream(
    answer: Result<ChatResponse, ProviderError>,
) -> Result<BoxStream<'static, Result<StreamEvent, ProviderError>>, ProviderError> {
    let a = answer?;
    let events = vec![
        Ok(StreamEvent::Delta(a.content)),
        Ok(StreamEvent::Done {
            finish_reason: a.finish_reason,
            usage: a.usage,
            tool_calls: a.tool_calls,
        }),
    ];
    Ok(stream::iter(events).boxed())
}

/// The exchanges recorded since the last [`Recorder::take`].
#[derive(Debug, Default)]
pub struct Recorder {
    tape: Mutex<Vec<Exchange>>,
}

impl Recorder {
    /// The exchanges recorded so far, leaving the recorder empty.
    pub fn take(&self) -> Tape {
        Tape {
            exchanges: std::mem::take(&mut *self.tape.lock().unwrap_or_else(|p| p.into_inner())),
        }
    }
}

/// A provider that answers as `inner` does and records each exchange.
pub struct RecordingProvider {
    inner: Arc<dyn Provider>,
    recorder: Arc<Recorder>,
}

impl RecordingProvider {
    pub fn new(inner: Arc<dyn Provider>, recorder: Arc<Recorder>) -> Self {
        RecordingProvider { inner, recorder }
    }
}

impl Provider for RecordingProvider {
    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatResponse, ProviderError>> {
        Box::pin(async move {
            let request = canonical(&req);
            let result = self.inner.chat(req).await;
            self.recorder
                .tape
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Exchange {
                    request,
                    response: Recorded::of(&result),
                });
            result
        })
    }

    /// Recorded as one complete answer, sent on as a single piece.
    fn chat_stream(
        &self,
        req: ChatRequest,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<StreamEvent, ProviderError>>, ProviderError>>
    {
        Box::pin(async move { as_stream(self.chat(req).await) })
    }
}

/// What a replayed run did with its tape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Played {
    /// Requests made.
    pub asked: usize,
    /// Recorded exchanges no request matched.
    pub unused: usize,
    /// Each request the tape did not hold, and where it differs from the nearest recorded one.
    pub misses: Vec<String>,
}

#[derive(Debug, Default)]
struct PlayState {
    exchanges: Vec<(Exchange, bool)>,
    asked: usize,
    misses: Vec<String>,
}

/// The tape a replay provider answers from, loaded run by run.
#[derive(Debug, Default)]
pub struct Player {
    state: Mutex<PlayState>,
}

impl Player {
    /// Answers the next run from `tape`.
    pub fn load(&self, tape: Tape) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = PlayState {
            exchanges: tape.exchanges.into_iter().map(|e| (e, false)).collect(),
            ..PlayState::default()
        };
    }

    /// What the run did with its tape.
    pub fn finish(&self) -> Played {
        let state = std::mem::take(&mut *self.state.lock().unwrap_or_else(|p| p.into_inner()));
        Played {
            asked: state.asked,
            unused: state.exchanges.iter().filter(|(_, used)| !used).count(),
            misses: state.misses,
        }
    }

    fn answer(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let request = canonical(req);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.asked += 1;
        let n = state.asked;
        let found = state
            .exchanges
            .iter_mut()
            .find(|(e, used)| !used && e.request == request);
        if let Some((exchange, used)) = found {
            *used = true;
            return exchange.response.result();
        }
        let recorded = state.exchanges.len();
        let nearest = state
            .exchanges
            .iter()
            .enumerate()
            .filter(|(_, (_, used))| !used)
            .map(|(i, (e, _))| (i, e))
            .next();
        let miss = match nearest {
            None => format!(
                "model call {n} of the run is not in the cassette: it holds {recorded} for this run, all answered already"
            ),
            Some((i, e)) => {
                let (at, was, now) =
                    first_difference(&e.request, &request, String::new()).unwrap_or_default();
                format!(
                    "model call {n} of the run is not in the cassette: it differs from recorded call {} at {}: recorded {}, now {}",
                    i + 1,
                    if at.is_empty() { "/" } else { &at },
                    shown(was.as_ref()),
                    shown(now.as_ref())
                )
            }
        };
        state.misses.push(miss.clone());
        Err(ProviderError::Fatal(miss))
    }
}

/// A provider that answers from a [`Player`]'s tape and never opens a connection.
pub struct ReplayProvider {
    player: Arc<Player>,
}

impl ReplayProvider {
    pub fn new(player: Arc<Player>) -> Self {
        ReplayProvider { player }
    }
}

impl Provider for ReplayProvider {
    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatResponse, ProviderError>> {
        Box::pin(async move { self.player.answer(&req) })
    }

    fn chat_stream(
        &self,
        req: ChatRequest,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<StreamEvent, ProviderError>>, ProviderError>>
    {
        Box::pin(async move { as_stream(self.player.answer(&req)) })
    }
}

/// Where two values first differ: the pointer, and the value on each side there.
fn first_difference(
    a: &Value,
    b: &Value,
    at: String,
) -> Option<(String, Option<Value>, Option<Value>)> {
    if a == b {
        return None;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let here = crate::yaml::push_pointer(&at, k);
                match y.get(k) {
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, here) {
                            return Some(d);
                        }
                    }
                    None => return Some((here, Some(v.clone()), None)),
                }
            }
            let (k, w) = y.iter().find(|(k, _)| !x.contains_key(*k))?;
            Some((crate::yaml::push_pointer(&at, k), None, Some(w.clone())))
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let here = format!("{at}/{i}");
                match (x.get(i), y.get(i)) {
                    (Some(v), Some(w)) => {
                        if let Some(d) = first_difference(v, w, here) {
                            return Some(d);
                        }
                    }
                    (v, w) => return Some((here, v.cloned(), w.cloned())),
                }
            }
            None
        }
        _ => Some((at, Some(a.clone()), Some(b.clone()))),
    }
}

/// A value in a message, shortened.
fn shown(v: Option<&Value>) -> String {
    let Some(v) = v else {
        return "nothing".to_string();
    };
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(77).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Message, OfflineProvider};

    fn req(system: &str, user: &str) -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![
                Message::new(Role::System, system),
                Message::new(Role::User, user),
            ],
            temperature: Some(0.3),
            max_tokens: Some(100),
            tools: vec![],
            response_schema: Some(
                json!({"type": "object", "properties": {"a": {"type": "number", "minimum": 0}}}),
            ),
        }
    }

    /// What is recorded, written and read back, answers the same requests the same way, in
    /// any order.
    #[tokio::test]
    async fn a_recorded_tape_replays_through_its_file_in_any_order() {
        let recorder = Arc::new(Recorder::default());
        let recording = RecordingProvider::new(Arc::new(OfflineProvider), recorder.clone());
        let first = recording.chat(req("be brief", "one")).await.unwrap();
        let second = recording.chat(req("be brief", "two")).await.unwrap();
        let mut cassette = Cassette::new("a");
        cassette.cases.push(CassetteCase {
            name: "c".into(),
            runs: vec![recorder.take()],
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cassette.json");
        std::fs::write(&path, cassette.to_text()).unwrap();
        let read = Cassette::read(&path).unwrap();
        assert_eq!(read, cassette);

        let player = Arc::new(Player::default());
        let replay = ReplayProvider::new(player.clone());
        player.load(read.case("c").unwrap().runs[0].clone());
        assert_eq!(replay.chat(req("be brief", "two")).await.unwrap(), second);
        assert_eq!(replay.chat(req("be brief", "one")).await.unwrap(), first);
        assert_eq!(
            player.finish(),
            Played {
                asked: 2,
                unused: 0,
                misses: vec![]
            }
        );
    }

    #[tokio::test]
    async fn a_request_not_on_the_tape_fails_saying_where_it_differs() {
        let recorder = Arc::new(Recorder::default());
        let recording = RecordingProvider::new(Arc::new(OfflineProvider), recorder.clone());
        recording.chat(req("be brief", "one")).await.unwrap();
        let player = Arc::new(Player::default());
        player.load(recorder.take());
        let e = ReplayProvider::new(player.clone())
            .chat(req("be long", "one"))
            .await
            .unwrap_err();
        let ProviderError::Fatal(message) = e else {
            panic!("{e:?}")
        };
        assert!(
            message.contains("at /messages/0/content: recorded \"be brief\", now \"be long\""),
            "{message}"
        );
        let played = player.finish();
        assert_eq!((played.asked, played.unused), (1, 1));
        assert_eq!(played.misses, vec![message]);
    }

    #[tokio::test]
    async fn errors_are_recorded_and_replayed() {
        let recorded = Recorded::of(&Err(ProviderError::Transient("429".into())));
        assert_eq!(
            recorded.result(),
            Err(ProviderError::Transient("429".into()))
        );
        let recorded = Recorded::of(&Err(ProviderError::Fatal("401".into())));
        assert_eq!(recorded.result(), Err(ProviderError::Fatal("401".into())));
    }

    #[test]
    fn another_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cassette.json");
        std::fs::write(&path, r#"{"version": 2, "agent": "a", "cases": []}"#).unwrap();
        let e = Cassette::read(&path).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
    }
}
