//! One operator request → the next runtime state. The pure part of `weight`,
//! `flip`, `rollback`, `mirror` and `rollout`, shared by the agent (which
//! saves to `state_dir` or commits to the store, then serves) and by the CLI
//! when it changes an etcd store directly (`--etcd`).

use crate::{
    config::{Config, Service},
    control::{Request, RolloutAction},
    rollout::{Counts, Rollout},
    runtime::{ChangeError, Runtime, Weights},
};

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

/// Applies a weight, flip, rollback or mirror request to `runtime` (which it
/// leaves as it was). `file` is the config whose services the request names.
pub fn request(req: &Request, file: &Config, runtime: &Runtime) -> Result<Outcome, String> {
    let mut next = runtime.clone();
    if let Request::Weight { service, .. } | Request::Flip { service, .. } | Request::Rollback { service } = req {
        if runtime.rollout_active(service) {
            return Err(ChangeError::RolloutActive(service.clone()).to_string());
        }
    }
    let (service, change) = match req {
        Request::Weight { service, weights } => {
            let changes: Vec<(String, u32)> = weights.iter().map(|(v, w)| (v.clone(), *w)).collect();
            (service, next.weight(file, service, &changes))
        }
        Request::Flip { service, to } => (service, next.flip(file, service, to)),
        Request::Rollback { service } => (service, next.rollback(file, service)),
        Request::Mirror { service, mirror } => {
            (service, next.mirror(file, service, mirror.clone()).and_then(|_| next.weights(file, service)))
        }
        Request::Rollout { service, action } => {
            return rollout(service, action.clone(), file, runtime, |_, _, _| Counts::default())
        }
        Request::Status | Request::Down | Request::Diffs { .. } => {
            return Err(format!("`{}` changes nothing", req.op()));
        }
    };
    let weights = change.map_err(|e| e.to_string())?;
    let summary = match req {
        Request::Mirror { .. } => match next.mirror_of(file, service) {
            Some(m) => format!("mirroring {}% of new flows to {}", m.percent, m.interface),
            None => "mirroring off for new flows (flows already mirrored are copied to their end)".into(),
        },
        _ => weights.iter().map(|(v, w)| format!("{v}={w}")).collect::<Vec<_>>().join(" "),
    };
    Ok(Outcome { next, weights: Some(weights), message: format!("{service}: {summary}"), rollout: None })
}

/// The answer to `rollout SERVICE --status`.
pub fn rollout_status(runtime: &Runtime, service: &str) -> crate::control::Response {
    use crate::control::Response;
    match runtime.rollouts.get(service) {
        Some(r) => Response { rollout: Some(r.clone()), ..Response::ok(format!("{service}: rollout")) },
        None => Response::fail(format!("{service}: no rollout yet")),
    }
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
) -> Result<Outcome, String> {
    use RolloutAction as A;
    let Some(svc) = runtime.clone().effective(file).0.services.get(service).cloned() else {
        let known: Vec<_> = file.services.keys().cloned().collect();
        return Err(format!("no service {service:?} (services: {})", known.join(", ")));
    };
    let current = runtime.rollouts.get(service).cloned();
    let mut next = runtime.clone();
    let (weights, message) = match action {
        A::Status => return Err(format!("{service}: `--status` changes nothing")),
        A::Start { plan } => {
            plan.check().map_err(|e| e.to_string())?;
            if !svc.versions.contains_key(&plan.to) {
                let known: Vec<_> = svc.versions.keys().cloned().collect();
                return Err(format!(
                    "service {service:?} has no version {:?} (versions: {})",
                    plan.to,
                    known.join(", ")
                ));
            }
            if runtime.rollout_active(service) {
                return Err(format!("{service}: a rollout is already in progress; --abort or --promote it first"));
            }
            let before = runtime.weights(file, service).map_err(|e| e.to_string())?;
            let counts = now(&svc, &plan.to, &before);
            let (r, weights) = Rollout::start(plan, before, counts);
            let msg = format!("rollout of {} started at {}%", r.plan.to, r.percent());
            next.rollouts.insert(service.to_owned(), r);
            (Some(weights), msg)
        }
        A::Pause | A::Resume | A::Abort | A::Promote => {
            let Some(mut r) = current else {
                return Err(format!("{service}: no rollout to steer; start one with --to VERSION"));
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
                return Err(format!("{service}: the rollout is {:?}; nothing to do", r.state));
            }
            next.rollouts.insert(service.to_owned(), r);
            (weights, what.to_owned())
        }
    };
    if let Some(w) = &weights {
        next.set_weights(file, service, w.clone()).map_err(|e| e.to_string())?;
    }
    let rollout = next.rollouts.get(service).cloned();
    Ok(Outcome { next, weights, message: format!("{service}: {message}"), rollout })
}
