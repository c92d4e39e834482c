//! Closing an embedded engine before the process exits: waiting until its shutdown is done,
//! and the one notice surrealkv logs during that shutdown that says the opposite.
//!
//! When the last handle of an embedded store is dropped, SurrealDB shuts the engine down on
//! the store's runtime: surrealkv's commit thread stops, the write-ahead log is synced, the
//! tree is closed. Nothing awaits that by itself: a process that exits right after its last
//! handle is gone may exit in the middle of it. [`wait_closed`] waits for it.
//!
//! During that shutdown, surrealkv's commit thread drops its own handle on the tree, and
//! every drop of a tree handle outside a tokio runtime logs `No runtime available for closing
//! the store correctly` — before the shutdown closes the tree, correctly, on the store's
//! runtime. [`CloseNotice`] keeps that one line out of the logs once [`begin_close`] said the
//! process is closing its store; at any other time it still shows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Filter};

/// What surrealkv logs when a handle on its tree is dropped outside a tokio runtime.
const NOTICE: &str = "No runtime available for closing the store correctly";

/// Set once the process waits for its store to close.
static CLOSING: AtomicBool = AtomicBool::new(false);

/// Says that the process is closing its store: call it before dropping the last handles (the
/// engine says it when it is dropped).
pub fn begin_close() {
    CLOSING.store(true, Ordering::SeqCst);
}

/// Waits, up to `limit`, until the embedded engine whose handles were all dropped has shut
/// down (its tasks on the store's runtime end with the shutdown). At once when this process
/// opened no embedded engine. `false` when the engine was still running after `limit`.
pub fn wait_closed(limit: Duration) -> bool {
    begin_close();
    let Some(Ok(runtime)) = super::BACKGROUND.get() else {
        return true;
    };
    let metrics = runtime.handle().metrics();
    let deadline = Instant::now() + limit;
    while metrics.num_alive_tasks() > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// A log filter that drops surrealkv's misleading notice while the process closes its store
/// ([`begin_close`]), and lets every other event through.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloseNotice;

impl<S> Filter<S> for CloseNotice {
    fn enabled(&self, _: &tracing::Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _: &Context<'_, S>) -> bool {
        if !CLOSING.load(Ordering::SeqCst) {
            return true;
        }
        // surrealkv logs through `log`: such events carry their target as a field.
        let mut seen = Seen {
            target: event.metadata().target() == TARGET,
            notice: false,
        };
        event.record(&mut seen);
        !(seen.target && seen.notice)
    }
}

/// The target of surrealkv's tree.
const TARGET: &str = "surrealkv::lsm";

/// Whether an event comes from [`TARGET`] and says [`NOTICE`].
struct Seen {
    target: bool,
    notice: bool,
}

impl Visit for Seen {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.notice = value == NOTICE,
            "log.target" => self.target |= value == TARGET,
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.notice = format!("{value:?}") == NOTICE;
        }
    }
}
