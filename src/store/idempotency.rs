//! Idempotency keys (the IETF `Idempotency-Key` draft): the first request with a key claims
//! it with its fingerprint; a repeat finds the claim and, once the first was answered, its
//! answer. Keys are the tenant's, and kept until they expire.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Result, Store, StoreError};

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is this request's now: execute it.
    New,
    /// The key was claimed for another request (another fingerprint).
    Mismatch,
    /// The first request with this key is still being answered; `run_id` is its run, once
    /// started, and `background` whether it was asked in the background.
    InProgress {
        run_id: Option<String>,
        background: bool,
    },
    /// The first request was answered: its status and body.
    Answered { status: u16, body: String },
}

impl Store {
    /// Claims `key` of `tenant` for a request of `fingerprint`, until `expires_at`, unless a
    /// live claim exists. A claim whose instance stopped before it answered or started a run
    /// is taken over: its request did nothing that a repeat would do twice.
    pub async fn claim_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Claim> {
        let sql = "BEGIN; \
            LET $rec = type::record('idempotency', [$tenant, $key]); \
            LET $old = $rec.{fingerprint, instance, run_id, background, status, body, expires_at}; \
            LET $abandoned = IF $old.fingerprint = NONE OR $old.status != NONE OR $old.run_id != NONE { false } \
              ELSE { (type::record('instance', $old.instance).lease_until ?? d'1970-01-01T00:00:00Z') < time::now() }; \
            LET $fresh = $old.fingerprint = NONE OR $old.expires_at < <datetime>$now OR $abandoned; \
            IF $fresh { UPSERT $rec CONTENT { fingerprint: $fingerprint, instance: $instance, \
              created_at: <datetime>$now, expires_at: <datetime>$expires } RETURN NONE; }; \
            RETURN { fresh: $fresh, old: $old }; \
            COMMIT;";
        let vars = json!({
            "tenant": tenant, "key": key, "fingerprint": fingerprint, "now": now,
            "expires": expires_at, "instance": &*self.instance,
        });
        let out = self.run_retrying(sql, vars).await?;
        let answer = out
            .into_iter()
            .rev()
            .find_map(|rows| rows.into_iter().next())
            .unwrap_or(Value::Null);
        if answer["fresh"] == true {
            return Ok(Claim::New);
        }
        let old = &answer["old"];
        if old["fingerprint"].as_str() != Some(fingerprint) {
            return Ok(Claim::Mismatch);
        }
        match (old["status"].as_u64(), old["body"].as_str()) {
            (Some(status), Some(body)) => Ok(Claim::Answered {
                status: u16::try_from(status).map_err(|_| {
                    StoreError::Internal(anyhow::anyhow!("an idempotency status of {status}"))
                })?,
                body: body.to_string(),
            }),
            _ => Ok(Claim::InProgress {
                run_id: old["run_id"].as_str().map(String::from),
                background: old["background"] == true,
            }),
        }
    }

    /// Notes the run a claimed key's request started, and whether in the background. This and
    /// the writes below set fixed values, so a write that loses a race with a repeat's claim
    /// of the same key runs again.
    pub async fn idempotent_run(
        &self,
        tenant: &str,
        key: &str,
        run_id: &str,
        background: bool,
    ) -> Result<()> {
        self.run_retrying(
            "UPDATE type::record('idempotency', [$tenant, $key]) SET run_id = $run, \
             background = $background RETURN NONE;",
            json!({"tenant": tenant, "key": key, "run": run_id, "background": background}),
        )
        .await?;
        Ok(())
    }

    /// Stores the answer of a claimed key's request, for its repeats.
    pub async fn idempotent_answer(
        &self,
        tenant: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<()> {
        self.run_retrying(
            "UPDATE type::record('idempotency', [$tenant, $key]) SET status = $status, body = $body \
             RETURN NONE;",
            json!({"tenant": tenant, "key": key, "status": status, "body": body}),
        )
        .await?;
        Ok(())
    }

    /// Gives a claimed key up: its request was refused before it did anything.
    pub async fn release_idempotency_key(&self, tenant: &str, key: &str) -> Result<()> {
        self.run_retrying(
            "DELETE type::record('idempotency', [$tenant, $key]) WHERE status = NONE;",
            json!({"tenant": tenant, "key": key}),
        )
        .await?;
        Ok(())
    }

    /// Deletes keys that expired before `now`, in batches; how many.
    pub async fn purge_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64> {
        let mut purged = 0;
        loop {
            let out = self
                .run(
                    "LET $old = (SELECT VALUE id FROM idempotency WHERE expires_at < <datetime>$now LIMIT 500); \
                     DELETE $old; RETURN array::len($old);",
                    json!({"now": now}),
                )
                .await?;
            let n = out
                .last()
                .and_then(|rows| rows.first())
                .and_then(Value::as_u64)
                .unwrap_or(0);
            purged += n;
            if n < 500 {
                return Ok(purged);
            }
        }
    }
}
