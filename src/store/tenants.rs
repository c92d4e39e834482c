//! Tenants: the customers of a deployment, each with its quotas.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Result, Store};

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
    /// Creates a tenant; `Ok(None)` when the slug is taken.
    #[tracing::instrument(skip(self))]
    pub async fn create_tenant(
        &self,
        slug: &str,
        name: &str,
        quota_runs: u64,
        quota_tokens: u64,
        rate_limit: Option<u64>,
    ) -> Result<Option<Tenant>> {
        let sql = format!(
            "IF record::exists(type::record('tenant', $slug)) {{ RETURN [] }} \
             ELSE {{ RETURN (CREATE type::record('tenant', $slug) SET slug = $slug, name = $name, \
             quota_runs = $runs, quota_tokens = $tokens, rate_limit = $rate ?? NONE, \
             created_at = time::now() RETURN {FIELDS}) }};"
        );
        let rows = self
            .rows(
                &sql,
                json!({"slug": slug, "name": name, "runs": quota_runs, "tokens": quota_tokens, "rate": rate_limit}),
                0,
            )
            .await;
        match rows {
            Ok(mut rows) => Ok(rows.pop()),
            // Two creators racing for one slug: the loser's CREATE fails on the existing record.
            Err(super::StoreError::Internal(e)) if e.to_string().contains("already exists") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
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
