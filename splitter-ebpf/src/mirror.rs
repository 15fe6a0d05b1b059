//! Mirrored flows. XDP cannot clone a packet, so the XDP program leaves every
//! packet of a flow sampled for mirroring to this TC (clsact ingress) program,
//! unchanged: it sends a copy out of the flow's mirror interface
//! (`bpf_clone_redirect`), then rewrites and forwards the packet exactly as
//! the XDP program does for other flows. Unmirrored flows never come here.
//!
//! The copy shows the conversation as the client sees it, in both
//! directions: client → VIP is copied before the destination rewrite,
//! VIP → client after the source rewrite. One TCP stream with the VIP's
//! address, which an analyzer reassembles and a shadow stack that owns the
//! VIP can answer (its answers are dropped by [`splitter_mirror_guard`]).
//!
//! A copy that cannot be sent is counted by reason; the primary goes on.

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_csum_update, bpf_ktime_get_coarse_ns},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use splitter_common::{
    csum::Delta,
    service::{FlowState, ServiceKey, FLOW_MIRROR},
    stats::Stat,
};

use crate::{
    counters::{self, Stats},
    end_flow_on_client_rst, forward,
    frame::{Skb, Uncounted},
    maps::{SPLITTER_FLOWS, SPLITTER_SERVICES},
    nat::{self, Side},
    parse::{self, Packet, Parsed},
    reply,
};

const ENODEV: i64 = 19;
const EINVAL: i64 = 22;
const ENETDOWN: i64 = 100;

/// Headers the parser reads (Ethernet, a VLAN tag, IPv4 with options, TCP
/// without options): pulled into the skb's linear part when they are not.
const HEADERS: u32 = 14 + 4 + 60 + 20;

/// On the TC ingress hook of every interface the XDP program serves.
#[classifier]
pub fn splitter_mirror(ctx: TcContext) -> i32 {
    let Some(stats) = Stats::this_cpu() else {
        return TC_ACT_OK;
    };
    try_mirror(&Skb { ctx: &ctx, stats })
}

#[inline(always)]
fn try_mirror(skb: &Skb) -> i32 {
    let ctx = skb.ctx;
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < HEADERS && ctx.len() > linear {
        let _ = ctx.pull_data(ctx.len().min(HEADERS));
    }
    let Ok(Parsed::Flow(pkt)) = parse::parse(skb) else {
        return TC_ACT_OK;
    };
    if let Some(state) = SPLITTER_FLOWS.get_ptr_mut(pkt.key) {
        // SAFETY: the map's value; concurrent writers store equivalent values.
        let state = unsafe { &mut *state };
        if state.flags & FLOW_MIRROR != 0 {
            return to_service(skb, &pkt, state);
        }
    } else {
        let mut vip = ServiceKey::UNSET;
        // Only the replies of flows with an entry (the XDP program restores
        // an orphan's entry, unmirrored, before this sees it).
        let reply::Reply::Of(state) = reply::find(&pkt.key, &mut vip) else {
            return TC_ACT_OK;
        };
        // SAFETY: the map's value, as above.
        let state = unsafe { &mut *state };
        if state.flags & FLOW_MIRROR != 0 {
            return to_client(skb, &pkt, state, &vip);
        }
    }
    TC_ACT_OK
}

/// Client → service: copy as received, then DNAT and forward.
#[inline(always)]
fn to_service(skb: &Skb, pkt: &Packet, state: &mut FlowState) -> i32 {
    let ctx = skb.ctx;
    copy(skb, state.mirror_ifindex, state.service, state.endpoint);
    // The copy shares the packet's data: make ours private before writing.
    if ctx.pull_data(0).is_err() {
        skb.stats.inc(Stat::Dropped);
        return TC_ACT_SHOT;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let hop = forward::next_hop(skb, pkt, &pkt.key.src_addr, &state.backend, &mut state.hop, now);
    let (backend, port) = (state.backend, state.backend_port);
    end_flow_on_client_rst(pkt);
    match nat::rewrite(skb, pkt, Side::Dst, &backend, port) {
        Ok(sum) => follow_complete_sum(ctx, sum),
        Err(e) => {
            e.count(skb.stats);
            return TC_ACT_OK;
        }
    }
    match hop {
        Some(hop) if forward::put_macs(skb, &hop) => forward::redirect_skb(skb, &hop),
        _ => TC_ACT_OK,
    }
}

/// Endpoint → client: SNAT, then copy as the client receives it, then forward.
#[inline(always)]
fn to_client(skb: &Skb, pkt: &Packet, state: &mut FlowState, vip: &ServiceKey) -> i32 {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let hop = forward::next_hop(skb, pkt, &vip.addr, &pkt.key.dst_addr, &mut state.reply_hop, now);
    match nat::rewrite(skb, pkt, Side::Src, &vip.addr, vip.port) {
        Ok(sum) => follow_complete_sum(skb.ctx, sum),
        Err(e) => {
            e.count(skb.stats);
            return TC_ACT_OK;
        }
    }
    let hop = match hop {
        Some(hop) if forward::put_macs(skb, &hop) => Some(hop),
        _ => None,
    };
    copy(skb, state.mirror_ifindex, state.service, state.endpoint);
    match hop {
        Some(hop) => forward::redirect_skb(skb, &hop),
        None => TC_ACT_OK,
    }
}

/// Sends a copy of the packet as it is now out of `ifindex`, counted.
#[inline(always)]
fn copy(skb: &Skb, ifindex: u32, service: u16, endpoint: u8) {
    let ctx = skb.ctx;
    // A coalesced (GRO) packet stands for several on the wire.
    // SAFETY: the context pointer the kernel passed to the program.
    let segments = u64::from(unsafe { (*ctx.skb.skb).gso_segs }.max(1));
    match ctx.clone_redirect(ifindex, 0) {
        Ok(()) => {
            skb.stats.add(Stat::Mirrored, segments);
            counters::mirrored(service, endpoint, segments, u64::from(ctx.len()));
        }
        Err(e) => skb.stats.inc(match -e {
            ENETDOWN => Stat::MirrorDown,
            ENODEV | EINVAL => Stat::MirrorNoDevice,
            // NET_XMIT_DROP / NET_XMIT_CN from the device's queue.
            _ if e > 0 => Stat::MirrorDropped,
            _ => Stat::MirrorFailed,
        }),
    }
}

/// Keeps an skb's `CHECKSUM_COMPLETE` sum true after a rewrite (a no-op for
/// other checksum states).
#[inline(always)]
fn follow_complete_sum(ctx: &TcContext, sum: Delta) {
    // SAFETY: plain helper call on the program's own skb.
    unsafe { bpf_csum_update(ctx.skb.skb, u32::from(sum.folded())) };
}

/// On mirror interfaces: a packet from a service address is a shadow
/// answering the copies; it is dropped (and counted) so no client sees it.
/// Everything else passes.
#[xdp]
pub fn splitter_mirror_guard(ctx: XdpContext) -> u32 {
    let Some(stats) = Stats::this_cpu() else {
        return xdp_action::XDP_PASS;
    };
    let Ok(Parsed::Flow(pkt)) = parse::parse(&Uncounted { ctx: &ctx, stats }) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a plain lookup; the value is not kept.
    if unsafe { SPLITTER_SERVICES.get(ServiceKey::of_source(&pkt.key)) }.is_some() {
        stats.inc(Stat::ShadowReplies);
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}
