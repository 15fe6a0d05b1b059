//! Parse a frame once into a `Packet` (the flow key plus header offsets),
//! through bounds-checked pointers the verifier accepts. The types, and the
//! host-side mirror the fuzzer checks this parser against, are
//! `splitter_common::packet`: a change here is made there too.

use core::mem;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, tcp::TcpHdr, udp::UdpHdr};
pub use splitter_common::packet::{Malformed, Packet, Parsed, Verdict, IPPROTO_TCP, TCP_FIN};
use splitter_common::{
    flow::ipv6_words,
    packet::{self, is_ipv6_extension, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP, VLAN_HLEN},
    stats::Stat,
    FlowKey, FAMILY_V4, FAMILY_V6,
};

use crate::frame::Frame;

// EtherTypes as they sit in memory (network order read as little-endian u16).
const ETH_P_IP: u16 = packet::ETH_P_IP.to_be();
const ETH_P_IPV6: u16 = packet::ETH_P_IPV6.to_be();
const ETH_P_8021Q: u16 = packet::ETH_P_8021Q.to_be();
const ETH_P_8021AD: u16 = packet::ETH_P_8021AD.to_be();
// More-fragments flag and offset, in network order.
const IP_MF_OFFSET_MASK: u16 = packet::IP_MF_OFFSET_MASK.to_be();

/// The one bounds check: a pointer to a `T` at `offset`, if the frame holds it.
#[inline(always)]
pub fn ptr_at<C: Frame, T>(ctx: &C, offset: usize) -> Result<*mut T, Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(Malformed::Truncated);
    }
    Ok((start + offset) as *mut T)
}

#[inline(always)]
pub fn parse<C: Frame>(ctx: &C) -> Result<Parsed, Malformed> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let mut l3_off = EthHdr::LEN;
    // SAFETY: ptr_at checked the header is inside the frame.
    let mut ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // The tag's inner EtherType is its last two bytes.
        let inner: *const u16 = ptr_at(ctx, l3_off + 2)?;
        ether_type = unsafe { *inner };
        l3_off += VLAN_HLEN;
    }
    match ether_type {
        ETH_P_IP => parse_v4(ctx, l3_off),
        ETH_P_IPV6 => parse_v6(ctx, l3_off),
        _ => Ok(Parsed::Other(Verdict::NonIp)),
    }
}

#[inline(always)]
fn parse_v4<C: Frame>(ctx: &C, l3_off: usize) -> Result<Parsed, Malformed> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3_off)?;
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(Malformed::BadHeader);
    }
    if C::COUNTS {
        ctx.stats().inc(Stat::Ipv4);
    }
    // Ethernet may pad a short packet, so the frame may be longer than the
    // datagram, never shorter.
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if tot_len < ihl || l3_off + tot_len > ctx.data_end() - ctx.data() {
        return Err(Malformed::BadLength);
    }
    if u16::from_ne_bytes(ip.frags) & IP_MF_OFFSET_MASK != 0 {
        // Any fragment: only the first carries ports, and a later one of the
        // same datagram could not follow it. Leave reassembly to the stack.
        return Ok(Parsed::Other(Verdict::Fragment));
    }
    let mut key = FlowKey {
        src_addr: [u32::from_ne_bytes(ip.src_addr), 0, 0, 0],
        dst_addr: [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0],
        src_port: 0,
        dst_port: 0,
        proto: ip.proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    parse_l4(ctx, &mut key, l3_off, l3_off + ihl, IPPROTO_ICMP)
}

#[inline(always)]
fn parse_v6<C: Frame>(ctx: &C, l3_off: usize) -> Result<Parsed, Malformed> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3_off)?;
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Malformed::BadHeader);
    }
    if C::COUNTS {
        ctx.stats().inc(Stat::Ipv6);
    }
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    if l3_off + Ipv6Hdr::LEN + payload_len > ctx.data_end() - ctx.data() {
        return Err(Malformed::BadLength);
    }
    if is_ipv6_extension(ip.next_hdr) {
        // Not walked: whatever follows is left to the stack.
        return Ok(Parsed::Other(Verdict::Ipv6Ext));
    }
    let mut key = FlowKey {
        src_addr: ipv6_words(ip.src_addr),
        dst_addr: ipv6_words(ip.dst_addr),
        src_port: 0,
        dst_port: 0,
        proto: ip.next_hdr,
        family: FAMILY_V6,
        _pad: [0; 2],
    };
    parse_l4(ctx, &mut key, l3_off, l3_off + Ipv6Hdr::LEN, IPPROTO_ICMPV6)
}

#[inline(always)]
fn parse_l4<C: Frame>(ctx: &C, key: &mut FlowKey, l3_off: usize, l4_off: usize, icmp: u8) -> Result<Parsed, Malformed> {
    let mut tcp_flags = 0;
    match key.proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(ctx, l4_off)?;
            // SAFETY: bounds-checked by ptr_at.
            let tcp = unsafe { &*tcp };
            if (tcp.doff() as usize) * 4 < TcpHdr::LEN {
                return Err(Malformed::BadHeader);
            }
            key.src_port = u16::from_ne_bytes(tcp.source);
            key.dst_port = u16::from_ne_bytes(tcp.dest);
            // Byte 13 of the header holds CWR..FIN.
            // SAFETY: the whole TcpHdr was bounds-checked above.
            tcp_flags = unsafe { *((tcp as *const TcpHdr as *const u8).add(13)) };
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, l4_off)?;
            // SAFETY: bounds-checked by ptr_at.
            let udp = unsafe { &*udp };
            key.src_port = u16::from_ne_bytes(udp.src);
            key.dst_port = u16::from_ne_bytes(udp.dst);
        }
        p if p == icmp => return Ok(Parsed::Icmp(Packet { key: *key, l3_off, l4_off, tcp_flags: 0 })),
        _ => return Ok(Parsed::Other(Verdict::OtherL4)),
    }
    Ok(Parsed::Flow(Packet { key: *key, l3_off, l4_off, tcp_flags }))
}
