//! The command line: parses arguments and runs the matching command of the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Settings;
use crate::diag::Diagnostic;
use crate::engine::{TestMode, TestOptions, agent_schema, tests_schema, validate_agents};

/// Writes to standard output; a reader that went away (`ares openapi | head`) ends the
/// output, not the command (which then finishes as it would have).
fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write as _;
    if let Err(e) = std::io::stdout().lock().write_fmt(args)
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: writing to standard output: {e}");
    }
}

/// `print!` through [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => { write_stdout(format_args!($($arg)*)) };
}

/// `println!` through [`write_stdout`].
macro_rules! outln {
    () => { write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

#[derive(Debug, Parser)]
#[command(
    name = "ares",
    version,
    about = "Serve AI agents declared as configuration through the ARES V1 Client API"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Server settings file.
    #[arg(
        long,
        global = true,
        env = "ARES_CONFIG",
        default_value = "ares.yaml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// Agents folder (overrides `agents_dir` of the settings).
    #[arg(long, global = true, env = "ARES_AGENTS_DIR", value_name = "DIR")]
    pub agents: Option<PathBuf>,
    /// Database URL (overrides `database.url` of the settings).
    #[arg(long, global = true, env = "ARES_DATABASE_URL", value_name = "URL")]
    pub database: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the V1 API (and the admin API when ARES_ADMIN_TOKEN is set).
    Serve(ServeArgs),
    /// Check every agent file, tests file (and the settings) and report every error.
    Validate(ValidateArgs),
    /// Run the agents' tests (`<agent>.tests.yaml`) through the engine on an in-memory
    /// database; exit 1 when a case fails.
    Test(TestArgs),
    /// Print the OpenAPI spec of the V1 API (committed as openapi/v1.yaml).
    Openapi(OpenapiArgs),
    /// Provision and list tenants (directly on the database).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Print the JSON Schema of agent files (committed as contracts/agent.schema.json), or with
    /// --tests of tests files (contracts/agent-tests.schema.json).
    Schema(SchemaArgs),
    /// Verify the database's invariants (usage equals the stored runs, no run left running by
    /// a stopped instance, counters match); exit 1 and list every violation when one fails.
    Check(CheckArgs),
    /// Print the version of an agent file: the hash that runs and `GET /v1/agents` carry.
    Version(VersionArgs),
    /// Check a live deployment's V1 API against the contract (spec, the document's examples,
    /// pagination, auth, tenant isolation, streaming, usage, declared additive features), over
    /// HTTP only; exit 0 when every check passes, 1 when one fails, 2 on a usage error or when
    /// the deployment cannot be reached.
    Conformance(ConformanceArgs),
    /// Show what serving an agents folder would change, per tenant, against the versions the
    /// database served last; exit 0 when nothing changes, 2 when something does, 1 on error.
    Plan(PlanArgs),
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Agent file (`<agents dir>/<tenant>/<agent>.yaml`).
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Agents folder to compare [default: the settings' agents_dir, `agents.d`].
    pub dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ConformanceArgs {
    /// The deployment's base URL (without `/v1`), e.g. https://staging.example.com.
    #[arg(long, value_name = "URL", env = "ARES_CONFORMANCE_BASE_URL")]
    pub base_url: String,
    /// An API key of the tenant to check (tenant A). Never printed.
    #[arg(
        long,
        value_name = "KEY",
        env = "ARES_CONFORMANCE_KEY",
        hide_env_values = true
    )]
    pub key: String,
    /// A key of another tenant (B): enables the tenant-isolation checks and the destructive ones.
    #[arg(
        long,
        value_name = "KEY",
        env = "ARES_CONFORMANCE_KEY_B",
        hide_env_values = true
    )]
    pub key_b: Option<String>,
    /// The deployment's admin token; only masked should an answer ever show it.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ARES_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// The agent to run [default: `risk-analyzer` if listed, else the tenant's first agent].
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Also write the results as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Allow creating and revoking keys without --key-b.
    #[arg(long)]
    pub destructive: bool,
    /// Timeout of one request, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides `listen` of the settings and ARES_LISTEN).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

