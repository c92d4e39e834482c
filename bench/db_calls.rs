//! Times the store calls on the request path (authenticate, record a chat, begin and finish a
//! run), one at a time and 16 at once, and reading a page of runs, on an embedded store.
//!
//! `cargo run --release --example bench_db_calls -- [surrealkv://DIR | mem://] [N] [HISTORY]`
//! (N calls of each kind; HISTORY runs generated before the page is read, N by default).
//! `BENCH_PAUSE_MS=50` idles that long before each sequential call, as a server between the
//! requests of a slow upstream does.

use std::time::{Duration, Instant};

use ares::store::{ChatRecord, Period, RunRecord, RunStatus, Store};
use chrono::Utc;

/// The server's allocator (`src/main.rs`), so the store's calls are timed as it runs them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn pct(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
    format!(
        "p50 {:.3} ms  p99 {:.3} ms  (n={})",
        at(0.5),
        at(0.99),
        v.len()
    )
}

fn run_record(tenant: &str) -> RunRecord {
    RunRecord::running(
        tenant,
        "bench",
        ares::engine::agent_id(tenant, "bench"),
        serde_json::json!({"message": "Evaluate this transaction", "context": {"amount": 15000}}),
        Utc::now(),
    )
}

fn chat_record(tenant: &str) -> ChatRecord {
    ChatRecord {
        id: uuid::Uuid::now_v7().to_string(),
        tenant: tenant.into(),
        model: "bench-model".into(),
        finish_reason: "stop".into(),
        tokens_used: 15,
        created_at: Utc::now(),
    }
}

/// Times `c` calls started at once, each in its own task.
async fn at_once<F, Fut>(c: usize, call: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = (0..c)
        .map(|_| {
            let call = call();
            tokio::spawn(async move {
                let t = Instant::now();
                call.await;
                t.elapsed()
            })
        })
        .collect();
    let mut times = Vec::with_capacity(c);
    for t in tasks {
        times.push(t.await?);
    }
    Ok(times)
}

/// Waits `pause` (not even a timer tick when it is zero).
async fn idle(pause: Duration) {
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
}

async fn one_run(store: &Store, period: &Period, pause: Duration) -> (Duration, Duration) {
    let mut run = run_record("bench");
    idle(pause).await;
    let t = Instant::now();
    let r = store
        .begin_run(period, u64::MAX / 4, u64::MAX / 4, &mut run)
        .await
        .expect("begin")
        .expect("quota");
    let begin = t.elapsed();
    run.status = RunStatus::Completed;
    run.output = Some(serde_json::json!({"answer": "ok"}));
    run.finished_at = Some(Utc::now());
    run.duration_ms = Some(1);
    run.tokens_used = 15;
    idle(pause).await;
    let t = Instant::now();
    assert!(store.finish_run(&r, &run, &[]).await.expect("finish").now);
    (begin, t.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).cloned().unwrap_or_else(|| "mem://".into());
    let n: usize = args.get(2).map_or(Ok(500), |s| s.parse())?;
    let history: u64 = args.get(3).map_or(Ok(n as u64), |s| s.parse())?;
    let store = Store::connect(&ares::config::DatabaseSettings {
        url: url.clone(),
        ..Default::default()
    })
    .await?;
    let (_, key) = store
        .create_tenant("bench", "Bench", u64::MAX / 4, u64::MAX / 4, None, "bench")
        .await?
        .expect("a new database has no tenant");
    let period = Period::containing(Utc::now(), 1);
    let start = period.start.date_naive();
    let pause = match std::env::var("BENCH_PAUSE_MS") {
        Ok(ms) => Duration::from_millis(ms.parse()?),
        Err(_) => Duration::ZERO,
    };
    println!("store: {url}, pause before each sequential call: {pause:?}");

    for round in ["warm-up", "measured"] {
        let (mut auth, mut chat, mut begin, mut finish) = (vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            idle(pause).await;
            let t = Instant::now();
            store
                .authenticate(&key.secret, start, chrono::Utc::now())
                .await?
                .expect("key");
            auth.push(t.elapsed());
            idle(pause).await;
            let t = Instant::now();
            store.record_chat(&chat_record("bench"), &period).await?;
            chat.push(t.elapsed());
            let (b, f) = one_run(&store, &period, pause).await;
            begin.push(b);
            finish.push(f);
        }
        if round == "warm-up" {
            continue;
        }
        println!("sequential authenticate   {}", pct(auth));
        println!("sequential record_chat    {}", pct(chat));
        println!("sequential begin_run      {}", pct(begin));
        println!("sequential finish_run     {}", pct(finish));
    }

    let c = 16;
    let (mut auth, mut chat, mut runs) = (vec![], vec![], vec![]);
    for _ in 0..n / c {
        auth.extend(
            at_once(c, || {
                let (store, secret) = (store.clone(), key.secret.clone());
                async move {
                    store
                        .authenticate(&secret, start, chrono::Utc::now())
                        .await
                        .unwrap();
                }
            })
            .await?,
        );
        chat.extend(
            at_once(c, || {
                let store = store.clone();
                async move {
                    store
                        .record_chat(&chat_record("bench"), &period)
                        .await
                        .unwrap();
                }
            })
            .await?,
        );
        runs.extend(
            at_once(c, || {
                let store = store.clone();
                async move {
                    one_run(&store, &period, Duration::ZERO).await;
                }
            })
            .await?,
        );
    }
    println!("{c} at once authenticate   {}", pct(auth));
    println!("{c} at once record_chat    {}", pct(chat));
    println!("{c} at once begin+finish   {}", pct(runs));

    // A page of twenty runs, newest first, from a history of `history` more runs than the above.
    let agent_id = ares::engine::agent_id("bench", "bench");
    store
        .generate_runs("bench", "bench", &agent_id, &period, history, 9)
        .await?;
    let agents = [(agent_id.clone(), "bench".to_string())];
    let state = store.agent_states("bench", &agents).await?.remove(0);
    for round in ["warm-up", "measured"] {
        let mut page = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let runs = store.runs(&agent_id, &state, 0, 20).await?;
            page.push(t.elapsed());
            assert_eq!(runs.len(), 20);
        }
        if round == "measured" {
            println!("sequential runs page (20) {}", pct(page));
        }
    }
    Ok(())
}
