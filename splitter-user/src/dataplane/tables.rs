//! Writing what the agent decided into the maps: each service's selection
//! table and `SERVICES` entry (all or nothing), the endpoints in
//! `BACKENDS`, and the flow sweep.

use super::*;

impl Dataplane {
    /// The table service `name` has in the kernel now, as the previous table
    /// of its next plan.
    pub fn previous(&self, name: &str) -> Option<Previous<'_>> {
        self.live.get(name).map(|i| Previous { versions: &i.versions, slots: &i.table.slot_version })
    }

    /// The table service `name` has in the kernel now, with its version
    /// names in index order.
    pub fn live_table(&self, name: &str) -> Option<(&[String], &SelectionTable)> {
        self.live.get(name).map(|i| (i.versions.as_slice(), &*i.table))
    }

    /// Makes `plans` the live services. A changed service's new table is
    /// written into its spare generation first; then one `SERVICES` write
    /// repoints the service, so a packet sees the whole old or the whole new
    /// table. Unchanged services are not touched. Services no longer planned
    /// are removed. Each service's state is recorded as soon as the kernel has
    /// it, so a failure part-way never leaves the agent writing into a live
    /// generation next time.
    pub fn apply(&mut self, plans: &[ServicePlan]) -> Result<(), DataplaneError> {
        // Replies of the new endpoints are recognised before any flow can be
        // placed on them; endpoints that left stay until their flows are gone
        // (the sweep removes them). Until this apply has succeeded, the old
        // plans' endpoints count as configured too: a failure part-way may
        // leave some services on their old tables.
        let configured = backends::of_plans(plans);
        self.configured = backends::merge(&configured, &self.configured).0;
        let kept = self.backends.clone();
        self.write_backends(&kept)?;
        // Every mirror interface resolved, and a slot found for every new
        // service, before anything is written.
        let mut tables = Vec::with_capacity(plans.len());
        for plan in plans {
            let mut table = plan.table.clone();
            if let Some(ifname) = &plan.mirror_interface {
                table.mirror_ifindex = nix::net::if_::if_nametoindex(ifname.as_str())
                    .map_err(|_| DataplaneError::NoMirrorInterface(ifname.clone()))?;
            }
            tables.push(table);
        }
        let staying = self.live.iter().filter(|(n, _)| plans.iter().any(|p| &p.name == *n)).count();
        let new = plans.iter().filter(|p| !self.live.contains_key(&p.name)).count();
        if staying + new > MAX_SERVICES as usize {
            return Err(DataplaneError::TooManyServices);
        }
        // What was there before: restored if a write fails part-way, so the
        // kernel serves the whole old configuration or the whole new one.
        let before = self.live.clone();
        let result = self.write_plans(plans, tables);
        if let Err(e) = &result {
            tracing::error!("writing the tables failed ({e}); restoring the ones served before");
            if let Err(e) = self.restore(before) {
                tracing::error!("restoring the tables served before failed too: {e}");
            }
            return result;
        }
        self.configured = configured;
        Ok(())
    }

    /// Writes each plan's table into its service's spare generation and
    /// points `SERVICES` at it; removes the services no plan names.
    fn write_plans(&mut self, plans: &[ServicePlan], tables: Vec<Box<SelectionTable>>) -> Result<(), DataplaneError> {
        let in_use = |key: &ServiceKey| plans.iter().any(|p| p.key == *key);
        // New services take free slots, lowest first; only when those run
        // short does one take the slot of a service that goes (removed
        // first; a failure after that cannot bring it back).
        let mut free: std::collections::VecDeque<u32> =
            (0..MAX_SERVICES).filter(|s| self.live.values().all(|i| i.slot != *s)).collect();
        let mut going: Vec<String> =
            self.live.keys().filter(|n| !plans.iter().any(|p| &p.name == *n)).cloned().collect();
        for (plan, table) in plans.iter().zip(tables) {
            let installed = self.live.get(&plan.name);
            if installed.is_some_and(|i| {
                i.key == plan.key
                    && i.flags == plan.flags
                    && bytemuck::bytes_of(&*i.table) == bytemuck::bytes_of(&*table)
            }) {
                continue;
            }
            let (slot, generation) = match installed {
                Some(i) => (i.slot, 1 - i.generation),
                None => match free.pop_front() {
                    Some(slot) => (slot, 0),
                    None => {
                        let name = going.pop().ok_or(DataplaneError::TooManyServices)?;
                        let gone = self.live.remove(&name).expect("listed as live");
                        if !in_use(&gone.key) {
                            let mut services: HashMap<&mut MapData, ServiceKey, ServiceRef> =
                                HashMap::try_from(map_mut(&mut self.ebpf, MAP_SERVICES)?)?;
                            services.remove(&gone.key)?;
                        }
                        (gone.slot, 0)
                    }
                },
            };
            let old_key = self.live.get(&plan.name).map(|i| i.key);
            let table_id = slot * 2 + generation;
            let mut table_map: Array<&mut MapData, SelectionTable> =
                Array::try_from(map_mut(&mut self.ebpf, MAP_TABLES)?)?;
            table_map.set(table_id, *table, 0)?;
            let mut services: HashMap<&mut MapData, ServiceKey, ServiceRef> =
                HashMap::try_from(map_mut(&mut self.ebpf, MAP_SERVICES)?)?;
            services.insert(plan.key, ServiceRef { table: table_id, flags: plan.flags }, 0)?;
            let installed = Installed {
                slot,
                generation,
                key: plan.key,
                flags: plan.flags,
                versions: plan.versions.clone(),
                table,
            };
            self.live.insert(plan.name.clone(), installed);
            if let Some(old) = old_key.filter(|k| !in_use(k)) {
                services.remove(&old)?;
            }
        }
        for name in going {
            let installed = self.live.remove(&name).expect("listed above");
            if !in_use(&installed.key) {
                let mut services: HashMap<&mut MapData, ServiceKey, ServiceRef> =
                    HashMap::try_from(map_mut(&mut self.ebpf, MAP_SERVICES)?)?;
                services.remove(&installed.key)?;
            }
        }
        Ok(())
    }

    /// Points `SERVICES` back at the tables `before` had (their generations
    /// were not written: a write goes to the spare one) and removes the
    /// services it did not have.
    fn restore(&mut self, mut before: BTreeMap<String, Installed>) -> Result<(), DataplaneError> {
        // A service whose slot a new one took (only when slots ran short)
        // lost its table: it is not pointed back at what is now another
        // service's, it stays gone.
        before.retain(|name, i| self.live.iter().all(|(n, l)| n == name || l.slot != i.slot));
        let mut services: HashMap<&mut MapData, ServiceKey, ServiceRef> =
            HashMap::try_from(map_mut(&mut self.ebpf, MAP_SERVICES)?)?;
        let keep: BTreeSet<ServiceKey> = before.values().map(|i| i.key).collect();
        for i in self.live.values().filter(|i| !keep.contains(&i.key)) {
            let _ = services.remove(&i.key);
        }
        for i in before.values() {
            services.insert(i.key, ServiceRef { table: i.slot * 2 + i.generation, flags: i.flags }, 0)?;
        }
        self.live = before;
        Ok(())
    }

    /// Makes `BACKENDS` the configured endpoints plus those of `live`
    /// (endpoint → VIPs of flows that still need their replies rewritten).
    fn write_backends(&mut self, live: &Backends) -> Result<(), DataplaneError> {
        let (want, left_out) = backends::merge(&self.configured, live);
        let left_out: BTreeSet<(ServiceKey, ServiceKey)> = left_out.into_iter().collect();
        // Said once per pair while it stays left out, not at every sweep.
        for (endpoint, vip) in left_out.difference(&self.left_out) {
            tracing::warn!(
                endpoint = %splitter_model::plan::describe_key(endpoint),
                vip = %splitter_model::plan::describe_key(vip),
                "flows of this VIP live on at an endpoint that already serves {MAX_SERVICES_PER_ENDPOINT} other services; their replies are no longer rewritten"
            );
        }
        self.left_out = left_out;
        let (writes, removals) = backends::diff(&self.backends, &want);
        let mut map: HashMap<&mut MapData, ServiceKey, BackendVips> =
            HashMap::try_from(map_mut(&mut self.ebpf, MAP_BACKENDS)?)?;
        for (endpoint, value) in writes {
            map.insert(endpoint, value, 0)?;
            self.backends.insert(endpoint, want[&endpoint].clone());
        }
        for endpoint in removals {
            match map.remove(&endpoint) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e.into()),
            }
            self.backends.remove(&endpoint);
        }
        Ok(())
    }

    /// Removes expired flows from the kernel flow table (see `aging`), and
    /// the endpoints no flow and no service needs any more from `BACKENDS`.
    pub fn sweep_flows(
        &mut self,
        aging: &splitter_model::config::FlowAging,
    ) -> Result<splitter_model::aging::Sweep, DataplaneError> {
        let now = now_coarse_ns();
        let mut flows: HashMap<&mut MapData, FlowKey, FlowState> =
            HashMap::try_from(map_mut(&mut self.ebpf, MAP_FLOWS)?)?;
        let keys: Vec<FlowKey> = flows.keys().filter_map(Result::ok).collect();
        let mut sweep = splitter_model::aging::Sweep::default();
        let mut live = Backends::new();
        let names: BTreeMap<u16, &String> = self.live.iter().map(|(n, i)| (i.slot as u16, n)).collect();
        for key in keys {
            sweep.examined += 1;
            // The entry may have been evicted or removed since the key walk.
            let Ok(state) = flows.get(&key, 0) else { continue };
            if splitter_model::aging::expired(&state, key.proto, now, aging) {
                // Gone either way: removed here, or by the kernel (a RST) meanwhile.
                if flows.remove(&key).is_ok() {
                    sweep.removed += 1;
                }
                continue;
            }
            if let Some(name) = names.get(&state.service) {
                *sweep.remaining.entry((*name).clone()).or_default() += 1;
            }
            let (endpoint, vip) = backends::of_flow(&key, &state);
            live.entry(endpoint).or_default().insert(vip);
        }
        self.write_backends(&live)?;
        Ok(sweep)
    }
}

/// The clock the kernel stamps flows with (`bpf_ktime_get_coarse_ns`).
pub(super) fn now_coarse_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE).expect("CLOCK_MONOTONIC_COARSE");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}
