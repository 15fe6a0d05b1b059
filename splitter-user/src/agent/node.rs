//! The agent as one node of several sharing a store (`store: { etcd }`):
//! where its desired state comes from at start, how a store revision is
//! served, how its own changes are committed, and the last applied state
//! kept in `state_dir` for restarts while etcd is away.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use splitter_model::{
    cluster::Desired,
    config::Config,
    plan::{PlanError, ServicePlan},
    rollout::{self, Rollout},
    runtime::Runtime,
};

use super::{
    backing::{Backing, Opened},
    check_interfaces,
    serving::Serving,
    AgentError, CommitError, ReloadError, RunOptions,
};
use crate::{
    control::ClusterInfo,
    dataplane::Dataplane,
    store::{self, NodeRecord, StoreEvent, Writer},
};

/// File in `state_dir` with the last applied revision and its state.
pub const CACHE_FILE: &str = "cluster.json";

#[derive(Deserialize, Serialize)]
struct Cache {
    revision: i64,
    desired: Desired,
}

fn load_cache(dir: &Path) -> Option<(i64, Desired)> {
    let text = std::fs::read_to_string(dir.join(CACHE_FILE)).ok()?;
    match serde_json::from_str::<Cache>(&text) {
        Ok(c) => Some((c.revision, c.desired)),
        Err(e) => {
            warn!("{} is not a splitter cluster cache ({e}); ignoring it", dir.join(CACHE_FILE).display());
            None
        }
    }
}

fn save_cache(dir: &Path, revision: i64, desired: &Desired) {
    let text = serde_json::to_string(&Cache { revision, desired: desired.clone() }).expect("serializes");
    if let Err(e) = crate::state::write_private(&dir.join(CACHE_FILE), text.as_bytes()) {
        error!("saving the applied state to {}: {e}", dir.display());
    }
}

/// This node's part in the shared store.
pub(super) struct StoreNode {
    pub node: String,
    /// The file as loaded: this node's own settings (interfaces, paths...);
    /// its services only seed an empty store.
    pub local: Config,
    pub desired: Desired,
    /// The store revision served now (0: not yet read from the store).
    pub revision: i64,
    writer: Writer,
    reachable: Result<(), String>,
    pub leader: bool,
    apply_error: Option<String>,
    record: watch::Sender<NodeRecord>,
    /// What the store session reports.
    events: mpsc::UnboundedReceiver<StoreEvent>,
}

impl StoreNode {
    fn cluster_info(&self) -> ClusterInfo {
        ClusterInfo {
            node: self.node.clone(),
            store: self.writer.endpoints(),
            applied_revision: self.revision,
            reachable: self.reachable.is_ok(),
            store_error: self.reachable.clone().err(),
            leader: self.leader,
            apply_error: self.apply_error.clone(),
            changed_by: self.desired.changed_by.clone(),
            change: self.desired.change.clone(),
        }
    }

    fn failed(&mut self, revision: i64, why: String) {
        error!(revision, "could not apply the store's desired state, still serving revision {}: {why}", self.revision);
        self.apply_error = Some(format!("revision {revision}: {why}"));
        let e = self.apply_error.clone();
        self.record.send_modify(|r| r.error = e);
    }

    /// Serves `desired` (store revision `revision`) with `config` (this node's
    /// file with the store's services): plans from the stored layouts, installs,
    /// and records the revision as applied. Nothing changes on failure. A
    /// revision that serves the same services with the same layouts as the one
    /// served now (a rollout's progress, a pause) is recorded without planning.
    fn serve(
        &mut self,
        revision: i64,
        desired: Desired,
        config: &Config,
        runtime: &mut Runtime,
        serving: &mut Serving,
    ) -> Result<Vec<ServicePlan>, AgentError> {
        let mut next = desired.runtime.clone();
        let (effective, dropped) = next.effective(config);
        for name in dropped {
            warn!(service = %name, "runtime changes in the store no longer fit the service; its file weights apply");
        }
        let same = desired.layouts == self.desired.layouts && effective.services == self.desired.effective_services();
        let mut plans = Vec::new();
        if !same {
            check_interfaces(&effective)?;
            plans = desired.plan(&effective)?;
            serving.install(&effective, &plans)?;
        }
        *runtime = next;
        save_cache(&self.local.state_dir, revision, &desired);
        self.desired = desired;
        self.revision = revision;
        self.apply_error = None;
        self.record.send_modify(|r| {
            r.applied_revision = revision;
            r.error = None;
        });
        Ok(plans)
    }
}

