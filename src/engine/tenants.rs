//! Tenants, for the platform operator: provisioning one with its first key (one transaction),
//! listing, changing quotas. (A key for an existing tenant: `Engine::create_key`.)

use super::Engine;
use super::error::{EngineError, Result, invalid};
use crate::agents::is_valid_name;
use crate::store::{NewKey, Tenant, TenantPatch};

/// A tenant to provision; omitted quotas take the deployment's defaults.
#[derive(Debug, Clone, Default)]
pub struct NewTenant {
    pub slug: String,
    pub name: Option<String>,
    pub quota_runs: Option<u64>,
    pub quota_tokens: Option<u64>,
    /// Requests per minute per key (0: no limit); `None` takes the deployment's default.
    pub rate_limit: Option<u64>,
}

impl Engine {
    /// Creates a tenant and its first key (named `initial`).
    #[tracing::instrument(skip(self, new), fields(tenant = %new.slug))]
    pub async fn provision_tenant(&self, new: NewTenant) -> Result<(Tenant, NewKey)> {
        let slug = new.slug.as_str();
        if !is_valid_name(slug) {
            return Err(invalid(
                "slug",
                format!(
                    "'{slug}' is not valid: use 1-64 lowercase letters, digits and `-`, starting and ending with a letter or digit"
                ),
            ));
        }
        let q = &self.settings.quotas;
        let (tenant, key) = self
            .store
            .create_tenant(
                slug,
                new.name.as_deref().unwrap_or(slug),
                new.quota_runs.unwrap_or(q.runs),
                new.quota_tokens.unwrap_or(q.tokens),
                new.rate_limit,
                "initial",
            )
            .await?
            .ok_or_else(|| EngineError::TenantExists(slug.to_string()))?;
        tracing::info!(tenant = %tenant.slug, "tenant created");
        Ok((tenant, key))
    }

    /// Every tenant, by slug.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        Ok(self.store.tenants().await?)
    }

    /// Applies `patch` to tenant `slug`; new quotas apply to the next request.
    #[tracing::instrument(skip(self, patch))]
    pub async fn update_tenant(&self, slug: &str, patch: &TenantPatch) -> Result<Tenant> {
        let updated = self
            .store
            .update_tenant(slug, patch)
            .await?
            .ok_or_else(|| EngineError::TenantNotFound(slug.to_string()))?;
        // Here at once; other instances through the change feed.
        self.keyring.forget_tenant(slug);
        Ok(updated)
    }
}
