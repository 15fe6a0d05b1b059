//! ICMP errors about a VIP's flows — destination unreachable (path MTU's
//! "fragmentation needed" and "packet too big" among them) and time
//! exceeded — matched to their flow by the packet header they quote, and
//! translated through the NAT, so that path MTU discovery and errors work
//! both ways:
//! - sent to the VIP (by a router on the client's side) about a packet the
//!   VIP sent: to the flow's endpoint, as if about the endpoint's own packet;
//! - sent to a client (by the endpoint, or a router on its side) about a
//!   packet to the endpoint: back as if about the client's packet to the VIP,
//!   and from the VIP when the endpoint itself sent it (its address never
//!   reaches the client).
//!
//! Rewritten here (addresses, ports, the quoted IPv4 header's checksum, the
//! ICMP checksum and the outer IPv4 checksum) and left to the stack to
//! forward: errors are rare. Everything is bounds-checked before anything is
//! written.

use aya_ebpf::{
    bindings::bpf_check_mtu_ret::BPF_MTU_CHK_RET_FRAG_NEEDED,
    helpers::generated::{bpf_check_mtu, bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    EbpfContext as _,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use splitter_common::{
    csum::Delta,
    flow::ipv6_words,
    packet::{IPPROTO_TCP, IPPROTO_UDP},
    service::ServiceKey,
    stats::Stat,
    FlowKey, FAMILY_V4,
};

use crate::{
    frame::{Frame as _, Ingress},
    maps::SPLITTER_FLOWS,
    parse::{ptr_at, Packet},
    reply::{self, Reply},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
/// The ICMP header before the quoted packet.
const ICMP_HLEN: usize = 8;

/// Translates `pkt` (an ICMP or ICMPv6 packet) when it is an error about a
/// VIP flow; counts it. The verdict is always `XDP_PASS`: the stack forwards
/// it, rewritten or not.
#[inline(always)]
pub fn translate(ctx: &Ingress, pkt: &Packet) {
    if try_translate(ctx, pkt) {
        ctx.stats.inc(Stat::IcmpTranslated);
    }
}

/// The quoted packet's addresses and ports, and where they sit.
struct Quoted {
    /// Its source and destination (the 5-tuple as the quoting host saw it).
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
    proto: u8,
    /// Offsets of its IP header and of its ports.
    ip_off: usize,
    ports_off: usize,
}

/// The quoted packet before any is found (every field is written when one is).
const NONE: Quoted = Quoted { src: [0; 4], dst: [0; 4], sport: 0, dport: 0, proto: 0, ip_off: 0, ports_off: 0 };

/// Whether `pkt` was an error about a VIP flow, now translated. (Plain
/// booleans and out-parameters: a `Result<Option<Quoted>, _>` returned by
/// value made LLVM pack a packet pointer with shifts the verifier refuses.)
#[inline(always)]
fn try_translate(ctx: &Ingress, pkt: &Packet) -> bool {
    let v4 = pkt.key.family == FAMILY_V4;
    let Ok(head) = ptr_at::<_, [u8; 2]>(ctx, pkt.l4_off) else { return false };
    // SAFETY: bounds-checked by ptr_at.
    let kind = unsafe { (*head)[0] };
    let error = if v4 {
        kind == ICMP_DEST_UNREACH || kind == ICMP_TIME_EXCEEDED
    } else {
        kind == ICMPV6_DEST_UNREACH || kind == ICMPV6_PKT_TOOBIG || kind == ICMPV6_TIME_EXCEED
    };
    if !error {
        return false;
    }
    let mut q = NONE;
    let found = if v4 {
        quoted_v4(ctx, pkt.l4_off + ICMP_HLEN, &mut q)
    } else {
        quoted_v6(ctx, pkt.l4_off + ICMP_HLEN, &mut q)
    };
    if !found {
        return false;
    }
    // Reversed, the quoted packet's 5-tuple is the client's flow key when
    // it was the VIP's packet to a client, and a reply's key when it was a
    // client's packet to an endpoint.
    let key = FlowKey {
        src_addr: q.dst,
        dst_addr: q.src,
        src_port: q.dport,
        dst_port: q.sport,
        proto: q.proto,
        family: pkt.key.family,
        _pad: [0; 2],
    };
    if let Some(state) = SPLITTER_FLOWS.get_ptr_mut(key) {
        // About the VIP's packet, sent to the VIP: towards the endpoint.
        if pkt.key.dst_addr != q.src {
            return false;
        }
        // SAFETY: the map's value, read only.
        let (backend, port) = unsafe { ((*state).backend, (*state).backend_port) };
        return rewrite(ctx, pkt, &q, Towards::Endpoint, &backend, port);
    }
    let mut vip = ServiceKey::UNSET;
    if let Reply::Of(state) = reply::find(&key, &mut vip) {
        // About a client's packet to the endpoint: back towards the client.
        // SAFETY: the map's value, read only.
        let backend = unsafe { (*state).backend };
        let hide = pkt.key.src_addr == backend;
        return rewrite(ctx, pkt, &q, Towards::Client { hide_source: hide }, &vip.addr, vip.port);
    }
    false
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Towards {
    /// The quoted source (the VIP) becomes the endpoint, and so does the
    /// outer destination.
    Endpoint,
    /// The quoted destination (the endpoint) becomes the VIP; the outer
    /// source too when it is the endpoint.
    Client { hide_source: bool },
}

/// The quoted IPv4 packet at `off` into `q`, if it is TCP or UDP with its ports.
#[inline(always)]
fn quoted_v4(ctx: &Ingress, off: usize, q: &mut Quoted) -> bool {
    let Ok(ip) = ptr_at::<_, Ipv4Hdr>(ctx, off) else { return false };
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) {
        return false;
    }
    q.src = [u32::from_ne_bytes(ip.src_addr), 0, 0, 0];
    q.dst = [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0];
    q.proto = ip.proto;
    quoted_ports(ctx, off, off + ihl, q)
}

/// The quoted IPv6 packet at `off` into `q`, if it is TCP or UDP (no
/// extension headers) with its ports.
#[inline(always)]
fn quoted_v6(ctx: &Ingress, off: usize, q: &mut Quoted) -> bool {
    let Ok(ip) = ptr_at::<_, Ipv6Hdr>(ctx, off) else { return false };
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 || (ip.next_hdr != IPPROTO_TCP && ip.next_hdr != IPPROTO_UDP) {
        return false;
    }
    q.src = ipv6_words(ip.src_addr);
    q.dst = ipv6_words(ip.dst_addr);
    q.proto = ip.next_hdr;
    quoted_ports(ctx, off, off + Ipv6Hdr::LEN, q)
}

/// The quoted packet's ports (at `ports_off`, its IP header at `ip_off`)
/// into `q`, if the frame holds them.
#[inline(always)]
fn quoted_ports(ctx: &Ingress, ip_off: usize, ports_off: usize, q: &mut Quoted) -> bool {
    let Ok(ports) = ptr_at::<_, [u8; 4]>(ctx, ports_off) else { return false };
    // SAFETY: bounds-checked by ptr_at.
    let p = unsafe { *ports };
    q.sport = u16::from_ne_bytes([p[0], p[1]]);
    q.dport = u16::from_ne_bytes([p[2], p[3]]);
    q.ip_off = ip_off;
    q.ports_off = ports_off;
    true
}

/// Rewrites the quoted packet's side `towards` names to `addr:port`, the
/// outer address that goes with it, and every checksum that covers them.
#[inline(always)]
fn rewrite(ctx: &Ingress, pkt: &Packet, q: &Quoted, towards: Towards, addr: &[u32; 4], port: u16) -> bool {
    let v4 = pkt.key.family == FAMILY_V4;
    // Every pointer first: nothing is written unless all of it is there.
    let Ok(icmp_check) = ptr_at::<_, [u8; 2]>(ctx, pkt.l4_off + 2) else { return false };
    let Ok(ports) = ptr_at::<_, [u8; 4]>(ctx, q.ports_off) else { return false };
    let (old_inner, old_port, port_at) = match towards {
        Towards::Endpoint => (q.src, q.sport, 0),
        Towards::Client { .. } => (q.dst, q.dport, 2),
    };
    // The outer address that changes: the destination towards the endpoint
    // (the VIP), the source towards the client when it is the endpoint.
    let outer = match towards {
        Towards::Endpoint => Some((true, pkt.key.dst_addr)),
        Towards::Client { hide_source: true } => Some((false, pkt.key.src_addr)),
        Towards::Client { hide_source: false } => None,
    };
    // The ICMP checksum covers the quoted bytes (and, for ICMPv6, the outer
    // addresses through its pseudo-header).
    let mut icmp = Delta::new().addr(&old_inner, addr).word(old_port, port);
    if v4 {
        let Ok(inner) = ptr_at::<_, Ipv4Hdr>(ctx, q.ip_off) else { return false };
        let Ok(outer_ip) = ptr_at::<_, Ipv4Hdr>(ctx, pkt.l3_off) else { return false };
        // SAFETY: bounds-checked by ptr_at; the frame is writable in XDP.
        unsafe {
            let inner = &mut *inner;
            let field = if towards == Towards::Endpoint { &mut inner.src_addr } else { &mut inner.dst_addr };
            *field = addr[0].to_ne_bytes();
            let old_check = u16::from_ne_bytes(inner.check);
            let check = Delta::new().word32(old_inner[0], addr[0]).apply(old_check);
            inner.check = check.to_ne_bytes();
            icmp = icmp.word(old_check, check);
            if let Some((dst, old)) = outer {
                let o = &mut *outer_ip;
                let field = if dst { &mut o.dst_addr } else { &mut o.src_addr };
                *field = addr[0].to_ne_bytes();
                o.check = Delta::new().word32(old[0], addr[0]).apply(u16::from_ne_bytes(o.check)).to_ne_bytes();
            }
        }
    } else {
        let Ok(inner) = ptr_at::<_, Ipv6Hdr>(ctx, q.ip_off) else { return false };
        let Ok(outer_ip) = ptr_at::<_, Ipv6Hdr>(ctx, pkt.l3_off) else { return false };
        // SAFETY: as above.
        unsafe {
            let inner = &mut *inner;
            let field = if towards == Towards::Endpoint { &mut inner.src_addr } else { &mut inner.dst_addr };
            put_v6(field, addr);
            if let Some((dst, old)) = outer {
                let o = &mut *outer_ip;
                put_v6(if dst { &mut o.dst_addr } else { &mut o.src_addr }, addr);
                icmp = icmp.addr(&old, addr);
            }
        }
    }
    // SAFETY: bounds-checked above.
    unsafe {
        let p = &mut *ports;
        let b = port.to_ne_bytes();
        p[port_at] = b[0];
        p[port_at + 1] = b[1];
        *icmp_check = icmp.apply(u16::from_ne_bytes(*icmp_check)).to_ne_bytes();
    }
    true
}

#[inline(always)]
fn put_v6(field: &mut [u8; 16], words: &[u32; 4]) {
    for (i, w) in words.iter().enumerate() {
        field[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
}

/// Frames up to this long are not checked against the egress MTU: every
/// IPv6 link carries 1280-byte packets (and IPv4 links below that are rare).
const MTU_CHECK_ABOVE: usize = 1280 + 14;
/// What an answer quotes of the packet: its IP header (without options)
/// and the first 8 bytes of its TCP/UDP header.
const QUOTE_V4: usize = 20 + 8;
const QUOTE_V6: usize = 40 + 8;

/// Whether a packet about to be sent out of `ifindex` fits its MTU; the
/// MTU when it does not. Only frames above [`MTU_CHECK_ABOVE`] are checked.
#[inline(always)]
pub fn too_big_for(ctx: &Ingress, ifindex: u32) -> Option<u32> {
    if ctx.data_end() - ctx.data() <= MTU_CHECK_ABOVE {
        return None;
    }
    let mut mtu: u32 = 0;
    // SAFETY: plain helper call; `mtu` is ours.
    let rc = unsafe { bpf_check_mtu(ctx.as_ptr(), ifindex, &mut mtu, 0, 0) };
    (rc == BPF_MTU_CHK_RET_FRAG_NEEDED as i64).then_some(mtu)
}

/// What to do with a packet too big for its egress link.
pub enum TooBig {
    /// Answered: the frame is now the ICMP error, for the stack to route
    /// back (`XDP_PASS`).
    Answered,
    /// IPv4 without "don't fragment": the stack fragments it (after NAT).
    Fragment,
    /// Cannot be answered here (IP options, a VLAN tag): the stack's.
    Unanswered,
}

/// Turns the frame (a packet too big for an egress MTU of `mtu`, before NAT)
/// into the ICMP error a router sends: "fragmentation needed" or "packet
/// too big", from the packet's destination to its source, quoting its IP
/// header and 8 bytes.
#[inline(always)]
pub fn answer_too_big(ctx: &Ingress, pkt: &Packet, mtu: u32) -> TooBig {
    if pkt.l3_off != 14 {
        return TooBig::Unanswered;
    }
    if pkt.key.family == FAMILY_V4 {
        too_big_v4(ctx, pkt, mtu)
    } else {
        too_big_v6(ctx, pkt, mtu)
    }
}

/// The frame's MACs, as they are: the answer is handed to this host's
/// stack, which routes it back to the source like any packet it forwards.
/// (Sent back with `XDP_TX` from a veth, the frames were counted as sent and
/// never arrived.)
#[inline(always)]
fn kept_macs(ctx: &Ingress) -> Option<[u8; 12]> {
    let eth = ptr_at::<_, [u8; 12]>(ctx, 0).ok()?;
    // SAFETY: bounds-checked by ptr_at.
    Some(unsafe { *eth })
}

/// Grows the head by `head` bytes and cuts the frame to `len` bytes.
#[inline(always)]
fn reshape(ctx: &Ingress, head: usize, len: usize) -> bool {
    // SAFETY: plain helper calls on this program's context; every packet
    // pointer is taken again afterwards.
    unsafe {
        if bpf_xdp_adjust_head(ctx.ctx.ctx, -(head as i32)) != 0 {
            return false;
        }
        let now = ctx.data_end() - ctx.data();
        bpf_xdp_adjust_tail(ctx.ctx.ctx, len as i32 - now as i32) == 0
    }
}

/// The one's-complement checksum of `len` bytes at `off` (a multiple of 4,
/// bounds-checked by the caller's pointer type), continuing `seed`.
#[inline(always)]
fn csum<T>(ptr: *mut T, seed: u32) -> u16 {
    // SAFETY: `ptr` covers a whole `T` inside the packet (or the stack).
    let sum =
        unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ptr as *mut u32, core::mem::size_of::<T>() as u32, seed) };
    let mut s = sum as u64;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[inline(always)]
fn too_big_v4(ctx: &Ingress, pkt: &Packet, mtu: u32) -> TooBig {
    let Ok(ip) = ptr_at::<_, Ipv4Hdr>(ctx, 14) else { return TooBig::Unanswered };
    // SAFETY: bounds-checked by ptr_at.
    let (vihl, frags) = unsafe { ((*ip).vihl, u16::from_be_bytes((*ip).frags)) };
    if vihl & 0x0f != 5 {
        return TooBig::Unanswered;
    }
    if frags & 0x4000 == 0 {
        return TooBig::Fragment;
    }
    let Some(macs) = kept_macs(ctx) else { return TooBig::Unanswered };
    // [eth][new IP][ICMP][quoted IP header + 8 bytes]
    if !reshape(ctx, 20 + ICMP_HLEN, 14 + 20 + ICMP_HLEN + QUOTE_V4) {
        return TooBig::Unanswered;
    }
    let Ok(frame) = ptr_at::<_, [u8; 14 + 20 + ICMP_HLEN]>(ctx, 0) else { return TooBig::Unanswered };
    let Ok(icmp) = ptr_at::<_, [u8; ICMP_HLEN + QUOTE_V4]>(ctx, 14 + 20) else { return TooBig::Unanswered };
    let Ok(new_ip) = ptr_at::<_, [u8; 20]>(ctx, 14) else { return TooBig::Unanswered };
    // SAFETY: bounds-checked by ptr_at; the frame is writable in XDP.
    unsafe {
        let f = &mut *frame;
        f[..12].copy_from_slice(&macs);
        f[12] = 0x08;
        f[13] = 0x00;
        let total = (20 + ICMP_HLEN + QUOTE_V4) as u16;
        let (src, dst) = (pkt.key.dst_addr[0].to_ne_bytes(), pkt.key.src_addr[0].to_ne_bytes());
        let h: [u8; 20] = [
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            1,
            0,
            0, //
            src[0],
            src[1],
            src[2],
            src[3],
            dst[0],
            dst[1],
            dst[2],
            dst[3],
        ];
        f[14..34].copy_from_slice(&h);
        let m = (mtu.min(0xffff) as u16).to_be_bytes();
        f[34..42].copy_from_slice(&[3, 4, 0, 0, 0, 0, m[0], m[1]]);
        let ip_check = csum(new_ip, 0).to_ne_bytes();
        (*frame)[24] = ip_check[0];
        (*frame)[25] = ip_check[1];
        let icmp_check = csum(icmp, 0).to_ne_bytes();
        (*frame)[36] = icmp_check[0];
        (*frame)[37] = icmp_check[1];
    }
    TooBig::Answered
}

#[inline(always)]
fn too_big_v6(ctx: &Ingress, pkt: &Packet, mtu: u32) -> TooBig {
    let Some(macs) = kept_macs(ctx) else { return TooBig::Unanswered };
    // [eth][new IPv6][ICMPv6][quoted IPv6 header + 8 bytes]
    if !reshape(ctx, 40 + ICMP_HLEN, 14 + 40 + ICMP_HLEN + QUOTE_V6) {
        return TooBig::Unanswered;
    }
    let Ok(frame) = ptr_at::<_, [u8; 14 + 40 + ICMP_HLEN]>(ctx, 0) else { return TooBig::Unanswered };
    let Ok(icmp) = ptr_at::<_, [u8; ICMP_HLEN + QUOTE_V6]>(ctx, 14 + 40) else { return TooBig::Unanswered };
    let len = (ICMP_HLEN + QUOTE_V6) as u16;
    // The pseudo-header the ICMPv6 checksum starts from.
    let mut pseudo = [0u8; 40];
    // SAFETY: bounds-checked by ptr_at; the frame is writable in XDP.
    unsafe {
        let f = &mut *frame;
        f[..12].copy_from_slice(&macs);
        f[12] = 0x86;
        f[13] = 0xdd;
        f[14..22].copy_from_slice(&[0x60, 0, 0, 0, (len >> 8) as u8, len as u8, 58, 64]);
        for w in 0..4 {
            let s = pkt.key.dst_addr[w].to_ne_bytes();
            let d = pkt.key.src_addr[w].to_ne_bytes();
            f[22 + 4 * w..26 + 4 * w].copy_from_slice(&s);
            f[38 + 4 * w..42 + 4 * w].copy_from_slice(&d);
            pseudo[4 * w..4 + 4 * w].copy_from_slice(&s);
            pseudo[16 + 4 * w..20 + 4 * w].copy_from_slice(&d);
        }
        pseudo[34] = (len >> 8) as u8;
        pseudo[35] = len as u8;
        pseudo[39] = 58;
        let m = mtu.to_be_bytes();
        f[54..62].copy_from_slice(&[2, 0, 0, 0, m[0], m[1], m[2], m[3]]);
        let seed = bpf_csum_diff(core::ptr::null_mut(), 0, pseudo.as_mut_ptr() as *mut u32, 40, 0) as u32;
        let check = csum(icmp, seed).to_ne_bytes();
        (*frame)[56] = check[0];
        (*frame)[57] = check[1];
    }
    TooBig::Answered
}
