//! Reading the data path: the per-CPU counters, and the pinned maps as
//! `status` and the agent's scrapes read them (no object loaded).

use super::*;

impl Dataplane {
    /// Current counters, summed over CPUs.
    pub fn stats(&self) -> Result<Counters, DataplaneError> {
        let map = self.ebpf.map(MAP_STATS).ok_or(DataplaneError::Missing { kind: "map", name: MAP_STATS })?;
        let array: PerCpuArray<&MapData, StatBlock> = PerCpuArray::try_from(map)?;
        Counters::read(&array)
    }
}

/// The data path's counters, summed over CPUs, indexed by `Stat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters(pub [u64; Stat::COUNT as usize]);

impl Default for Counters {
    fn default() -> Self {
        Counters([0; Stat::COUNT as usize])
    }
}

impl Counters {
    fn read<T: std::borrow::Borrow<MapData>>(array: &PerCpuArray<T, StatBlock>) -> Result<Counters, DataplaneError> {
        let mut c = Counters::default();
        for block in array.get(&0, 0)?.iter() {
            for (sum, n) in c.0.iter_mut().zip(block.counts) {
                *sum += n;
            }
        }
        Ok(c)
    }

    pub fn get(&self, stat: Stat) -> u64 {
        self.0[stat as usize]
    }

    /// `(name, value)` for every counter, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Stat::ALL.iter().map(|s| (s.name(), self.get(*s)))
    }

    /// Element-wise `self - earlier` (for deltas between two reads).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut d = Counters::default();
        for (i, slot) in d.0.iter_mut().enumerate() {
            *slot = self.0[i].saturating_sub(earlier.0[i]);
        }
        d
    }
}

/// The maps a running agent pinned under its `pin_path`, opened once: what
/// `splitter status` (and the demo) read.
pub struct PinnedMaps {
    stats: PerCpuArray<MapData, StatBlock>,
    services: HashMap<MapData, ServiceKey, ServiceRef>,
    tables: Array<MapData, SelectionTable>,
    flows: HashMap<MapData, FlowKey, FlowState>,
    /// Entries the flow table holds at most.
    flow_capacity: u32,
    endpoint_stats: PerCpuArray<MapData, EndpointStats>,
}

impl PinnedMaps {
    /// Opens the pins under `pin_dir`; fails when no agent pinned them.
    pub fn open(pin_dir: &Path) -> Result<PinnedMaps, DataplaneError> {
        let open = |name: &str| {
            let path = pin_dir.join(name);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| DataplaneError::NotRunning { path, source })
        };
        let flows = open(MAP_FLOWS)?;
        let flow_capacity = match &flows {
            Map::LruHashMap(m) | Map::HashMap(m) => m.info().map(|i| i.max_entries()).unwrap_or(0),
            _ => 0,
        };
        Ok(PinnedMaps {
            stats: PerCpuArray::try_from(open(MAP_STATS)?)?,
            services: HashMap::try_from(open(MAP_SERVICES)?)?,
            tables: Array::try_from(open(MAP_TABLES)?)?,
            flows: HashMap::try_from(flows)?,
            flow_capacity,
            endpoint_stats: PerCpuArray::try_from(open(MAP_ENDPOINT_STATS)?)?,
        })
    }

    /// The data-path counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        Counters::read(&self.stats)
    }

    /// Entries the flow table holds at most (`flow_table_size` when it was made).
    pub fn flow_capacity(&self) -> u64 {
        u64::from(self.flow_capacity)
    }

    /// Entries in the flow table now (a walk of the keys).
    pub fn active_flows(&self) -> u64 {
        self.flows.keys().filter(Result::is_ok).count() as u64
    }

    /// The live table and counters of the service at `key`, if it is live.
    pub fn service(&self, key: &ServiceKey) -> Result<Option<LiveService>, DataplaneError> {
        let svc_ref = match self.services.get(key, 0) {
            Ok(r) => r,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let table = self.tables.get(&svc_ref.table, 0)?;
        let mut version_bps = vec![0u32; table.n_versions as usize];
        for v in table.slot_version.iter() {
            if let Some(n) = version_bps.get_mut(*v as usize) {
                *n += 1;
            }
        }
        let n = usize::from(table.n_endpoints).min(MAX_ENDPOINTS);
        let mut endpoint_stats = Vec::with_capacity(n);
        for i in 0..n {
            let values = self.endpoint_stats.get(&endpoint_stats_index((svc_ref.table / 2) as u16, i as u8), 0)?;
            endpoint_stats.push(values.iter().fold(EndpointStats::default(), |a, b| EndpointStats {
                flows: a.flows + b.flows,
                packets_in: a.packets_in + b.packets_in,
                bytes_in: a.bytes_in + b.bytes_in,
                packets_out: a.packets_out + b.packets_out,
                bytes_out: a.bytes_out + b.bytes_out,
                mirrored_packets: a.mirrored_packets + b.mirrored_packets,
                mirrored_bytes: a.mirrored_bytes + b.mirrored_bytes,
                resets: a.resets + b.resets,
            }));
        }
        Ok(Some(LiveService {
            table: svc_ref.table,
            flags: svc_ref.flags,
            version_bps,
            n_endpoints: table.n_endpoints,
            endpoint_versions: table.endpoints[..n].iter().map(|e| e.version).collect(),
            endpoint_stats,
            mirror_ifindex: table.mirror_ifindex,
            mirror_bps: table.mirror_bps,
        }))
    }
}

/// A service as the kernel holds it now, read from the pinned maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveService {
    pub table: u32,
    pub flags: u32,
    /// Basis-point slots each version owns in the live table (by version index).
    pub version_bps: Vec<u32>,
    pub n_endpoints: u16,
    /// Version index of each endpoint (table order).
    pub endpoint_versions: Vec<u8>,
    /// Counters of each endpoint (table order), summed over CPUs.
    pub endpoint_stats: Vec<EndpointStats>,
    /// Interface new sampled flows are copied to (0: not mirroring).
    pub mirror_ifindex: u32,
    /// Share of new flows sampled for mirroring, basis points.
    pub mirror_bps: u16,
}
