//! Agent tests (`ares test`): every case of an agents folder's tests files run through the
//! engine's own run path (tool loop, output validation, repair) on an in-memory database, its
//! expectations checked, its model exchanges live, recorded to cassettes, or replayed from them.

mod expect;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use super::{Engine, NewTenant, RunAsk, SystemClock};
use crate::agents::{AgentTests, Catalog, GLOBAL_DIR, LoadedCase, load_dir, load_tests};
use crate::config::Settings;
use crate::diag::Diagnostic;
use crate::llm::Models;
use crate::llm::cassette::{
    Cassette, CassetteCase, Player, Recorder, RecordingProvider, ReplayProvider, Tape,
};
use crate::store::{RunStatus, Store, Tenant};

pub use report::junit_xml;

/// Where the model's answers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TestMode {
    /// The providers of the settings, as `ares serve` uses them.
    #[default]
    Live,
    /// The providers of the settings, every exchange written to the cassettes.
    Record,
    /// The cassettes alone: no provider is called.
    Replay,
}

/// What `ares test` runs.
#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    /// The agents folder.
    pub dir: PathBuf,
    /// Only the tests of agents of this name.
    pub agent: Option<String>,
    pub mode: TestMode,
}

/// One run of a case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseRun {
    /// The run's final status; `None` when it did not run (refused, or not in the cassette).
    pub status: Option<RunStatus>,
    pub tokens: u64,
    pub duration_ms: u64,
    /// Every expectation the run did not meet, at its place in the tests file.
    pub failures: Vec<Diagnostic>,
}

impl CaseRun {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    fn not_run(failure: Diagnostic) -> Self {
        CaseRun {
            status: None,
            tokens: 0,
            duration_ms: 0,
            failures: vec![failure],
        }
    }
}

/// The runs of one case and whether enough of them passed.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    /// The tests file.
    pub file: PathBuf,
    /// `<tenant folder>/<agent>`, e.g. `demo/support-triage` or `_global/summarizer`.
    pub agent: String,
    pub name: String,
    pub pass_rate: f64,
    pub runs: Vec<CaseRun>,
}

impl CaseResult {
    /// How many runs passed.
    pub fn passes(&self) -> usize {
        self.runs.iter().filter(|r| r.passed()).count()
    }

    /// At least `pass_rate` of the runs passed.
    pub fn passed(&self) -> bool {
        let needed = (self.pass_rate * self.runs.len() as f64 - 1e-9)
            .ceil()
            .max(0.0);
        self.passes() as f64 >= needed
    }
}

/// What `ares test` found.
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    /// Problems of the agents or tests files; when there are any, no case ran.
    pub errors: Vec<Diagnostic>,
    pub cases: Vec<CaseResult>,
    /// Cassettes written (`Record`).
    pub cassettes: Vec<PathBuf>,
}

impl TestReport {
    /// No file problem, and every case passed.
    pub fn passed(&self) -> bool {
        self.errors.is_empty() && self.cases.iter().all(CaseResult::passed)
    }
}

/// Runs the cases of every tests file under `options.dir` (or of one agent), each through the
/// engine's run path, on a fresh in-memory database with a tenant per tenant folder. The
/// settings give the models and providers (their database and agents folder are replaced).
pub async fn test_agents(
    mut settings: Settings,
    options: TestOptions,
) -> anyhow::Result<TestReport> {
    settings.agents_dir = options.dir.clone();
    settings.database.url = "mem://".into();
    let catalog = Catalog::from_settings(&settings);
    let agents = load_dir(&options.dir, &catalog);
    let tests = load_tests(&options.dir, &agents.agents, &catalog);
    let mut report = TestReport {
        errors: agents.diagnostics,
        ..TestReport::default()
    };
    report.errors.extend(tests.diagnostics);
    report.errors.sort();
    let files: Vec<AgentTests> = tests
        .files
        .into_iter()
        .filter(|t| options.agent.as_ref().is_none_or(|a| *a == t.agent))
        .collect();
    if let Some(agent) = &options.agent
        && files.is_empty()
        && report.errors.is_empty()
    {
        report.errors.push(Diagnostic::file(
            options.dir.display().to_string(),
            format!("no tests of agent `{agent}`: add {agent}.tests.yaml beside {agent}.yaml"),
        ));
    }
    if !report.errors.is_empty() {
        return Ok(report);
    }

    let recorder = Arc::new(Recorder::default());
    let player = Arc::new(Player::default());
    let models = match options.mode {
        TestMode::Live => Models::from_settings(&settings)?,
        TestMode::Record => Models::from_settings(&settings)?
            .map_providers(|p| Arc::new(RecordingProvider::new(p, Arc::clone(&recorder)))),
        // No provider of the settings is built: nothing here can open a connection.
        TestMode::Replay => Models::with_providers(&settings, |_, _| {
            Arc::new(ReplayProvider::new(Arc::clone(&player)))
        })?,
    };
    let store = Store::connect(&settings.database)
        .await
        .context("opening the in-memory database")?;
    let engine = Arc::new(Engine::new(settings, store, models, Arc::new(SystemClock))?);
    let tenants = provision(&engine, &options.dir, &files).await?;
    let runner = Runner {
        engine,
        mode: options.mode,
        recorder,
        player,
    };
    for tests in &files {
        let tenant = &tenants[&tests.tenant];
        let recorded = match options.mode {
            TestMode::Replay => Some(Cassette::read(&tests.cassette_path())),
            _ => None,
        };
        let mut cassette = Cassette::new(&tests.agent);
        for case in &tests.cases {
            let mut runs = Vec::new();
            let mut tapes = Vec::new();
            for n in 0..case.spec.repeat {
                let run = Run { tests, case, n };
                let (result, tape) = runner.run(&run, tenant, recorded.as_ref()).await;
                runs.push(result);
                tapes.extend(tape);
            }
            cassette.cases.push(CassetteCase {
                name: case.spec.name.clone(),
                runs: tapes,
            });
            report.cases.push(CaseResult {
                file: tests.file.clone(),
                agent: label(tests),
                name: case.spec.name.clone(),
                pass_rate: case.spec.pass_rate,
                runs,
            });
        }
        if options.mode == TestMode::Record {
            let path = tests.cassette_path();
            std::fs::write(&path, cassette.to_text())
                .with_context(|| format!("writing the cassette {}", path.display()))?;
            report.cassettes.push(path);
        }
    }
    Ok(report)
}

