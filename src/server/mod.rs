//! Builds the application from settings and serves it until told to stop.

mod listen;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::App;
use crate::api::metrics::Metrics;
use crate::config::Settings;
use crate::engine::Engine;

/// How long in-flight requests may take to finish after a stop signal.
const GRACE: Duration = Duration::from_secs(30);

/// Everything the server runs: the engine behind the HTTP layer.
pub struct Application {
    pub app: Arc<App>,
}

impl Application {
    /// Opens the engine (database, providers, agents). Fails on invalid agents.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        Ok(Self::new(Engine::open(settings).await?))
    }

    /// Serves `engine`.
    pub fn new(engine: Engine) -> Application {
        // Webhook events carry runs as the API answers them.
        let engine = engine.with_run_encoder(Arc::new(|run| {
            use poem_openapi::types::ToJSON;
            crate::api::agents::RunResponse::from(run.clone())
                .to_json()
                .unwrap_or_default()
        }));
        Application {
            app: Arc::new(App {
                engine: Arc::new(engine),
                metrics: Arc::new(Metrics::default()),
            }),
        }
    }

    /// Serves on `listener` until `shutdown` resolves, then lets in-flight requests finish and
    /// stops the engine's background work. Watches the agents folder while it runs.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let engine = Arc::clone(&self.app.engine);
        let _watch = engine.watch_agents(Duration::from_millis(250))?;
        let background = engine.start_background().await?;
        // Small writes (SSE events) must not wait for the peer's delayed ACK (Nagle): accepted
        // connections inherit TCP_NODELAY from the listening socket on Linux.
        if let Err(e) = socket2::SockRef::from(&listener).set_tcp_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY on the listener");
        }
        let addr = listener.local_addr()?;
        tracing::info!(%addr, agents = engine.agent_count(), "ares serving");
        let limits = &engine.settings().limits;
        let timeouts = listen::Timeouts {
            header: limits.header_timeout.0,
            idle: limits.idle_timeout.0,
            grace: GRACE,
        };
        listen::serve(
            listener,
            crate::api::routes(Arc::clone(&self.app)),
            shutdown,
            timeouts,
        )
        .await?;
        // Records waiting for the database keep the lease until stored (or the grace is over).
        background.stop(GRACE).await;
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
