//! One operator change → the next runtime state. The pure part of `weight`,
//! `flip`, `rollback`, `mirror` and `rollout`, shared by the agent (which
//! saves to `state_dir` or commits to the store, then serves) and by the CLI
//! when it changes an etcd store directly (`--etcd`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, L4Mirror, Service},
    rollout::{Counts, Plan, Rollout},
    runtime::{ChangeError, Runtime, Weights},
};

/// A change an operator makes to a service's weights or mirroring.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Set the named versions' weights; the others keep theirs.
    Weight { service: String, weights: BTreeMap<String, u32> },
    /// All new connections of `service` to version `to`.
    Flip { service: String, to: String },
    /// Undo the last change to `service`.
    Rollback { service: String },
    /// Copy a sample of an l4 service's new flows out of an interface (`None`: off).
    Mirror { service: String, mirror: Option<L4Mirror> },
}

/// What an operator asks of a service's rollout.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum RolloutAction {
    Start {
        plan: Plan,
    },
    Pause,
    Resume,
    Abort,
    Promote,
    /// Answer a waiting confirm-promotion webhook by hand.
    Approve,
    /// Read it (changes nothing).
    Status,
}

/// What a request changes: the next runtime state and what to tell the operator.
#[derive(Debug)]
pub struct Outcome {
    pub next: Runtime,
    /// The service's weights after the change (none when they did not change).
    pub weights: Option<Weights>,
    /// `SERVICE: what happened`.
    pub message: String,
    /// The service's rollout after the change (rollout requests).
    pub rollout: Option<Rollout>,
}

/// Applies a weight, flip, rollback or mirror change to `runtime` (which it
/// leaves as it was). `file` is the config whose services the change names.
pub fn apply(change: &Change, file: &Config, runtime: &Runtime) -> Result<Outcome, ChangeError> {
    let mut next = runtime.clone();
    if let Change::Weight { service, .. } | Change::Flip { service, .. } | Change::Rollback { service } = change {
        if runtime.rollout_active(service) {
            return Err(ChangeError::RolloutActive(service.clone()));
        }
    }
    let (service, result) = match change {
        Change::Weight { service, weights } => {
            let changes: Vec<(String, u32)> = weights.iter().map(|(v, w)| (v.clone(), *w)).collect();
            (service, next.weight(file, service, &changes))
        }
        Change::Flip { service, to } => (service, next.flip(file, service, to)),
        Change::Rollback { service } => (service, next.rollback(file, service)),
        Change::Mirror { service, mirror } => {
            (service, next.mirror(file, service, mirror.clone()).and_then(|_| next.weights(file, service)))
        }
    };
    let weights = result?;
    let summary = match change {
        Change::Mirror { .. } => match next.mirror_of(file, service) {
            Some(m) => format!("mirroring {}% of new flows to {}", m.percent, m.interface),
            None => "mirroring off for new flows (flows already mirrored are copied to their end)".into(),
        },
        _ => weights.iter().map(|(v, w)| format!("{v}={w}")).collect::<Vec<_>>().join(" "),
    };
    Ok(Outcome { next, weights: Some(weights), message: format!("{service}: {summary}"), rollout: None })
}

/// The answer to `rollout SERVICE --status`: the service's last rollout.
pub fn rollout_status(runtime: &Runtime, service: &str) -> Result<Rollout, ChangeError> {
    runtime.rollouts.get(service).cloned().ok_or_else(|| ChangeError::NoRollout(service.to_owned()))
}

/// Starts or steers the rollout of `service`. `now` gives the counts a new
/// rollout starts from (service, canary, weights before); `Status` is not a
/// change and is answered by the caller.
pub fn rollout(
    service: &str,
    action: RolloutAction,
    file: &Config,
    runtime: &Runtime,
    now: impl FnOnce(&Service, &str, &Weights) -> Counts,
) -> Result<Outcome, ChangeError> {
    use RolloutAction as A;
    let Some(svc) = runtime.clone().effective(file).0.services.get(service).cloned() else {
        let known: Vec<_> = file.services.keys().cloned().collect();
        return Err(ChangeError::NoService(service.to_owned(), known.join(", ")));
    };
    let current = runtime.rollouts.get(service).cloned();
    let mut next = runtime.clone();
    let (weights, message) = match action {
        A::Status => return Err(ChangeError::NotAChange("--status")),
        A::Start { plan } => {
            plan.check()?;
            if !svc.versions.contains_key(&plan.to) {
                let known: Vec<_> = svc.versions.keys().cloned().collect();
                return Err(ChangeError::NoVersion {
                    service: service.to_owned(),
                    version: plan.to.clone(),
                    known: known.join(", "),
                });
            }
            if runtime.rollout_active(service) {
                return Err(ChangeError::RolloutInProgress(service.to_owned()));
            }
            if let Some(name) = plan.analysis.iter().find(|n| !file.analysis.metrics.contains_key(*n)) {
                let known: Vec<_> = file.analysis.metrics.keys().cloned().collect();
                return Err(ChangeError::NoAnalysisMetric { name: name.clone(), known: known.join(", ") });
            }
            let mut hooks = BTreeMap::new();
            for name in &plan.webhooks {
                let Some(hook) = file.analysis.webhooks.get(name) else {
                    let known: Vec<_> = file.analysis.webhooks.keys().cloned().collect();
                    return Err(ChangeError::NoWebhook { name: name.clone(), known: known.join(", ") });
                };
                hooks.insert(name.clone(), hook.kind);
            }
            let before = runtime.weights(file, service)?;
            let counts = now(&svc, &plan.to, &before);
            let (r, weights) = Rollout::start_with_hooks(plan, before, counts, hooks);
            let msg = if r.started() {
                format!("rollout of {} started at {}%", r.plan.to, r.percent())
            } else {
                format!("rollout of {} waits for its pre-rollout webhooks before step 1", r.plan.to)
            };
            next.rollouts.insert(service.to_owned(), r);
            (Some(weights), msg)
        }
        A::Approve => {
            let Some(mut r) = current else {
                return Err(ChangeError::NoRolloutToSteer(service.to_owned()));
            };
            if !r.approve() {
                let state = match &r.awaiting {
                    Some(a) if !r.state.is_over() => format!("held by {}", a.why),
                    _ => format!("{:?}", r.state),
                };
                return Err(ChangeError::NothingToApprove { service: service.to_owned(), state });
            }
            next.rollouts.insert(service.to_owned(), r);
            (None, "promotion approved; the last step starts at the next tick".to_owned())
        }
        A::Pause | A::Resume | A::Abort | A::Promote => {
            let Some(mut r) = current else {
                return Err(ChangeError::NoRolloutToSteer(service.to_owned()));
            };
            let (done, weights, what) = match action {
                A::Pause => (r.pause("paused by the operator"), None, "paused"),
                A::Resume => (r.resume(), None, "resumed"),
                A::Abort => {
                    let w = r.abort();
                    (w.is_some(), w, "aborted; the weights from before are back")
                }
                _ => {
                    let w = r.promote();
                    (w.is_some(), w, "promoted; the canary has every new connection")
                }
            };
            if !done {
                return Err(ChangeError::RolloutIs { service: service.to_owned(), state: format!("{:?}", r.state) });
            }
            next.rollouts.insert(service.to_owned(), r);
            (weights, what.to_owned())
        }
    };
    if let Some(w) = &weights {
        next.set_weights(file, service, w.clone())?;
    }
    let rollout = next.rollouts.get(service).cloned();
    Ok(Outcome { next, weights, message: format!("{service}: {message}"), rollout })
}
