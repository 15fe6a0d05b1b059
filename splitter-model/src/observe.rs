//! What the agent observed recently: per service and version, cumulative
//! counts sampled every few seconds. The difference between two samples is
//! what happened in between: the observed split over the last minute (shown
//! by `status`) and the canary's health over a rollout step. Pure.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::latency::LatencySnapshot;

/// How often the agent samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The window `status` shows.
pub const STATUS_WINDOW: Duration = Duration::from_secs(60);
/// The longest window an analysis reads (`GET /v1/services/NAME/analysis`,
/// `splitter report --since`): what the agent keeps of its samples.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// Older than [`STATUS_WINDOW`] (and up to [`COARSE_UNTIL`]), one sample in
/// this long is kept: such a window's span may fall short of it by up to
/// this much, and ten minutes of samples (every service, every version)
/// cost a third of what every 5 s sample would.
pub const COARSE_EVERY: Duration = Duration::from_secs(30);
/// How far back samples are [`COARSE_EVERY`] apart.
pub const COARSE_UNTIL: Duration = Duration::from_secs(600);
/// Older than [`COARSE_UNTIL`], one sample in this long is kept (an hour
/// costs ten more samples).
pub const SPARSE_EVERY: Duration = Duration::from_secs(300);

/// Cumulative counts of one version (or their difference over a window).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionSample {
    /// New flows placed (l4) or requests routed (l7).
    pub placed: u64,
    /// L7: answers that count as errors: 5xx from endpoints, the proxy's
    /// 502 and 504.
    pub errors: u64,
    /// L7: response latency.
    pub latency: LatencySnapshot,
    /// L4: TCP resets the version's endpoints sent.
    #[serde(default)]
    pub resets: u64,
    /// L7, the mirrored version: copies whose answer was compared with the
    /// primary's, and those that differed.
    #[serde(default)]
    pub compared: u64,
    #[serde(default)]
    pub differed: u64,
}

impl VersionSample {
    /// Adds `other`'s counts to these (versions summed into a baseline).
    pub fn add(&mut self, other: &VersionSample) {
        self.placed += other.placed;
        self.errors += other.errors;
        self.resets += other.resets;
        self.compared += other.compared;
        self.differed += other.differed;
        self.latency.add(&other.latency);
    }

    /// What happened after `earlier`.
    pub fn since(&self, earlier: &VersionSample) -> VersionSample {
        VersionSample {
            placed: self.placed.saturating_sub(earlier.placed),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self.latency.since(&earlier.latency),
            resets: self.resets.saturating_sub(earlier.resets),
            compared: self.compared.saturating_sub(earlier.compared),
            differed: self.differed.saturating_sub(earlier.differed),
        }
    }
}

/// Service → version → counts.
pub type Counts = BTreeMap<String, BTreeMap<String, VersionSample>>;

/// Samples over the last `keep`: every one over the last [`STATUS_WINDOW`],
/// one per [`COARSE_EVERY`] before that back to [`COARSE_UNTIL`], and one
/// per [`SPARSE_EVERY`] beyond.
#[derive(Debug)]
pub struct History {
    samples: VecDeque<(Instant, Counts)>,
    keep: Duration,
}

impl History {
    pub fn new(keep: Duration) -> History {
        History { samples: VecDeque::new(), keep }
    }

    /// Records `counts` taken at `at`; forgets samples older than `keep`
    /// (but always one at least `keep` old, so a full window stays answerable).
    pub fn push(&mut self, at: Instant, counts: Counts) {
        self.samples.push_back((at, counts));
        let mut kept: Option<Instant> = None;
        self.samples.retain(|(t, _)| {
            let age = at.duration_since(*t);
            if age <= STATUS_WINDOW {
                return true;
            }
            let every = if age <= COARSE_UNTIL { COARSE_EVERY } else { SPARSE_EVERY };
            let keep = kept.is_none_or(|k| t.duration_since(k) >= every);
            if keep {
                kept = Some(*t);
            }
            keep
        });
        while self.samples.len() > 2 && at.duration_since(self.samples[1].0) >= self.keep {
            self.samples.pop_front();
        }
    }

