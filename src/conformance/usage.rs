//! Usage accounting: a run and a chat move `total_runs`, `total_tokens`, `total_api_calls` and
//! today's `daily_usage` row by what they reported. API calls may be counted late (each instance
//! writes its count in batches), so the kit polls briefly for the figures to settle.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Auth, Ctx};

/// How long the figures may take to show the kit's requests.
const SETTLE: Duration = Duration::from_secs(15);

fn today_row(usage: &Value, today: &str) -> Value {
    usage["daily_usage"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["date"] == today)
        .cloned()
        .unwrap_or_else(|| json!({"runs": 0, "tokens": 0, "api_calls": 0}))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

pub async fn check(ctx: &mut Ctx) {
    let agent = ctx.agent.clone().expect("an agent was chosen");
    ctx.start("usage", "run_and_chat_counted");
    let today = chrono::Utc::now().date_naive().to_string();
    let Some(before) = ctx.get("/v1/usage", Auth::A).await else {
        return ctx.finish();
    };
    if !ctx.expect_status(&before, 200) {
        return ctx.finish();
    }
    // Every authenticated /v1 request counts, the usage read itself included.
    let mut calls = 0u64;
    calls += 1;
    let run = ctx.run_agent(Auth::A, &agent.name).await;
    let run_tokens = run.as_ref().map(|r| n(&r.body["tokens_used"]));
    let body = ctx.chat_body();
    calls += 1;
    let chat = ctx.post("/v1/chat", Auth::A, &body).await;
    let chat_tokens = chat
        .as_ref()
        .filter(|c| c.status == 200)
        .map(|c| n(&c.body["tokens_used"]));
    let (Some(run_tokens), Some(chat_tokens)) = (run_tokens, chat_tokens) else {
        if let Some(c) = &chat {
            ctx.expect_status(c, 200);
        }
        return ctx.finish();
    };
    let tokens = run_tokens + chat_tokens;
    let day0 = today_row(&before.body, &today);
    let started = Instant::now();
    let mut after;
    loop {
        calls += 1;
        let Some(r) = ctx.get("/v1/usage", Auth::A).await else {
            return ctx.finish();
        };
        after = r;
        let settled = n(&after.body["total_api_calls"])
            >= n(&before.body["total_api_calls"]) + calls
            && n(&after.body["total_runs"]) > n(&before.body["total_runs"]);
        if settled || started.elapsed() > SETTLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let b = &before.body;
    let a = &after.body;
    ctx.expect(
        "/total_runs",
        json!(n(&b["total_runs"]) + 1),
        a["total_runs"].clone(),
        "a run counts one run",
    );
    ctx.expect(
        "/total_tokens",
        json!(n(&b["total_tokens"]) + tokens),
        a["total_tokens"].clone(),
        &format!("a run ({run_tokens}) and a chat ({chat_tokens}) count their tokens"),
    );
    ctx.expect(
        "/total_api_calls",
        json!(n(&b["total_api_calls"]) + calls),
        a["total_api_calls"].clone(),
        &format!("{calls} authenticated requests since the first read count {calls} API calls"),
    );
    let day1 = today_row(a, &today);
    let i = a["daily_usage"]
        .as_array()
        .into_iter()
        .flatten()
        .position(|d| d["date"] == today);
    let p = |f: &str| match i {
        Some(i) => format!("/daily_usage/{i}/{f}"),
        None => "/daily_usage".to_string(),
    };
    ctx.expect(
        &p("runs"),
        json!(n(&day0["runs"]) + 1),
        day1["runs"].clone(),
        &format!("today's ({today}) row counts the run"),
    );
    ctx.expect(
        &p("tokens"),
        json!(n(&day0["tokens"]) + tokens),
        day1["tokens"].clone(),
        "today's row counts the tokens",
    );
    ctx.expect(
        &p("api_calls"),
        json!(n(&day0["api_calls"]) + calls),
        day1["api_calls"].clone(),
        "today's row counts the API calls",
    );
    // The totals are the sums of the days.
    let days: Vec<Value> = a["daily_usage"].as_array().cloned().unwrap_or_default();
    for (total, field) in [
        ("total_runs", "runs"),
        ("total_tokens", "tokens"),
        ("total_api_calls", "api_calls"),
    ] {
        let sum: u64 = days.iter().map(|d| n(&d[field])).sum();
        ctx.expect(
            &format!("/{total}"),
            json!(sum),
            a[total].clone(),
            &format!("{total} is the sum of daily_usage's {field}"),
        );
    }
    // Newest first.
    let dates: Vec<&str> = days
        .iter()
        .map(|d| d["date"].as_str().unwrap_or(""))
        .collect();
    let mut sorted = dates.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    ctx.expect(
        "/daily_usage",
        json!(sorted),
        json!(dates),
        "daily_usage is newest first",
    );
    ctx.finish();
}
