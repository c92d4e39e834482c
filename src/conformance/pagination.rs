//! Pagination laws of `GET /v1/agents` and `GET /v1/agents/{name}/runs`: `total` the same on
//! every page, pages disjoint and together the whole list, runs newest first, a page past the
//! end empty, and out-of-range or non-numeric `page` / `per_page` refused with 400.

use serde_json::{Value, json};

use super::{Auth, Ctx};

/// Runs the checks need in the agent's history, at least.
const MIN_RUNS: usize = 3;

/// Walks `base` page by page (`per_page` each) and checks the laws against one page of 100;
/// the items' ids in order.
async fn walk(ctx: &mut Ctx, base: &str, field: &str, per_page: usize) -> Option<Vec<Value>> {
    let sep = if base.contains('?') { '&' } else { '?' };
    let r = ctx
        .get(&format!("{base}{sep}page=1&per_page=100"), Auth::A)
        .await?;
    if !ctx.expect_status(&r, 200) {
        return None;
    }
    let all: Vec<Value> = r.body[field].as_array().cloned().unwrap_or_default();
    let total = r.body["total"].clone();
    let Some(total_n) = total.as_u64() else {
        ctx.ensure(
            false,
            "/total",
            json!("an integer"),
            total,
            "a page carries the whole count",
        );
        return None;
    };
    ctx.expect(
        "/page",
        json!(1),
        r.body["page"].clone(),
        "a page names its number",
    );
    ctx.expect(
        "/per_page",
        json!(100),
        r.body["per_page"].clone(),
        "a page names its size",
    );
    if total_n > 100 {
        // Too long to compare whole; the first pages are still checked below.
        ctx.ensure(
            all.len() == 100,
            &format!("/{field}"),
            json!("100 items (a full page)"),
            json!(all.len()),
            "a page of 100 when there are more",
        );
    } else {
        ctx.expect(
            &format!("/{field}"),
            json!(total_n),
            json!(all.len()),
            "a page of 100 holds the whole list when total ≤ 100",
        );
    }
    let pages = (total_n as usize).min(100).div_ceil(per_page).max(1);
    let mut walked: Vec<Value> = Vec::new();
    for page in 1..=pages + 1 {
        let r = ctx
            .get(
                &format!("{base}{sep}page={page}&per_page={per_page}"),
                Auth::A,
            )
            .await?;
        if !ctx.expect_status(&r, 200) {
            return None;
        }
        ctx.expect(
            "/total",
            total.clone(),
            r.body["total"].clone(),
            &format!("total is the same on page {page}"),
        );
        ctx.expect(
            "/page",
            json!(page),
            r.body["page"].clone(),
            "a page names its number",
        );
        ctx.expect(
            "/per_page",
            json!(per_page),
            r.body["per_page"].clone(),
            "a page names its size",
        );
        let items = r.body[field].as_array().cloned().unwrap_or_default();
        let want = (total_n as usize)
            .saturating_sub((page - 1) * per_page)
            .min(per_page);
        ctx.expect(
            &format!("/{field}"),
            json!(want),
            json!(items.len()),
            &format!("items on page {page} of {per_page}"),
        );
        for (i, item) in items.iter().enumerate() {
            let id = &item["id"];
            ctx.ensure(
                !walked.iter().any(|w| w["id"] == *id),
                &format!("/{field}/{i}/id"),
                json!("an item on no earlier page"),
                id.clone(),
                &format!("pages are disjoint (page {page})"),
            );
        }
        walked.extend(items);
    }
    if total_n <= 100 {
        let ids = |v: &[Value]| v.iter().map(|i| i["id"].clone()).collect::<Vec<_>>();
        ctx.expect(
            &format!("/{field}"),
            json!(ids(&all)),
            json!(ids(&walked)),
            "the pages together are the whole list, in its order",
        );
    }
    Some(walked)
}

