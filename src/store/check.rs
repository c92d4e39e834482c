//! `ares check`: verifies the invariants that usage and run history keep, on any database, and
//! reports every violation it finds.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::usage::Period;
use super::{Result, Store};

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which invariant: `orphaned_run`, `daily_usage`, `period_usage`, `reservations`,
    /// `agent_counters`, `key_credentials`, `webhook_endpoints`.
    pub invariant: &'static str,
    /// What it concerns (a run, a tenant's day or period, an agent).
    pub subject: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.invariant, self.subject, self.message)
    }
}

/// What a check looked at, and what it found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub runs: u64,
    pub chats: u64,
    pub tenant_days: u64,
    pub periods: u64,
    pub agents: u64,
    pub keys: u64,
    pub violations: Vec<Violation>,
}

#[derive(Deserialize)]
struct DayCount {
    tenant: String,
    date: String,
    #[serde(default)]
    runs: u64,
    #[serde(default)]
    tokens: u64,
}

#[derive(Deserialize)]
struct PeriodRow {
    tenant: String,
    start: String,
    #[serde(default)]
    runs: u64,
    #[serde(default)]
    tokens: u64,
    #[serde(default)]
    reserved_runs: i64,
}

/// What settlements counted for an agent (`agent_settled`).
#[derive(Deserialize)]
struct SettledAgentRow {
    agent_id: String,
    tenant: String,
    #[serde(default)]
    total_runs: u64,
    #[serde(default)]
    completed_runs: u64,
}

/// Periods as both rows count them: runs started and tokens on `usage_period`, runs settled and
/// tokens on `usage_settled` (before version 9 of the schema, and on instances of the previous
/// version, settlements moved a run from `reserved_runs` to `runs` on the first row). A period's
/// runs are those settled on either row, its tokens the sum of both, and its reservations the
/// runs started but not settled.
fn with_settled(periods: Vec<PeriodRow>, settled: Vec<PeriodRow>) -> Vec<PeriodRow> {
    let mut all: BTreeMap<(String, String), PeriodRow> = periods
        .into_iter()
        .map(|p| ((p.tenant.clone(), p.start.clone()), p))
        .collect();
    for s in settled {
        let p = all
            .entry((s.tenant.clone(), s.start.clone()))
            .or_insert_with(|| PeriodRow {
                tenant: s.tenant.clone(),
                start: s.start.clone(),
                runs: 0,
                tokens: 0,
                reserved_runs: 0,
            });
        p.runs += s.runs;
        p.tokens += s.tokens;
        p.reserved_runs -= i64::try_from(s.runs).unwrap_or(i64::MAX);
    }
    all.into_values().collect()
}

/// Adds what settlements counted to each agent's counters; a count for an agent without its
/// `agent_state` row is a violation (a run's start makes that row).
fn add_settled(agents: &mut [AgentRow], settled: Vec<SettledAgentRow>) -> Vec<Violation> {
    let at: std::collections::HashMap<String, usize> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| (a.agent_id.clone(), i))
        .collect();
    let mut orphans = Vec::new();
    for s in settled {
        match at.get(&s.agent_id) {
            Some(&i) => {
                let a = &mut agents[i];
                a.total_runs += s.total_runs;
                a.completed_runs += s.completed_runs;
            }
            None => orphans.push(Violation {
                invariant: "agent_counters",
                subject: format!("agent {} of tenant {}", s.agent_id, s.tenant),
                message: format!(
                    "{} settled runs are counted for an agent that has no counters",
                    s.total_runs
                ),
            }),
        }
    }
    orphans
}

#[derive(Deserialize)]
struct AgentCount {
    agent_id: String,
    #[serde(default)]
    n: u64,
}

#[derive(Deserialize)]
struct AgentRow {
    agent_id: String,
    tenant: String,
    name: String,
    #[serde(default)]
    total_runs: u64,
    #[serde(default)]
    completed_runs: u64,
    #[serde(default)]
    run_seq: u64,
}

#[derive(Deserialize)]
struct KeyRow {
    key_id: String,
    tenant: String,
    /// The key id its credential names (`None` when there is no credential).
    credential: Option<String>,
}

#[derive(Deserialize)]
struct EndpointCount {
    slug: String,
    /// The count on the tenant's row (none before schema version 10).
    counted: Option<u64>,
    endpoints: u64,
}

