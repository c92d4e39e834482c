//! Runs as resources: fetched by id with their steps, followed as they happen, cancelled from
//! any instance, and idempotency keys so that a retried request never runs (or bills) twice.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::{BoxStream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::error::{EngineError, Result};
use super::runs::{IdempotencyKey, RunAnswer};
use super::{ChatOutput, Engine};
use crate::store::{CancelRequest, Claim, RunInFlight, RunRecord, RunStatus, Step, Tenant};

/// How often a follower looks for a run's new steps, and an instance for cancels of its runs.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// How long a cancel request waits for the run to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// The runs this instance is running (by run id), each with its record's place and the token
/// that stops it.
#[derive(Default)]
pub(crate) struct InFlight(Mutex<HashMap<String, (RunInFlight, CancellationToken)>>);

impl InFlight {
    /// Registers `run`, numbered already.
    pub(crate) fn start(&self, run: &RunRecord) -> CancellationToken {
        let token = CancellationToken::new();
        self.lock()
            .insert(run.id.clone(), (RunInFlight::from(run), token.clone()));
        token
    }

    pub(crate) fn end(&self, run_id: &str) {
        self.lock().remove(run_id);
    }

    /// Stops the run, if this instance runs it.
    pub(crate) fn cancel(&self, run_id: &str) {
        if let Some((_, token)) = self.lock().get(run_id) {
            token.cancel();
        }
    }

