//! Reads of run history and agent counters: a page of an agent's runs, the counters of agents,
//! the tokens a tenant has left.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use surrealdb::types::RecordId;

use super::records::{AgentState, RunRecord};
use super::usage::{Period, period_tokens};
use super::{Result, Store, returned};

impl Store {
    /// Whether the tenant may still spend tokens in `period` (chats take no run slot).
    pub async fn tokens_left(
        &self,
        tenant: &str,
        period: &Period,
        quota_tokens: u64,
    ) -> Result<bool> {
        let key = format!("{tenant}|{}", period.start.date_naive());
        let sql = format!("RETURN {};", period_tokens("$key"));
        let out = self.run(&sql, json!({"key": key})).await?;
        let used = returned(out).first().and_then(Value::as_u64).unwrap_or(0);
        Ok(used < quota_tokens)
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
        let read = read_agent_states(agents.len());
        // Usually every agent was seen before: one read, no write transaction.
        let states = returned(
            self.run_native(&read, json!({}), agent_rows(agents))
                .await?,
        );
        if states.iter().all(|s| !s["state"]["created_at"].is_null()) {
            return agent_states(states);
        }
        let list: Vec<Value> = agents
            .iter()
            .map(|(id, name)| json!({"id": id, "name": name}))
            .collect();
        let sql = "FOR $a IN $agents { \
                     IF !record::exists(type::record('agent_state', $a.id)) { \
                       UPSERT type::record('agent_state', $a.id) SET tenant = $tenant, name = $a.name, \
                         created_at = created_at ?? time::now(); \
                     }; \
                   }; ";
        let out = self
            .run_retrying_native(
                &format!("{sql}{read}"),
                json!({"agents": list, "tenant": tenant}),
                agent_rows(agents),
            )
            .await?;
        agent_states(returned(out))
    }
}

/// Each of `n` agents as `{state, settled}`: its `agent_state` and `agent_settled` rows, the
/// record ids bound as `$s<i>` and `$t<i>` ([`agent_rows`]). A literal per agent: mapping a
/// closure over the list of agents cost SurrealDB's evaluator four times as much
/// (`bench_statements … "agent counters"`, `mem://`: 20 agents 1511–1553 µs against
/// 336–389 µs, one agent 138 µs against 59 µs).
fn read_agent_states(n: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{ state: $s{i}.{{created_at, total_runs, completed_runs, last_run, run_seq, purged_seq}}, \
                 settled: $t{i}.{{total_runs, completed_runs, last_run}} }}"
            )
        })
        .collect();
    format!("RETURN [{}];", items.join(", "))
}

/// The record ids [`read_agent_states`] reads, for `agents` (by agent id).
fn agent_rows(agents: &[(String, String)]) -> super::Native {
    let mut rows = super::Native::new();
    for (i, (id, _)) in agents.iter().enumerate() {
        rows.insert(format!("s{i}"), RecordId::new("agent_state", id.as_str()));
        rows.insert(format!("t{i}"), RecordId::new("agent_settled", id.as_str()));
    }
    rows
}

/// Agents' counters from [`read_agent_states`]' rows: what starts wrote, plus what settlements
/// counted (before version 9 of the schema, and on instances of the previous version, they
/// counted on the first row).
fn agent_states(rows: Vec<Value>) -> Result<Vec<AgentState>> {
    rows.into_iter()
        .map(|mut row| {
            let mut state: AgentState =
                serde_json::from_value(row["state"].take()).map_err(|e| {
                    super::StoreError::Internal(anyhow::anyhow!("decoding agent_state: {e}"))
                })?;
            let settled = &row["settled"];
            let n = |name: &str| settled[name].as_u64().unwrap_or(0);
            state.total_runs += n("total_runs");
            state.completed_runs += n("completed_runs");
            let last: Option<DateTime<Utc>> = serde_json::from_value(settled["last_run"].clone())
                .ok()
                .flatten();
            state.last_run = state.last_run.max(last);
            Ok(state)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::super::Period;
    use super::super::testing::store;

    #[tokio::test]
    async fn generated_history_is_consistent_and_paged_newest_first() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        store
            .generate_runs("acme", "echo", "acme-echo", &period, 7, 9)
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

    #[tokio::test]
    async fn counters_of_several_agents_come_in_their_order_new_ones_recorded() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        store
            .generate_runs("acme", "echo", "acme-echo", &period, 4, 9)
            .await
            .unwrap();
        let agents = |names: &[&str]| -> Vec<(String, String)> {
            names
                .iter()
                .map(|n| (format!("acme-{n}"), (*n).to_string()))
                .collect()
        };
        // A new agent among known ones: recorded as first seen, in a write transaction.
        let first = store
            .agent_states("acme", &agents(&["zed", "echo", "idle"]))
            .await
            .unwrap();
        let runs: Vec<u64> = first.iter().map(|s| s.total_runs).collect();
        assert_eq!(runs, [0, 4, 0]);
        assert_eq!(first[1].run_seq, 4);
        // All known now: the read alone answers, with the same first-seen times.
        let again = store
            .agent_states("acme", &agents(&["idle", "zed", "echo"]))
            .await
            .unwrap();
        let runs: Vec<u64> = again.iter().map(|s| s.total_runs).collect();
        assert_eq!(runs, [0, 0, 4]);
        assert_eq!(again[0].created_at, first[2].created_at);
        assert_eq!(again[1].created_at, first[0].created_at);
    }
}