    /// What happened between the oldest sample no more than `window` before
    /// `now` (or the oldest there is) and `now`'s counts, with the span it
    /// covers. `None` before the first sample.
    pub fn window(&self, now: Instant, current: &Counts, window: Duration) -> Option<(Duration, Counts)> {
        let (at, base) = self.samples.iter().find(|(at, _)| now.duration_since(*at) <= window)?;
        let delta = current
            .iter()
            .map(|(svc, versions)| {
                let versions = versions
                    .iter()
                    .map(|(v, c)| {
                        let earlier = base.get(svc).and_then(|b| b.get(v)).cloned().unwrap_or_default();
                        (v.clone(), c.since(&earlier))
                    })
                    .collect();
                (svc.clone(), versions)
            })
            .collect();
        Some((now.duration_since(*at), delta))
    }
}

/// What each version of a service did over a recent window: what an
/// outside judge (Argo Rollouts' `web` metric, a Flagger webhook, a
/// dashboard) reads from `GET /v1/services/NAME/analysis`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub service: String,
    /// `l4` or `l7`.
    pub mode: String,
    /// The window asked for, and the span the numbers cover: less just
    /// after the agent started, or up to one sample interval more.
    pub window_secs: u64,
    pub span_secs: f64,
    pub versions: BTreeMap<String, VersionAnalysis>,
}

/// One version over the window. A rate or quantile with nothing to read it
/// from is `null`: no data, which a judge must not take as good.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionAnalysis {
    /// Its weight now.
    pub weight: u32,
    /// L7: requests routed to it (the client's own failures not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// L4: new flows placed on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<u64>,
    /// L7: 5xx answers, the proxy's 502/504 and failed gRPC calls; L4: TCP
    /// resets from its endpoints.
    pub errors: u64,
    /// `errors` per request (l7) or flow (l4).
    pub error_rate: Option<f64>,
    /// L7: response latency quantiles, seconds.
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// L7, the mirrored version: copies compared with the primary's answer,
    /// how many differed, and their ratio.
    pub compared: u64,
    pub differed: u64,
    pub diff_rate: Option<f64>,
    /// Its endpoints, and how many are in service (`null` without health
    /// checks).
    pub endpoints: u32,
    pub endpoints_up: Option<u32>,
}

