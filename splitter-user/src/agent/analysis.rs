//! Rollout steps' release analysis for the agent's loop: once a step's
//! interval is over it asks (on its own task, off the loop) for the plan's
//! analysis metrics, keeps the verdicts for that step, and asks again while
//! any is inconclusive; the rollout reads them with the agent's counts.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use splitter_model::{
    analysis::{Analysis, Judged, Vars},
    rollout::Rollout,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// How soon an inconclusive step is asked again.
const RETRY: Duration = Duration::from_secs(2);

/// Which step of which rollout a verdict is for: a new step, or a new
/// rollout, starts from other counts.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct StepKey {
    step: usize,
    base: (u64, u64),
}

impl StepKey {
    fn of(r: &Rollout) -> StepKey {
        StepKey { step: r.step, base: (r.base.canary.placed, r.base.baseline.placed) }
    }
}

/// A finished evaluation.
pub(super) struct Done {
    service: String,
    key: StepKey,
    judged: BTreeMap<String, Judged>,
}

pub(super) struct Steps {
    held: BTreeMap<String, (StepKey, BTreeMap<String, Judged>, Instant)>,
    asking: BTreeSet<String>,
    tx: mpsc::UnboundedSender<Done>,
}

impl Steps {
    pub fn new() -> (Steps, mpsc::UnboundedReceiver<Done>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Steps { held: BTreeMap::new(), asking: BTreeSet::new(), tx }, rx)
    }

    /// The verdicts `service`'s rollout has for its current step.
    pub fn verdicts(&self, service: &str, r: &Rollout) -> BTreeMap<String, Judged> {
        match self.held.get(service) {
            Some((key, judged, _)) if *key == StepKey::of(r) => judged.clone(),
            _ => BTreeMap::new(),
        }
    }

    /// Asks for `r`'s metrics when its step is over (after `dt` more) and
    /// nothing conclusive is held for it, nor being asked.
    pub fn ask_if_due(&mut self, service: &str, r: &Rollout, dt: Duration, config: &Analysis) {
        let over = r.elapsed_ms.saturating_add(dt.as_millis() as u64) >= r.plan.interval_ms;
        if r.plan.analysis.is_empty() || !over || self.asking.contains(service) {
            return;
        }
        let key = StepKey::of(r);
        if let Some((held, judged, at)) = self.held.get(service) {
            let conclusive = judged.values().all(|j| j.ok.is_some());
            if *held == key && (conclusive || at.elapsed() < RETRY) {
                return;
            }
        }
        let vars = Vars {
            service: service.to_owned(),
            canary: r.plan.to.clone(),
            baseline: r.baseline(),
            step: r.step + 1,
            interval: r.plan.interval(),
        };
        let (config, names, tx, service) =
            (config.clone(), r.plan.analysis.clone(), self.tx.clone(), service.to_owned());
        self.asking.insert(service.clone());
        tokio::spawn(async move {
            let judged = crate::analysis::evaluate(&config, &names, &vars).await;
            let _ = tx.send(Done { service, key, judged });
        });
    }

    /// An evaluation came back: held for its step, and logged.
    pub fn done(&mut self, d: Done) {
        self.asking.remove(&d.service);
        for (name, j) in &d.judged {
            let value = j.value.map_or_else(|| "none".to_owned(), |v| v.to_string());
            match j.ok {
                Some(true) => info!(service = d.service, metric = name, value, limit = j.limit, "rollout analysis: ok"),
                Some(false) => {
                    warn!(
                        service = d.service,
                        metric = name,
                        value,
                        limit = j.limit,
                        why = j.why,
                        "rollout analysis: BREACHED"
                    )
                }
                None => warn!(service = d.service, metric = name, why = j.why, "rollout analysis: inconclusive"),
            }
        }
        self.held.insert(d.service, (d.key, d.judged, Instant::now()));
    }
}
