//! Loading the embedded object: privately, or pinned under `pin_path`,
//! adopting the maps a previous agent pinned there when their layout fits
//! (and reading the live services back out of them).

use super::*;

impl Dataplane {
    /// Loads the object with its maps pinned under `dir`, adopting maps a
    /// previous agent pinned there when they fit (same type, key, value and
    /// size), so flows, counters and live tables carry over. `services` are
    /// the names and keys of the configured services: adopted tables are
    /// matched to them by key; live services matching none are removed by the
    /// next [`Dataplane::apply`]. `versions(name)` gives the version names a
    /// service has in the config (assumed to be what the adopted table's
    /// indexes mean when the counts agree).
    pub fn load_pinned(
        flow_table_size: u32,
        dir: &Path,
        services: &[(String, ServiceKey, Vec<String>)],
    ) -> Result<(Self, Adoption), DataplaneError> {
        let mut adoption = Adoption::default();
        let expected = expected_maps(flow_table_size)?;
        // The flow table of before, when only its size changed: its flows
        // are copied into the new one once it exists.
        let mut old_flows = None;
        for group in MAP_GROUPS {
            let misfits: Vec<(&str, String, Option<u32>)> = group
                .iter()
                .filter_map(|name| {
                    let path = dir.join(name);
                    if !path.exists() {
                        return None;
                    }
                    let want = expected.iter().find(|(n, _)| n == name).map(|(_, s)| *s)?;
                    match MapInfo::from_pin(&path) {
                        Ok(info) => {
                            let have = MapShape::of(&info);
                            let resized = *name == MAP_FLOWS && MapShape { entries: want.entries, ..have } == want;
                            let why = format!("pinned {have}, this build needs {want}");
                            (have != want).then_some((*name, why, resized.then_some(have.entries)))
                        }
                        Err(e) => Some((*name, format!("cannot open: {e}"), None)),
                    }
                })
                .collect();
            // A resize counts only when it is all that differs in the group.
            let misfit = match misfits.as_slice() {
                [] => None,
                [only] => Some(only.clone()),
                [first, ..] => Some((first.0, first.1.clone(), None)),
            };
            for name in group.iter() {
                let path = dir.join(name);
                if !path.exists() {
                    continue;
                }
                match &misfit {
                    // Only the flow table's size changed: a new table with
                    // the old one's flows; the rest of the group stays.
                    Some((bad, _, Some(entries))) if bad == name => {
                        let old = MapData::from_pin(&path)
                            .map_err(|source| DataplaneError::Pinned { path: path.clone(), source })?;
                        std::fs::remove_file(&path).map_err(|source| DataplaneError::Unpin { path, source })?;
                        old_flows = Some(old);
                        adoption.resized = Some(Resized { from: *entries, to: flow_table_size, copied: 0 });
                    }
                    Some((_, _, Some(_))) => adoption.reused.push(name),
                    Some((bad, why, None)) => {
                        std::fs::remove_file(&path).map_err(|source| DataplaneError::Unpin { path, source })?;
                        let why = if bad == name { why.clone() } else { format!("replaced with {bad}") };
                        adoption.replaced.push((name, why));
                    }
                    None => adoption.reused.push(name),
                }
            }
        }
        for name in RETIRED_MAPS {
            let path = dir.join(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(|source| DataplaneError::Unpin { path, source })?;
                adoption.retired.push(name);
            }
        }
        let paths: Vec<(&'static str, PathBuf)> = ALL_MAPS.iter().map(|n| (*n, dir.join(n))).collect();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_FLOWS, flow_table_size);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        load_programs(&mut ebpf)?;
        for (name, pin) in [PROG_INGRESS, PROG_MIRROR, PROG_MIRROR_GUARD].into_iter().zip(PIN_PROGRAMS) {
            let prog = ebpf.program_mut(name).ok_or(DataplaneError::Missing { kind: "program", name })?;
            let path = dir.join(pin);
            let _ = std::fs::remove_file(&path);
            prog.pin(&path).map_err(|source| DataplaneError::Pin { what: pin, path, source })?;
        }
        if let (Some(old), Some(resized)) = (old_flows, adoption.resized.as_mut()) {
            resized.copied = copy_flows(old, &mut ebpf)?;
        }
        let mut dp = Dataplane::new(ebpf, Some(dir.to_owned()));
        adoption.services = dp.adopt(services)?;
        Ok((dp, adoption))
    }

    /// Reads the live services out of (adopted) `SERVICES`/`TABLES`.
    fn adopt(&mut self, services: &[(String, ServiceKey, Vec<String>)]) -> Result<usize, DataplaneError> {
        let map = self.ebpf.map(MAP_SERVICES).ok_or(DataplaneError::Missing { kind: "map", name: MAP_SERVICES })?;
        let refs: HashMap<&MapData, ServiceKey, ServiceRef> = HashMap::try_from(map)?;
        let entries: Vec<(ServiceKey, ServiceRef)> = refs.iter().filter_map(Result::ok).collect();
        let map = self.ebpf.map(MAP_TABLES).ok_or(DataplaneError::Missing { kind: "map", name: MAP_TABLES })?;
        let tables: Array<&MapData, SelectionTable> = Array::try_from(map)?;
        let mut stale = Vec::new();
        for (key, r) in entries {
            let Ok(table) = tables.get(&r.table, 0) else {
                stale.push(key);
                continue;
            };
            let table = Box::new(table);
            let (name, versions) = match services.iter().find(|(_, k, _)| *k == key) {
                Some((name, _, versions)) if versions.len() == usize::from(table.n_versions) => {
                    (name.clone(), versions.clone())
                }
                Some((name, _, _)) => (name.clone(), Vec::new()),
                // Removed by the next apply (no plan has this name).
                None => (format!("\u{0}stale table {}", r.table), Vec::new()),
            };
            let installed =
                Installed { slot: r.table / 2, generation: r.table % 2, key, flags: r.flags, versions, table };
            self.live.insert(name, installed);
        }
        let mut refs: HashMap<&mut MapData, ServiceKey, ServiceRef> =
            HashMap::try_from(map_mut(&mut self.ebpf, MAP_SERVICES)?)?;
        for key in stale {
            refs.remove(&key)?;
        }
        let map = self.ebpf.map(MAP_BACKENDS).ok_or(DataplaneError::Missing { kind: "map", name: MAP_BACKENDS })?;
        let adopted: HashMap<&MapData, ServiceKey, BackendVips> = HashMap::try_from(map)?;
        for (endpoint, v) in adopted.iter().filter_map(Result::ok) {
            self.backends.insert(endpoint, backends::listed(&v));
        }
        Ok(self.live.len())
    }
}

/// Copies every flow of `old` (the flow table of before, unpinned) into the
/// new one; returns how many it took. A smaller table keeps the flows
/// inserted last (it is an LRU map).
fn copy_flows(old: MapData, ebpf: &mut Ebpf) -> Result<u64, DataplaneError> {
    let old: HashMap<MapData, FlowKey, FlowState> = HashMap::try_from(Map::from_map_data(old)?)?;
    let mut new: HashMap<&mut MapData, FlowKey, FlowState> = HashMap::try_from(map_mut(ebpf, MAP_FLOWS)?)?;
    let mut copied = 0;
    for (key, state) in old.iter().filter_map(Result::ok) {
        if new.insert(key, state, 0).is_ok() {
            copied += 1;
        }
    }
    Ok(copied)
}

/// Type, key size, value size and entries of a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MapShape {
    map_type: u32,
    key: u32,
    value: u32,
    entries: u32,
}

