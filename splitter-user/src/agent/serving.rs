//! What serves the services: the kernel data path (l4), the proxy (l7) and
//! the l7 addresses, and the agent's own counters. Installing a plan here is
//! the one way anything the agent serves changes.

use std::collections::BTreeMap;

use splitter_model::{
    config::Config,
    plan::{plan_all, ServicePlan},
};
use tracing::info;

use super::AgentError;
use crate::{control::Response, dataplane::Dataplane, l7::L7, local_addrs::Keeper};

pub(crate) struct Serving {
    pub dp: Dataplane,
    pub l7: L7,
    /// The l7 listen addresses made local.
    pub local: Keeper,
    pub counters: AgentCounters,
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
}

impl AgentCounters {
    pub fn control(&mut self, op: &'static str, response: &Response) {
        *self.control.entry((op, if response.ok { "ok" } else { "failed" })).or_default() += 1;
    }
}

impl Serving {
    /// Makes `effective` (file plus runtime changes) the served state: l4
    /// tables planned from the live ones and swapped in, l7 routing tables
    /// swapped whole. L7 listeners are bound first, so a bind failure
    /// changes nothing.
    pub fn apply(&mut self, effective: &Config) -> Result<Vec<ServicePlan>, AgentError> {
        let plans = plan_all(effective, |n| self.dp.previous(n))?;
        self.install(effective, &plans)?;
        Ok(plans)
    }

    /// [`Serving::apply`] with the l4 plans already made. A new mirror
    /// interface gets its guard before any table sends copies there; an
    /// interface no longer mirrored to loses it afterwards.
    pub fn install(&mut self, effective: &Config, plans: &[ServicePlan]) -> Result<(), AgentError> {
        let started = std::time::Instant::now();
        let result = self.install_timed(effective, plans);
        self.counters.apply.observe(started.elapsed());
        result
    }

    fn install_timed(&mut self, effective: &Config, plans: &[ServicePlan]) -> Result<(), AgentError> {
        self.local.update(effective)?;
        self.l7.apply(effective)?;
        let wanted = effective.mirror_interfaces();
        let mut both = wanted.clone();
        both.extend(self.dp.guarded().map(str::to_owned));
        self.dp.guard_mirrors(&both)?;
        self.dp.apply(plans)?;
        self.dp.guard_mirrors(&wanted)?;
        Ok(())
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
