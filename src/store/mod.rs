//! Storage on SurrealDB: tenants, API keys, runs, agent counters and usage.
//!
//! The only module that speaks SurrealQL. One `Surreal<Any>` handle; the URL picks the engine
//! (`surrealkv://` embedded on disk, `mem://`, `ws://` for a SurrealDB server).

mod keys;
mod migrations;
mod runs;
mod tenants;
mod usage;

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use surrealdb::Surreal;
use surrealdb::engine::any::Any;

use crate::config::DatabaseSettings;

pub use keys::{ApiKey, KeyAuth, NewKey, generate_secret, hash_secret, key_prefix};
pub use runs::{AgentState, ChatRecord, Reservation, RunRecord, RunStatus};
pub use tenants::{Tenant, TenantPatch};
pub use usage::{DayUsage, Period, Usage};

/// What can go wrong in storage, as the API needs to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (connection refused, lost, timed out).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A transaction lost a write race to another one; running it again may succeed.
    #[error("transaction conflict: {0}")]
    Conflict(String),
    /// Anything else: a bug or a corrupt record. Logged, answered opaquely.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How long one database call may take before the request gives up with `unavailable`.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn classify(e: surrealdb::Error) -> StoreError {
    if e.is_connection() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(anyhow::Error::new(e))
    }
}

/// The handle every part of `ares` stores through.
#[derive(Clone)]
pub struct Store {
    db: Surreal<Any>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Connects, signs in when credentials are set, selects namespace and database, and
    /// applies pending migrations.
    #[tracing::instrument(skip(settings), fields(url = %redact_url(&settings.url)))]
    pub async fn connect(settings: &DatabaseSettings) -> Result<Store> {
        let db = surrealdb::engine::any::connect(settings.url.as_str())
            .await
            .map_err(classify)?;
        if let (Some(user), Some(pass)) = (&settings.user, &settings.password) {
            db.signin(surrealdb::opt::auth::Root {
                username: user.clone(),
                password: pass.expose().to_string(),
            })
            .await
            .map_err(classify)?;
        }
        db.use_ns(settings.namespace.as_str())
            .use_db(settings.database.as_str())
            .await
            .map_err(classify)?;
        let store = Store { db };
        migrations::apply(&store).await?;
        Ok(store)
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.db.query("RETURN 1")).await,
            Ok(Ok(_))
        )
    }

    /// Runs a query with bound variables and returns every statement's rows as JSON.
    async fn run(&self, sql: &str, vars: Value) -> Result<Vec<Vec<Value>>> {
        let call = async {
            let mut response = self.db.query(sql).bind(vars).await.map_err(classify)?;
            let n = response.num_statements();
            let mut out = Vec::with_capacity(n);
            let mut errors = Vec::new();
            for i in 0..n {
                match response.take::<surrealdb::types::Value>(i) {
                    Ok(v) => out.push(match v.into_json_value() {
                        Value::Array(rows) => rows,
                        Value::Null => Vec::new(),
                        one => vec![one],
                    }),
                    Err(e) => errors.push(e),
                }
            }
            if errors.is_empty() {
                return Ok(out);
            }
            // In a failed transaction every statement reports "not executed"; the cause is
            // on the statement (or the COMMIT) that failed.
            if let Some(e) = errors.iter().find(|e| {
                matches!(
                    e.query_details(),
                    Some(surrealdb::types::QueryError::TransactionConflict)
                )
            }) {
                return Err(StoreError::Conflict(e.to_string()));
            }
            let cause = errors
                .iter()
                .position(|e| {
                    !matches!(
                        e.query_details(),
                        Some(surrealdb::types::QueryError::NotExecuted)
                    )
                })
                .unwrap_or(0);
            Err(classify(errors.swap_remove(cause)))
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {} s",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The rows of statement `index`, decoded.
    async fn rows<T: DeserializeOwned>(
        &self,
        sql: &str,
        vars: Value,
        index: usize,
    ) -> Result<Vec<T>> {
        let mut all = self.run(sql, vars).await?;
        if index >= all.len() {
            return Ok(Vec::new());
        }
        all.swap_remove(index)
            .into_iter()
            .map(|row| {
                serde_json::from_value(row)
                    .map_err(|e| StoreError::Internal(anyhow::anyhow!("decoding a row: {e}")))
            })
            .collect()
    }
}

/// Decodes the array that a query's last statement returned (a `RETURN $list.map(...)`),
/// naming `what` in the error.
fn decode_returned<T: DeserializeOwned>(out: Vec<Vec<Value>>, what: &str) -> Result<Vec<T>> {
    let rows = out.into_iter().last().unwrap_or_default();
    let rows = match rows.as_slice() {
        [Value::Array(inner)] => inner.clone(),
        _ => rows,
    };
    rows.into_iter()
        .map(|r| {
            serde_json::from_value(r)
                .map_err(|e| StoreError::Internal(anyhow::anyhow!("decoding {what}: {e}")))
        })
        .collect()
}

/// What every API key secret starts with.
pub fn keys_prefix() -> &'static str {
    keys::SECRET_PREFIX
}

/// A database URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}
