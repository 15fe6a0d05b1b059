//! What the kernel's packet parser makes of a frame, defined once: the parsed
//! [`Packet`], the [`Verdict`] on frames that are not TCP/UDP and the
//! [`Malformed`] reasons, with the counter of each. The eBPF program parses
//! with bounds-checked pointers (`splitter-ebpf/src/parse.rs`); [`parse`] here
//! is the host-side mirror of it over a byte slice, the specification the
//! fuzzer checks the kernel's verdicts against through `BPF_PROG_TEST_RUN`.
//!
//! Understood: Ethernet, one 802.1Q/802.1ad tag, IPv4 (with options), IPv6
//! (fixed header), TCP and UDP. Everything else is classified so the caller can
//! count it and apply its written policy.

use crate::{flow::ipv6_words, stats::Stat, FlowKey, FAMILY_V4, FAMILY_V6};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// EtherTypes, host order.
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

/// Header lengths the parser relies on.
pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

/// IPv4's more-fragments flag and fragment offset, host order: a datagram
/// with either set is a fragment.
pub const IP_MF_OFFSET_MASK: u16 = 0x3fff;

/// A TCP or UDP packet the parser understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub key: FlowKey,
    /// Offset of the IP header from the start of the frame.
    pub l3_off: usize,
    /// Offset of the TCP/UDP header from the start of the frame.
    pub l4_off: usize,
    /// TCP flags byte (`TCP_*`); 0 for UDP.
    pub tcp_flags: u8,
}

impl Packet {
    /// The first packet of a connection: a TCP SYN without ACK, or any UDP
    /// datagram (a UDP "connection" starts wherever there is no entry).
    #[inline(always)]
    pub fn opens_flow(&self) -> bool {
        self.key.proto != IPPROTO_TCP || self.is_syn()
    }

    /// A TCP SYN without ACK: the first segment of a connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.key.proto == IPPROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// A TCP RST: the sender aborts the connection.
    #[inline(always)]
    pub fn is_rst(&self) -> bool {
        self.key.proto == IPPROTO_TCP && self.tcp_flags & TCP_RST != 0
    }
}

/// What a well-formed packet that is not TCP/UDP/ICMP turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    NonIp,
    OtherL4,
    Fragment,
    Ipv6Ext,
}

impl Verdict {
    /// The counter of this verdict.
    #[inline(always)]
    pub fn stat(self) -> Stat {
        match self {
            Verdict::NonIp => Stat::NonIp,
            Verdict::OtherL4 => Stat::OtherL4,
            Verdict::Fragment => Stat::Fragment,
            Verdict::Ipv6Ext => Stat::Ipv6Ext,
        }
    }
}

/// What a frame parsed into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    Flow(Packet),
    /// ICMP (v4) or ICMPv6: ports 0, `l4_off` at the ICMP header (an error
    /// quoting a VIP flow's packet is translated; see `splitter-ebpf`'s
    /// `icmp.rs`).
    Icmp(Packet),
    Other(Verdict),
}

/// Why a frame could not be parsed: counted by reason, passed by policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// A header does not fit in the frame.
    Truncated,
    /// Impossible header fields: IP version, IPv4 IHL < 5, TCP data offset < 5.
    BadHeader,
    /// The IP length fields claim more than the frame holds, or less than the header.
    BadLength,
}

impl Malformed {
    /// The counter of this reason.
    #[inline(always)]
    pub fn stat(self) -> Stat {
        match self {
            Malformed::Truncated => Stat::Truncated,
            Malformed::BadHeader => Stat::BadHeader,
            Malformed::BadLength => Stat::BadLength,
        }
    }
}

/// IPv6 extension headers (RFC 8200 and the IANA registry): hop-by-hop,
/// routing, fragment, ESP, AH, destination options, mobility, HIP, shim6,
/// and the two experimental values.
#[inline(always)]
pub fn is_ipv6_extension(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// The host-side parse of a frame: what the kernel's parser decides, and the
/// IP family counter it moves on the way ([`Stat::Ipv4`] or [`Stat::Ipv6`],
/// once the IP header's version is checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostParse {
    pub result: Result<Parsed, Malformed>,
    pub family: Option<Stat>,
}

/// The counters that classify a frame: the parser moves exactly one of
/// them per frame ([`HostParse::class_stat`]).
pub const CLASS_STATS: [Stat; 10] = [
    Stat::Tcp,
    Stat::Udp,
    Stat::NonIp,
    Stat::Icmp,
    Stat::OtherL4,
    Stat::Fragment,
    Stat::Ipv6Ext,
    Stat::Truncated,
    Stat::BadHeader,
    Stat::BadLength,
];

