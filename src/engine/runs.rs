//! Runs: input checks, the quota reservation, the conversation with tools, the output checked
//! against the agent's `output_schema` (with one repair), the record and its counters; and a
//! page of an agent's run history.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::{Map, Value};
use tokio::time::Instant;
use tracing::Instrument;

use super::detach::{Detached, panic_text, panicked};
use super::error::{EngineError, Result, invalid};
use super::tool_loop::{Delivery, Ended, Progress, converse};
use super::{Engine, Listing, agent_id};
use crate::agents::{Agent, AgentStatus};
use crate::llm::{ChatRequest, Message, Role};
use crate::store::{Period, Reservation, RunRecord, RunStatus, Step, StoreError, Tenant};
use tokio_util::sync::CancellationToken;

/// The user message of a run: the input's message, then its context as JSON.
fn run_prompt(input: &Map<String, Value>) -> String {
    let mut text = input
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let rest: Map<String, Value> = input
        .iter()
        .filter(|(k, _)| *k != "message")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !rest.is_empty() {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str("Input (JSON):\n");
        text.push_str(&Value::Object(rest).to_string());
    }
    text
}

/// JSON bytes of a value.
fn json_len(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// Checks a run's `input`: at most `max_bytes` as JSON, `message` a string, `context` an
/// object, then the agent's `input_schema`.
fn check_input(agent: &Agent, input: &Map<String, Value>, max_bytes: usize) -> Result<()> {
    let size = json_len(&Value::Object(input.clone()));
    if size > max_bytes {
        return Err(invalid(
            "input",
            format!(
                "is {size} bytes as JSON; a run's input may have at most {max_bytes} (limits.max_run_input_bytes)"
            ),
        ));
    }
    if let Some(m) = input.get("message")
        && !m.is_string()
    {
        return Err(invalid(
            "input.message",
            format!("expected a string, got {m}"),
        ));
    }
    if let Some(c) = input.get("context")
        && !c.is_object()
    {
        return Err(invalid(
            "input.context",
            format!("expected an object, got {c}"),
        ));
    }
    if let Some(v) = &agent.input_validator {
        let value = Value::Object(input.clone());
        if let Some(e) = v.iter_errors(&value).next() {
            let path = e.instance_path().to_string();
            let field = format!("input{}", path.replace('/', "."));
            return Err(invalid(
                field,
                format!("does not match the agent's input_schema: {e}"),
            ));
        }
    }
    Ok(())
}

/// The output as a JSON object satisfying the schema, or what is wrong with it.
fn check_output(validator: &jsonschema::Validator, content: &str) -> Result<Value, String> {
    let value = match serde_json::from_str::<Value>(content.trim()) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Err(
                "the model's output is not a JSON object, as the output_schema requires"
                    .to_string(),
            );
        }
    };
    let problem = validator.iter_errors(&value).next().map(|e| {
        format!(
            "the model's output does not match the output_schema at '{}': {e}",
            e.instance_path()
        )
    });
    match problem {
        None => Ok(value),
        Some(p) => Err(p),
    }
}

/// The `error` of a cancelled run.
const CANCELLED: &str = "the run was cancelled";
/// The `error` of a run whose model work panicked (the cause is logged).
const PANICKED: &str = "internal error while running the agent; the cause is logged";

/// How long after its agent's timeout a run may still be `running` before any instance fails
/// it as overdue (writing its record takes a moment; a lost task never writes it).
pub const RUN_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// What a run's model work produced.
struct Outcome {
    output: Option<Value>,
    error: Option<String>,
    tokens: u64,
    /// Stopped by a cancel.
    cancelled: bool,
}

impl Outcome {
    fn completed(output: Value, tokens: u64) -> Self {
        Outcome {
            output: Some(output),
            error: None,
            tokens,
            cancelled: false,
        }
    }
    fn failed(error: String, tokens: u64) -> Self {
        Outcome {
            output: None,
            error: Some(error),
            tokens,
            cancelled: false,
        }
    }
    fn cancelled(tokens: u64) -> Self {
        Outcome {
            cancelled: true,
            ..Outcome::failed(CANCELLED.into(), tokens)
        }
    }

