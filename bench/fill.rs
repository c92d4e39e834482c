//! Fills a store with runs for the scale and page benchmarks: `n` completed runs of one agent
//! of one tenant, with consistent counters and usage, each with `BYTES` of text (default 9) as
//! its input's message and its output's response.
//!
//! `cargo run --release --example bench_fill -- surrealkv://DIR TENANT AGENT N [BYTES]`

use std::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (url, tenant, agent, n, bytes) = match args.as_slice() {
        [_, url, tenant, agent, n] => (url, tenant, agent, n, "9"),
        [_, url, tenant, agent, n, bytes] => (url, tenant, agent, n, bytes.as_str()),
        _ => anyhow::bail!("usage: bench_fill URL TENANT AGENT N [BYTES]"),
    };
    let settings = ares::config::DatabaseSettings {
        url: url.clone(),
        ..Default::default()
    };
    let store = ares::store::Store::connect(&settings).await?;
    let period = ares::store::Period::containing(chrono::Utc::now(), 1);
    let id = ares::engine::agent_id(tenant, agent);
    let n: u64 = n.parse()?;
    let start = Instant::now();
    store
        .generate_runs(tenant, agent, &id, &period, n, bytes.parse()?)
        .await?;
    println!("filled {n} runs in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
