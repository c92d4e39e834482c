//! Reads of run history and agent counters: a page of an agent's runs, the counters of agents,
//! the tokens a tenant has left.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

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
        let list: Vec<Value> = agents
            .iter()
            .map(|(id, name)| json!({"id": id, "name": name}))
            .collect();
        // Usually every agent was seen before: one read, no write transaction.
        let states = super::returned(self.run(AGENT_STATES, json!({"agents": list})).await?);
        if states.iter().all(|s| !s["state"]["created_at"].is_null()) {
            return agent_states(states);
        }
        let sql = "FOR $a IN $agents { \
                     IF !record::exists(type::record('agent_state', $a.id)) { \
                       UPSERT type::record('agent_state', $a.id) SET tenant = $tenant, name = $a.name, \
                         created_at = created_at ?? time::now(); \
                     }; \
                   }; ";
        let out = self
            .run_retrying(
                &format!("{sql}{AGENT_STATES}"),
                json!({"agents": list, "tenant": tenant}),
            )
            .await?;
        agent_states(super::returned(out))
    }
}

/// Each agent of `$agents` as `{state, settled}`: its `agent_state` and `agent_settled` rows.
const AGENT_STATES: &str = "RETURN $agents.map(|$a| { \
    state: type::record('agent_state', $a.id).{created_at, total_runs, completed_runs, last_run, run_seq, purged_seq}, \
    settled: type::record('agent_settled', $a.id).{total_runs, completed_runs, last_run} });";

/// Agents' counters from [`AGENT_STATES`]' rows: what starts wrote, plus what settlements
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
}
