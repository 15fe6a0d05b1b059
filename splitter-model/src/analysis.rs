//! Release analysis from outside the agent (`analysis:`): a Prometheus
//! server and named metric queries a rollout's steps are judged on, the
//! templated query a step runs, and the verdict on what it returned. Pure:
//! the agent's gatherer (`splitter-user/src/analysis/`) runs the queries
//! and hands the verdicts to the rollout.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

/// `analysis:` in the config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<Prometheus>,
    #[serde(default)]
    pub metrics: BTreeMap<String, Metric>,
    /// Hooks rollouts call (`rollout.webhooks`, `--webhook`), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub webhooks: BTreeMap<String, crate::webhook::Webhook>,
}

/// `analysis.prometheus`: the server the metrics' queries go to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prometheus {
    /// `http://host:port` or `https://...` (a path prefix allowed); its
    /// `/api/v1/query` is asked.
    pub url: String,
    /// How long a query may take before the step's reading is inconclusive.
    #[serde(default = "default_timeout", with = "crate::config::duration")]
    pub timeout: Duration,
    /// A file holding a bearer token sent with each query (read at each
    /// query, so a rotated token is used at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<std::path::PathBuf>,
    /// https: the PEM certificate(s) of the CA that signed Prometheus's
    /// certificate (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<std::path::PathBuf>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// One metric: a PromQL query with `{{variables}}` and the range its value
/// must stay in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The same query with `{{canary}}` := the baseline version, and how far
    /// below it the canary may fall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// A fraction (0.1) or a percentage (`10%`) of the baseline's value.
    #[serde(deserialize_with = "fraction")]
    pub max_drop: f64,
}

/// `max_drop`: a share of the baseline.
fn fraction<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    share(d)
}

/// A share written as a fraction (0.1) or a percentage (`10%`), 0 to 1.
/// Refused inside the value's deserialization, so the error's path names
/// the key.
pub(crate) fn share<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct Share;
    impl serde::de::Visitor<'_> for Share {
        type Value = f64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a share such as 10% or 0.1")
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<f64, E> {
            in_range(v, &v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<f64, E> {
            in_range(v as f64, &v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<f64, E> {
            in_range(v as f64, &v.to_string())
        }
        fn visit_str<E: serde::de::Error>(self, t: &str) -> Result<f64, E> {
            let bad = || E::custom(format!("{t} is not a share: write e.g. 10% or 0.1"));
            let v = match t.trim().strip_suffix('%') {
                Some(p) => p.trim().parse::<f64>().map_err(|_| bad())? / 100.0,
                None => t.trim().parse().map_err(|_| bad())?,
            };
            in_range(v, t)
        }
    }
    fn in_range<E: serde::de::Error>(v: f64, shown: &str) -> Result<f64, E> {
        if !(0.0..=1.0).contains(&v) {
            return Err(E::custom(format!("{shown} is out of range: use 0% to 100%")));
        }
        Ok(v)
    }
    d.deserialize_any(Share)
}

/// The variables a query may name.
pub const VARIABLES: [&str; 5] = ["service", "canary", "baseline", "step", "interval"];

/// What a step's queries are rendered with.
#[derive(Clone, Debug, PartialEq)]
pub struct Vars {
    pub service: String,
    pub canary: String,
    pub baseline: String,
    /// The step, from 1.
    pub step: usize,
    pub interval: Duration,
}

impl Vars {
    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "service" => self.service.clone(),
            "canary" => self.canary.clone(),
            "baseline" => self.baseline.clone(),
            "step" => self.step.to_string(),
            // PromQL's duration syntax: whole seconds.
            "interval" => format!("{}s", self.interval.as_secs().max(1)),
            _ => return None,
        })
    }

    /// The same with the baseline in the canary's place (a metric's
    /// `baseline:` comparison).
    pub fn for_baseline(&self) -> Vars {
        Vars { canary: self.baseline.clone(), ..self.clone() }
    }
}

/// `query` with each `{{name}}` replaced; an unknown or unclosed one is an
/// error naming it.
pub fn render(query: &str, vars: &Vars) -> Result<String, String> {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end =
            after.find("}}").ok_or_else(|| format!("an unclosed {{{{ at byte {}", query.len() - rest.len() + at))?;
        let name = after[..end].trim();
        let value = vars.get(name).ok_or_else(|| {
            format!("{{{{{name}}}}} is not a variable: use {}", VARIABLES.map(|v| format!("{{{{{v}}}}}")).join(", "))
        })?;
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Metric {
    /// What `validate` checks; the error starts with the key under the
    /// metric (`query: ...`).
    pub fn check(&self) -> Result<(), String> {
        if self.query.trim().is_empty() {
            return Err("query: it is empty".into());
        }
        let probe = Vars {
            service: "s".into(),
            canary: "c".into(),
            baseline: "b".into(),
            step: 1,
            interval: Duration::from_secs(60),
        };
        render(&self.query, &probe).map_err(|e| format!("query: {e}"))?;
        if self.min.is_none() && self.max.is_none() && self.baseline.is_none() {
            return Err("give min, max or baseline: { max_drop }, or the metric judges nothing".into());
        }
        for (key, v) in [("min", self.min), ("max", self.max)] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(format!("{key}: it must be a finite number"));
            }
        }
        if let (Some(min), Some(max)) = (self.min, self.max) {
            if min > max {
                return Err(format!("min {min} is above max {max}"));
            }
        }
        Ok(())
    }
}