    pub(crate) fn runs(&self) -> Vec<RunInFlight> {
        self.lock().values().map(|(run, _)| run.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (RunInFlight, CancellationToken)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A run with its steps.
#[derive(Debug, Clone)]
pub struct RunView {
    pub run: RunRecord,
    pub steps: Vec<Step>,
}

/// One event of a followed run: a step, then the run's final record. `id` numbers them from 1,
/// the final record's after the last step's.
#[derive(Debug, Clone)]
pub enum RunEvent {
    Step { id: u64, step: Step },
    End { id: u64, run: Box<RunView> },
}

impl Engine {
    /// The tenant's run `run_id`, with its steps.
    #[tracing::instrument(skip(self, tenant), fields(tenant = %tenant.slug))]
    pub async fn get_run(&self, tenant: &Tenant, run_id: &str) -> Result<RunView> {
        let run = self
            .store
            .run_by_id(&tenant.slug, run_id)
            .await?
            .ok_or_else(|| EngineError::RunNotFound(run_id.to_string()))?;
        let steps = self.steps_of(&run.id).await?;
        Ok(RunView { run, steps })
    }

    async fn with_steps(&self, view: RunView) -> Result<RunView> {
        let steps = self.steps_of(&view.run.id).await?;
        Ok(RunView { steps, ..view })
    }

    async fn steps_of(&self, run_id: &str) -> Result<Vec<Step>> {
        Ok(self
            .store
            .steps_after(run_id, 0)
            .await?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// Cancels the tenant's run `run_id`: a running run stops (on whichever instance runs it,
    /// within [`POLL_EVERY`]), its provider request aborted, and settles as `cancelled` with
    /// the tokens spent so far. Cancelling a cancelled run answers it again; an ended one is
    /// [`EngineError::RunFinished`].
    #[tracing::instrument(skip(self, tenant), fields(tenant = %tenant.slug))]
    pub async fn cancel_run(&self, tenant: &Tenant, run_id: &str) -> Result<RunView> {
        match self.store.request_cancel(&tenant.slug, run_id).await? {
            CancelRequest::NotFound => Err(EngineError::RunNotFound(run_id.to_string())),
            CancelRequest::Ended(run) => self.with_steps(ended(run)?).await,
            CancelRequest::Requested(_) => {
                self.in_flight.cancel(run_id);
                let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
                loop {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    let run = self
                        .store
                        .run_by_id(&tenant.slug, run_id)
                        .await?
                        .ok_or_else(|| EngineError::RunNotFound(run_id.to_string()))?;
                    if run.status != RunStatus::Running {
                        return self.with_steps(ended(run)?).await;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        // Its instance is slow to notice, or gone (the reaper will fail it).
                        return self
                            .with_steps(RunView {
                                run,
                                steps: Vec::new(),
                            })
                            .await;
                    }
                }
            }
        }
    }
}

/// The answer to a cancel of a run that is no longer running (its steps still to add).
fn ended(run: RunRecord) -> Result<RunView> {
    match run.status {
        RunStatus::Cancelled | RunStatus::Running => Ok(RunView {
            run,
            steps: Vec::new(),
        }),
        other => Err(EngineError::RunFinished(other.as_str())),
    }
}

impl Engine {
    /// The tenant's run `run_id` as it happens: its steps after `after`, then its final record;
    /// the stream ends with the run. From any instance, whichever runs it.
    #[tracing::instrument(skip(self, tenant), fields(tenant = %tenant.slug))]
    pub async fn follow_run(
        &self,
        tenant: &Tenant,
        run_id: &str,
        after: u64,
    ) -> Result<BoxStream<'static, RunEvent>> {
        if self.store.run_by_id(&tenant.slug, run_id).await?.is_none() {
            return Err(EngineError::RunNotFound(run_id.to_string()));
        }
        let state = Follow {
            store: self.store.clone(),
            tenant: tenant.slug.clone(),
            run_id: run_id.to_string(),
            last: after,
            queue: Vec::new(),
            done: false,
        };
        Ok(futures_util::stream::unfold(state, |mut f| async move {
            loop {
                if let Some(event) = f.queue.pop() {
                    return Some((event, f));
                }
                if f.done {
                    return None;
                }
                if let Err(e) = f.poll().await {
                    tracing::warn!(run = %f.run_id, error = %e, "following a run failed");
                    return None;
                }
                if f.queue.is_empty() && !f.done {
                    tokio::time::sleep(POLL_EVERY).await;
                }
            }
        })
        .boxed())
    }
}

/// A follower's place in a run's events.
struct Follow {
    store: crate::store::Store,
    tenant: String,
    run_id: String,
    /// The id of the last event sent.
    last: u64,
    /// Events to send, the next one last.
    queue: Vec<RunEvent>,
    done: bool,
}

impl Follow {
    /// Queues the steps after `last`; once the run has ended, its final record too.
    async fn poll(&mut self) -> crate::store::Result<()> {
        // The run's state first: steps are all written before a run settles, so once it has
        // ended, the steps read after it are all of them.
        let run = self.store.run_by_id(&self.tenant, &self.run_id).await?;
        let ended = run.as_ref().is_none_or(|r| r.status != RunStatus::Running);
        let steps = self.store.steps_after(&self.run_id, self.last).await?;
        let mut events: Vec<RunEvent> = Vec::new();
        for (id, step) in steps {
            self.last = id;
            events.push(RunEvent::Step { id, step });
        }
        if ended {
            self.done = true;
            if let Some(run) = run {
                let all = self.store.steps_after(&self.run_id, 0).await?;
                let id = all.len() as u64 + 1;
                if id > self.last {
                    let steps = all.into_iter().map(|(_, s)| s).collect();
                    events.push(RunEvent::End {
                        id,
                        run: Box::new(RunView { run, steps }),
                    });
                }
            }
        }
        events.reverse();
        self.queue = events;
        Ok(())
    }
}

impl Engine {
    /// Claims an idempotency key for a run; `Some` with the earlier answer to replay.
    pub(super) async fn claim_for_run(
        &self,
        tenant: &Tenant,
        key: &IdempotencyKey,
        now: DateTime<Utc>,
    ) -> Result<Option<RunAnswer>> {
        match self.claim(tenant, key, now).await? {
            Claim::New => Ok(None),
            Claim::Mismatch => Err(EngineError::IdempotencyKeyReused),
            Claim::InProgress {
                run_id: Some(run_id),
                background,
            } => {
                let view = self.get_run(tenant, &run_id).await?;
                if view.run.status == RunStatus::Running && !background {
                    return Err(EngineError::IdempotencyKeyInUse);
                }
                Ok(Some(RunAnswer {
                    run: view.run,
                    steps: view.steps,
                    replayed: true,
                    background,
                }))
            }
            Claim::InProgress { run_id: None, .. } | Claim::Answered { .. } => {
                Err(EngineError::IdempotencyKeyInUse)
            }
        }
    }

    async fn claim(
        &self,
        tenant: &Tenant,
        key: &IdempotencyKey,
        now: DateTime<Utc>,
    ) -> Result<Claim> {
        let ttl = chrono::TimeDelta::from_std(self.settings.idempotency.ttl.0)
            .unwrap_or(chrono::TimeDelta::days(1));
        Ok(self
            .store
            .claim_idempotency_key(&tenant.slug, &key.key, &key.fingerprint, now, now + ttl)
            .await?)
    }

    /// Gives up a claimed key whose request was refused before it did anything.
    pub(super) async fn release_key(&self, tenant: &Tenant, key: &IdempotencyKey) {
        if let Err(e) = self
            .store
            .release_idempotency_key(&tenant.slug, &key.key)
            .await
        {
            tracing::warn!(error = %e, "releasing an idempotency key failed; it stays claimed until it expires");
        }
    }

    /// A chat under an idempotency key: executed once; a repeat answers the first answer.
    pub(super) async fn chat_once<F>(
        &self,
        tenant: &Tenant,
        key: &IdempotencyKey,
        chat: F,
    ) -> Result<(ChatOutput, bool)>
    where
        F: std::future::Future<Output = Result<ChatOutput>>,
    {
        match self.claim(tenant, key, self.clock.now()).await? {
            Claim::New => {}
            Claim::Mismatch => return Err(EngineError::IdempotencyKeyReused),
            Claim::Answered { body, .. } => {
                let out = serde_json::from_str(&body).map_err(|e| {
                    EngineError::Internal(anyhow::anyhow!("decoding a stored chat answer: {e}"))
                })?;
                return Ok((out, true));
            }
            Claim::InProgress { .. } => return Err(EngineError::IdempotencyKeyInUse),
        }
        match chat.await {
            Ok(out) => {
                let body = serde_json::to_string(&out).map_err(|e| {
                    EngineError::Internal(anyhow::anyhow!("encoding a chat answer: {e}"))
                })?;
                if let Err(e) = self
                    .store
                    .idempotent_answer(&tenant.slug, &key.key, 200, &body)
                    .await
                {
                    tracing::warn!(error = %e, "storing a chat's answer for its idempotency key failed");
                }
                Ok((out, false))
            }
            Err(e) => {
                self.release_key(tenant, key).await;
                Err(e)
            }
        }
    }
}
