//! Builds the application from settings and serves it until told to stop.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::agents::{AgentRegistry, Catalog};
use crate::api::App;
use crate::api::metrics::Metrics;
use crate::config::Settings;
use crate::engine::{Engine, Meter};
use crate::llm::Models;
use crate::store::Store;

/// How often counted API calls and key use are written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long in-flight requests may take to finish after a stop signal.
const GRACE: Duration = Duration::from_secs(30);

/// Everything the server runs: the app and its background work.
pub struct Application {
    pub app: Arc<App>,
}

impl Application {
    /// Connects the store, loads the agents and builds the providers. Fails on invalid agents.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let store = Store::connect(&settings.database).await.with_context(|| {
            format!(
                "connecting to the database at {}",
                crate::store::redact_url(&settings.database.url)
            )
        })?;
        Self::with_store(settings, store)
    }

    /// Builds on a store the caller already has (tests use `mem://`).
    pub fn with_store(settings: Settings, store: Store) -> anyhow::Result<Application> {
        let models = Models::from_settings(&settings)?;
        Self::with_models(settings, store, models)
    }

    /// Builds with the given model routes instead of the settings' providers (tests script them).
    pub fn with_models(
        settings: Settings,
        store: Store,
        models: Models,
    ) -> anyhow::Result<Application> {
        let agents =
            AgentRegistry::load(&settings.agents_dir, Catalog::from_settings(&settings))
                .map_err(|errors| anyhow::anyhow!("the agents folder has errors:\n{errors}"))?;
        let settings = Arc::new(settings);
        let engine = Arc::new(Engine {
            store,
            agents: Arc::new(agents),
            models,
            settings: Arc::clone(&settings),
            meter: Meter::default(),
            tool_calls: Default::default(),
            ops: Default::default(),
        });
        Ok(Application {
            app: Arc::new(App {
                engine,
                settings,
                metrics: Arc::new(Metrics::default()),
                limiter: Default::default(),
            }),
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then lets in-flight requests finish and
    /// writes the last counted usage. Watches the agents folder while it runs.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let engine = Arc::clone(&self.app.engine);
        let _watch = engine
            .agents
            .watch(Duration::from_millis(250))
            .context("watching the agents folder")?;
        // The flusher is stopped by message, never aborted: an abort in the middle of a write
        // would lose the counts being written.
        let (stop_flusher, mut flusher_stopped) = tokio::sync::oneshot::channel::<()>();
        let flusher = {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(FLUSH_EVERY);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = &mut flusher_stopped => break,
                    }
                    if let Err(e) = engine.meter.flush(&engine.store).await {
                        tracing::warn!(error = %e, "writing usage counters failed; will retry");
                    }
                }
                if let Err(e) = engine.meter.flush(&engine.store).await {
                    tracing::error!(error = %e, "writing the last usage counters failed");
                }
            })
        };
        engine
            .store
            .renew_lease(self.app.settings.instances.lease.0)
            .await
            .context("recording this instance in the database")?;
        let keeper = tokio::spawn(keep_lease(Arc::clone(&engine)));
        let purger = self
            .app
            .settings
            .retention
            .max_age
            .map(|age| tokio::spawn(purge_history(Arc::clone(&engine), age.0)));
        // Small writes (SSE events) must not wait for the peer's delayed ACK (Nagle): accepted
        // connections inherit TCP_NODELAY from the listening socket on Linux.
        if let Err(e) = socket2::SockRef::from(&listener).set_tcp_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY on the listener");
        }
        let addr = listener.local_addr()?;
        tracing::info!(%addr, agents = engine.agents.snapshot().len(), "ares serving");
        let acceptor = poem::listener::TcpAcceptor::from_tokio(listener)?;
        poem::Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(
                crate::api::routes(Arc::clone(&self.app)),
                shutdown,
                Some(GRACE),
            )
            .await?;
        let _ = stop_flusher.send(());
        let _ = flusher.await;
        if let Some(purger) = purger {
            purger.abort();
        }
        // Runs whose records wait for the database keep the lease; once they are stored (or
        // the grace is over) the instance leaves, and whatever is left is failed as interrupted.
        let deadline = tokio::time::Instant::now() + GRACE;
        while engine.ops.pending_records.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        keeper.abort();
        if let Err(e) = engine.store.retire().await {
            tracing::warn!(error = %e, "removing this instance's record failed; its lease will run out");
        }
        tracing::info!("ares stopped");
        Ok(())
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
            .reap_interrupted(engine.settings.billing.period_start_day)
            .await
        {
            Ok(r) => {
                engine
                    .ops
                    .interrupted_runs
                    .fetch_add(r.runs, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "looking for interrupted runs failed; will retry"),
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
        let cutoff = chrono::Utc::now() - age;
        match engine.store.purge_before(cutoff).await {
            Ok(p) if p.runs + p.chats > 0 => {
                engine
                    .ops
                    .purged
                    .fetch_add(p.runs + p.chats, Ordering::Relaxed);
                tracing::info!(runs = p.runs, chats = p.chats, %cutoff, "history purged");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purging old history failed; will retry"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("stop signal received; finishing in-flight requests");
}
