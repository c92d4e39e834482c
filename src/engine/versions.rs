//! Agents as code: the versions served (recorded as they go into force, listed per agent),
//! a file's version, and `ares plan` (what serving a folder would change).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::background::FailureStreak;
use super::error::Result;
use super::{Engine, Listing};
use crate::agents::{Agent, AgentSet, Catalog, GLOBAL_DIR, load_dir, parse_agent};
use crate::config::Settings;
use crate::diag::{Diagnostic, Diagnostics};
use crate::store::{AgentVersion, Recorded};

/// How long after a failed attempt the served set is recorded again.
const RECORD_RETRY: Duration = Duration::from_secs(2);

/// The folder an agent's file is in: its tenant, or `_global`.
fn owner(agent: &Agent) -> &str {
    agent.tenant.as_deref().unwrap_or(GLOBAL_DIR)
}

/// An agent's definition as stored with its version.
fn config(agent: &Agent) -> Value {
    serde_json::to_value(&agent.spec).unwrap_or(Value::Null)
}

fn served_now(set: &AgentSet, at: chrono::DateTime<chrono::Utc>) -> Vec<AgentVersion> {
    set.all()
        .map(|(_, a)| AgentVersion {
            owner: owner(a).to_string(),
            name: a.name.clone(),
            version: a.version.clone(),
            config: config(a),
            source_rev: a.source_rev.clone(),
            first_served_at: at,
        })
        .collect()
}

impl Engine {
    /// A page of the versions of the tenant's agent `name` ever served, newest first. The
    /// agent is the one the tenant is served now (its own file, or the global one).
    pub async fn agent_versions(
        &self,
        tenant: &crate::store::Tenant,
        name: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Listing<AgentVersion>> {
        let agent = self.agent(tenant, name)?;
        let (items, total) = self
            .store
            .agent_versions(owner(&agent), name, offset, limit)
            .await?;
        Ok(Listing { items, total })
    }

    /// Records the set in force as the one served now, storing its new versions.
    pub async fn record_served(&self) -> Result<Recorded> {
        let set = self.agents.snapshot();
        let served = served_now(&set, self.clock.now());
        Ok(self.store.record_served(&served, self.clock.now()).await?)
    }

    /// Records the set served at start and again each time a reload puts another in force;
    /// a failed write is retried until it succeeds or the set changes again.
    pub(super) async fn track_served(self: Arc<Self>) {
        let mut changes = self.agents.subscribe();
        let mut streak = FailureStreak::new("recording the agent versions served");
        loop {
            changes.mark_unchanged();
            let started = std::time::Instant::now();
            match self.record_served().await {
                Ok(recorded) => {
                    streak.succeeded();
                    tracing::info!(
                        changed = recorded.changed,
                        gone = recorded.gone,
                        ms = started.elapsed().as_millis() as u64,
                        "recorded the agent versions served"
                    );
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    streak.failed(&e);
                    tokio::select! {
                        _ = tokio::time::sleep(RECORD_RETRY) => {}
                        r = changes.changed() => if r.is_err() { return },
                    }
                }
            }
        }
    }

    /// What serving the agents of `dir` would change, compared with the set the database
    /// recorded as served last. Fails with every error of the folder when it has any.
    pub async fn plan(&self, dir: &Path) -> anyhow::Result<Plan> {
        let report = load_dir(dir, &Catalog::from_settings(&self.settings));
        if !report.diagnostics.is_empty() {
            anyhow::bail!(
                "{} has errors:\n{}",
                dir.display(),
                Diagnostics(report.diagnostics)
            );
        }
        let served = self.store.served_agents().await?;
        Ok(Plan::between(
            served,
            served_now(&report.agents, self.clock.now()),
        ))
    }
}

/// The version of the agent file at `path` (its folder names its tenant, or `_global`),
/// or its errors. With `settings`, model names are checked against its models.
pub fn file_version(
    path: &Path,
    settings: Option<&Settings>,
) -> std::result::Result<String, Diagnostics> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|e| Diagnostics(vec![Diagnostic::file(&shown, format!("cannot read: {e}"))]))?;
    let catalog = match settings {
        Some(s) => Catalog::from_settings(s),
        None => Catalog {
            models: None,
            ..Catalog::from_settings(&Settings::default())
        },
    };
    let folder = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or(GLOBAL_DIR);
    let tenant = (folder != GLOBAL_DIR).then_some(folder);
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let mut diags = Vec::new();
    match parse_agent(&shown, &bytes, tenant, name, &catalog, &mut diags) {
        Some(agent) if diags.is_empty() => Ok(agent.version),
        _ => Err(Diagnostics(diags)),
    }
}

/// What serving a folder would change, per owner (tenant folder or `_global`); owners
/// without changes are left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub owners: Vec<OwnerPlan>,
}

/// The changes to the agents of one tenant folder (or of `_global`, served to every tenant).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OwnerPlan {
    pub owner: String,
    pub added: Vec<PlannedAgent>,
    pub removed: Vec<PlannedAgent>,
    pub changed: Vec<ChangedAgent>,
}

/// An agent added or removed, and its version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedAgent {
    pub name: String,
    pub version: String,
}

/// An agent whose definition changes: its versions and each field that differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangedAgent {
    pub name: String,
    pub from: String,
    pub to: String,
    pub fields: Vec<FieldChange>,
}

/// One field that differs, at a JSON pointer into the definition; absent on one side when
/// added or removed. Text of several lines (a system prompt) comes with a unified diff.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_diff: Option<String>,
}

