//! Prometheus metrics: what the agent exposes on `metrics.listen` (GET
//! /metrics, OpenMetrics text through the official `prometheus-client`
//! encoder), the latency histograms the l7 proxy records, and windowed views
//! of those (the observed split over the last minute, a p99 over a window).
//!
//! The agent loop owns every source (kernel maps, l7 counters, its own
//! counters): a scrape asks it for a [`Scrape`], a plain snapshot, which is
//! encoded off the loop.

use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};
use splitter_common::service::EndpointStats;
pub use splitter_model::latency::{Latency, LatencySnapshot, LATENCY_BUCKETS};
use splitter_model::observe::{Counts, VersionSample};

/// Everything one scrape shows, gathered by the agent loop.
#[derive(Debug, Default)]
pub struct Scrape {
    pub services: Vec<ServiceMetrics>,
    /// Every data-path counter by its name (`Stat::name`).
    pub datapath: Vec<(&'static str, u64)>,
    /// Flows in the kernel table per service, as of the last sweep.
    pub active_flows: BTreeMap<String, u64>,
    pub agent: AgentMetrics,
    /// Each service's last rollout.
    pub rollouts: BTreeMap<String, splitter_model::rollout::Rollout>,
}

#[derive(Debug, Default)]
pub struct ServiceMetrics {
    pub name: String,
    /// `l4` or `l7`.
    pub mode: &'static str,
    pub versions: Vec<VersionMetrics>,
    /// L7 mirror counters, when the service mirrors requests.
    pub l7_mirror: Option<crate::l7::mirror::MirrorCounts>,
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
}

type Labels = Vec<(&'static str, String)>;

/// One metric family being written: its descriptor, then each label set.
struct Family<'a> {
    enc: MetricEncoder<'a>,
}

fn family<'a>(
    enc: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
    kind: MetricType,
) -> Result<Family<'a>, std::fmt::Error> {
    Ok(Family { enc: enc.encode_descriptor(name, help, None, kind)? })
}