    /// The outcome as stored: an output over `max_output` bytes fails the run, and an error
    /// is cut to [`MAX_ERROR_BYTES`] (a validation message may quote the whole output).
    fn bounded(self, max_output: usize) -> Self {
        let mut out = match &self.output {
            Some(v) if json_len(v) > max_output => Outcome::failed(
                format!(
                    "the output is {} bytes as JSON; a run's output may have at most {max_output} (limits.max_run_output_bytes)",
                    json_len(v)
                ),
                self.tokens,
            ),
            _ => self,
        };
        if let Some(e) = &mut out.error
            && e.len() > MAX_ERROR_BYTES
        {
            let mut cut = MAX_ERROR_BYTES;
            while !e.is_char_boundary(cut) {
                cut -= 1;
            }
            e.truncate(cut);
            e.push_str("...");
        }
        out
    }
}

/// The longest `error` a run stores.
const MAX_ERROR_BYTES: usize = 4096;

impl Engine {
    /// Runs agent `name` for `tenant`. Refusals (unknown agent, bad input, quota, a reused
    /// idempotency key) are errors; a run that started is always answered as its stored
    /// record: `completed`, `failed` or `cancelled` — or, in the background, `running`.
    ///
    /// Once started, a run completes even if its caller goes away (a client whose connection
    /// was reset, a proxy that gave up): its work is done in the caller's task while the caller
    /// waits and moves to a task of its own if the caller is dropped ([`Detached`]); in the
    /// background it is a task of its own from the start. So it always settles with its tokens
    /// and its reservation. A panic of its model work fails it; a cancel stops it.
    #[tracing::instrument(skip(self, tenant, input, ask), fields(tenant = %tenant.slug))]
    pub async fn run_agent(
        self: &Arc<Self>,
        tenant: &Tenant,
        name: &str,
        input: Map<String, Value>,
        ask: RunAsk,
    ) -> Result<RunAnswer> {
        let agent = self.agent(tenant, name)?;
        if agent.spec.status == AgentStatus::Disabled {
            return Err(EngineError::AgentDisabled(name.to_string()));
        }
        check_input(&agent, &input, self.settings.limits.max_run_input_bytes)?;
        let now = self.clock.now();
        if let Some(key) = &ask.idempotency
            && let Some(replay) = self.claim_for_run(tenant, key, now).await?
        {
            return Ok(replay);
        }
        let period = self.period_at(now);
        let mut run = RunRecord::running(
            &tenant.slug,
            name,
            agent_id(&tenant.slug, name),
            Value::Object(input.clone()),
            now,
        );
        let timeout = chrono::TimeDelta::milliseconds(
            i64::try_from(agent.spec.timeout_ms).unwrap_or(i64::MAX / 2),
        );
        run.deadline = now.checked_add_signed(timeout + RUN_GRACE);
        run.agent_version = Some(agent.version.clone());
        let begun = self
            .store
            .begin_run(&period, tenant.quota_runs, tenant.quota_tokens, &mut run)
            .await
            .map_err(EngineError::from)
            .and_then(|r| r.ok_or_else(|| run_quota_exceeded(tenant, &period)));
        let reservation = match begun {
            Ok(r) => r,
            Err(e) => {
                if let Some(key) = &ask.idempotency {
                    self.release_key(tenant, key).await;
                }
                return Err(e);
            }
        };
        let cancel = self.in_flight.start(&run);
        let engine = Arc::clone(self);
        let started = run.clone();
        let work = async move {
            let id = run.id.clone();
            let done = engine
                .complete_run(&agent, &input, run, reservation, &cancel)
                .await;
            engine.in_flight.end(&id);
            done
        }
        .in_current_span();
        // From here on the run settles even if this request is dropped at the next await: its
        // work is a task of its own (in the background) or detached.
        let waited = if ask.background {
            tokio::spawn(work);
            None
        } else {
            Some(Detached::new(work))
        };
        if let Some(key) = &ask.idempotency
            && let Err(e) = self
                .store
                .idempotent_run(&tenant.slug, &key.key, &started.id, ask.background)
                .await
        {
            tracing::warn!(run = %started.id, error = %e, "the run's idempotency key does not name it yet");
        }
        let Some(work) = waited else {
            return Ok(RunAnswer {
                run: started,
                steps: Vec::new(),
                replayed: false,
                background: true,
            });
        };
        let (run, steps) = work.await.map_err(|panic| panicked("a run", &panic))??;
        Ok(RunAnswer {
            run,
            steps,
            replayed: false,
            background: false,
        })
    }

