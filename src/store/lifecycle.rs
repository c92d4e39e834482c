//! A run as a resource: fetched by its id, its steps written as they happen and read from
//! any instance, and cancel requests noted for the instance running it.

use serde_json::{Value, json};

use super::records::{RunRecord, Step, run_record_id};
use super::{Result, Store, StoreError};

/// A run this instance is running, as the watch for cancels reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInFlight {
    pub run_id: String,
    /// The run's agent and its number among the agent's runs: its record's id.
    pub agent_id: String,
    pub seq: u64,
}

impl From<&RunRecord> for RunInFlight {
    /// A run numbered already.
    fn from(run: &RunRecord) -> Self {
        RunInFlight {
            run_id: run.id.clone(),
            agent_id: run.agent_id.clone(),
            seq: run.seq,
        }
    }
}

/// What a cancel request found.
#[derive(Debug, Clone)]
pub enum CancelRequest {
    /// No run of that id in this tenant.
    NotFound,
    /// The run was running: its instance is asked to stop it.
    Requested(RunRecord),
    /// The run had ended already (completed, failed or cancelled).
    Ended(RunRecord),
}

impl Store {
    /// The tenant's run `run_id`: two direct reads (its reference, then its record).
    pub async fn run_by_id(&self, tenant: &str, run_id: &str) -> Result<Option<RunRecord>> {
        let sql = "LET $ref = type::record('run_ref', $id); \
                   RETURN IF $ref.tenant = $tenant { type::record('run', [$ref.agent_id, $ref.seq]).* } \
                   ELSE { NONE };";
        let out = self
            .run(sql, json!({"id": run_id, "tenant": tenant}))
            .await?;
        decode_run(out)
    }

    /// Writes step `n` (from 1) of run `run_id`.
    pub async fn append_step(&self, run_id: &str, n: u64, step: &Step) -> Result<()> {
        self.run(
            "UPSERT type::record('run_event', [$run, $n]) SET step = $step RETURN NONE;",
            json!({"run": run_id, "n": n, "step": step}),
        )
        .await?;
        Ok(())
    }

    /// The steps of run `run_id` numbered after `after`, in order, with their numbers.
    pub async fn steps_after(&self, run_id: &str, after: u64) -> Result<Vec<(u64, Step)>> {
        let sql = "SELECT id[1] AS n, step FROM run_event:[$run, $from]..=[$run, 1000000];";
        let rows: Vec<Value> = self
            .rows(sql, json!({"run": run_id, "from": after + 1}), 0)
            .await?;
        rows.into_iter()
            .map(|row| {
                let n = row["n"].as_u64().unwrap_or_default();
                serde_json::from_value(row["step"].clone())
                    .map(|step| (n, step))
                    .map_err(|e| StoreError::Internal(anyhow::anyhow!("decoding a step: {e}")))
            })
            .collect()
    }

    /// Asks for the tenant's run `run_id` to be cancelled: marks it when it is running.
    pub async fn request_cancel(&self, tenant: &str, run_id: &str) -> Result<CancelRequest> {
        let sql = "LET $ref = type::record('run_ref', $id); \
                   IF $ref.tenant = $tenant { \
                     UPDATE type::record('run', [$ref.agent_id, $ref.seq]) SET cancel = true \
                       WHERE status = 'running' RETURN NONE; \
                   }; \
                   RETURN IF $ref.tenant = $tenant { type::record('run', [$ref.agent_id, $ref.seq]).* } \
                   ELSE { NONE };";
        let out = self
            .run(sql, json!({"id": run_id, "tenant": tenant}))
            .await?;
        Ok(match decode_run(out)? {
            None => CancelRequest::NotFound,
            Some(run) if run.status == super::RunStatus::Running => CancelRequest::Requested(run),
            Some(run) => CancelRequest::Ended(run),
        })
    }

    /// Runs of this instance, among `running`, whose cancel was requested: one record read
    /// per run.
    pub async fn cancels_requested(&self, running: &[RunInFlight]) -> Result<Vec<String>> {
        let ids = running
            .iter()
            .map(|run| run_record_id(&run.agent_id, run.seq));
        let flags = self.read_each(ids, ".cancel").await?;
        Ok(running
            .iter()
            .zip(flags)
            .filter(|(_, cancel)| cancel.as_bool() == Some(true))
            .map(|(run, _)| run.run_id.clone())
            .collect())
    }
}

/// The run a query's last statement returned, if any.
fn decode_run(out: Vec<Vec<Value>>) -> Result<Option<RunRecord>> {
    let row = out
        .into_iter()
        .last()
        .and_then(|rows| rows.into_iter().next())
        .unwrap_or(Value::Null);
    if !row.is_object() {
        return Ok(None);
    }
    serde_json::from_value(row)
        .map(Some)
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("decoding a run: {e}")))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::super::Period;
    use super::super::testing::{run, store};
    use super::{CancelRequest, RunInFlight};

    #[tokio::test]
    async fn cancels_are_found_among_the_runs_asked_about_and_only_theirs() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        let mut runs = Vec::new();
        for _ in 0..3 {
            let mut r = run("acme");
            store
                .begin_run(&period, 10, 1000, &mut r)
                .await
                .unwrap()
                .unwrap();
            runs.push(r);
        }
        let in_flight: Vec<RunInFlight> = runs.iter().map(RunInFlight::from).collect();
        assert_eq!(
            store.cancels_requested(&in_flight).await.unwrap(),
            Vec::<String>::new()
        );

        for i in [0, 2] {
            let asked = store.request_cancel("acme", &runs[i].id).await.unwrap();
            assert!(matches!(asked, CancelRequest::Requested(_)), "{asked:?}");
        }
        let mut found = store.cancels_requested(&in_flight).await.unwrap();
        found.sort();
        let mut want = vec![runs[0].id.clone(), runs[2].id.clone()];
        want.sort();
        assert_eq!(found, want);
        assert_eq!(
            store.cancels_requested(&in_flight[1..]).await.unwrap(),
            [runs[2].id.clone()],
            "only the runs asked about"
        );
        // A run whose record is not there (numbered wrongly) is not cancelled.
        let mut elsewhere = in_flight[0].clone();
        elsewhere.seq = 99;
        assert_eq!(
            store.cancels_requested(&[elsewhere]).await.unwrap(),
            Vec::<String>::new()
        );
    }
}
