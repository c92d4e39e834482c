//! Usage: billing periods, daily rows (runs, tokens, API calls) and their totals.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use surrealdb::types::RecordId;

use super::{Result, Store};

/// One billing period: `[start, end]`, both inclusive, `end` one second before the next start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Period {
    /// The period containing `now`, for periods starting on day `start_day` (1–28) of each month, UTC.
    pub fn containing(now: DateTime<Utc>, start_day: u32) -> Period {
        let start_day = start_day.clamp(1, 28);
        let this_month =
            NaiveDate::from_ymd_opt(now.year(), now.month(), start_day).expect("day 1-28 exists");
        let start = if now.day() >= start_day {
            this_month
        } else {
            this_month
                .checked_sub_months(Months::new(1))
                .expect("in range")
        };
        let next = start.checked_add_months(Months::new(1)).expect("in range");
        let at_midnight =
            |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"));
        Period {
            start: at_midnight(start),
            end: at_midnight(next) - chrono::Duration::seconds(1),
        }
    }

    /// Every date of the period up to and including `until`, newest first.
    pub fn dates_until(&self, until: DateTime<Utc>) -> Vec<NaiveDate> {
        let last = until.min(self.end).date_naive();
        let mut d = self.start.date_naive();
        let mut out = Vec::new();
        while d <= last {
            out.push(d);
            d = d.checked_add_days(Days::new(1)).expect("in range");
        }
        out.reverse();
        out
    }
}

/// One day of a tenant's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayUsage {
    pub date: String,
    #[serde(default)]
    pub runs: u64,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub api_calls: u64,
}

/// A tenant's usage over one period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub total_runs: u64,
    pub total_tokens: u64,
    pub total_api_calls: u64,
    /// Days with any activity, newest first.
    pub days: Vec<DayUsage>,
}

/// The tokens period `key` (a SurrealQL expression giving its row key, `tenant|start`) has
/// used, as a SurrealQL expression: starts' row and settlements' row both count them (schema
/// version 9; the ledger's start paths read the first row anyway and add the second).
pub(super) fn period_tokens(key: &str) -> String {
    format!(
        "((type::record('usage_period', {key}).tokens ?? 0) + (type::record('usage_settled', {key}).tokens ?? 0))"
    )
}

impl Store {
    /// The tenant's usage in `period` up to `now`: one key lookup per day of the period, never
    /// a scan of history.
    #[tracing::instrument(skip(self, period))]
    pub async fn usage(&self, tenant: &str, period: &Period, now: DateTime<Utc>) -> Result<Usage> {
        let ids: Vec<RecordId> = period
            .dates_until(now)
            .iter()
            .map(|d| RecordId::new("usage_daily", format!("{tenant}|{d}")))
            .collect();
        // Days without a row read as nothing.
        let rows: Vec<Value> = self
            .read_each(ids, ".{date, runs, tokens, api_calls}")
            .await?
            .into_iter()
            .filter(|d| !d["date"].is_null())
            .collect();
        let mut days: Vec<DayUsage> = super::decode_rows(rows, "usage_daily")?;
        days.retain(|d| d.runs + d.tokens + d.api_calls > 0);
        Ok(Usage {
            total_runs: days.iter().map(|d| d.runs).sum(),
            total_tokens: days.iter().map(|d| d.tokens).sum(),
            total_api_calls: days.iter().map(|d| d.api_calls).sum(),
            days,
        })
    }

    /// Adds counted API calls: `(tenant, date, calls)`.
    pub async fn add_api_calls(&self, calls: &[(String, NaiveDate, u64)]) -> Result<()> {
        if calls.is_empty() {
            return Ok(());
        }
        let calls: Vec<Value> = calls
            .iter()
            .map(|(t, d, n)| json!({"key": format!("{t}|{d}"), "tenant": t, "date": d.to_string(), "n": n}))
            .collect();
        let sql = "FOR $c IN $calls { UPSERT type::record('usage_daily', $c.key) SET tenant = $c.tenant, \
                   date = $c.date, api_calls += $c.n; };";
        self.run_retrying(sql, json!({"calls": calls})).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn calendar_months() {
        let p = Period::containing(at("2026-03-13T14:22:00Z"), 1);
        assert_eq!(p.start, at("2026-03-01T00:00:00Z"));
        assert_eq!(p.end, at("2026-03-31T23:59:59Z"));
        let p = Period::containing(at("2026-02-28T23:59:59Z"), 1);
        assert_eq!(p.end, at("2026-02-28T23:59:59Z"));
        let p = Period::containing(at("2026-12-31T10:00:00Z"), 1);
        assert_eq!(p.end, at("2026-12-31T23:59:59Z"));
    }

    #[test]
    fn periods_starting_mid_month() {
        let p = Period::containing(at("2026-03-13T00:00:00Z"), 15);
        assert_eq!(p.start, at("2026-02-15T00:00:00Z"));
        assert_eq!(p.end, at("2026-03-14T23:59:59Z"));
        let p = Period::containing(at("2026-01-20T00:00:00Z"), 15);
        assert_eq!(p.start, at("2026-01-15T00:00:00Z"));
    }

    #[test]
    fn dates_newest_first() {
        let p = Period::containing(at("2026-03-03T12:00:00Z"), 1);
        let dates: Vec<String> = p
            .dates_until(at("2026-03-03T12:00:00Z"))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(dates, ["2026-03-03", "2026-03-02", "2026-03-01"]);
    }

    #[tokio::test]
    async fn usage_reads_each_day_of_the_period_so_far_newest_first() {
        let store = crate::store::testing::store().await;
        let period = Period::containing(at("2026-03-15T12:00:00Z"), 1);
        let day = |d: &str| NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
        store
            .add_api_calls(&[
                ("acme".into(), day("2026-03-01"), 2),
                ("acme".into(), day("2026-03-03"), 5),
                ("globex".into(), day("2026-03-02"), 9),
                // After `now`, and before the period: neither is read.
                ("acme".into(), day("2026-03-06"), 100),
                ("acme".into(), day("2026-02-28"), 100),
            ])
            .await
            .unwrap();
        let usage = store
            .usage("acme", &period, at("2026-03-05T08:00:00Z"))
            .await
            .unwrap();
        let days: Vec<(String, u64)> = usage
            .days
            .iter()
            .map(|d| (d.date.clone(), d.api_calls))
            .collect();
        assert_eq!(
            days,
            [("2026-03-03".to_string(), 5), ("2026-03-01".to_string(), 2)]
        );
        assert_eq!(usage.total_api_calls, 7);
    }
}