/// `page` and `per_page` values a deployment must refuse with 400.
const REFUSED: [(&str, &str); 6] = [
    ("page=0", "page"),
    ("per_page=0", "per_page"),
    ("per_page=101", "per_page"),
    ("page=abc", "page"),
    ("per_page=ten", "per_page"),
    ("page=-1", "page"),
];

async fn out_of_range(ctx: &mut Ctx, base: &str) {
    let sep = if base.contains('?') { '&' } else { '?' };
    for (query, name) in REFUSED {
        let Some(r) = ctx.get(&format!("{base}{sep}{query}"), Auth::A).await else {
            continue;
        };
        if ctx.expect_status(&r, 400) {
            let message = r.body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            ctx.ensure(
                message.contains(name),
                "/error/message",
                json!(format!("a message naming {name}")),
                json!(message),
                &format!("{query} is refused naming the parameter"),
            );
        }
    }
}

pub async fn check(ctx: &mut Ctx) {
    let agent = ctx.agent.clone().expect("an agent was chosen").name;

    ctx.start("pagination", "agents_pages");
    walk(ctx, "/v1/agents", "agents", 1).await;
    ctx.finish();

    ctx.start("pagination", "runs_pages");
    let mut mine = Vec::new();
    for _ in 0..MIN_RUNS {
        if let Some(r) = ctx.run_agent(Auth::A, &agent).await {
            mine.push(r.body["id"].clone());
        }
    }
    if let Some(runs) = walk(ctx, &format!("/v1/agents/{agent}/runs"), "runs", 2).await {
        let started: Vec<&str> = runs
            .iter()
            .map(|r| r["started_at"].as_str().unwrap_or(""))
            .collect();
        for (i, pair) in started.windows(2).enumerate() {
            // RFC 3339 times in UTC with the same precision order as text; compare as times.
            let (a, b) = (
                chrono::DateTime::parse_from_rfc3339(pair[0]),
                chrono::DateTime::parse_from_rfc3339(pair[1]),
            );
            if let (Ok(a), Ok(b)) = (a, b) {
                ctx.ensure(
                    a >= b,
                    &format!("/runs/{}/started_at", i + 1),
                    json!(format!("at or before {}", pair[0])),
                    json!(pair[1]),
                    "runs are listed newest first",
                );
            }
        }
        // The runs just made lead the list, the latest first.
        mine.reverse();
        let head: Vec<Value> = runs
            .iter()
            .take(mine.len())
            .map(|r| r["id"].clone())
            .collect();
        ctx.expect(
            "/runs",
            json!(mine),
            json!(head),
            "the runs just made are first, newest first",
        );
    }
    ctx.finish();

    ctx.start("pagination", "past_the_end");
    for base in ["/v1/agents".to_string(), format!("/v1/agents/{agent}/runs")] {
        let field = if base == "/v1/agents" {
            "agents"
        } else {
            "runs"
        };
        let Some(first) = ctx.get(&base, Auth::A).await else {
            continue;
        };
        let Some(r) = ctx
            .get(&format!("{base}?page=100000&per_page=100"), Auth::A)
            .await
        else {
            continue;
        };
        if ctx.expect_status(&r, 200) {
            ctx.expect(
                &format!("/{field}"),
                json!([]),
                r.body[field].clone(),
                "a page past the end is empty",
            );
            ctx.expect(
                "/total",
                first.body["total"].clone(),
                r.body["total"].clone(),
                "a page past the end has the true total",
            );
        }
        ctx.expect(
            "/page",
            json!(1),
            first.body["page"].clone(),
            "page defaults to 1",
        );
        ctx.expect(
            "/per_page",
            json!(20),
            first.body["per_page"].clone(),
            "per_page defaults to 20",
        );
    }
    ctx.finish();

    ctx.start("pagination", "out_of_range_refused");
    out_of_range(ctx, "/v1/agents").await;
    out_of_range(ctx, &format!("/v1/agents/{agent}/runs")).await;
    ctx.finish();
}
