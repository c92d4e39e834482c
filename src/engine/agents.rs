//! The agents a tenant is offered: a page of them by name, or one, each with its counters.

use std::sync::Arc;

use super::error::{EngineError, Result};
use super::{Engine, Listing, agent_id};
use crate::agents::Agent;
use crate::store::{AgentState, Tenant};

/// One of a tenant's agents, as the tenant sees it.
#[derive(Debug, Clone)]
pub struct AgentView {
    /// The tenant's id of the agent (UUIDv5 of tenant and name).
    pub id: String,
    pub agent: Arc<Agent>,
    /// First-seen time and run counters.
    pub state: AgentState,
}

impl AgentView {
    /// Completed runs divided by finished runs; 0 before the first run.
    pub fn success_rate(&self) -> f64 {
        if self.state.total_runs == 0 {
            0.0
        } else {
            self.state.completed_runs as f64 / self.state.total_runs as f64
        }
    }
}

impl Engine {
    /// A page of the tenant's agents by name, and how many it has.
    #[tracing::instrument(skip(self, tenant), fields(tenant = %tenant.slug))]
    pub async fn list_agents(
        &self,
        tenant: &Tenant,
        offset: u64,
        limit: u64,
    ) -> Result<Listing<AgentView>> {
        let set = self.agents.snapshot();
        let all = set.list(&tenant.slug);
        let total = all.len() as u64;
        let page: Vec<Arc<Agent>> = all
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .cloned()
            .collect();
        drop(set);
        let items = self.views(tenant, page).await?;
        Ok(Listing { items, total })
    }

    /// The tenant's agent `name`.
    #[tracing::instrument(skip(self, tenant), fields(tenant = %tenant.slug))]
    pub async fn get_agent(&self, tenant: &Tenant, name: &str) -> Result<AgentView> {
        let agent = self.agent(tenant, name)?;
        self.views(tenant, vec![agent])
            .await?
            .pop()
            .ok_or_else(|| EngineError::Internal(anyhow::anyhow!("no counters of agent '{name}'")))
    }

    /// The tenant's agent `name` as served now.
    pub(super) fn agent(&self, tenant: &Tenant, name: &str) -> Result<Arc<Agent>> {
        self.agents
            .snapshot()
            .get(&tenant.slug, name)
            .cloned()
            .ok_or_else(|| EngineError::AgentNotFound(name.to_string()))
    }

    /// The agents with their counters (recording now as first seen for new ones).
    async fn views(&self, tenant: &Tenant, agents: Vec<Arc<Agent>>) -> Result<Vec<AgentView>> {
        let ids: Vec<(String, String)> = agents
            .iter()
            .map(|a| (agent_id(&tenant.slug, &a.name), a.name.clone()))
            .collect();
        let states = self.store.agent_states(&tenant.slug, &ids).await?;
        if states.len() != agents.len() {
            return Err(EngineError::Internal(anyhow::anyhow!(
                "{} agent counters for {} agents",
                states.len(),
                agents.len()
            )));
        }
        Ok(agents
            .into_iter()
            .zip(ids)
            .zip(states)
            .map(|((agent, (id, _)), state)| AgentView { id, agent, state })
            .collect())
    }
}