impl Plan {
    /// The changes from the `served` set to the `next`.
    pub fn between(served: Vec<AgentVersion>, next: Vec<AgentVersion>) -> Plan {
        type Key = (String, String);
        let index = |set: Vec<AgentVersion>| -> BTreeMap<Key, AgentVersion> {
            set.into_iter()
                .map(|a| ((a.owner.clone(), a.name.clone()), a))
                .collect()
        };
        let mut before = index(served);
        let after = index(next);
        let mut owners: BTreeMap<String, OwnerPlan> = BTreeMap::new();
        fn of<'a>(owners: &'a mut BTreeMap<String, OwnerPlan>, owner: &str) -> &'a mut OwnerPlan {
            owners
                .entry(owner.to_string())
                .or_insert_with(|| OwnerPlan {
                    owner: owner.to_string(),
                    ..OwnerPlan::default()
                })
        }
        for ((owner, name), new) in after {
            match before.remove(&(owner.clone(), name.clone())) {
                None => of(&mut owners, &owner).added.push(PlannedAgent {
                    name,
                    version: new.version,
                }),
                Some(old) if old.version != new.version => {
                    of(&mut owners, &owner).changed.push(ChangedAgent {
                        name,
                        fields: field_changes(&old.config, &new.config),
                        from: old.version,
                        to: new.version,
                    })
                }
                Some(_) => {}
            }
        }
        for ((owner, name), old) in before {
            of(&mut owners, &owner).removed.push(PlannedAgent {
                name,
                version: old.version,
            });
        }
        Plan {
            owners: owners.into_values().collect(),
        }
    }

    /// Whether serving the folder changes nothing.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

/// The fields that differ between two definitions, by JSON pointer, in key order.
pub fn field_changes(before: &Value, after: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk("", Some(before), Some(after), &mut out);
    out
}

fn walk(path: &str, before: Option<&Value>, after: Option<&Value>, out: &mut Vec<FieldChange>) {
    // Absent and null mean the same in a definition (an optional field left out).
    let before = before.filter(|v| !v.is_null());
    let after = after.filter(|v| !v.is_null());
    if before == after {
        return;
    }
    if let (Some(Value::Object(a)), Some(Value::Object(b))) = (before, after) {
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            let escaped = k.replace('~', "~0").replace('/', "~1");
            walk(&format!("{path}/{escaped}"), a.get(k), b.get(k), out);
        }
        return;
    }
    let text_diff = match (before, after) {
        (Some(Value::String(a)), Some(Value::String(b)))
            if a.contains('\n') || b.contains('\n') =>
        {
            Some(
                similar::TextDiff::from_lines(a, b)
                    .unified_diff()
                    .context_radius(2)
                    .missing_newline_hint(false)
                    .header("before", "after")
                    .to_string(),
            )
        }
        _ => None,
    };
    out.push(FieldChange {
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        before: before.cloned(),
        after: after.cloned(),
        text_diff,
    });
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;

    fn v(owner: &str, name: &str, version: &str, config: Value) -> AgentVersion {
        AgentVersion {
            owner: owner.into(),
            name: name.into(),
            version: version.into(),
            config,
            source_rev: None,
            first_served_at: Utc::now(),
        }
    }

    #[test]
    fn a_plan_lists_added_removed_and_changed_agents_per_owner() {
        let served = vec![
            v(
                "acme",
                "bot",
                "1",
                json!({"system_prompt": "Be brief.\nAnswer in English.", "model": "m"}),
            ),
            v("acme", "old", "2", json!({})),
            v("_global", "same", "3", json!({})),
        ];
        let next = vec![
            v(
                "acme",
                "bot",
                "4",
                json!({"system_prompt": "Be brief.\nAnswer in French.", "model": "m", "timeout_ms": 5}),
            ),
            v("_global", "same", "3", json!({})),
            v("beta", "new", "5", json!({})),
        ];
        let plan = Plan::between(served, next);
        let owners: Vec<&str> = plan.owners.iter().map(|o| &*o.owner).collect();
        assert_eq!(
            owners,
            ["acme", "beta"],
            "an owner without changes is left out"
        );
        let acme = &plan.owners[0];
        assert_eq!(
            acme.removed,
            [PlannedAgent {
                name: "old".into(),
                version: "2".into()
            }]
        );
        assert!(acme.added.is_empty());
        let bot = &acme.changed[0];
        assert_eq!((&*bot.from, &*bot.to), ("1", "4"));
        let paths: Vec<&str> = bot.fields.iter().map(|f| &*f.path).collect();
        assert_eq!(paths, ["/system_prompt", "/timeout_ms"]);
        let diff = bot.fields[0].text_diff.as_deref().expect("a text diff");
        assert!(
            diff.contains("-Answer in English.\n+Answer in French."),
            "{diff}"
        );
        assert_eq!(bot.fields[1].before, None);
        assert_eq!(bot.fields[1].after, Some(json!(5)));
        assert_eq!(plan.owners[1].added[0].name, "new");
        assert!(Plan::between(vec![], vec![]).is_empty());
    }

    #[test]
    fn nested_fields_are_named_by_pointer_and_null_counts_as_absent() {
        let changes = field_changes(
            &json!({"output_schema": {"properties": {"a/b": {"type": "string"}}}, "x": null}),
            &json!({"output_schema": {"properties": {"a/b": {"type": "integer"}}}}),
        );
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].path, "/output_schema/properties/a~1b/type");
        assert_eq!(changes[0].text_diff, None);
    }
}
