//! The kernel side as the agent sees it: the embedded eBPF object, loading and
//! attaching it, pinning (and adopting) its maps, program and links in bpffs,
//! and reading its counters.
//!
//! Pinned layout under `pin_path`: one file per map (`SPLITTER_*`), the
//! programs (`prog_<name>`), one XDP link per served interface
//! (`links/<ifname>`), the TC link of the mirror program beside it
//! (`tc-links/<ifname>`) and the mirror guard's XDP link on each mirror
//! interface (`guard-links/<ifname>`). The pins keep the data path serving
//! when the agent exits; a new agent opens the same maps and swaps its
//! programs into the pinned links with `bpf_link_update`, so there is no
//! moment without them.

use std::{
    io,
    path::{Path, PathBuf},
};

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    include_bytes_aligned,
    maps::{Array, HashMap, Map, MapData, MapInfo, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use splitter_common::{
    names::{
        ALL_MAPS, MAP_BACKENDS, MAP_ENDPOINT_STATS, MAP_FLOWS, MAP_SERVICES, MAP_STATS, MAP_TABLES, PROG_INGRESS,
        PROG_MIRROR, PROG_MIRROR_GUARD, RETIRED_MAPS,
    },
    service::{
        endpoint_stats_index, BackendVips, EndpointStats, FlowState, SelectionTable, ServiceKey, ServiceRef,
        MAX_ENDPOINTS, MAX_SERVICES, MAX_SERVICES_PER_ENDPOINT,
    },
    stats::{Stat, StatBlock},
    FlowKey,
};

use splitter_model::{
    backends::{self, Backends},
    plan::{Previous, ServicePlan},
};
use thiserror::Error;

/// The compiled `splitter-ebpf` object, built by this crate's build script.
pub static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/splitter-ebpf"));

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object into the kernel failed (are you root, with CAP_BPF and CAP_NET_ADMIN?): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no {kind} named {name:?}; the binary was built from a mismatched kernel program")]
    Missing { kind: &'static str, name: &'static str },
    #[error("kernel program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("attaching {what} to {ifname:?}: {source} (the interface must exist in the agent's network namespace)")]
    Attach { what: &'static str, ifname: String, source: aya::programs::ProgramError },
    #[error("mirror interface {0:?} does not exist in the agent's network namespace")]
    NoMirrorInterface(String),
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
    #[error("{what} link of {ifname:?} at {path}: {message}")]
    Link { what: &'static str, ifname: String, path: PathBuf, message: String },
    #[error("removing {path}: {source}")]
    Unpin { path: PathBuf, source: io::Error },
    #[error("reading the kernel program's log records: {0}")]
    KernelLog(String),
}

/// The kernel program's log reader (see [`Dataplane::kernel_log`]).
pub type KernelLog = aya_log::EbpfLogger<ForwardToTracing>;

/// A `log::Log` that re-emits aya-log records as `tracing` events, so kernel
/// events land in the agent's log with its format and filter.
pub struct ForwardToTracing;

impl log::Log for ForwardToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "splitter::kernel", "{message}"),
            log::Level::Warn => tracing::warn!(target: "splitter::kernel", "{message}"),
            log::Level::Info => tracing::info!(target: "splitter::kernel", "{message}"),
            log::Level::Debug => tracing::debug!(target: "splitter::kernel", "{message}"),
            log::Level::Trace => tracing::trace!(target: "splitter::kernel", "{message}"),
        }
    }

    fn flush(&self) {}
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

/// The loaded object and the links it holds. Unpinned (fixtures, benches),
/// dropping it detaches everything; pinned (the agent), the data path stays
/// until [`down`] removes the pins.
pub struct Dataplane {
    ebpf: Ebpf,
    /// Where maps, program and links are pinned; `None` for a private data path.
    pins: Option<PathBuf>,
    /// Interfaces the ingress (and TC mirror) programs serve, with the links
    /// when they are pinned (an unpinned link is owned by its program and
    /// dies with it).
    attached: Vec<(String, Vec<FdLink>)>,
    /// Mirror interfaces with the guard attached.
    guarded: BTreeMap<String, Option<FdLink>>,
    /// What the kernel serves now, by service name.
    live: BTreeMap<String, Installed>,
    /// What `BACKENDS` holds now.
    backends: Backends,
    /// The endpoints (and their VIPs) of the last applied plans.
    configured: Backends,
    /// (endpoint, VIP) pairs of live flows that found no room in `BACKENDS`
    /// at the last write (warned about once).
    left_out: BTreeSet<(ServiceKey, ServiceKey)>,
}

