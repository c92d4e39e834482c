//! The records of runs and chats, the counters of an agent, and a run's quota reservation, as
//! stored and as the engine sees them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use surrealdb::types::{Array, RecordId, Value as NativeValue};

use super::usage::Period;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    /// Stopped by its tenant; counted like a failed run (it started).
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// One step of a run: a model call or a tool call, in the order they happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// `model` or `tool`.
    pub kind: StepKind,
    /// The model's name, or the tool's.
    pub name: String,
    /// A tool call's arguments as the model gave them (cut to a bound).
    #[serde(default)]
    pub arguments: Option<String>,
    /// A tool call's result (cut to a bound).
    #[serde(default)]
    pub result: Option<String>,
    /// Tokens of a model call (0 for tools).
    #[serde(default)]
    pub tokens: u64,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// Why the step failed; `None` when it did not.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Model,
    Tool,
}

/// One run of an agent, as stored and as answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(rename = "run_id")]
    pub id: String,
    pub tenant: String,
    /// The agent's name.
    pub agent: String,
    pub agent_id: String,
    /// The run's number among its agent's runs, from 1 (0 until it is stored).
    #[serde(default)]
    pub seq: u64,
    pub status: RunStatus,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    pub tokens_used: u64,
    /// While running: when the run is overdue (its start, its agent's timeout and a grace);
    /// any instance fails a run still running after it.
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    /// The version of the agent's definition that ran (runs from before versions have none).
    #[serde(default)]
    pub agent_version: Option<String>,
}

impl RunRecord {
    /// A new `running` run of `agent` (id `agent_id`) of `tenant`, not yet stored: its
    /// number is given by [`Store::begin_run`].
    pub fn running(
        tenant: &str,
        agent: &str,
        agent_id: String,
        input: Value,
        started_at: DateTime<Utc>,
    ) -> RunRecord {
        RunRecord {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: tenant.to_string(),
            agent: agent.to_string(),
            agent_id,
            seq: 0,
            status: RunStatus::Running,
            input,
            output: None,
            error: None,
            started_at,
            finished_at: None,
            duration_ms: None,
            tokens_used: 0,
            deadline: None,
            agent_version: None,
        }
    }
}

/// A completed chat: metadata only, never the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRecord {
    pub id: String,
    pub tenant: String,
    pub model: String,
    pub finish_reason: String,
    pub tokens_used: u64,
    pub created_at: DateTime<Utc>,
}

/// Counters and first-seen time of one agent of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub created_at: DateTime<Utc>,
    /// Finished runs.
    pub total_runs: u64,
    pub completed_runs: u64,
    pub last_run: Option<DateTime<Utc>>,
    /// Runs started (the last run's `seq`).
    #[serde(default)]
    pub run_seq: u64,
    /// Runs numbered up to this one were deleted by retention.
    #[serde(default)]
    pub purged_seq: u64,
}

/// A run slot taken from a tenant's quota for one period; settled by [`Store::finish_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub tenant: String,
    pub period_key: String,
    /// The period's first day (`YYYY-MM-DD`).
    pub start: String,
    pub day_key: String,
    pub date: String,
}

pub(super) fn reservation(tenant: &str, period: &Period, at: DateTime<Utc>) -> Reservation {
    let date = at.date_naive().to_string();
    let start = period.start.date_naive().to_string();
    Reservation {
        tenant: tenant.to_string(),
        period_key: format!("{tenant}|{start}"),
        start,
        day_key: format!("{tenant}|{date}"),
        date,
    }
}

/// The boolean a query's last statement returned (`false` when there is none).
pub(super) fn last_bool(out: &[Vec<Value>]) -> bool {
    out.iter()
        .rev()
        .find_map(|rows| match rows.as_slice() {
            [Value::Bool(b)] => Some(*b),
            _ => None,
        })
        .unwrap_or(false)
}

/// The record id of the run numbered `seq` among agent `agent_id`'s runs, natively.
pub(super) fn run_record_id(agent_id: &str, seq: u64) -> RecordId {
    numbered_id("run", agent_id, seq)
}

/// The record id `table:[owner, n]` (a run among its agent's, a step among its run's), natively.
pub(super) fn numbered_id(table: &str, owner: &str, n: u64) -> RecordId {
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    RecordId::new(
        table,
        Array::from(vec![
            NativeValue::String(owner.to_string()),
            NativeValue::Number(n.into()),
        ]),
    )
}
