//! Map types of the L4 split: services, their selection tables, flows and
//! the endpoints replies come from. Userspace builds every table; the kernel
//! only hashes a flow and indexes them.
//!
//! A service (`SERVICES`: [`ServiceKey`] → [`ServiceRef`]) points at one of
//! two [`SelectionTable`] generations in `TABLES`. The agent writes the spare
//! generation whole, then repoints the service in one map write: a packet
//! sees the old table or the new one, never a mix.

use bytemuck::{Pod, Zeroable};

/// Weights resolve to basis points: the version table has one slot per 1/10,000.
pub const BPS: usize = 10_000;
/// Versions per service.
pub const MAX_VERSIONS: usize = 8;
/// Endpoints per service, over all its versions.
pub const MAX_ENDPOINTS: usize = 64;
/// Consistent-hash (Maglev) ring size per version: a prime well above the
/// endpoints a version has, so each endpoint owns ~RING_SIZE/N slots.
pub const RING_SIZE: usize = 2053;
/// Services per agent.
pub const MAX_SERVICES: u32 = 256;
/// `TABLES` slots: two generations per service.
pub const MAX_TABLES: u32 = 2 * MAX_SERVICES;
/// Default size of the flow table (entries; LRU).
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 65_536;
/// Services one endpoint (address:port/protocol) can serve at once: a reply
/// from it is matched against each one's flow (one lookup per service).
pub const MAX_SERVICES_PER_ENDPOINT: usize = 4;
/// `BACKENDS` entries: every endpoint slot of every service, and as many
/// again for endpoints that left the config while their flows live on.
pub const MAX_BACKENDS: u32 = 2 * MAX_SERVICES * MAX_ENDPOINTS as u32;

/// Hash seed for choosing a version (a slot of `slot_version`).
pub const SEED_VERSION: u32 = 0x5eed_0001;
/// Hash seed for choosing an endpoint within a version (a ring slot).
pub const SEED_ENDPOINT: u32 = 0x5eed_0002;
/// Hash seed for sampling a new flow for mirroring.
pub const SEED_MIRROR: u32 = 0x5eed_0003;

/// `ServiceRef::flags`: hash the client address only, so one client sees one
/// version across its connections.
pub const SVC_AFFINITY_CLIENT_IP: u32 = 1;

/// Maps a 32-bit hash uniformly onto `0..n` by multiply-shift (Lemire). Unlike
/// `%`, the verifier can prove the result is below `n`, and it is as uniform.
#[inline(always)]
pub const fn reduce(hash: u32, n: u32) -> u32 {
    ((hash as u64 * n as u64) >> 32) as u32
}

/// The basis-point slot (`0..BPS`) a flow hash selects.
#[inline(always)]
pub const fn version_slot(hash: u32) -> usize {
    reduce(hash, BPS as u32) as usize
}

/// Whether a new flow with `key` is copied to the mirror when the service
/// mirrors `bps` basis points of its flows. Independent of the version and
/// endpoint choice (its own seed), decided once per flow: both sides compute
/// it, so a test knows which flows a capture must see.
#[inline(always)]
pub const fn mirror_sampled(key: &crate::FlowKey, bps: u16) -> bool {
    bps > 0 && version_slot(crate::flow_hash(key, SEED_MIRROR)) < bps as usize
}

/// The ring slot (`0..RING_SIZE`) a flow hash selects.
#[inline(always)]
pub const fn ring_slot(hash: u32) -> usize {
    reduce(hash, RING_SIZE as u32) as usize
}

/// A transport address (`addr:port/protocol`): the `SERVICES` key (the
/// service address as clients send to it) and the `BACKENDS` key (an
/// endpoint's address, as its replies come from it). Ordered so the agent
/// can keep sets of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct ServiceKey {
    /// Address, same layout as `FlowKey::dst_addr`.
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// `SERVICES` value: which table generation is live, and per-service flags.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceRef {
    /// Index into `TABLES`.
    pub table: u32,
    /// `SVC_*` flags.
    pub flags: u32,
}

/// One backend address of a version.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Endpoint {
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// Index of the version it belongs to (into the service's versions, by name order).
    pub version: u8,
    pub family: u8,
}

