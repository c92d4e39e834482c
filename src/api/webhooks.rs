//! `/v1/webhooks`: the tenant's webhook endpoints and their deliveries.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::auth::ApiKeyAuth;
use super::error::responses;
use super::wire::{JsonBody, Timestamp};
use super::{ApiTags, App, Page};
use crate::engine::{Delivery, DeliveryState, EventType, NewWebhook, Webhook};

/// An event an endpoint subscribes to, or `*` for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Deserialize)]
#[oai(rename = "WebhookEvent")]
pub enum WebhookEvent {
    #[oai(rename = "run.completed")]
    #[serde(rename = "run.completed")]
    RunCompleted,
    #[oai(rename = "run.failed")]
    #[serde(rename = "run.failed")]
    RunFailed,
    #[oai(rename = "run.cancelled")]
    #[serde(rename = "run.cancelled")]
    RunCancelled,
    /// Every event.
    #[oai(rename = "*")]
    #[serde(rename = "*")]
    All,
}

impl WebhookEvent {
    const ALL: [WebhookEvent; 4] = [
        WebhookEvent::RunCompleted,
        WebhookEvent::RunFailed,
        WebhookEvent::RunCancelled,
        WebhookEvent::All,
    ];

    fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::RunCompleted => "run.completed",
            WebhookEvent::RunFailed => "run.failed",
            WebhookEvent::RunCancelled => "run.cancelled",
            WebhookEvent::All => "*",
        }
    }

    /// The stored events of an endpoint, as the API names them.
    fn list(stored: &[String]) -> Vec<WebhookEvent> {
        stored
            .iter()
            .filter_map(|s| Self::ALL.into_iter().find(|e| e.as_str() == s))
            .collect()
    }
}

/// An endpoint to register.
#[derive(Debug, Clone, Object, serde::Deserialize)]
pub struct WebhookRequest {
    /// Where events are sent: an `https` (or `http`) URL of a public address, without a user
    /// name or password.
    #[oai(validator(min_length = 1, max_length = 2048, pattern = r"^https?://\S+$"))]
    pub url: String,
    /// The events to send: any of `run.completed`, `run.failed`, `run.cancelled`, or `["*"]`
    /// for all.
    #[oai(validator(min_items = 1, max_items = 4))]
    pub events: Vec<WebhookEvent>,
    /// What the endpoint is for.
    #[oai(validator(max_length = 500))]
    pub description: Option<String>,
}

/// A webhook endpoint.
#[derive(Debug, Clone, Object)]
pub struct WebhookInfo {
    /// The endpoint's id (UUIDv7).
    pub id: String,
    pub url: String,
    /// The events sent to it.
    pub events: Vec<WebhookEvent>,
    #[oai(nullable)]
    pub description: Option<String>,
    pub created_at: Timestamp,
}

impl From<Webhook> for WebhookInfo {
    fn from(w: Webhook) -> Self {
        WebhookInfo {
            id: w.id,
            url: w.url,
            events: WebhookEvent::list(&w.events),
            description: w.description,
            created_at: w.created_at.into(),
        }
    }
}

/// A registered endpoint and its signing secret, shown only here.
#[derive(Debug, Clone, Object)]
pub struct CreatedWebhook {
    /// The endpoint's id (UUIDv7).
    pub id: String,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    #[oai(nullable)]
    pub description: Option<String>,
    pub created_at: Timestamp,
    /// The secret that signs every delivery (`webhook-signature`, Standard Webhooks): store it now.
    pub secret: String,
}

/// The tenant's endpoints.
#[derive(Debug, Clone, Object)]
pub struct WebhookList {
    /// Oldest first.
    pub webhooks: Vec<WebhookInfo>,
}

/// The event a delivery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename = "WebhookEventType")]
pub enum WebhookEventType {
    #[oai(rename = "run.completed")]
    RunCompleted,
    #[oai(rename = "run.failed")]
    RunFailed,
    #[oai(rename = "run.cancelled")]
    RunCancelled,
}