impl Backing for StoreNode {
    type Event = StoreEvent;

    /// Starts as a node: reads the store (within a few seconds), else the last
    /// applied state, else the file; returns the node and the config and runtime
    /// to serve first. The store session (watch, registration, leadership) runs
    /// in the background and reports to `events`.
    async fn open(local: &Config, started_unix: u64) -> Result<Opened<Self>, AgentError> {
        let etcd = local.store.as_ref().expect("node mode has a store").etcd.clone();
        let node = local.node_name();
        let seed = Desired::seed(local, &node)?;
        let mut writer = Writer::new(etcd.clone());
        let fetched = writer.with(async |s| s.load().await).await;
        let reachable = fetched.as_ref().map(drop).map_err(ToString::to_string);
        let (revision, desired) = match (fetched, load_cache(&local.state_dir)) {
            (Ok(Some(found)), _) => found,
            (Ok(None), _) => (0, seed.clone()),
            (Err(e @ (store::StoreError::Setup(_) | store::StoreError::Denied { .. })), _) => return Err(e.into()),
            (Err(e), Some((rev, cached))) => {
                warn!("{e}; serving the last applied state (revision {rev}) until the store answers");
                (rev, cached)
            }
            (Err(e), None) => {
                warn!("{e}; serving this node's file until the store answers");
                (0, seed.clone())
            }
        };
        let config = desired.config_for(local)?;
        let runtime = desired.runtime.clone();
        let record = NodeRecord {
            node: node.clone(),
            applied_revision: revision,
            pid: std::process::id(),
            started_unix,
            ..NodeRecord::default()
        };
        let (record_tx, record_rx) = watch::channel(record);
        let (events_tx, events) = mpsc::unbounded_channel();
        tokio::spawn(store::session(etcd, seed, events_tx, record_rx));
        info!(node, revision, store = writer.endpoints(), "node of a shared store");
        let backing = StoreNode {
            node,
            local: local.clone(),
            desired,
            revision,
            writer,
            reachable,
            leader: false,
            apply_error: None,
            record: record_tx,
            events,
        };
        Ok(Opened { backing, config, runtime })
    }

    /// Planned from the stored layouts: every node builds the same tables.
    fn first_plans(&self, effective: &Config, _dp: &Dataplane) -> Result<Vec<ServicePlan>, PlanError> {
        self.desired.plan(effective)
    }

    /// Commits `next` to the store (compare-and-swap on the revision this node
    /// serves), then serves it here at once; the other nodes follow by watch.
    async fn commit(
        &mut self,
        next: Runtime,
        what: &str,
        file: &Config,
        runtime: &mut Runtime,
        serving: &mut Serving,
    ) -> Result<(), CommitError> {
        let c = self;
        let desired = c.desired.next(None, next, &c.node, what)?;
        let expected = c.revision;
        let endpoints = c.writer.endpoints();
        match c.writer.with(async |s| s.commit(expected, &desired).await).await {
            Ok(Some(revision)) => c
                .serve(revision, desired, file, runtime, serving)
                .map(drop)
                .map_err(|e| CommitError::Apply(Box::new(e))),
            Ok(None) => {
                // Someone else changed it first: ours is refused; theirs reaches
                // this node by the watch, like every other node.
                let by = match c.writer.with(async |s| s.load().await).await {
                    Ok(Some((revision, d))) => format!(" (revision {revision}, {}: {})", d.changed_by, d.change),
                    _ => String::new(),
                };
                Err(CommitError::Lost { endpoints, by })
            }
            Err(e) => Err(CommitError::Store(e)),
        }
    }