/// Everything the kernel needs to place a new flow of one service.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct SelectionTable {
    /// The service this table belongs to (checked against the lookup key).
    pub vip: ServiceKey,
    pub n_endpoints: u16,
    pub n_versions: u8,
    pub _pad: u8,
    /// Interface that copies of mirrored flows leave by; 0 = no mirroring.
    pub mirror_ifindex: u32,
    /// Share of new flows mirrored, in basis points (0..=BPS).
    pub mirror_bps: u16,
    pub _pad2: u16,
    pub endpoints: [Endpoint; MAX_ENDPOINTS],
    /// Version index for each basis-point slot (`hash % BPS`).
    pub slot_version: [u8; BPS],
    /// Per version, endpoint index for each ring slot (`hash % RING_SIZE`).
    pub rings: [[u8; RING_SIZE]; MAX_VERSIONS],
}

/// How long a flow trusts its cached next hop before asking the FIB again.
pub const FIB_REFRESH_NS: u64 = 1_000_000_000;

/// A FIB answer cached per flow and direction: egress interface and the two MACs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NextHop {
    /// Egress interface; 0 = nothing cached.
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// Coarse monotonic time of the lookup (`bpf_ktime_get_coarse_ns`).
    pub looked_up_ns: u64,
}

impl NextHop {
    /// Whether this is an answer, younger than `FIB_REFRESH_NS` at `now`.
    #[inline(always)]
    pub const fn fresh(&self, now: u64) -> bool {
        self.ifindex != 0 && now.wrapping_sub(self.looked_up_ns) < FIB_REFRESH_NS
    }
}

/// `HOPS` value, one per endpoint slot ([`endpoint_stats_index`]): the next
/// hop towards that endpoint, shared by its new flows, so a flow's first
/// packet skips the FIB lookup when another flow to the endpoint made it
/// less than `FIB_REFRESH_NS` ago. It answers only for `endpoint` reached
/// from `arrival_ifindex` (a table change may give the slot to another
/// endpoint; another ingress interface may route differently).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct EndpointHop {
    pub endpoint: [u32; 4],
    pub arrival_ifindex: u32,
    pub _pad: u32,
    pub hop: NextHop,
}

/// `FLOWS` value: where a flow was sent, decided once at its first packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowState {
    /// The chosen endpoint (address and port, network order).
    pub backend: [u32; 4],
    pub backend_port: u16,
    pub version: u8,
    /// `FLOW_*` flags.
    pub flags: u8,
    /// Index of the endpoint in the service's table (for its counters).
    pub endpoint: u8,
    pub _pad: u8,
    /// The service's slot (`ServiceRef::table / 2`).
    pub service: u16,
    /// Next hop towards the endpoint, refreshed after `FIB_REFRESH_NS`.
    pub hop: NextHop,
    /// Next hop of the replies, towards the client; same refresh.
    pub reply_hop: NextHop,
    /// Coarse monotonic time (`bpf_ktime_get_coarse_ns`) of the last packet
    /// either way; the agent ages idle flows by it.
    pub last_seen_ns: u64,
    /// With `FLOW_MIRROR`: the interface the flow's copies leave by.
    pub mirror_ifindex: u32,
    pub _pad2: u32,
}

/// `FlowState::flags`: the flow was placed mid-stream (no entry, not a SYN).
pub const FLOW_ADOPTED: u8 = 1;
/// `FlowState::flags`: the client sent a FIN or the endpoint a RST; the
/// agent ages the flow out after the short closing timeout instead of the
/// idle one.
pub const FLOW_CLOSING: u8 = 2;
/// `FlowState::flags`: the flow was sampled for
/// mirroring when it was placed. The XDP program leaves its packets (both
/// ways) to the TC program, which copies each to `mirror_ifindex` and then
/// rewrites and forwards it as XDP would have.
pub const FLOW_MIRROR: u8 = 4;

/// `BACKENDS` value, keyed by an endpoint's address: the services it is an
/// endpoint of (first `count` of `vips`). A packet from it is a reply when
/// the flow of its destination (the client) to one of these VIPs has it as
/// backend; its source then becomes that VIP. The agent keeps an endpoint
/// here while flows to it live, also after it left the config.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendVips {
    pub count: u32,
    pub vips: [ServiceKey; MAX_SERVICES_PER_ENDPOINT],
}

/// Per-CPU counters of one endpoint of one service, in `ENDPOINT_STATS` at
/// [`endpoint_stats_index`]. "In" is towards the endpoint, "out" its replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EndpointStats {
    /// Flows placed on the endpoint (new and adopted).
    pub flows: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Copies of this endpoint's mirrored flows sent to the mirror (both ways).
    pub mirrored_packets: u64,
    pub mirrored_bytes: u64,
    /// TCP resets the endpoint sent (replies with RST): a failing backend
    /// (a rollout judges a canary by them).
    pub resets: u64,
}

