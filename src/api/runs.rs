//! `/v1/runs/{id}`: a run by its id, its cancel, and its events as they happen.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::agents::{RunResponse, RunStep};
use super::auth::ApiKeyAuth;
use super::error::responses;
use super::wire::NumberedSse;
use super::{ApiTags, App};
use crate::engine::{RunEvent, RunView};

/// One event of a followed run: a step as it ends (`event: step`), then the run's final record
/// (`event: run`), the last event.
#[derive(Debug, Clone, Object)]
pub struct RunEventData {
    /// The step, in a `step` event.
    #[oai(skip_serializing_if_is_none)]
    pub step: Option<RunStep>,
    /// The run's final record, with its steps, in the last (`run`) event.
    #[oai(skip_serializing_if_is_none)]
    pub run: Option<RunResponse>,
}

fn record(view: RunView) -> RunResponse {
    RunResponse::with_steps(view.run, view.steps)
}

responses! {
    GetRunResponse {
        ok {
        /// The run, with its steps.
        Ok(Json<RunResponse>) = 200,
        }
        errors {
            Unauthorized = 401: "Missing or invalid API key.",
            NotFound = 404: "No run with this id in this tenant (`run_not_found`).",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

responses! {
    CancelRunResponse {
        ok {
        /// The run, `cancelled` (also when it was cancelled before).
        Ok(Json<RunResponse>) = 200,
        }
        errors {
            Unauthorized = 401: "Missing or invalid API key.",
            NotFound = 404: "No run with this id in this tenant (`run_not_found`).",
            Conflict = 409: "The run has ended, completed or failed (`run_finished`).",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

responses! {
    RunEventsResponse {
        ok {
        /// Server-sent events, each with an `id:`: `event: step` per step as it ends, then one
        /// `event: run` with the final record, and the stream ends.
        Ok(NumberedSse<RunEventData>) = 200,
        }
        errors {
            BadRequest = 400: "`Last-Event-ID` is not an event id (a whole number).",
            Unauthorized = 401: "Missing or invalid API key.",
            NotFound = 404: "No run with this id in this tenant (`run_not_found`).",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

pub struct RunsApi;

#[OpenApi(tag = "ApiTags::Agents")]
impl RunsApi {
    /// Get a run
    ///
    /// Returns one run of your tenant by its id, with its steps: what a background run's
    /// `Location` names.
    #[oai(path = "/runs/:id", method = "get", operation_id = "getRun")]
    async fn get(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        /// The run's id.
        id: Path<String>,
    ) -> GetRunResponse {
        match app.engine.get_run(&auth.0.tenant, &id.0).await {
            Ok(view) => GetRunResponse::Ok(Json(record(view))),
            Err(e) => e.into(),
        }
    }

    /// Cancel a run
    ///
    /// Stops a running run, on whichever instance runs it: its model call is aborted, the
    /// tokens spent so far are counted, and it ends `cancelled` (counted in usage as a run).
    /// Cancelling a cancelled run answers it again; a completed or failed run is 409.
    #[oai(path = "/runs/:id/cancel", method = "post", operation_id = "cancelRun")]
    async fn cancel(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        /// The run's id.
        id: Path<String>,
    ) -> CancelRunResponse {
        match app.engine.cancel_run(&auth.0.tenant, &id.0).await {
            Ok(view) => CancelRunResponse::Ok(Json(record(view))),
            Err(e) => e.into(),
        }
    }

    /// Follow a run
    ///
    /// The run's steps as they happen, then its final record, as server-sent events; a run
    /// that has ended replays its events and the stream ends. Send `Last-Event-ID` to resume
    /// after the last event received, with nothing lost or repeated.
    #[oai(path = "/runs/:id/events", method = "get", operation_id = "followRun")]
    async fn events(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        /// The run's id.
        id: Path<String>,
        /// The id of the last event received; the stream resumes after it.
        #[oai(name = "Last-Event-ID", validator(minimum(value = "0")))]
        last_event_id: Header<Option<u64>>,
    ) -> RunEventsResponse {
        let after = last_event_id.0.unwrap_or(0);
        match app.engine.follow_run(&auth.0.tenant, &id.0, after).await {
            Ok(events) => {
                use futures_util::StreamExt;
                let events = events
                    .map(|event| match event {
                        RunEvent::Step { id, step } => (
                            id,
                            "step",
                            RunEventData {
                                step: Some(step.into()),
                                run: None,
                            },
                        ),
                        RunEvent::End { id, run } => (
                            id,
                            "run",
                            RunEventData {
                                step: None,
                                run: Some(record(*run)),
                            },
                        ),
                    })
                    .boxed();
                RunEventsResponse::Ok(NumberedSse(events))
            }
            Err(e) => e.into(),
        }
    }
}
