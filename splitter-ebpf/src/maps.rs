//! Every map the kernel programs use. Names match `splitter_common::names`
//! (the agent's tests check the built object against those constants).

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use splitter_common::{
    service::{
        BackendVips, EndpointHop, EndpointStats, FlowState, SelectionTable, ServiceKey, ServiceRef,
        DEFAULT_FLOW_TABLE_SIZE, ENDPOINT_STATS_LEN, LOG_EVENTS, MAX_BACKENDS, MAX_SERVICES, MAX_TABLES,
    },
    stats::StatBlock,
    FlowKey,
};

/// Per CPU, every counter (`StatBlock`, indexed by `Stat`): one entry.
#[map]
pub static SPLITTER_STATS: PerCpuArray<StatBlock> = PerCpuArray::with_max_entries(1, 0);

/// Service address → live selection-table generation.
#[map]
pub static SPLITTER_SERVICES: HashMap<ServiceKey, ServiceRef> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Selection tables, two generations per service, written only by the agent.
#[map]
pub static SPLITTER_TABLES: Array<SelectionTable> = Array::with_max_entries(MAX_TABLES, 0);

/// Client → service flows and the endpoint each was given. One LRU shared by
/// all CPUs: packets of one flow may arrive on any CPU. The agent resizes it
/// at load time (`flow_table_size`).
#[map]
pub static SPLITTER_FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

/// Endpoint address → the VIPs it serves, written only by the agent: how a
/// reply finds its flow (see `reply`).
#[map]
pub static SPLITTER_BACKENDS: HashMap<ServiceKey, BackendVips> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// One packet's scratch space: what does not fit on the stack (512 bytes
/// for the whole program). Kernel-only, so its type lives here.
#[repr(C)]
pub struct Scratch {
    /// A new flow's entry, put together before it is inserted.
    pub flow: FlowState,
    /// A FIB lookup's parameters and answer.
    pub fib: FibParams,
}

/// `bpf_fib_lookup` on an 8-byte boundary, so it can be zeroed with 8-byte
/// stores (`forward::zero_fib_params`) instead of a byte-wise `memset`.
#[repr(C, align(8))]
pub struct FibParams(pub bpf_fib_lookup);

/// Per CPU, one [`Scratch`]. Nothing in it outlives one packet (a CPU runs
/// one program at a time, to the end).
#[map]
pub static SPLITTER_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per endpoint slot: the next hop new flows to it start with (see
/// `forward::to_new_endpoint`). Shared by all CPUs, like the flows' caches.
#[map]
pub static SPLITTER_HOPS: Array<EndpointHop> = Array::with_max_entries(ENDPOINT_STATS_LEN, 0);

/// Per-CPU counters per endpoint of every service.
#[map]
pub static SPLITTER_ENDPOINT_STATS: PerCpuArray<EndpointStats> = PerCpuArray::with_max_entries(ENDPOINT_STATS_LEN, 0);

/// Per-CPU: when each `events::Event` was last logged (coarse ns).
#[map]
pub static SPLITTER_LOG_GATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOG_EVENTS, 0);
