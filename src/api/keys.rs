//! `/v1/api-keys`: list, create and revoke the tenant's API keys.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::auth::ApiKeyAuth;
use super::error::responses;
use super::wire::document_example;
use super::wire::{JsonBody, Timestamp};
use super::{ApiTags, App};
use crate::engine::{ApiKey, NewKey};

/// An API key, without its secret.
#[derive(Debug, Clone, Object)]
pub struct ApiKeyInfo {
    /// The key's id (UUIDv7), used to revoke it.
    pub id: String,
    /// The name given at creation.
    pub name: String,
    /// `ares_` and the first four characters of the secret, to recognise it.
    pub prefix: String,
    /// When the key was created.
    pub created_at: Timestamp,
    /// When the key stops working; null when it does not expire.
    #[oai(nullable)]
    pub expires_at: Option<Timestamp>,
    /// When the key was last used (updated about once a second); null when never used.
    #[oai(nullable)]
    pub last_used: Option<Timestamp>,
}

impl From<ApiKey> for ApiKeyInfo {
    fn from(k: ApiKey) -> Self {
        ApiKeyInfo {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            created_at: k.created_at.into(),
            expires_at: k.expires_at.map(Timestamp),
            last_used: k.last_used.map(Timestamp),
        }
    }
}

impl From<NewKey> for CreatedKey {
    fn from(k: NewKey) -> Self {
        CreatedKey {
            key: k.key.id,
            secret: k.secret,
        }
    }
}

/// The tenant's live keys.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ApiKeyList {
    /// Oldest first.
    pub keys: Vec<ApiKeyInfo>,
}

/// A key to create.
#[derive(Debug, Clone, Object, serde::Deserialize)]
#[oai(example)]
pub struct CreateKeyRequest {
    /// A name to recognise the key by.
    #[oai(validator(min_length = 1, max_length = 100))]
    pub name: String,
    /// Days until the key expires; omit (or null) for a key that does not expire.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "36500")))]
    pub expires_in_days: Option<u32>,
}

/// A created key. The secret is shown only here: store it now.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct CreatedKey {
    /// The key's id.
    pub key: String,
    /// The secret to send as `Authorization: Bearer <secret>`.
    pub secret: String,
}

responses! {
    ListKeysResponse {
        ok {
        /// The tenant's keys that are not revoked.
        Ok(Json<ApiKeyList>) = 200,
        }
        errors {
            Unauthorized = 401: "Missing or invalid API key.",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

responses! {
    CreateKeyResponse {
        ok {
        /// The key was created.
        Created(Json<CreatedKey>) = 201,
        }
        errors {
            BadRequest = 400: "The body is not JSON of the right shape, or a value is out of range; the message names the field.",
            Unauthorized = 401: "Missing or invalid API key.",
            Conflict = 409: "The tenant holds as many live keys as it may (`key_limit_reached`); revoke one first.",
            TooLarge = 413: "The body is larger than the configured limit.",
            UnsupportedMediaType = 415: "The body is not sent as `application/json`.",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

responses! {
    RevokeKeyResponse {
        ok {
        /// The key is revoked; the next request made with it gets 401.
        Revoked = 204,
        }
        errors {
            Unauthorized = 401: "Missing or invalid API key.",
            NotFound = 404: "No live key with that id in this tenant (`api_key_not_found`).",
            Unavailable = 503: "The database is unavailable.",
        }
        throttled { RateLimited: "The API key sent more requests than its per-minute limit (`rate_limited`); retry after `Retry-After` seconds." }
    }
}

pub struct KeysApi;

#[OpenApi(tag = "ApiTags::ApiKeys")]
impl KeysApi {
    /// List API keys
    ///
    /// Returns the tenant's API keys that are not revoked. Secrets are never returned after creation.
    #[oai(path = "/api-keys", method = "get", operation_id = "listApiKeys")]
    async fn list(&self, app: Data<&Arc<App>>, auth: ApiKeyAuth) -> ListKeysResponse {
        match app.engine.list_keys(&auth.0.tenant).await {
            Ok(keys) => ListKeysResponse::Ok(Json(ApiKeyList {
                keys: keys.into_iter().map(ApiKeyInfo::from).collect(),
            })),
            Err(e) => e.into(),
        }
    }

    /// Create API key
    ///
    /// Creates a key for the tenant. `expires_in_days` is optional; without it the key does not expire.
    #[oai(path = "/api-keys", method = "post", operation_id = "createApiKey")]
    async fn create(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        body: JsonBody<CreateKeyRequest>,
    ) -> CreateKeyResponse {
        let body = body.0;
        match app
            .engine
            .create_key(&auth.0.tenant.slug, &body.name, body.expires_in_days)
            .await
        {
            Ok(new) => CreateKeyResponse::Created(Json(new.into())),
            Err(e) => e.into(),
        }
    }

    /// Revoke API key
    ///
    /// Immediately invalidates the key. Returns 204 No Content on success.
    #[oai(
        path = "/api-keys/:id",
        method = "delete",
        operation_id = "revokeApiKey"
    )]
    async fn revoke(
        &self,
        app: Data<&Arc<App>>,
        auth: ApiKeyAuth,
        /// The key's id.
        id: Path<String>,
    ) -> RevokeKeyResponse {
        match app.engine.revoke_key(&auth.0.tenant, &id.0).await {
            Ok(()) => RevokeKeyResponse::Revoked,
            Err(e) => e.into(),
        }
    }
}

document_example!(ApiKeyList, "listApiKeys.json", "response");

document_example!(CreateKeyRequest, "createApiKey.json", "request");

document_example!(CreatedKey, "createApiKey.json", "response");
