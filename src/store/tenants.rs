//! Tenants: the customers of a deployment, each with its quotas.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::keys::{
    ApiKey, CREATE_KEY, FIELDS as KEY_FIELDS, NewKey, generate_secret, hash_secret, key_prefix,
};
use super::{Result, Store, StoreError};

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub slug: String,
    pub name: String,
    pub quota_runs: u64,
    pub quota_tokens: u64,
    /// Requests per minute per API key (0 = no limit); `None` takes the server's setting.
    #[serde(default)]
    pub rate_limit: Option<u64>,
    pub created_at: DateTime<Utc>,
    /// Tokens settled in the current billing period, when the tenant was read with them
    /// (authentication reads them in the same statement, sparing chats a query).
    #[serde(default, skip_serializing)]
    pub period_tokens: Option<u64>,
}

/// Quota changes; `None` leaves a quota as it is.
#[derive(Debug, Clone, Default)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub quota_runs: Option<u64>,
    pub quota_tokens: Option<u64>,
    pub rate_limit: Option<u64>,
}

const FIELDS: &str = "slug, name, quota_runs, quota_tokens, rate_limit, created_at";

impl Store {
    /// Creates a tenant and its first key, named `key_name`, in one transaction: both or
    /// neither. `Ok(None)` when the slug is taken.
    #[tracing::instrument(skip(self))]
    pub async fn create_tenant(
        &self,
        slug: &str,
        name: &str,
        quota_runs: u64,
        quota_tokens: u64,
        rate_limit: Option<u64>,
        key_name: &str,
    ) -> Result<Option<(Tenant, NewKey)>> {
        let secret = generate_secret();
        let id = uuid::Uuid::now_v7().to_string();
        let sql = format!(
            "BEGIN; \
             IF record::exists(type::record('tenant', $tenant)) {{ THROW 'the tenant exists' }}; \
             CREATE type::record('tenant', $tenant) SET slug = $tenant, name = $tenant_name, \
               quota_runs = $runs, quota_tokens = $tokens, rate_limit = $rate ?? NONE, \
               created_at = time::now(), keys_changed_at = time::now() RETURN NONE; \
             {CREATE_KEY} \
             RETURN {{ tenant: type::record('tenant', $tenant).{{ {FIELDS} }}, \
               key: type::record('api_key', $id).{{ {KEY_FIELDS} }} }}; \
             COMMIT;"
        );
        let vars = json!({
            "tenant": slug, "tenant_name": name, "runs": quota_runs, "tokens": quota_tokens,
            "rate": rate_limit, "id": id, "name": key_name, "hash": hash_secret(&secret),
            "prefix": key_prefix(&secret), "expires": null,
        });
        let out = match self.run_retrying(&sql, vars).await {
            Ok(out) => out,
            // Taken, before or by a creator racing for the same slug.
            Err(StoreError::Internal(e))
                if e.to_string().contains("the tenant exists")
                    || e.to_string().contains("already exists") =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let answer = out
            .into_iter()
            .rev()
            .find_map(|rows| rows.into_iter().next())
            .unwrap_or_default();
        let decode = |what: &str, e: serde_json::Error| {
            StoreError::Internal(anyhow::anyhow!("decoding the new {what}: {e}"))
        };
        let tenant: Tenant =
            serde_json::from_value(answer["tenant"].clone()).map_err(|e| decode("tenant", e))?;
        let key: ApiKey =
            serde_json::from_value(answer["key"].clone()).map_err(|e| decode("key", e))?;
        Ok(Some((tenant, NewKey { key, secret })))
    }

    #[tracing::instrument(skip(self))]
    pub async fn tenants(&self) -> Result<Vec<Tenant>> {
        self.rows(
            &format!("SELECT {FIELDS} FROM tenant ORDER BY slug"),
            json!({}),
            0,
        )
        .await
    }

    /// Applies `patch`; `Ok(None)` when there is no such tenant.
    #[tracing::instrument(skip(self))]
    pub async fn update_tenant(&self, slug: &str, patch: &TenantPatch) -> Result<Option<Tenant>> {
        let sql = format!(
            "UPDATE type::record('tenant', $slug) SET \
             name = $name ?? name, quota_runs = $runs ?? quota_runs, quota_tokens = $tokens ?? quota_tokens, \
             rate_limit = $rate ?? rate_limit \
             RETURN {FIELDS}"
        );
        let vars = json!({"slug": slug, "name": patch.name, "runs": patch.quota_runs, "tokens": patch.quota_tokens, "rate": patch.rate_limit});
        Ok(self.rows(&sql, vars, 0).await?.pop())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::store;

    /// A tenant and its first key are stored together or not at all.
    #[tokio::test]
    async fn a_tenant_is_never_left_without_its_first_key() {
        let store = store().await;
        store
            .run(
                "DEFINE EVENT refuse ON api_key WHEN $event = 'CREATE' THEN { THROW 'no keys today' };",
                json!({}),
            )
            .await
            .unwrap();
        let failed = store
            .create_tenant("acme", "Acme", 10, 100, None, "initial")
            .await;
        assert!(failed.is_err(), "{failed:?}");
        assert_eq!(
            store.tenants().await.unwrap(),
            [],
            "no tenant without its key"
        );
        store
            .run("REMOVE EVENT refuse ON api_key;", json!({}))
            .await
            .unwrap();
        let (tenant, key) = store
            .create_tenant("acme", "Acme", 10, 100, None, "initial")
            .await
            .unwrap()
            .expect("the slug is free");
        assert_eq!(tenant.slug, "acme");
        assert_eq!(key.key.tenant, "acme");
        assert!(
            store
                .create_tenant("acme", "Again", 1, 1, None, "initial")
                .await
                .unwrap()
                .is_none(),
            "a taken slug"
        );
    }
}
