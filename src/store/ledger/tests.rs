//! Tests of the ledger: batches, their counters, quotas and steps, against an in-memory store.

use chrono::Utc;
use serde_json::json;

use super::super::testing::{finished, run, store};
use super::super::{ChatRecord, Period};
use super::{LedgerFigures, Op, Outcome, Settled};
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn chat(id: &str, tokens: u64) -> ChatRecord {
    ChatRecord {
        id: id.into(),
        tenant: "acme".into(),
        model: "m".into(),
        finish_reason: "stop".into(),
        tokens_used: tokens,
        created_at: Utc::now(),
    }
}

/// Tenant `acme`'s row (where its endpoints are counted) and an endpoint of it, for every
/// event.
async fn webhook_of_acme(store: &super::Store) {
    store
        .run(
            "UPSERT tenant:acme SET slug = 'acme', name = 'Acme', quota_runs = 10, quota_tokens = 1000, \
             created_at = time::now(); \
             CREATE webhook:w CONTENT { webhook_id: 'w', tenant: 'acme', url: 'https://example.com/h', \
             events: ['*'], secret: 's', created_at: time::now() }",
            json!({}),
        )
        .await
        .unwrap();
}

/// The period's runs settled, runs in flight and tokens, as its two rows count them.
async fn usage_row(store: &super::Store, period: &Period) -> serde_json::Value {
    let key = format!("acme|{}", period.start.date_naive());
    store
        .run(
            "LET $p = type::record('usage_period', $k).{runs, reserved_runs, tokens}; \
             LET $s = type::record('usage_settled', $k).{runs, tokens}; \
             RETURN { runs: ($p.runs ?? 0) + ($s.runs ?? 0), \
               reserved_runs: ($p.reserved_runs ?? 0) - ($s.runs ?? 0), \
               tokens: ($p.tokens ?? 0) + ($s.tokens ?? 0) };",
            json!({"k": key}),
        )
        .await
        .unwrap()
        .pop()
        .unwrap()[0]
        .clone()
}