impl From<EventType> for WebhookEventType {
    fn from(e: EventType) -> Self {
        match e {
            EventType::RunCompleted => WebhookEventType::RunCompleted,
            EventType::RunFailed => WebhookEventType::RunFailed,
            EventType::RunCancelled => WebhookEventType::RunCancelled,
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename = "DeliveryState", rename_all = "lowercase")]
pub enum DeliveryStateDto {
    /// Not yet delivered; attempts are left.
    Pending,
    /// An attempt was answered 2xx.
    Delivered,
    /// Every attempt failed.
    Failed,
}

impl From<DeliveryState> for DeliveryStateDto {
    fn from(s: DeliveryState) -> Self {
        match s {
            DeliveryState::Pending => DeliveryStateDto::Pending,
            DeliveryState::Delivered => DeliveryStateDto::Delivered,
            DeliveryState::Failed => DeliveryStateDto::Failed,
        }
    }
}

/// One event for one endpoint, and how its sending went.
#[derive(Debug, Clone, Object)]
pub struct DeliveryInfo {
    /// The delivery's id.
    pub id: String,
    /// The event's id, sent as `webhook-id` by every attempt.
    pub event_id: String,
    pub event_type: WebhookEventType,
    /// The run the event is about.
    pub run_id: String,
    /// Attempts made so far.
    pub attempts: u64,
    /// The HTTP status of the last attempt; null before the first, or when no answer came.
    #[oai(nullable)]
    pub last_status: Option<u16>,
    /// Why the last attempt failed; null when it did not.
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// When the next attempt is due (while `pending`).
    pub next_attempt_at: Timestamp,
    pub state: DeliveryStateDto,
}

impl From<Delivery> for DeliveryInfo {
    fn from(d: Delivery) -> Self {
        DeliveryInfo {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type.into(),
            run_id: d.run_id,
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error,
            next_attempt_at: d.next_attempt_at.into(),
            state: d.state.into(),
        }
    }
}

/// A page of an endpoint's deliveries, newest first.
#[derive(Debug, Clone, Object)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryInfo>,
    /// All deliveries of the endpoint, not only this page's.
    pub total: u64,
    pub page: u32,
    pub per_page: u32,
}