impl HostParse {
    /// The one classification counter the ingress program moves for this
    /// frame: `tcp`/`udp` for a flow, else the verdict's or the reason's.
    pub fn class_stat(&self) -> Stat {
        match self.result {
            Ok(Parsed::Flow(p)) if p.key.proto == IPPROTO_TCP => Stat::Tcp,
            Ok(Parsed::Flow(_)) => Stat::Udp,
            Ok(Parsed::Icmp(_)) => Stat::Icmp,
            Ok(Parsed::Other(v)) => v.stat(),
            Err(m) => m.stat(),
        }
    }
}

/// `len` bytes at `off`, if the frame holds them.
fn bytes<const N: usize>(frame: &[u8], off: usize) -> Result<[u8; N], Malformed> {
    frame
        .get(off..off.checked_add(N).ok_or(Malformed::Truncated)?)
        .and_then(|s| s.try_into().ok())
        .ok_or(Malformed::Truncated)
}

fn be16(frame: &[u8], off: usize) -> Result<u16, Malformed> {
    bytes::<2>(frame, off).map(u16::from_be_bytes)
}

/// Parses `frame` as the kernel program does (the mirror of
/// `splitter-ebpf/src/parse.rs`: same order of checks, same outcomes).
pub fn parse(frame: &[u8]) -> HostParse {
    let mut family = None;
    let result = parse_frame(frame, &mut family);
    HostParse { result, family }
}

fn parse_frame(frame: &[u8], family: &mut Option<Stat>) -> Result<Parsed, Malformed> {
    // The whole Ethernet header must be there, as in the kernel.
    bytes::<ETH_HLEN>(frame, 0)?;
    let mut l3_off = ETH_HLEN;
    let mut ether_type = be16(frame, 12)?;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // The tag's inner EtherType is its last two bytes.
        ether_type = be16(frame, l3_off + 2)?;
        l3_off += VLAN_HLEN;
    }
    match ether_type {
        ETH_P_IP => parse_v4(frame, l3_off, family),
        ETH_P_IPV6 => parse_v6(frame, l3_off, family),
        _ => Ok(Parsed::Other(Verdict::NonIp)),
    }
}