/// The engine the cases run on, and the tapes its providers record to or replay from.
struct Runner {
    engine: Arc<Engine>,
    mode: TestMode,
    recorder: Arc<Recorder>,
    player: Arc<Player>,
}

impl Runner {
    /// One run of a case through the engine, checked; and, when recording, its tape.
    async fn run(
        &self,
        run: &Run<'_>,
        tenant: &Tenant,
        recorded: Option<&Result<Cassette, String>>,
    ) -> (CaseRun, Option<Tape>) {
        let (tests, case) = (run.tests, run.case);
        if let Some(recorded) = recorded {
            match tape(recorded, case, run.n, &tests.cassette_path()) {
                Ok(t) => self.player.load(t),
                Err(message) => {
                    return (CaseRun::not_run(run.at(&case.pointer(), &message)), None);
                }
            }
        }
        let answer = self
            .engine
            .run_agent(
                tenant,
                &tests.agent,
                case.spec.input.clone(),
                RunAsk::default(),
            )
            .await;
        let played = recorded.is_some().then(|| self.player.finish());
        let tape = (self.mode == TestMode::Record).then(|| self.recorder.take());
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                let refused = format!("the run was refused: {e}");
                let d = run.at(&format!("{}/input", case.pointer()), &refused);
                return (CaseRun::not_run(d), tape);
            }
        };
        let failures: Vec<Diagnostic> = match played {
            // What the run did after a request the cassette did not hold says nothing.
            Some(p) if !p.misses.is_empty() => p
                .misses
                .iter()
                .map(|m| run.at(&case.pointer(), m))
                .collect(),
            Some(p) if p.unused > 0 => vec![run.at(
                &case.pointer(),
                &format!(
                    "the run made {} model calls, {} fewer than the cassette holds: the conversation changed; record it again",
                    p.asked, p.unused
                ),
            )],
            _ => expect::check(tests, case, &answer.run, &answer.steps)
                .into_iter()
                .map(|d| Diagnostic {
                    message: run.say(&d.message),
                    ..d
                })
                .collect(),
        };
        let result = CaseRun {
            status: Some(answer.run.status),
            tokens: answer.run.tokens_used,
            duration_ms: answer.run.duration_ms.unwrap_or_default(),
            failures,
        };
        (result, tape)
    }
}

/// Which run of which case this is.
struct Run<'a> {
    tests: &'a AgentTests,
    case: &'a LoadedCase,
    /// From 0.
    n: u32,
}

impl Run<'_> {
    /// `message`, naming the case (and the run, when the case repeats).
    fn say(&self, message: &str) -> String {
        let (name, repeat) = (&self.case.spec.name, self.case.spec.repeat);
        if repeat > 1 {
            format!("case `{name}` (run {} of {repeat}): {message}", self.n + 1)
        } else {
            format!("case `{name}`: {message}")
        }
    }

    /// A failure of this run at `pointer` of its tests file.
    fn at(&self, pointer: &str, message: &str) -> Diagnostic {
        self.tests.diagnostic(pointer, self.say(message))
    }
}

/// The recorded tape of run `n` of `case`.
fn tape(
    recorded: &Result<Cassette, String>,
    case: &LoadedCase,
    n: u32,
    path: &Path,
) -> Result<Tape, String> {
    let cassette = recorded.as_ref().map_err(Clone::clone)?;
    let runs = cassette
        .case(&case.spec.name)
        .map(|c| c.runs.as_slice())
        .unwrap_or_default();
    runs.get(n as usize).cloned().ok_or_else(|| {
        format!(
            "{} holds {} recorded runs of this case, not run {}: record it with `ares test --record`",
            path.display(),
            runs.len(),
            n + 1
        )
    })
}

/// `<tenant folder>/<agent>`.
fn label(tests: &AgentTests) -> String {
    format!(
        "{}/{}",
        tests.tenant.as_deref().unwrap_or(GLOBAL_DIR),
        tests.agent
    )
}

/// A tenant per tenant folder with tests, and one with no folder of its own for the tests of
/// `_global` agents (so that no tenant's file of the same name stands in for them).
async fn provision(
    engine: &Engine,
    dir: &Path,
    files: &[AgentTests],
) -> anyhow::Result<BTreeMap<Option<String>, Tenant>> {
    let mut tenants = BTreeMap::new();
    for tests in files {
        if tenants.contains_key(&tests.tenant) {
            continue;
        }
        let slug = match &tests.tenant {
            Some(t) => t.clone(),
            None => (1..)
                .map(|i| {
                    if i == 1 {
                        "global".to_string()
                    } else {
                        format!("global-{i}")
                    }
                })
                .find(|s| !dir.join(s).exists())
                .expect("a free name"),
        };
        let (tenant, _) = engine
            .provision_tenant(NewTenant {
                slug: slug.clone(),
                rate_limit: Some(0),
                ..NewTenant::default()
            })
            .await
            .with_context(|| format!("creating tenant `{slug}` for the tests"))?;
        tenants.insert(tests.tenant.clone(), tenant);
    }
    Ok(tenants)
}
