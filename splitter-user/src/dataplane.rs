//! The kernel side as the agent sees it: the embedded eBPF object, loading and
//! attaching it, pinning its maps in bpffs and reading its counters.

use std::{
    io,
    path::{Path, PathBuf},
};

use std::collections::BTreeMap;

use aya::{
    include_bytes_aligned,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use splitter_common::{
    names::{
        ALL_MAPS, MAP_ENDPOINT_STATS, MAP_FLOWS, MAP_REVERSE, MAP_SERVICES, MAP_STATS, MAP_TABLES, PROG_FLOOR,
        PROG_INGRESS,
    },
    service::{
        endpoint_stats_index, EndpointStats, FlowState, ReverseNat, SelectionTable, ServiceKey, ServiceRef,
        MAX_ENDPOINTS, MAX_SERVICES,
    },
    stats::Stat,
    FlowKey,
};

use crate::plan::ServicePlan;
use thiserror::Error;

/// The compiled `splitter-ebpf` object, built by this crate's build script.
pub static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/splitter-ebpf"));

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object into the kernel failed (are you root, with CAP_BPF and CAP_NET_ADMIN?): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no {kind} named {name:?}; the binary was built from a mismatched kernel program")]
    Missing { kind: &'static str, name: &'static str },
    #[error("program {PROG_INGRESS}: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("attaching XDP to {ifname:?}: {source} (the interface must exist in the agent's network namespace)")]
    Attach { ifname: String, source: aya::programs::ProgramError },
    #[error("map operation failed: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("more than {MAX_SERVICES} services; the kernel tables hold at most that many")]
    TooManyServices,
    #[error("pinning {what} at {path}: {source}")]
    Pin { what: &'static str, path: PathBuf, source: aya::pin::PinError },
    #[error("reading pinned map {path}: {source}")]
    Pinned { path: PathBuf, source: aya::maps::MapError },
    #[error("bpffs at {path}: {source}")]
    Bpffs { path: PathBuf, source: io::Error },
    #[error("no pinned counters at {path}: is `splitter run` running with this pin_path? ({source})")]
    NotRunning { path: PathBuf, source: aya::maps::MapError },
}

/// How XDP attaches: the kernel's choice, the driver, or generic (skb) mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) mode where the driver has it, else generic.
    #[default]
    Auto,
    /// Driver mode only; fails on drivers without XDP support.
    Native,
    /// Generic mode, in the stack after the skb is built (slower, works everywhere).
    Skb,
}

