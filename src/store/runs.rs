//! Runs and chats: quota reservations, run records, and the counters updated with each final state.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ledger::{Op, Outcome};
use super::usage::Period;
use super::{Result, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
        }
    }
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
    pub day_key: String,
    pub date: String,
}

pub(super) fn reservation(tenant: &str, period: &Period, at: DateTime<Utc>) -> Reservation {
    let date = at.date_naive().to_string();
    Reservation {
        tenant: tenant.to_string(),
        period_key: format!("{tenant}|{}", period.start.date_naive()),
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

/// Attempts at a statement that lost a write race to another transaction.
const CONFLICT_RETRIES: usize = 50;

impl Store {
    /// Runs `sql` again while it loses write races (optimistic transactions), with a short jittered pause.
    pub(super) async fn run_retrying(&self, sql: &str, vars: Value) -> Result<Vec<Vec<Value>>> {
        let mut attempt = 0;
        loop {
            match self.run(sql, vars.clone()).await {
                Err(StoreError::Conflict(_)) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    let jitter = rand::random::<u64>() % (1 + 2 * attempt as u64);
                    tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
                }
                other => return other,
            }
        }
    }

    /// Whether the tenant may still spend tokens in `period` (chats take no run slot).
    pub async fn tokens_left(
        &self,
        tenant: &str,
        period: &Period,
        quota_tokens: u64,
    ) -> Result<bool> {
        let key = format!("{tenant}|{}", period.start.date_naive());
        let rows: Vec<Value> = self
            .rows(
                "SELECT tokens FROM type::record('usage_period', $key)",
                json!({"key": key}),
                0,
            )
            .await?;
        let used = rows.first().and_then(|r| r["tokens"].as_u64()).unwrap_or(0);
        Ok(used < quota_tokens)
    }

    /// Starts a run: in one transaction, takes a run from the tenant's quota for `period` —
    /// unless the period's runs (settled and in flight) have reached `quota_runs` or its settled
    /// tokens have reached `quota_tokens` — numbers the run among its agent's runs (sets
    /// `run.seq`) and stores it as `running`, so a crash leaves a trace to recover. `None` when
    /// the quota refuses; nothing is stored then. Concurrent callers, on any number of
    /// instances, never overshoot the run quota (a lost write race is run again).
    #[tracing::instrument(skip(self, period, run), fields(run = %run.id))]
    pub async fn begin_run(
        &self,
        period: &Period,
        quota_runs: u64,
        quota_tokens: u64,
        run: &mut RunRecord,
    ) -> Result<Option<Reservation>> {
        let r = reservation(&run.tenant, period, run.started_at);
        let op = Op::Begin {
            period: *period,
            quota_runs,
            quota_tokens,
            run: run.clone(),
        };
        match self.write(op).await? {
            Outcome::Begin(Some(seq)) => {
                run.seq = seq;
                Ok(Some(r))
            }
            Outcome::Begin(None) => Ok(None),
            other => Err(StoreError::Internal(anyhow::anyhow!(
                "a run start answered {other:?}"
            ))),
        }
    }

    /// Stores the final state of a run and, in the same transaction, settles its reservation
    /// and updates usage and the agent's counters. Idempotent: only a `running` run is settled,
    /// so a retried call never counts twice. A run that another instance already failed as
    /// interrupted (its lease ran out while this one was cut off from the database) gets its
    /// real outcome and tokens, once. `false` when there was nothing to settle.
    #[tracing::instrument(skip(self, run, reservation), fields(run = %run.id))]
    pub async fn finish_run(&self, reservation: &Reservation, run: &RunRecord) -> Result<bool> {
        let op = Op::Settle {
            reservation: reservation.clone(),
            run: run.clone(),
        };
        // The usual case: the run is still `running`; it settles with its counters.
        if self.write(op).await? == Outcome::Settle(true) {
            return Ok(true);
        }
        let vars = json!({
            "r": run, "period": reservation.period_key, "day": reservation.day_key,
            "tenant": reservation.tenant, "date": reservation.date,
            "completed": u64::from(run.status == RunStatus::Completed),
        });
        // Failed as interrupted meanwhile (already counted as a run): the real outcome and
        // its tokens replace the interruption, once.
        let amend = "BEGIN; \
            LET $done = (UPDATE type::record('run', [$r.agent_id, $r.seq]) SET status = $r.status, \
              output = $r.output ?? NONE, error = $r.error ?? NONE, \
              finished_at = <option<datetime>>($r.finished_at ?? NONE), duration_ms = $r.duration_ms ?? NONE, \
              tokens_used = $r.tokens_used, reaped = NONE WHERE status = 'failed' AND reaped = true RETURN VALUE run_id); \
            IF array::len($done) > 0 { \
              UPDATE type::record('usage_period', $period) SET tokens += $r.tokens_used; \
              UPSERT type::record('usage_daily', $day) SET tenant = $tenant, date = $date, tokens += $r.tokens_used; \
              UPSERT type::record('agent_state', $r.agent_id) SET completed_runs += $completed; \
            }; \
            RETURN array::len($done) > 0; \
            COMMIT;";
        Ok(last_bool(&self.run_retrying(amend, vars).await?))
    }

    /// Stores a finished chat and adds its tokens to usage, in one transaction. Idempotent: a
    /// chat already stored is not counted again.
    #[tracing::instrument(skip(self, chat, period), fields(chat = %chat.id))]
    pub async fn record_chat(&self, chat: &ChatRecord, period: &Period) -> Result<()> {
        let op = Op::Chat {
            chat: chat.clone(),
            period: *period,
        };
        self.write(op).await?;
        Ok(())
    }

    /// A page of one agent's runs, newest first: the runs numbered `state.run_seq - offset`
    /// down (not below those retention deleted), read as one range of record ids — a page
    /// costs the same whatever the length of the history.
    #[tracing::instrument(skip(self, state))]
    pub async fn runs(
        &self,
        agent_id: &str,
        state: &AgentState,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<RunRecord>> {
        let hi = state.run_seq.saturating_sub(offset);
        let lo = hi.saturating_sub(limit).max(state.purged_seq);
        if hi <= lo {
            return Ok(Vec::new());
        }
        // Whole records: a projection costs an expression per field per row, more than
        // decoding the few fields a run has beyond `RunRecord`'s. All but the record id
        // (`[agent_id, seq]`, both fields of their own), which would be formatted as text
        // only to be dropped: 6% of the call in `bench_db_calls`.
        let sql = "SELECT * OMIT id FROM run:[$agent, $lo]..=[$agent, $hi]";
        let mut page: Vec<RunRecord> = self
            .rows(sql, json!({"agent": agent_id, "lo": lo + 1, "hi": hi}), 0)
            .await?;
        // The range comes oldest first.
        page.reverse();
        Ok(page)
    }

    /// Counters of the given agents (by agent id), recording now as first-seen for new ones.
    #[tracing::instrument(skip(self, agents))]
    pub async fn agent_states(
        &self,
        tenant: &str,
        agents: &[(String, String)],
    ) -> Result<Vec<AgentState>> {
        if agents.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<Value> = agents
            .iter()
            .map(|(id, name)| json!({"id": id, "name": name}))
            .collect();
        // Usually every agent was seen before: one read, no write transaction.
        let read = "RETURN $agents.map(|$a| type::record('agent_state', $a.id).{created_at, total_runs, completed_runs, last_run, run_seq, purged_seq});";
        let states = super::returned(self.run(read, json!({"agents": list})).await?);
        if states.iter().all(|s| !s["created_at"].is_null()) {
            return super::decode_rows(states, "agent_state");
        }
        let sql = "FOR $a IN $agents { \
                     IF !record::exists(type::record('agent_state', $a.id)) { \
                       UPSERT type::record('agent_state', $a.id) SET tenant = $tenant, name = $a.name, \
                         created_at = created_at ?? time::now(); \
                     }; \
                   }; \
                   RETURN $agents.map(|$a| type::record('agent_state', $a.id).{created_at, total_runs, completed_runs, last_run, run_seq, purged_seq});";
        let out = self
            .run_retrying(sql, json!({"agents": list, "tenant": tenant}))
            .await?;
        super::decode_returned(out, "agent_state")
    }
}

impl Store {
    /// Creates `n` completed runs of one agent started today, in batches, with their counters
    /// and usage (benchmarks and load tests: `bench/fill.rs`). Not used by the server.
    pub async fn generate_runs(
        &self,
        tenant: &str,
        agent: &str,
        agent_id: &str,
        period: &Period,
        n: u64,
    ) -> Result<()> {
        const BATCH: u64 = 5_000;
        let now = chrono::Utc::now();
        let r = reservation(tenant, period, now);
        let mut done = 0;
        while done < n {
            let count = BATCH.min(n - done);
            let sql = "BEGIN; \
                LET $base = (UPSERT type::record('agent_state', $agent_id) SET tenant = $tenant, name = $agent, \
                  created_at = created_at ?? time::now(), run_seq += $count RETURN run_seq)[0].run_seq - $count; \
                FOR $i IN 0..$count { \
                  LET $id = rand::uuid::v7(); \
                  CREATE type::record('run', [$agent_id, $base + $i + 1]) CONTENT { run_id: <string>$id, seq: $base + $i + 1, \
                    tenant: $tenant, agent: $agent, \
                    agent_id: $agent_id, status: 'completed', input: {message: 'generated'}, output: {response: 'generated'}, \
                    started_at: time::now(), finished_at: time::now(), duration_ms: 1, tokens_used: 10 } RETURN NONE; \
                }; \
                UPSERT type::record('usage_period', $period) SET tenant = $tenant, start = $start, runs += $count, tokens += $count * 10; \
                UPSERT type::record('usage_daily', $day) SET tenant = $tenant, date = $date, runs += $count, tokens += $count * 10; \
                UPSERT type::record('agent_state', $agent_id) SET tenant = $tenant, name = $agent, \
                  created_at = created_at ?? time::now(), total_runs += $count, completed_runs += $count, last_run = time::now(); \
                COMMIT;";
            let vars = json!({
                "count": count, "tenant": tenant, "agent": agent, "agent_id": agent_id,
                "period": r.period_key, "day": r.day_key, "date": r.date,
                "start": period.start.date_naive().to_string(),
            });
            self.run_retrying(sql, vars).await?;
            done += count;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::super::Period;
    use super::super::testing::{finished, run, store};

    /// A run of `tenant` started under the quotas, with its number, or `None` when refused.
    async fn start(
        store: &super::Store,
        period: &Period,
        tenant: &str,
        quotas: (u64, u64),
    ) -> Option<(super::Reservation, super::RunRecord)> {
        let mut r = run(tenant);
        let reserved = store
            .begin_run(period, quotas.0, quotas.1, &mut r)
            .await
            .unwrap();
        reserved.map(|res| (res, r))
    }

    #[tokio::test]
    async fn a_new_period_reserves_within_the_quotas_and_never_over() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        // Zero quotas refuse the first run of a period whose usage row does not exist yet.
        for quotas in [(0, 100), (5, 0)] {
            assert!(
                start(&store, &period, "zero", quotas).await.is_none(),
                "{quotas:?}"
            );
        }
        // A quota of 2: the first run creates the period, the second fits, the third is refused.
        let mut seqs = Vec::new();
        for _ in 0..2 {
            let (_, r) = start(&store, &period, "two", (2, 100)).await.unwrap();
            seqs.push(r.seq);
        }
        assert_eq!(seqs, [1, 2], "runs are numbered in order");
        assert!(start(&store, &period, "two", (2, 100)).await.is_none());
        // Settled tokens at the token quota refuse further runs.
        let (res, r) = start(&store, &period, "tokens", (10, 7)).await.unwrap();
        assert!(store.finish_run(&res, &finished(r, 7)).await.unwrap());
        assert!(start(&store, &period, "tokens", (10, 7)).await.is_none());
    }

    #[tokio::test]
    async fn generated_history_is_consistent_and_paged_newest_first() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        store
            .generate_runs("acme", "echo", "acme-echo", &period, 7)
            .await
            .unwrap();
        let report = store.check(1).await.unwrap();
        assert_eq!(report.violations, [], "{:?}", report.violations);
        assert_eq!(report.runs, 7);
        let state = store
            .agent_states("acme", &[("acme-echo".into(), "echo".into())])
            .await
            .unwrap()
            .remove(0);
        let seqs = |page: Vec<super::RunRecord>| page.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(store.runs("acme-echo", &state, 0, 3).await.unwrap()),
            [7, 6, 5]
        );
        assert_eq!(
            seqs(store.runs("acme-echo", &state, 6, 3).await.unwrap()),
            [1]
        );
        assert!(
            store
                .runs("acme-echo", &state, 7, 3)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
