//! Storage on SurrealDB: tenants, API keys, runs, agent counters and usage.
//!
//! The only module that speaks SurrealQL. One `Surreal<Any>` handle; the URL picks the engine
//! (`surrealkv://` embedded on disk, `mem://`, `ws://` for a SurrealDB server).

mod check;
mod close;
mod idempotency;
mod instances;
mod keys;
mod ledger;
pub use ledger::{LedgerFigures, Settled};
mod lifecycle;
mod migrations;
/// The schema, for tools that time statements against it (`bench/statements.rs`).
pub use migrations::MIGRATIONS;
mod records;
mod retention;
mod runs;
mod tenants;
#[cfg(test)]
mod testing;
mod usage;
mod versions;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{ConstantBuilder, ExponentialBuilder, Retryable};
use serde::de::DeserializeOwned;
use serde_json::Value;
use surrealdb::Surreal;
use surrealdb::engine::any::Any;

use crate::config::DatabaseSettings;

pub use check::{CheckReport, Violation};
pub use close::{CloseNotice, begin_close, wait_closed};
pub use idempotency::Claim;
pub use instances::{INTERRUPTED, OVERDUE, Reaped};
pub use keys::{
    ApiKey, ChangeSet, KeyAuth, KeyChanges, KeyCreation, NewKey, generate_secret, hash_secret,
    key_prefix,
};
pub use lifecycle::{CancelRequest, RunInFlight};
pub use records::{AgentState, ChatRecord, Reservation, RunRecord, RunStatus, Step, StepKind};
pub use retention::Purged;
pub use tenants::{Tenant, TenantPatch};
pub use usage::{DayUsage, Period, Usage};
pub use versions::{AgentVersion, Recorded};
pub use webhooks::{Attempt, Delivery, DeliveryState, EventType, Webhook};

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

/// How often a store that lost its database checks whether it is back.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Attempts at a statement that lost a write race to another transaction, after the first.
const CONFLICT_RETRIES: usize = 50;

/// Variables bound as SurrealDB's own values (record ids, datetimes) rather than as JSON: a
/// statement can store such rows as they are, where JSON rows need an expression per field to
/// make their ids and datetimes, and each expression costs SurrealDB more than the write.
type Native = surrealdb::types::Object;

fn classify(e: surrealdb::Error) -> StoreError {
    if e.is_connection() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(anyhow::Error::new(e))
    }
}

/// Stack of each thread that runs database calls. SurrealDB's query execution nests deep
/// futures (far deeper in a debug build than in release): 2 MiB, tokio's default, is not
/// always enough. Only the pages touched are backed by memory.
pub const THREAD_STACK_SIZE: usize = 8 << 20;

/// Whether the URL names a database server rather than an engine inside this process.
fn is_remote(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or_default();
    matches!(scheme, "ws" | "wss" | "http" | "https")
}

/// The runtime an embedded engine's own tasks run on, for the life of the process.
///
/// The embedded engines start long-lived tasks on the runtime that opens them: SurrealDB's
/// session registry and maintenance, and surrealkv's memtable flushes and level compactions,
/// which run synchronously inside their tasks and hold the thread for as long as they write.
/// On a runtime of their own they cannot stall the request threads, and they outlive the
/// runtime that opened the store. Queries still run on the caller's task.
fn background_runtime() -> Result<&'static tokio::runtime::Handle> {
    own_runtime(&BACKGROUND, "ares-store", 1)
}

/// The runtime the ledger's workers run on (see `ledger`): threads of their own, one per core
/// up to one per lane, that the system shares with the request threads, so that a batch
/// waiting to be written never waits behind the requests queued on a request thread, and a
/// commit's answer wakes it at once. Not the engine's runtime, whose flushes and compactions
/// hold their thread.
fn ledger_runtime() -> Result<&'static tokio::runtime::Handle> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    own_runtime(&LEDGER, "ares-ledger", threads.min(ledger::LANES))
}