impl Prometheus {
    pub fn check(&self) -> Result<(), String> {
        let https = crate::webhook::check_url(&self.url)?;
        if self.url.contains(['?', '#']) {
            return Err(format!("url: {:?}: give the server's address without a query", self.url));
        }
        crate::webhook::check_ca(&self.ca, https)?;
        if let Some(path) = self.bearer_token_file.as_ref().filter(|p| !p.is_absolute()) {
            return Err(format!("bearer_token_file: {path:?} is not an absolute path: write it from /"));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err("timeout: use 1ms to 60s".into());
        }
        Ok(())
    }
}

impl Analysis {
    pub fn is_empty(&self) -> bool {
        self == &Analysis::default()
    }

    /// What `validate` checks; the error starts with the key under
    /// `analysis.`.
    pub fn check(&self) -> Result<(), String> {
        if let Some(p) = &self.prometheus {
            p.check().map_err(|e| format!("prometheus.{e}"))?;
        } else if !self.metrics.is_empty() {
            return Err("metrics: they need prometheus: { url: http://HOST:9090 } to be asked".into());
        }
        for (name, m) in &self.metrics {
            m.check().map_err(|e| format!("metrics.{name}.{e}"))?;
        }
        for (name, w) in &self.webhooks {
            w.check().map_err(|e| format!("webhooks.{name}.{e}"))?;
        }
        Ok(())
    }
}

/// One metric's reading for a step: its value (and the baseline's), the
/// verdict, and a description of the limit; or why there is none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// `min 0.02`, `max 0.5`, `at most 10% below the baseline`.
    pub limit: String,
    /// `None`: inconclusive (no value, NaN, Prometheus unreachable); never a pass.
    pub ok: Option<bool>,
    /// Why it is inconclusive, or which limit it breached.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
}