impl AttachMode {
    fn xdp(self) -> XdpMode {
        match self {
            AttachMode::Auto => XdpMode::Default,
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

/// The loaded object and the links it holds. Dropping it detaches everything.
pub struct Dataplane {
    ebpf: Ebpf,
    attached: Vec<(String, XdpLinkId)>,
    pinned: Vec<PathBuf>,
    /// What the kernel serves now, by service name.
    live: BTreeMap<String, Installed>,
}

/// One service as last written to the kernel.
struct Installed {
    /// Service slot: its tables are `TABLES[2 * slot]` and `[2 * slot + 1]`.
    slot: u32,
    /// Which of the two generations `SERVICES` points at.
    generation: u32,
    key: ServiceKey,
    flags: u32,
    table: Box<SelectionTable>,
}

impl Dataplane {
    /// Loads the embedded object and the ingress program into the kernel,
    /// with a flow table (and reverse-NAT table) of `flow_table_size` entries.
    pub fn load(flow_table_size: u32) -> Result<Self, DataplaneError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_FLOWS, flow_table_size)
            .map_max_entries(MAP_REVERSE, flow_table_size)
            .load(OBJECT)?;
        ingress(&mut ebpf)?.load()?;
        Ok(Dataplane { ebpf, attached: Vec::new(), pinned: Vec::new(), live: BTreeMap::new() })
    }

    /// Makes `plans` the live services. A changed service's new table is
    /// written into its spare generation first; then one `SERVICES` write
    /// repoints the service, so a packet sees the whole old or the whole new
    /// table. Unchanged services are not touched. Services no longer planned
    /// are removed. Each service's state is recorded as soon as the kernel has
    /// it, so a failure part-way never leaves the agent writing into a live
    /// generation next time.
    pub fn apply(&mut self, plans: &[ServicePlan]) -> Result<(), DataplaneError> {
        let in_use = |key: &ServiceKey| plans.iter().any(|p| p.key == *key);
        for plan in plans {
            let installed = self.live.get(&plan.name);
            if installed.is_some_and(|i| {
                i.key == plan.key
                    && i.flags == plan.flags
                    && bytemuck::bytes_of(&*i.table) == bytemuck::bytes_of(&*plan.table)
            }) {
                continue;
            }
            let (slot, generation) = match installed {
                Some(i) => (i.slot, 1 - i.generation),
                None => {
                    let slot = (0..MAX_SERVICES)
                        .find(|s| self.live.values().all(|i| i.slot != *s))
                        .ok_or(DataplaneError::TooManyServices)?;
                    (slot, 0)
                }
            };
            let old_key = installed.map(|i| i.key);
            let table_id = slot * 2 + generation;
            let mut tables: Array<&mut MapData, SelectionTable> =
                Array::try_from(map_mut(&mut self.ebpf, MAP_TABLES)?)?;
            tables.set(table_id, *plan.table, 0)?;
            let mut services: HashMap<&mut MapData, ServiceKey, ServiceRef> =
                HashMap::try_from(map_mut(&mut self.ebpf, MAP_SERVICES)?)?;
            services.insert(plan.key, ServiceRef { table: table_id, flags: plan.flags }, 0)?;
            let installed = Installed { slot, generation, key: plan.key, flags: plan.flags, table: plan.table.clone() };
            self.live.insert(plan.name.clone(), installed);
            if let Some(old) = old_key.filter(|k| !in_use(k)) {
                services.remove(&old)?;
            }
        }
        let gone: Vec<String> = self.live.keys().filter(|n| !plans.iter().any(|p| &p.name == *n)).cloned().collect();
        for name in gone {
            let installed = self.live.remove(&name).expect("listed above");
            if !in_use(&installed.key) {
                let mut services: HashMap<&mut MapData, ServiceKey, ServiceRef> =
                    HashMap::try_from(map_mut(&mut self.ebpf, MAP_SERVICES)?)?;
                services.remove(&installed.key)?;
            }
        }
        Ok(())
    }

    /// Attaches the ingress program to `ifname` (in this network namespace).
    pub fn attach_ingress(&mut self, ifname: &str, mode: AttachMode) -> Result<(), DataplaneError> {
        let prog = ingress(&mut self.ebpf)?;
        let link = prog
            .attach(ifname, mode.xdp())
            .map_err(|source| DataplaneError::Attach { ifname: ifname.to_owned(), source })?;
        self.attached.push((ifname.to_owned(), link));
        Ok(())
    }

    /// Interfaces the ingress program is attached to.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.iter().map(|(i, _)| i.as_str())
    }