#[tokio::test]
async fn one_batch_grants_in_order_within_the_quota_and_counts_each_chat_once() {
    let store = store().await;
    let period = Period::containing(Utc::now(), 1);
    let mut ops: Vec<Op> = ["a", "b", "a"]
        .iter()
        .map(|id| Op::Chat {
            chat: chat(id, 5),
            period,
        })
        .collect();
    let runs: Vec<_> = (0..5).map(|_| run("acme")).collect();
    ops.extend(runs.iter().map(|r| Op::Begin {
        period,
        quota_runs: 3,
        quota_tokens: 1000,
        run: r.clone(),
    }));
    let out = store.write_batch(&ops).await.unwrap();
    assert_eq!(out[..3], [Outcome::Chat; 3]);
    assert_eq!(
        out[3..],
        [
            Outcome::Begin(Some(1)),
            Outcome::Begin(Some(2)),
            Outcome::Begin(Some(3)),
            Outcome::Begin(None),
            Outcome::Begin(None)
        ]
    );
    // Each granted run is stored under its number and found by its id; a refused one is
    // not stored.
    for (i, r) in runs.iter().enumerate() {
        let found = store.run_by_id("acme", &r.id).await.unwrap();
        let seq = found.map(|f| (f.seq, f.status));
        let want = (i < 3).then_some((i as u64 + 1, super::RunStatus::Running));
        assert_eq!(seq, want, "run {i}");
    }
    assert_eq!(
        usage_row(&store, &period).await,
        json!({"runs": 0, "reserved_runs": 3, "tokens": 10}),
        "chat `a` counted once"
    );
    // The same chat again, in a later batch (alone, or beside a new one), is not counted
    // again.
    for chats in [vec![chat("b", 5)], vec![chat("b", 5), chat("c", 3)]] {
        let ops: Vec<Op> = chats
            .into_iter()
            .map(|chat| Op::Chat { chat, period })
            .collect();
        store.write_batch(&ops).await.unwrap();
    }
    assert_eq!(
        usage_row(&store, &period).await["tokens"],
        13,
        "only `c` added"
    );

    // Settling two runs in one batch, one of them twice, counts each once; the steps
    // they had not written are written with them.
    let reservation = super::reservation("acme", &period, runs[0].started_at);
    let step = super::Step {
        kind: super::super::StepKind::Model,
        name: "m".into(),
        arguments: None,
        result: None,
        tokens: 7,
        started_at: runs[0].started_at,
        duration_ms: 1,
        error: None,
    };
    let settle = |i: usize, seq: u64| Op::Settle {
        reservation: reservation.clone(),
        run: {
            let mut r = finished(runs[i].clone(), 7);
            r.seq = seq;
            r
        },
        steps: vec![json!({"n": 1, "step": step}), json!({"n": 2, "step": step})],
    };
    let out = store
        .write_batch(&[settle(0, 1), settle(1, 2), settle(0, 1)])
        .await
        .unwrap();
    let settled = Outcome::Settle(Settled {
        now: true,
        webhooks: false,
    });
    assert_eq!(out, [settled; 3]);
    for run in &runs[..2] {
        let steps = store.steps_after(&run.id, 0).await.unwrap();
        assert_eq!(steps, [(1, step.clone()), (2, step.clone())]);
    }
    let out = store.write_batch(&[settle(1, 2)]).await.unwrap();
    let nothing = Settled {
        now: false,
        webhooks: false,
    };
    assert_eq!(out, [Outcome::Settle(nothing)], "already settled");
    assert_eq!(
        usage_row(&store, &period).await,
        json!({"runs": 2, "reserved_runs": 1, "tokens": 27})
    );
    // Agent counters, usage and runs agree; the third run is still running, on an
    // instance that holds no lease.
    let report = store.check(1).await.unwrap();
    let found: Vec<_> = report.violations.iter().map(|v| v.invariant).collect();
    assert_eq!(found, ["orphaned_run"], "{:?}", report.violations);

    // Once the tenant has a webhook endpoint, settlements say so (the dispatcher is woken
    // only then), alone or in a batch.
    webhook_of_acme(&store).await;
    let hooked = Settled {
        now: true,
        webhooks: true,
    };
    let out = store.write_batch(&[settle(2, 3)]).await.unwrap();
    assert_eq!(out, [Outcome::Settle(hooked)]);
    let mut again = settle(2, 3);
    if let Op::Settle { run, .. } = &mut again {
        run.id = "not-settled".into();
    }
    let out = store
        .write_batch(&[
            again,
            Op::Chat {
                chat: chat("z", 1),
                period,
            },
        ])
        .await
        .unwrap();
    let already = Settled {
        now: false,
        webhooks: true,
    };
    assert_eq!(out, [Outcome::Settle(already), Outcome::Chat]);

    // Once its last endpoint is gone, they no longer do.
    assert!(store.delete_webhook("acme", "w").await.unwrap());
    let mut later = settle(2, 3);
    if let Op::Settle { run, .. } = &mut later {
        run.id = "not-settled-either".into();
    }
    let out = store.write_batch(&[later]).await.unwrap();
    assert_eq!(out, [Outcome::Settle(nothing)]);
}

