//! Prometheus metrics: what the agent exposes at GET /metrics on
//! `metrics.listen` (served by `agent::metrics_http`; OpenMetrics text
//! through the official `prometheus-client` encoder), the latency histograms
//! the l7 proxy records, and windowed views of those (the observed split over the last minute, a p99 over a window).
//!
//! The agent loop owns every source (kernel maps, l7 counters, its own
//! counters): a scrape asks it for a [`Scrape`], a plain snapshot, which is
//! encoded off the loop.

use std::{collections::BTreeMap, net::SocketAddr};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};
use splitter_common::service::EndpointStats;
pub use splitter_model::latency::{Latency, LatencySnapshot, LATENCY_BUCKETS};
use splitter_model::observe::{Counts, VersionSample};
use splitter_model::rollout::State;

/// Everything one scrape shows, gathered by the agent loop.
#[derive(Debug, Default)]
pub struct Scrape {
    pub services: Vec<ServiceMetrics>,
    /// Every data-path counter by its name (`Stat::name`).
    pub datapath: Vec<(&'static str, u64)>,
    /// Flows in the kernel table per service, as of the last sweep.
    pub active_flows: BTreeMap<String, u64>,
    /// Entries in the flow table at the last sweep, and its capacity.
    pub flow_table: Option<(u64, u64)>,
    pub agent: AgentMetrics,
    /// Each service's last rollout.
    pub rollouts: BTreeMap<String, splitter_model::rollout::Rollout>,
    /// Each checked endpoint's verdict: (service, version, endpoint, up).
    pub endpoints_up: Vec<(String, String, SocketAddr, bool)>,
    /// Health transitions by (service, endpoint, "down" | "up").
    pub health_transitions: BTreeMap<(String, SocketAddr, &'static str), u64>,
}

#[derive(Debug, Default)]
pub struct ServiceMetrics {
    pub name: String,
    /// `l4` or `l7`.
    pub mode: &'static str,
    pub versions: Vec<VersionMetrics>,
    /// L7 mirror counters, when the service mirrors requests.
    pub l7_mirror: Option<crate::l7::mirror::MirrorCounts>,
    /// L7: the version the mirror copies requests to.
    pub l7_mirror_version: Option<String>,
    /// L7: client connections closed without being served.
    pub l7_connections: Option<crate::l7::ConnectionCounts>,
    /// L7: requests refused before routing, the client's fault.
    pub l7_client_errors: Option<u64>,
    /// L7 with `tls:`: the certificates and their reloads.
    pub l7_tls: Option<crate::l7::TlsCounts>,
}

#[derive(Debug, Default)]
pub struct VersionMetrics {
    pub name: String,
    /// Relative weight served now (file plus runtime changes).
    pub weight: u32,
    /// The same as a share of new flows/requests (0..=1).
    pub share: f64,
    /// L4: the kernel's counters of each endpoint, by address.
    pub endpoints: Vec<(String, EndpointStats)>,
    /// L7: the proxy's counters and response latency.
    pub l7: Option<(crate::l7::VersionCounts, LatencySnapshot)>,
}

/// The agent's own counters.
#[derive(Clone, Debug, Default)]
pub struct AgentMetrics {
    pub started_unix: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Control requests by (op, "ok" | "failed").
    pub control: BTreeMap<(&'static str, &'static str), u64>,
    /// How long applying a change to the data path took.
    pub apply: LatencySnapshot,
    /// Served interfaces that went or came back, by (interface, event).
    pub links: BTreeMap<(String, &'static str), u64>,
}

type Labels = Vec<(&'static str, String)>;

/// One sample of a family: its labels and value.
enum Value<'a> {
    Counter(u64),
    Gauge(f64),
    Histogram(&'a LatencySnapshot),
}

type Samples<'a> = Vec<(Labels, Value<'a>)>;

/// A metric family: what `/metrics` shows, and where its samples come from.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: for<'a> fn(&'a Scrape) -> Samples<'a>,
}

/// Every family `/metrics` exposes, in order.
const FAMILIES: &[Family] = &[
    Family {
        name: "splitter_version_weight",
        help: "Relative weight a version is served with now (file plus runtime changes).",
        kind: MetricType::Gauge,
        samples: |s| versions(s).map(|(l, v)| (l, Value::Gauge(f64::from(v.weight)))).collect(),
    },
    Family {
        name: "splitter_version_share",
        help: "Configured share of new flows (l4) or requests (l7), 0 to 1.",
        kind: MetricType::Gauge,
        samples: |s| versions(s).map(|(l, v)| (l, Value::Gauge(v.share))).collect(),
    },
    Family {
        name: "splitter_endpoint_flows",
        help: "Flows the kernel placed on an endpoint (new and adopted).",
        kind: MetricType::Counter,
        samples: |s| endpoints(s).map(|(l, e)| (l, Value::Counter(e.flows))).collect(),
    },
    Family {
        name: "splitter_endpoint_packets",
        help: "Packets of an endpoint's flows, towards it (in) and its replies (out).",
        kind: MetricType::Counter,
        samples: |s| {
            endpoints(s).flat_map(|(l, e)| split(l, "direction", [("in", e.packets_in), ("out", e.packets_out)])).collect()
        },
    },
    Family {
        name: "splitter_endpoint_bytes",
        help: "Bytes of an endpoint's flows, towards it (in) and its replies (out).",
        kind: MetricType::Counter,
        samples: |s| {
            endpoints(s).flat_map(|(l, e)| split(l, "direction", [("in", e.bytes_in), ("out", e.bytes_out)])).collect()
        },
    },
    Family {
        name: "splitter_endpoint_resets",
        help: "TCP resets an endpoint sent to its clients.",
        kind: MetricType::Counter,
        samples: |s| endpoints(s).map(|(l, e)| (l, Value::Counter(e.resets))).collect(),
    },
    Family {
        name: "splitter_endpoint_mirrored_packets",
        help: "Copies of an endpoint's mirrored flows sent to the mirror interface (both ways).",
        kind: MetricType::Counter,
        samples: |s| endpoints(s).map(|(l, e)| (l, Value::Counter(e.mirrored_packets))).collect(),
    },
    Family {
        name: "splitter_endpoint_mirrored_bytes",
        help: "Bytes of those copies.",
        kind: MetricType::Counter,
        samples: |s| endpoints(s).map(|(l, e)| (l, Value::Counter(e.mirrored_bytes))).collect(),
    },
    Family {
        name: "splitter_active_flows",
        help: "Flows in the kernel flow table, per service, as of the agent's last sweep.",
        kind: MetricType::Gauge,
        samples: |s| {
            s.active_flows.iter().map(|(svc, n)| (vec![("service", svc.clone())], Value::Gauge(*n as f64))).collect()
        },
    },
    Family {
        name: "splitter_datapath",
        help: "Data-path events by kind, summed over CPUs: packets seen, passed and dropped by reason, malformed by reason, flows, redirects, mirror copies and failures (see `splitter status`).",
        kind: MetricType::Counter,
        samples: |s| s.datapath.iter().map(|(e, n)| (vec![("event", (*e).to_owned())], Value::Counter(*n))).collect(),
    },
    Family {
        name: "splitter_requests",
        help: "Requests the l7 proxy routed to a version.",
        kind: MetricType::Counter,
        samples: |s| l7(s).map(|(l, c, _)| (l, Value::Counter(c.requests))).collect(),
    },
    Family {
        name: "splitter_responses",
        help: "Responses by status class: from the endpoints (1xx..5xx), or the proxy's own 502 (endpoint unreachable or failed), 504 (no answer in time) and 400/408 for a request body the client got wrong (client_error, not the version's).",
        kind: MetricType::Counter,
        samples: |s| {
            l7(s)
                .flat_map(|(l, c, _)| {
                    let classes = [
                        ("1xx", c.responses_1xx),
                        ("2xx", c.responses_2xx),
                        ("3xx", c.responses_3xx),
                        ("4xx", c.responses_4xx),
                        ("5xx", c.responses_5xx),
                        ("proxy_502", c.bad_gateway),
                        ("proxy_504", c.timeouts),
                        ("client_error", c.client_errors),
                    ];
                    split(l, "class", classes)
                })
                .collect()
        },
    },
    Family {
        name: "splitter_l7_grpc_responses",
        help: "gRPC answers (HTTP 2xx) by grpc-status code (0 OK .. 16 UNAUTHENTICATED; a stream that ended without one counts as 2 UNKNOWN). A non-zero code is an error in the rollout gates.",
        kind: MetricType::Counter,
        samples: |s| {
            l7(s)
                .flat_map(|(l, c, _)| {
                    c.grpc.iter().map(move |(code, n)| {
                        let mut labels = l.clone();
                        labels.push(("code", code.to_string()));
                        (labels, Value::Counter(*n))
                    })
                })
                .collect()
        },
    },
    Family {
        name: "splitter_request_duration_seconds",
        help: "Time from a request's arrival to its response head (or the proxy's error answer).",
        kind: MetricType::Histogram,
        samples: |s| l7(s).map(|(l, _, h)| (l, Value::Histogram(h))).collect(),
    },
    Family {
        name: "splitter_mirror_requests",
        help: "Requests sampled for the l7 mirror, by what became of the copy.",
        kind: MetricType::Counter,
        samples: |s| {
            mirrors(s)
                .flat_map(|(l, m)| {
                    let outcomes = [
                        ("sampled", m.sampled),
                        ("sent", m.sent),
                        ("dropped_queue_full", m.dropped_queue_full),
                        ("skipped_body_too_large", m.skipped_body_too_large),
                    ];
                    split(l, "outcome", outcomes)
                })
                .collect()
        },
    },
    Family {
        name: "splitter_mirror_comparisons",
        help: "Shadow answers compared with the primary's, by result.",
        kind: MetricType::Counter,
        samples: |s| {
            mirrors(s)
                .flat_map(|(l, m)| {
                    let results = [
                        ("match", m.matched),
                        ("differ", m.differ),
                        ("error", m.shadow_errors),
                        ("timeout", m.shadow_timeouts),
                    ];
                    split(l, "result", results)
                })
                .collect()
        },
    },
    Family {
        name: "splitter_l7_client_errors",
        help: "Requests an l7 service refused before routing them, through the client's fault (400, or 405 for CONNECT).",
        kind: MetricType::Counter,
        samples: |s| {
            s.services
                .iter()
                .filter_map(|svc| svc.l7_client_errors.map(|n| (vec![("service", svc.name.clone())], Value::Counter(n))))
                .collect()
        },
    },
    Family {
        name: "splitter_l7_connections_closed",
        help: "Client connections an l7 listener closed: at accept by the limit hit (listener, client, budget), because no complete request head came in time (head_timeout), because the TLS handshake failed (tls_handshake_failed) or took longer than l7.header_read_timeout (tls_handshake_timeout), after a head over l7.max_header_bytes or with too many fields (too_large, answered 431), an h2 client over the stream limits (h2_flood, GOAWAY), or after l7.idle_timeout with no request in flight (idle).",
        kind: MetricType::Counter,
        samples: |s| {
            s.services
                .iter()
                .filter_map(|svc| svc.l7_connections.as_ref().map(|c| (vec![("service", svc.name.clone())], c)))
                .flat_map(|(l, c)| {
                    let reasons = [
                        ("listener", c.refused_listener),
                        ("client", c.refused_client),
                        ("budget", c.refused_budget),
                        ("head_timeout", c.head_timeouts),
                        ("too_large", c.too_large),
                        ("h2_flood", c.h2_flood),
                        ("idle", c.idle_closed),
                        ("tls_handshake_failed", c.tls_handshake_failures),
                        ("tls_handshake_timeout", c.tls_handshake_timeouts),
                    ];
                    split(l, "reason", reasons)
                })
                .collect()
        },
    },
    Family {
        name: "splitter_l7_tls_reloads",
        help: "Changes to a TLS service's certificate files: loaded and served (ok), or refused with the previous certificates kept (refused).",
        kind: MetricType::Counter,
        samples: |s| {
            s.services
                .iter()
                .filter_map(|svc| svc.l7_tls.as_ref().map(|t| (vec![("service", svc.name.clone())], t)))
                .flat_map(|(l, t)| split(l, "result", [("ok", t.reloads_ok), ("refused", t.reloads_refused)]))
                .collect()
        },
    },
    Family {
        name: "splitter_rollout_percent",
        help: "The canary's share at the current step of a service's rollout.",
        kind: MetricType::Gauge,
        samples: |s| {
            s.rollouts
                .iter()
                .map(|(svc, r)| {
                    (vec![("service", svc.clone()), ("to", r.plan.to.clone())], Value::Gauge(f64::from(r.percent())))
                })
                .collect()
        },
    },
    Family {
        name: "splitter_rollout_analysis_value",
        help: "The value of each analysis metric (a Prometheus query) a service's rollout last judged, for its canary.",
        kind: MetricType::Gauge,
        samples: |s| {
            s.rollouts
                .iter()
                .flat_map(|(svc, r)| {
                    r.analysis_readings().filter_map(move |(metric, reading)| {
                        Some((vec![("service", svc.clone()), ("metric", metric.to_owned())], Value::Gauge(reading.value?)))
                    })
                })
                .collect()
        },
    },
    Family {
        name: "splitter_rollout_analysis_verdict",
        help: "1 for the verdict on each analysis metric a service's rollout last judged (ok, breached, inconclusive).",
        kind: MetricType::Gauge,
        samples: |s| {
            s.rollouts
                .iter()
                .flat_map(|(svc, r)| {
                    r.analysis_readings().map(move |(metric, reading)| {
                        let verdict = match (reading.ok, reading.inconclusive) {
                            (true, _) => "ok",
                            (false, true) => "inconclusive",
                            (false, false) => "breached",
                        };
                        let labels = vec![("service", svc.clone()), ("metric", metric.to_owned()), ("verdict", verdict.into())];
                        (labels, Value::Gauge(1.0))
                    })
                })
                .collect()
        },
    },
    Family {
        name: "splitter_rollout_state",
        help: "1 for the state a service's last rollout is in (running, paused, promoted, rolled_back, aborted).",
        kind: MetricType::Gauge,
        samples: |s| {
            s.rollouts
                .iter()
                .map(|(svc, r)| {
                    let state = match r.state {
                        State::Running => "running",
                        State::Paused { .. } => "paused",
                        State::Promoted => "promoted",
                        State::RolledBack { .. } => "rolled_back",
                        State::Aborted => "aborted",
                    };
                    (vec![("service", svc.clone()), ("state", state.into())], Value::Gauge(1.0))
                })
                .collect()
        },
    },
    Family {
        name: "splitter_reloads",
        help: "Config reloads (file change or SIGHUP) by result.",
        kind: MetricType::Counter,
        samples: |s| split(Vec::new(), "result", [("ok", s.agent.reloads_ok), ("failed", s.agent.reloads_failed)]).collect(),
    },
    Family {
        name: "splitter_control_requests",
        help: "Control-socket requests by operation and result.",
        kind: MetricType::Counter,
        samples: |s| {
            s.agent
                .control
                .iter()
                .map(|((op, result), n)| (vec![("op", (*op).into()), ("result", (*result).into())], Value::Counter(*n)))
                .collect()
        },
    },
    Family {
        name: "splitter_flow_table_entries",
        help: "Entries in the kernel flow table at the last sweep (all services, both directions share one).",
        kind: MetricType::Gauge,
        samples: |s| s.flow_table.map(|(n, _)| (Vec::new(), Value::Gauge(n as f64))).into_iter().collect(),
    },
    Family {
        name: "splitter_flow_table_capacity",
        help: "Entries the kernel flow table holds at most (flow_table_size); when full, new flows evict the least recently used.",
        kind: MetricType::Gauge,
        samples: |s| s.flow_table.map(|(_, c)| (Vec::new(), Value::Gauge(c as f64))).into_iter().collect(),
    },
    Family {
        name: "splitter_endpoint_up",
        help: "Whether a checked endpoint is healthy (1) or out of service (0): services with health: only.",
        kind: MetricType::Gauge,
        samples: |s| {
            s.endpoints_up
                .iter()
                .map(|(service, version, endpoint, up)| {
                    let labels =
                        vec![("service", service.clone()), ("version", version.clone()), ("endpoint", endpoint.to_string())];
                    (labels, Value::Gauge(if *up { 1.0 } else { 0.0 }))
                })
                .collect()
        },
    },
    Family {
        name: "splitter_endpoint_health_transitions",
        help: "Times a checked endpoint went down or came back up (to).",
        kind: MetricType::Counter,
        samples: |s| {
            s.health_transitions
                .iter()
                .map(|((service, endpoint, to), n)| {
                    let labels = vec![("service", service.clone()), ("endpoint", endpoint.to_string()), ("to", (*to).into())];
                    (labels, Value::Counter(*n))
                })
                .collect()
        },
    },
    Family {
        name: "splitter_interface_events",
        help: "Served interfaces (clients, backends, mirror) deleted (lost) or back and attached to again (attached, attach_failed).",
        kind: MetricType::Counter,
        samples: |s| {
            s.agent
                .links
                .iter()
                .map(|((interface, event), n)| {
                    (vec![("interface", interface.clone()), ("event", (*event).into())], Value::Counter(*n))
                })
                .collect()
        },
    },
    Family {
        name: "splitter_apply_duration_seconds",
        help: "Time to apply a change (control request or reload) to the data path and proxy.",
        kind: MetricType::Histogram,
        samples: |s| vec![(Vec::new(), Value::Histogram(&s.agent.apply))],
    },
    Family {
        name: "splitter_agent_start_time_seconds",
        help: "When the agent started, seconds since the Unix epoch.",
        kind: MetricType::Gauge,
        samples: |s| vec![(Vec::new(), Value::Gauge(s.agent.started_unix as f64))],
    },
];

/// Every version, labelled with its service and name.
fn versions(s: &Scrape) -> impl Iterator<Item = (Labels, &VersionMetrics)> {
    s.services.iter().flat_map(|svc| {
        svc.versions.iter().map(move |v| (vec![("service", svc.name.clone()), ("version", v.name.clone())], v))
    })
}

/// Every endpoint with kernel counters, labelled with its service, version and address.
fn endpoints(s: &Scrape) -> impl Iterator<Item = (Labels, &EndpointStats)> {
    versions(s).flat_map(|(l, v)| {
        v.endpoints.iter().map(move |(addr, st)| {
            let mut l = l.clone();
            l.push(("endpoint", addr.clone()));
            (l, st)
        })
    })
}

/// Every l7 version with the proxy's counters and latency.
fn l7(s: &Scrape) -> impl Iterator<Item = (Labels, &crate::l7::VersionCounts, &LatencySnapshot)> {
    versions(s).filter_map(|(l, v)| v.l7.as_ref().map(|(c, h)| (l, c, h)))
}

/// Every l7 service with a mirror.
fn mirrors(s: &Scrape) -> impl Iterator<Item = (Labels, &crate::l7::mirror::MirrorCounts)> {
    s.services.iter().filter_map(|svc| svc.l7_mirror.as_ref().map(|m| (vec![("service", svc.name.clone())], m)))
}

/// One counter per part, each with `key="part"` added to `labels`.
fn split<'a, const N: usize>(
    labels: Labels,
    key: &'static str,
    parts: [(&'static str, u64); N],
) -> impl Iterator<Item = (Labels, Value<'a>)> {
    parts.into_iter().map(move |(part, n)| {
        let mut l = labels.clone();
        l.push((key, part.to_owned()));
        (l, Value::Counter(n))
    })
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in FAMILIES {
            let mut f = enc.encode_descriptor(family.name, family.help, None, family.kind)?;
            for (labels, value) in (family.samples)(self) {
                let mut sample = f.encode_family(&labels)?;
                match value {
                    Value::Counter(v) => ConstCounter::new(v).encode(sample)?,
                    Value::Gauge(v) => ConstGauge::new(v).encode(sample)?,
                    Value::Histogram(h) => {
                        sample.encode_histogram::<NoLabelSet>(h.sum_secs, h.count(), &h.buckets(), None)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// The two text formats a scraper may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (`Accept: application/openmetrics-text`).
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4 (everything else).
    Prometheus,
}

impl Format {
    /// What a request's `Accept` header asks for.
    pub fn negotiate(accept: Option<&str>) -> Format {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

impl Scrape {
    /// The counts of every service and version in this scrape: what the
    /// observed split and the rollout gates are computed from.
    pub fn counts(&self) -> Counts {
        self.services
            .iter()
            .map(|s| {
                let versions = s
                    .versions
                    .iter()
                    .map(|v| {
                        let mut sample = VersionSample {
                            placed: v.endpoints.iter().map(|(_, e)| e.flows).sum(),
                            resets: v.endpoints.iter().map(|(_, e)| e.resets).sum(),
                            ..VersionSample::default()
                        };
                        if let Some((c, latency)) = &v.l7 {
                            // The client's own failures are not the version's requests.
                            sample.placed = c.requests.saturating_sub(c.client_errors);
                            // A gRPC answer is a 200 whose grpc-status may say it failed.
                            sample.errors = c.responses_5xx + c.bad_gateway + c.timeouts + c.grpc_errors();
                            sample.latency = latency.clone();
                        }
                        if let Some(m) = s.l7_mirror.as_ref().filter(|_| s.l7_mirror_version.as_ref() == Some(&v.name))
                        {
                            sample.compared = m.compared;
                            sample.differed = m.differ;
                        }
                        (v.name.clone(), sample)
                    })
                    .collect();
                (s.name.clone(), versions)
            })
            .collect()
    }

    /// The scrape as text in `format`.
    pub fn render(self, format: Format) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        let written = match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
            Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry),
        };
        written.expect("writing to a String cannot fail");
        out
    }
}

/// Binds the metrics listener (before anything else is started, so a busy
/// address fails the start cleanly).
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(std)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrape with a sample in every family.
    fn full_scrape() -> Scrape {
        let mut scrape = Scrape::default();
        scrape.services.push(ServiceMetrics {
            name: "shop".into(),
            mode: "l4",
            versions: vec![VersionMetrics {
                name: "blue".into(),
                weight: 95,
                share: 0.95,
                endpoints: vec![("10.0.0.1:80".into(), EndpointStats { flows: 7, ..Default::default() })],
                l7: None,
            }],
            ..ServiceMetrics::default()
        });
        scrape.services.push(ServiceMetrics {
            name: "api".into(),
            mode: "l7",
            l7_tls: Some(crate::l7::TlsCounts { certificates: vec![], reloads_ok: 2, reloads_refused: 1 }),
            ..ServiceMetrics::default()
        });
        scrape.datapath.push(("passed", 3));
        let dead: SocketAddr = "10.0.0.2:80".parse().unwrap();
        scrape.endpoints_up.push(("shop".into(), "blue".into(), dead, false));
        scrape.health_transitions.insert(("shop".into(), dead, "down"), 2);
        let plan = splitter_model::rollout::Plan {
            to: "green".into(),
            steps: vec![50, 100],
            interval_ms: 1000,
            gates: Default::default(),
            analysis: vec!["conversion".into()],
            webhooks: Vec::new(),
        };
        let (mut rollout, _) =
            splitter_model::rollout::Rollout::start(plan, [("blue".into(), 1)].into(), Default::default());
        rollout.readings.push(splitter_model::rollout::Reading {
            gate: "analysis conversion (min 0.02)".into(),
            value: Some(0.01),
            baseline: None,
            limit: f64::NAN,
            ok: false,
            inconclusive: false,
        });
        scrape.rollouts.insert("shop".into(), rollout);
        let mut counts = crate::l7::VersionCounts { requests: 4, responses_2xx: 3, ..Default::default() };
        counts.grpc.insert(14, 1);
        let api = &mut scrape.services[1];
        api.versions.push(VersionMetrics {
            name: "v1".into(),
            weight: 1,
            share: 1.0,
            endpoints: Vec::new(),
            l7: Some((counts, LatencySnapshot::default())),
        });
        api.l7_mirror = Some(crate::l7::mirror::MirrorCounts { compared: 3, differ: 1, ..Default::default() });
        api.l7_mirror_version = Some("v1".into());
        api.l7_connections = Some(crate::l7::ConnectionCounts::default());
        api.l7_client_errors = Some(1);
        scrape.active_flows.insert("shop".into(), 3);
        scrape.flow_table = Some((3, 1024));
        scrape.agent.control.insert(("weight", "ok"), 1);
        scrape.agent.links.insert(("lb-blue".into(), "lost"), 1);
        scrape
    }

    #[test]
    fn a_scrape_renders_as_openmetrics_text() {
        let scrape = full_scrape();
        let text = scrape.render(Format::OpenMetrics);
        for want in [
            "splitter_endpoint_up{service=\"shop\",version=\"blue\",endpoint=\"10.0.0.2:80\"} 0",
            "splitter_endpoint_health_transitions_total{service=\"shop\",endpoint=\"10.0.0.2:80\",to=\"down\"} 2",
            "# TYPE splitter_endpoint_flows counter",
            "splitter_endpoint_flows_total{service=\"shop\",version=\"blue\",endpoint=\"10.0.0.1:80\"} 7",
            "splitter_version_weight{service=\"shop\",version=\"blue\"} 95",
            "splitter_datapath_total{event=\"passed\"} 3",
            "splitter_l7_tls_reloads_total{service=\"api\",result=\"ok\"} 2",
            "splitter_l7_tls_reloads_total{service=\"api\",result=\"refused\"} 1",
            "splitter_rollout_analysis_value{service=\"shop\",metric=\"conversion\"} 0.01",
            "splitter_rollout_analysis_verdict{service=\"shop\",metric=\"conversion\",verdict=\"breached\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;version=1.0.0")), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }

    /// Every metric name on a rendered scrape (Prometheus text: counters as
    /// `_total`, histograms as `_bucket`/`_sum`/`_count`) and the label
    /// names its samples carry.
    fn exported(text: &str) -> BTreeMap<String, std::collections::BTreeSet<String>> {
        let mut out: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let name_end = line.find(['{', ' ']).expect("a sample line");
            let labels = out.entry(line[..name_end].to_owned()).or_default();
            if line[name_end..].starts_with('{') {
                // key="value" pairs; values may hold escaped quotes and commas.
                let mut rest = &line[name_end + 1..];
                while let Some(eq) = rest.find("=\"") {
                    labels.insert(rest[..eq].trim_start_matches(',').to_owned());
                    let mut chars = rest[eq + 2..].char_indices();
                    let mut close = None;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                chars.next();
                            }
                            '"' => {
                                close = Some(eq + 2 + i + 1);
                                break;
                            }
                            _ => {}
                        }
                    }
                    rest = &rest[close.expect("a closed label value")..];
                    if rest.starts_with('}') {
                        break;
                    }
                }
            }
        }
        out
    }

