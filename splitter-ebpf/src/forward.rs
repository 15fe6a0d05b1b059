//! Sending a rewritten packet on: the kernel FIB picks the interface, next hop
//! and MAC addresses; the frame is redirected there (XDP_TX when it leaves the
//! way it came). Each flow caches the FIB's answer for `FIB_REFRESH_NS`, so an
//! established flow skips the lookup. Without a usable route or neighbour
//! entry the packet goes to the stack, which forwards it (and resolves the
//! neighbour) itself; nothing is cached then.

use core::mem;

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect},
};
use network_types::eth::EthHdr;
use splitter_common::{
    service::{endpoint_stats_index, NextHop},
    stats::Stat,
    FAMILY_V4,
};

use crate::{
    frame::{Frame, Ingress, Skb},
    maps::{FibParams, SPLITTER_HOPS, SPLITTER_SCRATCH},
    parse::{ptr_at, Packet},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The next hop for a packet `src` → `dst`: `cache` when it is fresh, else a
/// FIB lookup whose answer is stored in `cache`. `None`: let the stack forward.
#[inline(always)]
pub fn next_hop<C: Frame>(
    ctx: &C,
    pkt: &Packet,
    src: &[u32; 4],
    dst: &[u32; 4],
    cache: &mut NextHop,
    now: u64,
) -> Option<NextHop> {
    if cache.fresh(now) {
        ctx.stats().inc(Stat::FibCached);
        return Some(*cache);
    }
    // The parameters live in this CPU's scratch slot, not on the stack.
    let Some(scratch) = SPLITTER_SCRATCH.get_ptr_mut(0) else {
        ctx.stats().inc(Stat::FibPass);
        return None;
    };
    // SAFETY: this CPU's slot; only its `fib` field is used here.
    let params = unsafe { &mut (*scratch).fib };
    let rc = lookup(ctx, pkt, src, dst, params);
    let p = &params.0;
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        ctx.stats().inc(Stat::FibPass);
        cache.ifindex = 0;
        return None;
    }
    cache.ifindex = p.ifindex;
    copy_mac(&mut cache.smac, &p.smac);
    copy_mac(&mut cache.dmac, &p.dmac);
    cache.looked_up_ns = now;
    Some(*cache)
}

/// Whether `pkt`'s destination is this host's own: the FIB, asked as for
/// forwarding the packet from the interface it arrived on, answers
/// `BPF_FIB_LKUP_RET_NOT_FWDED` — a local address (`RTN_LOCAL`, IPv4 and
/// IPv6), or a destination the stack would not forward either (broadcast,
/// multicast, no route). False when forwarding is off on that interface
/// (the data path forwards nothing there anyway). A FIB lookup: only for an
/// endpoint's packet that has no flow.
#[inline(always)]
pub fn is_local<C: Frame>(ctx: &C, pkt: &Packet) -> bool {
    let Some(scratch) = SPLITTER_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; only its `fib` field is used here.
    lookup(ctx, pkt, &pkt.key.src_addr, &pkt.key.dst_addr, unsafe { &mut (*scratch).fib })
        == BPF_FIB_LKUP_RET_NOT_FWDED as i64
}

/// A FIB lookup of `src` → `dst` (`pkt`'s protocol and family) arriving on
/// the packet's interface, in `params` (zeroed first): the helper's return
/// code; `params` holds its answer on success.
#[inline(always)]
fn lookup<C: Frame>(ctx: &C, pkt: &Packet, src: &[u32; 4], dst: &[u32; 4], params: &mut FibParams) -> i64 {
    let p = zero_fib_params(params);
    p.l4_protocol = pkt.key.proto;
    p.ifindex = ctx.arrival_ifindex();
    if pkt.key.family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    }
    // SAFETY: the helper reads and writes only `p`, whose size we pass.
    unsafe { fib_lookup(ctx.as_ptr(), p, mem::size_of::<bpf_fib_lookup>() as i32, 0) }
}

