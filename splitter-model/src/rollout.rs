//! `splitter rollout`: moving a service to a version in steps, judging the
//! canary against the baseline at every step from the agent's own
//! measurements, and rolling back on its own when a gate is breached. Pure:
//! the agent feeds it the time and cumulative counts, and carries out the
//! weights it asks for through the same path as `weight`.

use std::{collections::BTreeMap, ops::RangeInclusive, time::Duration};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    analysis::Judged,
    config::Weights,
    observe::VersionSample,
    webhook::{Answer, Kind},
};

/// What the operator asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The version being rolled out (the canary).
    pub to: String,
    /// Its share at each step, in percent, rising, ending at 100.
    pub steps: Vec<u32>,
    /// How long each step lasts (and the window it is judged over).
    pub interval_ms: u64,
    #[serde(default)]
    pub gates: Gates,
    /// Metrics of `analysis.metrics` each step is also judged on (asked of
    /// Prometheus once the step's interval is over).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<String>,
    /// Hooks of `analysis.webhooks` the rollout calls: the gating kinds hold
    /// a step until they answer 2xx, event hooks are told what happens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<String>,
}

/// When a step's canary counts as bad. Rates are fractions (0.01 = 1 %).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    /// Errors (l7: 5xx and the proxy's 502/504; l4: resets from the
    /// endpoints) per request or flow, above the baseline's.
    pub max_error_rate: Option<f64>,
    /// L7: the canary's 99th percentile response time.
    pub max_p99_ms: Option<u64>,
    /// L7: the share of mirrored requests whose answers differ.
    pub max_diff_rate: Option<f64>,
    /// Requests (l7) or new flows (l4) the canary needs in a step before it
    /// is judged; with fewer, the step waits.
    pub min_requests: u64,
    /// How long a step waits for `min_requests` before the rollout is rolled
    /// back rather than promoted blind.
    pub max_wait_ms: u64,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            max_error_rate: Some(0.01),
            max_p99_ms: None,
            max_diff_rate: None,
            min_requests: 100,
            max_wait_ms: 600_000,
        }
    }
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// A step lasts (`--interval`, `interval_ms`) 1s to 30 days.
pub const INTERVAL_MS: RangeInclusive<u64> = 1_000..=30 * DAY_MS;
/// A step waits for traffic (`--max-wait`, `gates.max_wait_ms`) at most 30 days.
pub const MAX_WAIT_MS: RangeInclusive<u64> = 0..=30 * DAY_MS;
/// The p99 gate (`--max-p99`, `gates.max_p99_ms`) is 1ms to 1 hour.
pub const MAX_P99_MS: RangeInclusive<u64> = 1..=HOUR_MS;

/// Milliseconds as people write them: `1s`, `30days`, `1h 30m`.
pub fn human_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("--steps is empty: give the canary's share at each step, e.g. 1,5,25,50,100")]
    NoSteps,
    #[error("--steps {0:?}: each step must be 1 to 100 percent, rising, and the last must be 100")]
    BadSteps(Vec<u32>),
    #[error(
        "{field} is {value} ms, out of range: use {} to {} ({} to {} ms)",
        human_ms(*.range.start()),
        human_ms(*.range.end()),
        .range.start(),
        .range.end()
    )]
    OutOfRange { field: &'static str, value: u64, range: RangeInclusive<u64> },
    #[error("{field} is {value}: it must be a fraction from 0 to 1 (e.g. 1% or 0.01)")]
    BadRate { field: &'static str, value: String },
}

impl Plan {
    pub fn check(&self) -> Result<(), PlanError> {
        if self.steps.is_empty() {
            return Err(PlanError::NoSteps);
        }
        let rising = self.steps.windows(2).all(|w| w[0] < w[1]);
        if !rising || self.steps[0] == 0 || self.steps.last() != Some(&100) {
            return Err(PlanError::BadSteps(self.steps.clone()));
        }
        for (field, value, range) in [
            ("--interval (interval_ms)", Some(self.interval_ms), INTERVAL_MS),
            ("--max-wait (gates.max_wait_ms)", Some(self.gates.max_wait_ms), MAX_WAIT_MS),
            ("--max-p99 (gates.max_p99_ms)", self.gates.max_p99_ms, MAX_P99_MS),
        ] {
            if let Some(value) = value.filter(|v| !range.contains(v)) {
                return Err(PlanError::OutOfRange { field, value, range });
            }
        }
        for (field, rate) in [
            ("--max-error-rate (gates.max_error_rate)", self.gates.max_error_rate),
            ("--max-diff-rate (gates.max_diff_rate)", self.gates.max_diff_rate),
        ] {
            if let Some(r) = rate.filter(|r| !(0.0..=1.0).contains(r)) {
                return Err(PlanError::BadRate { field, value: r.to_string() });
            }
        }
        Ok(())
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// `services.NAME.rollout`: a rollout declared in the config (or the
/// shared store). The agent starts it when the declaration appears or
/// changes, and aborts it when the declaration goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    pub to: String,
    #[serde(default = "default_steps")]
    pub steps: Vec<u32>,
    #[serde(default = "default_interval", with = "crate::config::duration")]
    pub interval: Duration,
    #[serde(default)]
    pub gates: DeclaredGates,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<String>,
}

/// `rollout.gates` as the config writes them (shares as `1%`, durations as `250ms`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeclaredGates {
    #[serde(deserialize_with = "crate::analysis::share")]
    pub max_error_rate: f64,
    #[serde(with = "optional_duration", skip_serializing_if = "Option::is_none")]
    pub max_p99: Option<Duration>,
    #[serde(deserialize_with = "share_opt", skip_serializing_if = "Option::is_none")]
    pub max_diff_rate: Option<f64>,
    pub min_requests: u64,
    #[serde(with = "crate::config::duration")]
    pub max_wait: Duration,
}

impl Default for DeclaredGates {
    fn default() -> Self {
        let g = Gates::default();
        DeclaredGates {
            max_error_rate: g.max_error_rate.unwrap_or(0.01),
            max_p99: None,
            max_diff_rate: None,
            min_requests: g.min_requests,
            max_wait: Duration::from_millis(g.max_wait_ms),
        }
    }
}

fn default_steps() -> Vec<u32> {
    vec![1, 5, 25, 50, 100]
}

fn default_interval() -> Duration {
    Duration::from_secs(30)
}

fn share_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    crate::analysis::share(d).map(Some)
}

