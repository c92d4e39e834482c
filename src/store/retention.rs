//! Retention: deleting run and chat history (and webhook deliveries) older than a cutoff, in
//! small batches, while daily usage rows stay for billing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{Result, Store, StoreError};

/// Rows deleted per transaction, so that a purge never holds a long transaction.
const BATCH: u64 = 500;

/// What a purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub runs: u64,
    pub chats: u64,
    pub deliveries: u64,
}

#[derive(Deserialize)]
struct OldRun {
    agent_id: String,
    seq: u64,
    run_id: String,
}

impl Store {
    /// Deletes finished runs started before `cutoff` and chats created before it, batch by
    /// batch. Records the cutoff first (`retention:horizon`), so checks know which days no
    /// longer have all their runs; each agent's `purged_seq` keeps run listings consistent.
    pub async fn purge_before(&self, cutoff: DateTime<Utc>) -> Result<Purged> {
        self.run(
            "UPSERT retention:horizon SET before = IF before = NONE OR before < <datetime>$cutoff \
             { <datetime>$cutoff } ELSE { before } RETURN NONE",
            json!({"cutoff": cutoff}),
        )
        .await?;
        let mut purged = Purged::default();
        loop {
            let old: Vec<OldRun> = self
                .rows(
                    "SELECT agent_id, seq, run_id FROM run WHERE started_at < <datetime>$cutoff \
                     AND status != 'running' LIMIT $n",
                    json!({"cutoff": cutoff, "n": BATCH}),
                    0,
                )
                .await?;
            if old.is_empty() {
                break;
            }
            let mut top: BTreeMap<&str, u64> = BTreeMap::new();
            for r in &old {
                let t = top.entry(&r.agent_id).or_default();
                *t = (*t).max(r.seq);
            }
            let ids: Vec<_> = old.iter().map(|r| json!([r.agent_id, r.seq])).collect();
            let run_ids: Vec<&str> = old.iter().map(|r| r.run_id.as_str()).collect();
            let tops: Vec<_> = top
                .iter()
                .map(|(a, s)| json!({"agent": a, "seq": s}))
                .collect();
            self.run_retrying(
                "BEGIN; \
                 FOR $id IN $ids { DELETE type::record('run', $id); }; \
                 FOR $r IN $run_ids { DELETE type::record('run_ref', $r); \
                   DELETE run_event:[$r, 0]..=[$r, 1000000]; }; \
                 FOR $t IN $tops { UPDATE type::record('agent_state', $t.agent) \
                   SET purged_seq = IF purged_seq < $t.seq { $t.seq } ELSE { purged_seq }; }; \
                 COMMIT;",
                json!({"ids": ids, "tops": tops, "run_ids": run_ids}),
            )
            .await?;
            purged.runs += old.len() as u64;
        }
        purged.chats = self.purge_table("chat", cutoff).await?;
        purged.deliveries = self.purge_table("webhook_delivery", cutoff).await?;
        Ok(purged)
    }

    /// Deletes the rows of `table` created before `cutoff`, batch by batch; answers how many.
    async fn purge_table(&self, table: &str, cutoff: DateTime<Utc>) -> Result<u64> {
        let mut total = 0;
        loop {
            let out = self
                .run(
                    "LET $old = (SELECT VALUE id FROM type::table($table) \
                       WHERE created_at < <datetime>$cutoff LIMIT $n); \
                     DELETE $old; RETURN array::len($old);",
                    json!({"table": table, "cutoff": cutoff, "n": BATCH}),
                )
                .await?;
            let n = out
                .last()
                .and_then(|rows| rows.first())
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| {
                    StoreError::Internal(anyhow::anyhow!("the {table} purge returned no count"))
                })?;
            total += n;
            if n < BATCH {
                return Ok(total);
            }
        }
    }

    /// The newest retention cutoff, if history was ever purged.
    pub async fn retention_horizon(&self) -> Result<Option<DateTime<Utc>>> {
        #[derive(Deserialize)]
        struct Horizon {
            before: DateTime<Utc>,
        }
        Ok(self
            .rows::<Horizon>("SELECT before FROM retention:horizon", json!({}), 0)
            .await?
            .pop()
            .map(|h| h.before))
    }
}
