//! NAT rewrites: the destination on the way in (VIP → endpoint), the source on
//! the way back (endpoint → VIP). Checksums are updated incrementally (IPv4
//! header, TCP/UDP with the pseudo-header) and the TTL/hop limit decremented,
//! as a router does.

use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use splitter_common::{csum::Delta, flow::ipv6_words, stats::Stat, FAMILY_V4};

use crate::{
    counters::Stats,
    frame::Frame,
    parse::{ptr_at, Malformed, Packet, IPPROTO_TCP},
};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

pub enum NatError {
    /// A header moved out of reach (cannot happen after a successful parse,
    /// but the verifier wants every access checked).
    Malformed(Malformed),
    /// TTL / hop limit would reach 0: leave the packet to the stack, which
    /// answers with ICMP time exceeded.
    TtlExpired,
}

impl NatError {
    /// Counts the failure; the caller leaves the packet to the stack.
    #[inline(always)]
    pub fn count(self, stats: Stats) {
        stats.inc(match self {
            NatError::TtlExpired => Stat::TtlExpired,
            NatError::Malformed(reason) => reason.stat(),
        })
    }
}

impl From<Malformed> for NatError {
    fn from(m: Malformed) -> Self {
        NatError::Malformed(m)
    }
}

/// Rewrites `side`'s address and port to `addr:port` (port in network order).
/// Returns how the one's-complement sum of the packet changed (every word
/// written, checksums included) when the frame is an skb, whose
/// `CHECKSUM_COMPLETE` sum must follow (`bpf_csum_update`); zero for XDP.
#[inline(always)]
pub fn rewrite<C: Frame>(ctx: &C, pkt: &Packet, side: Side, addr: &[u32; 4], port: u16) -> Result<Delta, NatError> {
    let old_addr = if side == Side::Src { pkt.key.src_addr } else { pkt.key.dst_addr };
    let old_port = if side == Side::Src { pkt.key.src_port } else { pkt.key.dst_port };
    let mut sum = if pkt.key.family == FAMILY_V4 {
        rewrite_ipv4(ctx, pkt, side, addr[0])?
    } else {
        rewrite_ipv6(ctx, pkt, side, addr)?
    };
    let delta = Delta::new().addr(&old_addr, addr).word(old_port, port);
    let port_off = pkt.l4_off + if side == Side::Src { 0 } else { 2 };
    let port_ptr: *mut [u8; 2] = ptr_at(ctx, port_off)?;
    // SAFETY: bounds-checked by ptr_at; the frame is writable (XDP, or an
    // skb the TC program made writable).
    unsafe { *port_ptr = port.to_ne_bytes() };
    if C::SKB {
        sum = sum.word(old_port, port);
    }
    let (check_off, udp4) = match pkt.key.proto {
        IPPROTO_TCP => (16, false),
        _ => (6, pkt.key.family == FAMILY_V4),
    };
    let check: *mut [u8; 2] = ptr_at(ctx, pkt.l4_off + check_off)?;
    // SAFETY: as above.
    unsafe {
        let c = u16::from_ne_bytes(*check);
        let new = match (pkt.key.proto, udp4) {
            (IPPROTO_TCP, _) => delta.apply(c),
            (_, true) => delta.apply_udp4(c),
            // UDP over IPv6 always carries a checksum; 0 is sent as 0xffff.
            _ => match delta.apply(c) {
                0 => 0xffff,
                v => v,
            },
        };
        *check = new.to_ne_bytes();
        if C::SKB {
            sum = sum.word(c, new);
        }
    }
    Ok(sum)
}

#[inline(always)]
fn rewrite_ipv4<C: Frame>(ctx: &C, pkt: &Packet, side: Side, new: u32) -> Result<Delta, NatError> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, pkt.l3_off)?;
    // SAFETY: bounds-checked by ptr_at; the frame is writable in XDP.
    let ip = unsafe { &mut *ip };
    if ip.ttl <= 1 {
        return Err(NatError::TtlExpired);
    }
    let field = if side == Side::Src { &mut ip.src_addr } else { &mut ip.dst_addr };
    let old = u32::from_ne_bytes(*field);
    *field = new.to_ne_bytes();
    let old_ttl = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.ttl -= 1;
    let new_ttl = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let old_check = u16::from_ne_bytes(ip.check);
    let check = Delta::new().word32(old, new).word(old_ttl, new_ttl).apply(old_check);
    ip.check = check.to_ne_bytes();
    if C::SKB {
        return Ok(Delta::new().word32(old, new).word(old_ttl, new_ttl).word(old_check, check));
    }
    Ok(Delta::new())
}

#[inline(always)]
fn rewrite_ipv6<C: Frame>(ctx: &C, pkt: &Packet, side: Side, new: &[u32; 4]) -> Result<Delta, NatError> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, pkt.l3_off)?;
    // SAFETY: bounds-checked by ptr_at; the frame is writable in XDP.
    let ip = unsafe { &mut *ip };
    if ip.hop_limit <= 1 {
        return Err(NatError::TtlExpired);
    }
    let old_hop = u16::from_ne_bytes([ip.next_hdr, ip.hop_limit]);
    ip.hop_limit -= 1;
    let new_hop = u16::from_ne_bytes([ip.next_hdr, ip.hop_limit]);
    let field = if side == Side::Src { &mut ip.src_addr } else { &mut ip.dst_addr };
    let old = ipv6_words(*field);
    for (i, w) in new.iter().enumerate() {
        field[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    if C::SKB {
        return Ok(Delta::new().word(old_hop, new_hop).addr(&old, new));
    }
    Ok(Delta::new())
}
