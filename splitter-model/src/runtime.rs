//! Runtime changes on top of the config file: per-service weight overrides
//! set by `weight`, `flip` and `rollback`, with an undo history per service,
//! and l4 mirror settings set by `mirror`.
//! Pure and host-tested; the agent plans and applies what this returns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{Config, L4Mirror, Mirror, Mode};

/// Undo steps kept per service (`rollback` goes this far back).
pub const HISTORY_DEPTH: usize = 64;

pub use crate::config::Weights;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChangeError {
    #[error("no service {0:?} (services: {1})")]
    NoService(String, String),
    #[error("service {service:?} has no version {version:?} (versions: {known})")]
    NoVersion { service: String, version: String, known: String },
    #[error("service {0:?}: every version would weigh 0, so new connections would have nowhere to go")]
    AllZero(String),
    #[error("service {0:?}: nothing to roll back")]
    NothingToRollBack(String),
    #[error("service {0:?} is mode l7: `splitter mirror` sets l4 flow mirroring; an l7 service mirrors requests with `mirror: {{ version, percent }}` in the file")]
    NotL4(String),
    #[error("service {0:?}: {1}")]
    BadMirror(String, String),
    #[error("service {0:?} has a rollout in progress; `splitter rollout {0} --abort` (or --promote) first")]
    RolloutActive(String),
    #[error(transparent)]
    Plan(#[from] crate::rollout::PlanError),
    #[error("{0}: a rollout is already in progress; --abort or --promote it first")]
    RolloutInProgress(String),
    #[error("{0}: no rollout to steer; start one with --to VERSION")]
    NoRolloutToSteer(String),
    #[error("{0}: no rollout yet")]
    NoRollout(String),
    #[error("{service}: the rollout is {state}; nothing to do")]
    RolloutIs { service: String, state: String },
    #[error("`{0}` changes nothing")]
    NotAChange(&'static str),
    #[error("--analysis {name:?} is not in analysis.metrics of the config (metrics: {known})")]
    NoAnalysisMetric { name: String, known: String },
    #[error("--webhook {name:?} is not in analysis.webhooks of the config (webhooks: {known})")]
    NoWebhook { name: String, known: String },
    #[error(
        "{service}: nothing waits for approval (the rollout is {state}); --approve answers a rollout held \
         before its last step by a confirm-promotion webhook"
    )]
    NothingToApprove { service: String, state: String },
}

/// Overrides and history. The file stays the source of everything else.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    overrides: BTreeMap<String, Weights>,
    history: BTreeMap<String, Vec<Weights>>,
    /// L4 mirror settings that replace the file's (`None`: mirroring off).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    mirrors: BTreeMap<String, Option<L4Mirror>>,
    /// The last rollout of each service (running, paused or over).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rollouts: BTreeMap<String, crate::rollout::Rollout>,
    /// The declared rollout (`services.NAME.rollout`) last acted on, per
    /// service: a declaration that differs from it starts a rollout.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub declared: BTreeMap<String, crate::rollout::Plan>,
}

fn full_weights(file: &Config, service: &str, w: &Weights) -> Weights {
    file.services[service].versions.keys().map(|v| (v.clone(), w.get(v).copied().unwrap_or(0))).collect()
}

impl Runtime {
    /// The weights a service runs with now: its override, else the file's.
    pub fn weights(&self, file: &Config, service: &str) -> Result<Weights, ChangeError> {
        let svc = file.services.get(service).ok_or_else(|| {
            ChangeError::NoService(service.into(), file.services.keys().cloned().collect::<Vec<_>>().join(", "))
        })?;
        Ok(full_weights(file, service, self.overrides.get(service).unwrap_or(&svc.weights)))
    }

    /// `file` with every override applied. Overrides that no longer fit the
    /// file (a version was removed) are dropped; their services are returned.
    pub fn effective(&mut self, file: &Config) -> (Config, Vec<String>) {
        let mut config = file.clone();
        let mut dropped = Vec::new();
        self.overrides.retain(|name, w| {
            let fits = config.services.get(name).is_some_and(|s| w.keys().all(|v| s.versions.contains_key(v)));
            if fits {
                config.services.get_mut(name).expect("checked").weights = w.clone();
            } else {
                dropped.push(name.clone());
            }
            fits
        });
        for name in &dropped {
            self.history.remove(name);
        }
        self.mirrors.retain(|name, m| {
            let Some(svc) = config.services.get_mut(name).filter(|s| s.mode == Mode::L4) else {
                dropped.push(name.clone());
                return false;
            };
            svc.mirror = m.clone().map(Mirror::L4);
            true
        });
        (config, dropped)
    }

