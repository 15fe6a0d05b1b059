//! `splitter status`: what the kernel is doing now, read from the maps the
//! agent pinned, next to what the config file says.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    control::AgentInfo,
    dataplane::{DataplaneError, PinnedMaps},
};
use splitter_common::stats::Stat;
use splitter_model::{
    aging,
    config::{Mode, Protocol, Service},
    plan::{basis_points, service_key},
};

#[derive(Debug, Deserialize, Serialize)]
pub struct Report {
    pub pin_path: PathBuf,
    /// The agent, when one answers on the control socket. Without it the
    /// pinned data path still serves the last state.
    pub agent: Option<AgentInfo>,
    /// Entries in the kernel flow table now.
    pub active_flows: u64,
    /// Entries it holds at most; when it is full, new flows evict the least
    /// recently used.
    #[serde(default)]
    pub flow_table_size: u64,
    pub services: Vec<ServiceStatus>,
    /// Every data-path counter by name (`splitter_common::stats::Stat`).
    pub counters: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub listen: String,
    pub protocol: Protocol,
    pub mode: Mode,
    /// Whether the kernel has a table for this service.
    pub live: bool,
    /// Whether the live split differs from the file's weights.
    pub differs_from_file: bool,
    /// L7, with a running agent: the listen address the agent cannot receive
    /// connections on because it is not local in its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_local: Option<std::net::IpAddr>,
    /// L7: the mirror's counters (from the running agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<crate::l7::mirror::MirrorCounts>,
    /// The service's last rollout (from the running agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<splitter_model::rollout::Rollout>,
    /// L4: flow mirroring as the kernel table has it, and the copies sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_mirror: Option<FlowMirrorStatus>,
    /// Endpoint health and each version's share as configured and served
    /// (from the running agent; services with `health:` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::control::ServiceHealth>,
    pub versions: Vec<VersionStatus>,
}

impl ServiceStatus {
    /// The version named `name`.
    pub fn version(&self, name: &str) -> Option<&VersionStatus> {
        self.versions.iter().find(|v| v.name == name)
    }

    /// Each version's live basis points, in the file's order.
    pub fn live_bps(&self) -> Vec<Option<u32>> {
        self.versions.iter().map(|v| v.live_bps).collect()
    }
}

