//! Retention: deleting run and chat history (and webhook deliveries) older than a cutoff, in
//! small batches, while daily usage rows stay for billing.

use std::collections::BTreeMap;
use std::ops::Bound;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use surrealdb::types::{RecordId, RecordIdKey, RecordIdKeyRange, Value as NativeValue};

use super::{Native, Result, Store, StoreError};

/// Rows deleted per transaction, so that a purge never holds a long transaction.
const BATCH: u64 = 500;

/// The count a purge batch's script answers with (its last statement).
fn purged_count(out: &[Vec<serde_json::Value>], table: &str) -> Result<u64> {
    out.last()
        .and_then(|rows| rows.first())
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| StoreError::Internal(anyhow::anyhow!("the {table} purge returned no count")))
}

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
        purged.chats = self.purge_chats(cutoff).await?;
        purged.deliveries = self.purge_table("webhook_delivery", cutoff).await?;
        Ok(purged)
    }

    /// Deletes the chats created before `cutoff`, batch by batch; answers how many. A chat's
    /// id is a UUIDv7, whose text sorts by the millisecond it was made in, so the old chats
    /// are a range of record ids read from the start of the table: no index on `created_at`
    /// (schema version 11), which every chat written paid for.
    async fn purge_chats(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let ms = u64::try_from(cutoff.timestamp_millis()).unwrap_or(0);
        let bound = format!(
            "{:08x}-{:04x}-7000-8000-000000000000",
            ms >> 16,
            ms & 0xffff
        );
        let range = RecordId::new(
            "chat",
            RecordIdKey::Range(Box::new(RecordIdKeyRange {
                start: Bound::Unbounded,
                end: Bound::Excluded(RecordIdKey::String(bound)),
            })),
        );
        let mut total = 0;
        loop {
            let mut native = Native::new();
            native.insert("old_chats", NativeValue::RecordId(range.clone()));
            let out = self
                .run_retrying_native(
                    "LET $old = (SELECT VALUE id FROM $old_chats WHERE created_at < <datetime>$cutoff \
                       LIMIT $n); \
                     DELETE $old; RETURN array::len($old);",
                    json!({"cutoff": cutoff, "n": BATCH}),
                    native,
                )
                .await?;
            let n = purged_count(&out, "chat")?;
            total += n;
            if n < BATCH {
                return Ok(total);
            }
        }
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
            let n = purged_count(&out, table)?;
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

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};
    use serde_json::json;

    use super::super::testing::store;
    use super::super::{ChatRecord, Period};

    /// A chat of `acme` made `age` ago, with an id made then (as every chat's is).
    fn chat_made(age: Duration) -> ChatRecord {
        let at = Utc::now() - age;
        let ms = u64::try_from(at.timestamp_millis()).unwrap();
        let stamp = uuid::Timestamp::from_unix(
            uuid::NoContext,
            ms / 1000,
            u32::try_from(ms % 1000).unwrap() * 1_000_000,
        );
        ChatRecord {
            id: uuid::Uuid::new_v7(stamp).to_string(),
            tenant: "acme".into(),
            model: "m".into(),
            finish_reason: "stop".into(),
            tokens_used: 1,
            created_at: at,
        }
    }

    #[tokio::test]
    async fn chats_older_than_the_cutoff_are_purged_and_no_others() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        let days = |d: i64| Duration::days(d);
        let chats: Vec<ChatRecord> = [days(40), days(31), days(29), Duration::seconds(1)]
            .into_iter()
            .map(chat_made)
            .collect();
        for chat in &chats {
            store.record_chat(chat, &period).await.unwrap();
        }
        let purged = store.purge_before(Utc::now() - days(30)).await.unwrap();
        assert_eq!(purged.chats, 2);
        let left: Vec<String> = store
            .rows(
                "SELECT VALUE <string> record::id(id) FROM chat ORDER BY id",
                json!({}),
                0,
            )
            .await
            .unwrap();
        assert_eq!(left, [chats[2].id.clone(), chats[3].id.clone()]);
        let again = store.purge_before(Utc::now() - days(30)).await.unwrap();
        assert_eq!(again.chats, 0);
    }
}
