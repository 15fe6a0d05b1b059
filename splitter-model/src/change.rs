//! One operator change → the next runtime state. The pure part of `weight`,
//! `flip`, `rollback`, `mirror` and `rollout`, shared by the agent (which
//! saves to `state_dir` or commits to the store, then serves) and by the CLI
//! when it changes an etcd store directly (`--etcd`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, L4Mirror, Service},
    rollout::{Counts, Origin, Plan, Rollout},
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

/// What a service's declared rollout (`services.NAME.rollout`) asks.
#[derive(Clone, Debug, PartialEq)]
pub enum Declared {
    /// The declaration appeared or changed: start its plan (aborting an
    /// unfinished rollout first).
    Start { service: String, plan: Plan },
    /// The declaration went: abort the rollout it started, if unfinished.
    Withdraw { service: String },
}

/// The declared rollouts of `file` against those `runtime` last acted on:
/// one change per service whose declaration appeared, changed or went.
pub fn declared(file: &Config, runtime: &Runtime) -> Vec<Declared> {
    let mut out = Vec::new();
    for (service, svc) in &file.services {
        let Some(plan) = svc.rollout.as_ref().map(|r| r.plan()) else { continue };
        if runtime.declared.get(service) != Some(&plan) {
            out.push(Declared::Start { service: service.clone(), plan });
        }
    }
    for service in runtime.declared.keys() {
        if file.services.get(service).is_none_or(|s| s.rollout.is_none()) {
            out.push(Declared::Withdraw { service: service.clone() });
        }
    }
    out
}

