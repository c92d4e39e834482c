//! Versioned schema migrations, applied in order at start-up; each version is recorded once.

use serde_json::json;

use super::{Result, Store};

/// Every migration, in order. Never edit a released one: add the next version.
pub const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        r#"
DEFINE TABLE IF NOT EXISTS tenant SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS slug ON tenant TYPE string;
DEFINE FIELD IF NOT EXISTS name ON tenant TYPE string;
DEFINE FIELD IF NOT EXISTS quota_runs ON tenant TYPE int;
DEFINE FIELD IF NOT EXISTS quota_tokens ON tenant TYPE int;
DEFINE FIELD IF NOT EXISTS created_at ON tenant TYPE datetime;

DEFINE TABLE IF NOT EXISTS api_key SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS key_id ON api_key TYPE string;
DEFINE FIELD IF NOT EXISTS tenant ON api_key TYPE string;
DEFINE FIELD IF NOT EXISTS name ON api_key TYPE string;
DEFINE FIELD IF NOT EXISTS hash ON api_key TYPE string;
DEFINE FIELD IF NOT EXISTS prefix ON api_key TYPE string;
DEFINE FIELD IF NOT EXISTS created_at ON api_key TYPE datetime;
DEFINE FIELD IF NOT EXISTS expires_at ON api_key TYPE option<datetime>;
DEFINE FIELD IF NOT EXISTS revoked_at ON api_key TYPE option<datetime>;
DEFINE FIELD IF NOT EXISTS last_used ON api_key TYPE option<datetime>;
DEFINE INDEX IF NOT EXISTS api_key_hash ON api_key FIELDS hash UNIQUE;
DEFINE INDEX IF NOT EXISTS api_key_tenant ON api_key FIELDS tenant;

DEFINE TABLE IF NOT EXISTS agent_state SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS tenant ON agent_state TYPE string;
DEFINE FIELD IF NOT EXISTS name ON agent_state TYPE string;
DEFINE FIELD IF NOT EXISTS created_at ON agent_state TYPE datetime;
DEFINE FIELD IF NOT EXISTS total_runs ON agent_state TYPE int DEFAULT 0;
DEFINE FIELD IF NOT EXISTS completed_runs ON agent_state TYPE int DEFAULT 0;
DEFINE FIELD IF NOT EXISTS last_run ON agent_state TYPE option<datetime>;
DEFINE FIELD IF NOT EXISTS run_seq ON agent_state TYPE int DEFAULT 0;

-- A run's record id is [agent_id, seq]: seq numbers an agent's runs from 1 as they start, so a
-- page of history is a list of record ids, fetched by key whatever the history's size.
DEFINE TABLE IF NOT EXISTS run SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS run_id ON run TYPE string;
DEFINE FIELD IF NOT EXISTS seq ON run TYPE int;
DEFINE FIELD IF NOT EXISTS tenant ON run TYPE string;
DEFINE FIELD IF NOT EXISTS agent ON run TYPE string;
DEFINE FIELD IF NOT EXISTS agent_id ON run TYPE string;
DEFINE FIELD IF NOT EXISTS status ON run TYPE string;
DEFINE FIELD IF NOT EXISTS input ON run TYPE object FLEXIBLE;
DEFINE FIELD IF NOT EXISTS output ON run TYPE option<object> FLEXIBLE;
DEFINE FIELD IF NOT EXISTS error ON run TYPE option<string>;
DEFINE FIELD IF NOT EXISTS started_at ON run TYPE datetime;
DEFINE FIELD IF NOT EXISTS finished_at ON run TYPE option<datetime>;
DEFINE FIELD IF NOT EXISTS duration_ms ON run TYPE option<int>;
DEFINE FIELD IF NOT EXISTS tokens_used ON run TYPE int DEFAULT 0;
DEFINE INDEX IF NOT EXISTS run_status ON run FIELDS status;

DEFINE TABLE IF NOT EXISTS chat SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS tenant ON chat TYPE string;
DEFINE FIELD IF NOT EXISTS model ON chat TYPE string;
DEFINE FIELD IF NOT EXISTS finish_reason ON chat TYPE string;
DEFINE FIELD IF NOT EXISTS tokens_used ON chat TYPE int;
DEFINE FIELD IF NOT EXISTS created_at ON chat TYPE datetime;