/// A runtime of `threads` threads kept in `cell` for the life of the process. A static is
/// never dropped: a runtime must not be dropped inside async code.
fn own_runtime(
    cell: &'static RuntimeCell,
    name: &'static str,
    threads: usize,
) -> Result<&'static tokio::runtime::Handle> {
    match cell.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .thread_stack_size(THREAD_STACK_SIZE)
            .enable_all()
            .build()
    }) {
        Ok(rt) => Ok(rt.handle()),
        Err(e) => Err(StoreError::Internal(anyhow::anyhow!(
            "starting the runtime {name}: {e}"
        ))),
    }
}

type RuntimeCell = std::sync::OnceLock<std::io::Result<tokio::runtime::Runtime>>;

/// How an embedded engine is opened: as by default, but without live-query notifications,
/// which `ares` never subscribes to and which would cost every writing statement a task that
/// forwards its (absent) notifications.
fn embedded_config() -> surrealdb::opt::Config {
    surrealdb::opt::Config::new().capabilities(
        surrealdb::opt::capabilities::Capabilities::new().with_live_query_notifications(false),
    )
}

/// The store's runtime, once an embedded engine was opened.
static BACKGROUND: RuntimeCell = RuntimeCell::new();
/// The ledger's runtime, once a store with a ledger was connected.
static LEDGER: RuntimeCell = RuntimeCell::new();

/// The handle every part of `ares` stores through.
#[derive(Clone)]
pub struct Store {
    db: Surreal<Any>,
    /// This process's id among the instances sharing the database (recorded on its runs).
    instance: Arc<str>,
    /// How long one database call may take before it counts as `unavailable`.
    timeout: Duration,
    health: Arc<Health>,
    /// The group-commit writer of chats and runs (`None` on the writer's own handle).
    ledger: Option<Arc<ledger::Ledger>>,
    /// Counter rows this process has seen committed, which its writes update instead of
    /// upserting (shared by every handle of the store).
    counters: Arc<ledger::KnownRows>,
}

