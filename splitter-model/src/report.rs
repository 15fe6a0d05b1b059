//! `splitter report`: an A/B comparison of a service's versions over a
//! window. Each version is set against the baseline on the agent's own
//! numbers — requests or flows, the error rate with a two-proportion
//! z-test (p-value and sample sizes), p50/p99, mirror differences — and on
//! each analysis metric as Prometheus gives it per version. Pure: the CLI
//! gathers the analysis and the metrics' values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    analysis::Metric,
    observe::{Analysis, VersionAnalysis},
};

/// A difference is called significant below this p-value.
pub const ALPHA: f64 = 0.05;
/// Below this many events (or non-events) on either side, the normal
/// approximation behind the z-test is rough, and the report says so.
pub const FEW: u64 = 5;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub service: String,
    /// `l4` or `l7`.
    pub mode: String,
    /// The window asked for, and the span the numbers cover.
    pub since_secs: u64,
    pub span_secs: f64,
    /// The version the others are compared with.
    pub baseline: String,
    pub versions: BTreeMap<String, VersionAnalysis>,
    /// Each other version's error rate against the baseline's.
    pub error_rates: Vec<RateTest>,
    /// Each analysis metric: its limit and each version's value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, MetricRow>,
}

/// Two proportions compared: `events` of `trials` against the baseline's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateTest {
    pub version: String,
    pub against: String,
    pub events: u64,
    pub trials: u64,
    pub baseline_events: u64,
    pub baseline_trials: u64,
    pub rate: Option<f64>,
    pub baseline_rate: Option<f64>,
    /// `rate - baseline_rate`.
    pub difference: Option<f64>,
    pub z: Option<f64>,
    /// Two-sided.
    pub p_value: Option<f64>,
    /// `p_value < ALPHA`; `None` when there is nothing to test.
    pub significant: Option<bool>,
    /// Fewer than [`FEW`] events or non-events on a side: the p-value is
    /// rough.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rough: bool,
    /// Why there is no test, when there is none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
}

/// One analysis metric across the versions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    /// `min 0.02`, `max 0.5`...
    pub limit: String,
    pub values: BTreeMap<String, MetricValue>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricValue {
    pub value: Option<f64>,
    /// Relative to the baseline's value (0.1 = 10 % above).
    pub change: Option<f64>,
    /// Within the metric's `min`/`max` (`None`: no value, or no range).
    pub within: Option<bool>,
    /// Why there is no value.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
}

/// The complementary error function (Numerical Recipes' `erfcc`: a
/// Chebyshev fit with a relative error below 1.2e-7 everywhere, so small
/// p-values keep their digits).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let ans = t * (-z * z + poly).exp();
    if x >= 0.0 {
        ans
    } else {
        2.0 - ans
    }
}

/// The two-proportion z-test of `x1` of `n1` against `x2` of `n2` (pooled
/// variance): z and the two-sided p-value; `Err` says why there is none.
pub fn two_proportions(x1: u64, n1: u64, x2: u64, n2: u64) -> Result<(f64, f64), String> {
    if n1 == 0 || n2 == 0 {
        return Err("no traffic on one side".into());
    }
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1 + n2) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
    if se == 0.0 {
        return Err(if pooled == 0.0 { "no errors on either side" } else { "every one an error on both sides" }.into());
    }
    let z = (p1 - p2) / se;
    Ok((z, erfc(z.abs() / std::f64::consts::SQRT_2)))
}

fn rate_test(version: &str, v: &VersionAnalysis, against: &str, b: &VersionAnalysis) -> RateTest {
    let trials = |a: &VersionAnalysis| a.requests.or(a.flows).unwrap_or(0);
    let (n1, n2) = (trials(v), trials(b));
    let (x1, x2) = (v.errors.min(n1), b.errors.min(n2));
    let rough = [x1, n1 - x1, x2, n2 - x2].iter().any(|c| *c < FEW);
    let (z, p_value, why) = match two_proportions(x1, n1, x2, n2) {
        Ok((z, p)) => (Some(z), Some(p), String::new()),
        Err(why) => (None, None, why),
    };
    RateTest {
        version: version.to_owned(),
        against: against.to_owned(),
        events: x1,
        trials: n1,
        baseline_events: x2,
        baseline_trials: n2,
        rate: v.error_rate,
        baseline_rate: b.error_rate,
        difference: v.error_rate.zip(b.error_rate).map(|(a, b)| a - b),
        z,
        p_value,
        significant: p_value.map(|p| p < ALPHA),
        rough: rough && z.is_some(),
        why,
    }
}

/// The baseline when none is named: the version with the most traffic in
/// the window (ties: the most weight, then the first by name).
pub fn pick_baseline(a: &Analysis) -> Option<String> {
    a.versions
        .iter()
        .max_by(|(an, a), (bn, b)| {
            let t = |v: &VersionAnalysis| v.requests.or(v.flows).unwrap_or(0);
            (t(a), a.weight, std::cmp::Reverse(*an)).cmp(&(t(b), b.weight, std::cmp::Reverse(*bn)))
        })
        .map(|(name, _)| name.clone())
}

