//! Names of programs and maps, as they appear in the eBPF object and in bpffs.
//!
//! The kernel side names its statics exactly like these constants; a host test
//! in `splitter-user` checks the built object against them.

/// The XDP program, attached to client- and backend-facing interfaces alike:
/// it NATs packets to a service forward and replies from an endpoint back.
pub const PROG_INGRESS: &str = "splitter_ingress";

/// The TC (clsact ingress) program beside the XDP one on every service
/// interface: it copies the packets of mirrored flows to the mirror interface,
/// then rewrites and forwards them. XDP cannot clone a packet; TC can.
pub const PROG_MIRROR: &str = "splitter_mirror";

/// The XDP program on mirror interfaces: drops packets a shadow sends from a
/// service address (answers to the copies), so none reaches a client.
pub const PROG_MIRROR_GUARD: &str = "splitter_mirror_guard";

/// An empty XDP program (returns XDP_PASS): the floor benchmarks measure
/// against. Never attached.
pub const PROG_FLOOR: &str = "splitter_floor";

/// Per-CPU array of `u64` counters, indexed by [`crate::stats::Stat`].
pub const MAP_STATS: &str = "SPLITTER_STATS";

/// Service address → live selection-table generation.
pub const MAP_SERVICES: &str = "SPLITTER_SERVICES";

/// Selection tables (two generations per service).
pub const MAP_TABLES: &str = "SPLITTER_TABLES";

/// Flow table (LRU): client flow → chosen endpoint.
pub const MAP_FLOWS: &str = "SPLITTER_FLOWS";

/// Endpoint address → the VIPs it serves: how a reply finds its flow.
pub const MAP_BACKENDS: &str = "SPLITTER_BACKENDS";

/// Per-CPU counters per endpoint of every service.
pub const MAP_ENDPOINT_STATS: &str = "SPLITTER_ENDPOINT_STATS";

/// Per-CPU array: when each kind of rare kernel event was last logged, so a
/// storm of them logs at most once a second per CPU (they are all counted).
pub const MAP_LOG_GATE: &str = "SPLITTER_LOG_GATE";

/// Per-CPU scratch space of one packet (a new flow's entry is put together
/// there; the stack has no room). Not pinned: nothing in it outlives a packet.
pub const MAP_SCRATCH: &str = "SPLITTER_SCRATCH";

/// The next hop towards each endpoint slot that new flows start with (the
/// kernel's own cache). Not pinned: a new program starts with it empty.
pub const MAP_HOPS: &str = "SPLITTER_HOPS";

/// Maps the kernel keeps for itself: the agent neither writes nor pins them.
pub const KERNEL_ONLY_MAPS: [&str; 2] = [MAP_SCRATCH, MAP_HOPS];

/// The ring buffer aya-log-ebpf writes log records to (not pinned: each
/// loaded program has its own, read by the agent that loaded it).
pub const MAP_AYA_LOGS: &str = "AYA_LOGS";

/// Maps earlier builds pinned that this one no longer has (the per-flow
/// reverse-NAT table, replaced by `BACKENDS`): a pinned load and `down`
/// remove them. Unknown pins are never touched.
pub const RETIRED_MAPS: [&str; 1] = ["SPLITTER_REVERSE"];

/// Every map the agent pins (and adopts on restart).
pub const ALL_MAPS: [&str; 7] =
    [MAP_STATS, MAP_SERVICES, MAP_TABLES, MAP_FLOWS, MAP_BACKENDS, MAP_ENDPOINT_STATS, MAP_LOG_GATE];