    /// The l4 mirror a service runs with now: its runtime setting, else the file's.
    pub fn mirror_of(&self, file: &Config, service: &str) -> Option<L4Mirror> {
        match self.mirrors.get(service) {
            Some(m) => m.clone(),
            None => file.services.get(service).and_then(|s| s.l4_mirror().cloned()),
        }
    }

    /// Sets (or with `None` turns off) the l4 mirroring of `service`.
    pub fn mirror(
        &mut self,
        file: &Config,
        service: &str,
        mirror: Option<L4Mirror>,
    ) -> Result<Option<L4Mirror>, ChangeError> {
        let svc = file.services.get(service).ok_or_else(|| {
            ChangeError::NoService(service.into(), file.services.keys().cloned().collect::<Vec<_>>().join(", "))
        })?;
        if svc.mode != Mode::L4 {
            return Err(ChangeError::NotL4(service.into()));
        }
        if let Some(m) = &mirror {
            m.check().and_then(|()| file.check_mirror_interface(&m.interface)).map_err(|why| {
                ChangeError::BadMirror(
                    service.into(),
                    why.replace("mirror.interface", "--interface").replace("mirror.percent", "--percent"),
                )
            })?;
        }
        self.mirrors.insert(service.into(), mirror.clone());
        Ok(mirror)
    }

    /// Whether a rollout of `service` is running or paused.
    pub fn rollout_active(&self, service: &str) -> bool {
        self.rollouts.get(service).is_some_and(|r| !r.state.is_over())
    }

    /// Sets all of a service's weights at once, as a rollout step does.
    pub fn set_weights(&mut self, file: &Config, service: &str, next: Weights) -> Result<Weights, ChangeError> {
        for v in next.keys() {
            Self::check_version(file, service, v)?;
        }
        self.set(file, service, next)
    }

    fn set(&mut self, file: &Config, service: &str, next: Weights) -> Result<Weights, ChangeError> {
        if next.values().all(|w| *w == 0) {
            return Err(ChangeError::AllZero(service.into()));
        }
        let current = self.weights(file, service)?;
        let history = self.history.entry(service.into()).or_default();
        history.push(current);
        if history.len() > HISTORY_DEPTH {
            history.remove(0);
        }
        self.overrides.insert(service.into(), next.clone());
        Ok(next)
    }