/// Counter rows a batch wrote are known from then on, and later batches update them
/// (without `UPSERT`) to the same totals.
#[tokio::test]
async fn counter_rows_once_written_are_updated_to_the_same_totals() {
    let store = store().await;
    let period = Period::containing(Utc::now(), 1);
    let runs: Vec<_> = (0..4).map(|_| run("acme")).collect();
    let r = super::reservation("acme", &period, runs[0].started_at);
    let rows = |table: &str, key: &str| vec![super::row(table, key)];
    let (settled, daily) = (
        rows("usage_settled", &r.period_key),
        rows("usage_daily", &r.day_key),
    );
    let (period_row, agent) = (
        rows("usage_period", &r.period_key),
        rows("agent_state", &runs[0].agent_id),
    );
    let agent_settled = rows("agent_settled", &runs[0].agent_id);
    let begin = |r: &super::RunRecord| Op::Begin {
        period,
        quota_runs: 10,
        quota_tokens: 1000,
        run: r.clone(),
    };
    let chats = |ids: &[&str]| -> Vec<Op> {
        ids.iter()
            .map(|id| Op::Chat {
                chat: chat(id, 5),
                period,
            })
            .collect()
    };
    let settle = |i: usize| Op::Settle {
        reservation: r.clone(),
        run: {
            let mut f = finished(runs[i].clone(), 7);
            f.seq = i as u64 + 1;
            f
        },
        steps: vec![],
    };
    let known = |rows: &[String]| store.counters.knows(rows);

    // A chat makes its period's and day's rows, known from then on; a run start's are not yet.
    store.write_batch(&chats(&["x"])).await.unwrap();
    assert!(known(&settled) && known(&daily));
    assert!(!known(&period_row) && !known(&agent));
    let mut ops = chats(&["y", "x"]);
    ops.extend(runs[..2].iter().map(begin));
    store.write_batch(&ops).await.unwrap();
    assert!(known(&period_row) && known(&agent));
    let mut ops = chats(&["z", "y"]);
    ops.extend(runs[2..].iter().map(begin));
    let out = store.write_batch(&ops).await.unwrap();
    assert_eq!(out[2..], [Outcome::Begin(Some(3)), Outcome::Begin(Some(4))]);

    assert!(!known(&agent_settled));
    store.write_batch(&[settle(0), settle(1)]).await.unwrap();
    assert!(known(&agent_settled));
    store
        .write_batch(&[settle(2), settle(3), settle(0)])
        .await
        .unwrap();
    // A start and a settlement written alone (statements of their own), on known rows.
    let (res, fifth) = start(&store, &period, "acme", (10, 1000)).await.unwrap();
    assert_eq!(fifth.seq, 5);
    let done = store.finish_run(&res, &finished(fifth, 7), &[]).await;
    assert!(done.unwrap().now);

    assert_eq!(
        usage_row(&store, &period).await,
        json!({"runs": 5, "reserved_runs": 0, "tokens": 50}),
        "three chats of 5 tokens, five runs of 7"
    );
    let report = store.check(1).await.unwrap();
    assert_eq!(report.violations, [], "{:?}", report.violations);
    let state = store
        .agent_states("acme", &[(runs[0].agent_id.clone(), runs[0].agent.clone())])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (state.total_runs, state.completed_runs, state.run_seq),
        (5, 5, 5)
    );
}

/// A group whose counter rows are known updates them; the others upsert them.
#[test]
fn known_groups_update_their_counters_and_the_others_upsert_them() {
    let group = |known| super::script::Bound {
        size: 2,
        counters: vec![],
        known,
        events: true,
    };
    for known in [false, true] {
        let g = [group(known)];
        let sql = super::script(&g, &g, &g);
        let count = |verb: &str| {
            ["usage_", "agent_"]
                .iter()
                .map(|t| sql.matches(&format!("{verb} type::record('{t}")).count())
                .sum::<usize>()
        };
        // Two rows of the chats, three of the settlement, the agent's number, and the
        // period's row (made if missing; known, it is only updated by the reservation,
        // either way).
        assert_eq!(count("UPSERT"), if known { 0 } else { 7 }, "{sql}");
        assert_eq!(count("UPDATE"), if known { 7 } else { 1 }, "{sql}");
    }
}

#[tokio::test]
async fn runs_settled_in_one_batch_each_write_their_webhook_event() {
    let store = store().await;
    let period = Period::containing(Utc::now(), 1);
    webhook_of_acme(&store).await;
    let runs: Vec<_> = (0..3).map(|_| run("acme")).collect();
    let begins: Vec<Op> = runs
        .iter()
        .map(|r| Op::Begin {
            period,
            quota_runs: 10,
            quota_tokens: 1000,
            run: r.clone(),
        })
        .collect();
    store.write_batch(&begins).await.unwrap();
    let reservation = super::reservation("acme", &period, runs[0].started_at);
    let settles: Vec<Op> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| Op::Settle {
            reservation: reservation.clone(),
            run: {
                let mut r = finished(r.clone(), 1);
                r.seq = i as u64 + 1;
                r
            },
            steps: Vec::new(),
        })
        .collect();
    let out = store.write_batch(&settles).await.unwrap();
    let settled = Outcome::Settle(Settled {
        now: true,
        webhooks: true,
    });
    assert_eq!(out, [settled; 3]);
    let events = store
        .run(
            "SELECT VALUE run_id FROM webhook_delivery WHERE event_type = 'run.completed'",
            json!({}),
        )
        .await
        .unwrap();
    let mut got: Vec<&str> = events[0].iter().filter_map(|v| v.as_str()).collect();
    got.sort();
    let mut want: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    want.sort();
    assert_eq!(got, want, "one delivery per settled run");
}