impl MapShape {
    fn of(info: &MapInfo) -> MapShape {
        MapShape {
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key: info.key_size(),
            value: info.value_size(),
            entries: info.max_entries(),
        }
    }
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "type {} key {} B value {} B {} entries", self.map_type, self.key, self.value, self.entries)
    }
}

/// The shape of every map of the embedded object, with the flow tables at
/// `flow_table_size` entries.
fn expected_maps(flow_table_size: u32) -> Result<Vec<(&'static str, MapShape)>, DataplaneError> {
    let obj = aya_obj::Object::parse(OBJECT).map_err(|e| DataplaneError::Load(aya::EbpfError::ParseError(e)))?;
    ALL_MAPS
        .iter()
        .map(|name| {
            let map = obj.maps.get(*name).ok_or(DataplaneError::Missing { kind: "map", name })?;
            let entries = if *name == MAP_FLOWS { flow_table_size } else { map.max_entries() };
            Ok((*name, MapShape { map_type: map.map_type(), key: map.key_size(), value: map.value_size(), entries }))
        })
        .collect()
}

/// Loads (verifies) the programs the agent attaches.
pub(super) fn load_programs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    xdp_program(ebpf, PROG_INGRESS)?.load()?;
    xdp_program(ebpf, PROG_MIRROR_GUARD)?.load()?;
    tc_program(ebpf)?.load()?;
    Ok(())
}