    fn check_version(file: &Config, service: &str, version: &str) -> Result<(), ChangeError> {
        let svc = &file.services[service];
        if svc.versions.contains_key(version) {
            return Ok(());
        }
        Err(ChangeError::NoVersion {
            service: service.into(),
            version: version.into(),
            known: svc.versions.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Sets the named versions' weights and keeps the others.
    pub fn weight(&mut self, file: &Config, service: &str, changes: &[(String, u32)]) -> Result<Weights, ChangeError> {
        let mut next = self.weights(file, service)?;
        for (version, w) in changes {
            Self::check_version(file, service, version)?;
            next.insert(version.clone(), *w);
        }
        self.set(file, service, next)
    }

    /// Blue-green: all new connections to `to`, none to the others.
    pub fn flip(&mut self, file: &Config, service: &str, to: &str) -> Result<Weights, ChangeError> {
        let current = self.weights(file, service)?;
        Self::check_version(file, service, to)?;
        let next = current.keys().map(|v| (v.clone(), u32::from(v == to) * 100)).collect();
        self.set(file, service, next)
    }

    /// Undoes the last change to `service`; again goes further back.
    pub fn rollback(&mut self, file: &Config, service: &str) -> Result<Weights, ChangeError> {
        self.weights(file, service)?;
        let previous = self
            .history
            .get_mut(service)
            .and_then(Vec::pop)
            .ok_or_else(|| ChangeError::NothingToRollBack(service.into()))?;
        self.overrides.insert(service.into(), previous.clone());
        Ok(previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Config {
        crate::config::from_yaml(
            "interfaces: {clients: [eth0]}\nservices:\n  shop: {listen: 203.0.113.10:80, protocol: tcp, versions: {blue: [198.51.100.10:80], green: [198.51.100.20:80]}, weights: {blue: 95, green: 5}}\n",
        )
        .unwrap()
    }

    fn w(pairs: &[(&str, u32)]) -> Weights {
        pairs.iter().map(|(v, n)| ((*v).to_owned(), *n)).collect()
    }

    #[test]
    fn weight_keeps_unnamed_versions_and_flip_moves_everything() {
        let f = file();
        let mut r = Runtime::default();
        assert_eq!(r.weight(&f, "shop", &[("green".into(), 25)]).unwrap(), w(&[("blue", 95), ("green", 25)]));
        assert_eq!(r.flip(&f, "shop", "green").unwrap(), w(&[("blue", 0), ("green", 100)]));
        assert_eq!(r.effective(&f).0.services["shop"].weights, w(&[("blue", 0), ("green", 100)]));
    }

    #[test]
    fn rollback_walks_back_more_than_ten_changes() {
        let f = file();
        let mut r = Runtime::default();
        for i in 1..=12u32 {
            r.weight(&f, "shop", &[("green".into(), i)]).unwrap();
        }
        for i in (1..=11u32).rev() {
            assert_eq!(r.rollback(&f, "shop").unwrap()["green"], i);
        }
        assert_eq!(r.rollback(&f, "shop").unwrap(), w(&[("blue", 95), ("green", 5)]), "back to the file");
        assert_eq!(r.rollback(&f, "shop"), Err(ChangeError::NothingToRollBack("shop".into())));
    }

    #[test]
    fn bad_changes_are_refused_and_change_nothing() {
        let f = file();
        let mut r = Runtime::default();
        r.weight(&f, "shop", &[("green".into(), 50)]).unwrap();
        let before = r.clone();
        assert!(matches!(r.weight(&f, "shop", &[("purple".into(), 5)]), Err(ChangeError::NoVersion { .. })));
        assert_eq!(
            r.weight(&f, "shop", &[("blue".into(), 0), ("green".into(), 0)]),
            Err(ChangeError::AllZero("shop".into()))
        );
        assert!(matches!(r.flip(&f, "nope", "green"), Err(ChangeError::NoService(..))));
        assert!(matches!(r.flip(&f, "shop", "purple"), Err(ChangeError::NoVersion { .. })));
        assert_eq!(r, before);
    }

    #[test]
    fn mirror_settings_override_the_file_and_bad_ones_change_nothing() {
        let f = file();
        let mut r = Runtime::default();
        assert_eq!(r.mirror_of(&f, "shop"), None);
        let m = L4Mirror { interface: "mir0".into(), percent: 5.0 };
        r.mirror(&f, "shop", Some(m.clone())).unwrap();
        assert_eq!(r.effective(&f).0.services["shop"].l4_mirror(), Some(&m));
        let before = r.clone();
        let bad = |i: &str, p: f64| Some(L4Mirror { interface: i.into(), percent: p });
        let e = r.mirror(&f, "shop", bad("mir0", 0.0)).unwrap_err().to_string();
        assert!(e.contains("--percent 0 is out of range"), "{e}");
        let e = r.mirror(&f, "shop", bad("eth0", 5.0)).unwrap_err().to_string();
        assert!(e.contains("clients/backends interface"), "{e}");
        assert!(matches!(r.mirror(&f, "nope", None), Err(ChangeError::NoService(..))));
        assert_eq!(r, before);
        r.mirror(&f, "shop", None).unwrap();
        assert_eq!(r.effective(&f).0.services["shop"].mirror, None, "off");
        let saved: Runtime = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(saved, r, "mirror settings persist");
    }

    #[test]
    fn overrides_that_no_longer_fit_the_file_are_dropped() {
        let f = file();
        let mut r = Runtime::default();
        r.flip(&f, "shop", "green").unwrap();
        let renamed = crate::config::from_yaml(
            "interfaces: {clients: [eth0]}\nservices:\n  shop: {listen: 203.0.113.10:80, protocol: tcp, versions: {blue: [198.51.100.10:80], canary: [198.51.100.20:80]}, weights: {blue: 1}}\n",
        )
        .unwrap();
        let (eff, dropped) = r.effective(&renamed);
        assert_eq!(dropped, ["shop"]);
        assert_eq!(eff.services["shop"].weights, w(&[("blue", 1)]));
    }
}
