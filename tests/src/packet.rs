//! Test packets: whole Ethernet frames with valid checksums, built with
//! etherparse, plus the deliberately broken ones the parser must survive.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use etherparse::{PacketBuilder, VlanId};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Frame length of an Ethernet + IPv4 (no options) header.
pub const ETH_IPV4_HLEN: usize = 14 + 20;

/// TCP flags for [`tcp_v4`] / [`tcp_v6`].
#[derive(Clone, Copy, Debug)]
pub enum Tcp {
    Syn,
    Ack,
    Fin,
    Rst,
}

/// A TCP or UDP frame, field by field: inputs and the exact frames the
/// program must produce from them.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TTL / hop limit.
    pub ttl: u8,
    /// `Some(flags)` for TCP, `None` for UDP.
    pub tcp: Option<Tcp>,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn tcp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, flags: Tcp) -> Frame {
        Frame {
            src_mac: CLIENT_MAC,
            dst_mac: LB_MAC,
            src: src.into(),
            dst: dst.into(),
            ttl: 64,
            tcp: Some(flags),
            payload: Vec::new(),
        }
    }

    pub fn udp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Frame {
        Frame { tcp: None, ..Frame::tcp(src, dst, Tcp::Syn) }
    }

    pub fn payload(mut self, p: &[u8]) -> Frame {
        self.payload = p.to_vec();
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Frame {
        self.ttl = ttl;
        self
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Frame {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    pub fn src(mut self, a: impl Into<SocketAddr>) -> Frame {
        self.src = a.into();
        self
    }

    pub fn dst(mut self, a: impl Into<SocketAddr>) -> Frame {
        self.dst = a.into();
        self
    }

    /// The frame's bytes, every checksum correct.
    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let ip = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), self.ttl),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), self.ttl),
            _ => panic!("frame mixes address families: {} -> {}", self.src, self.dst),
        };
        let mut out = Vec::new();
        match self.tcp {
            Some(flags) => {
                let b = ip.tcp(self.src.port(), self.dst.port(), 1000, 64240);
                let b = match flags {
                    Tcp::Syn => b.syn(),
                    Tcp::Ack => b.ack(1),
                    Tcp::Fin => b.fin().ack(1),
                    Tcp::Rst => b.rst(),
                };
                b.write(&mut out, &self.payload).expect("building a TCP frame");
            }
            None => {
                ip.udp(self.src.port(), self.dst.port()).write(&mut out, &self.payload).expect("building a UDP frame")
            }
        }
        out
    }
}

pub fn tcp_v4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: Tcp, payload: &[u8]) -> Vec<u8> {
    Frame::tcp((src, sport), (dst, dport), flags).payload(payload).build()
}

pub fn tcp_v6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, flags: Tcp, payload: &[u8]) -> Vec<u8> {
    Frame::tcp((Ipv6Addr::from(src), sport), (Ipv6Addr::from(dst), dport), flags).payload(payload).build()
}

pub fn udp_v4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    Frame::udp((src, sport), (dst, dport)).payload(payload).build()
}

pub fn udp_v6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, payload: &[u8]) -> Vec<u8> {
    Frame::udp((Ipv6Addr::from(src), sport), (Ipv6Addr::from(dst), dport)).payload(payload).build()
}

/// UDP over IPv4 inside one 802.1Q tag.
pub fn udp_v4_vlan(vid: u16, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .single_vlan(VlanId::try_new(vid).expect("VLAN id"))
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("building a VLAN frame");
    out
}

pub fn icmp_echo_v4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv4(src, dst, 64).icmpv4_echo_request(1, 1);
    let mut out = Vec::new();
    b.write(&mut out, b"ping").expect("building an ICMP frame");
    out
}

pub fn icmp_echo_v6(src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv6(src, dst, 64).icmpv6_echo_request(1, 1);
    let mut out = Vec::new();
    b.write(&mut out, b"ping").expect("building an ICMPv6 frame");
    out
}

/// A broadcast ARP who-has frame (EtherType 0x0806).
pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// Recomputes the IPv4 header checksum of a frame without VLAN tags.
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = (frame[14] & 0x0f) as usize * 4;
    frame[24] = 0;
    frame[25] = 0;
    let mut sum: u32 = 0;
    // A header claiming more than the frame holds (a malformed fixture) is
    // summed over what is there.
    for pair in frame[14..(14 + ihl).min(frame.len())].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// Marks an IPv4 frame as a fragment at `offset_units` (8-byte units), with
/// more-fragments set when `more` is true.
pub fn as_ipv4_fragment(mut frame: Vec<u8>, offset_units: u16, more: bool) -> Vec<u8> {
    let v = (offset_units & 0x1fff) | if more { 0x2000 } else { 0 };
    frame[20..22].copy_from_slice(&v.to_be_bytes());
    fix_ipv4_checksum(&mut frame);
    frame
}

/// Sets the IPv4 header length field (in 32-bit words) without adding bytes.
pub fn with_ipv4_ihl(mut frame: Vec<u8>, ihl_words: u8) -> Vec<u8> {
    frame[14] = 0x40 | (ihl_words & 0x0f);
    fix_ipv4_checksum(&mut frame);
    frame
}

/// The first `len` bytes of `frame`.
pub fn truncated(frame: &[u8], len: usize) -> Vec<u8> {
    frame[..len.min(frame.len())].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    #[test]
    fn built_frames_parse_back() {
        let f = tcp_v4([192, 0, 2, 1], 40000, [203, 0, 113, 10], 80, Tcp::Syn, b"");
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        match (p.net, p.transport) {
            (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) => {
                assert_eq!(ip.header().destination(), [203, 0, 113, 10]);
                assert!(tcp.syn());
                assert_eq!(tcp.destination_port(), 80);
            }
            other => panic!("unexpected parse {other:?}"),
        }
        let v = udp_v4_vlan(7, [192, 0, 2, 1], 5000, [203, 0, 113, 10], 53, b"q");
        assert_eq!(&v[12..14], &[0x81, 0x00]);
        assert_eq!(v.len(), 14 + 4 + 20 + 8 + 1);
    }

    #[test]
    fn fragment_helper_keeps_the_checksum_valid() {
        let f = as_ipv4_fragment(udp_v4([192, 0, 2, 1], 1, [192, 0, 2, 2], 2, b"x"), 0, true);
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[14..]).unwrap();
        assert!(ip.more_fragments());
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
    }
}
