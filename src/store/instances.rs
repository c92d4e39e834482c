//! Instances sharing one database: each holds a lease it renews; the runs of an instance whose
//! lease ran out (killed, cut off, its machine gone) are failed as interrupted by any other,
//! and so is any run still running past its deadline, whatever its instance.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{Result, Store};

/// The `error` of a run whose instance stopped while it ran.
pub const INTERRUPTED: &str =
    "interrupted: the ares instance running it stopped before the run finished";
/// The `error` of a run still running past its deadline on a live instance.
pub const OVERDUE: &str =
    "interrupted: the run was still unfinished after its agent's timeout and the grace";

/// How old a run without an instance (stored before instances were recorded) must be before it
/// counts as interrupted.
const UNOWNED_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Runs a pass of [`Store::reap_interrupted`] failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    pub runs: u64,
}

/// A run still marked `running`, with what settling it needs.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct RunningRun {
    pub run_id: String,
    pub tenant: String,
    pub agent: String,
    pub agent_id: String,
    pub seq: u64,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
}

impl RunningRun {
    /// Why the run is failed: its instance stopped, or it is overdue.
    pub(super) fn reason(&self, now: DateTime<Utc>) -> &'static str {
        match self.deadline {
            Some(d) if d < now => OVERDUE,
            _ => INTERRUPTED,
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl Store {
    /// Records this instance, or renews its lease, until `lease` from now (database time).
    pub async fn renew_lease(&self, lease: Duration) -> Result<()> {
        let sql = "UPSERT type::record('instance', $id) SET host = $host, pid = $pid, \
                   started_at = started_at ?? time::now(), \
                   lease_until = time::now() + <duration>$lease RETURN NONE";
        let vars = json!({
            "id": &*self.instance, "host": hostname(), "pid": std::process::id(),
            "lease": format!("{}ms", lease.as_millis()),
        });
        self.run(sql, vars).await?;
        Ok(())
    }

    /// Removes this instance's record (a clean stop, after its requests finished).
    pub async fn retire(&self) -> Result<()> {
        self.run(
            "DELETE type::record('instance', $id)",
            json!({"id": &*self.instance}),
        )
        .await?;
        Ok(())
    }

    /// Runs marked `running` whose instance no longer holds a lease, or whose deadline passed.
    pub(super) async fn orphaned_runs(&self, now: DateTime<Utc>) -> Result<Vec<RunningRun>> {
        let sql = "SELECT run_id, tenant, agent, agent_id, seq, started_at, instance, deadline FROM run \
                     WHERE status = 'running'; \
                   SELECT VALUE <string> record::id(id) FROM instance WHERE lease_until >= time::now();";
        let mut out = self.run(sql, json!({})).await?;
        let live: Vec<String> = out
            .pop()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        let running: Vec<RunningRun> = out
            .pop()
            .unwrap_or_default()
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .map_err(|e| super::StoreError::Internal(anyhow::anyhow!("decoding a run: {e}")))?;
        Ok(running
            .into_iter()
            .filter(|r| {
                r.deadline.is_some_and(|d| d < now)
                    || match &r.instance {
                        Some(i) => !live.contains(i),
                        None => now - r.started_at > UNOWNED_AFTER,
                    }
            })
            .collect())
    }

    /// Fails, as interrupted, every run whose instance's lease ran out, settling its quota
    /// reservation and counting it in usage like any failed run. Safe to run on every instance
    /// at once: a run is settled by whichever transaction finds it still `running`.
    pub async fn reap_interrupted(
        &self,
        period_start_day: u32,
        now: DateTime<Utc>,
    ) -> Result<Reaped> {
        let mut reaped = Reaped::default();
        for run in self.orphaned_runs(now).await? {
            if self.settle_interrupted(&run, period_start_day, now).await? {
                tracing::warn!(run = %run.run_id, agent = %run.agent, tenant = %run.tenant,
                    instance = run.instance.as_deref().unwrap_or("unknown"),
                    reason = run.reason(now), "run failed as interrupted");
                reaped.runs += 1;
            }
        }
        Ok(reaped)
    }
}
