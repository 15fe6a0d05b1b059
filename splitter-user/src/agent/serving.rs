//! What serves the services: the kernel data path (l4), the proxy (l7) and
//! the l7 addresses, and the agent's own counters. Installing a plan here is
//! the one way anything the agent serves changes.

use std::collections::BTreeMap;

use splitter_model::{
    config::Config,
    health::{self, Down},
    plan::ServicePlan,
};
use tracing::info;

use super::AgentError;
use crate::{announce::Announcer, control::Response, dataplane::Dataplane, l7::L7, local_addrs::Keeper};

pub(crate) struct Serving {
    pub dp: Dataplane,
    pub l7: L7,
    /// The l7 listen addresses made local.
    pub local: Keeper,
    /// The VIPs this node announces (`announce:`).
    pub announce: Option<Announcer>,
    /// Announcing starts once the data path is attached: a VIP routed here
    /// before then would meet the host's stack, not the split.
    pub announcing: bool,
    pub counters: AgentCounters,
    /// The endpoints health has out of service: what is installed is
    /// served around them.
    pub down: Down,
    /// The last state installed, as configured (before health): what a
    /// change of health serves again.
    pub installed: Option<(Config, Vec<ServicePlan>)>,
}

/// What the agent counts of its own work (exported as metrics).
#[derive(Default)]
pub(crate) struct AgentCounters {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Control requests by (op, "ok" | "failed").
    pub control: BTreeMap<(&'static str, &'static str), u64>,
    /// Time to apply a change to the data path and proxy.
    pub apply: crate::metrics::Latency,
    /// Served interfaces that went or came back, by (interface, event).
    pub links: BTreeMap<(String, &'static str), u64>,
}

impl AgentCounters {
    pub fn control(&mut self, op: &'static str, response: &Response) {
        *self.control.entry((op, if response.ok { "ok" } else { "failed" })).or_default() += 1;
    }

    pub fn link(&mut self, interface: &str, event: &'static str) {
        *self.links.entry((interface.to_owned(), event)).or_default() += 1;
    }
}

impl Serving {
    /// Makes `effective` (file plus runtime changes) the served state with
    /// the l4 `plans` made for it, served around the endpoints `down` has
    /// out of service: l4 tables swapped in, l7 routing tables swapped
    /// whole. A new mirror interface gets its guard before any table sends
    /// copies there; an interface no longer mirrored to loses it afterwards.
    pub fn install(&mut self, effective: &Config, plans: &[ServicePlan]) -> Result<(), AgentError> {
        let started = std::time::Instant::now();
        // Copied only when some endpoint is out: the plans as they are otherwise.
        let served: Option<Vec<ServicePlan>> = (!self.down.is_empty()).then(|| {
            plans
                .iter()
                .map(|p| match (effective.services.get(&p.name), self.down.get(&p.name)) {
                    (Some(svc), Some(out)) => health::serve_plan(p, svc, &|e| out.contains(e)),
                    _ => p.clone(),
                })
                .collect()
        });
        let result = self.install_timed(effective, served.as_deref().unwrap_or(plans));
        self.counters.apply.observe(started.elapsed());
        if result.is_ok() {
            self.installed = Some((effective.clone(), plans.to_vec()));
        }
        result
    }

    /// Serves the last installed state again around the endpoints `down`
    /// has out of service now (health changed; nothing else did).
    pub fn reinstall(&mut self) -> Result<(), AgentError> {
        let Some((effective, plans)) = self.installed.take() else { return Ok(()) };
        let result = self.install(&effective, &plans);
        if result.is_err() {
            self.installed = Some((effective, plans));
        }
        result
    }

    /// All or nothing: what can fail without changing anything comes first
    /// (l7 listeners bound, tables built), then the changes, each undone if
    /// a later one fails; the l7 tables are swapped last (that cannot fail).
    fn install_timed(&mut self, effective: &Config, plans: &[ServicePlan]) -> Result<(), AgentError> {
        let l7 = self.l7.prepare(effective, &self.down)?;
        self.local.update(effective)?;
        let wanted = effective.mirror_interfaces();
        let before: std::collections::BTreeSet<String> = self.dp.guarded().map(str::to_owned).collect();
        let both: std::collections::BTreeSet<String> = wanted.union(&before).cloned().collect();
        // The data path restores its own tables when a write fails.
        if let Err(e) = self.dp.guard_mirrors(&both).and_then(|()| self.dp.apply(plans)) {
            self.undo(&before);
            return Err(e.into());
        }
        self.l7.commit(l7);
        // Only takes guards off interfaces no longer mirrored to: served
        // traffic is the same either way.
        if let Err(e) = self.dp.guard_mirrors(&wanted) {
            tracing::warn!("removing mirror guards no longer needed: {e}");
        }
        // What is served is in place: now announce it (or withdraw it).
        if let Err(e) = self.announce(effective) {
            tracing::error!("{e}; the next change tries again");
        }
        Ok(())
    }

    /// Keeps the announced VIPs in step with `effective`, health and the
    /// drained flag; an l7 VIP that leaves the announce interface stays
    /// local (the l7 addresses are made local again around it).
    pub fn announce(&mut self, effective: &Config) -> Result<(), AgentError> {
        if !self.announcing {
            return Ok(());
        }
        let settings = effective.announce.clone();
        if self.announce.as_ref().map(|a| a.settings()) != settings.as_ref() {
            // Another interface, or none: the old one's VIPs go first.
            if let Some(old) = self.announce.take() {
                let withdrawn = crate::announce::withdraw_all(old.settings())?;
                info!(interface = old.settings().interface, withdrawn, "announce interface retired");
            }
            if let Some(settings) = settings {
                self.announce = Some(Announcer::new(settings, &effective.state_dir)?);
            }
        }
        let Some(announcer) = self.announce.as_mut() else { return Ok(()) };
        if !announcer.would_change(effective, &self.down) {
            // Keeps `status`'s reasons current.
            announcer.update(effective, &self.down)?;
            return Ok(());
        }
        // An address is never on two interfaces at once: what is about to
        // be announced leaves the local one first, what was withdrawn goes
        // there after.
        let planned = announcer.planned(effective, &self.down);
        self.local.forget();
        self.local.update_excluding(effective, &planned)?;
        announcer.update(effective, &self.down)?;
        self.local.forget();
        self.local.update(effective)?;
        Ok(())
    }

    /// Puts back the l7 addresses and mirror guards of before a change that
    /// failed part-way.
    fn undo(&mut self, guarded_before: &std::collections::BTreeSet<String>) {
        if let Err(e) = self.local.revert() {
            tracing::error!("restoring the l7 addresses of before: {e}");
        }
        if let Err(e) = self.dp.guard_mirrors(guarded_before) {
            tracing::error!("restoring the mirror guards of before: {e}");
        }
    }
}

pub(crate) fn log_plans(plans: &[ServicePlan]) {
    for plan in plans {
        let split: Vec<String> =
            plan.versions.iter().zip(&plan.bps).map(|(v, b)| format!("{v}={:.2}%", *b as f64 / 100.0)).collect();
        let mirror = match &plan.mirror_interface {
            Some(i) => format!("; mirroring {:.2}% of new flows to {i}", f64::from(plan.table.mirror_bps) / 100.0),
            None => String::new(),
        };
        info!(service = %plan.name, "programmed: {}{mirror}", split.join(" "));
    }
}