    /// A started run's model work (stopped by `cancel`), its steps written as they happen, and
    /// its final record, stored with its counters.
    async fn complete_run(
        &self,
        agent: &Agent,
        input: &Map<String, Value>,
        mut run: RunRecord,
        reservation: Reservation,
        cancel: &CancellationToken,
    ) -> Result<(RunRecord, Vec<Step>)> {
        let (steps_tx, steps_rx) = tokio::sync::mpsc::unbounded_channel();
        let progress = Progress::with_steps(Arc::clone(&self.clock), steps_tx);
        let run_id = &run.id;
        let work = async move {
            let outcome = tokio::select! {
                outcome = AssertUnwindSafe(self.execute(agent, input, &progress)).catch_unwind() => {
                    outcome.unwrap_or_else(|panic| {
                        let what = panic_text(&*panic);
                        tracing::error!(run = %run_id, panic = %what, "the model work of a run panicked");
                        Outcome::failed(PANICKED.into(), progress.tokens())
                    })
                }
                // Dropping the model work aborts the provider's request at once.
                () = cancel.cancelled() => Outcome::cancelled(progress.tokens()),
            };
            // Its steps end here: the writer writes what it has not and stops.
            drop(progress);
            outcome
        };
        // The steps are written as they come, beside the model work, in this task. A panic of
        // the writer loses the steps, never the run's settlement.
        let writer = async {
            let written =
                AssertUnwindSafe(write_steps(self.store.clone(), run.id.clone(), steps_rx))
                    .catch_unwind()
                    .await;
            match written {
                Ok(written) => written,
                Err(panic) => {
                    tracing::error!(run = %run_id, panic = %panic_text(&*panic), "the writer of a run's steps panicked");
                    (Vec::new(), 0)
                }
            }
        };
        let (outcome, (steps, written)) = tokio::join!(work, writer);
        let unwritten: Vec<(u64, Step)> = (written + 1..)
            .zip(steps[written as usize..].iter().cloned())
            .collect();
        let outcome = outcome.bounded(self.settings.limits.max_run_output_bytes);
        run.status = match (&outcome.error, outcome.cancelled) {
            (_, true) => RunStatus::Cancelled,
            (None, false) => RunStatus::Completed,
            (Some(_), false) => RunStatus::Failed,
        };
        run.output = outcome.output;
        run.error = outcome.error;
        run.tokens_used = outcome.tokens;
        let finished = self.clock.now();
        run.finished_at = Some(finished);
        run.duration_ms =
            Some(u64::try_from((finished - run.started_at).num_milliseconds()).unwrap_or_default());
        run.deadline = None;
        if let Some(e) = &run.error {
            tracing::warn!(agent = %agent.name, run = %run.id, error = %e, "run failed");
        }
        let period = self.period_at(run.started_at).start.date_naive();
        self.keyring.spent(&run.tenant, period, run.tokens_used);
        match self.store.finish_run(&reservation, &run, &unwritten).await {
            // Its events, if the tenant has endpoints, go out at once.
            Ok(settled) if settled.now => {
                if settled.webhooks {
                    self.webhooks.wake.notify_one();
                }
            }
            Ok(_) => {
                tracing::error!(run = %run.id, "the run was already final in the database; its outcome was not stored again")
            }
            // The model work is done and paid for: answer it, and store it when the database
            // is back rather than lose it.
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(run = %run.id, error = %e, "the database is unavailable; the run's record will be stored when it returns");
                let (store, run) = (self.store.clone(), run.clone());
                self.store_later(format!("run {}", run.id), move || {
                    let (store, reservation, run, unwritten) = (
                        store.clone(),
                        reservation.clone(),
                        run.clone(),
                        unwritten.clone(),
                    );
                    Box::pin(async move {
                        store
                            .finish_run(&reservation, &run, &unwritten)
                            .await
                            .map(|_| ())
                    })
                });
            }
            Err(e) => return Err(e.into()),
        }
        Ok((run, steps))
    }

    /// The model work of a run, within the agent's `timeout_ms`: the conversation with tools,
    /// then the output checked against the agent's `output_schema`, with one repair attempt
    /// that shows the model what was wrong.
    async fn execute(
        &self,
        agent: &Agent,
        input: &Map<String, Value>,
        progress: &Progress,
    ) -> Outcome {
        let Some(route) = self.models.get(&agent.spec.model) else {
            return Outcome::failed(format!("model '{}' is not configured", agent.spec.model), 0);
        };
        let deadline = Instant::now() + Duration::from_millis(agent.spec.timeout_ms);
        let timed_out = || format!("the run timed out after {} ms", agent.spec.timeout_ms);
        let req = ChatRequest {
            model: route.id.clone(),
            messages: vec![
                Message::new(Role::System, agent.spec.system_prompt.clone()),
                Message::new(Role::User, run_prompt(input)),
            ],
            temperature: agent.spec.temperature.or(route.temperature),
            max_tokens: Some(agent.spec.max_tokens),
            tools: crate::tools::specs(&agent.spec.tools),
            response_schema: agent.spec.output_schema.clone(),
        };
        let talk = converse(
            route,
            req,
            agent.spec.max_tool_iterations,
            Delivery::Complete { deadline },
            &self.telemetry.tool_calls,
            progress,
        )
        .await;
        let mut tokens = talk.tokens;
        let turn = match talk.ended {
            Ended::Answered(t) => t,
            Ended::Failed(e) => return Outcome::failed(e.to_string(), tokens),
            Ended::TimedOut => return Outcome::failed(timed_out(), tokens),
            Ended::Cancelled => return Outcome::cancelled(tokens),
        };
        let (Some(validator), Some(schema)) = (&agent.output_validator, &agent.spec.output_schema)
        else {
            return Outcome::completed(serde_json::json!({"response": turn.content}), tokens);
        };
        let problem = match check_output(validator, &turn.content) {
            Ok(v) => return Outcome::completed(v, tokens),
            Err(p) => p,
        };
        tracing::info!(agent = %agent.name, %problem, "output does not match the schema; asking the model to repair it");
        let mut messages = turn.messages;
        messages.push(Message::new(Role::Assistant, turn.content));
        messages.push(Message::new(
            Role::User,
            format!(
                "Your answer is not valid: {problem}. Answer again with only a JSON object that satisfies this JSON Schema, and nothing else:\n{schema}"
            ),
        ));
        let repair = ChatRequest {
            model: route.id.clone(),
            messages,
            temperature: agent.spec.temperature.or(route.temperature),
            max_tokens: Some(agent.spec.max_tokens),
            tools: Vec::new(),
            response_schema: Some(schema.clone()),
        };
        let talk = converse(
            route,
            repair,
            0,
            Delivery::Complete { deadline },
            &self.telemetry.tool_calls,
            progress,
        )
        .await;
        tokens = tokens.saturating_add(talk.tokens);
        match talk.ended {
            Ended::Answered(answer) => match check_output(validator, &answer.content) {
                Ok(v) => Outcome::completed(v, tokens),
                Err(p) => Outcome::failed(format!("{p} (also after one repair attempt)"), tokens),
            },
            Ended::Failed(e) => {
                Outcome::failed(format!("{problem}; the repair attempt failed: {e}"), tokens)
            }
            Ended::TimedOut => Outcome::failed(timed_out(), tokens),
            Ended::Cancelled => Outcome::cancelled(tokens),
        }
    }

    /// A page of agent `name`'s runs, newest first, and how many there are: every run started
    /// (one in flight shows as `running`), but for those retention deleted.
    #[tracing::instrument(skip(self, tenant), fields(tenant = %tenant.slug))]
    pub async fn list_runs(
        &self,
        tenant: &Tenant,
        name: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Listing<RunRecord>> {
        self.agent(tenant, name)?;
        let id = agent_id(&tenant.slug, name);
        let state = self
            .store
            .agent_states(&tenant.slug, &[(id.clone(), name.to_string())])
            .await?
            .pop()
            .ok_or_else(|| {
                EngineError::Internal(anyhow::anyhow!("no counters returned for agent {id}"))
            })?;
        let total = state.run_seq.saturating_sub(state.purged_seq);
        let items = self.store.runs(&id, &state, offset, limit).await?;
        Ok(Listing { items, total })
    }
}

