//! Builds the application from settings and serves it until told to stop.

use std::future::Future;
use std::sync::Arc;
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
        });
        Ok(Application {
            app: Arc::new(App {
                engine,
                settings,
                metrics: Arc::new(Metrics::default()),
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
        tracing::info!("ares stopped");
        Ok(())
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
