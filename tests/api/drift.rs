//! Generated contracts match the code: the JSON Schemas of agent and tests files, the specs.

#[test]
fn agent_schema_is_committed_as_generated() {
    let generated = ares::cli::schema_text(ares::agents::agent_schema());
    let committed = std::fs::read_to_string("contracts/agent.schema.json").unwrap_or_default();
    assert!(
        committed == generated,
        "contracts/agent.schema.json differs from the code; regenerate it with:\n    cargo run -- schema --out contracts/agent.schema.json"
    );
}

#[test]
fn agent_tests_schema_is_committed_as_generated() {
    let generated = ares::cli::schema_text(ares::agents::tests_schema());
    let committed =
        std::fs::read_to_string("contracts/agent-tests.schema.json").unwrap_or_default();
    assert!(
        committed == generated,
        "contracts/agent-tests.schema.json differs from the code; regenerate it with:\n    cargo run -- schema --tests --out contracts/agent-tests.schema.json"
    );
}

#[test]
fn openapi_specs_are_committed_as_generated() {
    for (admin, file, flag) in [
        (false, "openapi/v1.yaml", ""),
        (true, "openapi/admin.yaml", " --admin"),
    ] {
        let generated = ares::cli::openapi_text(admin, false);
        let committed = std::fs::read_to_string(file).unwrap_or_default();
        assert!(
            committed == generated,
            "{file} differs from the code; regenerate it with:\n    cargo run -- openapi{flag} --out {file}"
        );
    }
    let generated = ares::cli::openapi_edition_text(false, false, true);
    let committed = std::fs::read_to_string("openapi/v1-3.1.yaml").unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/v1-3.1.yaml differs from the code; regenerate it with:\n    cargo run -- openapi --openapi-3.1 --out openapi/v1-3.1.yaml"
    );
}
