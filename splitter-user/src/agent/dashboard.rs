//! The live dashboard on the metrics listener: the static page (`/`, its
//! script and style, no build step and nothing fetched from elsewhere) and
//! the view it polls each second (`/dashboard.json`), made from the report
//! `splitter status --json` prints, so the page shows nothing that status
//! and `/metrics` do not. Read-only: nothing here changes the agent.

use std::collections::BTreeMap;

use serde::Serialize;
use splitter_model::{
    config::{Mode, Protocol},
    plan::basis_points,
    rollout::{Rollout, State},
};

use crate::{
    control::ServiceHealth,
    l7::mirror::{DiffReport, DiffSample, MirrorCounts},
    status::{FlowMirrorStatus, Report, ServiceStatus},
};

/// The page, its script and its style (`src/agent/dashboard/`).
pub(super) const PAGE: &str = include_str!("dashboard/index.html");
pub(super) const SCRIPT: &str = include_str!("dashboard/dashboard.js");
pub(super) const STYLE: &str = include_str!("dashboard/dashboard.css");

/// The latest differences a service's card lists.
const LATEST_DIFFS: usize = 10;

/// What one poll of `/dashboard.json` shows.
#[derive(Debug, Serialize)]
pub(super) struct View {
    pub at_unix_ms: u64,
    pub pid: Option<u32>,
    pub started_unix: Option<u64>,
    /// The window the observed shares cover, in seconds.
    pub observed_secs: u64,
    /// This node's name in a shared store.
    pub node: Option<String>,
    pub active_flows: u64,
    pub flow_table_size: u64,
    pub services: Vec<ServiceView>,
}

#[derive(Debug, Serialize)]
pub(super) struct ServiceView {
    pub name: String,
    pub mode: Mode,
    pub protocol: Protocol,
    pub listen: String,
    /// Runtime changes (weights, flips, a rollout) moved it off the file.
    pub differs_from_file: bool,
    pub versions: Vec<VersionView>,
    pub rollout: Option<RolloutView>,
    /// Endpoint health (services with `health:`).
    pub health: Option<ServiceHealth>,
    /// L7 mirror counters and the latest differences, newest first.
    pub mirror: Option<MirrorCounts>,
    pub diffs: Vec<DiffSample>,
    /// L4 flow mirroring.
    pub flow_mirror: Option<FlowMirrorStatus>,
}

/// One version's shares in percent (0–100).
#[derive(Debug, Serialize)]
pub(super) struct VersionView {
    pub name: String,
    /// By the weights in the file.
    pub configured: f64,
    /// As served now: the kernel's table (l4) or the proxy's weights (l7).
    pub live: Option<f64>,
    /// Of the new flows (l4) or requests (l7) over the last `observed_secs`.
    pub observed: Option<f64>,
    /// Those flows or requests.
    pub observed_count: Option<u64>,
    pub endpoints: usize,
}

#[derive(Debug, Serialize)]
pub(super) struct RolloutView {
    pub to: String,
    /// Percent per step, and the index of the one it is at.
    pub steps: Vec<u32>,
    pub step: usize,
    /// `running`, `paused`, `promoted`, `rolled back` or `aborted`.
    pub state: &'static str,
    /// Why it is paused or was rolled back; what gate it waits at.
    pub why: Option<String>,
    pub origin: String,
    pub elapsed_ms: u64,
    pub interval_ms: u64,
    pub gates: Vec<GateView>,
}

#[derive(Debug, Serialize)]
pub(super) struct GateView {
    pub gate: String,
    pub value: Option<f64>,
    pub baseline: Option<f64>,
    /// `None` where the gate's name carries its limit.
    pub limit: Option<f64>,
    /// `ok`, `breached` or `inconclusive`.
    pub verdict: &'static str,
}

