//! The agent's side of endpoint health: a tracker per checked endpoint,
//! fed by the active checks (`crate::health`), the proxy's ejections (l7
//! passive) and the kernel's endpoint counters (l4 passive); a change of
//! verdict is logged, counted, and served at once (`Serving::reinstall`:
//! the same table swap as a weight change). Health is this node's own: it
//! is never stored or shared.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::SystemTime,
};

use splitter_model::{
    config::{health::Health, Config, Mode},
    health::{self, Down, Tracker, Transition},
    plan::service_key,
};
use tracing::{info, warn};

use super::{backing::Backing, Agent};
use crate::{
    control::{EndpointHealth, ServiceHealth},
    dataplane::Dataplane,
    health::{Checker, Probe},
    l7::Ejection,
};

/// Each checked service's `health:`.
fn settings(effective: &Config) -> BTreeMap<String, Health> {
    effective.services.iter().filter_map(|(n, s)| Some((n.clone(), s.health.clone()?))).collect()
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// An l4 endpoint's counters as the passive check last read them, and the
/// connections it was given and the packets it sent in the interval before.
#[derive(Clone, Copy, Default)]
struct Seen {
    flows: u64,
    packets_out: u64,
    resets: u64,
    new_flows: u64,
    replies: u64,
}

/// Every checked endpoint's tracker and what the passive checks remember.
pub(super) struct HealthState {
    checker: Checker,
    /// Service → endpoint → its health.
    trackers: BTreeMap<String, BTreeMap<SocketAddr, Tracker>>,
    /// Each checked service's `health:` (kept to the config by `sync`).
    settings: BTreeMap<String, Health>,
    /// Transitions by (service, endpoint, "down" | "up"), for the metrics.
    pub transitions: BTreeMap<(String, SocketAddr, &'static str), u64>,
    /// l4 passive: each endpoint's counters at the last tick and its run of
    /// failures.
    seen: BTreeMap<(String, SocketAddr), Seen>,
    runs: BTreeMap<(String, SocketAddr), u64>,
}

impl HealthState {
    /// Trackers for the endpoints of `effective`'s services with `health:`,
    /// starting from what the kernel's live tables have out of service (so a
    /// restart does not flap); the checks started. Inside the tokio runtime.
    pub fn start(effective: &Config, dp: &Dataplane) -> (HealthState, tokio::sync::mpsc::Receiver<Probe>) {
        let (mut checker, probes) = Checker::new();
        checker.reconcile(effective);
        let mut state = HealthState {
            checker,
            trackers: BTreeMap::new(),
            settings: BTreeMap::new(),
            transitions: BTreeMap::new(),
            seen: BTreeMap::new(),
            runs: BTreeMap::new(),
        };
        let now = now_ms();
        state.settings = settings(effective);
        for (name, svc) in effective.services.iter().filter(|(_, s)| s.health.is_some()) {
            let down = match (svc.mode, dp.live_table(name)) {
                (Mode::L4, Some((versions, table))) => {
                    // A version "weighs" when its weight earns it a slot (a
                    // tiny weight beside huge ones may round to none).
                    let weights = svc.version_weights();
                    let bps = splitter_model::plan::basis_points(&weights.iter().map(|(_, w)| *w).collect::<Vec<_>>());
                    let weighs = |v: &str| weights.iter().zip(&bps).any(|((n, _), b)| *n == v && *b > 0);
                    health::down_in_table(table, versions, &weighs)
                }
                _ => BTreeSet::new(),
            };
            let trackers = state.trackers.entry(name.clone()).or_default();
            for ep in svc.versions.values().flatten() {
                let up = !down.contains(ep);
                let why = if up { "configured" } else { "out of service in the kernel's table when the agent started" };
                trackers.entry(*ep).or_insert_with(|| Tracker::new(up, why, now));
                if !up {
                    warn!(service = %name, endpoint = %ep, "endpoint DOWN: {why}; checks decide from here");
                }
            }
        }
        (state, probes)
    }

    /// Keeps the trackers and checks to `effective`'s endpoints: new ones
    /// start up, gone ones are forgotten.
    pub fn sync(&mut self, effective: &Config) {
        self.checker.reconcile(effective);
        self.settings = settings(effective);
        let now = now_ms();
        let wanted: BTreeMap<&String, BTreeSet<SocketAddr>> = effective
            .services
            .iter()
            .filter(|(_, s)| s.health.is_some())
            .map(|(n, s)| (n, s.versions.values().flatten().copied().collect()))
            .collect();
        self.trackers.retain(|name, _| wanted.contains_key(name));
        for (name, endpoints) in wanted {
            let trackers = self.trackers.entry(name.clone()).or_default();
            trackers.retain(|ep, _| endpoints.contains(ep));
            for ep in endpoints {
                trackers.entry(ep).or_insert_with(|| Tracker::new(true, "configured", now));
            }
        }
        self.seen.retain(|(s, e), _| self.trackers.get(s).is_some_and(|t| t.contains_key(e)));
        self.runs.retain(|(s, e), _| self.trackers.get(s).is_some_and(|t| t.contains_key(e)));
    }

    /// The endpoints out of service now.
    pub fn down(&self) -> Down {
        self.trackers
            .iter()
            .map(|(name, t)| (name.clone(), t.iter().filter(|(_, t)| !t.up).map(|(e, _)| *e).collect()))
            .filter(|(_, d): &(String, BTreeSet<SocketAddr>)| !d.is_empty())
            .collect()
    }

    /// Each endpoint's health as `status` shows it, with each version's
    /// share as configured and as served.
    pub fn report(&self, effective: &Config) -> BTreeMap<String, ServiceHealth> {
        let down = self.down();
        let mut out = BTreeMap::new();
        for (name, trackers) in &self.trackers {
            let Some(svc) = effective.services.get(name) else { continue };
            let out_of_service = down.get(name).cloned().unwrap_or_default();
            let weights: Vec<u32> = svc.version_weights().iter().map(|(_, w)| *w).collect();
            let bps = splitter_model::plan::basis_points(&weights);
            let endpoints = svc
                .versions
                .iter()
                .flat_map(|(v, eps)| eps.iter().map(move |e| (v, e)))
                .filter_map(|(v, e)| {
                    let t = trackers.get(e)?;
                    Some(EndpointHealth {
                        version: v.clone(),
                        endpoint: *e,
                        up: t.up,
                        ejected: t.ejected(),
                        since_unix_ms: t.since_ms,
                        reason: t.reason.clone(),
                        last_error: t.last_error.clone(),
                    })
                })
                .collect();
            out.insert(
                name.clone(),
                ServiceHealth { versions: health::describe(svc, &bps, &|e| out_of_service.contains(e)), endpoints },
            );
        }
        out
    }

    /// Applies `f` to the tracker of `endpoint` of `service`; the
    /// transition it made, if any, logged and counted.
    fn update(
        &mut self,
        service: &str,
        endpoint: SocketAddr,
        f: impl FnOnce(&mut Tracker) -> Option<Transition>,
    ) -> bool {
        let Some(t) = self.trackers.get_mut(service).and_then(|t| t.get_mut(&endpoint)) else { return false };
        let Some(change) = f(t) else { return false };
        if change.up {
            info!(service, %endpoint, "endpoint UP: {}", change.reason);
        } else {
            warn!(service, %endpoint, "endpoint DOWN: {}", change.reason);
        }
        let to = if change.up { "up" } else { "down" };
        *self.transitions.entry((service.to_owned(), endpoint, to)).or_default() += 1;
        true
    }

    /// How many endpoints are checked.
    pub fn checked(&self) -> usize {
        self.checker.len()
    }
}

impl<B: Backing> Agent<B> {
    /// Checks' results (those of a slot arrive together): a table swap
    /// once if any verdict changed.
    pub(super) fn on_probes(&mut self, probes: impl Iterator<Item = Probe>) {
        let now = now_ms();
        let mut changed = false;
        for probe in probes {
            let Some(h) = self.health.settings.get(&probe.service).cloned() else { continue };
            changed |= self.health.update(&probe.service, probe.endpoint, |t| t.check(probe.result, &h, now));
        }
        if changed {
            self.serve_health();
        }
    }

    /// The proxy's passive check ejected an endpoint.
    pub(super) fn on_ejection(&mut self, e: Ejection) {
        let Some(p) = self.health.settings.get(&e.service).and_then(|h| h.passive.clone()) else { return };
        let now = now_ms();
        let until = now + u64::try_from(p.eject_for.as_millis()).unwrap_or(u64::MAX / 2);
        if self.health.update(&e.service, e.endpoint, |t| t.eject(&e.why, until, now)) {
            self.serve_health();
        }
    }

    /// Every second: trackers kept to the config, ejections that are over
    /// ended, and the l4 passive check read from the kernel's counters.
    pub(super) fn on_health_tick(&mut self) {
        let (effective, _) = self.runtime.clone().effective(&self.config);
        self.health.sync(&effective);
        let now = now_ms();
        let mut changed = false;
        let checked: Vec<(String, SocketAddr)> =
            self.health.trackers.iter().flat_map(|(s, t)| t.keys().map(move |e| (s.clone(), *e))).collect();
        for (service, endpoint) in &checked {
            changed |= self.health.update(service, *endpoint, |t| t.expire(now));
        }
        for (name, svc) in effective.services.iter().filter(|(_, s)| s.mode == Mode::L4) {
            let Some(p) = svc.health.as_ref().and_then(|h| h.passive.clone()) else { continue };
            let Some(live) = self.sources.pinned.service(&service_key(svc)).ok().flatten() else { continue };
            let until = now + u64::try_from(p.eject_for.as_millis()).unwrap_or(u64::MAX / 2);
            for (i, ep) in svc.versions.values().flatten().enumerate() {
                let Some(st) = live.endpoint_stats.get(i) else { continue };
                let key = (name.clone(), *ep);
                let before = self.health.seen.get(&key).copied();
                let new_flows = before.map_or(0, |b| st.flows.saturating_sub(b.flows));
                let replies = before.map_or(0, |b| st.packets_out.saturating_sub(b.packets_out));
                let now_seen =
                    Seen { flows: st.flows, packets_out: st.packets_out, resets: st.resets, new_flows, replies };
                self.health.seen.insert(key.clone(), now_seen);
                let Some(before) = before else { continue };
                // Connections given in the interval before had a whole
                // interval to be answered.
                let failures = health::l4_failures(
                    before.new_flows,
                    before.replies,
                    replies,
                    st.resets.saturating_sub(before.resets),
                );
                let run = self.health.runs.entry(key).or_default();
                *run = failures.map_or(0, |f| *run + f);
                if *run >= u64::from(p.consecutive_failures) {
                    let why = format!(
                        "{run} connections failed in a row (reset, or no answer at all); at least {} eject",
                        p.consecutive_failures
                    );
                    *run = 0;
                    changed |= self.health.update(name, *ep, |t| t.eject(&why, until, now));
                }
            }
        }
        if changed {
            self.serve_health();
        }
    }

    /// Serves what health has out of service now.
    fn serve_health(&mut self) {
        self.serving.down = self.health.down();
        if let Err(e) = self.serving.reinstall() {
            warn!("serving the endpoints' new health failed; the tables stay as they were: {e}");
        }
    }
}