    /// Pins every map under `dir` (a bpffs directory) so `splitter status`
    /// can read them, replacing pins a crashed agent left behind (the caller
    /// holds the state-dir lock, so no running agent owns them).
    pub fn pin_maps(&mut self, dir: &Path) -> Result<(), DataplaneError> {
        for name in ALL_MAPS {
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path);
            let map = self.ebpf.map(name).ok_or(DataplaneError::Missing { kind: "map", name })?;
            map.pin(&path).map_err(|source| DataplaneError::Pin { what: name, path: path.clone(), source })?;
            self.pinned.push(path);
        }
        Ok(())
    }

    /// Runs the ingress program once on `input` with `BPF_PROG_TEST_RUN`
    /// (`repeat` times; the kernel reports the mean duration). The program
    /// sees the calling thread's network namespace (FIB, neighbours).
    pub fn test_run(&self, input: &[u8], repeat: u32) -> Result<TestOutcome, DataplaneError> {
        self.test_run_program(PROG_INGRESS, input, repeat)
    }

    /// Loads the empty floor program ([`PROG_FLOOR`]) next to the real one, for benchmarks.
    pub fn load_floor(&mut self) -> Result<(), DataplaneError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROG_FLOOR)
            .ok_or(DataplaneError::Missing { kind: "program", name: PROG_FLOOR })?
            .try_into()?;
        prog.load()?;
        Ok(())
    }

    /// Instructions the verifier processed to accept program `name`.
    pub fn verified_instructions(&self, name: &'static str) -> Result<Option<u32>, DataplaneError> {
        let prog = self.ebpf.program(name).ok_or(DataplaneError::Missing { kind: "program", name })?;
        Ok(prog.info()?.verified_instruction_count())
    }

    /// [`Dataplane::test_run`] for any loaded XDP program of the object.
    pub fn test_run_program(
        &self,
        name: &'static str,
        input: &[u8],
        repeat: u32,
    ) -> Result<TestOutcome, DataplaneError> {
        use aya::programs::{TestRun, TestRunOptions};
        let prog: &Xdp =
            self.ebpf.program(name).ok_or(DataplaneError::Missing { kind: "program", name })?.try_into()?;
        // Room for programs that grow the frame (encapsulation) later.
        let mut out = vec![0u8; input.len() + 256];
        let res = prog.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::new()
        })?;
        out.truncate(res.data_size_out as usize);
        Ok(TestOutcome { action: res.return_value, output: out, duration: res.duration })
    }

    /// Removes expired flows (and their reverse-NAT entries) from the kernel
    /// flow table; see `aging`.
    pub fn sweep_flows(&mut self, aging: &crate::config::FlowAging) -> Result<crate::aging::Sweep, DataplaneError> {
        let now = crate::aging::now_coarse_ns();
        let mut flows: HashMap<&mut MapData, FlowKey, FlowState> =
            HashMap::try_from(map_mut(&mut self.ebpf, MAP_FLOWS)?)?;
        let keys: Vec<FlowKey> = flows.keys().filter_map(Result::ok).collect();
        let mut sweep = crate::aging::Sweep::default();
        let mut gone = Vec::new();
        for key in keys {
            sweep.examined += 1;
            // The entry may have been evicted or removed since the key walk.
            let Ok(state) = flows.get(&key, 0) else { continue };
            if crate::aging::expired(&state, key.proto, now, aging) && flows.remove(&key).is_ok() {
                sweep.removed += 1;
                gone.push(FlowKey {
                    src_addr: state.backend,
                    dst_addr: key.src_addr,
                    src_port: state.backend_port,
                    dst_port: key.src_port,
                    proto: key.proto,
                    family: key.family,
                    _pad: [0; 2],
                });
            }
        }
        let mut reverse: HashMap<&mut MapData, FlowKey, ReverseNat> =
            HashMap::try_from(map_mut(&mut self.ebpf, MAP_REVERSE)?)?;
        for reply in gone {
            let _ = reverse.remove(&reply);
        }
        Ok(sweep)
    }

    /// Current counters, summed over CPUs.
    pub fn stats(&self) -> Result<Counters, DataplaneError> {
        let map = self.ebpf.map(MAP_STATS).ok_or(DataplaneError::Missing { kind: "map", name: MAP_STATS })?;
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        Counters::read(&array)
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        for path in &self.pinned {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, DataplaneError> {
    ebpf.map_mut(name).ok_or(DataplaneError::Missing { kind: "map", name })
}

fn ingress(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    let prog = ebpf.program_mut(PROG_INGRESS).ok_or(DataplaneError::Missing { kind: "program", name: PROG_INGRESS })?;
    Ok(prog.try_into()?)
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Clone, Debug)]
pub struct TestOutcome {
    /// The XDP action.
    pub action: u32,
    /// The frame after the program.
    pub output: Vec<u8>,
    /// Mean run time per repetition, as the kernel measured it.
    pub duration: std::time::Duration,
}

/// The data path's counters, summed over CPUs, indexed by `Stat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Stat::COUNT as usize]);

impl Counters {
    fn read<T: std::borrow::Borrow<MapData>>(array: &PerCpuArray<T, u64>) -> Result<Counters, DataplaneError> {
        let mut c = Counters::default();
        for stat in Stat::ALL {
            let per_cpu = array.get(&(stat as u32), 0)?;
            c.0[stat as usize] = per_cpu.iter().sum();
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

    /// The counters as a JSON object `{name: value}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.iter().map(|(n, v)| (n.to_owned(), v.into())).collect())
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

/// Makes sure `dir` lives on a mounted bpffs, mounting `/sys/fs/bpf` if it is
/// not (as on hosts without systemd's mount), then creates `dir`.
pub fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let root = Path::new("/sys/fs/bpf");
    let err = |source| DataplaneError::Bpffs { path: root.to_owned(), source };
    let is_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p).map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC).unwrap_or(false)
    };
    if dir.starts_with(root) && !is_bpffs(root) {
        nix::mount::mount(Some("bpf"), root, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(|e| err(io::Error::from(e)))?;
    }
    std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Bpffs { path: dir.to_owned(), source })?;
    if !is_bpffs(dir) {
        return Err(DataplaneError::Bpffs {
            path: dir.to_owned(),
            source: io::Error::other("not on a bpf filesystem: set pin_path under a mounted bpffs such as /sys/fs/bpf"),
        });
    }
    Ok(())
}

