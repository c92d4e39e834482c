//! Generated contracts match the code: the agent JSON Schema.

#[test]
fn agent_schema_is_committed_as_generated() {
    let generated = ares::cli::schema_text(ares::agents::agent_schema());
    let committed = std::fs::read_to_string("contracts/agent.schema.json").unwrap_or_default();
    assert!(
        committed == generated,
        "contracts/agent.schema.json differs from the code; regenerate it with:\n    cargo run -- schema --out contracts/agent.schema.json"
    );
}
