//! Bearer authentication: API keys for `/v1`, the admin token for `/admin/v1`.

use std::sync::Arc;

use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

use super::App;
use super::error::ApiError;
use crate::engine::{Caller, EngineError};

/// An ARES API key, sent as `Authorization: Bearer ares_...`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "ares_<secret>", checker = "check_key")]
pub struct ApiKeyAuth(pub Caller);

async fn check_key(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    let app = req.data::<Arc<App>>().ok_or_else(ApiError::internal)?;
    match app.engine.authenticate(&bearer.token).await {
        Ok(caller) => Ok(caller),
        Err(e) => {
            if matches!(e, EngineError::RateLimited { .. }) {
                app.metrics.rate_limited();
            }
            Err(ApiError::from(e).into())
        }
    }
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
    match &app.engine.settings().admin_token {
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
