//! The agent versions served: each stored once with its definition, and the set served
//! last, which `ares plan` compares a folder with.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Result, Store, decode_rows, returned};

/// One version of one agent, as first served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentVersion {
    /// The tenant whose folder holds the file, or `_global`.
    pub owner: String,
    pub name: String,
    pub version: String,
    /// The definition (its canonical JSON).
    pub config: Value,
    #[serde(default)]
    pub source_rev: Option<String>,
    pub first_served_at: DateTime<Utc>,
}

/// What recording the set served wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// Agents served with another version than the one recorded, or none.
    pub changed: usize,
    /// Agents recorded as served that no longer are.
    pub gone: usize,
}

/// Agents recorded as served in one transaction, at most.
const RECORD_CHUNK: usize = 250;

impl Store {
    /// Records `served` as the set served now (at `now`): each version not stored yet is
    /// stored, and the served set replaced. Written again whole after a failure (each step is
    /// idempotent), so an interrupted recording is completed by the next.
    ///
    /// Answers how many agents it wrote: served with another version than the one recorded
    /// (or none), and recorded but no longer served.
    pub async fn record_served(
        &self,
        served: &[AgentVersion],
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        // Only what differs from the set recorded is written: a restart on an unchanged folder
        // writes nothing, and a folder of thousands of agents is written in transactions of
        // [`RECORD_CHUNK`], each well within a call's time limit.
        let rows: Vec<Value> = self
            .rows(
                "SELECT owner, name, version FROM agent_served",
                json!({}),
                0,
            )
            .await?;
        let recorded: HashMap<(&str, &str), &str> = rows
            .iter()
            .filter_map(|r| {
                Some((
                    (r["owner"].as_str()?, r["name"].as_str()?),
                    r["version"].as_str()?,
                ))
            })
            .collect();
        let changed: Vec<&AgentVersion> = served
            .iter()
            .filter(|a| recorded.get(&(&*a.owner, &*a.name)) != Some(&&*a.version))
            .collect();
        for chunk in changed.chunks(RECORD_CHUNK) {
            self.run_retrying(
                "BEGIN; \
                 FOR $a IN $served { \
                   LET $id = type::record('agent_version', [$a.owner, $a.name, $a.version]); \
                   IF (SELECT VALUE version FROM ONLY $id) = NONE { \
                     CREATE $id CONTENT { owner: $a.owner, name: $a.name, version: $a.version, \
                       config: $a.config, source_rev: $a.source_rev ?? NONE, \
                       first_served_at: <datetime>$now } RETURN NONE; \
                   }; \
                   UPSERT type::record('agent_served', [$a.owner, $a.name]) CONTENT { owner: $a.owner, \
                     name: $a.name, version: $a.version, served_at: <datetime>$now } RETURN NONE; \
                 }; \
                 COMMIT;",
                json!({"served": chunk, "now": now}),
            )
            .await?;
        }
        let keep: HashSet<(&str, &str)> = served.iter().map(|a| (&*a.owner, &*a.name)).collect();
        let gone: Vec<[&str; 2]> = recorded
            .keys()
            .filter(|k| !keep.contains(*k))
            .map(|(owner, name)| [*owner, *name])
            .collect();
        for chunk in gone.chunks(RECORD_CHUNK) {
            self.run_retrying(
                "FOR $k IN $gone { DELETE type::record('agent_served', $k) RETURN NONE; };",
                json!({"gone": chunk}),
            )
            .await?;
        }
        Ok(Recorded {
            changed: changed.len(),
            gone: gone.len(),
        })
    }

    /// A page of the versions of `owner`'s agent `name` ever served, newest first, and how
    /// many there are.
    pub async fn agent_versions(
        &self,
        owner: &str,
        name: &str,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<AgentVersion>, u64)> {
        let mut out = self
            .run(
                "SELECT owner, name, version, config, source_rev, first_served_at \
                 FROM agent_version WHERE owner = $owner AND name = $name \
                 ORDER BY first_served_at DESC, version DESC LIMIT $limit START $offset; \
                 SELECT VALUE count() FROM agent_version WHERE owner = $owner AND name = $name \
                 GROUP ALL;",
                json!({"owner": owner, "name": name, "offset": offset, "limit": limit}),
            )
            .await?;
        let total = out
            .pop()
            .and_then(|rows| rows.into_iter().next())
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let page = decode_rows(returned(out), "an agent version")?;
        Ok((page, total))
    }

