//! SSE framing of `POST /v1/chat/stream`: `text/event-stream`, only `data:` lines of JSON
//! events, each `{delta, finish_reason}`, and exactly one final event, the last, with
//! `finish_reason` and `tokens_used`.

use serde_json::{Value, json};

use super::{Auth, Ctx};

/// Checks a stream's text; the final event's `tokens_used`, when there is one.
pub fn framing(ctx: &mut Ctx, text: &str) -> Option<u64> {
    let mut events = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let Some(data) = line.strip_prefix("data: ") else {
            ctx.fail(super::Failure::new(
                &format!("/lines/{i}"),
                json!("data: {...}"),
                json!(super::report::clip(line)),
                "every line of the stream is a `data:` line".into(),
            ));
            continue;
        };
        match serde_json::from_str::<Value>(data) {
            Ok(v) if v.is_object() => events.push(v),
            _ => ctx.fail(super::Failure::new(
                &format!("/lines/{i}"),
                json!("a JSON object"),
                json!(super::report::clip(data)),
                "every event is JSON".into(),
            )),
        }
    }
    if !ctx.ensure(
        !events.is_empty(),
        "/events",
        json!("at least one event"),
        json!([]),
        "a stream has events",
    ) {
        return None;
    }
    let finals: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| !e["finish_reason"].is_null())
        .map(|(i, _)| i)
        .collect();
    ctx.expect(
        "/events",
        json!([events.len() - 1]),
        json!(finals),
        "exactly one event has a finish_reason, the last",
    );
    for (i, e) in events.iter().enumerate() {
        ctx.ensure(
            e["delta"].is_string(),
            &format!("/events/{i}/delta"),
            json!("a string"),
            e["delta"].clone(),
            "every event has a delta",
        );
        ctx.ensure(
            e.get("finish_reason").is_some(),
            &format!("/events/{i}/finish_reason"),
            json!("present (null until the last)"),
            json!("missing"),
            "every event has a finish_reason",
        );
    }
    let last = events.last().expect("not empty");
    let n = events.len() - 1;
    ctx.ensure(
        last["finish_reason"].is_string(),
        &format!("/events/{n}/finish_reason"),
        json!("a string (stop, length)"),
        last["finish_reason"].clone(),
        "the final event says why it finished",
    );
    ctx.expect(
        &format!("/events/{n}/delta"),
        json!(""),
        last["delta"].clone(),
        "the final event's delta is empty",
    );
    let tokens = last["tokens_used"].as_u64();
    ctx.ensure(
        tokens.is_some(),
        &format!("/events/{n}/tokens_used"),
        json!("an integer"),
        last["tokens_used"].clone(),
        "the final event counts the tokens",
    );
    tokens
}

pub async fn check(ctx: &mut Ctx) {
    ctx.start("stream", "sse_framing");
    let body = ctx.chat_body();
    if let Some(r) = ctx.post("/v1/chat/stream", Auth::A, &body).await
        && ctx.expect_status(&r, 200)
    {
        let media = r
            .header("content-type")
            .map(super::spec::essence)
            .unwrap_or_default();
        ctx.expect(
            "",
            json!("text/event-stream"),
            json!(media),
            "Content-Type of a stream",
        );
        framing(ctx, &r.text);
    }
    ctx.finish();
}
