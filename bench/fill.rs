//! Fills a store with runs for the scale benchmark: `n` completed runs of one agent of one
//! tenant, with consistent counters and usage.
//!
//! `cargo run --release --example bench_fill -- surrealkv://DIR TENANT AGENT N`

use std::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, tenant, agent, n] = args.as_slice() else {
        anyhow::bail!("usage: bench_fill URL TENANT AGENT N");
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
    store.generate_runs(tenant, agent, &id, &period, n).await?;
    println!("filled {n} runs in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