fn parse_v4(frame: &[u8], l3_off: usize, family: &mut Option<Stat>) -> Result<Parsed, Malformed> {
    let ip = bytes::<IPV4_HLEN>(frame, l3_off)?;
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ip[0] >> 4 != 4 || ihl < IPV4_HLEN {
        return Err(Malformed::BadHeader);
    }
    *family = Some(Stat::Ipv4);
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if tot_len < ihl || l3_off + tot_len > frame.len() {
        return Err(Malformed::BadLength);
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & IP_MF_OFFSET_MASK != 0 {
        return Ok(Parsed::Other(Verdict::Fragment));
    }
    let word = |at: usize| u32::from_ne_bytes([ip[at], ip[at + 1], ip[at + 2], ip[at + 3]]);
    let key = FlowKey {
        src_addr: [word(12), 0, 0, 0],
        dst_addr: [word(16), 0, 0, 0],
        src_port: 0,
        dst_port: 0,
        proto: ip[9],
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    parse_l4(frame, key, l3_off, l3_off + ihl, IPPROTO_ICMP)
}

fn parse_v6(frame: &[u8], l3_off: usize, family: &mut Option<Stat>) -> Result<Parsed, Malformed> {
    let ip = bytes::<IPV6_HLEN>(frame, l3_off)?;
    if ip[0] >> 4 != 6 {
        return Err(Malformed::BadHeader);
    }
    *family = Some(Stat::Ipv6);
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    if l3_off + IPV6_HLEN + payload_len > frame.len() {
        return Err(Malformed::BadLength);
    }
    let next = ip[6];
    if is_ipv6_extension(next) {
        return Ok(Parsed::Other(Verdict::Ipv6Ext));
    }
    let addr = |at: usize| {
        let mut o = [0u8; 16];
        o.copy_from_slice(&ip[at..at + 16]);
        ipv6_words(o)
    };
    let key = FlowKey {
        src_addr: addr(8),
        dst_addr: addr(24),
        src_port: 0,
        dst_port: 0,
        proto: next,
        family: FAMILY_V6,
        _pad: [0; 2],
    };
    parse_l4(frame, key, l3_off, l3_off + IPV6_HLEN, IPPROTO_ICMPV6)
}

fn parse_l4(frame: &[u8], mut key: FlowKey, l3_off: usize, l4_off: usize, icmp: u8) -> Result<Parsed, Malformed> {
    let port = |at: usize, b: &[u8]| u16::from_ne_bytes([b[at], b[at + 1]]);
    let mut tcp_flags = 0;
    match key.proto {
        IPPROTO_TCP => {
            let tcp = bytes::<TCP_HLEN>(frame, l4_off)?;
            if (tcp[12] >> 4) as usize * 4 < TCP_HLEN {
                return Err(Malformed::BadHeader);
            }
            key.src_port = port(0, &tcp);
            key.dst_port = port(2, &tcp);
            tcp_flags = tcp[13];
        }
        IPPROTO_UDP => {
            let udp = bytes::<UDP_HLEN>(frame, l4_off)?;
            key.src_port = port(0, &udp);
            key.dst_port = port(2, &udp);
        }
        p if p == icmp => return Ok(Parsed::Icmp(Packet { key, l3_off, l4_off, tcp_flags: 0 })),
        _ => return Ok(Parsed::Other(Verdict::OtherL4)),
    }
    Ok(Parsed::Flow(Packet { key, l3_off, l4_off, tcp_flags }))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// Ethernet + IPv4 + TCP/UDP header bytes, lengths consistent.
    fn v4(proto: u8, l4: &[u8], frag: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
        let tot = (IPV4_HLEN + l4.len()) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            (tot >> 8) as u8,
            tot as u8,
            0,
            0,
            (frag >> 8) as u8,
            frag as u8,
            64,
            proto,
            0,
            0,
        ]);
        f.extend_from_slice(&[192, 0, 2, 1, 203, 0, 113, 10]);
        f.extend_from_slice(l4);
        f
    }

    fn tcp(flags: u8, doff: u8) -> Vec<u8> {
        let mut t = std::vec![0u8; TCP_HLEN];
        t[..4].copy_from_slice(&[0xc0, 0x01, 0, 80]);
        t[12] = doff << 4;
        t[13] = flags;
        t
    }

    #[test]
    fn a_tcp_syn_parses_into_its_flow_key() {
        let p = parse(&v4(IPPROTO_TCP, &tcp(TCP_SYN, 5), 0));
        assert_eq!(p.family, Some(Stat::Ipv4));
        let Ok(Parsed::Flow(pkt)) = p.result else { panic!("{p:?}") };
        assert_eq!(pkt.key, FlowKey::v4([192, 0, 2, 1], 0xc001, [203, 0, 113, 10], 80, IPPROTO_TCP));
        assert_eq!((pkt.l3_off, pkt.l4_off), (14, 34));
        assert!(pkt.is_syn() && pkt.opens_flow() && !pkt.is_rst());
        assert_eq!(p.class_stat(), Stat::Tcp);
    }

    #[test]
    fn each_kind_of_bad_frame_is_classified() {
        let good = v4(IPPROTO_TCP, &tcp(TCP_ACK, 5), 0);
        assert_eq!(parse(&good[..13]).result, Err(Malformed::Truncated));
        assert_eq!(parse(&good[..40]).result, Err(Malformed::BadLength), "tot_len past the frame");
        let mut bad_doff = good.clone();
        bad_doff[34 + 12] = 4 << 4;
        assert_eq!(parse(&bad_doff).result, Err(Malformed::BadHeader));
        let mut bad_version = good.clone();
        bad_version[14] = 0x65;
        let p = parse(&bad_version);
        assert_eq!((p.result, p.family), (Err(Malformed::BadHeader), None), "not counted as IPv4");
        assert_eq!(parse(&v4(IPPROTO_TCP, &tcp(0, 5), 0x2000)).result, Ok(Parsed::Other(Verdict::Fragment)));
        assert!(matches!(parse(&v4(IPPROTO_ICMP, &[8, 0, 0, 0], 0)).result, Ok(Parsed::Icmp(p)) if p.l4_off == 34));
        assert_eq!(parse(&v4(IPPROTO_ICMPV6, &[8, 0, 0, 0], 0)).result, Ok(Parsed::Other(Verdict::OtherL4)));
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(parse(&arp).result, Ok(Parsed::Other(Verdict::NonIp)));
        // A UDP header cut short.
        assert_eq!(parse(&v4(IPPROTO_UDP, &[0, 53, 0], 0)).result, Err(Malformed::Truncated));
    }

    #[test]
    fn a_vlan_tag_moves_the_ip_header() {
        let mut f = v4(IPPROTO_UDP, &[0, 53, 0, 53, 0, 8, 0, 0], 0);
        f.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
        let Ok(Parsed::Flow(pkt)) = parse(&f).result else { panic!() };
        assert_eq!((pkt.l3_off, pkt.l4_off, pkt.key.dst_port), (18, 38, 53u16.to_be()));
    }

    #[test]
    fn ipv6_extension_headers_are_left_alone() {
        let mut f = std::vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 0, 64]);
        f.extend_from_slice(&[0x20, 1, 0xd, 0xb8].repeat(8));
        f.extend_from_slice(&[0; 8]);
        assert_eq!(parse(&f).result, Ok(Parsed::Other(Verdict::Ipv6Ext)), "next header 0: hop-by-hop");
        f[14 + 6] = IPPROTO_UDP;
        let p = parse(&f);
        assert_eq!(p.family, Some(Stat::Ipv6));
        assert!(matches!(p.result, Ok(Parsed::Flow(pkt)) if pkt.key.family == FAMILY_V6 && pkt.l4_off == 54));
    }
}