#[derive(Debug, Args)]
pub struct OpenapiArgs {
    /// Print the admin API's spec (openapi/admin.yaml) instead.
    #[arg(long)]
    pub admin: bool,
    /// Print JSON instead of YAML.
    #[arg(long)]
    pub json: bool,
    /// Print the V1 spec's OpenAPI 3.1 edition (openapi/v1-3.1.yaml) instead of 3.0.
    #[arg(long = "openapi-3.1", conflicts_with = "admin")]
    pub v31: bool,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and its first API key; prints the key's secret once, alone on the last line.
    Create {
        /// 1-64 lowercase letters, digits and `-`; also the tenant's folder name in agents.d.
        slug: String,
        /// Display name [default: the slug].
        #[arg(long)]
        name: Option<String>,
        /// Runs per billing period [default: quotas.runs of the settings].
        #[arg(long, value_name = "N")]
        quota_runs: Option<u64>,
        /// Tokens per billing period [default: quotas.tokens of the settings].
        #[arg(long, value_name = "N")]
        quota_tokens: Option<u64>,
    },
    /// List tenants.
    List,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Agents folder to check [default: the settings' agents_dir, `agents.d`].
    pub dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// The schema of agent tests files instead.
    #[arg(long)]
    pub tests: bool,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Agents folder whose tests to run [default: the settings' agents_dir, `agents.d`].
    pub dir: Option<PathBuf>,
    /// Only the tests of agents of this name.
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Also write the results as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write every model exchange to a cassette beside each tests file (<agent>.cassette.json).
    #[arg(long, conflicts_with = "replay")]
    pub record: bool,
    /// Answer from the cassettes alone, without calling any provider; a request a cassette
    /// does not hold fails its case.
    #[arg(long)]
    pub replay: bool,
}

impl GlobalArgs {
    /// Settings from the file and environment, with this command line's overrides on top.
    pub fn settings(&self) -> Result<Settings, crate::diag::Diagnostics> {
        let explicit =
            std::env::var_os("ARES_CONFIG").is_some() || self.config != Path::new("ares.yaml");
        let mut s = Settings::load_from_env(&self.config, explicit)?;
        if let Some(dir) = &self.agents {
            s.agents_dir = dir.clone();
        }
        if let Some(url) = &self.database {
            s.database.url = url.clone();
        }
        Ok(s)
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate(args) => validate(&cli.global, &args),
        // Its output is the table: only warnings are logged unless ARES_LOG says otherwise.
        Command::Test(args) => block_on_logging("warn", test(&cli.global, args)),
        Command::Schema(args) => {
            let schema = if args.tests {
                tests_schema()
            } else {
                agent_schema()
            };
            write_out(args.out.as_deref(), &schema_text(schema))
        }
        Command::Openapi(args) => write_out(
            args.out.as_deref(),
            &openapi_edition_text(args.admin, args.json, args.v31),
        ),
        Command::Serve(args) => block_on(serve(&cli.global, args)),
        Command::Tenant(cmd) => block_on(tenant(&cli.global, cmd)),
        Command::Check(args) => block_on_code(check(&cli.global, args)),
        Command::Version(args) => version(&cli.global, &args),
        Command::Plan(args) => block_on_code(plan(&cli.global, args)),
        Command::Conformance(args) => conformance(args),
    }
}

/// `ares conformance`: 0 when every check passed, 1 when one failed, 2 when the deployment
/// could not be reached or the report not written. It speaks HTTP only, on a runtime of its own.
fn conformance(args: ConformanceArgs) -> ExitCode {
    use crate::conformance::report::redact;
    let options = crate::conformance::Options {
        base_url: args.base_url.clone(),
        key: args.key.clone(),
        key_b: args.key_b.clone(),
        admin_token: args.admin_token.clone(),
        agent: args.agent.clone(),
        destructive: args.destructive,
        timeout: std::time::Duration::from_secs(args.timeout.max(1)),
    };
    let secrets: Vec<String> = [
        Some(args.key.clone()),
        args.key_b.clone(),
        args.admin_token.clone(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let (report, secrets) = match runtime.block_on(crate::conformance::run(&options)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", redact(&e.to_string(), &secrets));
            return ExitCode::from(2);
        }
    };
    match args.format {
        Format::Text => out!("{}", redact(&report.text(), &secrets)),
        Format::Json => outln!(
            "{}",
            redact(
                &serde_json::to_string_pretty(&report).expect("a report serializes"),
                &secrets
            )
        ),
    }
    if let Some(path) = &args.junit
        && let Err(e) = std::fs::write(path, redact(&report.junit(), &secrets))
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return ExitCode::from(2);
    }
    if args.format == Format::Json {
        eprintln!("{}", report.summary());
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `ares check`: 0 when every invariant holds, 1 with the violations, 2 when it cannot check.
async fn check(global: &GlobalArgs, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let settings = settings_or_exit(global)?;
    let engine = crate::engine::Engine::open_database(settings).await;
    let database = engine.as_ref().map(|e| e.database()).unwrap_or_default();
    let report = match engine {
        Ok(engine) => engine.check().await.map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot check the database: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    match args.format {
        Format::Text => {
            for v in &report.violations {
                outln!("{v}");
            }
            eprintln!(
                "{}: {} runs, {} chats, {} tenant-days, {} periods, {} agents, {} keys checked; {} violations",
                database,
                report.runs,
                report.chats,
                report.tenant_days,
                report.periods,
                report.agents,
                report.keys,
                report.violations.len()
            );
        }
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serializes")
        ),
    }
    Ok(if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `ares version FILE`: the file's version, or its errors (exit 1).
fn version(global: &GlobalArgs, args: &VersionArgs) -> ExitCode {
    let settings = global.settings().ok();
    match crate::engine::file_version(&args.file, settings.as_ref()) {
        Ok(v) => {
            outln!("{v}");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for d in &errors.0 {
                eprintln!("{d}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `ares plan`: 0 when serving the folder changes nothing, 2 when it changes something, 1 on
/// error (the folder has errors, the database cannot be read).
async fn plan(global: &GlobalArgs, args: PlanArgs) -> anyhow::Result<ExitCode> {
    let settings = settings_or_exit(global)?;
    let dir = args.dir.unwrap_or_else(|| settings.agents_dir.clone());
    // Read-only: planning writes nothing, not even a pending migration.
    let engine = crate::engine::Engine::open_database_read_only(settings).await?;
    let plan = engine.plan(&dir).await?;
    match args.format {
        Format::Text => out!("{}", plan_text(&plan)),
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&plan).expect("a plan serializes")
        ),
    }
    eprintln!("{}", plan_summary(&plan, &engine.database()));
    Ok(if plan.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// The counts of a plan, in one line.
fn plan_summary(plan: &crate::engine::Plan, database: &str) -> String {
    let count =
        |f: fn(&crate::engine::OwnerPlan) -> usize| -> usize { plan.owners.iter().map(f).sum() };
    format!(
        "plan against {database}: {} to add, {} to change, {} to remove",
        count(|o| o.added.len()),
        count(|o| o.changed.len()),
        count(|o| o.removed.len())
    )
}

/// A plan for people: per owner, `+` added, `-` removed, `~` changed with each field.
pub fn plan_text(plan: &crate::engine::Plan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let short = |v: &serde_json::Value| {
        let text = v.to_string();
        if text.chars().count() > 120 {
            format!("{}…", text.chars().take(120).collect::<String>())
        } else {
            text
        }
    };
    for o in &plan.owners {
        let who = if o.owner == crate::engine::GLOBAL_DIR {
            "_global (every tenant)".to_string()
        } else {
            format!("tenant {}", o.owner)
        };
        let _ = writeln!(out, "{who}:");
        for a in &o.added {
            let _ = writeln!(out, "  + {} ({})", a.name, a.version);
        }
        for a in &o.removed {
            let _ = writeln!(out, "  - {} ({})", a.name, a.version);
        }
        for c in &o.changed {
            let _ = writeln!(out, "  ~ {} ({} -> {})", c.name, c.from, c.to);
            for f in &c.fields {
                match (&f.text_diff, &f.before, &f.after) {
                    (Some(diff), _, _) => {
                        let _ = writeln!(out, "      {}:", f.path);
                        for line in diff.lines() {
                            let _ = writeln!(out, "        {line}");
                        }
                    }
                    (None, Some(b), Some(a)) => {
                        let _ = writeln!(out, "      {}: {} -> {}", f.path, short(b), short(a));
                    }
                    (None, None, Some(a)) => {
                        let _ = writeln!(out, "      {}: added {}", f.path, short(a));
                    }
                    (None, Some(b), None) => {
                        let _ = writeln!(out, "      {}: removed (was {})", f.path, short(b));
                    }
                    (None, None, None) => {}
                }
            }
        }
    }
    out
}

/// `ares test`: 0 when every case passed, 1 when one failed or a file has errors.
async fn test(global: &GlobalArgs, args: TestArgs) -> anyhow::Result<ExitCode> {
    let settings = settings_or_exit(global)?;
    let dir = args.dir.clone().unwrap_or(settings.agents_dir.clone());
    let mode = match (args.record, args.replay) {
        (true, _) => TestMode::Record,
        (_, true) => TestMode::Replay,
        _ => TestMode::Live,
    };
    let options = TestOptions {
        dir: dir.clone(),
        agent: args.agent,
        mode,
    };
    let report = crate::engine::test_agents(settings, options).await?;
    if !report.errors.is_empty() {
        for d in &report.errors {
            outln!("{d}");
        }
        eprintln!(
            "{}: {} errors in the agent and tests files; no case ran",
            dir.display(),
            report.errors.len()
        );
        return Ok(ExitCode::from(1));
    }
    out!("{}", report.table());
    let failures = report.failures();
    if !failures.is_empty() {
        outln!();
        for f in &failures {
            outln!("{f}");
        }
    }
    for c in &report.cassettes {
        eprintln!("recorded {}", c.display());
    }
    outln!();
    outln!("{}", report.summary());
    if let Some(path) = &args.junit {
        std::fs::write(path, crate::engine::junit_xml(&report))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The generated spec, as committed in `openapi/`: V1 (OpenAPI 3.0) or the admin API.
pub fn openapi_text(admin: bool, json: bool) -> String {
    openapi_edition_text(admin, json, false)
}

/// [`openapi_text`], the V1 spec in its OpenAPI 3.1 edition when `v31`.
pub fn openapi_edition_text(admin: bool, json: bool, v31: bool) -> String {
    use crate::api::spec;
    let doc = match (admin, v31) {
        (true, _) => spec::admin(),
        (false, false) => spec::v1(spec::Edition::V30),
        (false, true) => spec::v1(spec::Edition::V31),
    };
    let mut text = if json {
        spec::json_text(&doc)
    } else {
        spec::yaml(&doc)
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

fn init_logs(default: &str) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ARES_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let out = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_filter(crate::engine::CloseNotice);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(out)
        .try_init();
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    block_on_code(async { f.await.map(|()| ExitCode::SUCCESS) })
}

fn block_on_code(f: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    block_on_logging("info", f)
}

/// Runs `f` on the engine's runtime, logging at `default_log` unless `ARES_LOG` says otherwise.
fn block_on_logging(
    default_log: &str,
    f: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    init_logs(default_log);
    let runtime = match crate::engine::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Tasks still holding the store end with the runtime; then the embedded engine shuts down
    // (its log synced, its files closed) before the process exits.
    crate::engine::begin_close();
    runtime.shutdown_timeout(CLOSE_WITHIN);
    if !crate::engine::wait_closed(CLOSE_WITHIN) {
        tracing::warn!(
            "the database did not close within {} s",
            CLOSE_WITHIN.as_secs()
        );
    }
    code
}

/// How long an exiting command waits for its tasks to end and then for the database to close.
const CLOSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

fn settings_or_exit(global: &GlobalArgs) -> anyhow::Result<Settings> {
    global
        .settings()
        .map_err(|errors| anyhow::anyhow!("invalid settings:\n{errors}"))
}

async fn serve(global: &GlobalArgs, args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = settings_or_exit(global)?;
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
    let app = crate::server::Application::build(settings).await?;
    app.run(listener, crate::server::shutdown_signal()).await
}

async fn tenant(global: &GlobalArgs, cmd: TenantCommand) -> anyhow::Result<()> {
    let engine = crate::engine::Engine::open_database(settings_or_exit(global)?).await?;
    match cmd {
        TenantCommand::Create {
            slug,
            name,
            quota_runs,
            quota_tokens,
        } => {
            let new = crate::engine::NewTenant {
                slug,
                name,
                quota_runs,
                quota_tokens,
                rate_limit: None,
            };
            let (t, key) = engine.provision_tenant(new).await?;
            outln!("tenant:       {}", t.slug);
            outln!("name:         {}", t.name);
            outln!("quota_runs:   {}", t.quota_runs);
            outln!("quota_tokens: {}", t.quota_tokens);
            outln!("key id:       {}", key.key.id);
            outln!("API key secret (shown once, store it now):");
            outln!("{}", key.secret);
        }
        TenantCommand::List => {
            outln!(
                "{:<32} {:>12} {:>14}  NAME",
                "SLUG",
                "QUOTA_RUNS",
                "QUOTA_TOKENS"
            );
            for t in engine.list_tenants().await? {
                outln!(
                    "{:<32} {:>12} {:>14}  {}",
                    t.slug,
                    t.quota_runs,
                    t.quota_tokens,
                    t.name
                );
            }
        }
    }
    Ok(())
}

/// Pretty JSON with a final newline, as the committed schema files are.
pub fn schema_text(schema: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(schema).expect("a schema serializes");
    s.push('\n');
    s
}

fn write_out(path: Option<&Path>, text: &str) -> ExitCode {
    match path {
        None => {
            out!("{text}");
            ExitCode::SUCCESS
        }
        Some(p) => match std::fs::write(p, text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", p.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn validate(global: &GlobalArgs, args: &ValidateArgs) -> ExitCode {
    let mut diagnostics: Vec<Diagnostic> = Vec::new();
    let (settings, default_dir) = match global.settings() {
        Ok(s) => {
            let dir = s.agents_dir.clone();
            (Some(s), dir)
        }
        Err(errors) => {
            // Still check the agents, without the model names the settings would have given.
            diagnostics.extend(errors.0);
            let dir = global
                .agents
                .clone()
                .unwrap_or_else(|| PathBuf::from("agents.d"));
            (None, dir)
        }
    };
    let dir = args.dir.clone().unwrap_or(default_dir);
    let report = validate_agents(&dir, settings.as_ref());
    diagnostics.extend(report.diagnostics);
    match args.format {
        Format::Text => {
            for d in &diagnostics {
                outln!("{d}");
            }
            let agents = report.agents;
            if diagnostics.is_empty() {
                eprintln!(
                    "{}: {agents} agents in {} files, no errors; {} tests files, {} cases",
                    dir.display(),
                    report.files,
                    report.tests_files,
                    report.cases
                );
            } else {
                eprintln!(
                    "{}: {} errors in {} files",
                    dir.display(),
                    diagnostics.len(),
                    report.files
                );
            }
        }
        Format::Json => {
            let out = serde_json::json!({
                "dir": dir.display().to_string(),
                "files": report.files,
                "agents": report.agents,
                "tests_files": report.tests_files,
                "cases": report.cases,
                "errors": diagnostics,
            });
            outln!(
                "{}",
                serde_json::to_string_pretty(&out).expect("diagnostics serialize")
            );
        }
    }
    if diagnostics.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