mod optional_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => crate::config::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        crate::config::duration::deserialize(d).map(Some)
    }
}

impl Declared {
    /// The plan it declares (what `splitter rollout` would send).
    pub fn plan(&self) -> Plan {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Plan {
            to: self.to.clone(),
            steps: self.steps.clone(),
            interval_ms: ms(self.interval),
            gates: Gates {
                max_error_rate: Some(self.gates.max_error_rate),
                max_p99_ms: self.gates.max_p99.map(ms),
                max_diff_rate: self.gates.max_diff_rate,
                min_requests: self.gates.min_requests,
                max_wait_ms: ms(self.gates.max_wait),
            },
            analysis: self.analysis.clone(),
            webhooks: self.webhooks.clone(),
        }
    }
}

/// Who started a rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `splitter rollout` or the HTTP API.
    #[default]
    Operator,
    /// `services.NAME.rollout` of the config file.
    File,
    /// `services.NAME.rollout` of the shared store's services.
    Store,
}

impl Origin {
    pub fn describe(self, service: &str) -> String {
        match self {
            Origin::Operator => "started by an operator (CLI or API)".into(),
            Origin::File => format!("declared in the config file (services.{service}.rollout)"),
            Origin::Store => format!("declared in the shared store (services.{service}.rollout)"),
        }
    }
}

/// Where a rollout is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// At step `step`, judged until the interval is over.
    Running,
    /// Held at its step by the operator (or an agent restart).
    Paused { why: String },
    /// The canary has 100 % and passed its last step.
    Promoted,
    /// A gate was breached (or the step waited too long for traffic): the
    /// weights from before the rollout are back.
    RolledBack { reason: String },
    /// Stopped by the operator; the weights from before are back.
    Aborted,
}

impl State {
    pub fn is_over(&self) -> bool {
        matches!(self, State::Promoted | State::RolledBack { .. } | State::Aborted)
    }
}

/// One gate's reading at the last evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub gate: String,
    /// The canary's value (and the baseline's where the gate compares).
    pub value: Option<f64>,
    pub baseline: Option<f64>,
    /// NaN (`null` in JSON) where the gate's name says the limit (analysis
    /// metrics: `min 0.02`).
    #[serde(deserialize_with = "nan_if_null")]
    pub limit: f64,
    pub ok: bool,
    /// No value to judge (an analysis metric Prometheus gave nothing for):
    /// the step waits; never a pass.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inconclusive: bool,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A rollout of one service, as the agent keeps (and persists) it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub plan: Plan,
    /// The service's weights when the rollout started: what a rollback restores.
    pub before: Weights,
    /// Index into `plan.steps`.
    pub step: usize,
    /// Milliseconds into the current step (advances only while running).
    pub elapsed_ms: u64,
    /// Milliseconds the current step has waited for traffic past its interval.
    pub waited_ms: u64,
    pub state: State,
    /// The canary's and baseline's counts when the step started.
    pub base: Counts,
    /// The gates as last judged.
    pub readings: Vec<Reading>,
    /// Canary requests/flows in the step so far.
    pub step_requests: u64,
    /// With a shared store: the node whose counts `base` holds (the leader
    /// that drives the rollout). Another leader re-bases on its own counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The plan's webhooks with their kinds, as the config had them when
    /// the rollout started.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hooks: BTreeMap<String, Kind>,
    /// The gate the next step waits at for its webhooks' 2xx (or `--approve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting: Option<Awaiting>,
    /// The waiting confirm-promotion was answered by hand (`--approve`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approved: bool,
    /// Who started it.
    #[serde(default)]
    pub origin: Origin,
}

/// A step held at its gate until its webhooks answer 2xx.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Awaiting {
    /// The step (index into `plan.steps`) the gate opens; 0: the canary has
    /// had no traffic yet (pre-rollout).
    pub step: usize,
    /// The kinds asked at this gate.
    pub kinds: Vec<Kind>,
    /// What holds it: the first hook without a 2xx, and its answer.
    pub why: String,
}

/// The counts a rollout judges: canary and baseline (every other version
/// that had weight before, summed), plus the service's mirror comparisons.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// An l4 service: errors are the endpoints' resets, there is no latency.
    pub l4: bool,
    pub canary: VersionSample,
    pub baseline: VersionSample,
    /// Mirror comparisons (l7): compared and differing.
    pub compared: u64,
    pub differ: u64,
    /// With `health:`: the canary's endpoints and how many are out of
    /// service now (not cumulative). 0 endpoints: not checked.
    #[serde(default)]
    pub canary_endpoints: u32,
    #[serde(default)]
    pub canary_down: u32,
    /// The plan's analysis metrics as judged for the current step (not
    /// cumulative; absent until the agent has asked).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub analysis: BTreeMap<String, Judged>,
    /// The answers of the webhooks asked at the gate the rollout waits at
    /// (none until the agent has asked).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hooks: BTreeMap<String, Answer>,
}

