//! An instance's background work while it serves: writing counted API calls every second,
//! keeping its lease and failing the runs of stopped instances, purging old history; and its
//! clean stop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;

use super::{Engine, keyring};

/// How often counted API calls and key use are written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The running background work; [`Background::stop`] ends it.
pub struct Background {
    stop_flusher: tokio::sync::oneshot::Sender<()>,
    flusher: tokio::task::JoinHandle<()>,
    keeper: tokio::task::JoinHandle<()>,
    purger: Option<tokio::task::JoinHandle<()>>,
    /// Cancels asked of this instance's runs on other instances; expired idempotency keys;
    /// webhook deliveries; the agent versions served.
    watchers: Vec<tokio::task::JoinHandle<()>>,
    engine: Arc<Engine>,
}

impl Engine {
    /// Records this instance in the database and starts its background work.
    pub async fn start_background(self: &Arc<Self>) -> anyhow::Result<Background> {
        // The flusher is stopped by message, never aborted: an abort in the middle of a write
        // would lose the counts being written.
        let (stop_flusher, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let flusher = {
            let engine = Arc::clone(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(FLUSH_EVERY);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = &mut stopped => break,
                    }
                    if let Err(e) = engine.flush_usage().await {
                        tracing::warn!(error = %e, "writing usage counters failed; will retry");
                    }
                }
                if let Err(e) = engine.flush_usage().await {
                    tracing::error!(error = %e, "writing the last usage counters failed");
                }
            })
        };
        self.store
            .renew_lease(self.settings.instances.lease.0)
            .await
            .context("recording this instance in the database")?;
        let keeper = tokio::spawn(keep_lease(Arc::clone(self)));
        let purger = self
            .settings
            .retention
            .max_age
            .map(|age| tokio::spawn(purge_history(Arc::clone(self), age.0)));
        let watchers = vec![
            tokio::spawn(watch_cancels(Arc::clone(self))),
            tokio::spawn(expire_idempotency_keys(Arc::clone(self))),
            tokio::spawn(Arc::clone(self).send_webhooks()),
            tokio::spawn(Arc::clone(self).track_served()),
            tokio::spawn(Arc::clone(self).sync_keys()),
        ];
        Ok(Background {
            stop_flusher,
            flusher,
            keeper,
            purger,
            watchers,
            engine: Arc::clone(self),
        })
    }

    /// Writes the API calls and key use counted so far (the background work does it every
    /// second; tests call it to see them at once).
    pub async fn flush_usage(&self) -> crate::engine::Result<()> {
        Ok(self.meter.flush(&self.store).await?)
    }
}

impl Background {
    /// Ends the background work once requests have stopped: writes the last counts, waits up
    /// to `grace` for records waiting on the database, and removes this instance's lease
    /// (whatever is left is failed as interrupted by another instance).
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop_flusher.send(());
        let _ = self.flusher.await;
        if let Some(purger) = self.purger {
            purger.abort();
        }
        for w in self.watchers {
            w.abort();
        }
        let engine = self.engine;
        let deadline = tokio::time::Instant::now() + grace;
        while engine.telemetry.ops.pending_records.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.keeper.abort();
        if let Err(e) = engine.store.retire().await {
            tracing::warn!(error = %e, "removing this instance's record failed; its lease will run out");
        }
    }
}

impl Engine {
    /// Keeps the keys verified in memory in step with the database: reads its change feed
    /// every [`keyring::SYNC_EVERY`] and forgets what changed. While reads fail, memory is
    /// not trusted and each request reads the database.
    pub(super) async fn sync_keys(self: Arc<Self>) {
        let mut tick = tokio::time::interval(keyring::SYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let began = tokio::time::Instant::now();
            match self
                .store
                .key_changes(self.keyring.since(), keyring::FEED_LIMIT)
                .await
            {
                Ok(changes) => {
                    self.keyring.apply(&changes, began);
                    if std::mem::take(&mut failing) {
                        tracing::info!(
                            "the key change feed is read again; keys are verified in memory"
                        );
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "reading the key change feed failed; every request reads its key from the database until it is read again");
                    }
                }
            }
        }
    }
}

/// Renews this instance's lease every third of it, and fails the runs of instances whose lease
/// ran out (killed, or cut off from the database) as interrupted.
async fn keep_lease(engine: Arc<Engine>) {
    let lease = engine.settings.instances.lease.0;
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = engine.store.renew_lease(lease).await {
            tracing::warn!(error = %e, "renewing this instance's lease failed; will retry");
            continue;
        }
        match engine
            .store
            .reap_interrupted(engine.settings.billing.period_start_day, engine.clock.now())
            .await
        {
            Ok(r) => {
                engine
                    .telemetry
                    .ops
                    .interrupted_runs
                    .fetch_add(r.runs, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "looking for interrupted runs failed; will retry"),
        }
    }
}

/// Stops this instance's runs whose cancel was asked through another instance, within
/// [`super::lifecycle::POLL_EVERY`].
async fn watch_cancels(engine: Arc<Engine>) {
    let mut tick = tokio::time::interval(super::lifecycle::POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut streak = FailureStreak::new("looking for cancelled runs");
    loop {
        tick.tick().await;
        let running = engine.in_flight.runs();
        if running.is_empty() {
            continue;
        }
        match engine.store.cancels_requested(&running).await {
            Ok(ids) => {
                streak.succeeded();
                for id in ids {
                    engine.in_flight.cancel(&id);
                }
            }
            Err(e) => streak.failed(&e),
        }
    }
}

/// The log of a loop that polls several times a second: its first failure in a row is a
/// warning, the repeats are debug lines (an outage would otherwise write one every poll),
/// and its recovery is said once.
pub(super) struct FailureStreak {
    what: &'static str,
    failures: u64,
}

impl FailureStreak {
    pub(super) fn new(what: &'static str) -> FailureStreak {
        FailureStreak { what, failures: 0 }
    }

    pub(super) fn failed(&mut self, error: &dyn std::fmt::Display) {
        self.failures += 1;
        if self.failures == 1 {
            tracing::warn!(%error, "{} failed; will retry", self.what);
        } else {
            tracing::debug!(%error, failures = self.failures, "{} failed again", self.what);
        }
    }

    pub(super) fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "{} works again", self.what);
            self.failures = 0;
        }
    }
}

/// Deletes expired idempotency keys every ten minutes.
async fn expire_idempotency_keys(engine: Arc<Engine>) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match engine
            .store
            .purge_idempotency_keys(engine.clock.now())
            .await
        {
            Ok(n) if n > 0 => tracing::info!(keys = n, "expired idempotency keys deleted"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "deleting expired idempotency keys failed; will retry")
            }
        }
    }
}

/// Deletes run and chat history older than `max_age`, every `retention.interval`, in small
/// transactions beside the requests.
async fn purge_history(engine: Arc<Engine>, max_age: Duration) {
    let Ok(age) = chrono::Duration::from_std(max_age) else {
        tracing::error!(max_age = ?max_age, "retention.max_age is too long; nothing is purged");
        return;
    };
    let mut tick = tokio::time::interval(engine.settings.retention.interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cutoff = engine.clock.now() - age;
        match engine.store.purge_before(cutoff).await {
            Ok(p) if p.runs + p.chats + p.deliveries > 0 => {
                engine
                    .telemetry
                    .ops
                    .purged
                    .fetch_add(p.runs + p.chats, Ordering::Relaxed);
                tracing::info!(runs = p.runs, chats = p.chats, deliveries = p.deliveries, %cutoff, "history purged");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purging old history failed; will retry"),
        }
    }
}
