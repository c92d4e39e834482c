//! Property tests of the OpenAI-compatible client's reading of what a provider sends: any
//! answer, any stream, cut anywhere, gives answers or errors — never a panic, never a hang,
//! never more tool calls or tokens than the bounds.

use futures_util::{FutureExt, StreamExt};
use proptest::prelude::*;

use super::openai::wire::MAX_TOKENS;
use super::openai::{MAX_TOOL_CALLS, events, parse};
use super::{StreamEvent, TokenUsage};

/// Numbers a provider might send where a count or an index belongs.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..2000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        Just("4000000000".to_string()),
        Just("1000000000".to_string()),
        Just("1000000001".to_string()),
        Just("9223372036854775808".to_string()),
        Just("18446744073709551616".to_string()),
        Just("1e400".to_string()),
        Just("-1e400".to_string()),
        Just("-0".to_string()),
        Just("0.5".to_string()),
        Just("null".to_string()),
        Just("\"7\"".to_string()),
    ]
}

fn usage_ok(u: TokenUsage) -> bool {
    u.prompt <= MAX_TOKENS && u.completion <= MAX_TOKENS
}

/// A complete answer in the protocol's shape, with numbers from [`number`].
fn answer() -> impl Strategy<Value = String> {
    (
        number(),
        number(),
        prop::collection::vec((number(), "[a-z]{0,3}"), 0..4),
        0usize..200,
    )
        .prop_map(|(prompt, completion, calls, copies)| {
            let calls: Vec<String> = calls
                .iter()
                .map(|(index, name)| {
                    format!("{{\"index\": {index}, \"function\": {{\"name\": \"{name}\", \"arguments\": {{\"n\": {index}}}}}}}")
                })
                .cycle()
                .take(copies.min(calls.len() * 200))
                .collect();
            format!(
                "{{\"choices\": [{{\"message\": {{\"content\": null, \"tool_calls\": [{}]}}}}], \"usage\": {{\"prompt_tokens\": {prompt}, \"completion_tokens\": {completion}}}}}",
                calls.join(",")
            )
        })
}

/// One server-sent event in the protocol's shape (or a stray line).
fn event() -> impl Strategy<Value = String> {
    let chunk = prop_oneof![
        "[ -~]{0,8}".prop_map(|t| format!(
            "{{\"choices\": [{{\"delta\": {{\"content\": {}}}}}]}}",
            serde_json::Value::from(t)
        )),
        (number(), "[a-z]{0,2}", "[ -~]{0,4}").prop_map(|(index, id, args)| format!(
            "{{\"choices\": [{{\"delta\": {{\"tool_calls\": [{{\"index\": {index}, \"id\": \"{id}\", \"function\": {{\"arguments\": {}}}}}]}}}}]}}",
            serde_json::Value::from(args)
        )),
        (number(), number()).prop_map(|(p, c)| format!(
            "{{\"choices\": [], \"usage\": {{\"prompt_tokens\": {p}, \"completion_tokens\": {c}}}}}"
        )),
        Just("{\"choices\": [{\"delta\": {}, \"finish_reason\": \"stop\"}]}".to_string()),
        Just("{\"error\": {\"message\": \"boom\"}}".to_string()),
        Just("[DONE]".to_string()),
        "[ -~]{0,12}",
    ];
    (
        chunk,
        prop_oneof![Just("\n\n"), Just("\r\n\r\n"), Just("\n")],
    )
        .prop_map(|(data, end)| format!("data: {data}{end}"))
}

/// `bytes` cut at the given points (taken modulo its length).
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Result<Vec<u8>, std::io::Error>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts.into_iter().chain([bytes.len()]) {
        out.push(Ok(bytes[start..c].to_vec()));
        start = c;
    }
    out
}

/// Reads a whole stream; its source is never pending, so neither may it be.
fn read_stream(chunks: Vec<Result<Vec<u8>, std::io::Error>>) -> Result<(), TestCaseError> {
    let items: Vec<_> = events(futures_util::stream::iter(chunks))
        .collect()
        .now_or_never()
        .ok_or_else(|| TestCaseError::fail("the stream did not end"))?;
    for (i, item) in items.iter().enumerate() {
        let last = i + 1 == items.len();
        match item {
            Ok(StreamEvent::Delta(_)) => {}
            Ok(StreamEvent::Done {
                tool_calls, usage, ..
            }) => {
                prop_assert!(last, "Done is the last item");
                prop_assert!(tool_calls.len() <= MAX_TOOL_CALLS);
                prop_assert!(usage_ok(*usage));
            }
            Err(_) => prop_assert!(last, "an error is the last item"),
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_bytes_as_an_answer_are_an_answer_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(r) = parse(&bytes) {
            prop_assert!(usage_ok(r.usage));
        }
    }

    #[test]
    fn answers_with_wild_numbers_stay_within_bounds(text in answer()) {
        if let Ok(r) = parse(text.as_bytes()) {
            prop_assert!(usage_ok(r.usage));
            prop_assert!(r.tool_calls.len() <= MAX_TOOL_CALLS);
        }
    }

    #[test]
    fn any_bytes_cut_anywhere_as_a_stream_end(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        read_stream(chunks(&bytes, &cuts))?;
    }

    #[test]
    fn streams_with_wild_events_stay_within_bounds(
        list in prop::collection::vec(event(), 0..40),
        repeat in 1usize..8,
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let text = list.concat().repeat(repeat);
        read_stream(chunks(text.as_bytes(), &cuts))?;
    }
}