impl Counts {
    fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            l4: self.l4,
            canary: self.canary.since(&earlier.canary),
            baseline: self.baseline.since(&earlier.baseline),
            compared: self.compared.saturating_sub(earlier.compared),
            differ: self.differ.saturating_sub(earlier.differ),
            canary_endpoints: self.canary_endpoints,
            canary_down: self.canary_down,
            analysis: self.analysis.clone(),
            hooks: self.hooks.clone(),
        }
    }
}

/// What the agent must do after a tick.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Nothing,
    /// Serve these weights (a new step, or the weights from before).
    SetWeights(Weights),
}

/// The weights of step `percent`: the canary gets `percent` of 10,000, the
/// other versions share the rest in proportion to their weights before (all
/// of it to one of them, the first, when none had weight).
pub fn step_weights(before: &Weights, canary: &str, percent: u32) -> Weights {
    let rest = 10_000 - percent.min(100) * 100;
    let others: u64 = before.iter().filter(|(v, _)| *v != canary).map(|(_, w)| u64::from(*w)).sum();
    let mut out = Weights::new();
    let mut given = 0;
    let n_others = before.keys().filter(|v| *v != canary).count();
    for (i, (v, w)) in before.iter().filter(|(v, _)| *v != canary).enumerate() {
        let share = if others == 0 {
            if i == 0 {
                rest
            } else {
                0
            }
        } else if i + 1 == n_others {
            rest - given
        } else {
            (u64::from(rest) * u64::from(*w) / others) as u32
        };
        given += share;
        out.insert(v.clone(), share);
    }
    out.insert(canary.to_owned(), percent.min(100) * 100);
    out
}

impl Rollout {
    /// A rollout starting now from `before`, with the first step's weights.
    pub fn start(plan: Plan, before: Weights, now: Counts) -> (Rollout, Weights) {
        Rollout::start_with_hooks(plan, before, now, BTreeMap::new())
    }

    /// A rollout starting now from `before` that calls `hooks` (the plan's
    /// webhooks and their kinds): with pre-rollout hooks the weights stay
    /// as they were until they answer 2xx; else the first step's weights.
    pub fn start_with_hooks(
        plan: Plan,
        before: Weights,
        now: Counts,
        hooks: BTreeMap<String, Kind>,
    ) -> (Rollout, Weights) {
        let weights = step_weights(&before, &plan.to, plan.steps[0]);
        let mut r = Rollout {
            plan,
            before,
            step: 0,
            elapsed_ms: 0,
            waited_ms: 0,
            state: State::Running,
            base: now,
            readings: Vec::new(),
            step_requests: 0,
            driver: None,
            hooks,
            awaiting: None,
            approved: false,
            origin: Origin::Operator,
        };
        let kinds = r.gate_kinds(0);
        if kinds.is_empty() {
            return (r, weights);
        }
        r.awaiting = Some(Awaiting { step: 0, kinds, why: "asking the pre-rollout webhooks".into() });
        let unchanged = r.before.clone();
        (r, unchanged)
    }

    /// The baseline: the version that had the most weight before, other
    /// than the canary (what analysis queries and webhooks name).
    pub fn baseline(&self) -> String {
        self.before
            .iter()
            .filter(|(v, _)| **v != self.plan.to)
            .max_by_key(|(_, w)| **w)
            .map_or_else(String::new, |(v, _)| v.clone())
    }

    /// Whether the canary has had its first step (pre-rollout hooks passed).
    pub fn started(&self) -> bool {
        !matches!(&self.awaiting, Some(a) if a.step == 0)
    }

    /// The canary's share now, in percent (0 until pre-rollout hooks pass).
    pub fn percent(&self) -> u32 {
        if self.started() {
            self.plan.steps[self.step]
        } else {
            0
        }
    }

    /// The gating kinds entering step `step` waits for, of those the plan
    /// has: pre-rollout before the first, confirm-step before each later
    /// one, confirm-promotion before the one at 100 %.
    fn gate_kinds(&self, step: usize) -> Vec<Kind> {
        let last = step + 1 == self.plan.steps.len();
        [(Kind::PreRollout, step == 0), (Kind::ConfirmStep, step > 0), (Kind::ConfirmPromotion, last)]
            .into_iter()
            .filter(|(kind, here)| *here && self.hooks.values().any(|k| k == kind))
            .map(|(kind, _)| kind)
            .collect()
    }

    /// Whether every hook of `kinds` answered 2xx (a confirm-promotion hook
    /// also by `--approve`); else what holds the gate.
    fn gate_open(&self, kinds: &[Kind], answers: &BTreeMap<String, Answer>) -> Result<(), String> {
        for (name, kind) in self.hooks.iter().filter(|(_, k)| kinds.contains(k)) {
            if *kind == Kind::ConfirmPromotion && self.approved {
                continue;
            }
            match answers.get(name) {
                Some(a) if a.ok => {}
                Some(a) => return Err(format!("{} webhook {name}: {}", kind.as_str(), a.why)),
                None => return Err(format!("{} webhook {name}: waiting for its answer", kind.as_str())),
            }
        }
        Ok(())
    }

    /// `--approve`: answers a waiting confirm-promotion by hand. False when
    /// none waits.
    pub fn approve(&mut self) -> bool {
        let waits = self.awaiting.as_ref().is_some_and(|a| a.kinds.contains(&Kind::ConfirmPromotion));
        if self.state.is_over() || !waits {
            return false;
        }
        self.approved = true;
        true
    }

