//! API keys: authenticating a request's secret (with the key's rate limit and the call counted
//! in usage), and listing, creating and revoking a tenant's keys.

use std::sync::atomic::Ordering;

use super::Engine;
use super::error::{EngineError, Result};
use crate::store::{ApiKey, KeyCreation, NewKey, Tenant};

/// Who a request's API key authenticates.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Tenant,
    pub key_id: String,
}

impl Engine {
    /// The tenant and key a secret authenticates, when the key is live and within its rate
    /// limit; the request is counted in the tenant's usage. Keys are verified in memory while
    /// it is in step with the database (`keyring`), else read from the database.
    pub async fn authenticate(&self, secret: &str) -> Result<Caller> {
        let secret = secret.trim();
        if !secret.starts_with(crate::store::keys_prefix()) {
            return Err(EngineError::Unauthorized);
        }
        let now = self.clock.now();
        let period_start = self.period_at(now).start.date_naive();
        let hash = crate::store::hash_secret(secret);
        let ops = &self.telemetry.ops;
        let (auth, tenant) = match self.keyring.lookup(&hash, period_start, now) {
            Some(held) => {
                ops.keys_in_memory.fetch_add(1, Ordering::Relaxed);
                held
            }
            None => {
                ops.keys_from_database.fetch_add(1, Ordering::Relaxed);
                let epoch = self.keyring.epoch();
                let found = self
                    .store
                    .authenticate_hash(&hash, period_start, now)
                    .await?
                    .ok_or(EngineError::Unauthorized)?;
                self.keyring
                    .remember(&hash, &found.0, &found.1, period_start, epoch);
                found
            }
        };
        let per_minute = tenant
            .rate_limit
            .unwrap_or(self.settings.quotas.requests_per_minute);
        if let Err(retry_after) = self.limiter.take(&auth.key_id, per_minute, now) {
            return Err(EngineError::RateLimited {
                per_minute,
                retry_after,
                tenant: false,
            });
        }
        // Beside each key's limit, all the tenant's keys together: more keys are no more rate.
        let together = self.settings.quotas.tenant_requests_per_minute;
        if let Err(retry_after) =
            self.limiter
                .take(&format!("tenant/{}", tenant.slug), together, now)
        {
            return Err(EngineError::RateLimited {
                per_minute: together,
                retry_after,
                tenant: true,
            });
        }
        self.meter.count(&tenant.slug, &auth.key_id, now);
        Ok(Caller {
            tenant,
            key_id: auth.key_id,
        })
    }

    /// The tenant's keys that are not revoked, oldest first.
    #[tracing::instrument(skip(self, tenant), fields(tenant = %tenant.slug))]
    pub async fn list_keys(&self, tenant: &Tenant) -> Result<Vec<ApiKey>> {
        Ok(self.store.keys(&tenant.slug).await?)
    }

    /// A new key of the tenant `slug` (asked by the tenant itself, or issued by the operator),
    /// expiring after `expires_in_days` when given; its secret exists only in the answer. A
    /// tenant holds at most `limits.max_keys_per_tenant` live keys.
    #[tracing::instrument(skip(self))]
    pub async fn create_key(
        &self,
        slug: &str,
        name: &str,
        expires_in_days: Option<u32>,
    ) -> Result<NewKey> {
        let now = self.clock.now();
        let expires = expires_in_days.map(|d| now + chrono::Duration::days(i64::from(d)));
        let max = self.settings.limits.max_keys_per_tenant;
        match self.store.create_key(slug, name, expires, max, now).await? {
            KeyCreation::Created(key) => Ok(key),
            KeyCreation::LimitReached => Err(EngineError::KeyLimit(max)),
            KeyCreation::NoTenant => Err(EngineError::TenantNotFound(slug.to_string())),
        }
    }

    /// Revokes the tenant's key `id`: the next request made with it is refused.
    #[tracing::instrument(skip(self, tenant), fields(tenant = %tenant.slug))]
    pub async fn revoke_key(&self, tenant: &Tenant, id: &str) -> Result<()> {
        if self.store.revoke_key(&tenant.slug, id).await? {
            // Here at once; other instances through the change feed.
            self.keyring.forget_key(id);
            Ok(())
        } else {
            Err(EngineError::KeyNotFound(id.to_string()))
        }
    }
}