/// The view of `report` (what `splitter status --json` shows of a running
/// agent) and the l7 services' mirror comparisons at `at_unix_ms`.
pub(super) fn view(report: Report, diffs: &BTreeMap<String, DiffReport>, at_unix_ms: u64) -> View {
    let agent = report.agent.as_ref();
    View {
        at_unix_ms,
        pid: agent.map(|a| a.pid),
        started_unix: agent.map(|a| a.started_unix),
        observed_secs: agent.map_or(0, |a| a.observed_secs),
        node: agent.and_then(|a| a.cluster.as_ref()).map(|c| c.node.clone()),
        active_flows: report.active_flows,
        flow_table_size: report.flow_table_size,
        services: report.services.into_iter().map(|s| service_view(s, diffs)).collect(),
    }
}

fn percent(bps: u32) -> f64 {
    f64::from(bps) / 100.0
}

fn service_view(s: ServiceStatus, diffs: &BTreeMap<String, DiffReport>) -> ServiceView {
    // L7 has no kernel table: its live split is the proxy's weights.
    let l7_live = match s.mode {
        Mode::L7 => s.versions.iter().map(|v| v.runtime_weight).collect::<Option<Vec<u32>>>().map(|w| basis_points(&w)),
        Mode::L4 => None,
    };
    let versions = s
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| VersionView {
            name: v.name.clone(),
            configured: percent(v.file_bps),
            live: l7_live.as_ref().map(|l| l[i]).or(v.live_bps).map(percent),
            observed: v.observed_share.map(|f| f * 100.0),
            observed_count: v.observed,
            endpoints: v.endpoints.len(),
        })
        .collect();
    let diffs = match (&s.mirror, diffs.get(&s.name)) {
        (Some(_), Some(d)) => {
            let mut samples = d.samples.clone();
            samples.sort_by_key(|d| std::cmp::Reverse(d.at_unix_ms));
            samples.truncate(LATEST_DIFFS);
            samples
        }
        _ => Vec::new(),
    };
    ServiceView {
        rollout: s.rollout.as_ref().map(|r| rollout_view(&s.name, r)),
        name: s.name,
        mode: s.mode,
        protocol: s.protocol,
        listen: s.listen,
        differs_from_file: s.differs_from_file,
        versions,
        health: s.health,
        mirror: s.mirror,
        diffs,
        flow_mirror: s.flow_mirror,
    }
}