#[derive(Deserialize)]
struct Running {
    tenant: String,
    started_at: DateTime<Utc>,
}

fn decode<T: for<'de> Deserialize<'de>>(
    rows: Vec<serde_json::Value>,
    what: &str,
) -> Result<Vec<T>> {
    rows.into_iter()
        .map(|r| {
            serde_json::from_value(r)
                .map_err(|e| super::StoreError::Internal(anyhow::anyhow!("decoding {what}: {e}")))
        })
        .collect()
}

impl Store {
    /// Checks that usage equals the sum of the stored runs and chats (on the days retention
    /// has not touched), that each period's counters equal its days and its runs in flight,
    /// that agents' counters match their runs, and that no run is left `running` by an
    /// instance that stopped.
    pub async fn check(&self, period_start_day: u32) -> Result<CheckReport> {
        // One transaction: a consistent snapshot even while instances write.
        let sql = "BEGIN; \
            SELECT tenant, time::format(started_at, '%Y-%m-%d') AS date, count() AS runs, \
              math::sum(tokens_used) AS tokens FROM run WHERE status != 'running' GROUP BY tenant, date; \
            SELECT tenant, time::format(created_at, '%Y-%m-%d') AS date, count() AS runs, \
              math::sum(tokens_used) AS tokens FROM chat GROUP BY tenant, date; \
            SELECT tenant, date, runs, tokens FROM usage_daily; \
            SELECT tenant, start, runs, tokens, reserved_runs FROM usage_period; \
            SELECT tenant, start, runs, tokens FROM usage_settled; \
            SELECT agent_id, count() AS n FROM run WHERE status != 'running' GROUP BY agent_id; \
            SELECT agent_id, count() AS n FROM run WHERE status = 'completed' GROUP BY agent_id; \
            SELECT agent_id, math::max(seq) AS n FROM run GROUP BY agent_id; \
            SELECT <string> record::id(id) AS agent_id, tenant, name, total_runs, completed_runs, run_seq FROM agent_state; \
            SELECT <string> record::id(id) AS agent_id, tenant, total_runs, completed_runs FROM agent_settled; \
            SELECT tenant, started_at FROM run WHERE status = 'running'; \
            SELECT key_id, tenant, type::record('credential', hash).key_id AS credential FROM api_key \
              WHERE revoked_at = NONE; \
            SELECT slug, webhook_endpoints AS counted, \
              count(SELECT VALUE webhook_id FROM webhook WHERE tenant = $parent.slug) AS endpoints FROM tenant; \
            COMMIT;";
        // The first result is BEGIN's.
        let mut out = self.run(sql, json!({})).await?.into_iter().skip(1);
        let mut next = || out.next().unwrap_or_default();
        let run_days: Vec<DayCount> = decode(next(), "run totals")?;
        let chat_days: Vec<DayCount> = decode(next(), "chat totals")?;
        let usage_days: Vec<DayCount> = decode(next(), "usage_daily")?;
        let periods: Vec<PeriodRow> = decode(next(), "usage_period")?;
        let settled: Vec<PeriodRow> = decode(next(), "usage_settled")?;
        let finished: Vec<AgentCount> = decode(next(), "run counts")?;
        let completed: Vec<AgentCount> = decode(next(), "run counts")?;
        let top_seq: Vec<AgentCount> = decode(next(), "run numbers")?;
        let mut agents: Vec<AgentRow> = decode(next(), "agent_state")?;
        let agents_settled: Vec<SettledAgentRow> = decode(next(), "agent_settled")?;
        let running: Vec<Running> = decode(next(), "running runs")?;
        let keys: Vec<KeyRow> = decode(next(), "api keys")?;
        let hooked: Vec<EndpointCount> = decode(next(), "webhook endpoints")?;
        let horizon = self.retention_horizon().await?.map(|h| h.date_naive());
        let periods = with_settled(periods, settled);
        let orphans = add_settled(&mut agents, agents_settled);

        let mut report = CheckReport {
            violations: orphans,
            runs: run_days.iter().map(|d| d.runs).sum::<u64>() + running.len() as u64,
            chats: chat_days.iter().map(|d| d.runs).sum(),
            periods: periods.len() as u64,
            agents: agents.len() as u64,
            keys: keys.len() as u64,
            ..Default::default()
        };

        // Every live key can authenticate: its credential names it.
        for k in &keys {
            if k.credential.as_deref() != Some(k.key_id.as_str()) {
                report.violations.push(Violation {
                    invariant: "key_credentials",
                    subject: format!("key {} of tenant {}", k.key_id, k.tenant),
                    message: match &k.credential {
                        None => "the key has no credential record: it cannot authenticate".into(),
                        Some(other) => format!("its secret's credential names key {other}"),
                    },
                });
            }
        }

        // Settlements learn from this count whether to write webhook deliveries (a database
        // before schema version 10 has none, and its settlements query the endpoints).
        let miscounted = hooked
            .iter()
            .filter_map(|t| Some((t, t.counted?)))
            .filter(|(t, counted)| *counted != t.endpoints);
        for (t, counted) in miscounted {
            report.violations.push(Violation {
                invariant: "webhook_endpoints",
                subject: format!("tenant {}", t.slug),
                message: format!(
                    "its row counts {counted} webhook endpoints, it has {}",
                    t.endpoints
                ),
            });
        }

        let now = chrono::Utc::now();
        for run in self.orphaned_runs(now).await? {
            let why = match run.deadline {
                Some(d) if d < now => format!("its deadline {d} passed"),
                _ => format!(
                    "its instance {} stopped",
                    run.instance.as_deref().unwrap_or("(none recorded)")
                ),
            };
            report.violations.push(Violation {
                invariant: "orphaned_run",
                subject: format!("run {}", run.run_id),
                message: format!(
                    "agent {} of tenant {} is still `running`, but {why}; a running instance fails it as interrupted within a lease",
                    run.agent, run.tenant,
                ),
            });
        }

        // Daily usage against the runs and chats of each day retention has left whole.
        type Day = (String, String);
        let mut stored: BTreeMap<Day, (u64, u64)> = BTreeMap::new();
        for d in &run_days {
            let e = stored
                .entry((d.tenant.clone(), d.date.clone()))
                .or_default();
            e.0 += d.runs;
            e.1 += d.tokens;
        }
        for d in &chat_days {
            stored
                .entry((d.tenant.clone(), d.date.clone()))
                .or_default()
                .1 += d.tokens;
        }
        let counted: BTreeMap<Day, (u64, u64)> = usage_days
            .iter()
            .map(|d| ((d.tenant.clone(), d.date.clone()), (d.runs, d.tokens)))
            .collect();
        let days: BTreeSet<&Day> = stored.keys().chain(counted.keys()).collect();
        for day in days {
            let whole = match (horizon, day.1.parse::<NaiveDate>()) {
                (Some(h), Ok(d)) => d > h,
                _ => true,
            };
            if !whole {
                continue;
            }
            report.tenant_days += 1;
            let s = stored.get(day).copied().unwrap_or_default();
            let c = counted.get(day).copied().unwrap_or_default();
            if s != c {
                report.violations.push(Violation {
                    invariant: "daily_usage",
                    subject: format!("tenant {} on {}", day.0, day.1),
                    message: format!(
                        "usage says {} runs and {} tokens; the stored runs and chats add up to {} runs and {} tokens",
                        c.0, c.1, s.0, s.1
                    ),
                });
            }
        }

        // Each period against its days, and its reservations against its runs in flight.
        for p in &periods {
            let subject = format!("tenant {} period from {}", p.tenant, p.start);
            let Ok(start) = p.start.parse::<NaiveDate>() else {
                report.violations.push(Violation {
                    invariant: "period_usage",
                    subject,
                    message: format!("the period start {:?} is not a date", p.start),
                });
                continue;
            };
            let start = start.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
            let period = Period::containing(start, period_start_day);
            let in_period = |date: &str| {
                date.parse::<NaiveDate>()
                    .is_ok_and(|d| d >= period.start.date_naive() && d <= period.end.date_naive())
            };
            let (runs, tokens) = usage_days
                .iter()
                .filter(|d| d.tenant == p.tenant && in_period(&d.date))
                .fold((0, 0), |(r, t), d| (r + d.runs, t + d.tokens));
            if (runs, tokens) != (p.runs, p.tokens) {
                report.violations.push(Violation {
                    invariant: "period_usage",
                    subject: subject.clone(),
                    message: format!(
                        "the period says {} runs and {} tokens; its days add up to {runs} runs and {tokens} tokens",
                        p.runs, p.tokens
                    ),
                });
            }
            let in_flight = running
                .iter()
                .filter(|r| {
                    r.tenant == p.tenant
                        && r.started_at >= period.start
                        && r.started_at <= period.end
                })
                .count() as i64;
            if p.reserved_runs != in_flight {
                report.violations.push(Violation {
                    invariant: "reservations",
                    subject,
                    message: format!(
                        "{} runs are reserved but {in_flight} are running",
                        p.reserved_runs
                    ),
                });
            }
        }

        // Agents' counters against their runs (all of them only while none were purged).
        let count = |rows: &[AgentCount], id: &str| {
            rows.iter().find(|r| r.agent_id == id).map_or(0, |r| r.n)
        };
        for a in &agents {
            let subject = format!("agent {} of tenant {}", a.name, a.tenant);
            let top = count(&top_seq, &a.agent_id);
            if top > a.run_seq {
                report.violations.push(Violation {
                    invariant: "agent_counters",
                    subject: subject.clone(),
                    message: format!(
                        "run number {top} is stored but only {} runs were started",
                        a.run_seq
                    ),
                });
            }
            if horizon.is_none() {
                let (total, done) = (
                    count(&finished, &a.agent_id),
                    count(&completed, &a.agent_id),
                );
                if (total, done) != (a.total_runs, a.completed_runs) {
                    report.violations.push(Violation {
                        invariant: "agent_counters",
                        subject,
                        message: format!(
                            "the counters say {} runs ({} completed); {total} finished runs ({done} completed) are stored",
                            a.total_runs, a.completed_runs
                        ),
                    });
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::super::testing::{finished, run, store};
    use super::super::{Period, RunRecord, RunStatus, Store};

    /// Starts and completes a run of `acme`'s echo that used `tokens`, on an instance holding
    /// a lease.
    async fn complete_run(store: &Store, period: &Period, tokens: u64) -> RunRecord {
        store
            .renew_lease(std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let mut r = run("acme");
        let res = store
            .begin_run(period, 10, 1000, &mut r)
            .await
            .unwrap()
            .unwrap();
        let done = finished(r, tokens);
        assert!(store.finish_run(&res, &done, &[]).await.unwrap().now);
        done
    }

    fn invariants(report: &super::CheckReport) -> Vec<&'static str> {
        report.violations.iter().map(|v| v.invariant).collect()
    }

    #[tokio::test]
    async fn a_consistent_store_passes_and_corruption_is_named() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        for tokens in [3, 4] {
            complete_run(&store, &period, tokens).await;
        }
        let report = store.check(1).await.unwrap();
        assert_eq!(
            invariants(&report),
            Vec::<&str>::new(),
            "{:?}",
            report.violations
        );
        assert_eq!(
            (
                report.runs,
                report.tenant_days,
                report.periods,
                report.agents
            ),
            (2, 1, 1, 1)
        );

        // Usage that no longer matches the runs is reported, naming the tenant's day.
        store
            .run("UPDATE usage_daily SET tokens += 5", json!({}))
            .await
            .unwrap();
        let report = store.check(1).await.unwrap();
        assert_eq!(
            invariants(&report),
            ["daily_usage", "period_usage"],
            "{:?}",
            report.violations
        );
        assert!(report.violations[0].subject.starts_with("tenant acme on "));
        assert!(
            report.violations[0].message.contains("12 tokens"),
            "{}",
            report.violations[0]
        );
    }

    /// A run whose instance is alive but whose deadline passed (its task was lost) is failed
    /// too; one within its deadline is left alone.
    #[tokio::test]
    async fn an_overdue_run_of_a_live_instance_is_failed() {
        let store = store().await;
        store
            .renew_lease(std::time::Duration::from_secs(60))
            .await
            .unwrap();
        let period = Period::containing(Utc::now(), 1);
        let mut overdue = run("acme");
        overdue.deadline = Some(Utc::now() - chrono::Duration::seconds(1));
        let mut current = run("acme");
        current.deadline = Some(Utc::now() + chrono::Duration::minutes(5));
        for r in [&mut overdue, &mut current] {
            store
                .begin_run(&period, 10, 1000, r)
                .await
                .unwrap()
                .unwrap();
        }
        let report = store.check(1).await.unwrap();
        assert_eq!(
            invariants(&report),
            ["orphaned_run"],
            "{:?}",
            report.violations
        );
        assert!(report.violations[0].message.contains("deadline"));
        assert_eq!(store.reap_interrupted(1, Utc::now()).await.unwrap().runs, 1);
        let state = store
            .agent_states("acme", &[(overdue.agent_id.clone(), "echo".into())])
            .await
            .unwrap();
        let stored = store
            .runs(&overdue.agent_id, &state[0], 0, 10)
            .await
            .unwrap();
        let by_id = |id: &str| stored.iter().find(|r| r.id == id).unwrap().clone();
        assert_eq!(by_id(&overdue.id).status, RunStatus::Failed);
        assert_eq!(
            by_id(&overdue.id).error.as_deref(),
            Some(super::super::OVERDUE)
        );
        assert_eq!(by_id(&current.id).status, RunStatus::Running);
    }

    #[tokio::test]
    async fn a_run_left_by_a_stopped_instance_is_failed_once_then_amended_by_its_owner() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        // This store never took a lease: to the reaper its instance is gone.
        let mut r = run("acme");
        let res = store
            .begin_run(&period, 10, 1000, &mut r)
            .await
            .unwrap()
            .unwrap();
        let report = store.check(1).await.unwrap();
        assert_eq!(
            invariants(&report),
            ["orphaned_run"],
            "{:?}",
            report.violations
        );

        assert_eq!(store.reap_interrupted(1, Utc::now()).await.unwrap().runs, 1);
        assert_eq!(
            store.reap_interrupted(1, Utc::now()).await.unwrap().runs,
            0,
            "settled once"
        );
        let report = store.check(1).await.unwrap();
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        let state = store
            .agent_states("acme", &[(r.agent_id.clone(), "echo".into())])
            .await
            .unwrap();
        let stored = store.runs(&r.agent_id, &state[0], 0, 10).await.unwrap();
        assert_eq!(stored[0].status, RunStatus::Failed);
        assert!(
            stored[0]
                .error
                .as_deref()
                .unwrap()
                .starts_with("interrupted")
        );
        let usage = store.usage("acme", &period, Utc::now()).await.unwrap();
        assert_eq!((usage.total_runs, usage.total_tokens), (1, 0));

        // The instance was only cut off: its late result replaces the interruption, once.
        let done = finished(r.clone(), 7);
        assert!(store.finish_run(&res, &done, &[]).await.unwrap().now);
        assert!(
            !store.finish_run(&res, &done, &[]).await.unwrap().now,
            "a retry changes nothing"
        );
        let stored = store.runs(&r.agent_id, &state[0], 0, 10).await.unwrap();
        assert_eq!(stored[0].status, RunStatus::Completed);
        let usage = store.usage("acme", &period, Utc::now()).await.unwrap();
        assert_eq!((usage.total_runs, usage.total_tokens), (1, 7));
        let report = store.check(1).await.unwrap();
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }

    #[tokio::test]
    async fn retention_keeps_usage_and_listings_consistent() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        let hook = crate::store::Webhook {
            id: "hook".into(),
            tenant: "acme".into(),
            url: "https://example.com/hook".into(),
            events: vec!["*".into()],
            description: None,
            created_at: Utc::now(),
        };
        store
            .create_tenant("acme", "Acme", 100, 100_000, None, "default")
            .await
            .unwrap();
        assert!(store.create_webhook(&hook, "whsec_x", 1).await.unwrap());
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(complete_run(&store, &period, 2).await.agent_id);
        }
        assert_eq!(store.deliveries("hook", 0, 10).await.unwrap().1, 3);
        let purged = store
            .purge_before(Utc::now() + chrono::Duration::seconds(1))
            .await
            .unwrap();
        assert_eq!((purged.runs, purged.deliveries), (3, 3));
        assert_eq!(store.deliveries("hook", 0, 10).await.unwrap().1, 0);
        let state = store
            .agent_states("acme", &[(ids[0].clone(), "echo".into())])
            .await
            .unwrap();
        assert_eq!((state[0].run_seq, state[0].purged_seq), (3, 3));
        assert!(
            store
                .runs(&ids[0], &state[0], 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
        // Daily usage stays for billing; the purged day is no longer compared with its runs.
        let usage = store.usage("acme", &period, Utc::now()).await.unwrap();
        assert_eq!((usage.total_runs, usage.total_tokens), (3, 6));
        assert!(store.retention_horizon().await.unwrap().is_some());
        let report = store.check(1).await.unwrap();
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }
}
