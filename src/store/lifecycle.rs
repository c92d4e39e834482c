//! A run as a resource: fetched by its id, its steps written as they happen and read from
//! any instance, and cancel requests noted for the instance running it.

use serde_json::{Value, json};

use super::records::{RunRecord, Step};
use super::{Result, Store, StoreError};

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

    /// Runs of this instance, among `running`, whose cancel was requested.
    pub async fn cancels_requested(&self, running: &[String]) -> Result<Vec<String>> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let sql = "RETURN $runs.filter(|$id| { \
                     LET $ref = type::record('run_ref', $id); \
                     RETURN type::record('run', [$ref.agent_id, $ref.seq]).cancel = true; \
                   });";
        let out = self.run(sql, json!({"runs": running})).await?;
        Ok(super::returned(out)
            .into_iter()
            .filter_map(|v| v.as_str().map(String::from))
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
