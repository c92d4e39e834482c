//! What the engine counts for `/metrics`: tool calls by tool and outcome, and the figures of
//! its background work (records waiting for the database, interrupted runs, purged history).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Tool calls made so far, by tool and outcome (`ok` or `error`). Tool names come from
/// models' answers: a built-in tool is counted under its name, any other name under
/// [`UNKNOWN_TOOL`], so the counts stay few whatever a model asks for.
#[derive(Default)]
pub(crate) struct ToolCalls(Mutex<BTreeMap<(&'static str, &'static str), u64>>);

/// The tool name counted for every name that is not a built-in tool.
pub const UNKNOWN_TOOL: &str = "unknown";

impl ToolCalls {
    pub(crate) fn record(&self, tool: &str, ok: bool) {
        let tool = crate::tools::names()
            .find(|name| *name == tool)
            .unwrap_or(UNKNOWN_TOOL);
        let outcome = if ok { "ok" } else { "error" };
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((tool, outcome))
            .or_default() += 1;
    }

    fn snapshot(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

/// What the background work of an instance did.
#[derive(Default)]
pub(crate) struct Ops {
    /// Records of finished runs and chats waiting for the database to return.
    pub(crate) pending_records: AtomicU64,
    /// Runs of stopped instances this one failed as interrupted.
    pub(crate) interrupted_runs: AtomicU64,
    /// Runs and chats deleted by retention.
    pub(crate) purged: AtomicU64,
    /// Requests whose key was verified in memory, and those whose key was read from the
    /// database (not held, or memory not in step).
    pub(crate) keys_in_memory: AtomicU64,
    pub(crate) keys_from_database: AtomicU64,
}

/// Webhook attempts by outcome, and the age of the oldest delivery still pending.
#[derive(Default)]
pub(crate) struct WebhookFigures {
    delivered: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    oldest_pending_seconds: AtomicU64,
}

impl WebhookFigures {
    pub(crate) fn count(&self, attempt: &crate::store::Attempt) {
        use crate::store::Attempt;
        let counter = match attempt {
            Attempt::Delivered { .. } => &self.delivered,
            Attempt::Failed {
                retry_at: Some(_), ..
            } => &self.retried,
            Attempt::Failed { retry_at: None, .. } => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_oldest_pending(&self, seconds: u64) {
        self.oldest_pending_seconds
            .store(seconds, Ordering::Relaxed);
    }
}

/// The engine's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    /// `((tool, outcome), calls)`, by tool.
    pub tool_calls: Vec<((&'static str, &'static str), u64)>,
    /// Whether the store takes the database to be reachable.
    pub database_up: bool,
    pub pending_records: u64,
    pub interrupted_runs: u64,
    pub purged: u64,
    pub keys_in_memory: u64,
    pub keys_from_database: u64,
    /// Webhook attempts by outcome: `delivered`, `retried` (failed, to be sent again),
    /// `failed` (failed for good).
    pub webhook_attempts: [(&'static str, u64); 3],
    /// Age of the oldest webhook delivery still pending, in seconds (0: none).
    pub webhook_oldest_pending_seconds: u64,
    /// Transactions that wrote chats, run starts and settlements, and those writes.
    pub ledger: crate::store::LedgerFigures,
}

#[derive(Default)]
pub(crate) struct Telemetry {
    pub(crate) tool_calls: ToolCalls,
    pub(crate) ops: Ops,
    pub(crate) webhooks: WebhookFigures,
}

impl Telemetry {
    pub(crate) fn figures(
        &self,
        database_up: bool,
        ledger: crate::store::LedgerFigures,
    ) -> Figures {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Figures {
            tool_calls: self.tool_calls.snapshot(),
            database_up,
            pending_records: load(&self.ops.pending_records),
            interrupted_runs: load(&self.ops.interrupted_runs),
            purged: load(&self.ops.purged),
            keys_in_memory: load(&self.ops.keys_in_memory),
            keys_from_database: load(&self.ops.keys_from_database),
            webhook_attempts: [
                ("delivered", load(&self.webhooks.delivered)),
                ("retried", load(&self.webhooks.retried)),
                ("failed", load(&self.webhooks.failed)),
            ],
            webhook_oldest_pending_seconds: load(&self.webhooks.oldest_pending_seconds),
            ledger,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ToolCalls, UNKNOWN_TOOL};

    #[test]
    fn tools_that_are_not_built_in_count_as_unknown() {
        let calls = ToolCalls::default();
        calls.record("calculator", true);
        calls.record("calculator", true);
        for name in ["rm -rf /", "a\"b", "search_the_web"] {
            calls.record(name, false);
        }
        calls.record("search_the_web", true);
        assert_eq!(
            calls.snapshot(),
            [
                (("calculator", "ok"), 2),
                ((UNKNOWN_TOOL, "error"), 3),
                ((UNKNOWN_TOOL, "ok"), 1)
            ]
        );
    }
}