/// The verdict on `metric`'s values: the canary's, and the baseline's when
/// the metric compares (each `Err` saying why it is missing).
pub fn judge(metric: &Metric, canary: Result<f64, String>, baseline: Option<Result<f64, String>>) -> Judged {
    let mut limits = Vec::new();
    if let Some(min) = metric.min {
        limits.push(format!("min {min}"));
    }
    if let Some(max) = metric.max {
        limits.push(format!("max {max}"));
    }
    if let Some(b) = &metric.baseline {
        limits.push(format!("at most {}% below the baseline", b.max_drop * 100.0));
    }
    let limit = limits.join(", ");
    let inconclusive = |value, baseline, why: String| Judged { value, baseline, limit: limit.clone(), ok: None, why };
    let value = match canary {
        Ok(v) if v.is_finite() => v,
        Ok(v) => return inconclusive(None, None, format!("the query gave {v}")),
        Err(why) => return inconclusive(None, None, why),
    };
    let base = match baseline {
        None => None,
        Some(Ok(b)) if b.is_finite() => Some(b),
        Some(Ok(b)) => return inconclusive(Some(value), None, format!("the baseline's query gave {b}")),
        Some(Err(why)) => return inconclusive(Some(value), None, format!("the baseline's query: {why}")),
    };
    let mut why = String::new();
    if metric.min.is_some_and(|min| value < min) {
        why = format!("below its min {}", metric.min.unwrap_or_default());
    } else if metric.max.is_some_and(|max| value > max) {
        why = format!("above its max {}", metric.max.unwrap_or_default());
    } else if let (Some(b), Some(check)) = (base, &metric.baseline) {
        if value < b - b.abs() * check.max_drop {
            why = format!("more than {}% below the baseline's {b}", check.max_drop * 100.0);
        }
    }
    Judged { value: Some(value), baseline: base, limit, ok: Some(why.is_empty()), why }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            service: "shop".into(),
            canary: "green".into(),
            baseline: "blue".into(),
            step: 2,
            interval: Duration::from_secs(90),
        }
    }

    #[test]
    fn queries_are_rendered_with_the_steps_variables_and_unknown_ones_refused() {
        let q = r#"sum(rate(checkouts_total{service="{{service}}",version="{{ canary }}"}[{{interval}}])) / {{step}}"#;
        assert_eq!(
            render(q, &vars()).unwrap(),
            r#"sum(rate(checkouts_total{service="shop",version="green"}[90s])) / 2"#
        );
        assert_eq!(render("x{version=\"{{canary}}\"}", &vars().for_baseline()).unwrap(), "x{version=\"blue\"}");
        assert!(render("{{canry}}", &vars()).unwrap_err().contains("{{canry}} is not a variable"));
        assert!(render("up{{", &vars()).unwrap_err().contains("unclosed"));
        // PromQL's own braces pass.
        assert_eq!(render("up{job=\"a\"}", &vars()).unwrap(), "up{job=\"a\"}");
    }

    #[test]
    fn a_value_is_judged_against_min_max_and_the_baseline_and_no_value_is_never_a_pass() {
        let m = |min, max, drop: Option<f64>| Metric {
            query: "q".into(),
            min,
            max,
            baseline: drop.map(|max_drop| Baseline { max_drop }),
        };
        let j = judge(&m(Some(0.02), None, None), Ok(0.01), None);
        assert_eq!((j.ok, j.value, j.why.as_str()), (Some(false), Some(0.01), "below its min 0.02"));
        assert_eq!(judge(&m(Some(0.02), None, None), Ok(0.05), None).ok, Some(true));
        assert_eq!(judge(&m(None, Some(0.5), None), Ok(0.6), None).ok, Some(false));
        let d = m(None, None, Some(0.1));
        assert_eq!(judge(&d, Ok(0.95), Some(Ok(1.0))).ok, Some(true));
        let j = judge(&d, Ok(0.85), Some(Ok(1.0)));
        assert_eq!((j.ok, j.baseline), (Some(false), Some(1.0)));
        assert!(j.why.contains("more than 10% below"), "{}", j.why);
        for (canary, baseline) in [
            (Ok(f64::NAN), None),
            (Err("no series".to_owned()), None),
            (Ok(1.0), Some(Err("unreachable".to_owned()))),
            (Ok(1.0), Some(Ok(f64::INFINITY))),
        ] {
            let metric = if baseline.is_some() { &d } else { &m(Some(0.0), None, None) };
            let j = judge(metric, canary, baseline);
            assert_eq!(j.ok, None, "{j:?}");
            assert!(!j.why.is_empty());
        }
    }

    #[test]
    fn the_config_is_checked_naming_the_field() {
        let mut a = Analysis {
            prometheus: Some(Prometheus {
                url: "http://127.0.0.1:9090".into(),
                timeout: default_timeout(),
                bearer_token_file: None,
                ca: None,
            }),
            metrics: [(
                "conversion".to_owned(),
                Metric { query: "x{v=\"{{canary}}\"}".into(), min: Some(0.02), max: None, baseline: None },
            )]
            .into(),
            webhooks: BTreeMap::new(),
        };
        assert_eq!(a.check(), Ok(()));
        a.metrics.get_mut("conversion").unwrap().query = "x{v=\"{{version}}\"}".into();
        assert!(a.check().unwrap_err().starts_with("metrics.conversion.query: {{version}} is not a variable"));
        a.metrics.get_mut("conversion").unwrap().query = "x".into();
        a.metrics.get_mut("conversion").unwrap().min = None;
        assert!(a.check().unwrap_err().starts_with("metrics.conversion.give min, max or baseline"));
        a.metrics.get_mut("conversion").unwrap().min = Some(1.0);
        a.metrics.get_mut("conversion").unwrap().max = Some(0.5);
        assert!(a.check().unwrap_err().contains("min 1 is above max 0.5"));
        a.metrics.get_mut("conversion").unwrap().max = None;
        a.prometheus.as_mut().unwrap().url = "ftp://prom:9090".into();
        assert!(a.check().unwrap_err().starts_with("prometheus.url: \"ftp://prom:9090\" must start with http://"));
        a.prometheus.as_mut().unwrap().url = "https://prom:9090".into();
        a.prometheus.as_mut().unwrap().bearer_token_file = Some("token".into());
        assert!(a.check().unwrap_err().starts_with("prometheus.bearer_token_file: \"token\" is not an absolute"));
        a.prometheus.as_mut().unwrap().bearer_token_file = Some("/etc/splitter/prom-token".into());
        a.prometheus.as_mut().unwrap().ca = Some("/etc/splitter/prom-ca.pem".into());
        assert_eq!(a.check(), Ok(()));
        a.prometheus.as_mut().unwrap().url = "http://prom:9090".into();
        assert!(a.check().unwrap_err().starts_with("prometheus.ca: "), "{:?}", a.check());
        a.prometheus = None;
        assert!(a.check().unwrap_err().starts_with("metrics: they need prometheus"));
    }
}