    /// A reload of the file as a node: this node's own settings are taken; the
    /// file's services, when they differ from the store's, are published to the
    /// store (and so to every node).
    async fn publish(
        &mut self,
        next: Config,
        current: &Config,
        runtime: &mut Runtime,
        serving: &mut Serving,
        opts: &RunOptions,
    ) -> Result<(Config, Vec<ServicePlan>), ReloadError> {
        let c = self;
        c.local = next.clone();
        if next.services == c.desired.services {
            return Ok((current.clone(), Vec::new()));
        }
        let what = format!("services published from {}", opts.config_path.display());
        let desired = c.desired.next(Some(next.services.clone()), c.desired.runtime.clone(), &c.node, &what);
        let desired = desired?;
        let config = desired.config_for(&next)?;
        let expected = c.revision;
        let revision = match c.writer.with(async |s| s.commit(expected, &desired).await).await {
            Ok(Some(revision)) => revision,
            Ok(None) => return Err(ReloadError::Lost),
            Err(e) => return Err(e.into()),
        };
        let plans = c.serve(revision, desired, &config, runtime, serving)?;
        info!(revision, "{what}");
        Ok((config, plans))
    }

    /// Only the leader drives rollouts.
    fn drives_rollouts(&self) -> bool {
        self.leader
    }

    /// The leader judges on its own counts: a rollout started (or last
    /// driven) elsewhere starts from them now.
    fn claim(&self, service: &str, r: &mut Rollout, now: &rollout::Counts) {
        if r.driver.as_deref() != Some(self.node.as_str()) {
            info!(service, "rollout: this node ({}) drives it from now on", self.node);
            r.driver = Some(self.node.clone());
            r.base = now.clone();
        }
    }

    /// The step's progress goes to the store, so every node's status shows
    /// it and another leader goes on from it.
    async fn keep_progress(
        &mut self,
        service: &str,
        next: Runtime,
        _changed: bool,
        config: &Config,
        runtime: &mut Runtime,
        serving: &mut Serving,
    ) {
        let what = format!("rollout of {service}: progress");
        if let Err(e) = self.commit(next, &what, config, runtime, serving).await {
            warn!(service, "rollout: {e}");
        }
    }

    async fn event(&mut self) -> StoreEvent {
        match self.events.recv().await {
            Some(e) => e,
            // The session ended (the agent is stopping): nothing more comes.
            None => std::future::pending().await,
        }
    }

    /// Handles what the store session reports.
    fn on_event(&mut self, event: StoreEvent, config: &mut Config, runtime: &mut Runtime, serving: &mut Serving) {
        let c = self;
        match event {
            StoreEvent::Reachable(r) => {
                if r.is_ok() && c.reachable.is_err() {
                    info!("store reachable again; resynced");
                }
                c.reachable = r;
            }
            StoreEvent::Leader(leader) => {
                if leader != c.leader {
                    info!(node = c.node, leader, "rollout driver (store leader) changed");
                }
                c.leader = leader;
            }
            StoreEvent::Desired { revision, desired } => {
                if revision <= c.revision && c.apply_error.is_none() {
                    return;
                }
                let next = match desired.config_for(&c.local) {
                    Ok(next) => next,
                    Err(e) => return c.failed(revision, e.to_string()),
                };
                let who = format!("{} ({})", desired.changed_by, desired.change);
                match c.serve(revision, *desired, &next, runtime, serving) {
                    Ok(_) => {
                        info!(revision, by = who, "applied the store's desired state");
                        *config = next;
                    }
                    Err(e) => c.failed(revision, e.to_string()),
                }
            }
        }
    }

    fn info(&self) -> Option<ClusterInfo> {
        Some(self.cluster_info())
    }
}
