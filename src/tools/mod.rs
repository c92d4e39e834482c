//! Built-in tools that agents may call: their names and what each does.

/// The built-in tools, by name, with the description given to the model.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "calculator",
        "Evaluates an arithmetic expression (+ - * / ^ %, parentheses, functions) and returns the number.",
    ),
    (
        "current_time",
        "Returns the current date and time in UTC (RFC 3339).",
    ),
    (
        "json_extract",
        "Extracts the value at a JSON pointer from a JSON document.",
    ),
];

/// Names of the built-in tools.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(name, _)| *name)
}