/// The report of `analysis` against `baseline`, with the analysis metrics
/// `metrics` (config) and their values per version (`values`: metric →
/// version → the value or why there is none).
pub fn build(
    analysis: &Analysis,
    baseline: &str,
    since_secs: u64,
    metrics: &BTreeMap<String, Metric>,
    values: &BTreeMap<String, BTreeMap<String, Result<f64, String>>>,
) -> Result<Report, String> {
    let Some(b) = analysis.versions.get(baseline) else {
        let known: Vec<&str> = analysis.versions.keys().map(String::as_str).collect();
        return Err(format!("{} has no version {baseline:?} (versions: {})", analysis.service, known.join(", ")));
    };
    let error_rates = analysis
        .versions
        .iter()
        .filter(|(name, _)| *name != baseline)
        .map(|(name, v)| rate_test(name, v, baseline, b))
        .collect();
    let mut rows = BTreeMap::new();
    for (name, metric) in metrics {
        let got = values.get(name);
        let value_of = |version: &str| match got.and_then(|g| g.get(version)) {
            Some(Ok(v)) if v.is_finite() => Ok(*v),
            Some(Ok(v)) => Err(format!("the query gave {v}")),
            Some(Err(why)) => Err(why.clone()),
            None => Err("not asked".to_owned()),
        };
        let base = value_of(baseline).ok();
        let mut row = BTreeMap::new();
        for version in analysis.versions.keys() {
            let mv = match value_of(version) {
                Ok(v) => MetricValue {
                    value: Some(v),
                    change: base.filter(|b| *b != 0.0).map(|b| (v - b) / b.abs()),
                    within: (metric.min.is_some() || metric.max.is_some())
                        .then(|| metric.min.is_none_or(|m| v >= m) && metric.max.is_none_or(|m| v <= m)),
                    why: String::new(),
                },
                Err(why) => MetricValue { value: None, change: None, within: None, why },
            };
            row.insert(version.clone(), mv);
        }
        let mut limits = Vec::new();
        if let Some(m) = metric.min {
            limits.push(format!("min {m}"));
        }
        if let Some(m) = metric.max {
            limits.push(format!("max {m}"));
        }
        if let Some(b) = &metric.baseline {
            limits.push(format!("at most {}% below the baseline", b.max_drop * 100.0));
        }
        rows.insert(name.clone(), MetricRow { limit: limits.join(", "), values: row });
    }
    Ok(Report {
        service: analysis.service.clone(),
        mode: analysis.mode.clone(),
        since_secs,
        span_secs: analysis.span_secs,
        baseline: baseline.to_owned(),
        versions: analysis.versions.clone(),
        error_rates,
        metrics: rows,
    })
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{:.2}%", v * 100.0))
}

fn seconds(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1000.0),
        Some(s) => format!("{s:.2}s"),
    }
}

