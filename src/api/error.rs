//! The error table and the one error body every endpoint answers with.

use poem::http::StatusCode;
use poem_openapi::Object;
use poem_openapi::payload::Json;

use crate::engine::EngineError;

/// Declares the error table: one variant per code, with its HTTP status and meaning.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = ($code:literal, $status:literal, $meaning:literal),)+) => {
        /// Every error code `ares` answers with. `docs/errors.md` lists the same table; a test
        /// keeps the two equal.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)+
        }

        impl ErrorCode {
            /// Every code, in the table's order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The stable snake_case code of the error body.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)+ }
            }

            /// The HTTP status answered with this code.
            pub fn status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)+ }
            }

            /// What the code means, as `docs/errors.md` says it.
            pub fn meaning(self) -> &'static str {
                match self { $(ErrorCode::$variant => $meaning,)+ }
            }
        }
    };
}

error_codes! {
    InvalidRequest = ("invalid_request", 400, "The request is malformed: bad JSON, a wrong type or a bad query parameter. The message names the field."),
    Unauthorized = ("unauthorized", 401, "The Authorization header is missing or malformed, or the key is unknown, expired or revoked."),
    NotFound = ("not_found", 404, "No such route, or no such object in this tenant."),
    AgentNotFound = ("agent_not_found", 404, "No agent of that name is offered to this tenant."),
    ApiKeyNotFound = ("api_key_not_found", 404, "No API key with that id belongs to this tenant."),
    RunNotFound = ("run_not_found", 404, "No run with that id belongs to this tenant."),
    WebhookNotFound = ("webhook_not_found", 404, "No webhook endpoint with that id belongs to this tenant."),
    DeliveryNotFound = ("delivery_not_found", 404, "No delivery with that id belongs to this webhook endpoint."),
    TenantNotFound = ("tenant_not_found", 404, "No tenant with that slug (admin API)."),
    MethodNotAllowed = ("method_not_allowed", 405, "The route exists but not with this method."),
    Conflict = ("conflict", 409, "The object already exists (admin API: a tenant slug)."),
    PayloadTooLarge = ("payload_too_large", 413, "The request body is larger than the configured limit."),
    UnsupportedMediaType = ("unsupported_media_type", 415, "The request body is not JSON (send Content-Type: application/json)."),
    ValidationFailed = ("validation_failed", 422, "The request is well-formed but a value is not acceptable: the message names the field and the rule."),
    IdempotencyKeyReused = ("idempotency_key_reused", 422, "This `Idempotency-Key` was used for a different request (method, path or body); send a new key."),
    AgentDisabled = ("agent_disabled", 409, "The agent exists but is disabled."),
    RunFinished = ("run_finished", 409, "The run has ended (completed or failed) and can no longer be cancelled."),
    IdempotencyKeyInUse = ("idempotency_key_in_use", 409, "A request with this `Idempotency-Key` is still being answered; retry it later to get its answer."),
    KeyLimitReached = ("key_limit_reached", 409, "The tenant holds as many live API keys as it may (`limits.max_keys_per_tenant`); revoke one before creating another."),
    WebhookLimitReached = ("webhook_limit_reached", 409, "The tenant has as many webhook endpoints as it may (`limits.max_webhooks_per_tenant`); delete one before registering another."),
    QuotaExceeded = ("quota_exceeded", 429, "The tenant has used its run or token quota for the current billing period."),
    RateLimited = ("rate_limited", 429, "The API key, or all the tenant's keys together, sent more requests than their per-minute limit; retry after the `Retry-After` header's seconds."),
    UpstreamError = ("upstream_error", 502, "The model provider failed or answered with an error (chat); runs record this as a failed run instead."),
    InternalError = ("internal_error", 500, "Something failed inside ares; the cause is logged under the request id."),
    Unavailable = ("unavailable", 503, "The database cannot be reached; retry later."),
}

/// The body of every error response.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Object)]
pub struct ErrorDetail {
    /// Stable, snake_case error code; see the error table in docs/errors.md.
    pub code: String,
    /// Human-readable description naming the offending field or object.
    pub message: String,
    /// Id of the request (also in the `X-Request-Id` header), for support and logs.
    pub request_id: String,
}

impl poem_openapi::types::Example for ErrorBody {
    fn example() -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: "agent_not_found".into(),
                message: "no agent named 'x' in this tenant".into(),
                request_id: "01968f0e-5a2b-7c3d-9e4f-0a1b2c3d4e5f".into(),
            },
        }
    }
}