/// The analysis of `service` (`l4` when an l4 service) from what happened
/// over `span` (`window`, each version's counts over it): per version of
/// `versions` (name, weight now, endpoints, endpoints up if checked).
pub fn analyse(
    service: &str,
    l4: bool,
    window: Duration,
    span: Duration,
    counts: &BTreeMap<String, VersionSample>,
    versions: &[(String, u32, u32, Option<u32>)],
) -> Analysis {
    let rate = |n: u64, of: u64| (of > 0).then(|| n as f64 / of as f64);
    let versions = versions
        .iter()
        .map(|(name, weight, endpoints, endpoints_up)| {
            let c = counts.get(name).cloned().unwrap_or_default();
            let errors = if l4 { c.resets } else { c.errors };
            let v = VersionAnalysis {
                weight: *weight,
                requests: (!l4).then_some(c.placed),
                flows: l4.then_some(c.placed),
                errors,
                error_rate: rate(errors, c.placed),
                p50_seconds: if l4 { None } else { c.latency.quantile(0.5) },
                p99_seconds: if l4 { None } else { c.latency.quantile(0.99) },
                compared: c.compared,
                differed: c.differed,
                diff_rate: rate(c.differed, c.compared),
                endpoints: *endpoints,
                endpoints_up: *endpoints_up,
            };
            (name.clone(), v)
        })
        .collect();
    Analysis {
        service: service.to_owned(),
        mode: if l4 { "l4" } else { "l7" }.to_owned(),
        window_secs: window.as_secs(),
        span_secs: span.as_secs_f64(),
        versions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(placed: &[(&str, u64)]) -> Counts {
        let versions = placed
            .iter()
            .map(|(v, n)| ((*v).to_owned(), VersionSample { placed: *n, ..VersionSample::default() }))
            .collect();
        [("shop".to_owned(), versions)].into()
    }

    #[test]
    fn the_window_is_the_difference_to_the_oldest_sample_inside_it() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(60));
        assert!(h.window(t0, &counts(&[("blue", 1)]), Duration::from_secs(60)).is_none());
        for i in 0..30u64 {
            // 10 new flows on blue and 1 on green every 5 s.
            h.push(t0 + Duration::from_secs(5 * i), counts(&[("blue", 10 * i), ("green", i)]));
        }
        let now = t0 + Duration::from_secs(150);
        let (span, d) = h.window(now, &counts(&[("blue", 300), ("green", 30)]), Duration::from_secs(60)).unwrap();
        assert_eq!(span, Duration::from_secs(60));
        assert_eq!(d["shop"]["blue"].placed, 120);
        assert_eq!(d["shop"]["green"].placed, 12);
        // A version that appeared inside the window counts from zero.
        let (_, d) = h.window(now, &counts(&[("canary", 7)]), Duration::from_secs(60)).unwrap();
        assert_eq!(d["shop"]["canary"].placed, 7);
        assert!(h.samples.len() <= 14, "old samples are dropped: {}", h.samples.len());
    }

    #[test]
    fn an_analysis_reads_rates_and_quantiles_per_version_and_null_without_data() {
        let latency = crate::latency::Latency::default();
        for ms in [1u64, 1, 1, 1, 1, 1, 1, 1, 1, 900] {
            latency.observe(Duration::from_millis(ms));
        }
        let green = VersionSample {
            placed: 200,
            errors: 5,
            latency: latency.snapshot(),
            compared: 40,
            differed: 2,
            ..VersionSample::default()
        };
        let counts: BTreeMap<String, VersionSample> = [("green".to_owned(), green)].into();
        let versions = [("blue".to_owned(), 90, 2, Some(2)), ("green".to_owned(), 10, 1, Some(0))];
        let a = analyse("shop", false, Duration::from_secs(60), Duration::from_secs(55), &counts, &versions);
        let g = &a.versions["green"];
        assert_eq!((g.requests, g.flows, g.errors, g.weight), (Some(200), None, 5, 10));
        assert_eq!(g.error_rate, Some(0.025));
        assert_eq!(g.diff_rate, Some(0.05));
        assert!(g.p50_seconds.unwrap() <= 0.005, "{:?}", g.p50_seconds);
        assert!(g.p99_seconds.unwrap() >= 0.5, "{:?}", g.p99_seconds);
        assert_eq!((g.endpoints, g.endpoints_up), (1, Some(0)));
        // Blue saw nothing in the window: no rates, not zero rates.
        let b = &a.versions["blue"];
        assert_eq!((b.requests, b.error_rate, b.p99_seconds, b.diff_rate), (Some(0), None, None, None));
        assert_eq!((a.window_secs, a.span_secs, a.mode.as_str()), (60, 55.0, "l7"));
        // L4 counts flows and judges resets.
        let l4: BTreeMap<String, VersionSample> =
            [("green".to_owned(), VersionSample { placed: 50, resets: 1, ..VersionSample::default() })].into();
        let a = analyse("db", true, Duration::from_secs(60), Duration::from_secs(60), &l4, &versions[1..]);
        let g = &a.versions["green"];
        assert_eq!((g.requests, g.flows, g.errors, g.error_rate, g.p99_seconds), (None, Some(50), 1, Some(0.02), None));
    }

    #[test]
    fn beyond_a_minute_one_sample_per_30_s_is_kept_beyond_ten_one_per_5_min_and_long_windows_still_answer() {
        let t0 = Instant::now();
        let mut h = History::new(MAX_WINDOW);
        let n = 2 * 3600 / 5;
        for i in 0..n {
            h.push(t0 + Duration::from_secs(5 * i), counts(&[("blue", i)]));
        }
        // 12 fine samples in the last minute, ~18 coarse ones to ten
        // minutes, ~10 sparse ones to the hour, and the one at the edge.
        assert!(h.samples.len() <= 44, "{} samples kept", h.samples.len());
        let now = t0 + Duration::from_secs(5 * (n - 1));
        let current = counts(&[("blue", n - 1)]);
        for (window, every) in [
            (60u64, COARSE_EVERY),
            (120, COARSE_EVERY),
            (600, COARSE_EVERY),
            (1800, SPARSE_EVERY),
            (3600, SPARSE_EVERY),
        ] {
            let (span, d) = h.window(now, &current, Duration::from_secs(window)).unwrap();
            let short = Duration::from_secs(window) - span;
            assert!(short <= every, "window {window}s: span {span:?}");
            assert_eq!(d["shop"]["blue"].placed, span.as_secs() / 5, "window {window}s");
        }
        let (span, _) = h.window(now, &current, Duration::from_secs(60)).unwrap();
        assert_eq!(span, Duration::from_secs(60), "the last minute is exact");
    }
}
