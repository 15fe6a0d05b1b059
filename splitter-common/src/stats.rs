//! Per-CPU counters of the data path: one `u64` slot per [`Stat`], all in
//! one [`StatBlock`] per CPU.
//!
//! The kernel never logs per packet; it increments one of these. The agent sums
//! the per-CPU values and shows them by [`Stat::name`].

use bytemuck::{Pod, Zeroable};

/// The value of the one entry of the `SPLITTER_STATS` per-CPU array: every
/// counter of one CPU. A program looks it up once per packet and then counts
/// with a plain add at a fixed offset (one lookup per counter cost the
/// established-flow path eight lookups).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct StatBlock {
    pub counts: [u64; Stat::COUNT as usize],
}

const _: () = assert!(core::mem::size_of::<StatBlock>() == 8 * Stat::COUNT as usize);

#[cfg(feature = "user")]
// SAFETY: StatBlock is repr(C), u64s only (no padding, size asserted above),
// valid for any bit pattern.
unsafe impl aya::Pod for StatBlock {}

/// Index of a counter in a [`StatBlock`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Every packet the ingress program saw.
    RxPackets = 0,
    /// Bytes of every packet the ingress program saw (whole frame).
    RxBytes,
    /// Frames whose EtherType is neither IPv4 nor IPv6 (ARP, LLDP, ...). Passed.
    NonIp,
    /// IPv4 packets with a well-formed header.
    Ipv4,
    /// IPv6 packets with a well-formed fixed header.
    Ipv6,
    /// TCP segments whose header fits in the packet.
    Tcp,
    /// UDP datagrams whose header fits in the packet.
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
    /// Any other L4 protocol. Passed.
    OtherL4,
    /// IPv4 fragments, first or later (only the first carries ports). Passed.
    Fragment,
    /// IPv6 packets whose next header is an extension header (not walked). Passed.
    Ipv6Ext,
    /// Malformed: a header does not fit in the frame. Passed to the stack,
    /// which drops it with its own accounting; never redirected.
    Truncated,
    /// Malformed: impossible header fields (IP version, IPv4 IHL < 5, TCP data
    /// offset < 5). Passed, never redirected.
    BadHeader,
    /// Malformed: IP length fields claim more than the frame holds, or less
    /// than the header. Passed, never redirected.
    BadLength,
    /// Packets handed to the kernel stack (`XDP_PASS`).
    Passed,
    /// Packets dropped by the program (`XDP_DROP`).
    Dropped,
    /// TCP/UDP packets addressed to a configured service.
    ServicePackets,
    /// Flows placed on an endpoint at their first packet.
    NewFlows,
    /// Service packets that followed an existing flow entry.
    FlowHits,
    /// Mid-flow packets without an entry (evicted, or older than the program):
    /// placed by the current tables and given an entry.
    Adopted,
    /// Replies from an endpoint rewritten back to the VIP.
    Replies,
    /// Rewritten packets redirected to another interface.
    Redirected,
    /// Rewritten packets sent back out of the interface they came in on.
    Tx,
    /// Packets forwarded with the next hop their flow cached (no FIB lookup).
    FibCached,
    /// Rewritten packets the FIB could not forward directly (no neighbour
    /// entry yet, no route): passed to the stack, which forwards them.
    FibPass,
    /// Service packets whose TTL/hop limit ran out: passed unchanged, the
    /// stack answers with ICMP time exceeded.
    TtlExpired,
    /// Service packets dropped because the service's selection table was
    /// missing or inconsistent (an agent bug or a half-written map).
    NoTable,
    /// Flow-table inserts that failed (flows are then placed per packet).
    FlowInsertFailed,
    /// Packets of mirrored flows the XDP program left to the TC program,
    /// which copies, rewrites and forwards them.
    MirrorHandoff,
    /// Copies sent to a mirror interface (segments of a coalesced packet
    /// count one each).
    Mirrored,
    /// Copies refused with `ENETDOWN`: the mirror interface is down (how
    /// queue-less devices report it).
    MirrorDown,
    /// Copies not sent: the mirror interface no longer exists.
    MirrorNoDevice,
    /// Copies the mirror interface's queue dropped: it is down (a veth or a
    /// NIC with a qdisc reports it this way) or full.
    MirrorDropped,
    /// Copies not sent for any other reason.
    MirrorFailed,
    /// Packets from a service address arriving on a mirror interface (a
    /// shadow answering the copies): dropped, never forwarded to clients.
    ShadowReplies,
    /// Replies from an endpoint whose flow had no entry (evicted from a full
    /// table, or lost with a resized one): translated to the one VIP the
    /// endpoint serves on that port, and the entry restored.
    ReplyAdopted,
    /// Replies from an endpoint port with no flow entry that could not be
    /// given back their VIP (the endpoint serves several VIPs on that port,
    /// or is no longer in the service): dropped, never forwarded with the
    /// endpoint's address.
    OrphanReplies,
    /// ICMP errors about a VIP's flow (unreachable, too big, time
    /// exceeded), matched by the header they quote and translated: towards
    /// the flow's endpoint, or back towards its client as the VIP's.
    IcmpTranslated,
    /// Packets too big for their egress link's MTU, answered with ICMP
    /// "fragmentation needed" / ICMPv6 "packet too big" (sent back to their
    /// source, as a router does).
    TooBig,
    /// Packets too big for their egress link that could not be answered
    /// here (IPv4 options, a VLAN tag; or IPv4 without "don't fragment",
    /// which the stack fragments): left to the stack after NAT.
    TooBigToStack,
    /// Packets from an endpoint with no flow entry that the FIB would not
    /// forward: addressed to this host itself (its own connections to an
    /// endpoint, such as health checks or an operator's `curl`), or
    /// broadcast, multicast or unroutable. Passed unchanged to the stack,
    /// never taken for a client's reply.
    ToHost,
}