#[derive(Debug, Deserialize, Serialize)]
pub struct FlowMirrorStatus {
    /// The interface new sampled flows are copied to; `None` when off.
    pub interface: Option<String>,
    /// Share of new flows sampled, in percent.
    pub percent: f64,
    /// Copies sent for this service's flows (both ways), and their bytes.
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct VersionStatus {
    pub name: String,
    /// Weight in the config file.
    pub weight: u32,
    /// Weight the running agent serves (file plus runtime changes), when it answers.
    pub runtime_weight: Option<u32>,
    /// The file's weight in basis points (1/10,000).
    pub file_bps: u32,
    /// Basis points the live kernel table gives this version.
    pub live_bps: Option<u32>,
    /// Flows the kernel placed on this version (sum over its endpoints).
    pub flows: Option<u64>,
    /// New flows (l4) or requests (l7) the agent saw placed on this version
    /// over its recent window (`observed_secs`, up to a minute).
    pub observed: Option<u64>,
    /// That as a share of the service's (0..1); `None` without traffic.
    pub observed_share: Option<f64>,
    /// L7: the proxy's counters of this version (from the running agent).
    pub requests: Option<crate::l7::VersionCounts>,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct EndpointStatus {
    pub address: String,
    /// Kernel counters, when the service is live.
    pub flows: Option<u64>,
    pub packets_in: Option<u64>,
    pub bytes_in: Option<u64>,
    pub packets_out: Option<u64>,
    pub bytes_out: Option<u64>,
}

/// Builds the report from the maps pinned under `pin_path` and the services
/// (names, weights and endpoints) of the config file or of the agent.
pub fn report(
    pin_path: PathBuf,
    configured: &BTreeMap<String, Service>,
    agent: Option<AgentInfo>,
) -> Result<Report, DataplaneError> {
    let pinned = PinnedMaps::open(&pin_path)?;
    let counters = pinned.counters()?;
    let mut services = Vec::new();
    for (name, svc) in configured {
        let weights = svc.version_weights();
        let file_bps = basis_points(&weights.iter().map(|(_, w)| *w).collect::<Vec<_>>());
        let live = if svc.mode == Mode::L4 { pinned.service(&service_key(svc))? } else { None };
        // Endpoints sit in the table in version order, as the file lists them.
        let mut next_endpoint = 0usize;
        let versions: Vec<VersionStatus> = weights
            .iter()
            .enumerate()
            .map(|(i, (v, w))| {
                let endpoints: Vec<EndpointStatus> = svc.versions[*v]
                    .iter()
                    .map(|addr| {
                        let st = live.as_ref().and_then(|l| l.endpoint_stats.get(next_endpoint)).copied();
                        next_endpoint += 1;
                        EndpointStatus {
                            address: addr.to_string(),
                            flows: st.map(|s| s.flows),
                            packets_in: st.map(|s| s.packets_in),
                            bytes_in: st.map(|s| s.bytes_in),
                            packets_out: st.map(|s| s.packets_out),
                            bytes_out: st.map(|s| s.bytes_out),
                        }
                    })
                    .collect();
                let observed = agent.as_ref().and_then(|a| a.observed.get(name)?.get(*v).copied());
                let total: u64 = agent.as_ref().and_then(|a| a.observed.get(name)).map_or(0, |m| m.values().sum());
                VersionStatus {
                    observed,
                    observed_share: observed.filter(|_| total > 0).map(|n| n as f64 / total as f64),
                    name: (*v).to_owned(),
                    weight: *w,
                    runtime_weight: agent.as_ref().and_then(|a| a.weights.get(name)?.get(*v).copied()),
                    file_bps: file_bps[i],
                    live_bps: live.as_ref().and_then(|l| l.version_bps.get(i).copied()),
                    flows: live.as_ref().map(|_| endpoints.iter().filter_map(|e| e.flows).sum()),
                    requests: agent.as_ref().and_then(|a| a.l7.get(name)?.versions.get(*v).cloned()),
                    endpoints,
                }
            })
            .collect();
        services.push(ServiceStatus {
            name: name.clone(),
            listen: svc.listen.to_string(),
            protocol: svc.protocol,
            mode: svc.mode,
            live: live.is_some(),
            not_local: agent.as_ref().and_then(|a| a.not_local.get(name).copied()),
            differs_from_file: if svc.mode == Mode::L7 {
                versions.iter().any(|v| v.runtime_weight.is_some_and(|w| w != v.weight))
            } else {
                live.is_some() && versions.iter().any(|v| v.live_bps != Some(v.file_bps))
            },
            mirror: agent.as_ref().and_then(|a| a.l7.get(name)?.mirror.clone()),
            rollout: agent.as_ref().and_then(|a| a.rollouts.get(name).cloned()),
            health: agent.as_ref().and_then(|a| a.health.get(name).cloned()),
            flow_mirror: live.as_ref().and_then(|l| {
                let packets: u64 = l.endpoint_stats.iter().map(|e| e.mirrored_packets).sum();
                (l.mirror_ifindex != 0 || packets > 0).then(|| FlowMirrorStatus {
                    // Names are the agent's (its namespace); without it, the index.
                    interface: (l.mirror_ifindex != 0).then(|| {
                        agent
                            .as_ref()
                            .and_then(|a| a.mirrors.get(name))
                            .map_or_else(|| format!("ifindex {}", l.mirror_ifindex), |m| m.interface.clone())
                    }),
                    percent: f64::from(l.mirror_bps) / 100.0,
                    packets,
                    bytes: l.endpoint_stats.iter().map(|e| e.mirrored_bytes).sum(),
                })
            }),
            versions,
        });
    }
    let active_flows = pinned.active_flows();
    let flow_table_size = pinned.flow_capacity();
    let counters = counters.iter().map(|(n, v)| (n.to_owned(), v)).collect();
    Ok(Report { pin_path, agent, active_flows, flow_table_size, services, counters })
}

/// `splitter status --cluster`: the store's desired revision and every
/// node's.
#[derive(Debug, Deserialize, Serialize)]
pub struct ClusterReport {
    /// The store's endpoints.
    pub store: String,
    pub prefix: String,
    pub desired_revision: i64,
    /// Who made the change the store holds, and what it was.
    pub changed_by: Option<String>,
    pub change: Option<String>,
    pub nodes: Vec<NodeStatus>,
    /// Every node serves the desired revision (and there is one).
    pub converged: bool,
}

/// One node of a store, as `status --cluster` shows it.
#[derive(Debug, Deserialize, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub applied_revision: i64,
    /// Serves the desired revision.
    pub current: bool,
    /// Drives the rollouts.
    pub leader: bool,
    pub error: Option<String>,
    pub updated_unix: u64,
}

impl ClusterReport {
    /// From what the store holds: the desired state (revision, document),
    /// the node records and the leader's name.
    pub fn new(
        etcd: &splitter_model::config::Etcd,
        desired: Option<&(i64, splitter_model::cluster::Desired)>,
        records: &[crate::store::NodeRecord],
        leader: Option<&str>,
    ) -> ClusterReport {
        let revision = desired.map_or(0, |(r, _)| *r);
        let nodes: Vec<NodeStatus> = records
            .iter()
            .map(|n| NodeStatus {
                node: n.node.clone(),
                applied_revision: n.applied_revision,
                current: n.applied_revision == revision,
                leader: leader == Some(n.node.as_str()),
                error: n.error.clone(),
                updated_unix: n.updated_unix,
            })
            .collect();
        ClusterReport {
            store: etcd.endpoints.join(","),
            prefix: etcd.prefix.clone(),
            desired_revision: revision,
            changed_by: desired.map(|(_, d)| d.changed_by.clone()),
            change: desired.map(|(_, d)| d.change.clone()),
            converged: !nodes.is_empty() && nodes.iter().all(|n| n.current),
            nodes,
        }
    }

    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match (&self.changed_by, &self.change) {
            (Some(by), Some(what)) => writeln!(
                out,
                "store {} {}: desired revision {} ({by}: {what})",
                self.store, self.prefix, self.desired_revision
            ),
            _ => writeln!(out, "store {} {}: no desired state yet", self.store, self.prefix),
        }
        .unwrap();
        let current = self.nodes.iter().filter(|n| n.current).count();
        writeln!(out, "{current} of {} nodes current", self.nodes.len()).unwrap();
        writeln!(out, "  {:<20} {:>8}  {:<8} {:<6}  error", "node", "applied", "current", "leader").unwrap();
        for n in &self.nodes {
            writeln!(
                out,
                "  {:<20} {:>8}  {:<8} {:<6}  {}",
                n.node,
                n.applied_revision,
                if n.current { "yes" } else { "NO" },
                if n.leader { "*" } else { "" },
                n.error.as_deref().unwrap_or("")
            )
            .unwrap();
        }
        out
    }
}

