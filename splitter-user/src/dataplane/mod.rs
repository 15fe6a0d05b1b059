//! The kernel side as the agent sees it: the embedded eBPF object, loading and
//! attaching it, pinning (and adopting) its maps, program and links in bpffs,
//! and reading its counters. `load.rs` loads and adopts, `tables.rs` writes
//! the agent's decisions into the maps, `links.rs` attaches (and `down`
//! detaches), `pinned.rs` reads; `test_hooks.rs` is for tests and benches.
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

mod links;
mod load;
mod pinned;
mod tables;
#[cfg(feature = "test-hooks")]
mod test_hooks;

pub use links::down;
pub use pinned::{Counters, LiveService, PinnedMaps};
#[cfg(feature = "test-hooks")]
pub use test_hooks::TestOutcome;

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
    /// The flow table, when only its size changed: a new one holding the
    /// old one's flows.
    pub resized: Option<Resized>,
}

/// A flow table made anew at another size, its flows copied over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resized {
    pub from: u32,
    pub to: u32,
    pub copied: u64,
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

    /// Starts reading the program's rare-event log records (aya-log); the
    /// caller polls the returned reader whenever its fd is readable. Records
    /// become `tracing` events with target `splitter::kernel`.
    pub fn kernel_log(&mut self) -> Result<KernelLog, DataplaneError> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, ForwardToTracing)
            .map_err(|e| DataplaneError::KernelLog(e.to_string()))
    }
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

#[cfg(test)]
mod tests {
    use super::{tables::now_coarse_ns, *};

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