    /// Advances by `dt` with the cumulative `now` counts: judges the step,
    /// and moves on, rolls back or finishes.
    pub fn tick(&mut self, dt: Duration, now: &Counts) -> Action {
        if self.state != State::Running {
            return Action::Nothing;
        }
        // Saturating: a rollout persisted by an older agent was not bounded by `check`.
        self.elapsed_ms = self.elapsed_ms.saturating_add(u64::try_from(dt.as_millis()).unwrap_or(u64::MAX));
        if !self.started() {
            return self.before_first_step(now);
        }
        let d = now.since(&self.base);
        let l4 = d.l4;
        let requests = d.canary.placed;
        self.step_requests = requests;
        self.readings = self.judge(&d, l4);
        // An unhealthy canary endpoint is no statistic: judged at once (a
        // canary with none healthy gets no traffic to wait for).
        if d.canary_down > 0 {
            let reason = if d.canary_down == d.canary_endpoints {
                format!(
                    "step {} ({}%): the canary {} has no healthy endpoint ({} of {} down)",
                    self.step + 1,
                    self.percent(),
                    self.plan.to,
                    d.canary_down,
                    d.canary_endpoints
                )
            } else {
                format!(
                    "step {} ({}%): {} of the canary's {} endpoints unhealthy",
                    self.step + 1,
                    self.percent(),
                    d.canary_down,
                    d.canary_endpoints
                )
            };
            self.state = State::RolledBack { reason };
            return Action::SetWeights(self.before.clone());
        }
        let enough = requests >= self.plan.gates.min_requests.max(1);
        // The analysis metrics, once asked at the step's end: a breach rolls
        // back; a missing or inconclusive one holds the step (never a pass).
        let mut pending = None;
        for name in &self.plan.analysis {
            match d.analysis.get(name) {
                Some(j) if j.ok == Some(false) => {
                    let reason = format!(
                        "step {} ({}%): analysis {name} is {} ({}; limit {})",
                        self.step + 1,
                        self.percent(),
                        fmt(j.value),
                        j.why,
                        j.limit
                    );
                    self.state = State::RolledBack { reason };
                    return Action::SetWeights(self.before.clone());
                }
                Some(j) if j.ok == Some(true) => {}
                Some(j) => pending = pending.or(Some(format!("analysis {name} inconclusive: {}", j.why))),
                None => pending = pending.or(Some(format!("analysis {name} not read yet"))),
            }
        }
        let judged = enough && pending.is_none();
        if enough {
            if let Some(bad) = self.readings.iter().find(|r| !r.ok && !r.inconclusive) {
                let reason = format!(
                    "step {} ({}%): {} {} over the limit {} (baseline {})",
                    self.step + 1,
                    self.percent(),
                    bad.gate,
                    fmt(bad.value),
                    bad.limit,
                    fmt(bad.baseline)
                );
                self.state = State::RolledBack { reason };
                return Action::SetWeights(self.before.clone());
            }
        }
        if self.elapsed_ms < self.plan.interval_ms {
            return Action::Nothing;
        }
        if !judged {
            self.waited_ms = self.elapsed_ms - self.plan.interval_ms;
            if self.waited_ms >= self.plan.gates.max_wait_ms {
                let reason = match pending.filter(|_| enough) {
                    Some(why) => format!(
                        "step {} ({}%): {why} {}s past the step; not promoting blind",
                        self.step + 1,
                        self.percent(),
                        self.waited_ms / 1000
                    ),
                    None => format!(
                        "step {} ({}%): only {requests} canary requests/flows in {}s, {} needed to judge; not promoting blind",
                        self.step + 1,
                        self.percent(),
                        self.elapsed_ms / 1000,
                        self.plan.gates.min_requests
                    ),
                };
                self.state = State::RolledBack { reason };
                return Action::SetWeights(self.before.clone());
            }
            return Action::Nothing;
        }
        if self.step + 1 == self.plan.steps.len() {
            self.state = State::Promoted;
            return Action::Nothing;
        }
        let kinds = self.gate_kinds(self.step + 1);
        if let Err(why) = self.gate_open(&kinds, &now.hooks) {
            self.waited_ms = self.elapsed_ms - self.plan.interval_ms;
            if self.waited_ms >= self.plan.gates.max_wait_ms {
                let reason = format!(
                    "step {} ({}%): {why}; {}s past the step, not going on",
                    self.step + 1,
                    self.percent(),
                    self.waited_ms / 1000
                );
                self.state = State::RolledBack { reason };
                return Action::SetWeights(self.before.clone());
            }
            self.awaiting = Some(Awaiting { step: self.step + 1, kinds, why });
            return Action::Nothing;
        }
        self.awaiting = None;
        self.approved = false;
        self.step += 1;
        self.elapsed_ms = 0;
        self.waited_ms = 0;
        self.step_requests = 0;
        self.readings.clear();
        self.base = now.clone();
        Action::SetWeights(step_weights(&self.before, &self.plan.to, self.percent()))
    }

    /// A tick while pre-rollout hooks hold the first step: the canary gets
    /// its first share once they all answer 2xx; past `max_wait` the
    /// rollout ends without it having had any.
    fn before_first_step(&mut self, now: &Counts) -> Action {
        let kinds = self.gate_kinds(0);
        self.waited_ms = self.elapsed_ms;
        match self.gate_open(&kinds, &now.hooks) {
            Ok(()) => {
                self.awaiting = None;
                self.elapsed_ms = 0;
                self.waited_ms = 0;
                self.base = now.clone();
                Action::SetWeights(step_weights(&self.before, &self.plan.to, self.percent()))
            }
            Err(why) if self.waited_ms >= self.plan.gates.max_wait_ms => {
                let reason = format!("before step 1: {why}; {}s waited, not starting", self.waited_ms / 1000);
                self.state = State::RolledBack { reason };
                Action::SetWeights(self.before.clone())
            }
            Err(why) => {
                self.awaiting = Some(Awaiting { step: 0, kinds, why });
                Action::Nothing
            }
        }
    }

