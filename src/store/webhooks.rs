//! Webhook endpoints and their deliveries: the outbox that run settlements write (in
//! `ledger`), leased to one instance at a time for each attempt.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Result, Store, StoreError};

/// A tenant's webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    #[serde(rename = "webhook_id")]
    pub id: String,
    pub tenant: String,
    pub url: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not yet delivered; attempts are left.
    Pending,
    /// An attempt was answered 2xx.
    Delivered,
    /// Every attempt failed.
    Failed,
}

/// The events an endpoint hears: a run ended, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "run.completed")]
    RunCompleted,
    #[serde(rename = "run.failed")]
    RunFailed,
    #[serde(rename = "run.cancelled")]
    RunCancelled,
}

/// One event for one endpoint, and how its sending goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    #[serde(rename = "delivery_id")]
    pub id: String,
    pub webhook_id: String,
    pub tenant: String,
    pub event_id: String,
    pub event_type: EventType,
    pub run_id: String,
    pub attempts: u64,
    pub state: DeliveryState,
    #[serde(default)]
    pub last_status: Option<u16>,
    #[serde(default)]
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// What an attempt to send a delivery came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        status: u16,
    },
    /// Failed; sent again at `retry_at`, or never (`None`: it has failed for good).
    Failed {
        status: Option<u16>,
        error: String,
        retry_at: Option<DateTime<Utc>>,
    },
}

const DELIVERY_FIELDS: &str = "delivery_id, webhook_id, tenant, event_id, event_type, run_id, \
    attempts, state, last_status, last_error, next_attempt_at, created_at";

fn decode<T: serde::de::DeserializeOwned>(row: Value, what: &str) -> Result<T> {
    serde_json::from_value(row)
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("decoding {what}: {e}")))
}

impl Store {
    /// Stores a new endpoint of `tenant`, signing with `secret`.
    /// Registers `hook` unless its tenant has `max` endpoints already; answers whether it did.
    pub async fn create_webhook(&self, hook: &Webhook, secret: &str, max: u64) -> Result<bool> {
        let out = self
            .run_retrying(
                "BEGIN; \
                 LET $ok = count(SELECT VALUE webhook_id FROM webhook WHERE tenant = $h.tenant) < $max; \
                 IF $ok { \
                   UPDATE type::record('tenant', $h.tenant) SET webhooks_changed_at = time::now() RETURN NONE; \
                   CREATE type::record('webhook', $h.webhook_id) CONTENT { webhook_id: $h.webhook_id, \
                     tenant: $h.tenant, url: $h.url, events: $h.events, \
                     description: $h.description ?? NONE, secret: $secret, \
                     created_at: <datetime>$h.created_at } RETURN NONE; \
                 }; \
                 RETURN $ok; \
                 COMMIT;",
                json!({"h": hook, "secret": secret, "max": max}),
            )
            .await?;
        let ok = out
            .into_iter()
            .rev()
            .find_map(|rows| rows.into_iter().next());
        Ok(ok == Some(Value::Bool(true)))
    }

    /// The tenant's endpoints, oldest first.
    pub async fn webhooks(&self, tenant: &str) -> Result<Vec<Webhook>> {
        self.rows(
            "SELECT webhook_id, tenant, url, events, description, created_at FROM webhook \
             WHERE tenant = $tenant ORDER BY webhook_id",
            json!({"tenant": tenant}),
            0,
        )
        .await
    }

    /// The tenant's endpoint `id` and its signing secret.
    pub async fn webhook(&self, tenant: &str, id: &str) -> Result<Option<(Webhook, String)>> {
        let rows: Vec<Value> = self
            .rows(
                "SELECT * FROM type::record('webhook', $id) WHERE tenant = $tenant",
                json!({"id": id, "tenant": tenant}),
                0,
            )
            .await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let secret = row["secret"].as_str().unwrap_or_default().to_string();
        Ok(Some((decode(row, "a webhook")?, secret)))
    }

