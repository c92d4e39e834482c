//! Benchmark: load and validate a large `agents.d` (10,000 files by default).
//!
//! `cargo bench --bench load_agents [-- FILES]` prints the time of each pass and the median.

use std::path::Path;
use std::time::Instant;

use ares::agents::{Catalog, load_dir};

const AGENT: &str = r#"agent_type: classifier
description: Scores the risk of a payment transaction.
model: llama-3.3-70b
system_prompt: |
  You are a risk analysis agent. Estimate the probability that the
  transaction is fraudulent. Answer with the JSON the schema describes.
tools: [calculator]
max_tokens: 2048
temperature: 0.1
output_schema:
  type: object
  required: [risk_score, risk_level, reasoning]
  properties:
    risk_score: {type: number, minimum: 0, maximum: 1}
    risk_level: {type: string, enum: [low, medium, high]}
    reasoning: {type: string}
"#;

fn write_tree(root: &Path, files: usize) {
    let per_tenant = 100;
    for i in 0..files {
        let dir = root.join(format!("tenant-{}", i / per_tenant));
        if i % per_tenant == 0 {
            std::fs::create_dir_all(&dir).expect("create tenant folder");
        }
        std::fs::write(dir.join(format!("agent-{i}.yaml")), AGENT).expect("write agent");
    }
}

fn main() {
    let files: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    write_tree(tmp.path(), files);
    let catalog = Catalog {
        models: Some(["llama-3.3-70b".to_string()].into()),
        tools: ares::tools::names().map(String::from).collect(),
    };
    let mut times = Vec::new();
    for pass in 1..=5 {
        let start = Instant::now();
        let report = load_dir(tmp.path(), &catalog);
        let elapsed = start.elapsed();
        assert!(
            report.diagnostics.is_empty(),
            "{:?}",
            report.diagnostics.first()
        );
        assert_eq!(report.agents.len(), files);
        println!(
            "pass {pass}: {files} files in {:.1} ms",
            elapsed.as_secs_f64() * 1e3
        );
        times.push(elapsed);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "load_agents: {files} files, median {:.1} ms ({:.1} us per file)",
        median.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e6 / files as f64
    );
}
