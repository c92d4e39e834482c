//! Helpers for the store's unit tests: an in-memory store and run records.

use chrono::Utc;
use serde_json::json;

use super::{RunRecord, RunStatus, Store};
use crate::config::DatabaseSettings;

/// A fresh in-memory store with every migration applied.
pub async fn store() -> Store {
    let settings = DatabaseSettings {
        url: "mem://".into(),
        ..DatabaseSettings::default()
    };
    Store::connect(&settings).await.unwrap()
}

/// A `running` run of `tenant`'s echo agent, not yet stored.
pub fn run(tenant: &str) -> RunRecord {
    RunRecord::running(
        tenant,
        "echo",
        format!("{tenant}-echo"),
        json!({"message": "hi"}),
        Utc::now(),
    )
}

/// `r`, completed with `tokens` used.
pub fn finished(mut r: RunRecord, tokens: u64) -> RunRecord {
    r.status = RunStatus::Completed;
    r.output = Some(json!({"response": "ok"}));
    r.finished_at = Some(Utc::now());
    r.duration_ms = Some(1);
    r.tokens_used = tokens;
    r
}
