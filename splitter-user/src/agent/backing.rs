//! Where the agent's desired state lives, as one trait with two
//! implementations: the file and `state_dir` of this host
//! ([`super::standalone::Standalone`]), or a store several nodes share
//! ([`super::node::StoreNode`]). The agent's event handlers are the same for
//! both; committing a change, publishing the file's services, driving
//! rollouts and the backing's own events are what differ.

use splitter_model::{
    config::Config,
    plan::{PlanError, ServicePlan},
    rollout::{self, Rollout},
    runtime::Runtime,
};

use super::{serving::Serving, AgentError, CommitError, ReloadError, RunOptions};
use crate::{control::ClusterInfo, dataplane::Dataplane};

/// What a backing hands the agent when it opens: itself, the config to
/// serve first (the file, or the file with the store's services) and the
/// runtime changes on top of it.
pub(super) struct Opened<B> {
    pub backing: B,
    pub config: Config,
    pub runtime: Runtime,
}

pub(super) trait Backing: Sized {
    /// What the backing reports on its own (a store's session).
    type Event;

    /// Opens it for the agent that loaded `file`.
    async fn open(file: &Config, started_unix: u64) -> Result<Opened<Self>, AgentError>;

    /// The l4 plans the agent starts with, so that a restart moves no flow.
    fn first_plans(&self, effective: &Config, dp: &Dataplane) -> Result<Vec<ServicePlan>, PlanError>;

    /// Makes `next` the runtime state: planned, kept (saved or committed),
    /// then served. On any failure the runtime and the kernel stay as they
    /// were, and the error says why.
    async fn commit(
        &mut self,
        next: Runtime,
        what: &str,
        config: &Config,
        runtime: &mut Runtime,
        serving: &mut Serving,
    ) -> Result<(), CommitError>;

    /// A reload of the file (already checked for keys that need a
    /// restart): the config served from now on and the plans applied.
    async fn publish(
        &mut self,
        next: Config,
        current: &Config,
        runtime: &mut Runtime,
        serving: &mut Serving,
        opts: &RunOptions,
    ) -> Result<(Config, Vec<ServicePlan>), ReloadError>;

    /// Whether rollouts are judged and stepped here now.
    fn drives_rollouts(&self) -> bool;

    /// A running rollout about to be judged here with the counts `now`.
    /// A node takes over one that another node drove, counting from now.
    fn claim(&self, service: &str, rollout: &mut Rollout, now: &rollout::Counts);

    /// A rollout tick that changed no weight: keeps its progress (`changed`:
    /// its state changed, e.g. it is promoted).
    async fn keep_progress(
        &mut self,
        service: &str,
        next: Runtime,
        changed: bool,
        config: &Config,
        runtime: &mut Runtime,
        serving: &mut Serving,
    );

    /// The backing's next event; pending forever when it has none.
    async fn event(&mut self) -> Self::Event;

    /// Handles what [`Backing::event`] returned.
    fn on_event(&mut self, event: Self::Event, config: &mut Config, runtime: &mut Runtime, serving: &mut Serving);

    /// What `status` shows of it (a node's place in the store).
    fn info(&self) -> Option<ClusterInfo>;
}
