//! `/v1/usage`: the tenant's usage in the current billing period, against its quotas.

use std::sync::Arc;

use chrono::NaiveDate;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::auth::ApiKeyAuth;
use super::error::responses;
use super::wire::Timestamp;
use super::wire::document_example;
use super::{ApiTags, App};

/// Usage on one day (UTC).
#[derive(Debug, Clone, Object)]
pub struct DailyUsage {
    /// The day, UTC.
    pub date: NaiveDate,
    /// Agent runs started that day, completed and failed.
    pub runs: u64,
    /// Model tokens of runs and chats.
    pub tokens: u64,
    /// Authenticated `/v1` requests.
    pub api_calls: u64,
}

/// The tenant's usage in the current billing period.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct UsageResponse {
    /// First second of the period.
    pub period_start: Timestamp,
    /// Last second of the period.
    pub period_end: Timestamp,
    /// Agent runs, completed and failed.
    pub total_runs: u64,
    /// Model tokens of runs and chats.
    pub total_tokens: u64,
    /// Authenticated `/v1` requests, this one included.
    pub total_api_calls: u64,
    /// Runs allowed in the period.
    pub quota_runs: u64,
    /// Tokens allowed in the period.
    pub quota_tokens: u64,
    /// Every day of the period with activity, newest first.
    pub daily_usage: Vec<DailyUsage>,
}

responses! {
    UsageEndpointResponse {
        ok {
        /// Usage and quotas of the current period.
        Ok(Json<UsageResponse>) = 200,
        }
        errors {
            Unauthorized = 401: "Missing or invalid API key.",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

pub struct UsageApi;

#[OpenApi(tag = "ApiTags::Usage")]
impl UsageApi {
    /// Get usage summary
    ///
    /// Returns your tenant's usage for the current billing period (a calendar month in UTC
    /// unless the deployment configures another start day), with one row per active day.
    #[oai(path = "/usage", method = "get", operation_id = "getUsage")]
    async fn usage(&self, app: Data<&Arc<App>>, auth: ApiKeyAuth) -> UsageEndpointResponse {
        let tenant = &auth.0.tenant;
        let report = match app.engine.usage(tenant).await {
            Ok(r) => r,
            Err(e) => return e.into(),
        };
        let usage = report.usage;
        let daily_usage = usage
            .days
            .into_iter()
            .filter_map(|d| {
                Some(DailyUsage {
                    date: d.date.parse().ok()?,
                    runs: d.runs,
                    tokens: d.tokens,
                    api_calls: d.api_calls,
                })
            })
            .collect();
        UsageEndpointResponse::Ok(Json(UsageResponse {
            period_start: report.period.start.into(),
            period_end: report.period.end.into(),
            total_runs: usage.total_runs,
            total_tokens: usage.total_tokens,
            total_api_calls: usage.total_api_calls,
            quota_runs: tenant.quota_runs,
            quota_tokens: tenant.quota_tokens,
            daily_usage,
        }))
    }
}

document_example!(UsageResponse, "getUsage.json", "response");
