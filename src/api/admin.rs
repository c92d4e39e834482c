//! `/admin/v1`: the platform operator's API for tenants, guarded by `ARES_ADMIN_TOKEN`.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};

use super::App;
use super::auth::AdminAuth;
use super::error::responses;
use super::keys::{CreateKeyRequest, CreatedKey};
use super::wire::{JsonBody, Timestamp};
use crate::engine::{NewTenant, Tenant, TenantPatch};

#[derive(Tags)]
pub enum AdminTags {
    /// Tenants and their quotas.
    Tenants,
}

/// A tenant.
#[derive(Debug, Clone, Object)]
pub struct TenantInfo {
    /// Unique identifier, also the name of the tenant's folder in agents.d.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Runs allowed per billing period.
    pub quota_runs: u64,
    /// Tokens allowed per billing period.
    pub quota_tokens: u64,
    /// Requests per minute allowed to each of the tenant's API keys (0: no limit); `null`
    /// takes the deployment's default.
    #[oai(nullable)]
    pub rate_limit_per_minute: Option<u64>,
    /// When the tenant was created.
    pub created_at: Timestamp,
}

impl From<Tenant> for TenantInfo {
    fn from(t: Tenant) -> Self {
        TenantInfo {
            slug: t.slug,
            name: t.name,
            quota_runs: t.quota_runs,
            quota_tokens: t.quota_tokens,
            rate_limit_per_minute: t.rate_limit,
            created_at: t.created_at.into(),
        }
    }
}

/// A tenant to create.
#[derive(Debug, Clone, Object, serde::Deserialize)]
pub struct CreateTenantRequest {
    /// 1-64 lowercase letters, digits and `-`, starting and ending with a letter or digit.
    pub slug: String,
    /// Display name; the slug when omitted.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    pub name: Option<String>,
    /// Runs per billing period; the deployment's default when omitted.
    #[oai(nullable)]
    pub quota_runs: Option<u64>,
    /// Tokens per billing period; the deployment's default when omitted.
    #[oai(nullable)]
    pub quota_tokens: Option<u64>,
    /// Requests per minute per API key (0: no limit); the deployment's default when omitted.
    #[oai(nullable)]
    pub rate_limit_per_minute: Option<u64>,
}

/// The new tenant and its first API key.
#[derive(Debug, Clone, Object)]
pub struct CreatedTenant {
    pub tenant: TenantInfo,
    /// The first key; its secret is shown only here.
    pub api_key: CreatedKey,
}

/// Changes to a tenant; omitted fields stay as they are.
#[derive(Debug, Clone, Object, serde::Deserialize)]
pub struct UpdateTenantRequest {
    /// New display name.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    pub name: Option<String>,
    /// New runs per billing period.
    #[oai(nullable)]
    pub quota_runs: Option<u64>,
    /// New tokens per billing period.
    #[oai(nullable)]
    pub quota_tokens: Option<u64>,
    /// New requests per minute per API key (0: no limit).
    #[oai(nullable)]
    pub rate_limit_per_minute: Option<u64>,
}

/// All tenants.
#[derive(Debug, Clone, Object)]
pub struct TenantList {
    /// Every tenant, by slug.
    pub tenants: Vec<TenantInfo>,
}

responses! {
    CreateTenantResponse {
        ok {
        /// The tenant and its first key.
        Created(Json<CreatedTenant>) = 201,
        }
        errors {
            BadRequest = 400: "The body is not JSON of the right shape.",
            Unauthorized = 401: "Missing or wrong admin token.",
            TooLarge = 413: "The body is larger than the configured limit.",
            UnsupportedMediaType = 415: "The body is not sent as `application/json`.",
            Conflict = 409: "A tenant with this slug exists.",
            Invalid = 422: "The slug or a value is not acceptable.",
            Unavailable = 503: "The database is unavailable.",
        }
    }
}

responses! {
    ListTenantsResponse {
        ok {
        /// Every tenant, by slug.
        Ok(Json<TenantList>) = 200,
        }
        errors {
            Unauthorized = 401: "Missing or wrong admin token.",
            Unavailable = 503: "The database is unavailable.",
        }
    }
}

responses! {
    UpdateTenantResponse {
        ok {
        /// The updated tenant.
        Ok(Json<TenantInfo>) = 200,
        }
        errors {
            BadRequest = 400: "The body is not JSON of the right shape.",
            Unauthorized = 401: "Missing or wrong admin token.",
            TooLarge = 413: "The body is larger than the configured limit.",
            UnsupportedMediaType = 415: "The body is not sent as `application/json`.",
            NotFound = 404: "No tenant with this slug (`tenant_not_found`).",
            Unavailable = 503: "The database is unavailable.",
        }
    }
}