    fn judge(&self, d: &Counts, l4: bool) -> Vec<Reading> {
        let g = &self.plan.gates;
        let mut out = Vec::new();
        let rate = |n: u64, of: u64| (of > 0).then(|| n as f64 / of as f64);
        if let Some(limit) = g.max_error_rate {
            let (c, b) = if l4 {
                (rate(d.canary.resets, d.canary.placed), rate(d.baseline.resets, d.baseline.placed))
            } else {
                (rate(d.canary.errors, d.canary.placed), rate(d.baseline.errors, d.baseline.placed))
            };
            // Judged on the canary's excess over the baseline: a failing
            // baseline does not make the canary bad.
            let ok = c.is_none_or(|c| c - b.unwrap_or(0.0) <= limit);
            out.push(Reading { gate: "error rate".into(), value: c, baseline: b, limit, ok, inconclusive: false });
        }
        if let Some(ms) = g.max_p99_ms {
            let limit = ms as f64 / 1000.0;
            let c = d.canary.latency.quantile(0.99);
            let ok = c.is_none_or(|c| c <= limit);
            out.push(Reading {
                gate: "p99 seconds".into(),
                value: c,
                baseline: d.baseline.latency.quantile(0.99),
                limit,
                ok,
                inconclusive: false,
            });
        }
        if d.canary_endpoints > 0 {
            out.push(Reading {
                gate: "canary endpoints down".into(),
                value: Some(f64::from(d.canary_down)),
                baseline: None,
                limit: 0.0,
                ok: d.canary_down == 0,
                inconclusive: false,
            });
        }
        if let Some(limit) = g.max_diff_rate {
            let c = rate(d.differ, d.compared);
            let ok = c.is_none_or(|c| c <= limit);
            out.push(Reading {
                gate: "mirror diff rate".into(),
                value: c,
                baseline: None,
                limit,
                ok,
                inconclusive: false,
            });
        }
        for (name, j) in self.plan.analysis.iter().filter_map(|n| Some((n, d.analysis.get(n)?))) {
            out.push(Reading {
                gate: format!("analysis {name} ({})", j.limit),
                value: j.value,
                baseline: j.baseline,
                limit: f64::NAN,
                ok: j.ok == Some(true),
                inconclusive: j.ok.is_none(),
            });
        }
        out
    }

    pub fn pause(&mut self, why: &str) -> bool {
        if self.state != State::Running {
            return false;
        }
        self.state = State::Paused { why: why.into() };
        true
    }

    pub fn resume(&mut self) -> bool {
        if !matches!(self.state, State::Paused { .. }) {
            return false;
        }
        self.state = State::Running;
        true
    }

    /// Stops the rollout; the weights from before are to be restored.
    pub fn abort(&mut self) -> Option<Weights> {
        if self.state.is_over() {
            return None;
        }
        self.state = State::Aborted;
        Some(self.before.clone())
    }

    /// Skips the remaining steps: the canary gets everything now.
    pub fn promote(&mut self) -> Option<Weights> {
        if self.state.is_over() {
            return None;
        }
        self.step = self.plan.steps.len() - 1;
        self.awaiting = None;
        self.state = State::Promoted;
        Some(step_weights(&self.before, &self.plan.to, 100))
    }
}

impl Rollout {
    /// The plan's analysis metrics as last judged: name and reading.
    pub fn analysis_readings(&self) -> impl Iterator<Item = (&str, &Reading)> {
        self.plan.analysis.iter().filter_map(|name| {
            let prefix = format!("analysis {name} (");
            Some((name.as_str(), self.readings.iter().find(|r| r.gate.starts_with(&prefix))?))
        })
    }