/// The refusal of a run whose tenant has used up a quota of `period`.
fn run_quota_exceeded(tenant: &Tenant, period: &Period) -> EngineError {
    EngineError::QuotaExceeded(format!(
        "run quota ({} runs) or token quota ({} tokens) of this billing period is used up; it resets at {}",
        tenant.quota_runs,
        tenant.quota_tokens,
        (period.end + chrono::Duration::seconds(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ))
}

/// How a run is asked for.
#[derive(Debug, Clone, Default)]
pub struct RunAsk {
    /// Answer as soon as the run has started (`Prefer: respond-async`).
    pub background: bool,
    pub idempotency: Option<IdempotencyKey>,
}

/// A request's `Idempotency-Key`, and the fingerprint of the request (method, path, body).
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: String,
}

/// A run as answered.
#[derive(Debug, Clone)]
pub struct RunAnswer {
    pub run: RunRecord,
    pub steps: Vec<Step>,
    /// The answer of an earlier request with the same idempotency key.
    pub replayed: bool,
    /// The run was asked for in the background (the first time, for a replay).
    pub background: bool,
}

/// How long a run's new step waits before it is written on its own: a run that ends meanwhile
/// writes it with its settlement instead, one commit fewer.
const STEP_GRACE: Duration = Duration::from_millis(5);

/// Writes a run's steps to the store as they come, numbered from 1, each after
/// [`STEP_GRACE`] (with whatever came meanwhile); returns them all and how many were written.
/// Those that came within the grace before the run ended are left to its settlement.
async fn write_steps(
    store: crate::store::Store,
    run_id: String,
    mut steps: tokio::sync::mpsc::UnboundedReceiver<Step>,
) -> (Vec<Step>, u64) {
    let mut all = Vec::new();
    let mut written = 0;
    while let Some(step) = steps.recv().await {
        all.push(step);
        let grace = Instant::now() + STEP_GRACE;
        loop {
            match tokio::time::timeout_at(grace, steps.recv()).await {
                Ok(Some(step)) => all.push(step),
                // The run ended: its settlement writes the rest.
                Ok(None) => return (all, written),
                Err(_) => break,
            }
        }
        for step in &all[written as usize..] {
            written += 1;
            if let Err(e) = store.append_step(&run_id, written, step).await {
                tracing::warn!(run = %run_id, step = written, error = %e, "a step of the run could not be stored");
            }
        }
    }
    (all, written)
}
