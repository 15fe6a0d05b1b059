//! Latency histograms: a lock-free recorder, its snapshots, their
//! differences and quantiles (what the rollout gates and `/metrics` read).

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) of the latency histogram buckets; a last bucket
/// holds everything slower.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A lock-free latency histogram (per bucket, not cumulative).
#[derive(Debug, Default)]
pub struct Latency {
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Latency {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum_secs: self.sum_us.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// A histogram's counts at one moment (per bucket of [`LATENCY_BUCKETS`],
/// then the overflow bucket) and the sum of the observations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySnapshot {
    pub counts: Vec<u64>,
    pub sum_secs: f64,
}

impl LatencySnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s observations (the same buckets) to these.
    pub fn add(&mut self, other: &LatencySnapshot) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_secs += other.sum_secs;
    }

    /// What was observed after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        LatencySnapshot {
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
                .collect(),
            sum_secs: (self.sum_secs - earlier.sum_secs).max(0.0),
        }
    }

    /// The `q` quantile (0..=1) as the upper bound of the bucket it falls in
    /// (`f64::INFINITY` in the overflow bucket); `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }

    /// `(upper bound, count in this bucket)` pairs: what the encoder takes
    /// (it writes them cumulative, as Prometheus wants them).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| (LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), *c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_bucket_bounds_and_windows_subtract() {
        let h = Latency::default();
        for _ in 0..98 {
            h.observe(Duration::from_micros(800));
        }
        h.observe(Duration::from_millis(40));
        h.observe(Duration::from_secs(30));
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        assert_eq!(s.quantile(0.5), Some(0.001));
        assert_eq!(s.quantile(0.99), Some(0.05));
        assert_eq!(s.quantile(1.0), Some(f64::INFINITY));
        let later = {
            h.observe(Duration::from_millis(300));
            h.snapshot()
        };
        let window = later.since(&s);
        assert_eq!(window.count(), 1);
        assert_eq!(window.quantile(0.99), Some(0.5));
        assert_eq!(LatencySnapshot::default().quantile(0.99), None);
        assert_eq!(s.buckets().last(), Some(&(f64::INFINITY, 1)));
    }
}