impl Stat {
    /// Every counter, in index order.
    pub const ALL: [Stat; 41] = [
        Stat::RxPackets,
        Stat::RxBytes,
        Stat::NonIp,
        Stat::Ipv4,
        Stat::Ipv6,
        Stat::Tcp,
        Stat::Udp,
        Stat::Icmp,
        Stat::OtherL4,
        Stat::Fragment,
        Stat::Ipv6Ext,
        Stat::Truncated,
        Stat::BadHeader,
        Stat::BadLength,
        Stat::Passed,
        Stat::Dropped,
        Stat::ServicePackets,
        Stat::NewFlows,
        Stat::FlowHits,
        Stat::Adopted,
        Stat::Replies,
        Stat::Redirected,
        Stat::Tx,
        Stat::FibCached,
        Stat::FibPass,
        Stat::TtlExpired,
        Stat::NoTable,
        Stat::FlowInsertFailed,
        Stat::MirrorHandoff,
        Stat::Mirrored,
        Stat::MirrorDown,
        Stat::MirrorNoDevice,
        Stat::MirrorDropped,
        Stat::MirrorFailed,
        Stat::ShadowReplies,
        Stat::ReplyAdopted,
        Stat::OrphanReplies,
        Stat::IcmpTranslated,
        Stat::TooBig,
        Stat::TooBigToStack,
        Stat::ToHost,
    ];

    /// Number of slots in the stats map.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable, Prometheus-friendly name.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::RxPackets => "rx_packets",
            Stat::RxBytes => "rx_bytes",
            Stat::NonIp => "non_ip",
            Stat::Ipv4 => "ipv4",
            Stat::Ipv6 => "ipv6",
            Stat::Tcp => "tcp",
            Stat::Udp => "udp",
            Stat::Icmp => "icmp",
            Stat::OtherL4 => "other_l4",
            Stat::Fragment => "fragment",
            Stat::Ipv6Ext => "ipv6_ext",
            Stat::Truncated => "truncated",
            Stat::BadHeader => "bad_header",
            Stat::BadLength => "bad_length",
            Stat::Passed => "passed",
            Stat::Dropped => "dropped",
            Stat::ServicePackets => "service_packets",
            Stat::NewFlows => "new_flows",
            Stat::FlowHits => "flow_hits",
            Stat::Adopted => "adopted",
            Stat::Replies => "replies",
            Stat::Redirected => "redirected",
            Stat::Tx => "tx",
            Stat::FibCached => "fib_cached",
            Stat::FibPass => "fib_pass",
            Stat::TtlExpired => "ttl_expired",
            Stat::NoTable => "no_table",
            Stat::FlowInsertFailed => "flow_insert_failed",
            Stat::MirrorHandoff => "mirror_handoff",
            Stat::Mirrored => "mirrored",
            Stat::MirrorDown => "mirror_down",
            Stat::MirrorNoDevice => "mirror_no_device",
            Stat::MirrorDropped => "mirror_dropped",
            Stat::MirrorFailed => "mirror_failed",
            Stat::ShadowReplies => "shadow_replies",
            Stat::ReplyAdopted => "reply_adopted",
            Stat::OrphanReplies => "orphan_replies",
            Stat::IcmpTranslated => "icmp_translated",
            Stat::TooBig => "too_big",
            Stat::TooBigToStack => "too_big_to_stack",
            Stat::ToHost => "to_host",
        }
    }

    /// The counter at `index`, if any.
    pub const fn from_index(index: u32) -> Option<Stat> {
        if index < Self::COUNT {
            Some(Self::ALL[index as usize])
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_in_order() {
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as u32, i as u32, "{s:?} is out of place");
            assert_eq!(Stat::from_index(i as u32), Some(*s));
        }
        assert_eq!(Stat::from_index(Stat::COUNT), None);
    }

    #[test]
    fn names_are_unique_snake_case() {
        for (i, a) in Stat::ALL.iter().enumerate() {
            assert!(a.name().bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()));
            for b in &Stat::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