    /// One line for people: where it is, the time in the step, the gates.
    pub fn describe(&self) -> String {
        let gates: Vec<String> = self
            .readings
            .iter()
            .map(|r| {
                let limit = if r.limit.is_nan() { String::new() } else { format!(", limit {}", r.limit) };
                let verdict = match (r.ok, r.inconclusive) {
                    (true, _) => "ok",
                    (false, true) => "inconclusive",
                    (false, false) => "BREACHED",
                };
                format!("{} {} (baseline {}{limit}) {verdict}", r.gate, fmt(r.value), fmt(r.baseline))
            })
            .collect();
        let (state, why) = match &self.state {
            State::Running => ("running", String::new()),
            State::Paused { why } => ("paused", format!(" — {why}")),
            State::Promoted => ("promoted", String::new()),
            State::RolledBack { reason } => ("ROLLED BACK", format!(" — {reason}")),
            State::Aborted => ("aborted", String::new()),
        };
        format!(
            "{} to {}: step {}/{} at {}%, {}s of {}s, {} canary requests/flows (judged from {}); {}{}{}{why}",
            state,
            self.plan.to,
            self.step + 1,
            self.plan.steps.len(),
            self.percent(),
            self.elapsed_ms / 1000,
            self.plan.interval_ms / 1000,
            self.step_requests,
            self.plan.gates.min_requests,
            gates.join("; "),
            if gates.is_empty() { "no gate judged yet" } else { "" },
            match &self.awaiting {
                Some(a) => format!(
                    "; held {}s before step {} by {}{}",
                    self.waited_ms / 1000,
                    a.step + 1,
                    a.why,
                    if self.approved { " (promotion approved by hand)" } else { "" }
                ),
                None if self.waited_ms > 0 => format!("; waiting for traffic {}s", self.waited_ms / 1000),
                None => String::new(),
            }
        )
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn before() -> Weights {
        [("blue".to_owned(), 90), ("green".to_owned(), 0), ("grey".to_owned(), 10)].into()
    }

    fn plan(steps: &[u32]) -> Plan {
        Plan {
            to: "green".into(),
            steps: steps.to_vec(),
            interval_ms: 10_000,
            gates: Gates { min_requests: 10, max_wait_ms: 30_000, ..Gates::default() },
            analysis: Vec::new(),
            webhooks: Vec::new(),
        }
    }

    /// Cumulative counts: canary and baseline requests and errors.
    fn counts(c: u64, c_err: u64, b: u64, b_err: u64) -> Counts {
        Counts {
            canary: VersionSample { placed: c, errors: c_err, ..Default::default() },
            baseline: VersionSample { placed: b, errors: b_err, ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn step_weights_give_the_canary_its_share_and_the_rest_in_proportion() {
        let w = step_weights(&before(), "green", 5);
        assert_eq!(w["green"], 500);
        assert_eq!((w["blue"], w["grey"]), (8550, 950));
        assert_eq!(w.values().sum::<u32>(), 10_000);
        let all = step_weights(&before(), "green", 100);
        assert_eq!((all["green"], all["blue"], all["grey"]), (10_000, 0, 0));
    }

    #[test]
    fn a_healthy_canary_walks_every_step_to_promotion() {
        let (mut r, w) = Rollout::start(plan(&[10, 50, 100]), before(), counts(0, 0, 0, 0));
        assert_eq!(w["green"], 1000);
        let sec = Duration::from_secs(1);
        let mut seen = vec![];
        for t in 1..=40u64 {
            if let Action::SetWeights(w) = r.tick(sec, &counts(5 * t, 0, 20 * t, 0)) {
                seen.push(w["green"]);
            }
        }
        assert_eq!(seen, [5000, 10_000]);
        assert_eq!(r.state, State::Promoted);
    }

    #[test]
    fn errors_above_the_baseline_roll_back_at_once_and_restore_the_weights() {
        let (mut r, _) = Rollout::start(plan(&[10, 100]), before(), counts(0, 0, 0, 0));
        // 1 % of the baseline fails too: not the canary's fault.
        assert_eq!(r.tick(Duration::from_secs(1), &counts(20, 0, 200, 2)), Action::Nothing);
        // Then the canary fails 30 % of its requests: rolled back mid-step.
        let a = r.tick(Duration::from_secs(1), &counts(40, 6, 400, 4));
        assert_eq!(a, Action::SetWeights(before()));
        let State::RolledBack { reason } = &r.state else { panic!("{:?}", r.state) };
        assert!(reason.contains("error rate"), "{reason}");
        assert_eq!(r.tick(Duration::from_secs(1), &counts(40, 6, 400, 4)), Action::Nothing, "over");
    }

    #[test]
    fn an_unhealthy_canary_endpoint_rolls_back_at_once_without_waiting_for_traffic() {
        let health = |down: u32| Counts { canary_endpoints: 2, canary_down: down, ..counts(0, 0, 0, 0) };
        let (mut r, _) = Rollout::start(plan(&[10, 100]), before(), health(0));
        // No traffic yet and both endpoints healthy: waiting.
        assert_eq!(r.tick(Duration::from_secs(1), &health(0)), Action::Nothing);
        assert!(r.readings.iter().any(|g| g.gate == "canary endpoints down" && g.ok), "{:?}", r.readings);
        assert_eq!(r.tick(Duration::from_secs(1), &health(1)), Action::SetWeights(before()));
        let State::RolledBack { reason } = &r.state else { panic!("{:?}", r.state) };
        assert!(reason.contains("1 of the canary's 2 endpoints unhealthy"), "{reason}");
        // A canary version entirely down says so.
        let (mut r, _) = Rollout::start(plan(&[10, 100]), before(), health(0));
        assert_eq!(r.tick(Duration::from_secs(1), &health(2)), Action::SetWeights(before()));
        let State::RolledBack { reason } = &r.state else { panic!("{:?}", r.state) };
        assert!(reason.contains("the canary green has no healthy endpoint (2 of 2 down)"), "{reason}");
        // Without checks (0 endpoints known) nothing of this applies.
        let (mut r, _) = Rollout::start(plan(&[10, 100]), before(), counts(0, 0, 0, 0));
        assert_eq!(r.tick(Duration::from_secs(1), &counts(0, 0, 0, 0)), Action::Nothing);
        assert!(r.readings.iter().all(|g| g.gate != "canary endpoints down"));
    }

    #[test]
    fn too_little_traffic_waits_then_rolls_back_never_promotes_blind() {
        let (mut r, _) = Rollout::start(plan(&[50, 100]), before(), counts(0, 0, 0, 0));
        for _ in 0..39 {
            assert_eq!(r.tick(Duration::from_secs(1), &counts(3, 0, 3, 0)), Action::Nothing);
            assert_eq!(r.state, State::Running);
        }
        assert_eq!(r.tick(Duration::from_secs(1), &counts(3, 0, 3, 0)), Action::SetWeights(before()));
        assert!(matches!(&r.state, State::RolledBack { reason } if reason.contains("not promoting blind")));
    }

    #[test]
    fn pause_holds_the_step_resume_goes_on_abort_and_promote_end_it() {
        let (mut r, _) = Rollout::start(plan(&[10, 100]), before(), counts(0, 0, 0, 0));
        assert!(r.pause("operator"));
        for _ in 0..20 {
            assert_eq!(r.tick(Duration::from_secs(1), &counts(50, 0, 50, 0)), Action::Nothing);
        }
        assert_eq!(r.step, 0, "paused: no step taken");
        assert!(r.resume());
        assert!(!r.resume(), "already running");
        let mut promote = r.clone();
        assert_eq!(r.abort(), Some(before()));
        assert_eq!(r.state, State::Aborted);
        assert_eq!(r.abort(), None);
        assert_eq!(promote.promote().map(|w| w["green"]), Some(10_000));
        assert_eq!(promote.state, State::Promoted);
    }

    #[test]
    fn bad_plans_are_explained() {
        let bad =
            |steps: &[u32], interval_ms: u64| Plan { interval_ms, ..plan(steps) }.check().unwrap_err().to_string();
        assert!(bad(&[], 10_000).contains("empty"));
        assert!(bad(&[5, 1, 100], 10_000).contains("rising"));
        assert!(bad(&[5, 50], 10_000).contains("last must be 100"));
        let short = bad(&[5, 100], 10);
        assert!(short.contains("--interval (interval_ms) is 10 ms") && short.contains("use 1s to"), "{short}");
        let mut p = plan(&[100]);
        p.gates.max_error_rate = Some(3.0);
        let rate = p.check().unwrap_err().to_string();
        assert!(rate.contains("--max-error-rate") && rate.contains("is 3:"), "{rate}");
        plan(&[1, 5, 25, 50, 100]).check().unwrap();
    }

    #[test]
    fn durations_out_of_range_in_a_control_request_are_refused() {
        let check = |json: &str| serde_json::from_str::<Plan>(json).unwrap().check();
        let huge = check(r#"{"to": "green", "steps": [100], "interval_ms": 18446744073709551615}"#).unwrap_err();
        assert_eq!(
            huge,
            PlanError::OutOfRange { field: "--interval (interval_ms)", value: u64::MAX, range: INTERVAL_MS }
        );
        let msg = huge.to_string();
        assert!(msg.contains("18446744073709551615 ms") && msg.contains("use 1s to 30days"), "{msg}");
        for (gates, want) in [
            (r#"{"max_wait_ms": 2592000001}"#, "gates.max_wait_ms) is 2592000001 ms"),
            (r#"{"max_p99_ms": 3600001}"#, "gates.max_p99_ms) is 3600001 ms, out of range: use 1ms to 1h"),
            (r#"{"max_p99_ms": 0}"#, "gates.max_p99_ms) is 0 ms"),
        ] {
            let json = format!(r#"{{"to": "green", "steps": [100], "interval_ms": 30000, "gates": {gates}}}"#);
            let msg = check(&json).unwrap_err().to_string();
            assert!(msg.contains(want), "{gates}: want {want:?} in {msg}");
        }
        check(r#"{"to": "green", "steps": [100], "interval_ms": 2592000000, "gates": {"max_wait_ms": 0}}"#)
            .expect("30 days and no wait are in range");
    }

    #[test]
    fn a_long_tick_cannot_overflow_the_step_clock() {
        let (mut r, _) = Rollout::start(plan(&[10, 100]), before(), counts(0, 0, 0, 0));
        r.elapsed_ms = u64::MAX - 5;
        r.tick(Duration::MAX, &counts(0, 0, 0, 0));
        assert_eq!(r.elapsed_ms, u64::MAX);
    }

    #[test]
    fn analysis_metrics_judge_each_step_and_an_inconclusive_one_holds_then_rolls_back() {
        use crate::analysis::Judged;
        let judged = |value: Option<f64>, ok: Option<bool>, why: &str| Judged {
            value,
            baseline: None,
            limit: "min 0.02".into(),
            ok,
            why: why.into(),
        };
        let with = |c: u64, j: Option<Judged>| Counts {
            analysis: j.into_iter().map(|j| ("conversion".to_owned(), j)).collect(),
            ..counts(c, 0, c, 0)
        };
        let plan = Plan { analysis: vec!["conversion".into()], ..plan(&[50, 100]) };
        let step = Duration::from_secs(10);

        // Enough traffic and healthy own gates, but the metric not read yet: the step waits.
        let (mut r, _) = Rollout::start(plan.clone(), before(), counts(0, 0, 0, 0));
        assert_eq!(r.tick(step, &with(50, None)), Action::Nothing);
        assert_eq!((r.step, &r.state), (0, &State::Running));
        // A pass moves on; its reading shows.
        let pass = Some(judged(Some(0.05), Some(true), ""));
        assert!(matches!(r.tick(Duration::from_secs(1), &with(60, pass)), Action::SetWeights(_)));
        assert_eq!(r.step, 1);
        // A breach rolls back at once, naming the metric and its value.
        let breach = Some(judged(Some(0.01), Some(false), "below its min 0.02"));
        assert_eq!(r.tick(step, &with(120, breach)), Action::SetWeights(before()));
        let State::RolledBack { reason } = &r.state else { panic!("{:?}", r.state) };
        assert!(reason.contains("analysis conversion is 0.0100") && reason.contains("below its min 0.02"), "{reason}");

        // Inconclusive (Prometheus unreachable): held, shown, then rolled back after max_wait.
        let (mut r, _) = Rollout::start(plan, before(), counts(0, 0, 0, 0));
        let unknown = || Some(judged(None, None, "connection refused"));
        assert_eq!(r.tick(step, &with(50, unknown())), Action::Nothing);
        assert!(r.readings.iter().any(|g| g.inconclusive && g.gate.starts_with("analysis conversion")));
        assert!(r.describe().contains("inconclusive"), "{}", r.describe());
        assert_eq!(r.tick(Duration::from_secs(20), &with(60, unknown())), Action::Nothing);
        assert_eq!(r.tick(Duration::from_secs(10), &with(70, unknown())), Action::SetWeights(before()));
        let State::RolledBack { reason } = &r.state else { panic!("{:?}", r.state) };
        assert!(reason.contains("analysis conversion inconclusive: connection refused"), "{reason}");
        assert!(reason.contains("not promoting blind"), "{reason}");
        // A persisted reading (NaN limit written as null) reads back.
        let json = serde_json::to_string(&r).unwrap();
        let back: Rollout = serde_json::from_str(&json).unwrap();
        assert!(back.readings.iter().any(|g| g.limit.is_nan()));
    }

    #[test]
    fn webhooks_gate_the_first_step_each_later_one_and_the_promotion_and_approve_answers_by_hand() {
        let hooks: BTreeMap<String, Kind> = [
            ("load".to_owned(), Kind::PreRollout),
            ("gate".to_owned(), Kind::ConfirmStep),
            ("approve".to_owned(), Kind::ConfirmPromotion),
            ("notify".to_owned(), Kind::Event),
        ]
        .into();
        let answer = |ok: bool, why: &str| Answer { ok, why: why.into() };
        let with = |c: u64, answers: &[(&str, bool)]| Counts {
            hooks: answers
                .iter()
                .map(|(n, ok)| (n.to_string(), answer(*ok, if *ok { "HTTP 200" } else { "HTTP 503" })))
                .collect(),
            ..counts(c, 0, c, 0)
        };
        let step = Duration::from_secs(10);
        let tick = Duration::from_secs(1);

        // pre-rollout: the weights stay as they were until the hook says 2xx.
        let (mut r, w) = Rollout::start_with_hooks(plan(&[10, 50, 100]), before(), counts(0, 0, 0, 0), hooks.clone());
        assert_eq!((w, r.started(), r.percent()), (before(), false, 0));
        assert_eq!(r.tick(tick, &with(0, &[])), Action::Nothing);
        assert_eq!(r.tick(tick, &with(0, &[("load", false)])), Action::Nothing);
        assert!(r.describe().contains("pre-rollout webhook load: HTTP 503"), "{}", r.describe());
        let Action::SetWeights(w) = r.tick(tick, &with(0, &[("load", true)])) else { panic!("{:?}", r.state) };
        assert_eq!((w["green"], r.percent(), r.elapsed_ms), (1_000, 10, 0));

        // The step passes its gates, then waits for confirm-step; a step's
        // own breach still rolls back while it waits (checked below).
        assert_eq!(r.tick(step, &with(50, &[])), Action::Nothing);
        assert_eq!(r.awaiting.as_ref().map(|a| (a.step, a.kinds.clone())), Some((1, vec![Kind::ConfirmStep])));
        assert_eq!(r.tick(tick, &with(60, &[("gate", false)])), Action::Nothing);
        assert_eq!((r.step, r.waited_ms), (0, 1_000));
        // Only the kinds of this gate count: a 2xx from another does not open it.
        assert_eq!(r.tick(tick, &with(70, &[("gate", false), ("approve", true)])), Action::Nothing);
        assert!(matches!(r.tick(tick, &with(80, &[("gate", true)])), Action::SetWeights(_)));
        assert_eq!((r.step, r.percent(), &r.awaiting), (1, 50, &None));

        // Entering 100 % needs confirm-step and confirm-promotion; --approve
        // stands for the latter only, and only while it waits.
        assert!(!r.approve(), "nothing waits for approval yet");
        assert_eq!(r.tick(step, &with(200, &[("gate", true)])), Action::Nothing);
        assert_eq!(r.awaiting.as_ref().unwrap().kinds, vec![Kind::ConfirmStep, Kind::ConfirmPromotion]);
        assert!(r.describe().contains("confirm-promotion webhook approve"), "{}", r.describe());
        assert!(r.approve());
        assert_eq!(r.tick(tick, &with(210, &[("approve", false)])), Action::Nothing, "confirm-step still says no");
        assert!(matches!(r.tick(tick, &with(220, &[("gate", true), ("approve", false)])), Action::SetWeights(_)));
        assert_eq!((r.percent(), r.approved), (100, false));
        assert_eq!(r.tick(step, &with(400, &[])), Action::Nothing);
        assert_eq!(r.state, State::Promoted, "no gate after the last step");

        // A gate that never opens rolls back after max_wait, naming the hook.
        let (mut r, _) = Rollout::start_with_hooks(plan(&[10, 100]), before(), counts(0, 0, 0, 0), hooks.clone());
        let _ = r.tick(tick, &with(0, &[("load", true)]));
        assert_eq!(r.tick(step, &with(50, &[])), Action::Nothing);
        let no = [("gate", false), ("approve", true)];
        assert_eq!(r.tick(Duration::from_secs(29), &with(60, &no)), Action::Nothing);
        // Meanwhile the step is still judged: errors roll back at once.
        let mut breached = r.clone();
        assert_eq!(breached.tick(tick, &counts(100, 40, 100, 0)), Action::SetWeights(before()));
        assert_eq!(r.tick(tick, &with(70, &no)), Action::SetWeights(before()));
        let State::RolledBack { reason } = &r.state else { panic!("{:?}", r.state) };
        assert!(reason.contains("confirm-step webhook gate: HTTP 503") && reason.contains("not going on"), "{reason}");

        // A pre-rollout hook that never answers 2xx: rolled back without the canary having had traffic.
        let (mut r, _) = Rollout::start_with_hooks(plan(&[10, 100]), before(), counts(0, 0, 0, 0), hooks);
        assert_eq!(r.tick(Duration::from_secs(31), &with(0, &[("load", false)])), Action::SetWeights(before()));
        let State::RolledBack { reason } = &r.state else { panic!("{:?}", r.state) };
        assert!(reason.starts_with("before step 1: pre-rollout webhook load: HTTP 503"), "{reason}");
        // Persisted and read back with its hooks.
        let back: Rollout = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
