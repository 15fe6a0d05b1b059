//! The desired state several nodes share (`store:`): the services, the
//! runtime changes and each l4 service's slot layout, as one document. Pure
//! and host-tested; `store.rs` keeps it in etcd.
//!
//! Why the layout is part of it: a table is derived from the previous one by
//! moving the fewest slots (`plan::slot_table`), so it depends on the order of
//! changes a node has seen. A node that started later, or missed a change
//! while etcd was away, would build a different table. The writer of each
//! change derives the next layout from the stored one and stores it; every
//! node plans from the stored layout, so every node builds the same table and
//! a flow's first packet picks the same endpoint on any of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use splitter_common::service::BPS;
use thiserror::Error;

use crate::{
    config::{Config, ConfigError, Mode, Service},
    plan::{plan_service, PlanError, Previous, ServicePlan},
    runtime::Runtime,
};

/// Slots of one l4 service's version table, as runs of (version, slots).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Layout(pub Vec<(String, u16)>);

/// A layout decoded for planning.
pub struct Slots {
    pub versions: Vec<String>,
    pub slots: Box<[u8; BPS]>,
}

impl Slots {
    pub fn as_previous(&self) -> Previous<'_> {
        Previous { versions: &self.versions, slots: &self.slots }
    }
}

impl Layout {
    /// The layout of a planned table.
    pub fn of(plan: &ServicePlan) -> Layout {
        let mut runs: Vec<(String, u16)> = Vec::new();
        for v in plan.table.slot_version.iter() {
            let name = &plan.versions[usize::from(*v)];
            match runs.last_mut() {
                Some((last, n)) if last == name => *n += 1,
                _ => runs.push((name.clone(), 1)),
            }
        }
        Layout(runs)
    }

    /// The slots again; `None` when the runs do not cover exactly `BPS` slots.
    pub fn decode(&self) -> Option<Slots> {
        let mut versions: Vec<String> = Vec::new();
        let mut slots = Box::new([u8::MAX; BPS]);
        let mut at = 0usize;
        for (name, n) in &self.0 {
            let idx = match versions.iter().position(|v| v == name) {
                Some(i) => i,
                None => {
                    versions.push(name.clone());
                    versions.len() - 1
                }
            };
            let end = at.checked_add(usize::from(*n)).filter(|e| *e <= BPS)?;
            slots[at..end].fill(u8::try_from(idx).ok()?);
            at = end;
        }
        (at == BPS).then_some(Slots { versions, slots })
    }
}

#[derive(Debug, Error)]
pub enum DesiredError {
    #[error("the store's services do not fit this node's config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// The shared desired state, stored as one JSON value: a change (a flip
/// included) is one write, and a node applies a whole revision or none.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    pub services: BTreeMap<String, Service>,
    pub runtime: Runtime,
    /// Slot layout of each l4 service's table (see the module comment).
    pub layouts: BTreeMap<String, Layout>,
    /// Who made the last change, and what it was (for `status`).
    #[serde(default)]
    pub changed_by: String,
    #[serde(default)]
    pub change: String,
}

impl Desired {
    /// A first desired state from a node's file.
    pub fn seed(file: &Config, by: &str) -> Result<Desired, DesiredError> {
        let mut d = Desired { services: file.services.clone(), changed_by: by.into(), ..Desired::default() };
        d.change = "seeded from the config file".into();
        d.relayout(&BTreeMap::new())?;
        Ok(d)
    }

    /// The services as a config of their own: what `Runtime` and `change`
    /// check requests against (no node's interfaces).
    pub fn file(&self) -> Config {
        Config::of_services(self.services.clone())
    }

    /// `local` (this node's interfaces, paths...) serving these services,
    /// checked as a file would be.
    pub fn config_for(&self, local: &Config) -> Result<Config, DesiredError> {
        let mut c = local.clone();
        c.services = self.services.clone();
        c.validate()?;
        Ok(c)
    }

    /// The next desired state: `runtime` (and `services`, when given) with
    /// layouts derived from these, recording who changed what.
    pub fn next(
        &self,
        services: Option<BTreeMap<String, Service>>,
        runtime: Runtime,
        by: &str,
        change: &str,
    ) -> Result<Desired, DesiredError> {
        let mut d = Desired {
            services: services.unwrap_or_else(|| self.services.clone()),
            runtime,
            layouts: self.layouts.clone(),
            changed_by: by.into(),
            change: change.into(),
        };
        d.relayout(&self.effective_services())?;
        Ok(d)
    }

    /// The services as they are served: the file's with the runtime's
    /// weights and mirrors.
    pub fn effective_services(&self) -> BTreeMap<String, Service> {
        self.runtime.clone().effective(&self.file()).0.services
    }

    /// The decoded layouts, by service, to plan from.
    pub fn slots(&self) -> BTreeMap<String, Slots> {
        self.layouts.iter().filter_map(|(n, l)| Some((n.clone(), l.decode()?))).collect()
    }

    /// Plans every l4 service of `effective` from the stored layouts.
    pub fn plan(&self, effective: &Config) -> Result<Vec<ServicePlan>, PlanError> {
        let slots = self.slots();
        crate::plan::plan_all(effective, |n| slots.get(n).map(Slots::as_previous))
    }

