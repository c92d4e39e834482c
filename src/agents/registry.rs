//! The loaded set of agents, per tenant, and the registry that swaps in a new set on change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::spec::AgentSpec;
use super::{Catalog, Revisions, load_dir};
use crate::diag::Diagnostics;

/// One valid agent definition with its embedded schemas compiled.
pub struct Agent {
    /// The owning tenant, or `None` for an agent of `_global`.
    pub tenant: Option<String>,
    pub name: String,
    /// The file it was read from.
    pub file: PathBuf,
    pub spec: AgentSpec,
    /// The definition's version ([`super::version_of`]).
    pub version: String,
    /// The git revision of the last commit that touched its file, when known.
    pub source_rev: Option<String>,
    pub input_validator: Option<Arc<jsonschema::Validator>>,
    pub output_validator: Option<Arc<jsonschema::Validator>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("tenant", &self.tenant)
            .field("name", &self.name)
            .field("file", &self.file)
            .field("spec", &self.spec)
            .field("version", &self.version)
            .field("source_rev", &self.source_rev)
            .finish_non_exhaustive()
    }
}

/// An immutable set of agents; the server reads one set per request.
#[derive(Debug, Default)]
pub struct AgentSet {
    tenants: BTreeMap<String, BTreeMap<String, Arc<Agent>>>,
    global: BTreeMap<String, Arc<Agent>>,
}

impl AgentSet {
    pub(super) fn new(
        tenants: BTreeMap<String, BTreeMap<String, Arc<Agent>>>,
        global: BTreeMap<String, Arc<Agent>>,
    ) -> Self {
        AgentSet { tenants, global }
    }

    /// The agent `name` as `tenant` sees it: its own file wins over `_global`.
    pub fn get(&self, tenant: &str, name: &str) -> Option<&Arc<Agent>> {
        self.tenants
            .get(tenant)
            .and_then(|m| m.get(name))
            .or_else(|| self.global.get(name))
    }

    /// The agent of `name` defined in `tenant`'s own folder (`None`: in `_global`), without
    /// falling back to `_global`.
    pub fn own(&self, tenant: Option<&str>, name: &str) -> Option<&Arc<Agent>> {
        match tenant {
            Some(t) => self.tenants.get(t).and_then(|m| m.get(name)),
            None => self.global.get(name),
        }
    }

    /// Every agent `tenant` sees, ordered by name.
    pub fn list(&self, tenant: &str) -> Vec<&Arc<Agent>> {
        let own = self.tenants.get(tenant);
        let mut merged: BTreeMap<&str, &Arc<Agent>> =
            self.global.iter().map(|(k, v)| (k.as_str(), v)).collect();
        if let Some(own) = own {
            merged.extend(own.iter().map(|(k, v)| (k.as_str(), v)));
        }
        merged.into_values().collect()
    }

    /// Every definition: `(tenant folder, agent)`, `_global`'s under [`super::GLOBAL_DIR`].
    pub fn all(&self) -> impl Iterator<Item = (&str, &Arc<Agent>)> {
        self.global.values().map(|a| (super::GLOBAL_DIR, a)).chain(
            self.tenants
                .iter()
                .flat_map(|(t, m)| m.values().map(move |a| (t.as_str(), a))),
        )
    }

    /// Records the revision of each agent's file (a set just loaded: its agents are not
    /// shared yet).
    fn stamp_revisions(&mut self, dir: &Path, revisions: &Revisions) {
        let files: Vec<PathBuf> = self.all().map(|(_, a)| a.file.clone()).collect();
        let revs = revisions.of(dir, &files);
        for agent in self
            .global
            .values_mut()
            .chain(self.tenants.values_mut().flat_map(|m| m.values_mut()))
        {
            if let Some(a) = Arc::get_mut(agent) {
                a.source_rev = revs.get(&a.file).cloned();
            }
        }
    }