    /// What is wrong with `expr` against `exported`: unknown metrics, and
    /// labels (matched, grouped by, matched on) none of its metrics carry.
    /// Returns the metrics the expression reads.
    fn check_promql(
        expr: &promql_parser::parser::Expr,
        exported: &BTreeMap<String, std::collections::BTreeSet<String>>,
        problems: &mut Vec<String>,
    ) -> Vec<String> {
        use promql_parser::parser::{Expr, LabelModifier, VectorSelector};
        let labels_of = |names: &[String]| -> std::collections::BTreeSet<String> {
            names.iter().filter_map(|n| exported.get(n)).flatten().cloned().collect()
        };
        let selector = |vs: &VectorSelector, problems: &mut Vec<String>| {
            let Some(name) = vs.name.clone() else {
                problems.push(format!("{vs}: no metric name"));
                return Vec::new();
            };
            match exported.get(&name) {
                None => problems.push(format!("{name}: not a metric the agent exports")),
                Some(labels) => {
                    for m in vs.matchers.matchers.iter().filter(|m| m.name != "__name__") {
                        if !labels.contains(&m.name) {
                            problems.push(format!("{name}: no label {:?} (it has {labels:?})", m.name));
                        }
                    }
                }
            }
            vec![name]
        };
        let grouped = |what: &str, modifier: Option<&LabelModifier>, names: &[String], problems: &mut Vec<String>| {
            let have = labels_of(names);
            for l in modifier.map(|m| m.labels().labels.clone()).unwrap_or_default() {
                if !have.contains(&l) {
                    problems.push(format!("{what} {l:?}: none of {names:?} has it"));
                }
            }
        };
        match expr {
            Expr::VectorSelector(vs) => selector(vs, problems),
            Expr::MatrixSelector(ms) => selector(&ms.vs, problems),
            Expr::Aggregate(a) => {
                let names = check_promql(&a.expr, exported, problems);
                if let Some(p) = &a.param {
                    check_promql(p, exported, problems);
                }
                grouped("by/without", a.modifier.as_ref(), &names, problems);
                names
            }
            Expr::Binary(b) => {
                let mut names = check_promql(&b.lhs, exported, problems);
                names.extend(check_promql(&b.rhs, exported, problems));
                if let Some(m) = &b.modifier {
                    grouped("on/ignoring", m.matching.as_ref(), &names, problems);
                    if let Some(extra) = m.card.labels() {
                        grouped("group_left/right", Some(&LabelModifier::Include(extra.clone())), &names, problems);
                    }
                }
                names
            }
            Expr::Call(c) => c.args.args.iter().flat_map(|a| check_promql(a, exported, problems)).collect(),
            Expr::Paren(p) => check_promql(&p.expr, exported, problems),
            Expr::Unary(u) => check_promql(&u.expr, exported, problems),
            Expr::Subquery(q) => check_promql(&q.expr, exported, problems),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => Vec::new(),
        }
    }

