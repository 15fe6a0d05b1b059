//! The gatherer of release analysis (`analysis:`): asks Prometheus each of
//! a rollout step's metrics, rendered for the step, and judges the answers
//! (`splitter_model::analysis::judge`); the agent hands the verdicts to the
//! rollout with its own counts. `splitter report` asks each metric per
//! version.

pub mod http;
pub mod prometheus;
pub mod webhook;

use std::collections::BTreeMap;

use splitter_model::analysis::{judge, render, Analysis, Judged, Vars};

/// Each of `names` judged for the step `vars` describes, per `config`:
/// asked of its Prometheus (the canary's query, and the baseline's when the
/// metric compares). A name the config no longer has, or a config without
/// Prometheus, is inconclusive.
pub async fn evaluate(config: &Analysis, names: &[String], vars: &Vars) -> BTreeMap<String, Judged> {
    let client = match &config.prometheus {
        Some(p) => prometheus::Client::new(p),
        None => Err("analysis.prometheus is not configured".into()),
    };
    let mut out = BTreeMap::new();
    for name in names {
        let inconclusive = |why: String| Judged { value: None, baseline: None, limit: String::new(), ok: None, why };
        let judged = match (config.metrics.get(name), &client) {
            (None, _) => inconclusive(format!("{name} is no longer in analysis.metrics")),
            (Some(_), Err(why)) => inconclusive(why.clone()),
            (Some(metric), Ok(client)) => {
                let ask = |vars: Vars| async move {
                    let query = render(&metric.query, &vars)?;
                    client.value(&query).await
                };
                let canary = ask(vars.clone()).await;
                let baseline = match &metric.baseline {
                    Some(_) => Some(ask(vars.for_baseline()).await),
                    None => None,
                };
                judge(metric, canary, baseline)
            }
        };
        out.insert(name.clone(), judged);
    }
    out
}

/// Every metric of `config` for each of `versions` of `service` (as the
/// canary, `baseline` as the baseline, over `since`): metric → version →
/// its value or why there is none.
pub async fn per_version(
    config: &Analysis,
    service: &str,
    versions: &[String],
    baseline: &str,
    since: std::time::Duration,
) -> BTreeMap<String, BTreeMap<String, Result<f64, String>>> {
    let client = match &config.prometheus {
        Some(p) => prometheus::Client::new(p),
        None => Err("analysis.prometheus is not configured".into()),
    };
    let mut out = BTreeMap::new();
    for (name, metric) in &config.metrics {
        let mut row = BTreeMap::new();
        for version in versions {
            let vars = Vars {
                service: service.to_owned(),
                canary: version.clone(),
                baseline: baseline.to_owned(),
                step: 0,
                interval: since,
            };
            let value = match &client {
                Ok(c) => match render(&metric.query, &vars) {
                    Ok(q) => c.value(&q).await,
                    Err(e) => Err(e),
                },
                Err(why) => Err(why.clone()),
            };
            row.insert(version.clone(), value);
        }
        out.insert(name.clone(), row);
    }
    out
}