    /// Number of agent definitions (tenant and global files).
    pub fn len(&self) -> usize {
        self.global.len() + self.tenants.values().map(BTreeMap::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The agents the server serves: the last valid set read from the agents folder.
pub struct AgentRegistry {
    dir: PathBuf,
    catalog: Catalog,
    revisions: Revisions,
    current: RwLock<Arc<AgentSet>>,
    reloads: AtomicU64,
    last_errors: Mutex<Option<Diagnostics>>,
    /// Counts the sets put in force, for whoever records what is served.
    swapped: tokio::sync::watch::Sender<u64>,
}

/// What the last reloads did, for logs, metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reload attempts since start-up, refused ones included.
    pub attempts: u64,
    /// Errors of the last attempt, when it was refused.
    pub last_errors: Option<Diagnostics>,
}

impl AgentRegistry {
    /// Loads `dir`, with the source revision of each file from `revisions`; any error
    /// refuses the whole set.
    pub fn load(dir: &Path, catalog: Catalog, revisions: Revisions) -> Result<Self, Diagnostics> {
        let set = read_set(dir, &catalog, &revisions)?;
        Ok(AgentRegistry {
            dir: dir.to_path_buf(),
            catalog,
            revisions,
            current: RwLock::new(Arc::new(set)),
            reloads: AtomicU64::new(0),
            last_errors: Mutex::new(None),
            swapped: tokio::sync::watch::Sender::new(0),
        })
    }

    /// A registry serving a fixed set (tests, tools).
    pub fn fixed(set: AgentSet) -> Self {
        AgentRegistry {
            dir: PathBuf::new(),
            catalog: Catalog::default(),
            revisions: Revisions::None,
            current: RwLock::new(Arc::new(set)),
            reloads: AtomicU64::new(0),
            last_errors: Mutex::new(None),
            swapped: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes each time a new set is put in force.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swapped.subscribe()
    }

    /// The set in force now. Cheap: one lock and one reference count.
    pub fn snapshot(&self) -> Arc<AgentSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the folder again. A valid set replaces the current one at once; an invalid
    /// one is refused with its errors and the current set keeps serving.
    pub fn reload(&self) -> Result<usize, Diagnostics> {
        let result = read_set(&self.dir, &self.catalog, &self.revisions).map(|set| {
            let n = set.len();
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
            self.swapped.send_modify(|n| *n += 1);
            n
        });
        *self.last_errors.lock().unwrap_or_else(|p| p.into_inner()) =
            result.as_ref().err().cloned();
        self.reloads.fetch_add(1, Ordering::SeqCst);
        result
    }

    /// Reload attempts so far and the errors of a refused last one.
    pub fn status(&self) -> ReloadStatus {
        ReloadStatus {
            last_errors: self
                .last_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            attempts: self.reloads.load(Ordering::SeqCst),
        }
    }

    /// Reloads whenever a file under the folder changes, after `settle` of quiet (edits
    /// and `git checkout` touch many files at once). Stops when the returned value is dropped.
    pub fn watch(self: &Arc<Self>, settle: Duration) -> notify::Result<ReloadWatcher> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(&self.dir, RecursiveMode::Recursive)?;
        let registry = Arc::clone(self);
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Wait until the folder has been quiet for `settle`.
                while let Ok(Some(())) = tokio::time::timeout(settle, rx.recv()).await {}
                let r = Arc::clone(&registry);
                match tokio::task::spawn_blocking(move || r.reload()).await {
                    Ok(Ok(n)) => {
                        tracing::info!(agents = n, dir = %registry.dir.display(), "agents reloaded")
                    }
                    Ok(Err(errors)) => {
                        for e in &errors.0 {
                            tracing::error!(error = %e, "agent file rejected");
                        }
                        tracing::error!(
                            errors = errors.0.len(),
                            "agents not reloaded: the folder has errors; the previous agents keep serving"
                        );
                    }
                    Err(e) => tracing::error!(error = %e, "agent reload task failed"),
                }
            }
        });
        Ok(ReloadWatcher {
            _watcher: watcher,
            task,
        })
    }
}

/// The valid set of `dir` with its files' revisions, or every error.
fn read_set(dir: &Path, catalog: &Catalog, revisions: &Revisions) -> Result<AgentSet, Diagnostics> {
    let report = load_dir(dir, catalog);
    if !report.diagnostics.is_empty() {
        return Err(Diagnostics(report.diagnostics));
    }
    let mut set = report.agents;
    set.stamp_revisions(dir, revisions);
    Ok(set)
}

/// Keeps a registry's folder watched; dropping it stops the watching.
pub struct ReloadWatcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReloadWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