impl Report {
    /// The report for people.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let unit = if self.mode == "l4" { "flows" } else { "requests" };
        let _ = writeln!(
            out,
            "{} ({}) over the last {}s (the numbers cover {:.1}s); baseline {}",
            self.service, self.mode, self.since_secs, self.span_secs, self.baseline
        );
        let _ = writeln!(
            out,
            "  {:<12} {:>6} {:>10} {:>8} {:>10} {:>9} {:>9} {:>10}",
            "version", "weight", unit, "errors", "error rate", "p50", "p99", "diff rate"
        );
        for (name, v) in &self.versions {
            let _ = writeln!(
                out,
                "  {:<12} {:>6} {:>10} {:>8} {:>10} {:>9} {:>9} {:>10}",
                name,
                v.weight,
                v.requests.or(v.flows).unwrap_or(0),
                v.errors,
                percent(v.error_rate),
                seconds(v.p50_seconds),
                seconds(v.p99_seconds),
                if v.compared > 0 { format!("{}/{}", v.differed, v.compared) } else { "-".to_owned() }
            );
        }
        for t in &self.error_rates {
            let head = format!(
                "  error rate, {} against {}: {} vs {}",
                t.version,
                t.against,
                percent(t.rate),
                percent(t.baseline_rate)
            );
            let sizes = format!("n = {} and {}", t.trials, t.baseline_trials);
            let _ = match (t.z, t.p_value) {
                (Some(z), Some(p)) => writeln!(
                    out,
                    "{head} ({:+.2} pp), z = {z:.2}, p = {p:.2e}: {} at {:.0}% ({sizes}){}",
                    t.difference.unwrap_or(0.0) * 100.0,
                    if p < ALPHA { "SIGNIFICANT" } else { "not significant" },
                    ALPHA * 100.0,
                    if t.rough { "; under 5 errors or successes on a side: the p-value is rough" } else { "" }
                ),
                _ => writeln!(out, "{head}: no test ({}; {sizes})", t.why),
            };
        }
        for (name, row) in &self.metrics {
            let values: Vec<String> = row
                .values
                .iter()
                .map(|(version, v)| match v.value {
                    Some(value) => {
                        let change = match v.change {
                            Some(c) if version != &self.baseline => format!(" ({:+.1}%)", c * 100.0),
                            _ => String::new(),
                        };
                        let out = if v.within == Some(false) { " OUT OF RANGE" } else { "" };
                        format!("{version} {value:.4}{change}{out}")
                    }
                    None => format!("{version} none ({})", v.why),
                })
                .collect();
            let _ = writeln!(out, "  metric {name} ({}): {}", row.limit, values.join(", "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_and_the_z_test_match_known_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-7);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-7);
        // z = 1.96 is p = 0.05 two-sided.
        assert!((erfc(1.96 / std::f64::consts::SQRT_2) - 0.049_995).abs() < 1e-5);
        // 30/1000 against 10/1000: z ≈ 3.19, p ≈ 0.0014 (by hand: pooled 0.02).
        let (z, p) = two_proportions(30, 1000, 10, 1000).unwrap();
        assert!((z - 3.194).abs() < 0.01, "{z}");
        assert!((p - 0.0014).abs() < 0.0002, "{p}");
        // The same rates: z 0, p 1.
        let (z, p) = two_proportions(5, 500, 10, 1000).unwrap();
        assert!(z.abs() < 1e-12 && (p - 1.0).abs() < 1e-7);
        assert!(two_proportions(0, 100, 0, 100).unwrap_err().contains("no errors"));
        assert!(two_proportions(1, 0, 0, 100).unwrap_err().contains("no traffic"));
    }

    fn version(weight: u32, requests: u64, errors: u64) -> VersionAnalysis {
        VersionAnalysis {
            weight,
            requests: Some(requests),
            flows: None,
            errors,
            error_rate: (requests > 0).then(|| errors as f64 / requests as f64),
            p50_seconds: Some(0.001),
            p99_seconds: Some(0.009),
            compared: 0,
            differed: 0,
            diff_rate: None,
            endpoints: 1,
            endpoints_up: None,
        }
    }

    #[test]
    fn versions_are_set_against_the_busiest_one_with_the_test_and_the_metrics() {
        let a = Analysis {
            service: "shop".into(),
            mode: "l7".into(),
            window_secs: 3600,
            span_secs: 3590.0,
            versions: [("blue".to_owned(), version(90, 9000, 9)), ("green".to_owned(), version(10, 1000, 30))].into(),
        };
        assert_eq!(pick_baseline(&a).as_deref(), Some("blue"));
        let metric = Metric { query: "q".into(), min: Some(0.02), max: None, baseline: None };
        let values: BTreeMap<String, BTreeMap<String, Result<f64, String>>> =
            [("conversion".to_owned(), [("blue".to_owned(), Ok(0.05)), ("green".to_owned(), Ok(0.01))].into())].into();
        let r = build(&a, "blue", 3600, &[("conversion".to_owned(), metric)].into(), &values).unwrap();
        let t = &r.error_rates[0];
        assert_eq!(
            (t.version.as_str(), t.events, t.trials, t.baseline_events, t.baseline_trials),
            ("green", 30, 1000, 9, 9000)
        );
        assert_eq!(t.significant, Some(true), "{t:?}");
        assert!(t.p_value.unwrap() < 1e-10, "{t:?}");
        let g = &r.metrics["conversion"].values["green"];
        assert_eq!((g.value, g.within), (Some(0.01), Some(false)));
        assert!((g.change.unwrap() + 0.8).abs() < 1e-9);
        let text = r.render();
        assert!(text.contains("error rate, green against blue: 3.00% vs 0.10%"), "{text}");
        assert!(text.contains("SIGNIFICANT at 5% (n = 1000 and 9000)"), "{text}");
        assert!(
            text.contains("metric conversion (min 0.02): blue 0.0500, green 0.0100 (-80.0%) OUT OF RANGE"),
            "{text}"
        );
        // Too few to say: shown as such, not as a verdict.
        let quiet = Analysis {
            versions: [("blue".to_owned(), version(90, 50, 0)), ("green".to_owned(), version(10, 40, 0))].into(),
            ..a.clone()
        };
        let r = build(&quiet, "blue", 60, &BTreeMap::new(), &BTreeMap::new()).unwrap();
        assert_eq!(r.error_rates[0].significant, None);
        assert!(r.render().contains("no test (no errors on either side; n = 40 and 50)"), "{}", r.render());
        assert!(build(&a, "red", 60, &BTreeMap::new(), &BTreeMap::new()).unwrap_err().contains("no version \"red\""));
    }
}
