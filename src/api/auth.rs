//! Bearer authentication: API keys for `/v1`, the admin token for `/admin/v1`.

use std::sync::Arc;

use chrono::Utc;
use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

use super::App;
use super::error::ApiError;
use crate::store::Tenant;

/// The tenant a request's API key belongs to.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Tenant,
    pub key_id: String,
}

/// An ARES API key, sent as `Authorization: Bearer ares_...`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "ares_<secret>", checker = "check_key")]
pub struct ApiKeyAuth(pub Caller);

async fn check_key(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    let app = req.data::<Arc<App>>().ok_or_else(ApiError::internal)?;
    let secret = bearer.token.trim();
    if !secret.starts_with(crate::store::keys_prefix()) {
        return Err(ApiError::unauthorized().into());
    }
    let (auth, tenant) = app
        .engine
        .store
        .authenticate(
            secret,
            crate::store::Period::containing(Utc::now(), app.settings.billing.period_start_day)
                .start
                .date_naive(),
        )
        .await
        .map_err(ApiError::from)?
        .ok_or_else(ApiError::unauthorized)?;
    let per_minute = tenant
        .rate_limit
        .unwrap_or(app.settings.quotas.requests_per_minute);
    if let Err(wait) = app
        .limiter
        .take(&auth.key_id, per_minute, std::time::Instant::now())
    {
        app.metrics.rate_limited();
        return Err(ApiError::rate_limited(per_minute, wait).into());
    }
    app.engine
        .meter
        .count(&tenant.slug, &auth.key_id, Utc::now());
    Ok(Caller {
        tenant,
        key_id: auth.key_id,
    })
}

/// The platform operator's token (`ARES_ADMIN_TOKEN`), sent as `Authorization: Bearer ...`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_admin")]
pub struct AdminAuth(pub ());

/// Equality that takes the same time wherever the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    // Compare fixed-length digests so that the length of the secret does not leak either.
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

async fn check_admin(req: &Request, bearer: Bearer) -> poem::Result<()> {
    let app = req.data::<Arc<App>>().ok_or_else(ApiError::internal)?;
    match &app.settings.admin_token {
        Some(token) if constant_time_eq(token.expose().as_bytes(), bearer.token.as_bytes()) => {
            Ok(())
        }
        _ => Err(ApiError::unauthorized_admin().into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_is_equality() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
        assert!(!super::constant_time_eq(b"", b"a"));
    }
}