responses! {
    CreateWebhookResponse {
        ok {
        /// The endpoint is registered; its secret is shown only here.
        Created(Json<CreatedWebhook>) = 201,
        }
        errors {
            BadRequest = 400: "The body is not JSON of the right shape; the message names the field.",
            Unauthorized = 401: "Missing or invalid API key.",
            Conflict = 409: "The tenant has as many endpoints as it may (`webhook_limit_reached`); delete one first.",
            TooLarge = 413: "The body is larger than the configured limit.",
            UnsupportedMediaType = 415: "The body is not sent as `application/json`.",
            Invalid = 422: "The URL is not an http(s) URL of a public address, or an event is unknown; the message names the field.",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

responses! {
    ListWebhooksResponse {
        ok {
        /// The tenant's endpoints, without their secrets.
        Ok(Json<WebhookList>) = 200,
        }
        errors {
            Unauthorized = 401: "Missing or invalid API key.",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

responses! {
    DeleteWebhookResponse {
        ok {
        /// The endpoint and its deliveries are gone.
        Deleted = 204,
        }
        errors {
            Unauthorized = 401: "Missing or invalid API key.",
            NotFound = 404: "No endpoint with this id in this tenant (`webhook_not_found`).",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

responses! {
    ListDeliveriesResponse {
        ok {
        /// A page of the endpoint's deliveries, newest first.
        Ok(Json<DeliveryList>) = 200,
        }
        errors {
            BadRequest = 400: "A query parameter is not a number, or out of range (`invalid_request`).",
            Unauthorized = 401: "Missing or invalid API key.",
            NotFound = 404: "No endpoint with this id in this tenant (`webhook_not_found`).",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

responses! {
    RetryDeliveryResponse {
        ok {
        /// The event is being sent again, with the same `webhook-id`.
        Accepted = 202,
        }
        errors {
            Unauthorized = 401: "Missing or invalid API key.",
            NotFound = 404: "No such endpoint in this tenant (`webhook_not_found`), or no such delivery of it (`delivery_not_found`).",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

pub struct WebhooksApi;

#[OpenApi(tag = "ApiTags::Webhooks")]
impl WebhooksApi {
    /// Register a webhook endpoint
    ///
    /// Events are POSTed to the URL as `{"type", "timestamp", "data": <the run record>}`,
    /// signed as the Standard Webhooks specification says (`webhook-id`,
    /// `webhook-timestamp`, `webhook-signature`), at least once: an answer other than 2xx is
    /// retried with exponential backoff. The signing secret is returned only here.
    #[oai(path = "/webhooks", method = "post", operation_id = "createWebhook")]
    async fn create(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        body: JsonBody<WebhookRequest>,
    ) -> CreateWebhookResponse {
        let b = body.0;
        let new = NewWebhook {
            url: b.url,
            events: b
                .events
                .into_iter()
                .map(|e| e.as_str().to_string())
                .collect(),
            description: b.description,
        };
        match app.engine.create_webhook(&auth.0.tenant, new).await {
            Ok((hook, secret)) => CreateWebhookResponse::Created(Json(CreatedWebhook {
                id: hook.id,
                url: hook.url,
                events: WebhookEvent::list(&hook.events),
                description: hook.description,
                created_at: hook.created_at.into(),
                secret,
            })),
            Err(e) => e.into(),
        }
    }

    /// List webhook endpoints
    #[oai(path = "/webhooks", method = "get", operation_id = "listWebhooks")]
    async fn list(&self, app: Data<&Arc<App>>, auth: ApiKeyAuth) -> ListWebhooksResponse {
        match app.engine.list_webhooks(&auth.0.tenant).await {
            Ok(hooks) => ListWebhooksResponse::Ok(Json(WebhookList {
                webhooks: hooks.into_iter().map(WebhookInfo::from).collect(),
            })),
            Err(e) => e.into(),
        }
    }

    /// Delete a webhook endpoint
    #[oai(
        path = "/webhooks/:id",
        method = "delete",
        operation_id = "deleteWebhook"
    )]
    async fn delete(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        /// The endpoint's id.
        id: Path<String>,
    ) -> DeleteWebhookResponse {
        match app.engine.delete_webhook(&auth.0.tenant, &id.0).await {
            Ok(()) => DeleteWebhookResponse::Deleted,
            Err(e) => e.into(),
        }
    }

    /// List an endpoint's deliveries
    ///
    /// Every event sent (or to be sent) to the endpoint, newest first, with its attempts.
    #[oai(
        path = "/webhooks/:id/deliveries",
        method = "get",
        operation_id = "listWebhookDeliveries"
    )]
    async fn deliveries(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        /// The endpoint's id.
        id: Path<String>,
        /// Page number, from 1 (at most 1,000,000).
        #[oai(
            default = "super::default_page",
            validator(minimum(value = "1"), maximum(value = "1000000"))
        )]
        page: Query<u32>,
        /// Results per page, 1 to 100.
        #[oai(
            default = "super::default_per_page",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        per_page: Query<u32>,
    ) -> ListDeliveriesResponse {
        let page = match Page::new(page.0, per_page.0) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        match app
            .engine
            .webhook_deliveries(&auth.0.tenant, &id.0, page.offset(), page.limit())
            .await
        {
            Ok(listing) => ListDeliveriesResponse::Ok(Json(DeliveryList {
                deliveries: listing.items.into_iter().map(DeliveryInfo::from).collect(),
                total: listing.total,
                page: page.page,
                per_page: page.per_page,
            })),
            Err(e) => e.into(),
        }
    }

    /// Send a delivery again
    ///
    /// Sends the delivery's event to the endpoint again now, with the same `webhook-id`.
    #[oai(
        path = "/webhooks/:id/deliveries/:delivery_id/retry",
        method = "post",
        operation_id = "retryWebhookDelivery"
    )]
    async fn retry(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        /// The endpoint's id.
        id: Path<String>,
        /// The delivery's id.
        delivery_id: Path<String>,
    ) -> RetryDeliveryResponse {
        match app
            .engine
            .retry_delivery(&auth.0.tenant, &id.0, &delivery_id.0)
            .await
        {
            Ok(()) => RetryDeliveryResponse::Accepted,
            Err(e) => e.into(),
        }
    }
}
