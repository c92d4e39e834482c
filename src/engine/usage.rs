//! Usage of the current billing period against the tenant's quotas: the stored days, plus the
//! API calls this instance counted and has not written yet.

use super::Engine;
use super::error::Result;
use crate::store::{DayUsage, Period, Tenant, Usage};

/// A tenant's usage of one period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    pub period: Period,
    pub usage: Usage,
}

impl Engine {
    /// The tenant's usage in the current billing period, this request's call included.
    #[tracing::instrument(skip(self, tenant), fields(tenant = %tenant.slug))]
    pub async fn usage(&self, tenant: &Tenant) -> Result<UsageReport> {
        let now = self.clock.now();
        let period = self.period_at(now);
        // Calls counted on this instance and not yet written, read with the database under
        // one gate so that a flush in between counts nothing twice or never.
        let gate = self.meter.reading().await;
        let mut usage = self.store.usage(&tenant.slug, &period, now).await?;
        let today = now.date_naive();
        let pending = self.meter.pending(&tenant.slug, today);
        drop(gate);
        if pending > 0 {
            match usage.days.iter_mut().find(|d| d.date == today.to_string()) {
                Some(d) => d.api_calls += pending,
                None => usage.days.insert(
                    0,
                    DayUsage {
                        date: today.to_string(),
                        runs: 0,
                        tokens: 0,
                        api_calls: pending,
                    },
                ),
            }
            usage.total_api_calls += pending;
        }
        Ok(UsageReport { period, usage })
    }
}
