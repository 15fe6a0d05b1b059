//! The agent on its own: the file is the desired state, runtime changes are
//! saved in `state_dir/runtime.json` before they go live, and this agent
//! drives its rollouts.

use std::convert::Infallible;

use splitter_model::{
    config::Config,
    plan::{plan_all, PlanError, ServicePlan},
    rollout::{self, Rollout},
    runtime::Runtime,
};
use tracing::{error, warn};

use super::{
    backing::{Backing, Opened},
    serving::Serving,
    AgentError, CommitError, ReloadError, RunOptions,
};
use crate::{control::ClusterInfo, dataplane::Dataplane, state::RuntimeFile as _};

pub(super) struct Standalone {
    state_dir: std::path::PathBuf,
}

impl Backing for Standalone {
    type Event = Infallible;

    /// The runtime changes made before a restart apply again. A rollout that
    /// was running when the agent stopped waits for the operator
    /// (`--resume`): its step's weights are served as they were.
    async fn open(file: &Config, _started_unix: u64) -> Result<Opened<Self>, AgentError> {
        let mut runtime = Runtime::load(&file.state_dir)?;
        let mut interrupted = false;
        for (service, r) in runtime.rollouts.iter_mut() {
            if r.pause("the agent restarted; `splitter rollout SERVICE --resume` goes on") {
                warn!(service = %service, "rollout paused at {}%: the agent restarted", r.percent());
                interrupted = true;
            }
        }
        if interrupted {
            runtime.save(&file.state_dir)?;
        }
        Ok(Opened { backing: Standalone { state_dir: file.state_dir.clone() }, config: file.clone(), runtime })
    }

    /// Planned from what the kernel serves now.
    fn first_plans(&self, effective: &Config, dp: &Dataplane) -> Result<Vec<ServicePlan>, PlanError> {
        plan_all(effective, |n| dp.previous(n))
    }

    async fn commit(
        &mut self,
        mut next: Runtime,
        _what: &str,
        config: &Config,
        runtime: &mut Runtime,
        serving: &mut Serving,
    ) -> Result<(), CommitError> {
        let (effective, _) = next.effective(config);
        // Planned before anything is saved: a change that cannot be planned is refused.
        let plans = plan_all(&effective, |n| serving.dp.previous(n))?;
        // Saved first, so a change that is live is never lost on a restart.
        next.save(&self.state_dir).map_err(CommitError::Save)?;
        // Only the changed service's table differs; apply leaves the others alone.
        if let Err(e) = serving.install(&effective, &plans) {
            if let Err(e) = runtime.save(&self.state_dir) {
                error!("restoring the saved runtime state failed: {e}");
            }
            return Err(CommitError::Apply(Box::new(e)));
        }
        *runtime = next;
        Ok(())
    }

    async fn publish(
        &mut self,
        next: Config,
        _current: &Config,
        runtime: &mut Runtime,
        serving: &mut Serving,
        _opts: &RunOptions,
    ) -> Result<(Config, Vec<ServicePlan>), ReloadError> {
        let mut next_runtime = runtime.clone();
        let (effective, dropped) = next_runtime.effective(&next);
        for name in dropped {
            warn!(service = %name, "runtime weights no longer fit the file's versions; the file's weights apply");
        }
        // Planned, then saved, then served; a failure at any step leaves
        // the saved state and the served one as they were.
        let plans = plan_all(&effective, |n| serving.dp.previous(n))?;
        let changed = next_runtime != *runtime;
        if changed {
            next_runtime.save(&self.state_dir).map_err(AgentError::from)?;
        }
        if let Err(e) = serving.install(&effective, &plans) {
            if changed {
                if let Err(e) = runtime.save(&self.state_dir) {
                    error!("restoring the saved runtime state failed: {e}");
                }
            }
            return Err(e.into());
        }
        *runtime = next_runtime;
        Ok((next, plans))
    }

    fn drives_rollouts(&self) -> bool {
        true
    }

    fn claim(&self, _service: &str, _rollout: &mut Rollout, _now: &rollout::Counts) {}

    async fn keep_progress(
        &mut self,
        _service: &str,
        next: Runtime,
        changed: bool,
        _config: &Config,
        runtime: &mut Runtime,
        _serving: &mut Serving,
    ) {
        if changed {
            if let Err(e) = next.save(&self.state_dir) {
                error!("saving the rollout state: {e}");
            }
        }
        *runtime = next;
    }

    async fn event(&mut self) -> Infallible {
        std::future::pending().await
    }

    fn on_event(&mut self, event: Infallible, _: &mut Config, _: &mut Runtime, _: &mut Serving) {
        match event {}
    }

    fn info(&self) -> Option<ClusterInfo> {
        None
    }
}
