//! Why the engine refused a request. A run that started is never an error: it is a `failed`
//! run record. Only `api` turns these into statuses and error codes (`api::error`).

use crate::llm::ProviderError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The API key is missing, malformed, unknown, expired or revoked.
    #[error("unknown, expired or revoked API key")]
    Unauthorized,
    /// The key, or all the tenant's keys together (`tenant`), sent more requests than their
    /// per-minute limit.
    #[error("{} limited to {per_minute} requests per minute; retry after {retry_after} s", if *.tenant { "this tenant's API keys together are" } else { "this API key is" })]
    RateLimited {
        per_minute: u64,
        retry_after: u64,
        tenant: bool,
    },
    #[error("no agent named '{0}' in this tenant")]
    AgentNotFound(String),
    #[error("agent '{0}' is disabled")]
    AgentDisabled(String),
    #[error("no API key with id '{0}' in this tenant")]
    KeyNotFound(String),
    #[error(
        "the tenant already holds {0} live API keys, as many as it may (limits.max_keys_per_tenant); revoke one first"
    )]
    KeyLimit(u64),
    #[error("no tenant with slug '{0}'")]
    TenantNotFound(String),
    #[error("no run with id '{0}' in this tenant")]
    RunNotFound(String),
    #[error(
        "the tenant already has {0} webhook endpoints, as many as it may (limits.max_webhooks_per_tenant); delete one first"
    )]
    WebhookLimit(u64),
    #[error("no webhook endpoint with id '{0}' in this tenant")]
    WebhookNotFound(String),
    #[error("no delivery with id '{0}' of this webhook endpoint")]
    DeliveryNotFound(String),
    /// A cancel of a run that had ended otherwise.
    #[error("the run has ended already: it is {0}")]
    RunFinished(&'static str),
    #[error("a request with this Idempotency-Key is still being answered; retry later")]
    IdempotencyKeyInUse,
    #[error(
        "Idempotency-Key: this key was used for a different request (another method, path or body); use a new key"
    )]
    IdempotencyKeyReused,
    #[error("a tenant with slug '{0}' already exists")]
    TenantExists(String),
    /// A request value that is not acceptable; `field` is its JSON path in the request.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    QuotaExceeded(String),
    /// The model provider failed a chat (a run records this as a failed run instead).
    #[error(transparent)]
    Upstream(ProviderError),
    /// The database cannot be reached (refused, lost, timed out); retrying later may work.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or a corrupt record, with its cause chain for the log.
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => EngineError::Unavailable(cause),
            StoreError::Conflict(cause) => EngineError::Internal(anyhow::anyhow!(
                "a storage conflict persisted after retries: {cause}"
            )),
            StoreError::Internal(cause) => EngineError::Internal(cause),
        }
    }
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> EngineError {
    EngineError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