/// The next hop of a new flow to `endpoint` (index `index` of service slot
/// `service`): the endpoint's shared entry in `HOPS` when it is fresh and
/// answers for this endpoint and arrival interface, else a FIB lookup, which
/// refreshes it. Stored in the flow's own `cache` either way; true when the
/// shared entry answered (the caller counts it once the flow is placed).
/// (Routes chosen by the client's source address are not looked up per
/// client here; the reply direction, towards the client, is.)
#[inline(always)]
pub fn to_new_endpoint(
    ctx: &Ingress,
    pkt: &Packet,
    endpoint: &[u32; 4],
    (service, index): (u16, u8),
    cache: &mut NextHop,
    now: u64,
) -> (Option<NextHop>, bool) {
    let Some(shared) = SPLITTER_HOPS.get_ptr_mut(endpoint_stats_index(service, index)) else {
        return (next_hop(ctx, pkt, &pkt.key.src_addr, endpoint, cache, now), false);
    };
    // SAFETY: the map's value. Another CPU may refresh it meanwhile; both
    // write the FIB's answer of the same second (as for a flow's cache).
    let shared = unsafe { &mut *shared };
    let arrival = ctx.arrival_ifindex();
    if shared.endpoint == *endpoint && shared.arrival_ifindex == arrival {
        let hop = shared.hop;
        if hop.fresh(now) {
            *cache = hop;
            return (Some(hop), true);
        }
    }
    let Some(hop) = next_hop(ctx, pkt, &pkt.key.src_addr, endpoint, cache, now) else {
        return (None, false);
    };
    shared.endpoint = *endpoint;
    shared.arrival_ifindex = arrival;
    shared.hop = hop;
    (Some(hop), false)
}

/// Zeroes `params` with eight 8-byte stores and returns the struct inside.
/// (`mem::zeroed` becomes a call to a byte-at-a-time `memset` on BPF: 64
/// iterations on every FIB lookup.) In place: no copy of the struct.
#[inline(always)]
fn zero_fib_params(params: &mut FibParams) -> &mut bpf_fib_lookup {
    const WORDS: usize = mem::size_of::<FibParams>() / 8;
    const _: () = assert!(mem::size_of::<FibParams>() == mem::size_of::<bpf_fib_lookup>());
    const _: () = assert!(mem::size_of::<bpf_fib_lookup>() == WORDS * 8);
    let words = params as *mut FibParams as *mut u64;
    // SAFETY: `words` covers exactly the 8-aligned struct (sizes asserted
    // above); volatile keeps LLVM from merging the stores back into a memset
    // call. All-zero is a valid bpf_fib_lookup.
    unsafe {
        for i in 0..WORDS {
            core::ptr::write_volatile(words.add(i), 0);
        }
    }
    &mut params.0
}

/// Copies a MAC as one 4-byte and one 2-byte load and store (a `[u8; 6]`
/// assignment becomes a byte-loop `memmove` call on BPF).
#[inline(always)]
fn copy_mac(to: &mut [u8; 6], from: &[u8; 6]) {
    // SAFETY: both point at 6 bytes.
    unsafe { put_mac(to.as_mut_ptr(), from) }
}

/// Writes a 6-byte MAC at `at` as one 4-byte and one 2-byte store (a `[u8; 6]`
/// assignment becomes a byte-loop `memmove` call on BPF).
#[inline(always)]
unsafe fn put_mac(at: *mut u8, mac: &[u8; 6]) {
    // SAFETY: the caller guarantees 6 writable bytes at `at`.
    unsafe {
        core::ptr::write_unaligned(at as *mut u32, u32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]]));
        core::ptr::write_unaligned(at.add(4) as *mut u16, u16::from_ne_bytes([mac[4], mac[5]]));
    }
}

/// Puts the next hop's MACs on the frame; false when the frame has no room
/// for an Ethernet header (cannot happen after a parse).
#[inline(always)]
pub fn put_macs<C: Frame>(ctx: &C, hop: &NextHop) -> bool {
    let Ok(eth) = ptr_at::<C, EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds-checked by ptr_at: the 14-byte header holds both MACs.
    unsafe {
        put_mac(eth as *mut u8, &hop.dmac);
        put_mac((eth as *mut u8).add(6), &hop.smac);
    }
    true
}

/// Puts the next hop's MACs on the frame and sends it out of its interface.
#[inline(always)]
pub fn send(ctx: &Ingress, hop: &NextHop) -> u32 {
    if !put_macs(ctx, hop) {
        return xdp_action::XDP_PASS;
    }
    if hop.ifindex == ctx.arrival_ifindex() {
        ctx.stats.inc(Stat::Tx);
        return xdp_action::XDP_TX;
    }
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(hop.ifindex, 0) } as u32;
    if action == xdp_action::XDP_REDIRECT {
        ctx.stats.inc(Stat::Redirected);
    }
    action
}

/// The TC twin of [`send`] for a frame whose MACs are already set: out of the
/// next hop's interface (the one it came in on included).
#[inline(always)]
pub fn redirect_skb(ctx: &Skb, hop: &NextHop) -> i32 {
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(hop.ifindex, 0) } as i32;
    if action == TC_ACT_REDIRECT {
        ctx.stats.inc(Stat::Redirected);
    }
    action
}
