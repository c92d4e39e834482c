//! Documentation that must match the code.

#[test]
fn the_error_table_in_the_docs_is_the_code_table() {
    let doc = std::fs::read_to_string("docs/errors.md").unwrap();
    let rows: Vec<String> = ares::api::error::ErrorCode::ALL
        .iter()
        .map(|c| format!("| `{}` | {} | {} |", c.as_str(), c.status(), c.meaning()))
        .collect();
    let doc_rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| `")).collect();
    assert_eq!(
        doc_rows, rows,
        "docs/errors.md and ErrorCode in src/api/error.rs differ"
    );
}

#[test]
fn every_environment_override_is_documented() {
    let doc = std::fs::read_to_string("docs/configuration.md").unwrap();
    for (var, pointer) in ares::config::ENV_OVERRIDES {
        assert!(
            doc.contains(&format!("`{var}`")),
            "{var} ({pointer}) is missing from docs/configuration.md"
        );
    }
}