#[tokio::test]
async fn concurrent_writers_never_overshoot() {
    let store = store().await;
    let period = Period::containing(Utc::now(), 1);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    store
                        .record_chat(&chat(&format!("c{i}"), 2), &period)
                        .await
                        .map(|_| None)
                } else {
                    let mut r = run("acme");
                    store
                        .begin_run(&period, 7, 1000, &mut r)
                        .await
                        .map(|res| res.map(|_| r.seq))
                }
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        if let Some(seq) = t.await.unwrap().unwrap() {
            seqs.push(seq);
        }
    }
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=7).collect::<Vec<_>>(),
        "7 granted, numbered 1 to 7"
    );
    assert_eq!(
        usage_row(&store, &period).await,
        json!({"runs": 0, "reserved_runs": 7, "tokens": 40})
    );
    // Refused starts are written too (their transaction tells that the quota is reached).
    let figures = store.ledger_figures();
    assert_eq!(figures.writes, 40, "{figures:?}");
    assert!((1..=40).contains(&figures.transactions), "{figures:?}");
}

#[tokio::test]
async fn writes_queued_behind_a_busy_lane_share_one_commit() {
    let store = store().await;
    let period = Period::containing(Utc::now(), 1);
    let ledger = store.ledger.clone().unwrap();
    let first = Op::Chat {
        chat: chat("c0", 1),
        period,
    };
    let shard = ledger.shard(&first);
    // The lane is busy (as while a write of its own runs): ten chats queue behind it.
    let busy = Arc::clone(&shard.gate).lock_owned().await;
    let writes: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(
                async move { store.record_chat(&chat(&format!("c{i}"), 1), &period).await },
            )
        })
        .collect();
    while shard.queued.load(Ordering::Acquire) < 10 {
        tokio::task::yield_now().await;
    }
    drop(busy);
    for w in writes {
        w.await.unwrap().unwrap();
    }
    assert_eq!(
        store.ledger_figures(),
        LedgerFigures {
            transactions: 1,
            writes: 10
        }
    );
    assert_eq!(usage_row(&store, &period).await["tokens"], 10);
}

#[tokio::test]
async fn a_bad_write_fails_alone() {
    let store = store().await;
    let period = Period::containing(Utc::now(), 1);
    // Tokens beyond the database's integers: this chat cannot be stored.
    let chats = (0..9).map(|i| chat(&format!("c{i}"), if i == 4 { u64::MAX } else { 1 }));
    let results = futures_util::future::join_all(chats.map(|c| {
        let store = store.clone();
        async move { store.record_chat(&c, &period).await }
    }))
    .await;
    let failed: Vec<usize> = (0..9).filter(|i| results[*i].is_err()).collect();
    assert_eq!(failed, [4]);
    assert_eq!(usage_row(&store, &period).await["tokens"], 8);
}

/// A run of `tenant` started under the quotas, with its number, or `None` when refused.
async fn start(
    store: &super::Store,
    period: &Period,
    tenant: &str,
    quotas: (u64, u64),
) -> Option<(super::Reservation, super::RunRecord)> {
    let mut r = run(tenant);
    let reserved = store
        .begin_run(period, quotas.0, quotas.1, &mut r)
        .await
        .unwrap();
    reserved.map(|res| (res, r))
}

