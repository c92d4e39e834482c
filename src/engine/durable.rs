//! Records that must not be lost: a finished run's final state and a chat's usage are written
//! again in the background while the database is away (the work happened and is the tenant's).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::future::BoxFuture;
use tracing::Instrument;

use super::Engine;
use crate::store::StoreError;

/// First pause before writing again, and the longest.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(10);

impl Engine {
    /// Writes `write` (idempotent) again until the database takes it, in the background, in the
    /// current request's span. If this instance stops first, a run is failed as interrupted by
    /// the next instance.
    pub(super) fn store_later<F>(&self, what: String, write: F)
    where
        F: Fn() -> BoxFuture<'static, Result<(), StoreError>> + Send + Sync + 'static,
    {
        let telemetry = Arc::clone(&self.telemetry);
        telemetry
            .ops
            .pending_records
            .fetch_add(1, Ordering::Relaxed);
        let schedule = ExponentialBuilder::default()
            .with_min_delay(FIRST_PAUSE)
            .with_max_delay(MAX_PAUSE)
            .without_max_times();
        tokio::spawn(
            async move {
                tokio::time::sleep(FIRST_PAUSE).await;
                let stored = write
                    .retry(schedule)
                    .sleep(tokio::time::sleep)
                    .when(|e| matches!(e, StoreError::Unavailable(_)))
                    .await;
                match stored {
                    Ok(()) => tracing::info!("the record of {what} is stored"),
                    Err(e) => tracing::error!(error = %e, "storing the record of {what} failed"),
                }
                telemetry
                    .ops
                    .pending_records
                    .fetch_sub(1, Ordering::Relaxed);
            }
            .in_current_span(),
        );
    }
}
