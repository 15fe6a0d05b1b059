//! Rollout webhooks for the agent's loop: asks the hooks of the gate a
//! rollout waits at (on their own task, off the loop), keeps their answers
//! for that gate and asks again while any says no; and tells event hooks
//! what happened, in order, from one task of their own (never waited for,
//! never changing the rollout).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use splitter_model::{
    analysis::Analysis,
    rollout::{Rollout, State},
    webhook::{Answer, Kind, Payload, Webhook},
};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// How soon a gate whose hooks said no is asked again.
const RETRY: Duration = Duration::from_secs(2);
/// Events waiting for their hooks; beyond this they are dropped (logged).
const EVENT_QUEUE: usize = 1024;

/// Which gate of which rollout answers are for: the step it opens and the
/// counts the step started from (a new rollout starts from others).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct GateKey {
    step: usize,
    base: (u64, u64),
}

impl GateKey {
    fn of(r: &Rollout) -> Option<GateKey> {
        let a = r.awaiting.as_ref()?;
        Some(GateKey { step: a.step, base: (r.base.canary.placed, r.base.baseline.placed) })
    }
}

/// A gate's hooks answered.
pub(super) struct Done {
    service: String,
    key: GateKey,
    answers: BTreeMap<String, Answer>,
}

pub(super) struct Hooks {
    held: BTreeMap<String, (GateKey, BTreeMap<String, Answer>, Instant)>,
    asking: BTreeSet<String>,
    tx: mpsc::UnboundedSender<Done>,
    /// To the task that calls event hooks, one event after the other.
    events: mpsc::Sender<(Vec<(String, Webhook)>, Payload)>,
}

/// What a hook is sent about `r` of `service`: `phase`, `reason`, and the
/// step (from 1) and share it names.
fn payload(service: &str, r: &Rollout, step: usize, phase: &str, reason: String) -> Payload {
    Payload {
        service: service.to_owned(),
        canary: r.plan.to.clone(),
        baseline: r.baseline(),
        step: step + 1,
        weight: r.plan.steps.get(step).copied().unwrap_or(100),
        phase: phase.to_owned(),
        reason,
        text: None,
    }
}

impl Hooks {
    /// The gates' asker, and the task that delivers events (it ends with
    /// the agent's runtime).
    pub fn new() -> (Hooks, mpsc::UnboundedReceiver<Done>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, mut queue) = mpsc::channel::<(Vec<(String, Webhook)>, Payload)>(EVENT_QUEUE);
        tokio::spawn(async move {
            while let Some((hooks, p)) = queue.recv().await {
                for (name, hook) in hooks {
                    let a = crate::analysis::webhook::call(&name, &hook, &p).await;
                    if !a.ok {
                        warn!(
                            service = p.service,
                            webhook = name,
                            phase = p.phase,
                            answer = a.why,
                            "event webhook failed"
                        );
                    }
                }
            }
        });
        (Hooks { held: BTreeMap::new(), asking: BTreeSet::new(), tx, events }, rx)
    }

    /// The answers held for the gate `service`'s rollout waits at.
    pub fn answers(&self, service: &str, r: &Rollout) -> BTreeMap<String, Answer> {
        match (self.held.get(service), GateKey::of(r)) {
            (Some((key, answers, _)), Some(now)) if *key == now => answers.clone(),
            _ => BTreeMap::new(),
        }
    }

    /// Asks the hooks of the gate `r` waits at, unless they are being asked,
    /// or all said 2xx, or said no less than `RETRY` ago.
    pub fn ask_if_due(&mut self, service: &str, r: &Rollout, config: &Analysis) {
        let (Some(key), Some(awaiting)) = (GateKey::of(r), &r.awaiting) else { return };
        if self.asking.contains(service) {
            return;
        }
        if let Some((held, answers, at)) = self.held.get(service) {
            if *held == key && (answers.values().all(|a| a.ok) || at.elapsed() < RETRY) {
                return;
            }
        }
        let names: Vec<(String, Kind)> = r
            .hooks
            .iter()
            .filter(|(_, k)| awaiting.kinds.contains(k) && !(**k == Kind::ConfirmPromotion && r.approved))
            .map(|(n, k)| (n.clone(), *k))
            .collect();
        let reason = if awaiting.step == 0 {
            format!("the rollout of {} asks to give it its first share", r.plan.to)
        } else {
            format!(
                "step {} ({}%) passed its gates; the next gives {} {}%",
                awaiting.step,
                r.plan.steps[awaiting.step - 1],
                r.plan.to,
                r.plan.steps[awaiting.step]
            )
        };
        let mut calls = Vec::new();
        for (name, kind) in names {
            let p = payload(service, r, awaiting.step, kind.as_str(), reason.clone());
            calls.push((name.clone(), config.webhooks.get(&name).cloned(), p));
        }
        let (tx, service) = (self.tx.clone(), service.to_owned());
        self.asking.insert(service.clone());
        tokio::spawn(async move {
            let mut answers = BTreeMap::new();
            for (name, hook, p) in calls {
                let answer = match hook {
                    Some(hook) => crate::analysis::webhook::call(&name, &hook, &p).await,
                    None => Answer { ok: false, why: format!("{name} is no longer in analysis.webhooks") },
                };
                answers.insert(name, answer);
            }
            let _ = tx.send(Done { service, key, answers });
        });
    }

    /// A gate's hooks answered: held for the gate, and logged.
    pub fn done(&mut self, d: Done) {
        self.asking.remove(&d.service);
        for (name, a) in &d.answers {
            if a.ok {
                info!(service = d.service, webhook = name, answer = a.why, "rollout webhook: go on");
            } else {
                warn!(service = d.service, webhook = name, answer = a.why, "rollout webhook: holds the rollout");
            }
        }
        self.held.insert(d.service, (d.key, d.answers, Instant::now()));
    }
}

