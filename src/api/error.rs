//! The error table and the one error body every endpoint answers with.

use poem::http::StatusCode;
use poem_openapi::Object;
use poem_openapi::payload::Json;

/// Every error code `ares` answers with: the code, its HTTP status and what it means.
/// `docs/errors.md` lists the same table; a test keeps the two equal.
pub const ERROR_CODES: &[(&str, u16, &str)] = &[
    (
        "invalid_request",
        400,
        "The request is malformed: bad JSON, a wrong type or a bad query parameter. The message names the field.",
    ),
    (
        "unauthorized",
        401,
        "The Authorization header is missing or malformed, or the key is unknown, expired or revoked.",
    ),
    (
        "not_found",
        404,
        "No such route, or no such object in this tenant.",
    ),
    (
        "agent_not_found",
        404,
        "No agent of that name is offered to this tenant.",
    ),
    (
        "api_key_not_found",
        404,
        "No API key with that id belongs to this tenant.",
    ),
    (
        "tenant_not_found",
        404,
        "No tenant with that slug (admin API).",
    ),
    (
        "method_not_allowed",
        405,
        "The route exists but not with this method.",
    ),
    (
        "conflict",
        409,
        "The object already exists (admin API: a tenant slug).",
    ),
    (
        "payload_too_large",
        413,
        "The request body is larger than the configured limit.",
    ),
    (
        "unsupported_media_type",
        415,
        "The request body is not JSON (send Content-Type: application/json).",
    ),
    (
        "validation_failed",
        422,
        "The request is well-formed but a value is not acceptable: the message names the field and the rule.",
    ),
    ("agent_disabled", 409, "The agent exists but is disabled."),
    (
        "quota_exceeded",
        429,
        "The tenant has used its run or token quota for the current billing period.",
    ),
    (
        "rate_limited",
        429,
        "The API key sent more requests than its tenant's per-minute limit; retry after the `Retry-After` header's seconds.",
    ),
    (
        "upstream_error",
        502,
        "The model provider failed or answered with an error (chat); runs record this as a failed run instead.",
    ),
    (
        "internal_error",
        500,
        "Something failed inside ares; the cause is logged under the request id.",
    ),
    (
        "unavailable",
        503,
        "The database cannot be reached; retry later.",
    ),
];

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
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds after which a refused request may be sent again (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error of a code from [`ERROR_CODES`].
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        let status = ERROR_CODES
            .iter()
            .find(|(c, _, _)| *c == code)
            .map_or(500, |(_, s, _)| *s);
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new("invalid_request", message)
    }
    pub fn validation(message: impl Into<String>) -> Self {
        ApiError::new("validation_failed", message)
    }
    pub fn unauthorized() -> Self {
        ApiError::new(
            "unauthorized",
            "missing, malformed, unknown, expired or revoked API key; send Authorization: Bearer ares_...",
        )
    }
    pub fn unauthorized_admin() -> Self {
        ApiError::new(
            "unauthorized",
            "missing or wrong admin token; send Authorization: Bearer $ARES_ADMIN_TOKEN",
        )
    }
    pub fn internal() -> Self {
        ApiError::new(
            "internal_error",
            "internal error; the cause is logged under this request id",
        )
    }
    pub fn unavailable() -> Self {
        ApiError::new("unavailable", "the database is unavailable; retry later")
    }
    pub fn rate_limited(per_minute: u64, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                "rate_limited",
                format!(
                    "this API key is limited to {per_minute} requests per minute; retry after {retry_after} s"
                ),
            )
        }
    }

    /// The body, carrying the id of the request being answered.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
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
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                ApiError::unavailable()
            }
            crate::store::StoreError::Conflict(cause) => {
                tracing::error!(error = %cause, "storage conflict persisted after retries");
                ApiError::internal()
            }
            crate::store::StoreError::Internal(cause) => {
                tracing::error!(error = ?cause, "storage failure");
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
        ok { $($(#[$okmeta:meta])* $ok:ident $(($okty:ty))? = $okstatus:literal,)+ }
        errors { $($err:ident = $status:literal: $doc:literal,)* }
        $(throttled { $thr:ident: $thrdoc:literal })?
    }) => {
        $(#[$meta])*
        #[derive(poem_openapi::ApiResponse)]
        #[allow(clippy::large_enum_variant)]
        pub enum $name {
            $($(#[$okmeta])* #[oai(status = $okstatus)] $ok $(($okty))?,)+
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
                    _ => $name::Internal(body),
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