/// One service as last written to the kernel.
#[derive(Clone)]
struct Installed {
    /// Service slot: its tables are `TABLES[2 * slot]` and `[2 * slot + 1]`.
    slot: u32,
    /// Which of the two generations `SERVICES` points at.
    generation: u32,
    key: ServiceKey,
    flags: u32,
    /// Version names of the table's version indexes.
    versions: Vec<String>,
    table: Box<SelectionTable>,
}

/// File names of the pinned programs under `pin_path`.
pub const PIN_PROGRAMS: [&str; 3] = ["prog_splitter_ingress", "prog_splitter_mirror", "prog_splitter_mirror_guard"];
/// Directory of the pinned XDP links (one per interface) under `pin_path`.
pub const PIN_LINKS: &str = "links";
/// Directory of the pinned TC links of the mirror program (one per interface).
pub const PIN_TC_LINKS: &str = "tc-links";
/// Directory of the pinned XDP links of the mirror guard (one per mirror interface).
pub const PIN_GUARD_LINKS: &str = "guard-links";

/// What one program's link on an interface is, for pinning and messages.
#[derive(Clone, Copy)]
enum LinkKind {
    Ingress,
    Mirror,
    Guard,
}

impl LinkKind {
    fn dir(self) -> &'static str {
        match self {
            LinkKind::Ingress => PIN_LINKS,
            LinkKind::Mirror => PIN_TC_LINKS,
            LinkKind::Guard => PIN_GUARD_LINKS,
        }
    }

    fn what(self) -> &'static str {
        match self {
            LinkKind::Ingress => "XDP",
            LinkKind::Mirror => "TC",
            LinkKind::Guard => "mirror guard XDP",
        }
    }
}

/// Maps that are kept or replaced together when a new agent adopts the pins
/// (a service map pointing into a fresh table map would be wrong; adopted
/// flows need the endpoints their replies come from).
const MAP_GROUPS: [&[&str]; 4] =
    [&[MAP_SERVICES, MAP_TABLES], &[MAP_FLOWS, MAP_BACKENDS], &[MAP_STATS], &[MAP_ENDPOINT_STATS]];

/// What a pinned load found under `pin_path`.
#[derive(Debug, Default)]
pub struct Adoption {
    /// Pinned maps that were opened and are used as they are.
    pub reused: Vec<&'static str>,
    /// Pinned maps that did not fit this object (layout or size), with why;
    /// they were replaced by fresh ones.
    pub replaced: Vec<(&'static str, String)>,
    /// Services found live in the adopted maps.
    pub services: usize,
    /// Pinned maps of an earlier build that this one no longer uses, removed.
    pub retired: Vec<&'static str>,
}

/// How an interface got the ingress program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new XDP link.
    New,
    /// The program of an existing pinned link was swapped atomically.
    Replaced,
}