/// Whether the database answers. Once a call finds it unreachable, calls fail at once (503)
/// instead of each waiting for the timeout, while one probe checks for its return.
#[derive(Default)]
struct Health {
    down: AtomicBool,
    probing: AtomicBool,
    /// A check started by a slow call is running.
    checking: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Connects, signs in when credentials are set (in the settings or the URL's
    /// `user:pass@`), selects namespace and database, and applies pending migrations.
    #[tracing::instrument(skip(settings), fields(url = %redact_url(&settings.url)))]
    pub async fn connect(settings: &DatabaseSettings) -> Result<Store> {
        let mut store = Store::open(settings).await?;
        migrations::apply(&store).await?;
        store.ledger = Some(ledger::Ledger::start(&store, ledger_runtime()?));
        Ok(store)
    }

    /// Connects as [`Store::connect`] does, for reading alone: no migration is applied (a
    /// table a pending migration would define reads as empty) and nothing is written.
    pub async fn connect_read_only(settings: &DatabaseSettings) -> Result<Store> {
        Store::open(settings).await
    }

    async fn open(settings: &DatabaseSettings) -> Result<Store> {
        let (url, from_url) = split_credentials(&settings.url);
        let db = if is_remote(&url) {
            surrealdb::engine::any::connect(url.as_str())
                .await
                .map_err(classify)?
        } else {
            // Opened on the store's own runtime: the tasks the engine starts there (flushes,
            // compactions) then never hold a request thread.
            let handle = background_runtime()?;
            handle
                .spawn(
                    async move { surrealdb::engine::any::connect((url, embedded_config())).await },
                )
                .await
                .map_err(|e| StoreError::Internal(anyhow::anyhow!("opening the store: {e}")))?
                .map_err(classify)?
        };
        let credentials = match (&settings.user, &settings.password) {
            (Some(user), Some(pass)) => Some((user.clone(), pass.expose().to_string())),
            _ => from_url,
        };
        if let Some((username, password)) = credentials {
            db.signin(surrealdb::opt::auth::Root { username, password })
                .await
                .map_err(classify)?;
        }
        db.use_ns(settings.namespace.as_str())
            .use_db(settings.database.as_str())
            .await
            .map_err(classify)?;
        Ok(Store {
            db,
            instance: uuid::Uuid::now_v7().to_string().into(),
            timeout: settings.timeout.0,
            health: Arc::default(),
            ledger: None,
            counters: Arc::default(),
        })
    }

    /// Whether the database answers a trivial query now. `false` at once while the store
    /// knows it is unreachable.
    pub async fn ping(&self) -> bool {
        !self.health.down.load(Ordering::Relaxed) && Self::answers(&self.db).await
    }

    async fn answers(db: &Surreal<Any>) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(2), db.query("RETURN 1")).await,
            Ok(Ok(_))
        )
    }

    /// Whether the store currently takes the database to be reachable (no query is made).
    pub fn is_up(&self) -> bool {
        !self.health.down.load(Ordering::Relaxed)
    }

    /// What the group-commit writer committed so far (zeros on a handle without one).
    pub fn ledger_figures(&self) -> LedgerFigures {
        self.ledger
            .as_ref()
            .map_or_else(LedgerFigures::default, |l| l.figures())
    }

    /// Notes that the database is unreachable and starts the probe that notes its return.
    fn mark_down(&self) {
        if !self.health.down.swap(true, Ordering::SeqCst) {
            tracing::error!("database unreachable; answering 503 until it is back");
        }
        if self.health.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (db, health) = (self.db.clone(), Arc::clone(&self.health));
        let every = ConstantBuilder::default()
            .with_delay(PROBE_EVERY)
            .without_max_times();
        tokio::spawn(async move {
            tokio::time::sleep(PROBE_EVERY).await;
            let back = || async {
                if Self::answers(&db).await {
                    Ok(())
                } else {
                    Err(())
                }
            };
            let _ = back.retry(every).sleep(tokio::time::sleep).await;
            health.down.store(false, Ordering::SeqCst);
            health.probing.store(false, Ordering::SeqCst);
            tracing::info!("database reachable again");
        });
    }

    /// Runs a query with bound variables and returns every statement's rows as JSON.
    async fn run(&self, sql: &str, vars: Value) -> Result<Vec<Vec<Value>>> {
        self.run_native(sql, vars, Native::new()).await
    }

    /// [`Store::run`] with `native` bound beside `vars`.
    async fn run_native(&self, sql: &str, vars: Value, native: Native) -> Result<Vec<Vec<Value>>> {
        if self.health.down.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(
                "the database is unreachable; waiting for it to return".into(),
            ));
        }
        let call = async {
            let mut response = self
                .db
                .query(sql)
                .bind(vars)
                .bind(native)
                .await
                .map_err(classify)?;
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
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => {
                if matches!(result, Err(StoreError::Unavailable(_))) {
                    self.mark_down();
                }
                result
            }
            // A call that is merely slow (a large page) fails alone; the database counts as
            // down only when it does not answer a trivial query either.
            Err(_) => {
                self.check_reachable();
                Err(StoreError::Unavailable(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                )))
            }
        }
    }

    /// Checks in the background whether the database answers a trivial query, and marks it
    /// down when it does not (one check at a time).
    fn check_reachable(&self) {
        if self.health.down.load(Ordering::Relaxed)
            || self.health.checking.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            if !Self::answers(&store.db).await {
                store.mark_down();
            }
            store.health.checking.store(false, Ordering::SeqCst);
        });
    }

    /// Runs `sql` again while it loses write races (optimistic transactions), after short
    /// jittered pauses that grow with each attempt.
    async fn run_retrying(&self, sql: &str, vars: Value) -> Result<Vec<Vec<Value>>> {
        self.run_retrying_native(sql, vars, Native::new()).await
    }

    /// [`Store::run_retrying`] with `native` bound beside `vars`.
    async fn run_retrying_native(
        &self,
        sql: &str,
        vars: Value,
        native: Native,
    ) -> Result<Vec<Vec<Value>>> {
        let pauses = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(1))
            .with_factor(1.5)
            .with_max_delay(Duration::from_millis(50))
            .with_jitter()
            .with_max_times(CONFLICT_RETRIES);
        (|| self.run_native(sql, vars.clone(), native.clone()))
            .retry(pauses)
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, StoreError::Conflict(_)))
            .await
    }

    /// `read` (SurrealQL after a record: `.cancel`, `.{date, runs}`) of each record of `ids`,
    /// in their order; a record that is not there reads as null. One statement names each
    /// record (`$r0`, `$r1`, …, bound natively): a closure mapped over a list of ids costs
    /// SurrealDB's evaluator several times as much (`bench_statements … "days of usage"`).
    async fn read_each(
        &self,
        ids: impl IntoIterator<Item = surrealdb::types::RecordId>,
        read: &str,
    ) -> Result<Vec<Value>> {
        let mut native = Native::new();
        let mut reads = Vec::new();
        for (i, id) in ids.into_iter().enumerate() {
            native.insert(format!("r{i}"), id);
            reads.push(format!("$r{i}{read}"));
        }
        if reads.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("RETURN [{}];", reads.join(", "));
        let out = self.run_native(&sql, serde_json::json!({}), native).await?;
        Ok(returned(out))
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

/// The array that a query's last statement returned, as rows.
fn returned(out: Vec<Vec<Value>>) -> Vec<Value> {
    let mut rows = out.into_iter().last().unwrap_or_default();
    match rows.as_mut_slice() {
        [Value::Array(inner)] => std::mem::take(inner),
        _ => rows,
    }
}

/// Rows decoded as `T`, naming `what` in the error.
fn decode_rows<T: DeserializeOwned>(rows: Vec<Value>, what: &str) -> Result<Vec<T>> {
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

/// `text` parsed as a URL, and kept when it carries credentials (`user:pass@`).
fn with_credentials(text: &str) -> Result<Option<url::Url>, url::ParseError> {
    let url = url::Url::parse(text)?;
    Ok((!url.username().is_empty() || url.password().is_some()).then_some(url))
}

/// `url` with `user` (empty for none) and no password, written as `text` was: the parser
/// gives a server URL written without a path the root path `/`.
fn replace_credentials(mut url: url::Url, user: &str, text: &str) -> String {
    // Only URLs without a host refuse credentials, and those never carried any.
    let _ = url.set_password(None);
    let _ = url.set_username(user);
    let mut out = String::from(url);
    if out.ends_with('/') && !text.ends_with('/') {
        out.pop();
    }
    out
}

/// A URL without its `user:pass@` part, and those credentials (percent-decoded) when present.
/// Any other text, such as an embedded engine's `surrealkv://data` or `memory`, comes back as
/// it is.
fn split_credentials(text: &str) -> (String, Option<(String, String)>) {
    let Ok(Some(url)) = with_credentials(text) else {
        return (text.to_string(), None);
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = (
        decode(url.username()),
        decode(url.password().unwrap_or_default()),
    );
    (replace_credentials(url, "", text), Some(credentials))
}

/// A database URL without its password, for logs.
pub fn redact_url(text: &str) -> String {
    match with_credentials(text) {
        Ok(Some(url)) => replace_credentials(url, "***", text),
        // Not a URL, so never connected to; it may still hold a password.
        Err(_) if text.contains('@') => "(an unparsable URL)".to_string(),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_url() {
        assert_eq!(
            split_credentials("ws://ares:p%40ss@127.0.0.1:8000"),
            (
                "ws://127.0.0.1:8000".to_string(),
                Some(("ares".to_string(), "p@ss".to_string()))
            )
        );
        assert_eq!(
            split_credentials("ws://127.0.0.1:8000/rpc"),
            ("ws://127.0.0.1:8000/rpc".to_string(), None)
        );
        assert_eq!(
            split_credentials("surrealkv://data"),
            ("surrealkv://data".to_string(), None)
        );
        assert_eq!(redact_url("ws://ares:secret@h:1"), "ws://***@h:1");
    }

    #[test]
    fn encoded_credentials_and_paths_survive() {
        assert_eq!(
            split_credentials("ws://ares:p%40s%3As%2Fw@db:8000"),
            (
                "ws://db:8000".to_string(),
                Some(("ares".to_string(), "p@s:s/w".to_string()))
            )
        );
        assert_eq!(
            split_credentials("wss://r%C3%A9mi:x@db.example.com/rpc"),
            (
                "wss://db.example.com/rpc".to_string(),
                Some(("rémi".to_string(), "x".to_string()))
            )
        );
        assert_eq!(
            split_credentials("ws://ares@db:8000/"),
            (
                "ws://db:8000/".to_string(),
                Some(("ares".to_string(), String::new()))
            )
        );
        assert_eq!(
            redact_url("wss://ares:p%40s%3As%2Fw@db.example.com/rpc"),
            "wss://***@db.example.com/rpc"
        );
        // An `@` after the host is not a credential.
        assert_eq!(redact_url("ws://db:8000/a@b"), "ws://db:8000/a@b");
        assert_eq!(redact_url("ws://ares:pw@[db"), "(an unparsable URL)");
    }

    #[test]
    fn embedded_urls_come_out_as_written() {
        for url in [
            "surrealkv://data",
            "surrealkv:///var/lib/ares",
            "surrealkv://./data/ares",
            "mem://",
            "memory",
        ] {
            assert_eq!(split_credentials(url), (url.to_string(), None));
            assert_eq!(redact_url(url), url);
        }
    }

    /// A call slower than the timeout fails alone: the database still answers, so it is not
    /// marked down and the next call goes through.
    #[tokio::test]
    async fn a_slow_call_does_not_mark_the_database_down() {
        let settings = DatabaseSettings {
            url: "mem://".into(),
            ..Default::default()
        };
        // Opened (migrations applied) with the default timeout, however loaded the machine;
        // then calls get 100 ms.
        let mut store = Store::connect(&settings).await.unwrap();
        store.timeout = Duration::from_millis(100);
        let slow = store
            .run("SLEEP 400ms; RETURN 1;", serde_json::json!({}))
            .await;
        assert!(matches!(slow, Err(StoreError::Unavailable(_))), "{slow:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(store.is_up(), "a slow call marked the database down");
        assert!(store.tenants().await.is_ok());
    }

    #[test]
    fn only_server_urls_are_remote() {
        for url in ["ws://h:8000", "wss://h/rpc", "http://h:8000", "https://h"] {
            assert!(is_remote(url), "{url}");
        }
        for url in [
            "surrealkv://data",
            "mem://",
            "memory",
            "surrealkv:///var/lib/ares",
        ] {
            assert!(!is_remote(url), "{url}");
        }
    }

    /// The embedded engine's own tasks live on the store's runtime, not on the runtime that
    /// opened it: the store keeps working after that runtime is gone. (A clone of the handle
    /// registers its session with one of those tasks; opened on the caller's runtime, the
    /// clone's first call fails once that runtime has ended.)
    #[test]
    fn an_embedded_store_outlives_the_runtime_that_opened_it() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let settings = DatabaseSettings {
            url: format!("surrealkv://{}", dir.path().join("db").display()),
            ..Default::default()
        };
        let opener = runtime();
        let store = opener.block_on(Store::connect(&settings)).unwrap();
        drop(opener);
        runtime().block_on(async {
            let store = store.clone();
            let call = async {
                store
                    .create_tenant("later", "Later", 10, 1000, None, "initial")
                    .await
                    .unwrap();
                store.tenants().await.unwrap()
            };
            let tenants = tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .expect("the store answers");
            assert!(tenants.iter().any(|t| t.slug == "later"));
        });
    }
}