    /// Derives the layout of each l4 service that differs from `before`
    /// (the effective services of the previous state) from its stored one;
    /// the others keep theirs, and services that are gone (or l7) lose theirs.
    fn relayout(&mut self, before: &BTreeMap<String, Service>) -> Result<(), DesiredError> {
        let (effective, _) = self.runtime.effective(&self.file());
        let mut layouts = BTreeMap::new();
        for (name, svc) in effective.services.iter().filter(|(_, s)| s.mode == Mode::L4) {
            let layout = match self.layouts.get(name) {
                Some(kept) if before.get(name) == Some(svc) => kept.clone(),
                stored => {
                    let slots = stored.and_then(Layout::decode);
                    Layout::of(&plan_service(name, svc, slots.as_ref().map(Slots::as_previous))?)
                }
            };
            layouts.insert(name.clone(), layout);
        }
        self.layouts = layouts;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Change;

    fn file() -> Config {
        crate::config::from_yaml(
            "interfaces: {clients: [eth0]}\nservices:\n  shop:\n    listen: 203.0.113.10:80\n    protocol: tcp\n    versions: {blue: [198.51.100.10:80], green: [198.51.100.20:80], canary: [198.51.100.30:80]}\n    weights: {blue: 60, green: 30, canary: 10}\n",
        )
        .unwrap()
    }

    fn change(d: &Desired, req: Change) -> Desired {
        let o = crate::change::apply(&req, &d.file(), &d.runtime).unwrap();
        d.next(None, o.next, "test", &o.message).unwrap()
    }

    fn weight(service: &str, pairs: &[(&str, u32)]) -> Change {
        Change::Weight { service: service.into(), weights: pairs.iter().map(|(v, w)| ((*v).to_owned(), *w)).collect() }
    }

    #[test]
    fn layouts_round_trip_and_bad_runs_are_refused() {
        let d = Desired::seed(&file(), "a").unwrap();
        let l = &d.layouts["shop"];
        assert_eq!(l.0.len(), 3, "a first layout is one run per version: {l:?}");
        let s = l.decode().unwrap();
        let plan = plan_service("shop", &file().services["shop"], Some(s.as_previous())).unwrap();
        assert_eq!(&Layout::of(&plan), l);
        assert!(Layout(vec![("blue".into(), 9999)]).decode().is_none(), "short");
        assert!(Layout(vec![("blue".into(), 9999), ("g".into(), 2)]).decode().is_none(), "long");
    }

    #[test]
    fn a_node_that_saw_only_the_last_revision_builds_the_same_table() {
        // Node A applies every change, from its live tables; node B starts
        // after the third change and plans from the stored layout only.
        let f = file();
        let mut d = Desired::seed(&f, "a").unwrap();
        let mut live: Option<ServicePlan> = None;
        for req in [
            weight("shop", &[("canary", 25)]),
            weight("shop", &[("green", 5)]),
            weight("shop", &[("blue", 10), ("canary", 40)]),
            Change::Flip { service: "shop".into(), to: "green".into() },
            Change::Rollback { service: "shop".into() },
        ] {
            d = change(&d, req);
            let (eff, _) = d.runtime.clone().effective(&d.file());
            let prev = live.as_ref().map(ServicePlan::as_previous);
            live = Some(plan_service("shop", &eff.services["shop"], prev).unwrap());
        }
        // A JSON round trip: what another node reads from etcd.
        let read: Desired = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(read, d);
        let (eff, _) = read.runtime.clone().effective(&read.file());
        let fresh = read.plan(&eff).unwrap();
        let a = live.unwrap();
        assert_eq!(a.table.slot_version, fresh[0].table.slot_version, "same slot → version on every node");
        assert_eq!(a.table.rings, fresh[0].table.rings);
        // And the incremental property holds across the stored layouts: a
        // plain from-scratch plan would differ.
        let scratch = plan_service("shop", &eff.services["shop"], None).unwrap();
        assert_ne!(scratch.table.slot_version, fresh[0].table.slot_version);
    }

    #[test]
    fn raising_the_canary_only_moves_slots_onto_it() {
        let d = Desired::seed(&file(), "a").unwrap();
        let before = d.layouts["shop"].decode().unwrap();
        let d2 = change(&d, weight("shop", &[("canary", 30)]));
        let after = d2.layouts["shop"].decode().unwrap();
        let name = |s: &Slots, i: usize| s.versions[usize::from(s.slots[i])].clone();
        for i in 0..BPS {
            let (b, a) = (name(&before, i), name(&after, i));
            assert!(a == b || a == "canary", "slot {i} moved {b} → {a}");
            if b == "canary" {
                assert_eq!(a, "canary", "slot {i} left the canary");
            }
        }
    }

    #[test]
    fn the_services_must_fit_the_node() {
        let d = Desired::seed(&file(), "a").unwrap();
        let mut local = file();
        local.services.clear();
        assert_eq!(d.config_for(&local).unwrap().services.len(), 1);
        let mut bad = d.clone();
        let mut m = bad.services["shop"].clone();
        m.mirror = Some(crate::config::Mirror::L4(crate::config::L4Mirror { interface: "eth0".into(), percent: 1.0 }));
        bad.services.insert("shop".into(), m);
        let e = bad.config_for(&local).unwrap_err().to_string();
        assert!(e.contains("clients/backends interface"), "{e}");
    }
}