/// An error a handler answers with. The request id is filled in by the middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    /// The code's status, except for the rare status poem raises that has no code of its own
    /// (answered as `invalid_request` with poem's status).
    pub status: u16,
    pub message: String,
    /// Seconds after which a refused request may be sent again (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            status: code.status(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }
    pub fn validation(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::ValidationFailed, message)
    }
    pub fn unauthorized() -> Self {
        ApiError::new(
            ErrorCode::Unauthorized,
            "missing, malformed, unknown, expired or revoked API key; send Authorization: Bearer ares_...",
        )
    }
    pub fn unauthorized_admin() -> Self {
        ApiError::new(
            ErrorCode::Unauthorized,
            "missing or wrong admin token; send Authorization: Bearer $ARES_ADMIN_TOKEN",
        )
    }
    pub fn internal() -> Self {
        ApiError::new(
            ErrorCode::InternalError,
            "internal error; the cause is logged under this request id",
        )
    }
    pub fn unavailable() -> Self {
        ApiError::new(
            ErrorCode::Unavailable,
            "the database is unavailable; retry later",
        )
    }
    pub fn rate_limited(message: String, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(ErrorCode::RateLimited, message)
        }
    }

    /// The body, carrying the id of the request being answered.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_string(),
                message: self.message.clone(),
                request_id: super::request_id::current(),
            },
        }
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status,
            self.code.as_str(),
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// The one mapping from the engine's errors to the wire's.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::Unauthorized => ApiError::unauthorized(),
            EngineError::RateLimited { retry_after, .. } => {
                ApiError::rate_limited(message, retry_after)
            }
            EngineError::AgentNotFound(_) => ApiError::new(ErrorCode::AgentNotFound, message),
            EngineError::AgentDisabled(_) => ApiError::new(ErrorCode::AgentDisabled, message),
            EngineError::KeyNotFound(_) => ApiError::new(ErrorCode::ApiKeyNotFound, message),
            EngineError::KeyLimit(_) => ApiError::new(ErrorCode::KeyLimitReached, message),
            EngineError::WebhookLimit(_) => ApiError::new(ErrorCode::WebhookLimitReached, message),
            EngineError::TenantNotFound(_) => ApiError::new(ErrorCode::TenantNotFound, message),
            EngineError::RunNotFound(_) => ApiError::new(ErrorCode::RunNotFound, message),
            EngineError::WebhookNotFound(_) => ApiError::new(ErrorCode::WebhookNotFound, message),
            EngineError::DeliveryNotFound(_) => ApiError::new(ErrorCode::DeliveryNotFound, message),
            EngineError::RunFinished(_) => ApiError::new(ErrorCode::RunFinished, message),
            EngineError::IdempotencyKeyInUse => {
                ApiError::new(ErrorCode::IdempotencyKeyInUse, message)
            }
            EngineError::IdempotencyKeyReused => {
                ApiError::new(ErrorCode::IdempotencyKeyReused, message)
            }
            EngineError::TenantExists(_) => ApiError::new(ErrorCode::Conflict, message),
            EngineError::Invalid { .. } => ApiError::validation(message),
            EngineError::QuotaExceeded(_) => ApiError::new(ErrorCode::QuotaExceeded, message),
            EngineError::Upstream(_) => ApiError::new(ErrorCode::UpstreamError, message),
            EngineError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                ApiError::unavailable()
            }
            EngineError::Internal(cause) => {
                tracing::error!(error = ?cause, "internal failure");
                ApiError::internal()
            }
        }
    }
}

/// Declares one operation's response enum: its success variants, the error statuses it can
/// answer with (each with the error body), and a 500; and converts [`ApiError`] into it.
/// Every status an operation can return thus appears in the spec.
/// An optional `throttled { Variant: "doc" }` adds the operation's 429, which carries a
/// `Retry-After` header when the refusal has a known end.
macro_rules! responses {
    ($(#[$meta:meta])* $name:ident {
        ok { $($(#[$okmeta:meta])* $ok:ident $(( $($okfield:tt)* ))? = $okstatus:literal,)+ }
        errors { $($err:ident = $status:literal: $doc:literal,)* }
        $(throttled { $thr:ident: $thrdoc:literal })?
    }) => {
        $(#[$meta])*
        #[derive(poem_openapi::ApiResponse)]
        #[allow(clippy::large_enum_variant)]
        pub enum $name {
            $($(#[$okmeta])* #[oai(status = $okstatus)] $ok $(( $($okfield)* ))?,)+
            $(
                #[doc = $doc]
                #[oai(status = $status)]
                $err(poem_openapi::payload::Json<$crate::api::error::ErrorBody>),
            )*
            $(
                #[doc = $thrdoc]
                #[oai(status = 429)]
                $thr(
                    poem_openapi::payload::Json<$crate::api::error::ErrorBody>,
                    /// Seconds to wait before sending the request again.
                    #[oai(header = "Retry-After")] Option<u64>,
                ),
            )?
            /// Internal failure; the cause is logged under the request id.
            #[oai(status = 500)]
            Internal(poem_openapi::payload::Json<$crate::api::error::ErrorBody>),
        }

        impl From<$crate::engine::EngineError> for $name {
            fn from(e: $crate::engine::EngineError) -> Self {
                $crate::api::error::ApiError::from(e).into()
            }
        }

        impl From<$crate::api::error::ApiError> for $name {
            fn from(e: $crate::api::error::ApiError) -> Self {
                let body = poem_openapi::payload::Json(e.body());
                $(
                    if e.status == 429 {
                        return $name::$thr(body, e.retry_after);
                    }
                )?
                match e.status {
                    $($status => $name::$err(body),)*
                    500 => $name::Internal(body),
                    undeclared => {
                        // A status the spec does not list for this operation would break
                        // clients generated from it: answer an opaque 500, and say so loudly
                        // (`tests/api/statuses.rs` fails on it).
                        tracing::error!(
                            status = undeclared,
                            code = e.code.as_str(),
                            message = %e.message,
                            "an operation answered a status its response enum does not declare"
                        );
                        $name::Internal(poem_openapi::payload::Json(
                            $crate::api::error::ApiError::internal().body(),
                        ))
                    }
                }
            }
        }
    };
}
pub(crate) use responses;

impl poem::IntoResponse for ApiError {
    fn into_response(self) -> poem::Response {
        let status = self.status_code();
        let mut resp = Json(self.body()).with_status(status).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(poem::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status_code()
    }
    fn as_response(&self) -> poem::Response {
        poem::IntoResponse::into_response(self.clone())
    }
}
