//! The engine: the one door to what `ares` does. One method per use case — agents, runs, chats,
//! streams, usage, keys, tenants, checks, agent tests — for the HTTP layer and the command
//! line alike.
//!
//! Knows nothing of HTTP: `api` converts its results and errors to the wire. Owns the store,
//! the agents, the model routes and the clock; nothing else reaches them.

mod agent_tests;
mod agents;
mod background;
mod chat;
mod clock;
mod detach;
mod durable;
mod error;
mod keyring;
mod keys;
mod lifecycle;
mod meter;
mod rate_limit;
mod runs;
mod stream;
mod telemetry;
mod tenants;
mod tool_loop;
mod usage;
mod validate;
mod versions;
mod webhooks;

use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::agents::{AgentRegistry, Catalog, ReloadStatus, ReloadWatcher, Revisions};
use crate::config::Settings;
use crate::llm::Models;
use crate::store::Store;

pub use agent_tests::{
    CaseResult, CaseRun, TestMode, TestOptions, TestReport, junit_xml, test_agents,
};
pub use agents::AgentView;
pub use background::Background;
pub use chat::CHAT_TIMEOUT;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{EngineError, Result};
pub use keys::Caller;
pub use lifecycle::{RunEvent, RunView};
pub use runs::{IdempotencyKey, RunAnswer, RunAsk};
pub use telemetry::Figures;
pub use tenants::NewTenant;
pub use usage::UsageReport;
pub use validate::{Validation, agent_schema, tests_schema, validate_agents};
pub use versions::{ChangedAgent, FieldChange, OwnerPlan, Plan, PlannedAgent, file_version};
pub use webhooks::{EVENTS as WEBHOOK_EVENTS, NewWebhook, RunEncoder, sign as sign_webhook};

/// The folder of the agents every tenant is served; whether an agent takes runs.
pub use crate::agents::{AgentStatus, GLOBAL_DIR};

/// The words of a conversation.
pub use crate::llm::{Message, Role};

/// Closing the database before the process exits.
pub use crate::store::{CloseNotice, begin_close, wait_closed};

/// The records and values the use cases answer with.
pub use crate::store::{
    AgentState, AgentVersion, ApiKey, CheckReport, DayUsage, Delivery, DeliveryState, EventType,
    NewKey, Period, RunRecord, RunStatus, Step, StepKind, Tenant, TenantPatch, Usage, Violation,
    Webhook,
};

/// The stable id of a tenant's agent: UUIDv5 of the tenant and the agent name.
pub fn agent_id(tenant: &str, name: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("ares/agent/{tenant}/{name}").as_bytes(),
    )
    .to_string()
}

/// One page of a listing, and how many items the whole listing has.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// A chat request, as the engine sees it.
#[derive(Debug, Clone)]
pub struct ChatInput {
    pub messages: Vec<Message>,
    pub model: Option<String>,
    pub agent_type: Option<String>,
}

/// A complete chat answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatOutput {
    pub id: String,
    pub content: String,
    pub model: String,
    pub tokens_used: u64,
    pub finish_reason: String,
}

/// One event of a streamed chat; the last has a `finish_reason` and `tokens_used`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatChunk {
    pub delta: String,
    pub finish_reason: Option<String>,
    pub tokens_used: Option<u64>,
    pub error: Option<String>,
}

pub struct Engine {
    store: Store,
    agents: Arc<AgentRegistry>,
    models: Models,
    settings: Arc<Settings>,
    clock: Arc<dyn Clock>,
    meter: meter::Meter,
    limiter: rate_limit::RateLimiter,
    /// Keys verified in memory, in step through the database's change feed.
    keyring: keyring::KeyRing,
    telemetry: Arc<telemetry::Telemetry>,
    in_flight: lifecycle::InFlight,
    webhooks: webhooks::Sender,
}

impl Engine {
    /// Everything `ares serve` needs: the database, the providers of the settings and the
    /// agents of its folder. Fails on invalid agents.
    pub async fn open(settings: Settings) -> anyhow::Result<Engine> {
        let store = connect(&settings).await?;
        let models = Models::from_settings(&settings)?;
        Engine::new(settings, store, models, Arc::new(SystemClock))
    }

    /// Only the database, for the operator's commands (tenants, keys, checks): no agents are
    /// loaded and no provider is built.
    pub async fn open_database(settings: Settings) -> anyhow::Result<Engine> {
        let store = connect(&settings).await?;
        Ok(Engine::database_only(settings, store))
    }