/// Before version 9 of the schema (and on an instance of the previous version during a
/// rolling upgrade) a settlement counted on the rows a start writes; such counts still
/// count, beside the settlements of this version.
#[tokio::test]
async fn settlements_counted_the_previous_way_still_count() {
    let store = store().await;
    let period = Period::containing(Utc::now(), 1);
    let (_, old) = start(&store, &period, "acme", (3, 100)).await.unwrap();
    let (res, new) = start(&store, &period, "acme", (3, 100)).await.unwrap();
    // The first settles as the previous version settled a run, with 6 tokens.
    store
        .run(
            "BEGIN; \
             UPDATE type::record('run', [$r.agent_id, $r.seq]) SET status = 'completed', \
               output = { response: 'ok' }, finished_at = time::now(), duration_ms = 1, tokens_used = 6; \
             UPDATE type::record('usage_period', $res.period_key) SET runs += 1, reserved_runs -= 1, tokens += 6; \
             UPSERT type::record('usage_daily', $res.day_key) SET tenant = 'acme', date = $res.date, \
               runs += 1, tokens += 6; \
             UPDATE type::record('agent_state', $r.agent_id) SET total_runs += 1, completed_runs += 1, \
               last_run = <datetime>$r.started_at; \
             COMMIT;",
            json!({"r": old, "res": {"period_key": res.period_key, "day_key": res.day_key, "date": res.date}}),
        )
        .await
        .unwrap();
    // The second settles as this version does, with 4.
    assert!(
        store
            .finish_run(&res, &finished(new, 4), &[])
            .await
            .unwrap()
            .now
    );

    assert_eq!(
        usage_row(&store, &period).await,
        json!({"runs": 2, "reserved_runs": 0, "tokens": 10})
    );
    let report = store.check(1).await.unwrap();
    assert_eq!(report.violations, [], "{:?}", report.violations);
    let state = store
        .agent_states("acme", &[("acme-echo".into(), "echo".into())])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (state.total_runs, state.completed_runs, state.run_seq),
        (2, 2, 2)
    );
    // Both runs and both sets of tokens count against the quotas.
    assert!(!store.tokens_left("acme", &period, 10).await.unwrap());
    assert!(store.tokens_left("acme", &period, 11).await.unwrap());
    assert!(
        start(&store, &period, "acme", (3, 10)).await.is_none(),
        "10 tokens spent"
    );
    assert!(start(&store, &period, "acme", (3, 11)).await.is_some());
    assert!(
        start(&store, &period, "acme", (3, 11)).await.is_none(),
        "3 runs started"
    );
    // Authentication reads the period's tokens with the tenant, from both rows.
    let (_, key) = store
        .create_tenant("acme", "Acme", 3, 11, None, "k")
        .await
        .unwrap()
        .unwrap();
    let (_, tenant) = store
        .authenticate(&key.secret, period.start.date_naive(), Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tenant.period_tokens, Some(10));
}

#[tokio::test]
async fn a_new_period_reserves_within_the_quotas_and_never_over() {
    let store = store().await;
    let period = Period::containing(Utc::now(), 1);
    // Zero quotas refuse the first run of a period whose usage row does not exist yet.
    for quotas in [(0, 100), (5, 0)] {
        assert!(
            start(&store, &period, "zero", quotas).await.is_none(),
            "{quotas:?}"
        );
    }
    // A quota of 2: the first run creates the period, the second fits, the third is refused.
    let mut seqs = Vec::new();
    for _ in 0..2 {
        let (_, r) = start(&store, &period, "two", (2, 100)).await.unwrap();
        seqs.push(r.seq);
    }
    assert_eq!(seqs, [1, 2], "runs are numbered in order");
    assert!(start(&store, &period, "two", (2, 100)).await.is_none());
    // Settled tokens at the token quota refuse further runs.
    let (res, r) = start(&store, &period, "tokens", (10, 7)).await.unwrap();
    assert!(
        store
            .finish_run(&res, &finished(r, 7), &[])
            .await
            .unwrap()
            .now
    );
    assert!(start(&store, &period, "tokens", (10, 7)).await.is_none());
}

/// Connecting a store starts the ledger's own threads, where its workers write batches.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_workers_have_threads_of_their_own() {
    let _store = store().await;
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "ares-ledger"), "{names:?}");
}