    /// Deletes the tenant's endpoint `id` and its deliveries; `false` when there was none.
    pub async fn delete_webhook(&self, tenant: &str, id: &str) -> Result<bool> {
        let out = self
            .run_retrying(
                "BEGIN; \
                 LET $gone = (DELETE type::record('webhook', $id) WHERE tenant = $tenant RETURN BEFORE); \
                 IF array::len($gone) > 0 { DELETE webhook_delivery WHERE webhook_id = $id; }; \
                 RETURN array::len($gone) > 0; \
                 COMMIT;",
                json!({"id": id, "tenant": tenant}),
            )
            .await?;
        Ok(super::records::last_bool(&out))
    }

    /// A page of endpoint `id`'s deliveries, newest first, and how many it has.
    pub async fn deliveries(
        &self,
        webhook_id: &str,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<Delivery>, u64)> {
        let sql = format!(
            "SELECT {DELIVERY_FIELDS} FROM webhook_delivery WHERE webhook_id = $id \
               ORDER BY delivery_id DESC LIMIT $limit START $offset; \
             RETURN count(SELECT VALUE delivery_id FROM webhook_delivery WHERE webhook_id = $id);"
        );
        let mut out = self
            .run(
                &sql,
                json!({"id": webhook_id, "limit": limit, "offset": offset}),
            )
            .await?;
        let total = out
            .pop()
            .and_then(|rows| rows.into_iter().next())
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let page = out
            .pop()
            .unwrap_or_default()
            .into_iter()
            .map(|row| decode(row, "a delivery"))
            .collect::<Result<_>>()?;
        Ok((page, total))
    }

    /// Makes delivery `id` of endpoint `webhook_id` due now (again, when it ended); `false`
    /// when there is no such delivery.
    pub async fn retry_delivery(
        &self,
        webhook_id: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        // A lease stays: an attempt in flight is not doubled by a second one. The attempt's
        // own record may write the delivery at the same moment: a lost race runs again.
        let out = self
            .run_retrying(
                "UPDATE type::record('webhook_delivery', $id) SET state = 'pending', \
                 next_attempt_at = <datetime>$now WHERE webhook_id = $hook RETURN VALUE delivery_id",
                json!({"id": id, "hook": webhook_id, "now": now}),
            )
            .await?;
        Ok(out.into_iter().next().is_some_and(|rows| !rows.is_empty()))
    }