    /// Every query string of a Grafana dashboard: panel targets' `expr`
    /// and the template variables' queries.
    fn grafana_queries(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(q)) => out.push(q.clone()),
                        _ => grafana_queries(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| grafana_queries(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_grafana_dashboard_asks_only_for_metrics_and_labels_the_agent_exports() {
        let exported = exported(&full_scrape().render(Format::Prometheus));
        assert!(exported["splitter_request_duration_seconds_bucket"].contains("le"), "{exported:?}");
        let dashboard: serde_json::Value = serde_json::from_str(include_str!("../../packaging/grafana-dashboard.json"))
            .expect("the dashboard is JSON");
        let mut queries = Vec::new();
        grafana_queries(&dashboard, &mut queries);
        assert!(queries.len() >= 10, "{queries:?}");
        let mut problems = Vec::new();
        let mut read = std::collections::BTreeSet::new();
        for q in &queries {
            // Grafana's variables, as Grafana would fill them in.
            let promql = q.replace("$__rate_interval", "1m").replace("$service", ".*");
            assert!(!promql.contains('$'), "an unknown Grafana variable in {q}");
            // A variable's `label_values(METRIC, LABEL)` is Grafana's, not PromQL.
            if let Some(args) = promql.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
                let (metric, label) = args.split_once(',').expect("label_values(METRIC, LABEL)");
                let (metric, label) = (metric.trim(), label.trim());
                if !exported.get(metric).is_some_and(|l| l.contains(label)) {
                    problems.push(format!("{q}: {metric} has no label {label}"));
                }
                continue;
            }
            match promql_parser::parser::parse(&promql) {
                Ok(expr) => read.extend(check_promql(&expr, &exported, &mut problems)),
                Err(e) => problems.push(format!("{q}: not PromQL: {e}")),
            }
        }
        assert!(
            problems.is_empty(),
            "the Grafana dashboard asks for what the agent does not export:\n{}",
            problems.join("\n")
        );
        // The panels the dashboard promises read these.
        for want in [
            "splitter_version_share",
            "splitter_endpoint_flows_total",
            "splitter_requests_total",
            "splitter_responses_total",
            "splitter_request_duration_seconds_bucket",
            "splitter_mirror_comparisons_total",
            "splitter_rollout_percent",
            "splitter_datapath_total",
        ] {
            assert!(read.contains(want), "no panel reads {want}: {read:?}");
        }
        // The check itself catches a wrong name and a wrong label.
        for bad in [
            "rate(splitter_nope_total[1m])",
            "sum by (colour) (splitter_version_share)",
            "splitter_version_share{colour=\"x\"}",
        ] {
            let mut p = Vec::new();
            check_promql(&promql_parser::parser::parse(bad).unwrap(), &exported, &mut p);
            assert!(!p.is_empty(), "{bad} passed");
        }
    }
}