/// `ENDPOINT_STATS` entries: one per endpoint slot of every service slot.
pub const ENDPOINT_STATS_LEN: u32 = MAX_SERVICES * MAX_ENDPOINTS as u32;

/// Slots of the log gate map: one per kind of rare kernel event (when it was
/// last logged), spare ones, and the last slot for the event waiting to be logged.
pub const LOG_EVENTS: u32 = 4;

/// Least time between two log records of one event kind on one CPU.
pub const LOG_EVERY_NS: u64 = 1_000_000_000;

/// Index of endpoint `endpoint` of service slot `service` in `ENDPOINT_STATS`.
#[inline(always)]
pub const fn endpoint_stats_index(service: u16, endpoint: u8) -> u32 {
    service as u32 * MAX_ENDPOINTS as u32 + endpoint as u32
}

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<ServiceRef>() == 8);
const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);
const _: () = assert!(core::mem::size_of::<NextHop>() == 24);
const _: () = assert!(core::mem::size_of::<FlowState>() == 88);
const _: () = assert!(core::mem::size_of::<EndpointHop>() == 48);
const _: () = assert!(core::mem::size_of::<BackendVips>() == 4 + 20 * MAX_SERVICES_PER_ENDPOINT);
const _: () = assert!(core::mem::size_of::<EndpointStats>() == 64);
const _: () =
    assert!(core::mem::size_of::<SelectionTable>() == 32 + 20 * MAX_ENDPOINTS + BPS + RING_SIZE * MAX_VERSIONS);
const _: () = assert!(core::mem::size_of::<SelectionTable>().is_multiple_of(4));
// Endpoint and version indices are stored as u8.
const _: () = assert!(MAX_ENDPOINTS <= u8::MAX as usize);
const _: () = assert!(MAX_VERSIONS <= u8::MAX as usize);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), without implicit padding (sizes are
    // asserted above) and valid for any bit pattern.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceRef {}
    unsafe impl aya::Pod for super::SelectionTable {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::BackendVips {}
    unsafe impl aya::Pod for super::EndpointHop {}
    unsafe impl aya::Pod for super::EndpointStats {}
}

impl ServiceKey {
    /// No address: what a search fills in.
    pub const UNSET: ServiceKey = ServiceKey { addr: [0; 4], port: 0, proto: 0, family: 0 };

    /// The service a flow addresses (its destination).
    #[inline(always)]
    pub const fn of_flow(key: &crate::FlowKey) -> Self {
        ServiceKey { addr: key.dst_addr, port: key.dst_port, proto: key.proto, family: key.family }
    }

    /// The address a packet comes from (its source): a service's, for a
    /// packet sent as the VIP; an endpoint's, for a reply to be rewritten.
    #[inline(always)]
    pub const fn of_source(key: &crate::FlowKey) -> Self {
        ServiceKey { addr: key.src_addr, port: key.src_port, proto: key.proto, family: key.family }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_stays_in_range_and_covers_it() {
        assert_eq!(version_slot(0), 0);
        assert_eq!(version_slot(u32::MAX), BPS - 1);
        assert_eq!(ring_slot(u32::MAX), RING_SIZE - 1);
        let mut seen = [false; BPS];
        for i in 0..(BPS as u32 * 8) {
            seen[version_slot(i.wrapping_mul(0x9e37_79b9))] = true;
        }
        assert!(seen.iter().all(|s| *s), "some basis-point slots are unreachable");
    }

    #[test]
    fn mirror_sampling_takes_the_configured_share_and_none_at_zero() {
        let key = |i: u32| {
            let b = i.to_be_bytes();
            crate::FlowKey::v4([10, b[1], b[2], b[3]], 1024 + (i % 60000) as u16, [203, 0, 113, 10], 80, 6)
        };
        const N: u32 = 100_000;
        for bps in [0u16, 1, 500, 2000, 10_000] {
            let n = (0..N).filter(|i| mirror_sampled(&key(*i), bps)).count() as f64;
            let want = f64::from(N) * f64::from(bps) / BPS as f64;
            // 5 standard deviations of a binomial, at least 1 flow.
            let tolerance = (5.0 * (want * (1.0 - f64::from(bps) / BPS as f64)).sqrt()).max(1.0);
            assert!((n - want).abs() <= tolerance, "{bps} bps: {n} of {N} sampled, want {want} ± {tolerance}");
        }
        // A flow sampled at 5 % is still sampled at 20 %: the share grows by adding flows.
        assert!((0..N).filter(|i| mirror_sampled(&key(*i), 500)).all(|i| mirror_sampled(&key(i), 2000)));
    }
}