/// Milliseconds since the Unix epoch now.
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// A service's endpoint health: how many are down, each version whose
/// served share differs from its configured one (and why), and every
/// endpoint that is down, since when and why.
fn render_health(out: &mut String, h: &crate::control::ServiceHealth, now_ms: u64) {
    let pct = |b: u32| format!("{:.2}%", b as f64 / 100.0);
    let down: Vec<&crate::control::EndpointHealth> = h.endpoints.iter().filter(|e| !e.up).collect();
    writeln!(out, "  health: {} of {} endpoints up", h.endpoints.len() - down.len(), h.endpoints.len()).unwrap();
    for v in h.versions.iter().filter(|v| v.why.is_some()) {
        writeln!(
            out,
            "    version {}: served {} of configured {}: {}",
            v.version,
            pct(v.served_bps),
            pct(v.configured_bps),
            v.why.as_deref().unwrap_or("")
        )
        .unwrap();
    }
    for e in down {
        let ago = now_ms.saturating_sub(e.since_unix_ms) / 1000;
        writeln!(
            out,
            "    {} ({}) {} for {ago}s: {}",
            e.endpoint,
            e.version,
            if e.ejected { "EJECTED" } else { "DOWN" },
            e.reason
        )
        .unwrap();
    }
}

/// A version's observed share and count over the agent's recent window.
fn observed(v: &VersionStatus) -> String {
    match (v.observed_share, v.observed) {
        (Some(share), Some(n)) => format!("{:.1}% ({n})", share * 100.0),
        (None, Some(_)) => "- (0)".into(),
        _ => "-".into(),
    }
}