    /// Deliveries due at `now` and not leased, `(delivery id, endpoint id)`: of up to
    /// `endpoints` endpoints with due deliveries (in random order, none of `busy`), up to
    /// `per_endpoint` each, oldest due first. Taken endpoint by endpoint, so that one
    /// endpoint's backlog never fills the batch and holds back another's events.
    pub async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        busy: &[String],
        endpoints: u64,
        per_endpoint: u64,
    ) -> Result<Vec<(String, String)>> {
        const DUE: &str = "state = 'pending' AND next_attempt_at <= <datetime>$now \
            AND (lease_until = NONE OR lease_until < time::now())";
        let rows: Vec<Value> = self
            .rows(
                &format!(
                    "SELECT webhook_id FROM webhook_delivery WHERE {DUE} \
                     AND webhook_id NOTINSIDE $busy GROUP BY webhook_id"
                ),
                json!({"now": now, "busy": busy}),
                0,
            )
            .await?;
        let mut hooks: Vec<String> = rows
            .into_iter()
            .filter_map(|r| Some(r["webhook_id"].as_str()?.to_string()))
            .collect();
        if hooks.is_empty() {
            return Ok(Vec::new());
        }
        rand::seq::SliceRandom::shuffle(hooks.as_mut_slice(), &mut rand::rng());
        hooks.truncate(usize::try_from(endpoints).unwrap_or(usize::MAX));
        let out = self
            .run(
                &format!(
                    "RETURN array::flatten($hooks.map(|$h| (SELECT delivery_id, webhook_id, \
                       next_attempt_at FROM webhook_delivery WHERE webhook_id = $h AND {DUE} \
                       ORDER BY next_attempt_at LIMIT $per)));"
                ),
                json!({"now": now, "hooks": hooks, "per": per_endpoint}),
            )
            .await?;
        Ok(super::returned(out)
            .into_iter()
            .filter_map(|r| {
                Some((
                    r["delivery_id"].as_str()?.to_string(),
                    r["webhook_id"].as_str()?.to_string(),
                ))
            })
            .collect())
    }

    /// Leases deliveries `ids` to this instance for `lease` (database time, like instance
    /// leases, so that instances' clocks need not agree), those still due at `now` and not
    /// leased: of instances racing for one delivery, one wins, the others find it leased. Each
    /// leased one comes with its endpoint's URL and secret.
    pub async fn lease_deliveries(
        &self,
        ids: &[String],
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Vec<(Delivery, String, String)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "RETURN $ids.map(|$id| (UPDATE type::record('webhook_delivery', $id) \
               SET lease_until = time::now() + <duration>$lease, leased_by = $me \
               WHERE state = 'pending' AND next_attempt_at <= <datetime>$now \
                 AND (lease_until = NONE OR lease_until < time::now()) \
               RETURN {DELIVERY_FIELDS}, type::record('webhook', webhook_id).url AS url, \
                 type::record('webhook', webhook_id).secret AS secret)[0]) \
             .filter(|$d| $d != NONE AND $d.url != NONE);"
        );
        let out = self
            .run_retrying(
                &sql,
                json!({
                    "ids": ids, "now": now, "me": &*self.instance,
                    "lease": format!("{}ms", lease.as_millis()),
                }),
            )
            .await?;
        super::returned(out)
            .into_iter()
            .map(|row| {
                let url = row["url"].as_str().unwrap_or_default().to_string();
                let secret = row["secret"].as_str().unwrap_or_default().to_string();
                Ok((decode(row, "a delivery")?, url, secret))
            })
            .collect()
    }

    /// Records an attempt at delivery `id` and ends its lease.
    pub async fn record_attempt(&self, id: &str, attempt: &Attempt) -> Result<()> {
        let (state, status, error, next) = match attempt {
            Attempt::Delivered { status } => ("delivered", Some(*status), None, None),
            Attempt::Failed {
                status,
                error,
                retry_at: Some(at),
            } => ("pending", *status, Some(error.as_str()), Some(*at)),
            Attempt::Failed {
                status,
                error,
                retry_at: None,
            } => ("failed", *status, Some(error.as_str()), None),
        };
        // A retry asked through the API may write the delivery at the same moment: a lost
        // race runs again (a transaction that lost was not applied, so nothing counts twice).
        self.run_retrying(
            "UPDATE type::record('webhook_delivery', $id) SET attempts += 1, state = $state, \
             last_status = $status ?? NONE, last_error = $error ?? NONE, \
             next_attempt_at = <datetime>($next ?? next_attempt_at), \
             lease_until = NONE, leased_by = NONE RETURN NONE;",
            json!({"id": id, "state": state, "status": status, "error": error, "next": next}),
        )
        .await?;
        Ok(())
    }

    /// When the oldest delivery still pending was written, if any.
    pub async fn oldest_pending_delivery(&self) -> Result<Option<DateTime<Utc>>> {
        let rows: Vec<Value> = self
            .rows(
                "SELECT VALUE created_at FROM webhook_delivery WHERE state = 'pending' \
                 ORDER BY created_at LIMIT 1",
                json!({}),
                0,
            )
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|v| v.as_str().and_then(|s| s.parse().ok())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A retry asked through the API and the record of an attempt, at once on one delivery and
    /// many times: a write that loses the race runs again, none fails, none counts twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_retry_and_an_attempt_at_once_both_succeed() {
        let store = super::super::testing::store().await;
        store
            .run(
                "CREATE webhook_delivery:d CONTENT { delivery_id: 'd', webhook_id: 'h', \
                 tenant: 'acme', event_id: 'e', event_type: 'run.completed', run_id: 'r', \
                 attempts: 0, state: 'pending', next_attempt_at: time::now(), \
                 created_at: time::now() };",
                json!({}),
            )
            .await
            .unwrap();
        let attempt = Attempt::Failed {
            status: Some(500),
            error: "refused".into(),
            retry_at: Some(Utc::now()),
        };
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (store, attempt) = (store.clone(), attempt.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    if i % 2 == 0 {
                        store.retry_delivery("h", "d", Utc::now()).await?;
                    } else {
                        store.record_attempt("d", &attempt).await?;
                    }
                }
                Ok::<(), StoreError>(())
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let rows: Vec<Value> = store
            .rows("SELECT attempts FROM webhook_delivery:d", json!({}), 0)
            .await
            .unwrap();
        assert_eq!(rows[0]["attempts"], json!(100));
    }
}
