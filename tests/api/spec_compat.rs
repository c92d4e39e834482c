//! The committed spec keeps every promise of the last released one (`openapi/released/`):
//! a client generated from the release works against the current server.

fn load(file: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn the_spec_keeps_every_promise_of_the_last_release() {
    let released = load("openapi/released/v1.yaml");
    let current = load("openapi/v1.yaml");
    let breaking = ares::api::compat::breaking_changes(&released, &current);
    let list: Vec<String> = breaking.iter().map(|b| format!("  {b}")).collect();
    assert!(
        breaking.is_empty(),
        "openapi/v1.yaml breaks clients of openapi/released/v1.yaml:\n{}\n\
         Keep the old behaviour beside the new, or, for a new major version of the API, \
         cut a release as docs/contract-testing.md says.",
        list.join("\n")
    );
}