impl Family<'_> {
    fn counter(&mut self, labels: &Labels, v: u64) -> Result<(), std::fmt::Error> {
        ConstCounter::new(v).encode(self.enc.encode_family(labels)?)
    }
    /// One counter per part, each with `key="part"` added to `labels`.
    fn split(&mut self, labels: &Labels, key: &'static str, parts: &[(&str, u64)]) -> Result<(), std::fmt::Error> {
        for (part, n) in parts {
            let mut l = labels.clone();
            l.push((key, (*part).to_owned()));
            self.counter(&l, *n)?;
        }
        Ok(())
    }
    fn gauge(&mut self, labels: &Labels, v: f64) -> Result<(), std::fmt::Error> {
        ConstGauge::new(v).encode(self.enc.encode_family(labels)?)
    }
    fn histogram(&mut self, labels: &Labels, h: &LatencySnapshot) -> Result<(), std::fmt::Error> {
        self.enc.encode_family(labels)?.encode_histogram::<NoLabelSet>(h.sum_secs, h.count(), &h.buckets(), None)
    }
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let v = |s: &ServiceMetrics, ver: &VersionMetrics| -> Labels {
            vec![("service", s.name.clone()), ("version", ver.name.clone())]
        };
        let versions = || self.services.iter().flat_map(|s| s.versions.iter().map(move |v| (s, v)));
        let mut f = family(
            &mut enc,
            "splitter_version_weight",
            "Relative weight a version is served with now (file plus runtime changes).",
            MetricType::Gauge,
        )?;
        for (s, ver) in versions() {
            f.gauge(&v(s, ver), f64::from(ver.weight))?;
        }
        let mut f = family(
            &mut enc,
            "splitter_version_share",
            "Configured share of new flows (l4) or requests (l7), 0 to 1.",
            MetricType::Gauge,
        )?;
        for (s, ver) in versions() {
            f.gauge(&v(s, ver), ver.share)?;
        }
        let endpoints = || {
            versions().flat_map(|(s, ver)| {
                ver.endpoints.iter().map(move |(addr, st)| {
                    (vec![("service", s.name.clone()), ("version", ver.name.clone()), ("endpoint", addr.clone())], st)
                })
            })
        };
        let mut f = family(
            &mut enc,
            "splitter_endpoint_flows",
            "Flows the kernel placed on an endpoint (new and adopted).",
            MetricType::Counter,
        )?;
        for (l, st) in endpoints() {
            f.counter(&l, st.flows)?;
        }
        for (name, help, pick) in [
            ("splitter_endpoint_packets", "Packets of an endpoint's flows, towards it (in) and its replies (out).", 0),
            ("splitter_endpoint_bytes", "Bytes of an endpoint's flows, towards it (in) and its replies (out).", 1),
        ] {
            let mut f = family(&mut enc, name, help, MetricType::Counter)?;
            for (l, st) in endpoints() {
                let parts = if pick == 0 {
                    [("in", st.packets_in), ("out", st.packets_out)]
                } else {
                    [("in", st.bytes_in), ("out", st.bytes_out)]
                };
                f.split(&l, "direction", &parts)?;
            }
        }
        let mut f = family(
            &mut enc,
            "splitter_endpoint_resets",
            "TCP resets an endpoint sent to its clients.",
            MetricType::Counter,
        )?;
        for (l, st) in endpoints() {
            f.counter(&l, st.resets)?;
        }
        let mut f = family(
            &mut enc,
            "splitter_endpoint_mirrored_packets",
            "Copies of an endpoint's mirrored flows sent to the mirror interface (both ways).",
            MetricType::Counter,
        )?;
        for (l, st) in endpoints() {
            f.counter(&l, st.mirrored_packets)?;
        }
        let mut f =
            family(&mut enc, "splitter_endpoint_mirrored_bytes", "Bytes of those copies.", MetricType::Counter)?;
        for (l, st) in endpoints() {
            f.counter(&l, st.mirrored_bytes)?;
        }
        let mut f = family(
            &mut enc,
            "splitter_active_flows",
            "Flows in the kernel flow table, per service, as of the agent's last sweep.",
            MetricType::Gauge,
        )?;
        for (service, n) in &self.active_flows {
            f.gauge(&vec![("service", service.clone())], *n as f64)?;
        }
        let mut f = family(&mut enc, "splitter_datapath", "Data-path events by kind, summed over CPUs: packets seen, passed and dropped by reason, malformed by reason, flows, redirects, mirror copies and failures (see `splitter status`).", MetricType::Counter)?;
        for (name, n) in &self.datapath {
            f.counter(&vec![("event", (*name).to_owned())], *n)?;
        }
        let l7 = || versions().filter_map(|(s, ver)| ver.l7.as_ref().map(|x| (v(s, ver), x)));
        let mut f =
            family(&mut enc, "splitter_requests", "Requests the l7 proxy routed to a version.", MetricType::Counter)?;
        for (l, (c, _)) in l7() {
            f.counter(&l, c.requests)?;
        }
        let mut f = family(&mut enc, "splitter_responses", "Responses by status class: from the endpoints (1xx..5xx), or the proxy's own 502 (endpoint unreachable or failed) and 504 (no answer in time).", MetricType::Counter)?;
        for (l, (c, _)) in l7() {
            let classes = [
                ("1xx", c.responses_1xx),
                ("2xx", c.responses_2xx),
                ("3xx", c.responses_3xx),
                ("4xx", c.responses_4xx),
                ("5xx", c.responses_5xx),
                ("proxy_502", c.bad_gateway),
                ("proxy_504", c.timeouts),
            ];
            f.split(&l, "class", &classes)?;
        }
        let mut f = family(
            &mut enc,
            "splitter_request_duration_seconds",
            "Time from a request's arrival to its response head (or the proxy's error answer).",
            MetricType::Histogram,
        )?;
        for (l, (_, h)) in l7() {
            f.histogram(&l, h)?;
        }
        let mirrors = || {
            self.services.iter().filter_map(|s| s.l7_mirror.as_ref().map(|m| (vec![("service", s.name.clone())], m)))
        };
        let mut f = family(
            &mut enc,
            "splitter_mirror_requests",
            "Requests sampled for the l7 mirror, by what became of the copy.",
            MetricType::Counter,
        )?;
        for (l, m) in mirrors() {
            let outcomes = [
                ("sampled", m.sampled),
                ("sent", m.sent),
                ("dropped_queue_full", m.dropped_queue_full),
                ("skipped_body_too_large", m.skipped_body_too_large),
            ];
            f.split(&l, "outcome", &outcomes)?;
        }
        let mut f = family(
            &mut enc,
            "splitter_mirror_comparisons",
            "Shadow answers compared with the primary's, by result.",
            MetricType::Counter,
        )?;
        for (l, m) in mirrors() {
            let results = [
                ("match", m.matched),
                ("differ", m.differ),
                ("error", m.shadow_errors),
                ("timeout", m.shadow_timeouts),
            ];
            f.split(&l, "result", &results)?;
        }
        let mut f = family(
            &mut enc,
            "splitter_rollout_percent",
            "The canary's share at the current step of a service's rollout.",
            MetricType::Gauge,
        )?;
        for (service, r) in &self.rollouts {
            f.gauge(&vec![("service", service.clone()), ("to", r.plan.to.clone())], f64::from(r.percent()))?;
        }
        let mut f = family(
            &mut enc,
            "splitter_rollout_state",
            "1 for the state a service's last rollout is in (running, paused, promoted, rolled_back, aborted).",
            MetricType::Gauge,
        )?;
        for (service, r) in &self.rollouts {
            let state = match r.state {
                splitter_model::rollout::State::Running => "running",
                splitter_model::rollout::State::Paused { .. } => "paused",
                splitter_model::rollout::State::Promoted => "promoted",
                splitter_model::rollout::State::RolledBack { .. } => "rolled_back",
                splitter_model::rollout::State::Aborted => "aborted",
            };
            f.gauge(&vec![("service", service.clone()), ("state", state.into())], 1.0)?;
        }
        let a = &self.agent;
        let mut f = family(
            &mut enc,
            "splitter_reloads",
            "Config reloads (file change or SIGHUP) by result.",
            MetricType::Counter,
        )?;
        f.counter(&vec![("result", "ok".into())], a.reloads_ok)?;
        f.counter(&vec![("result", "failed".into())], a.reloads_failed)?;
        let mut f = family(
            &mut enc,
            "splitter_control_requests",
            "Control-socket requests by operation and result.",
            MetricType::Counter,
        )?;
        for ((op, result), n) in &a.control {
            f.counter(&vec![("op", (*op).into()), ("result", (*result).into())], *n)?;
        }
        let mut f = family(
            &mut enc,
            "splitter_apply_duration_seconds",
            "Time to apply a change (control request or reload) to the data path and proxy.",
            MetricType::Histogram,
        )?;
        f.histogram(&Vec::new(), &a.apply)?;
        let mut f = family(
            &mut enc,
            "splitter_agent_start_time_seconds",
            "When the agent started, seconds since the Unix epoch.",
            MetricType::Gauge,
        )?;
        f.gauge(&Vec::new(), a.started_unix as f64)?;
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
                            sample.placed = c.requests;
                            sample.errors = c.responses_5xx + c.bad_gateway + c.timeouts;
                            sample.latency = latency.clone();
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