DEFINE TABLE IF NOT EXISTS usage_period SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS tenant ON usage_period TYPE string;
DEFINE FIELD IF NOT EXISTS start ON usage_period TYPE string;
DEFINE FIELD IF NOT EXISTS runs ON usage_period TYPE int DEFAULT 0;
DEFINE FIELD IF NOT EXISTS tokens ON usage_period TYPE int DEFAULT 0;
DEFINE FIELD IF NOT EXISTS reserved_runs ON usage_period TYPE int DEFAULT 0;

DEFINE TABLE IF NOT EXISTS usage_daily SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS tenant ON usage_daily TYPE string;
DEFINE FIELD IF NOT EXISTS date ON usage_daily TYPE string;
DEFINE FIELD IF NOT EXISTS runs ON usage_daily TYPE int DEFAULT 0;
DEFINE FIELD IF NOT EXISTS tokens ON usage_daily TYPE int DEFAULT 0;
DEFINE FIELD IF NOT EXISTS api_calls ON usage_daily TYPE int DEFAULT 0;
"#,
    ),
    (
        2,
        r#"
-- Instances hold a lease they renew; the runs of an instance whose lease ran out are failed
-- as interrupted by whichever instance notices first.
DEFINE TABLE IF NOT EXISTS instance SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS host ON instance TYPE string;
DEFINE FIELD IF NOT EXISTS pid ON instance TYPE int;
DEFINE FIELD IF NOT EXISTS started_at ON instance TYPE datetime;
DEFINE FIELD IF NOT EXISTS lease_until ON instance TYPE datetime;
DEFINE FIELD IF NOT EXISTS instance ON run TYPE option<string>;
-- Set on a run failed as interrupted, so that its instance, if it was alive after all, can
-- still store the real outcome once (see Store::finish_run).
DEFINE FIELD IF NOT EXISTS reaped ON run TYPE option<bool>;

-- Per-key request rate of a tenant (requests per minute, 0 = none); NONE takes the server's.
DEFINE FIELD IF NOT EXISTS rate_limit ON tenant TYPE option<int>;

-- Retention deletes runs and chats by age; `retention:horizon` records the newest cutoff, so
-- checks know which days still have all their runs.
DEFINE INDEX IF NOT EXISTS run_started ON run FIELDS started_at;
DEFINE INDEX IF NOT EXISTS chat_created ON chat FIELDS created_at;
DEFINE FIELD IF NOT EXISTS purged_seq ON agent_state TYPE int DEFAULT 0;
DEFINE TABLE IF NOT EXISTS retention SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS before ON retention TYPE datetime;
"#,
    ),
    (
        3,
        r#"
-- Authentication by record id: `credential:⟨sha256 of the secret⟩` names its key, so the
-- lookup on every request is a direct fetch, not an index scan. Written with the key,
-- never changed (revocation and expiry stay on the key).
DEFINE TABLE IF NOT EXISTS credential SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS key_id ON credential TYPE string;
FOR $k IN (SELECT key_id, hash FROM api_key) {
    UPSERT type::record('credential', $k.hash) SET key_id = $k.key_id;
};
"#,
    ),
    (
        4,
        r#"
-- When a running run is overdue: its start, its agent's timeout and a grace. Past it, a run
-- still `running` is failed by any instance, its own too (a run whose task was lost).
DEFINE FIELD IF NOT EXISTS deadline ON run TYPE option<datetime>;
-- Written by every key creation of the tenant, so that two creations racing past the cap on
-- live keys conflict, and the one run again counts the other's key.
DEFINE FIELD IF NOT EXISTS keys_changed_at ON tenant TYPE option<datetime>;
"#,
    ),
    (
        5,
        r#"
-- Runs as resources. `run_ref:⟨run_id⟩` names a run's record, so a run is fetched by its id
-- with one direct read, like a key by its credential.
DEFINE TABLE IF NOT EXISTS run_ref SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS agent_id ON run_ref TYPE string;
DEFINE FIELD IF NOT EXISTS seq ON run_ref TYPE int;
DEFINE FIELD IF NOT EXISTS tenant ON run_ref TYPE string;
FOR $r IN (SELECT run_id, agent_id, seq, tenant FROM run) {
    UPSERT type::record('run_ref', $r.run_id) SET agent_id = $r.agent_id, seq = $r.seq, tenant = $r.tenant;
};
-- A run's steps as they happen, `run_event:[run_id, n]` from 1, so that any instance can
-- follow a run and resume after the last event it sent.
DEFINE TABLE IF NOT EXISTS run_event SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS step ON run_event TYPE object FLEXIBLE;
-- Set by a cancel request; the instance running the run stops it.
DEFINE FIELD IF NOT EXISTS cancel ON run TYPE option<bool>;
-- Idempotency keys, `idempotency:[tenant, key]`: the first request's fingerprint, and once
-- answered, its status and body.
DEFINE TABLE IF NOT EXISTS idempotency SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS fingerprint ON idempotency TYPE string;
DEFINE FIELD IF NOT EXISTS instance ON idempotency TYPE string;
DEFINE FIELD IF NOT EXISTS run_id ON idempotency TYPE option<string>;
DEFINE FIELD IF NOT EXISTS background ON idempotency TYPE option<bool>;
DEFINE FIELD IF NOT EXISTS status ON idempotency TYPE option<int>;
DEFINE FIELD IF NOT EXISTS body ON idempotency TYPE option<string>;
DEFINE FIELD IF NOT EXISTS created_at ON idempotency TYPE datetime;
DEFINE FIELD IF NOT EXISTS expires_at ON idempotency TYPE datetime;
DEFINE INDEX IF NOT EXISTS idempotency_expires ON idempotency FIELDS expires_at;
"#,
    ),
    (
        6,
        r#"
-- Webhook endpoints, `webhook:⟨id⟩`, with the secret that signs their deliveries (kept to
-- sign, so kept as is).
DEFINE TABLE IF NOT EXISTS webhook SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS webhook_id ON webhook TYPE string;
DEFINE FIELD IF NOT EXISTS tenant ON webhook TYPE string;
DEFINE FIELD IF NOT EXISTS url ON webhook TYPE string;
DEFINE FIELD IF NOT EXISTS events ON webhook TYPE array<string>;
DEFINE FIELD IF NOT EXISTS description ON webhook TYPE option<string>;
DEFINE FIELD IF NOT EXISTS secret ON webhook TYPE string;
DEFINE FIELD IF NOT EXISTS created_at ON webhook TYPE datetime;
DEFINE INDEX IF NOT EXISTS webhook_tenant ON webhook FIELDS tenant;
-- Written with every new endpoint, so that two registrations at once conflict and the cap
-- on a tenant's endpoints holds.
DEFINE FIELD IF NOT EXISTS webhooks_changed_at ON tenant TYPE option<datetime>;
-- The outbox: one delivery per event and endpoint, written in the transaction that settles
-- the run, then sent (and retried) by whichever instance leases it.
DEFINE TABLE IF NOT EXISTS webhook_delivery SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS delivery_id ON webhook_delivery TYPE string;
DEFINE FIELD IF NOT EXISTS webhook_id ON webhook_delivery TYPE string;
DEFINE FIELD IF NOT EXISTS tenant ON webhook_delivery TYPE string;
DEFINE FIELD IF NOT EXISTS event_id ON webhook_delivery TYPE string;
DEFINE FIELD IF NOT EXISTS event_type ON webhook_delivery TYPE string;
DEFINE FIELD IF NOT EXISTS run_id ON webhook_delivery TYPE string;
DEFINE FIELD IF NOT EXISTS attempts ON webhook_delivery TYPE int DEFAULT 0;
DEFINE FIELD IF NOT EXISTS state ON webhook_delivery TYPE string;
DEFINE FIELD IF NOT EXISTS last_status ON webhook_delivery TYPE option<int>;
DEFINE FIELD IF NOT EXISTS last_error ON webhook_delivery TYPE option<string>;
DEFINE FIELD IF NOT EXISTS next_attempt_at ON webhook_delivery TYPE datetime;
DEFINE FIELD IF NOT EXISTS created_at ON webhook_delivery TYPE datetime;
DEFINE FIELD IF NOT EXISTS lease_until ON webhook_delivery TYPE option<datetime>;
DEFINE FIELD IF NOT EXISTS leased_by ON webhook_delivery TYPE option<string>;
DEFINE INDEX IF NOT EXISTS webhook_delivery_due ON webhook_delivery FIELDS state, next_attempt_at;
DEFINE INDEX IF NOT EXISTS webhook_delivery_of ON webhook_delivery FIELDS webhook_id;
DEFINE INDEX IF NOT EXISTS webhook_delivery_created ON webhook_delivery FIELDS created_at;
"#,
    ),
    (
        7,
        r#"
-- The version of the agent definition a run ran (runs from before versions have none).
DEFINE FIELD IF NOT EXISTS agent_version ON run TYPE option<string>;
-- Every agent version ever served, once: `agent_version:[owner, name, version]`, where the
-- owner is the tenant whose folder holds the file, or `_global`.
DEFINE TABLE IF NOT EXISTS agent_version SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS owner ON agent_version TYPE string;
DEFINE FIELD IF NOT EXISTS name ON agent_version TYPE string;
DEFINE FIELD IF NOT EXISTS version ON agent_version TYPE string;
DEFINE FIELD IF NOT EXISTS config ON agent_version TYPE object FLEXIBLE;
DEFINE FIELD IF NOT EXISTS source_rev ON agent_version TYPE option<string>;
DEFINE FIELD IF NOT EXISTS first_served_at ON agent_version TYPE datetime;
DEFINE INDEX IF NOT EXISTS agent_version_of ON agent_version FIELDS owner, name;
-- The set served last, `agent_served:[owner, name]`: what `ares plan` compares a folder with.
DEFINE TABLE IF NOT EXISTS agent_served SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS owner ON agent_served TYPE string;
DEFINE FIELD IF NOT EXISTS name ON agent_served TYPE string;
DEFINE FIELD IF NOT EXISTS version ON agent_served TYPE string;
DEFINE FIELD IF NOT EXISTS served_at ON agent_served TYPE datetime;
"#,
    ),
    (
        8,
        r#"
-- Keys verified in memory are kept in step across instances through the change feed of these
-- two tables: a key's credential is marked when the key is revoked, and a tenant's row changes
-- with its settings. An hour of changes is kept; instances read them every few milliseconds.
ALTER TABLE credential CHANGEFEED 1h;
ALTER TABLE tenant CHANGEFEED 1h;
DEFINE FIELD IF NOT EXISTS revoked_at ON credential TYPE option<datetime>;
FOR $k IN (SELECT hash, revoked_at FROM api_key WHERE revoked_at != NONE) {
    UPDATE type::record('credential', $k.hash) SET revoked_at = $k.revoked_at;
};
"#,
    ),
    (
        9,
        r#"
-- A run's start and its settlement write different rows, so that the two need not wait for
-- each other. Starts keep `usage_period.reserved_runs` (now only ever added to: with `runs` it
-- counts the period's runs started) and `agent_state.run_seq`; settlements and chats count
-- into these two tables. Totals are the sums of both sides, so rows written before this
-- version, and by instances of the previous version, still count.
DEFINE TABLE IF NOT EXISTS usage_settled SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS tenant ON usage_settled TYPE string;
DEFINE FIELD IF NOT EXISTS start ON usage_settled TYPE string;
DEFINE FIELD IF NOT EXISTS runs ON usage_settled TYPE int DEFAULT 0;
DEFINE FIELD IF NOT EXISTS tokens ON usage_settled TYPE int DEFAULT 0;

DEFINE TABLE IF NOT EXISTS agent_settled SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS tenant ON agent_settled TYPE string;
DEFINE FIELD IF NOT EXISTS total_runs ON agent_settled TYPE int DEFAULT 0;
DEFINE FIELD IF NOT EXISTS completed_runs ON agent_settled TYPE int DEFAULT 0;
DEFINE FIELD IF NOT EXISTS last_run ON agent_settled TYPE option<datetime>;
"#,
    ),
    (
        10,
        r#"
-- How many webhook endpoints a tenant has, on its row, so that a settlement learns whether to
-- write deliveries from a record it reads rather than a query. An event keeps it, so it is
-- right whichever version of `ares` creates or deletes an endpoint. Counting every tenant here
-- writes every tenant's row, so an endpoint created meanwhile (which writes its tenant's row)
-- makes one of the two transactions run again.
DEFINE FIELD IF NOT EXISTS webhook_endpoints ON tenant TYPE int DEFAULT 0;
DEFINE EVENT IF NOT EXISTS webhook_endpoints ON TABLE webhook WHEN $event IN ['CREATE', 'DELETE'] THEN (
    UPDATE type::record('tenant', $value.tenant)
        SET webhook_endpoints = count(SELECT VALUE webhook_id FROM webhook WHERE tenant = $value.tenant)
        RETURN NONE
);
FOR $t IN (SELECT VALUE id FROM tenant) {
    UPDATE $t SET webhook_endpoints = count(SELECT VALUE webhook_id FROM webhook WHERE tenant = record::id($t))
        RETURN NONE;
};
"#,
    ),
    (
        11,
        r#"
-- Retention finds old chats by their ids (UUIDv7, which sort by time), so `created_at` needs no
-- index, which every chat written paid for. An instance of the previous version still purges
-- by `created_at`: reading the table in id order, which finds the old chats first.
REMOVE INDEX IF EXISTS chat_created ON chat;
"#,
    ),
];

