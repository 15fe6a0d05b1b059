//! What the agent measures besides what it serves: a scrape of the kernel
//! maps, the proxy and its own counters (for `/metrics`), the counts the
//! observed split and the rollout gates are computed from, and what `status`
//! asks of it.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use splitter_model::{
    config::{Config, Mode, Service},
    observe::{Counts, VersionSample},
    runtime::{Runtime, Weights},
};

use super::{serving::Serving, RunOptions};
use crate::{
    control::AgentInfo,
    dataplane::PinnedMaps,
    l7::L7,
    metrics::{AgentMetrics, Scrape, ServiceMetrics, VersionMetrics},
};

/// Where the agent's measurements come from besides what it serves: the
/// pinned maps (as `status` reads them), the last sweep's flow counts, and
/// its start time.
pub(super) struct Sources {
    pub pinned: PinnedMaps,
    pub active_flows: BTreeMap<String, u64>,
    /// Entries in the flow table at the last sweep.
    pub flow_entries: Option<u64>,
    pub started: SystemTime,
}

/// What one metrics scrape shows (of the services `wanted` picks), from
/// the kernel maps, the proxy and the agent's own counters.
pub(super) fn scrape(
    config: &Config,
    runtime: &Runtime,
    serving: &Serving,
    sources: &Sources,
    wanted: impl Fn(&str) -> bool,
) -> Scrape {
    let Sources { pinned, active_flows, flow_entries, started } = sources;
    let (effective, _) = runtime.clone().effective(config);
    let l7 = serving.l7.stats();
    let mut services = Vec::new();
    for (name, svc) in effective.services.iter().filter(|(n, _)| wanted(n)) {
        let weights = svc.version_weights();
        let bps = splitter_model::plan::basis_points(&weights.iter().map(|(_, w)| *w).collect::<Vec<_>>());
        let live = match svc.mode {
            Mode::L4 => pinned.service(&splitter_model::plan::service_key(svc)).ok().flatten(),
            Mode::L7 => None,
        };
        // Endpoints sit in the kernel table in version order, as the file lists them.
        let mut next_endpoint = 0;
        let versions = weights
            .iter()
            .zip(&bps)
            .map(|((v, w), b)| VersionMetrics {
                name: (*v).to_owned(),
                weight: *w,
                share: f64::from(*b) / splitter_common::service::BPS as f64,
                endpoints: svc.versions[*v]
                    .iter()
                    .filter_map(|addr| {
                        let st = live.as_ref()?.endpoint_stats.get(next_endpoint).copied();
                        next_endpoint += 1;
                        Some((addr.to_string(), st?))
                    })
                    .collect(),
                l7: l7.get(name).and_then(|s| s.versions.get(*v)).map(|c| (c.clone(), c.latency.clone())),
            })
            .collect();
        services.push(ServiceMetrics {
            name: name.clone(),
            mode: if svc.mode == Mode::L4 { "l4" } else { "l7" },
            versions,
            l7_mirror: l7.get(name).and_then(|s| s.mirror.clone()),
            l7_mirror_version: svc.l7_mirror().map(|m| m.version.clone()),
            l7_connections: l7.get(name).map(|s| s.connections.clone()),
            l7_client_errors: l7.get(name).map(|s| s.client_errors),
            l7_tls: l7.get(name).and_then(|s| s.tls.clone()),
        });
    }
    let c = &serving.counters;
    Scrape {
        services,
        datapath: pinned.counters().map(|c| c.iter().collect()).unwrap_or_default(),
        active_flows: active_flows.clone(),
        flow_table: flow_entries.map(|n| (n, pinned.flow_capacity())),
        rollouts: runtime.rollouts.clone(),
        // The agent adds its health.
        endpoints_up: Vec::new(),
        health_transitions: BTreeMap::new(),
        agent: AgentMetrics {
            started_unix: started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            reloads_ok: c.reloads_ok,
            reloads_failed: c.reloads_failed,
            control: c.control.clone(),
            apply: c.apply.snapshot(),
            links: c.links.clone(),
        },
    }
}

/// What a rollout of `service` judges now: cumulative counts of the canary
/// and of the baseline (the versions that had weight before), resets (l4),
/// mirror comparisons (l7), and the canary's endpoints out of service.
pub(super) fn rollout_counts(
    service: &str,
    svc: &Service,
    canary: &str,
    before: &Weights,
    counts: &Counts,
    l7: &BTreeMap<String, crate::l7::ServiceStats>,
    down: &splitter_model::health::Down,
) -> splitter_model::rollout::Counts {
    // With `health:`, the canary's endpoints out of service count too.
    let canary_endpoints = match (&svc.health, svc.versions.get(canary)) {
        (Some(_), Some(eps)) => eps.as_slice(),
        _ => &[],
    };
    let canary_down = canary_endpoints.iter().filter(|e| down.get(service).is_some_and(|d| d.contains(e))).count();
    let versions = counts.get(service).cloned().unwrap_or_default();
    let mut baseline = VersionSample::default();
    for (_, c) in versions.iter().filter(|(v, _)| *v != canary && before.get(*v).is_some_and(|w| *w > 0)) {
        baseline.add(c);
    }
    let canary = versions.get(canary).cloned().unwrap_or_default();
    let mirror = l7.get(service).and_then(|s| s.mirror.clone()).unwrap_or_default();
    splitter_model::rollout::Counts {
        l4: svc.mode == Mode::L4,
        canary,
        baseline,
        compared: mirror.compared,
        differ: mirror.differ,
        canary_endpoints: u32::try_from(canary_endpoints.len()).unwrap_or(u32::MAX),
        // The agent adds its analysis verdicts for the step and its gate's webhook answers.
        analysis: Default::default(),
        hooks: Default::default(),
        canary_down: u32::try_from(canary_down).unwrap_or(u32::MAX),
    }
}

/// What `status` asks the agent: who it is and the weights it serves.
pub(super) fn agent_info(
    config: &Config,
    runtime: &Runtime,
    opts: &RunOptions,
    started: SystemTime,
    l7: &L7,
    observed: Option<(Duration, Counts)>,
) -> AgentInfo {
    let (effective, _) = runtime.clone().effective(config);
    let (observed_secs, observed) = observed.map_or((0, Default::default()), |(span, counts)| {
        let placed = counts
            .into_iter()
            .map(|(svc, versions)| (svc, versions.into_iter().map(|(v, c)| (v, c.placed)).collect()))
            .collect();
        (span.as_secs(), placed)
    });
    AgentInfo {
        observed,
        observed_secs,
        rollouts: runtime.rollouts.clone(),
        pid: std::process::id(),
        config: opts.config_path.clone(),
        services: config.services.clone(),
        not_local: crate::local_addrs::not_local(&effective),
        pin_path: config.pin_path.clone(),
        state_dir: config.state_dir.clone(),
        started_unix: started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        l7: l7.stats(),
        cluster: None,
        health: BTreeMap::new(),
        announce: None,
        mirrors: effective.services.iter().filter_map(|(n, s)| Some((n.clone(), s.l4_mirror()?.clone()))).collect(),
        weights: effective
            .services
            .iter()
            .map(|(name, svc)| {
                (name.clone(), svc.version_weights().iter().map(|(v, w)| ((*v).to_owned(), *w)).collect())
            })
            .collect(),
    }
}