/// What happened to a rollout between two of its states, as an event
/// hook's phase and reason; `None`: nothing to tell.
pub(super) fn what_happened(before: &Rollout, after: &Rollout) -> Option<(&'static str, String)> {
    let to = &after.plan.to;
    Some(match &after.state {
        State::RolledBack { reason } if before.state != after.state => ("rolled-back", reason.clone()),
        State::Aborted if before.state != after.state => ("aborted", "aborted by the operator".to_owned()),
        State::Promoted if before.state != after.state => ("promoted", format!("{to} has every new connection")),
        State::Paused { why } if !matches!(before.state, State::Paused { .. }) => ("paused", why.clone()),
        State::Running if matches!(before.state, State::Paused { .. }) => ("resumed", "resumed".to_owned()),
        State::Running if after.step != before.step || (after.started() && !before.started()) => {
            ("step", format!("step {} of {}: {to} at {}%", after.step + 1, after.plan.steps.len(), after.percent()))
        }
        State::Running if after.awaiting.as_ref().map(|a| a.step) != before.awaiting.as_ref().map(|a| a.step) => {
            let a = after.awaiting.as_ref()?;
            ("waiting", format!("held before step {}: {}", a.step + 1, a.why))
        }
        _ => return None,
    })
}

impl Hooks {
    /// Tells `r`'s event hooks (of `config`) that `phase` happened, with a
    /// Slack-compatible `text`, after the events before it; a failing hook
    /// is logged.
    pub fn tell(&self, service: &str, r: &Rollout, phase: &str, reason: String, config: &Analysis) {
        let hooks: Vec<_> = r
            .hooks
            .iter()
            .filter(|(_, k)| **k == Kind::Event)
            .filter_map(|(name, _)| Some((name.clone(), config.webhooks.get(name)?.clone())))
            .collect();
        if hooks.is_empty() {
            return;
        }
        let mut p = payload(service, r, r.step, phase, reason);
        p.weight = r.percent();
        p.text = Some(format!("splitter: {service}: rollout of {} {phase}: {}", p.canary, p.reason));
        if self.events.try_send((hooks, p)).is_err() {
            warn!(
                service,
                phase, "event webhooks: {EVENT_QUEUE} events already wait for their hooks; this one is dropped"
            );
        }
    }
}