responses! {
    IssueKeyResponse {
        ok {
        /// The key was created; its secret is shown only here.
        Created(Json<CreatedKey>) = 201,
        }
        errors {
            BadRequest = 400: "The body is not JSON of the right shape, or a value is out of range; the message names the field.",
            Unauthorized = 401: "Missing or wrong admin token.",
            NotFound = 404: "No tenant with this slug (`tenant_not_found`).",
            Conflict = 409: "The tenant holds as many live keys as it may (`key_limit_reached`); revoke one first.",
            TooLarge = 413: "The body is larger than the configured limit.",
            UnsupportedMediaType = 415: "The body is not sent as `application/json`.",
            Unavailable = 503: "The database is unavailable.",
        }
    }
}

pub struct AdminApi;

#[OpenApi(tag = "AdminTags::Tenants")]
impl AdminApi {
    /// Create a tenant
    ///
    /// Creates a tenant and its first API key. The key's secret is returned only here.
    #[oai(path = "/tenants", method = "post", operation_id = "createTenant")]
    async fn create(
        &self,
        app: Data<&Arc<App>>,
        _auth: AdminAuth,
        body: JsonBody<CreateTenantRequest>,
    ) -> CreateTenantResponse {
        let b = body.0;
        let new = NewTenant {
            slug: b.slug,
            name: b.name,
            quota_runs: b.quota_runs,
            quota_tokens: b.quota_tokens,
            rate_limit: b.rate_limit_per_minute,
        };
        match app.engine.provision_tenant(new).await {
            Ok((tenant, key)) => CreateTenantResponse::Created(Json(CreatedTenant {
                tenant: tenant.into(),
                api_key: key.into(),
            })),
            Err(e) => e.into(),
        }
    }

    /// List tenants
    ///
    /// Every tenant of the deployment with its quotas, ordered by slug.
    #[oai(path = "/tenants", method = "get", operation_id = "listTenants")]
    async fn list(&self, app: Data<&Arc<App>>, _auth: AdminAuth) -> ListTenantsResponse {
        match app.engine.list_tenants().await {
            Ok(t) => ListTenantsResponse::Ok(Json(TenantList {
                tenants: t.into_iter().map(TenantInfo::from).collect(),
            })),
            Err(e) => e.into(),
        }
    }

    /// Update a tenant
    ///
    /// Changes a tenant's name or quotas; new quotas apply to the next request.
    #[oai(
        path = "/tenants/:slug",
        method = "patch",
        operation_id = "updateTenant"
    )]
    async fn update(
        &self,
        app: Data<&Arc<App>>,
        _auth: AdminAuth,
        /// The tenant's slug.
        slug: Path<String>,
        body: JsonBody<UpdateTenantRequest>,
    ) -> UpdateTenantResponse {
        let patch = TenantPatch {
            name: body.0.name,
            quota_runs: body.0.quota_runs,
            quota_tokens: body.0.quota_tokens,
            rate_limit: body.0.rate_limit_per_minute,
        };
        match app.engine.update_tenant(&slug.0, &patch).await {
            Ok(t) => UpdateTenantResponse::Ok(Json(t.into())),
            Err(e) => e.into(),
        }
    }

    /// Issue an API key for a tenant
    ///
    /// Creates a key for an existing tenant, as `POST /v1/api-keys` does for the tenant
    /// itself: for a tenant that revoked or lost its last key. The secret is returned only here.
    #[oai(
        path = "/tenants/:slug/api-keys",
        method = "post",
        operation_id = "issueTenantApiKey"
    )]
    async fn issue_key(
        &self,
        app: Data<&Arc<App>>,
        _auth: AdminAuth,
        /// The tenant's slug.
        slug: Path<String>,
        body: JsonBody<CreateKeyRequest>,
    ) -> IssueKeyResponse {
        let body = body.0;
        match app
            .engine
            .create_key(&slug.0, &body.name, body.expires_in_days)
            .await
        {
            Ok(key) => {
                tracing::info!(tenant = %slug.0, key = %key.key.id, "API key issued by the operator");
                IssueKeyResponse::Created(Json(key.into()))
            }
            Err(e) => e.into(),
        }
    }
}