impl Dataplane {
    fn new(ebpf: Ebpf, pins: Option<PathBuf>) -> Self {
        Dataplane {
            ebpf,
            pins,
            attached: Vec::new(),
            guarded: BTreeMap::new(),
            live: BTreeMap::new(),
            backends: Backends::new(),
            configured: Backends::new(),
            left_out: BTreeSet::new(),
        }
    }

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
        for group in MAP_GROUPS {
            let misfit = group.iter().find_map(|name| {
                let path = dir.join(name);
                if !path.exists() {
                    return None;
                }
                let want = expected.iter().find(|(n, _)| n == name).map(|(_, s)| *s)?;
                match MapInfo::from_pin(&path) {
                    Ok(info) => {
                        let have = MapShape::of(&info);
                        (have != want).then(|| (*name, format!("pinned {have}, this build needs {want}")))
                    }
                    Err(e) => Some((*name, format!("cannot open: {e}"))),
                }
            });
            for name in group.iter() {
                let path = dir.join(name);
                match &misfit {
                    Some((bad, why)) if path.exists() => {
                        std::fs::remove_file(&path).map_err(|source| DataplaneError::Unpin { path, source })?;
                        let why = if bad == name { why.clone() } else { format!("replaced with {bad}") };
                        adoption.replaced.push((name, why));
                    }
                    None if path.exists() => adoption.reused.push(name),
                    _ => {}
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

    /// Starts reading the program's rare-event log records (aya-log); the
    /// caller polls the returned reader whenever its fd is readable. Records
    /// become `tracing` events with target `splitter::kernel`.
    pub fn kernel_log(&mut self) -> Result<KernelLog, DataplaneError> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, ForwardToTracing)
            .map_err(|e| DataplaneError::KernelLog(e.to_string()))
    }

    /// The table service `name` has in the kernel now, as the previous table
    /// of its next plan.
    pub fn previous(&self, name: &str) -> Option<Previous<'_>> {
        self.live.get(name).map(|i| Previous { versions: &i.versions, slots: &i.table.slot_version })
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
    fn restore(&mut self, before: BTreeMap<String, Installed>) -> Result<(), DataplaneError> {
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

    /// Puts the ingress program (XDP) and the mirror program (TC ingress) on
    /// `ifname` (in this network namespace). Pinned, an existing link at
    /// `links/<ifname>` (`tc-links/<ifname>`) gets the new program in one
    /// `bpf_link_update` (no moment without it; an XDP link keeps the mode it
    /// was created with); a link whose interface is gone is replaced by a new
    /// one, which is pinned. Returns how the XDP program got there.
    pub fn attach_ingress(&mut self, ifname: &str, mode: AttachMode) -> Result<Attached, DataplaneError> {
        let (how, xdp) = self.attach_pinned(LinkKind::Ingress, ifname, mode)?;
        let (_, tc) = self.attach_pinned(LinkKind::Mirror, ifname, mode)?;
        self.attached.push((ifname.to_owned(), xdp.into_iter().chain(tc).collect()));
        Ok(how)
    }

    /// Puts the mirror guard on every interface of `ifnames` and takes it off
    /// mirror interfaces no longer named (pinned links under `guard-links/`).
    pub fn guard_mirrors(&mut self, ifnames: &std::collections::BTreeSet<String>) -> Result<(), DataplaneError> {
        for ifname in ifnames {
            if !self.guarded.contains_key(ifname) {
                let (how, link) = self.attach_pinned(LinkKind::Guard, ifname, AttachMode::Auto)?;
                if how == Attached::New {
                    tracing::info!(interface = %ifname, "attached {PROG_MIRROR_GUARD} (shadow answers are dropped here)");
                }
                self.guarded.insert(ifname.clone(), link);
            }
        }
        self.guarded.retain(|i, _| ifnames.contains(i));
        if let Some(dir) = &self.pins {
            let keep: Vec<&str> = ifnames.iter().map(String::as_str).collect();
            for gone in unpin_others(&dir.join(PIN_GUARD_LINKS), &keep)? {
                tracing::info!(interface = %gone, "detached {PROG_MIRROR_GUARD}: no service mirrors there now");
            }
        }
        Ok(())
    }

    /// Mirror interfaces with the guard attached.
    pub fn guarded(&self) -> impl Iterator<Item = &str> {
        self.guarded.keys().map(String::as_str)
    }

    /// Attaches `kind`'s program to `ifname`, through its pinned link when
    /// there is one. Unpinned (fixtures), the program owns the link.
    fn attach_pinned(
        &mut self,
        kind: LinkKind,
        ifname: &str,
        mode: AttachMode,
    ) -> Result<(Attached, Option<FdLink>), DataplaneError> {
        let Some(dir) = self.pins.clone() else {
            self.attach_new(kind, ifname, mode)?;
            return Ok((Attached::New, None));
        };
        let links = dir.join(kind.dir());
        std::fs::create_dir_all(&links).map_err(|source| DataplaneError::Bpffs { path: links.clone(), source })?;
        let path = links.join(ifname);
        let link_err = |message: String| DataplaneError::Link {
            what: kind.what(),
            ifname: ifname.into(),
            path: path.clone(),
            message,
        };
        if path.exists() {
            let pinned = FdLink::from(PinnedLink::from_pin(&path).map_err(|e| link_err(e.to_string()))?);
            match self.replace_in(kind, pinned) {
                Ok(fd) => return Ok((Attached::Replaced, Some(fd))),
                // The interface it was on is gone (ENOLINK): a new link below.
                Err(e) => {
                    tracing::warn!(
                        interface = ifname,
                        "pinned {} link is defunct ({e}); attaching a new one",
                        kind.what()
                    );
                    std::fs::remove_file(&path)
                        .map_err(|source| DataplaneError::Unpin { path: path.clone(), source })?;
                }
            }
        }
        let fd = self.attach_new(kind, ifname, mode)?.ok_or_else(|| {
            link_err(
                "the kernel attached without a bpf_link (Linux < 6.6 for TC, < 5.9 for XDP); it cannot be pinned"
                    .into(),
            )
        })?;
        let pinned =
            fd.pin(&path).map_err(|source| DataplaneError::Pin { what: "program link", path: path.clone(), source })?;
        Ok((Attached::New, Some(FdLink::from(pinned))))
    }

    /// A new link of `kind`'s program on `ifname`. Pinning, the link is taken
    /// from the program and returned as an `FdLink` when it is one.
    fn attach_new(&mut self, kind: LinkKind, ifname: &str, mode: AttachMode) -> Result<Option<FdLink>, DataplaneError> {
        let pinning = self.pins.is_some();
        let err = |source| DataplaneError::Attach { what: kind.what(), ifname: ifname.to_owned(), source };
        match kind {
            LinkKind::Ingress | LinkKind::Guard => {
                let name = if matches!(kind, LinkKind::Ingress) { PROG_INGRESS } else { PROG_MIRROR_GUARD };
                let prog = xdp_program(&mut self.ebpf, name)?;
                let id = prog.attach(ifname, mode.xdp()).map_err(err)?;
                if !pinning {
                    return Ok(None);
                }
                Ok(FdLink::try_from(prog.take_link(id).map_err(err)?).ok())
            }
            LinkKind::Mirror => {
                let prog = tc_program(&mut self.ebpf)?;
                let id = prog
                    .attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
                    .map_err(err)?;
                if !pinning {
                    return Ok(None);
                }
                Ok(FdLink::try_from(prog.take_link(id).map_err(err)?).ok())
            }
        }
    }

    /// Swaps `kind`'s program into the existing link `link` (`bpf_link_update`).
    fn replace_in(&mut self, kind: LinkKind, link: FdLink) -> Result<FdLink, String> {
        match kind {
            LinkKind::Ingress | LinkKind::Guard => {
                let name = if matches!(kind, LinkKind::Ingress) { PROG_INGRESS } else { PROG_MIRROR_GUARD };
                let prog = xdp_program(&mut self.ebpf, name).map_err(|e| e.to_string())?;
                let link = XdpLink::try_from(link).map_err(|e| e.to_string())?;
                let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
                FdLink::try_from(prog.take_link(id).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
            }
            LinkKind::Mirror => {
                let prog = tc_program(&mut self.ebpf).map_err(|e| e.to_string())?;
                let link = SchedClassifierLink::try_from(link).map_err(|e| e.to_string())?;
                let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
                FdLink::try_from(prog.take_link(id).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
            }
        }
    }

    /// Detaches pinned links of interfaces not in `keep` (left by an agent
    /// that served more interfaces); returns their names.
    pub fn detach_others(&mut self, keep: &[&str]) -> Result<Vec<String>, DataplaneError> {
        let Some(dir) = &self.pins else { return Ok(Vec::new()) };
        let gone = unpin_others(&dir.join(PIN_LINKS), keep)?;
        unpin_others(&dir.join(PIN_TC_LINKS), keep)?;
        Ok(gone)
    }

    /// Interfaces the ingress program is attached to.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.iter().map(|(i, _)| i.as_str())
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

    /// Current counters, summed over CPUs.
    pub fn stats(&self) -> Result<Counters, DataplaneError> {
        let map = self.ebpf.map(MAP_STATS).ok_or(DataplaneError::Missing { kind: "map", name: MAP_STATS })?;
        let array: PerCpuArray<&MapData, StatBlock> = PerCpuArray::try_from(map)?;
        Counters::read(&array)
    }
}

/// Entry points only the tests and benchmarks call (cargo feature
/// `test-hooks`, off in the shipped agent): a private load, `BPF_PROG_TEST_RUN`
/// of any program, the floor program, and map writes the agent never makes.
#[cfg(feature = "test-hooks")]
impl Dataplane {
    /// Loads the embedded object and the ingress program into the kernel,
    /// with a flow table of `flow_table_size` entries.
    /// Nothing is pinned: dropping it removes everything (fixtures, benches).
    pub fn load(flow_table_size: u32) -> Result<Self, DataplaneError> {
        let mut ebpf = EbpfLoader::new().map_max_entries(MAP_FLOWS, flow_table_size).load(OBJECT)?;
        load_programs(&mut ebpf)?;
        Ok(Dataplane::new(ebpf, None))
    }

    /// Runs the ingress program once on `input` with `BPF_PROG_TEST_RUN`
    /// (`repeat` times; the kernel reports the mean duration). The program
    /// sees the calling thread's network namespace (FIB, neighbours).
    pub fn test_run(&self, input: &[u8], repeat: u32) -> Result<TestOutcome, DataplaneError> {
        self.test_run_program(PROG_INGRESS, input, repeat)
    }

    /// Loads the empty floor program ([`splitter_common::names::PROG_FLOOR`])
    /// next to the real one, for benchmarks.
    pub fn load_floor(&mut self) -> Result<(), DataplaneError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(splitter_common::names::PROG_FLOOR)
            .ok_or(DataplaneError::Missing { kind: "program", name: splitter_common::names::PROG_FLOOR })?
            .try_into()?;
        prog.load()?;
        Ok(())
    }

    /// Attaches XDP program `name` (generic mode, unpinned, for as long as
    /// the dataplane lives) to `ifname` of the calling thread's namespace, an
    /// interface that carries no traffic, only so that test runs are cheap:
    /// `BPF_PROG_TEST_RUN` of an XDP program attached nowhere adds it to the
    /// kernel's XDP dispatcher and takes it out again on every call, each time
    /// waiting for an RCU grace period (tens of ms on an idle machine).
    pub fn hold_for_test_runs(&mut self, name: &'static str, ifname: &str) -> Result<(), DataplaneError> {
        let prog = xdp_program(&mut self.ebpf, name)?;
        prog.attach(ifname, XdpMode::Skb).map_err(|source| DataplaneError::Attach {
            what: "test-run holder",
            ifname: ifname.to_owned(),
            source,
        })?;
        Ok(())
    }

    /// Empties the kernel's shared next hops (`HOPS`) of every live service's
    /// endpoints, so the next new flow to each pays the FIB lookup again.
    /// Benchmark support: the agent never writes this map.
    pub fn forget_next_hops(&mut self) -> Result<(), DataplaneError> {
        let slots: Vec<u32> = self
            .live
            .values()
            .flat_map(|i| {
                (0..i.table.n_endpoints.min(MAX_ENDPOINTS as u16)).map(|e| endpoint_stats_index(i.slot as u16, e as u8))
            })
            .collect();
        use splitter_common::{names::MAP_HOPS, service::EndpointHop};
        let mut hops: Array<&mut MapData, EndpointHop> = Array::try_from(map_mut(&mut self.ebpf, MAP_HOPS)?)?;
        for slot in slots {
            hops.set(slot, <EndpointHop as bytemuck::Zeroable>::zeroed(), 0)?;
        }
        Ok(())
    }

    /// Instructions the verifier processed to accept program `name`.
    pub fn verified_instructions(&self, name: &'static str) -> Result<Option<u32>, DataplaneError> {
        let prog = self.ebpf.program(name).ok_or(DataplaneError::Missing { kind: "program", name })?;
        Ok(prog.info()?.verified_instruction_count())
    }

    /// [`Dataplane::test_run`] for any loaded XDP or TC program of the object.
    /// A TC program's verdict (`TC_ACT_*`, an `i32`) is returned as its bits.
    pub fn test_run_program(
        &self,
        name: &'static str,
        input: &[u8],
        repeat: u32,
    ) -> Result<TestOutcome, DataplaneError> {
        use aya::programs::{Program, TestRun, TestRunOptions};
        // Room for programs that grow the frame (encapsulation) later.
        let mut out = vec![0u8; input.len() + 256];
        let opts = TestRunOptions { data_in: Some(input), data_out: Some(&mut out), repeat, ..TestRunOptions::new() };
        let res = match self.ebpf.program(name).ok_or(DataplaneError::Missing { kind: "program", name })? {
            Program::Xdp(p) => p.test_run(opts)?,
            Program::SchedClassifier(p) => p.test_run(opts)?,
            _ => return Err(DataplaneError::Missing { kind: "XDP or TC program", name }),
        };
        out.truncate(res.data_size_out as usize);
        Ok(TestOutcome { action: res.return_value, output: out, duration: res.duration })
    }

    /// Runs the ingress program in `BPF_PROG_TEST_RUN`'s live-frames mode:
    /// `repeat` fresh copies of `input` arrive as if on `ingress_ifindex`
    /// (of the calling thread's namespace), and what the program redirects
    /// is really sent. Returns the kernel's mean time per frame.
    pub fn test_run_live(
        &self,
        input: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
    ) -> Result<std::time::Duration, DataplaneError> {
        use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
        let prog: &Xdp = self
            .ebpf
            .program(PROG_INGRESS)
            .ok_or(DataplaneError::Missing { kind: "program", name: PROG_INGRESS })?
            .try_into()?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, input.len() as u32, 0, ingress_ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let res = prog.test_run(TestRunOptions {
            data_in: Some(input),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::new()
        })?;
        Ok(res.duration)
    }

    /// Writes `SERVICES[key] = value` bypassing the planner: for fixtures
    /// that need a state the agent never writes (a service pointing at a
    /// missing table).
    pub fn write_service_ref(&mut self, key: ServiceKey, value: ServiceRef) -> Result<(), DataplaneError> {
        let mut services: HashMap<&mut MapData, ServiceKey, ServiceRef> =
            HashMap::try_from(map_mut(&mut self.ebpf, MAP_SERVICES)?)?;
        Ok(services.insert(key, value, 0)?)
    }
}

/// Removes everything an agent pinned under `dir`: the links first (each
/// unpin detaches XDP from its interface), then the program and the maps.
/// Returns what was removed. The caller makes sure no agent is running there.
pub fn down(dir: &Path) -> Result<Vec<String>, DataplaneError> {
    let mut removed = Vec::new();
    let unpin = |path: PathBuf, removed: &mut Vec<String>| match std::fs::remove_file(&path) {
        Ok(()) => {
            removed.push(path.display().to_string());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Unpin { path, source }),
    };
    for sub in [PIN_LINKS, PIN_TC_LINKS, PIN_GUARD_LINKS] {
        let links = dir.join(sub);
        if let Ok(entries) = std::fs::read_dir(&links) {
            for entry in entries.flatten() {
                unpin(entry.path(), &mut removed)?;
            }
            let _ = std::fs::remove_dir(&links);
        }
    }
    for prog in PIN_PROGRAMS {
        unpin(dir.join(prog), &mut removed)?;
    }
    for name in ALL_MAPS.iter().chain(&RETIRED_MAPS) {
        unpin(dir.join(name), &mut removed)?;
    }
    // Only when empty: never removes pins this build does not know.
    let _ = std::fs::remove_dir(dir);
    Ok(removed)
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

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, DataplaneError> {
    ebpf.map_mut(name).ok_or(DataplaneError::Missing { kind: "map", name })
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataplaneError> {
    let prog = ebpf.program_mut(name).ok_or(DataplaneError::Missing { kind: "program", name })?;
    Ok(prog.try_into()?)
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DataplaneError> {
    let prog = ebpf.program_mut(PROG_MIRROR).ok_or(DataplaneError::Missing { kind: "program", name: PROG_MIRROR })?;
    Ok(prog.try_into()?)
}

/// Loads (verifies) the programs the agent attaches.
fn load_programs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    xdp_program(ebpf, PROG_INGRESS)?.load()?;
    xdp_program(ebpf, PROG_MIRROR_GUARD)?.load()?;
    tc_program(ebpf)?.load()?;
    Ok(())
}

/// Removes the pinned links in `links` whose interface is not in `keep`
/// (unpinning drops the kernel's last reference: the link detaches); returns
/// their interfaces. A missing directory has none.
fn unpin_others(links: &Path, keep: &[&str]) -> Result<Vec<String>, DataplaneError> {
    let mut gone = Vec::new();
    let entries = match std::fs::read_dir(links) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(gone),
        Err(source) => return Err(DataplaneError::Bpffs { path: links.to_owned(), source }),
    };
    for entry in entries {
        let entry = entry.map_err(|source| DataplaneError::Bpffs { path: links.to_owned(), source })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name.as_str()) {
            std::fs::remove_file(entry.path())
                .map_err(|source| DataplaneError::Unpin { path: entry.path(), source })?;
            gone.push(name);
        }
    }
    Ok(gone)
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[cfg(feature = "test-hooks")]
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

/// The clock the kernel stamps flows with (`bpf_ktime_get_coarse_ns`).
fn now_coarse_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE).expect("CLOCK_MONOTONIC_COARSE");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
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
    stats: PerCpuArray<MapData, StatBlock>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_clock_is_readable() {
        let a = now_coarse_ns();
        let b = now_coarse_ns();
        assert!(b >= a && a > 0);
    }

    use std::mem::size_of;

    use splitter_common::{
        names::*,
        service::{
            BackendVips, EndpointStats, FlowState, SelectionTable, ServiceKey, ServiceRef, LOG_EVENTS, MAX_BACKENDS,
        },
        stats::StatBlock,
        FlowKey,
    };

    use super::OBJECT;

    /// The object the binary embeds has every program and map the agent
    /// names, with the key and value sizes of the Rust types (no root needed).
    #[test]
    fn embedded_object_matches_the_shared_names_and_types() {
        let obj = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        for prog in [PROG_INGRESS, PROG_FLOOR, PROG_MIRROR, PROG_MIRROR_GUARD] {
            assert!(obj.programs.contains_key(prog), "no program {prog} in the object");
        }
        let layout = [
            (MAP_STATS, size_of::<u32>(), size_of::<StatBlock>(), Some(1)),
            (MAP_SERVICES, size_of::<ServiceKey>(), size_of::<ServiceRef>(), None),
            (MAP_TABLES, size_of::<u32>(), size_of::<SelectionTable>(), None),
            (MAP_FLOWS, size_of::<FlowKey>(), size_of::<FlowState>(), None),
            (MAP_BACKENDS, size_of::<ServiceKey>(), size_of::<BackendVips>(), Some(MAX_BACKENDS)),
            (MAP_ENDPOINT_STATS, size_of::<u32>(), size_of::<EndpointStats>(), None),
            (MAP_LOG_GATE, size_of::<u32>(), size_of::<u64>(), Some(LOG_EVENTS)),
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
        assert!(obj.maps.contains_key(MAP_AYA_LOGS), "no aya-log ring buffer in the object");
        for name in obj.maps.keys() {
            let known = ALL_MAPS.contains(&name.as_str())
                || KERNEL_ONLY_MAPS.contains(&name.as_str())
                || name == MAP_AYA_LOGS
                || name.starts_with('.');
            assert!(known, "unknown map {name} in the object");
        }
    }
}
