//! Builds a small JSON value that satisfies a JSON Schema: the offline provider's structured answers.
//!
//! Covers what agent output schemas use: `type`, `properties`, `required`, `enum`, `const`,
//! `minimum`/`maximum`, `minLength`/`maxLength`, `minItems`/`maxItems`, `items`, `anyOf`/`oneOf`.
//! `seed` varies the choices deterministically.

use serde_json::{Map, Value, json};

/// A value satisfying `schema`, chosen deterministically from `seed`.
pub fn instance(schema: &Value, seed: u64) -> Value {
    build(schema, seed, 0)
}

fn pick(options: &[Value], seed: u64) -> Option<&Value> {
    (!options.is_empty()).then(|| &options[(seed % options.len() as u64) as usize])
}

fn build(schema: &Value, seed: u64, depth: usize) -> Value {
    let Some(s) = schema.as_object() else {
        return Value::Null;
    };
    if depth > 16 {
        return Value::Null;
    }
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    if let Some(v) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| pick(e, seed))
    {
        return v.clone();
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(first) = s.get(key).and_then(Value::as_array).and_then(|a| a.first()) {
            return build(first, seed, depth + 1);
        }
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        let mut merged = Map::new();
        for part in all {
            if let Value::Object(o) = build(part, seed, depth + 1) {
                merged.extend(o);
            }
        }
        return Value::Object(merged);
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.contains_key("properties") => "object",
        _ => "string",
    };
    match ty {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (i, (name, sub)) in props.iter().enumerate() {
                    out.insert(
                        name.clone(),
                        build(sub, seed.wrapping_add(i as u64 * 7919), depth + 1),
                    );
                }
            }
            if let Some(req) = s.get("required").and_then(Value::as_array) {
                for name in req.iter().filter_map(Value::as_str) {
                    out.entry(name.to_string()).or_insert(Value::Null);
                }
            }
            Value::Object(out)
        }
        "array" => {
            let min = s.get("minItems").and_then(Value::as_u64).unwrap_or(1);
            let max = s
                .get("maxItems")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX);
            let n = min.max(1).min(max).min(3);
            let item = s.get("items").cloned().unwrap_or(json!({"type": "string"}));
            Value::Array(
                (0..n)
                    .map(|i| build(&item, seed.wrapping_add(i), depth + 1))
                    .collect(),
            )
        }
        "number" | "integer" => {
            let lo = s.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
            let hi = s
                .get("maximum")
                .and_then(Value::as_f64)
                .unwrap_or(lo.max(0.0) + 100.0);
            let frac = (seed % 1000) as f64 / 1000.0;
            let mut v = lo + (hi - lo) * frac;
            if let Some(x) = s.get("exclusiveMinimum").and_then(Value::as_f64) {
                v = v.max(x + 1.0).min(hi);
            }
            if ty == "integer" {
                let v = v.round().clamp(lo.ceil(), hi.floor());
                json!(v as i64)
            } else {
                json!((v * 1000.0).round() / 1000.0)
            }
        }
        "boolean" => Value::Bool(seed.is_multiple_of(2)),
        "null" => Value::Null,
        _ => {
            let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
            let max = s.get("maxLength").and_then(Value::as_u64).unwrap_or(64) as usize;
            let mut text = String::from("offline answer");
            while text.chars().count() < min {
                text.push('.');
            }
            Value::String(text.chars().take(max.max(min)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn satisfies_typical_output_schemas() {
        let schema = json!({
            "type": "object",
            "required": ["risk_score", "risk_level", "reasoning"],
            "additionalProperties": false,
            "properties": {
                "risk_score": {"type": "number", "minimum": 0, "maximum": 1},
                "risk_level": {"type": "string", "enum": ["low", "medium", "high"]},
                "reasoning": {"type": "string", "minLength": 1},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "integer", "minimum": 3, "maximum": 5}}
            }
        });
        let v = jsonschema::validator_for(&schema).unwrap();
        for seed in 0..200 {
            let x = instance(&schema, seed);
            assert!(v.is_valid(&x), "seed {seed}: {x}");
        }
    }
}