    /// The set served last: each agent with the version served and its definition. Nothing
    /// on a database no version of `ares` with versions has served (its table is not defined).
    pub async fn served_agents(&self) -> Result<Vec<AgentVersion>> {
        let out = self
            .run(
                "RETURN IF (INFO FOR DB).tables.agent_served = NONE { [] } ELSE { \
                   (SELECT owner, name, version, served_at FROM agent_served).map(|$s| { \
                     LET $v = type::record('agent_version', [$s.owner, $s.name, $s.version]).*; \
                     RETURN { owner: $s.owner, name: $s.name, version: $s.version, \
                       config: $v.config ?? {}, source_rev: $v.source_rev ?? NONE, \
                       first_served_at: $v.first_served_at ?? $s.served_at }; \
                   }) \
                 };",
                json!({}),
            )
            .await?;
        decode_rows(returned(out), "a served agent")
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    fn version(owner: &str, name: &str, v: &str, prompt: &str) -> AgentVersion {
        AgentVersion {
            owner: owner.into(),
            name: name.into(),
            version: v.into(),
            config: json!({"system_prompt": prompt}),
            source_rev: Some(format!("rev-{v}")),
            first_served_at: Utc.timestamp_opt(0, 0).unwrap(),
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    #[tokio::test]
    async fn versions_are_stored_once_and_the_served_set_replaced() {
        let store = super::super::testing::store().await;
        let a1 = version("acme", "bot", "aaa", "one");
        let g1 = version("_global", "helper", "ggg", "g");
        store
            .record_served(&[a1.clone(), g1.clone()], at(0))
            .await
            .unwrap();
        // Served again later: the first-served time stays.
        store
            .record_served(&[a1.clone(), g1.clone()], at(10))
            .await
            .unwrap();
        let a2 = version("acme", "bot", "bbb", "two");
        store
            .record_served(std::slice::from_ref(&a2), at(20))
            .await
            .unwrap();

        let (page, total) = store.agent_versions("acme", "bot", 0, 10).await.unwrap();
        assert_eq!(total, 2);
        let got: Vec<(&str, DateTime<Utc>)> = page
            .iter()
            .map(|v| (&*v.version, v.first_served_at))
            .collect();
        assert_eq!(got, vec![("bbb", at(20)), ("aaa", at(0))]);
        assert_eq!(page[1].config, json!({"system_prompt": "one"}));
        assert_eq!(page[1].source_rev.as_deref(), Some("rev-aaa"));
        let (page, total) = store.agent_versions("acme", "bot", 1, 10).await.unwrap();
        assert_eq!((page.len(), total), (1, 2));

        // The global agent is no longer served; the tenant's serves its second version.
        let served = store.served_agents().await.unwrap();
        assert_eq!(served.len(), 1);
        assert_eq!(served[0].version, "bbb");
        assert_eq!(served[0].config, json!({"system_prompt": "two"}));
        assert_eq!(served[0].first_served_at, at(20));
        let (_, total) = store
            .agent_versions("_global", "helper", 0, 10)
            .await
            .unwrap();
        assert_eq!(total, 1, "a version stays recorded once no longer served");
    }

    #[tokio::test]
    async fn thousands_of_agents_are_recorded_in_parts_and_only_what_changed_is_written() {
        let store = super::super::testing::store().await;
        let mut all: Vec<AgentVersion> = (0..3 * RECORD_CHUNK + 7)
            .map(|i| version("acme", &format!("bot-{i}"), "v1", "p"))
            .collect();
        let recorded = store.record_served(&all, at(0)).await.unwrap();
        assert_eq!((recorded.changed, recorded.gone), (all.len(), 0));
        let served_at = || async {
            let rows = store
                .run(
                    "SELECT VALUE [name, version, served_at] FROM agent_served ORDER BY name",
                    json!({}),
                )
                .await
                .unwrap();
            rows.into_iter().next().unwrap()
        };
        let first = served_at().await;
        assert_eq!(first.len(), all.len());
        // The same set again writes nothing: each agent keeps the time it was first served so.
        let recorded = store.record_served(&all, at(10)).await.unwrap();
        assert_eq!((recorded.changed, recorded.gone), (0, 0));
        assert_eq!(served_at().await, first);
        // One changed, one gone: only those are written.
        all[5] = version("acme", "bot-5", "v2", "q");
        let gone = all.pop().unwrap();
        let recorded = store.record_served(&all, at(20)).await.unwrap();
        assert_eq!((recorded.changed, recorded.gone), (1, 1));
        let now = served_at().await;
        assert_eq!(now.len(), all.len());
        let changed: Vec<&Value> = now.iter().filter(|r| r[2] != first[0][2]).collect();
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(
            (&changed[0][0], &changed[0][1]),
            (&json!("bot-5"), &json!("v2"))
        );
        assert!(!now.iter().any(|r| r[0] == json!(gone.name)));
    }
}
