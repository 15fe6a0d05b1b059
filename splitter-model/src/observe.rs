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
}

impl VersionSample {
    /// Adds `other`'s counts to these (versions summed into a baseline).
    pub fn add(&mut self, other: &VersionSample) {
        self.placed += other.placed;
        self.errors += other.errors;
        self.resets += other.resets;
        self.latency.add(&other.latency);
    }

    /// What happened after `earlier`.
    pub fn since(&self, earlier: &VersionSample) -> VersionSample {
        VersionSample {
            placed: self.placed.saturating_sub(earlier.placed),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self.latency.since(&earlier.latency),
            resets: self.resets.saturating_sub(earlier.resets),
        }
    }
}

/// Service → version → counts.
pub type Counts = BTreeMap<String, BTreeMap<String, VersionSample>>;

/// Samples over the last `keep`.
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
}