/// Asks the agent loop for a scrape.
pub type ScrapeRequests = tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Scrape>>;

/// Serves GET /metrics on `listener` until the process exits; every scrape
/// asks the agent loop (through `requests`) for a fresh snapshot.
pub async fn serve(listener: tokio::net::TcpListener, requests: ScrapeRequests) {
    use http_body_util::Full;
    use hyper::{body::Bytes, Response, StatusCode};
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let requests = requests.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let requests = requests.clone();
                async move {
                    let reply = |status, ctype: &str, body: String| {
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        *r.status_mut() = status;
                        r.headers_mut().insert(http::header::CONTENT_TYPE, ctype.parse().expect("valid header"));
                        Ok::<_, Infallible>(r)
                    };
                    let format =
                        Format::negotiate(req.headers().get(http::header::ACCEPT).and_then(|a| a.to_str().ok()));
                    if req.method() != http::Method::GET || req.uri().path() != "/metrics" {
                        return reply(StatusCode::NOT_FOUND, "text/plain", "splitter serves GET /metrics\n".into());
                    }
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let scrape = match requests.send(tx).await {
                        Ok(()) => rx.await.ok(),
                        Err(_) => None,
                    };
                    match scrape {
                        Some(s) => reply(StatusCode::OK, format.content_type(), s.render(format)),
                        None => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the agent is stopping\n".into()),
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
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

    #[test]
    fn a_scrape_renders_as_openmetrics_text() {
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
            l7_mirror: None,
        });
        scrape.datapath.push(("passed", 3));
        let text = scrape.render(Format::OpenMetrics);
        for want in [
            "# TYPE splitter_endpoint_flows counter",
            "splitter_endpoint_flows_total{service=\"shop\",version=\"blue\",endpoint=\"10.0.0.1:80\"} 7",
            "splitter_version_weight{service=\"shop\",version=\"blue\"} 95",
            "splitter_datapath_total{event=\"passed\"} 3",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;version=1.0.0")), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }
}