/// Applies every migration not yet recorded in the `migration` table.
pub async fn apply(store: &Store) -> Result<()> {
    store
        .run(
            "DEFINE TABLE IF NOT EXISTS migration SCHEMAFULL; \
             DEFINE FIELD IF NOT EXISTS version ON migration TYPE int; \
             DEFINE FIELD IF NOT EXISTS applied_at ON migration TYPE datetime;",
            json!({}),
        )
        .await?;
    let applied: Vec<serde_json::Value> = store
        .rows("SELECT version FROM migration", json!({}), 0)
        .await?;
    let applied: Vec<u64> = applied
        .iter()
        .filter_map(|r| r["version"].as_u64())
        .collect();
    for (version, sql) in MIGRATIONS {
        if applied.contains(&u64::from(*version)) {
            continue;
        }
        let script = format!(
            "BEGIN; {sql}; CREATE type::record('migration', $v) SET version = $v, applied_at = time::now(); COMMIT;"
        );
        if let Err(e) = store.run_retrying(&script, json!({"v": version})).await {
            // Instances starting together race to apply a version; the loser finds it applied.
            let done: Vec<serde_json::Value> = store
                .rows(
                    "SELECT version FROM type::record('migration', $v)",
                    json!({"v": version}),
                    0,
                )
                .await?;
            if done.is_empty() {
                return Err(e);
            }
            continue;
        }
        tracing::info!(version, "database migration applied");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::store::testing::store;

    /// Each tenant's count of webhook endpoints, as its row holds it.
    async fn counts(store: &crate::store::Store) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = store
            .rows(
                "SELECT slug, webhook_endpoints FROM tenant ORDER BY slug",
                json!({}),
                0,
            )
            .await
            .unwrap();
        json!(rows)
    }

    #[tokio::test]
    async fn endpoints_are_counted_on_their_tenant_whoever_writes_them() {
        let store = store().await;
        for slug in ["acme", "globex"] {
            store
                .create_tenant(slug, slug, 10, 1000, None, "default")
                .await
                .unwrap();
        }
        let endpoint = |id: &str, tenant: &str| {
            format!(
                "CREATE webhook:{id} CONTENT {{ webhook_id: '{id}', tenant: '{tenant}', \
                 url: 'https://example.com/h', events: ['*'], secret: 's', created_at: time::now() }};"
            )
        };
        // Written as any version of `ares` writes them: the event counts them.
        let sql = [
            endpoint("a1", "acme"),
            endpoint("a2", "acme"),
            endpoint("g1", "globex"),
        ]
        .concat();
        store.run(&sql, json!({})).await.unwrap();
        store.run("DELETE webhook:g1", json!({})).await.unwrap();
        let expected = json!([
            {"slug": "acme", "webhook_endpoints": 2},
            {"slug": "globex", "webhook_endpoints": 0},
        ]);
        assert_eq!(counts(&store).await, expected);
        let report = store.check(1).await.unwrap();
        assert!(report.violations.is_empty(), "{:?}", report.violations);

        // Endpoints of a database from before version 10 are counted when it is applied.
        store
            .run(
                "UPDATE tenant SET webhook_endpoints = 7; DELETE migration:10;",
                json!({}),
            )
            .await
            .unwrap();
        let found: Vec<_> = store.check(1).await.unwrap().violations;
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|v| v.invariant == "webhook_endpoints"));
        super::apply(&store).await.unwrap();
        assert_eq!(counts(&store).await, expected);
    }
}