/// The maps a running agent pinned under its `pin_path`, opened once: what
/// `splitter status` (and the demo) read.
pub struct PinnedMaps {
    stats: PerCpuArray<MapData, u64>,
    services: HashMap<MapData, ServiceKey, ServiceRef>,
    tables: Array<MapData, SelectionTable>,
    flows: HashMap<MapData, FlowKey, FlowState>,
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
        Ok(PinnedMaps {
            stats: PerCpuArray::try_from(open(MAP_STATS)?)?,
            services: HashMap::try_from(open(MAP_SERVICES)?)?,
            tables: Array::try_from(open(MAP_TABLES)?)?,
            flows: HashMap::try_from(open(MAP_FLOWS)?)?,
            endpoint_stats: PerCpuArray::try_from(open(MAP_ENDPOINT_STATS)?)?,
        })
    }

    /// The data-path counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        Counters::read(&self.stats)
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
            }));
        }
        Ok(Some(LiveService {
            table: svc_ref.table,
            flags: svc_ref.flags,
            version_bps,
            n_endpoints: table.n_endpoints,
            endpoint_versions: table.endpoints[..n].iter().map(|e| e.version).collect(),
            endpoint_stats,
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
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use splitter_common::{
        names::*,
        service::{EndpointStats, FlowState, ReverseNat, SelectionTable, ServiceKey, ServiceRef},
        stats::Stat,
        FlowKey,
    };

    use super::OBJECT;

    /// The object the binary embeds has every program and map the agent
    /// names, with the key and value sizes of the Rust types (no root needed).
    #[test]
    fn embedded_object_matches_the_shared_names_and_types() {
        let obj = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        for prog in [PROG_INGRESS, PROG_FLOOR] {
            assert!(obj.programs.contains_key(prog), "no program {prog} in the object");
        }
        let layout = [
            (MAP_STATS, size_of::<u32>(), size_of::<u64>(), Some(Stat::COUNT)),
            (MAP_SERVICES, size_of::<ServiceKey>(), size_of::<ServiceRef>(), None),
            (MAP_TABLES, size_of::<u32>(), size_of::<SelectionTable>(), None),
            (MAP_FLOWS, size_of::<FlowKey>(), size_of::<FlowState>(), None),
            (MAP_REVERSE, size_of::<FlowKey>(), size_of::<ReverseNat>(), None),
            (MAP_ENDPOINT_STATS, size_of::<u32>(), size_of::<EndpointStats>(), None),
        ];
        assert_eq!(layout.len(), ALL_MAPS.len());
        for (name, key, value, entries) in layout {
            let map = obj.maps.get(name).unwrap_or_else(|| panic!("no map {name} in the object"));
            assert_eq!(map.key_size() as usize, key, "{name} key size");
            assert_eq!(map.value_size() as usize, value, "{name} value size");
            if let Some(n) = entries {
                assert_eq!(map.max_entries(), n, "{name} entries");
            }
        }
        // Nothing in the object that the agent does not know about.
        for name in obj.maps.keys() {
            assert!(ALL_MAPS.contains(&name.as_str()) || name.starts_with('.'), "unknown map {name} in the object");
        }
    }
}