impl Report {
    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceStatus> {
        self.services.iter().find(|s| s.name == name)
    }

    /// A data-path counter; `None` when the report has no such counter (the
    /// pinned maps are older than it).
    pub fn counter(&self, stat: Stat) -> Option<u64> {
        self.counters.get(stat.name()).copied()
    }

    /// The observed-split column's title: the agent's window.
    fn observed_header(&self) -> String {
        match &self.agent {
            Some(a) if a.observed_secs > 0 => format!("last {}s", a.observed_secs),
            _ => "observed".into(),
        }
    }

    /// An l7 service: weights and the proxy's per-version counters.
    fn render_l7(&self, out: &mut String, s: &ServiceStatus) {
        let state = match (&self.agent, s.not_local) {
            (None, _) => "NOT SERVED (the agent is not running)".to_owned(),
            (Some(_), Some(ip)) => format!(
                "NOT REACHABLE: {ip} is not local in the agent's network namespace, so connections never arrive; add it (`{}`) or set local_addresses.manage: true",
                crate::local_addrs::fix_command(ip)
            ),
            (Some(_), None) => "proxied by the agent".to_owned(),
        };
        writeln!(out, "service {} {}/{} (l7): {state}", s.name, s.listen, s.protocol).unwrap();
        writeln!(
            out,
            "  {:<10} {:>7} {:>7} {:>16} {:>10} {:>8} {:>8} {:>8} {:>8}",
            "version",
            "file w",
            "now w",
            self.observed_header(),
            "requests",
            "2xx",
            "5xx",
            "502",
            "504"
        )
        .unwrap();
        for v in &s.versions {
            let c = v.requests.clone().unwrap_or_default();
            writeln!(
                out,
                "  {:<10} {:>7} {:>7} {:>16} {:>10} {:>8} {:>8} {:>8} {:>8}",
                v.name,
                v.weight,
                v.runtime_weight.map_or("-".into(), |w| w.to_string()),
                observed(v),
                c.requests,
                c.responses_2xx,
                c.responses_5xx,
                c.bad_gateway,
                c.timeouts
            )
            .unwrap();
        }
        for v in &s.versions {
            let Some(c) = v.requests.as_ref().filter(|c| !c.grpc.is_empty()) else { continue };
            let codes: Vec<String> = c.grpc.iter().map(|(code, n)| format!("{n}×{code}")).collect();
            writeln!(
                out,
                "  {}: gRPC {} ok, {} failed (by grpc-status: {})",
                v.name,
                c.grpc.get(&0).copied().unwrap_or(0),
                c.grpc_errors(),
                codes.join(", ")
            )
            .unwrap();
        }
        let l7 = self.agent.as_ref().and_then(|a| a.l7.get(&s.name));
        if let Some(c) = l7.map(|l| &l.connections) {
            if c.refused_listener + c.refused_client + c.refused_budget + c.head_timeouts > 0 {
                writeln!(
                    out,
                    "  connections closed unserved: {} at the listener limit, {} at the per-client limit, {} at the descriptor budget, {} without a request head in time",
                    c.refused_listener, c.refused_client, c.refused_budget, c.head_timeouts
                )
                .unwrap();
            }
            if c.too_large + c.h2_flood + c.idle_closed > 0 {
                writeln!(
                    out,
                    "  connections closed by the limits: {} after a head too large (431), {} h2 stream floods, {} idle",
                    c.too_large, c.h2_flood, c.idle_closed
                )
                .unwrap();
            }
        }
        if let Some((t, c)) = l7.and_then(|l| Some((l.tls.as_ref()?, &l.connections))) {
            let pairs: Vec<String> = t.certificates.iter().map(|n| format!("[{}]", n.join(", "))).collect();
            writeln!(
                out,
                "  tls: certificates for {}; file reloads {} ok, {} refused; handshakes {} failed, {} timed out",
                pairs.join(" "),
                t.reloads_ok,
                t.reloads_refused,
                c.tls_handshake_failures,
                c.tls_handshake_timeouts
            )
            .unwrap();
        }
        if let Some(m) = &s.mirror {
            writeln!(
                out,
                "  mirror: {} sampled, {} sent, {} dropped (queue full), {} not mirrored (body too large), {} shadow errors, {} shadow timeouts; compared {}: {} match, {} differ",
                m.sampled, m.sent, m.dropped_queue_full, m.skipped_body_too_large, m.shadow_errors, m.shadow_timeouts, m.compared, m.matched, m.differ
            )
            .unwrap();
        }
    }

    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match &self.agent {
            Some(a) => {
                writeln!(out, "agent: pid {}, config {}", a.pid, a.config.display()).unwrap();
                if let Some(c) = &a.cluster {
                    let store = match &c.store_error {
                        None => "reachable".to_owned(),
                        Some(why) => format!("UNREACHABLE ({why}); serving the last applied state"),
                    };
                    writeln!(
                        out,
                        "node {}{}: serving store revision {} ({}: {}); store {} {store}",
                        c.node,
                        if c.leader { " (leader: drives rollouts)" } else { "" },
                        c.applied_revision,
                        c.changed_by,
                        c.change,
                        c.store
                    )
                    .unwrap();
                    if let Some(e) = &c.apply_error {
                        writeln!(out, "  NOT APPLIED here: {e}").unwrap();
                    }
                }
                if let Some(an) = &a.announce {
                    let list = |ips: Vec<String>| if ips.is_empty() { "none".to_owned() } else { ips.join(", ") };
                    writeln!(
                        out,
                        "announce on {}: {}{}",
                        an.interface,
                        list(an.announced.iter().map(|ip| ip.to_string()).collect()),
                        if an.drained { "; node DRAINED (`splitter node undrain` announces again)" } else { "" }
                    )
                    .unwrap();
                    for (ip, why) in an.withheld.iter().filter(|_| !an.drained) {
                        writeln!(out, "  withdrawn {ip}: {}", crate::announce::describe(why)).unwrap();
                    }
                }
            }
            None => writeln!(
                out,
                "agent: NOT RUNNING (no answer on the control socket); the pinned data path serves the last tables"
            )
            .unwrap(),
        }
        for s in &self.services {
            if s.mode == Mode::L7 {
                self.render_l7(&mut out, s);
            } else {
                self.render_l4(&mut out, s);
            }
            // Under its own service's heading.
            if let Some(r) = &s.rollout {
                writeln!(out, "  rollout: {} ({})", r.describe(), r.origin.describe(&s.name)).unwrap();
            }
            if let Some(h) = &s.health {
                render_health(&mut out, h, now_unix_ms());
            }
        }
        if self.flow_table_size > 0 {
            let fill = self.active_flows as f64 / self.flow_table_size as f64;
            writeln!(out, "active flows: {} of {} ({:.0}%)", self.active_flows, self.flow_table_size, fill * 100.0)
                .unwrap();
        } else {
            writeln!(out, "active flows: {}", self.active_flows).unwrap();
        }
        if aging::flow_table_high(self.active_flows, self.flow_table_size) {
            writeln!(
                out,
                "  the flow table is above {:.0}%: when it is full, new flows evict the least recently used; raise \
                 flow_table_size",
                aging::FLOW_TABLE_WARN * 100.0
            )
            .unwrap();
        }
        writeln!(out, "data path counters ({}):", self.pin_path.display()).unwrap();
        for stat in Stat::ALL {
            let v = self.counter(stat).unwrap_or(0);
            writeln!(out, "  {:<20} {v:>14}", stat.name()).unwrap();
        }
        out
    }

    /// An l4 service: the file's, the agent's and the kernel's split, and
    /// the flows on each endpoint.
    fn render_l4(&self, out: &mut String, s: &ServiceStatus) {
        let pct = |b: u32| format!("{:.2}%", b as f64 / 100.0);
        let state = match (s.live, s.differs_from_file) {
            (false, _) => "NOT LIVE in the kernel",
            (true, true) => "live; differs from the file",
            (true, false) => "live; matches the file",
        };
        writeln!(out, "service {} {}/{} ({}): {state}", s.name, s.listen, s.protocol, s.mode).unwrap();
        writeln!(
            out,
            "  {:<10} {:>7} {:>7} {:>9} {:>9} {:>16} {:>10}  endpoints (flows)",
            "version",
            "file w",
            "now w",
            "file",
            "live",
            self.observed_header(),
            "flows"
        )
        .unwrap();
        let n = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        for v in &s.versions {
            let eps: Vec<String> = v.endpoints.iter().map(|e| format!("{} ({})", e.address, n(e.flows))).collect();
            writeln!(
                out,
                "  {:<10} {:>7} {:>7} {:>9} {:>9} {:>16} {:>10}  {}",
                v.name,
                v.weight,
                v.runtime_weight.map_or("-".into(), |w| w.to_string()),
                pct(v.file_bps),
                v.live_bps.map_or("-".into(), pct),
                observed(v),
                n(v.flows),
                eps.join(", ")
            )
            .unwrap();
        }
        if let Some(m) = &s.flow_mirror {
            let to = match &m.interface {
                Some(i) => format!("{}% of new flows to {i}", m.percent),
                None => "off for new flows".into(),
            };
            writeln!(out, "  mirror: {to}; {} packets ({} bytes) copied", m.packets, m.bytes).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitter_model::rollout::{Gates, Plan, Rollout};

    fn service(name: &str, mode: Mode, rollout: Option<Rollout>) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            listen: "203.0.113.10:80".into(),
            protocol: Protocol::Tcp,
            mode,
            live: mode == Mode::L4,
            not_local: None,
            differs_from_file: false,
            mirror: None,
            rollout,
            flow_mirror: None,
            health: None,
            versions: Vec::new(),
        }
    }

    /// The text between a service's heading and the next one.
    fn block<'a>(text: &'a str, service: &str) -> &'a str {
        let start = text.find(&format!("service {service} ")).unwrap_or_else(|| panic!("{service} in\n{text}"));
        let rest = &text[start + 1..];
        let end = rest.find("\nservice ").or_else(|| rest.find("\nactive flows")).map_or(rest.len(), |e| e + 1);
        &rest[..end]
    }

    #[test]
    fn each_service_shows_only_its_own_rollout() {
        let plan = |to: &str| Plan {
            to: to.into(),
            steps: vec![50, 100],
            interval_ms: 1000,
            gates: Gates::default(),
            analysis: Vec::new(),
            webhooks: Vec::new(),
        };
        let (shop, _) =
            Rollout::start(plan("green"), [("blue".into(), 1), ("green".into(), 0)].into(), Default::default());
        let (api, _) = Rollout::start(plan("v2"), [("v1".into(), 1), ("v2".into(), 0)].into(), Default::default());
        // An l7 service listed before an l4 one, as the demo's `api` and `shop`.
        let report = Report {
            pin_path: "/sys/fs/bpf/x".into(),
            agent: None,
            active_flows: 0,
            flow_table_size: 0,
            services: vec![
                service("api", Mode::L7, Some(api)),
                service("shop", Mode::L4, Some(shop)),
                service("web", Mode::L4, None),
            ],
            counters: BTreeMap::new(),
        };
        let text = report.render();
        let (api, shop, web) = (block(&text, "api"), block(&text, "shop"), block(&text, "web"));
        assert!(api.contains("to v2") && !api.contains("to green"), "api shows only its rollout:\n{text}");
        assert!(shop.contains("to green") && !shop.contains("to v2"), "shop shows only its rollout:\n{text}");
        assert!(!web.contains("rollout"), "web has none:\n{text}");
        // --json carries each rollout in its own service, and reads back.
        let back: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(back.services[0].rollout.as_ref().map(|r| r.plan.to.as_str()), Some("v2"));
        assert_eq!(back.services[1].rollout.as_ref().map(|r| r.plan.to.as_str()), Some("green"));
        assert!(back.services[2].rollout.is_none());
    }
}