/// Carries out `change` on `runtime`, marking what it started as coming
/// from `origin`. The declaration is recorded even when its rollout cannot
/// start (the error says why; the same declaration is not tried again).
pub fn apply_declared(
    change: &Declared,
    origin: Origin,
    file: &Config,
    runtime: &Runtime,
    now: impl FnOnce(&Service, &str, &Weights) -> Counts,
) -> (Runtime, Result<Outcome, ChangeError>) {
    let mut recorded = runtime.clone();
    match change {
        Declared::Start { service, plan } => {
            recorded.declared.insert(service.clone(), plan.clone());
            let mut from = recorded.clone();
            if from.rollout_active(service) {
                match rollout(service, RolloutAction::Abort, file, &from, |_, _, _| Counts::default()) {
                    Ok(o) => from = o.next,
                    Err(e) => return (recorded, Err(e)),
                }
            }
            match rollout(service, RolloutAction::Start { plan: plan.clone() }, file, &from, now) {
                Ok(mut o) => {
                    if let Some(r) = o.next.rollouts.get_mut(service) {
                        r.origin = origin;
                        o.rollout = Some(r.clone());
                    }
                    o.message = format!("{} ({})", o.message, origin.describe(service));
                    (o.next.clone(), Ok(o))
                }
                Err(e) => (recorded, Err(e)),
            }
        }
        Declared::Withdraw { service } => {
            recorded.declared.remove(service);
            let declared_here = runtime.rollouts.get(service).is_some_and(|r| r.origin != Origin::Operator);
            if !declared_here || !recorded.rollout_active(service) || !file.services.contains_key(service) {
                let message = format!("{service}: its declared rollout is gone (nothing unfinished to abort)");
                let o = Outcome { next: recorded.clone(), weights: None, message, rollout: None };
                return (recorded, Ok(o));
            }
            match rollout(service, RolloutAction::Abort, file, &recorded, |_, _, _| Counts::default()) {
                Ok(mut o) => {
                    o.message =
                        format!("{service}: its declared rollout is gone: aborted; the weights from before are back");
                    (o.next.clone(), Ok(o))
                }
                Err(e) => (recorded, Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rollout: &str) -> Config {
        crate::config::from_yaml(&format!(
            "interfaces: {{clients: [eth0]}}\nservices:\n  shop:\n    listen: 203.0.113.10:80\n    protocol: tcp\n    versions: {{blue: [198.51.100.10:80], green: [198.51.100.20:80]}}\n    weights: {{blue: 100}}\n{rollout}"
        ))
        .unwrap()
    }

    fn apply(f: &Config, rt: &Runtime) -> Runtime {
        let mut rt = rt.clone();
        for change in declared(f, &rt) {
            let (next, outcome) = apply_declared(&change, Origin::File, f, &rt, |_, _, _| Counts::default());
            outcome.unwrap();
            rt = next;
        }
        rt
    }

    #[test]
    fn a_declared_rollout_starts_once_restarts_when_changed_and_is_aborted_when_removed() {
        let none = file("");
        let green = file("    rollout: { to: green, steps: [50, 100], interval: 1m, gates: { max_error_rate: 2%, max_p99: 250ms } }\n");
        let plan = green.services["shop"].rollout.as_ref().unwrap().plan();
        assert_eq!(
            (plan.interval_ms, plan.gates.max_error_rate, plan.gates.max_p99_ms),
            (60_000, Some(0.02), Some(250))
        );

        assert!(declared(&none, &Runtime::default()).is_empty());
        let rt = apply(&green, &Runtime::default());
        let r = &rt.rollouts["shop"];
        assert_eq!((r.origin, r.percent(), r.state.clone()), (Origin::File, 50, crate::rollout::State::Running));
        assert_eq!(rt.weights(&green, "shop").unwrap()["green"], 5_000);
        // The same declaration again (a reload, a restart) starts nothing;
        // neither does it once the rollout is over or was steered by hand.
        assert!(declared(&green, &rt).is_empty());
        let (paused, _) = rollout("shop", RolloutAction::Pause, &green, &rt, |_, _, _| Counts::default())
            .map(|o| (o.next, ()))
            .unwrap();
        assert!(declared(&green, &paused).is_empty());

        // A changed declaration aborts the unfinished rollout and starts the new one from the weights before.
        let faster = file("    rollout: { to: green, steps: [25, 100], interval: 1m }\n");
        let rt2 = apply(&faster, &rt);
        assert_eq!((rt2.rollouts["shop"].percent(), rt2.rollouts["shop"].before["green"]), (25, 0));
        assert_eq!(rt2.weights(&faster, "shop").unwrap()["green"], 2_500);

        // Removed: the unfinished rollout is aborted, the weights from before are back.
        let rt3 = apply(&none, &rt2);
        assert_eq!(rt3.rollouts["shop"].state, crate::rollout::State::Aborted);
        assert_eq!(rt3.weights(&none, "shop").unwrap()["green"], 0);
        assert!(rt3.declared.is_empty() && declared(&none, &rt3).is_empty());

        // A finished declared rollout leaves the weights at the canary when its declaration goes.
        let mut done = rt.clone();
        let o = rollout("shop", RolloutAction::Promote, &green, &done, |_, _, _| Counts::default()).unwrap();
        done = o.next;
        let after = apply(&none, &done);
        assert_eq!(after.rollouts["shop"].state, crate::rollout::State::Promoted);
        assert_eq!(after.weights(&none, "shop").unwrap()["green"], 10_000);

        // An operator's rollout is not aborted by a declaration going.
        let cli = Plan { steps: vec![10, 100], ..plan.clone() };
        let o = rollout("shop", RolloutAction::Start { plan: cli }, &none, &Runtime::default(), |_, _, _| {
            Counts::default()
        })
        .unwrap();
        let mut by_hand = o.next;
        by_hand.declared.insert("shop".into(), plan);
        let kept = apply(&none, &by_hand);
        assert_eq!(kept.rollouts["shop"].state, crate::rollout::State::Running);
    }

    #[test]
    fn declared_rollouts_are_checked_naming_the_key() {
        let err = |rollout: &str| {
            crate::config::from_yaml(&format!(
                "interfaces: {{clients: [eth0]}}\nservices:\n  shop:\n    listen: 203.0.113.10:80\n    protocol: tcp\n    versions: {{blue: [198.51.100.10:80], green: [198.51.100.20:80]}}\n    weights: {{blue: 1}}\n    rollout: {rollout}\n"
            ))
            .unwrap_err()
        };
        assert!(err("{ to: red }")
            .contains("services.shop.rollout.to: \"red\" is not a version of the service (versions: blue, green)"));
        assert!(err("{ to: green, steps: [50, 20] }")
            .contains("services.shop.rollout.steps, interval or gates: --steps [50, 20]"));
        assert!(err("{ to: green, interval: 10ms }").contains("interval"));
        let e = err("{ to: green, gates: { max_error_rate: 5x } }");
        assert!(e.contains("max_error_rate: 5x is not a share"), "{e}");
        assert!(err("{ to: green, analysis: [kpi] }")
            .contains("services.shop.rollout.analysis: \"kpi\" is not in analysis.metrics"));
        assert!(err("{ to: green, webhooks: [gate] }")
            .contains("services.shop.rollout.webhooks: \"gate\" is not in analysis.webhooks"));
        assert!(err("{ to: green, stepz: [1] }").contains("unknown field `stepz`"));
    }
}