fn rollout_view(service: &str, r: &Rollout) -> RolloutView {
    let (state, why) = match &r.state {
        State::Running => ("running", r.awaiting.as_ref().map(|a| format!("waiting at its gate: {}", a.why))),
        State::Paused { why } => ("paused", Some(why.clone())),
        State::Promoted => ("promoted", None),
        State::RolledBack { reason } => ("rolled back", Some(reason.clone())),
        State::Aborted => ("aborted", None),
    };
    RolloutView {
        to: r.plan.to.clone(),
        steps: r.plan.steps.clone(),
        step: r.step,
        state,
        why,
        origin: r.origin.describe(service),
        elapsed_ms: r.elapsed_ms,
        interval_ms: r.plan.interval_ms,
        gates: r
            .readings
            .iter()
            .map(|g| GateView {
                gate: g.gate.clone(),
                value: g.value,
                baseline: g.baseline,
                limit: g.limit.is_finite().then_some(g.limit),
                verdict: if g.inconclusive {
                    "inconclusive"
                } else if g.ok {
                    "ok"
                } else {
                    "breached"
                },
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::VersionStatus;

    fn version(name: &str, weight: u32, file_bps: u32, live_bps: Option<u32>, observed: Option<u64>) -> VersionStatus {
        VersionStatus {
            name: name.into(),
            weight,
            runtime_weight: Some(weight),
            file_bps,
            live_bps,
            flows: None,
            observed,
            observed_share: observed.map(|n| n as f64 / 40.0),
            requests: None,
            endpoints: Vec::new(),
        }
    }

    fn service(name: &str, mode: Mode, versions: Vec<VersionStatus>) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            listen: "203.0.113.10:80".into(),
            protocol: Protocol::Tcp,
            mode,
            live: mode == Mode::L4,
            differs_from_file: false,
            not_local: None,
            mirror: None,
            rollout: None,
            flow_mirror: None,
            health: None,
            versions,
        }
    }

    #[test]
    fn shares_are_percent_l7_live_comes_from_the_proxy_weights_and_diffs_are_the_latest() {
        let shop = service(
            "shop",
            Mode::L4,
            vec![version("blue", 80, 8000, Some(5000), Some(30)), version("green", 20, 2000, Some(5000), Some(10))],
        );
        let mut api =
            service("api", Mode::L7, vec![version("v1", 3, 7500, None, None), version("v2", 1, 2500, None, None)]);
        api.versions[1].runtime_weight = Some(3);
        api.mirror = Some(MirrorCounts { compared: 30, differ: 12, ..MirrorCounts::default() });
        let sample = |at: u64| DiffSample {
            at_unix_ms: at,
            request: format!("GET /{at}"),
            primary_status: 200,
            shadow_status: 500,
            diff: "status".into(),
        };
        let diffs: BTreeMap<String, DiffReport> =
            [("api".to_owned(), DiffReport { samples: (0..12).map(sample).collect(), ..DiffReport::default() })].into();
        let report = Report {
            pin_path: "/sys/fs/bpf/splitter".into(),
            agent: None,
            active_flows: 3,
            flow_table_size: 1024,
            services: vec![shop, api],
            counters: BTreeMap::new(),
        };
        let v = view(report, &diffs, 7);
        let shares = |s: usize| -> Vec<(f64, Option<f64>, Option<f64>)> {
            v.services[s].versions.iter().map(|v| (v.configured, v.live, v.observed)).collect()
        };
        assert_eq!(shares(0), [(80.0, Some(50.0), Some(75.0)), (20.0, Some(50.0), Some(25.0))]);
        // v1 3 and v2 3 at runtime: 50/50 live, against 75/25 in the file.
        assert_eq!(shares(1), [(75.0, Some(50.0), None), (25.0, Some(50.0), None)]);
        let latest: Vec<u64> = v.services[1].diffs.iter().map(|d| d.at_unix_ms).collect();
        assert_eq!(latest, [11, 10, 9, 8, 7, 6, 5, 4, 3, 2], "the ten newest, newest first");
        assert!(v.services[0].diffs.is_empty(), "no mirror, no differences");
    }

    #[test]
    fn a_rollout_shows_its_steps_state_and_gates() {
        let plan = splitter_model::rollout::Plan {
            to: "green".into(),
            steps: vec![10, 50, 100],
            interval_ms: 60_000,
            gates: Default::default(),
            analysis: Vec::new(),
            webhooks: Vec::new(),
        };
        let (mut r, _) = Rollout::start(plan, [("blue".into(), 1)].into(), Default::default());
        r.step = 1;
        let reading = |gate: &str, limit: f64, ok: bool, inconclusive: bool| splitter_model::rollout::Reading {
            gate: gate.into(),
            value: Some(0.5),
            baseline: None,
            limit,
            ok,
            inconclusive,
        };
        r.readings = vec![
            reading("error rate", 0.01, true, false),
            reading("p99", 0.25, false, false),
            reading("analysis conversion (min 0.02)", f64::NAN, false, true),
        ];
        r.state = State::RolledBack { reason: "p99 over 250ms".into() };
        let v = rollout_view("shop", &r);
        assert_eq!((v.steps.as_slice(), v.step, v.state), (&[10, 50, 100][..], 1, "rolled back"));
        assert_eq!(v.why.as_deref(), Some("p99 over 250ms"));
        let verdicts: Vec<(&str, Option<f64>)> = v.gates.iter().map(|g| (g.verdict, g.limit)).collect();
        assert_eq!(verdicts, [("ok", Some(0.01)), ("breached", Some(0.25)), ("inconclusive", None)]);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["gates"][2]["limit"], serde_json::Value::Null, "NaN is no JSON number");
    }
}
