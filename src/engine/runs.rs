//! Runs: input checks, the quota reservation, the conversation with tools, the output checked
//! against the agent's `output_schema` (with one repair), the record and its counters; and a
//! page of an agent's run history.

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::error::{EngineError, Result, invalid};
use super::tool_loop::{Delivery, Ended, converse};
use super::{Engine, Listing, agent_id};
use crate::agents::{Agent, AgentStatus};
use crate::llm::{ChatRequest, Message, Role};
use crate::store::{Period, RunRecord, RunStatus, StoreError, Tenant};

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

/// Checks a run's `input`: `message` a string, `context` an object, then the agent's `input_schema`.
fn check_input(agent: &Agent, input: &Map<String, Value>) -> Result<()> {
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

/// The `error` of a run whose conversation was cut off.
const CANCELLED: &str = "the run was cancelled";

/// What a run's model work produced.
struct Outcome {
    output: Option<Value>,
    error: Option<String>,
    tokens: u64,
}

impl Outcome {
    fn completed(output: Value, tokens: u64) -> Self {
        Outcome {
            output: Some(output),
            error: None,
            tokens,
        }
    }
    fn failed(error: String, tokens: u64) -> Self {
        Outcome {
            output: None,
            error: Some(error),
            tokens,
        }
    }
}

impl Engine {
    /// Runs agent `name` for `tenant`. Refusals (unknown agent, bad input, quota) are errors;
    /// a run that started is always answered as its stored record, `completed` or `failed`.
    #[tracing::instrument(skip(self, tenant, input), fields(tenant = %tenant.slug))]
    pub async fn run_agent(
        &self,
        tenant: &Tenant,
        name: &str,
        input: Map<String, Value>,
    ) -> Result<RunRecord> {
        let agent = self
            .agents
            .snapshot()
            .get(&tenant.slug, name)
            .cloned()
            .ok_or_else(|| EngineError::AgentNotFound(name.to_string()))?;
        if agent.spec.status == AgentStatus::Disabled {
            return Err(EngineError::AgentDisabled(name.to_string()));
        }
        check_input(&agent, &input)?;
        let now = self.clock.now();
        let period = self.period_at(now);
        let mut run = RunRecord::running(
            &tenant.slug,
            name,
            agent_id(&tenant.slug, name),
            Value::Object(input.clone()),
            now,
        );
        let reservation = self
            .store
            .begin_run(&period, tenant.quota_runs, tenant.quota_tokens, &mut run)
            .await?
            .ok_or_else(|| run_quota_exceeded(tenant, &period))?;
        let clock = std::time::Instant::now();
        let outcome = self.execute(&agent, &input).await;
        run.status = if outcome.error.is_none() {
            RunStatus::Completed
        } else {
            RunStatus::Failed
        };
        run.output = outcome.output;
        run.error = outcome.error;
        run.tokens_used = outcome.tokens;
        run.finished_at = Some(self.clock.now());
        run.duration_ms = Some(clock.elapsed().as_millis() as u64);
        if let Some(e) = &run.error {
            tracing::warn!(agent = name, run = %run.id, error = %e, "run failed");
        }
        match self.store.finish_run(&reservation, &run).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(run = %run.id, "the run was already final in the database; its outcome was not stored again")
            }
            // The model work is done and paid for: answer it, and store it when the database
            // is back rather than lose it.
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(run = %run.id, error = %e, "the database is unavailable; the run's record will be stored when it returns");
                let (store, run) = (self.store.clone(), run.clone());
                self.store_later(format!("run {}", run.id), move || {
                    let (store, reservation, run) =
                        (store.clone(), reservation.clone(), run.clone());
                    Box::pin(async move { store.finish_run(&reservation, &run).await.map(|_| ()) })
                });
            }
            Err(e) => return Err(e.into()),
        }
        Ok(run)
    }

    /// The model work of a run, within the agent's `timeout_ms`: the conversation with tools,
    /// then the output checked against the agent's `output_schema`, with one repair attempt
    /// that shows the model what was wrong.
    async fn execute(&self, agent: &Agent, input: &Map<String, Value>) -> Outcome {
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
        )
        .await;
        let mut tokens = talk.tokens;
        let turn = match talk.ended {
            Ended::Answered(t) => t,
            Ended::Failed(e) => return Outcome::failed(e.to_string(), tokens),
            Ended::TimedOut => return Outcome::failed(timed_out(), tokens),
            Ended::Cancelled => return Outcome::failed(CANCELLED.into(), tokens),
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
            Ended::Cancelled => Outcome::failed(CANCELLED.into(), tokens),
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
        if self.agents.snapshot().get(&tenant.slug, name).is_none() {
            return Err(EngineError::AgentNotFound(name.to_string()));
        }
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
