//! Properties of agent files: valid definitions round-trip through YAML, and no input panics the loader.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{AgentSpec, AgentStatus, Catalog, parse_agent};

const MODELS: &[&str] = &["llama-3.3-70b", "llama-3.1-8b"];

fn catalog() -> Catalog {
    Catalog {
        models: Some(MODELS.iter().map(|m| m.to_string()).collect()),
        tools: crate::tools::names().map(String::from).collect(),
    }
}

/// Block-style YAML for a JSON value; strings are double-quoted with JSON escapes, which YAML shares.
fn to_yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                out.push_str(&format!("{pad}{}:", Value::String(k.clone())));
                match v {
                    Value::Object(c) if !c.is_empty() => {
                        out.push('\n');
                        to_yaml(v, indent + 2, out);
                    }
                    Value::Array(c) if !c.is_empty() => {
                        out.push('\n');
                        to_yaml(v, indent, out);
                    }
                    _ => {
                        out.push(' ');
                        to_yaml(v, 0, out);
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                out.push_str(&format!("{pad}- "));
                match item {
                    Value::Object(c) if !c.is_empty() => {
                        let mut inner = String::new();
                        to_yaml(item, indent + 2, &mut inner);
                        out.push_str(inner.trim_start());
                    }
                    _ => to_yaml(item, 0, out),
                }
            }
        }
        scalar => {
            out.push_str(&scalar.to_string());
            out.push('\n');
        }
    }
}

fn schema() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        (
            "[a-z_]{1,12}",
            prop_oneof![
                Just("string"),
                Just("number"),
                Just("integer"),
                Just("boolean")
            ]
        )
            .prop_map(|(field, ty)| Some(
                json!({"type": "object", "required": [field], "properties": {field: {"type": ty}}})
            )),
    ]
}

prop_compose! {
    fn spec()(
        agent_type in "[a-z0-9][a-z0-9_-]{0,20}",
        disabled in any::<bool>(),
        description in proptest::option::of("\\PC{0,40}"),
        model in proptest::sample::select(MODELS),
        prompt in "[a-zA-Z0-9][\\PC\n]{0,80}",
        tools in proptest::sample::subsequence(vec!["calculator", "current_time", "json_extract"], 0..=3),
        max_tokens in 1u32..=1_000_000,
        temperature in proptest::option::of(0.0f64..=2.0),
        max_tool_iterations in 0u32..=50,
        timeout_ms in 100u64..=3_600_000,
        input_schema in schema(),
        output_schema in schema(),
    ) -> AgentSpec {
        AgentSpec {
            agent_type,
            status: if disabled { AgentStatus::Disabled } else { AgentStatus::Active },
            description,
            model: model.to_string(),
            system_prompt: prompt,
            tools: tools.into_iter().map(String::from).collect(),
            max_tokens,
            temperature,
            max_tool_iterations,
            timeout_ms,
            input_schema,
            output_schema,
        }
    }
}

proptest! {
    #[test]
    fn valid_definitions_round_trip_through_yaml(spec in spec()) {
        let mut text = String::new();
        to_yaml(&serde_json::to_value(&spec).unwrap(), 0, &mut text);
        let mut diags = Vec::new();
        let agent = parse_agent("a.yaml", text.as_bytes(), Some("acme"), "agent-1", &catalog(), &mut diags);
        prop_assert!(diags.is_empty(), "{diags:?}\n{text}");
        let agent = agent.unwrap();
        prop_assert_eq!(&agent.spec, &spec, "{}", text);
        prop_assert_eq!(agent.output_validator.is_some(), spec.output_schema.is_some());
    }

    #[test]
    fn random_bytes_never_panic_the_loader(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut diags = Vec::new();
        let agent = parse_agent("a.yaml", &bytes, None, "x", &catalog(), &mut diags);
        prop_assert_eq!(agent.is_some(), diags.is_empty());
    }

    #[test]
    fn random_yaml_like_text_never_panics_the_loader(text in "[a-z_:{}\\[\\],&*!|>'\"#\\- \n0-9.]{0,300}") {
        let mut diags = Vec::new();
        let agent = parse_agent("a.yaml", text.as_bytes(), None, "x", &catalog(), &mut diags);
        prop_assert_eq!(agent.is_some(), diags.is_empty());
        for d in &diags {
            prop_assert!(d.line.is_some_and(|l| l >= 1), "{d:?}");
        }
    }
}