    /// Only the database, opened for reading (no migration applied): `ares plan`.
    pub async fn open_database_read_only(settings: Settings) -> anyhow::Result<Engine> {
        let store = Store::connect_read_only(&settings.database)
            .await
            .with_context(|| connecting(&settings))?;
        Ok(Engine::database_only(settings, store))
    }

    /// An engine on `store` alone: no agents, no providers, the system clock.
    fn database_only(settings: Settings, store: Store) -> Engine {
        Engine::assemble(
            settings,
            store,
            Models::default(),
            AgentRegistry::fixed(Default::default()),
            Arc::new(SystemClock),
        )
    }

    /// An engine on the given store, model routes and clock, with the agents of the settings'
    /// folder (tests script providers and move the clock).
    pub fn new(
        settings: Settings,
        store: Store,
        models: Models,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Engine> {
        let revisions = match &settings.agents_rev {
            Some(rev) => Revisions::Fixed(rev.clone()),
            None => Revisions::Git,
        };
        let agents = AgentRegistry::load(
            &settings.agents_dir,
            Catalog::from_settings(&settings),
            revisions,
        )
        .map_err(|errors| anyhow::anyhow!("the agents folder has errors:\n{errors}"))?;
        Ok(Engine::assemble(settings, store, models, agents, clock))
    }

    fn assemble(
        settings: Settings,
        store: Store,
        models: Models,
        agents: AgentRegistry,
        clock: Arc<dyn Clock>,
    ) -> Engine {
        Engine {
            store,
            agents: Arc::new(agents),
            models,
            settings: Arc::new(settings),
            clock,
            meter: Default::default(),
            limiter: Default::default(),
            keyring: Default::default(),
            telemetry: Default::default(),
            in_flight: Default::default(),
            webhooks: Default::default(),
        }
    }

    /// The settings the engine was built with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The current billing period.
    pub fn period(&self) -> Period {
        self.period_at(self.clock.now())
    }

    fn period_at(&self, at: DateTime<Utc>) -> Period {
        Period::containing(at, self.settings.billing.period_start_day)
    }

    /// Whether the database answers now.
    pub async fn ready(&self) -> bool {
        self.store.ping().await
    }

    /// What the engine has counted, for metrics.
    pub fn figures(&self) -> Figures {
        self.telemetry
            .figures(self.store.is_up(), self.store.ledger_figures())
    }

    /// How many agents are served now, over all tenants.
    pub fn agent_count(&self) -> usize {
        self.agents.snapshot().len()
    }

    /// What the last reloads of the agents folder did.
    pub fn reload_status(&self) -> ReloadStatus {
        self.agents.status()
    }

    /// Reloads the agents folder when it changes, until the watcher is dropped.
    pub fn watch_agents(&self, settle: std::time::Duration) -> anyhow::Result<ReloadWatcher> {
        self.agents
            .watch(settle)
            .context("watching the agents folder")
    }

    /// The database's URL, without its password.
    pub fn database(&self) -> String {
        crate::store::redact_url(&self.settings.database.url)
    }

    /// Verifies the database's invariants (`ares check`).
    pub async fn check(&self) -> Result<CheckReport> {
        Ok(self
            .store
            .check(self.settings.billing.period_start_day)
            .await?)
    }
}

/// The engine owns the store: once it is dropped, the process is closing its database, and
/// the notice surrealkv logs while a tree closes (see `store::close`) says nothing new. Said
/// here, before the store's last handle goes, not after the command returns: the engine's
/// shutdown starts when it is dropped, and its notice raced the command's end.
impl Drop for Engine {
    fn drop(&mut self) {
        begin_close();
    }
}

/// The runtime the engine's use cases run on: database calls nest deep futures, so its threads
/// get the stacks the store needs.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(crate::store::THREAD_STACK_SIZE)
        .build()
}

async fn connect(settings: &Settings) -> anyhow::Result<Store> {
    Store::connect(&settings.database)
        .await
        .with_context(|| connecting(settings))
}

/// What a failed connection was doing, naming the database without its password.
fn connecting(settings: &Settings) -> String {
    format!(
        "connecting to the database at {}",
        crate::store::redact_url(&settings.database.url)
    )
}

#[cfg(test)]
mod tests;
