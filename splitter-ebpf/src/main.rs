//! splitter's XDP program: the entry point and the decision per packet.
//! Parsing, selection, rewriting, forwarding, maps and counters each live in
//! their own module.
#![no_std]
#![no_main]

mod counters;
mod events;
mod forward;
mod frame;
mod icmp;
mod maps;
mod mirror;
mod nat;
mod parse;
mod reply;
mod select;

use aya_ebpf::{bindings::xdp_action, helpers::generated::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext};
use splitter_common::{
    service::{FlowState, NextHop, ServiceKey, ServiceRef, FLOW_ADOPTED, FLOW_CLOSING, FLOW_MIRROR, MAX_ENDPOINTS},
    stats::Stat,
    FlowKey,
};

use crate::{
    counters::{Direction, Stats},
    frame::{Frame, Ingress},
    maps::{SPLITTER_FLOWS, SPLITTER_SCRATCH, SPLITTER_SERVICES, SPLITTER_TABLES},
    nat::Side,
    parse::{Packet, Parsed, IPPROTO_TCP, TCP_FIN},
    reply::Reply,
};

/// `bpf_map_update_elem` flag: insert only, never replace.
const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

/// Bit set in a verdict (always `XDP_PASS`) when the packet belongs to a
/// mirrored flow and is left, unchanged, to the TC program `mirror`.
const HANDOFF: u32 = 1 << 30;

/// Attached to every client- and backend-facing interface. A packet to a
/// service is placed (or follows its flow), rewritten to its endpoint and
/// forwarded; a reply from an endpoint is rewritten back to the VIP; anything
/// else goes to the stack untouched.
#[xdp]
pub fn splitter_ingress(ctx: XdpContext) -> u32 {
    let Some(stats) = Stats::this_cpu() else {
        return xdp_action::XDP_PASS;
    };
    let mut action = try_ingress(&Ingress { ctx: &ctx, stats });
    if action & events::PENDING != 0 {
        events::flush(&ctx);
        action &= !events::PENDING;
    }
    if action & HANDOFF != 0 {
        stats.inc(Stat::MirrorHandoff);
        return action & !HANDOFF;
    }
    match action {
        xdp_action::XDP_DROP => stats.inc(Stat::Dropped),
        xdp_action::XDP_PASS => stats.inc(Stat::Passed),
        _ => {}
    }
    action
}

/// The empty program: the floor a benchmark measures the real one against.
/// Never attached by the agent.
#[xdp]
pub fn splitter_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn try_ingress(ctx: &Ingress) -> u32 {
    ctx.stats.inc(Stat::RxPackets);
    ctx.stats.add(Stat::RxBytes, (ctx.data_end() - ctx.data()) as u64);

    match parse::parse(ctx) {
        Ok(Parsed::Flow(pkt)) => {
            ctx.stats.inc(match pkt.key.proto {
                IPPROTO_TCP => Stat::Tcp,
                _ => Stat::Udp,
            });
            // Most packets belong to a known flow, one way or the other: one
            // lookup each. A connection's first segment (SYN without ACK)
            // goes straight to its service: its insert finds out whether
            // the flow exists (a retransmitted SYN), so a new connection
            // costs no lookup of a flow that is not there.
            let syn = pkt.is_syn();
            let mut state = if syn { None } else { SPLITTER_FLOWS.get_ptr_mut(pkt.key) };
            if state.is_none() {
                // A SYN is never a reply.
                if !syn {
                    let mut vip = ServiceKey::UNSET;
                    // An endpoint's packet is never forwarded with the
                    // endpoint's address.
                    match reply::find(&pkt.key, &mut vip) {
                        // SAFETY: the map's value; see `established` on racing writes.
                        Reply::Of(state) => return to_client(ctx, &pkt, unsafe { &mut *state }, &vip),
                        // Not a client's reply but this host's own
                        // conversation with the endpoint (a health check,
                        // an operator's connection): the stack's.
                        Reply::Orphan | Reply::Ambiguous if forward::is_local(ctx, &pkt) => {
                            ctx.stats.inc(Stat::ToHost);
                            return xdp_action::XDP_PASS;
                        }
                        Reply::Orphan => return adopt_reply(ctx, &pkt, &vip),
                        Reply::Ambiguous => {
                            ctx.stats.inc(Stat::OrphanReplies);
                            return xdp_action::XDP_DROP;
                        }
                        Reply::NotEndpoint => {}
                    }
                }
                // SAFETY: a lookup; the value is copied at once.
                let Some(svc) = (unsafe { SPLITTER_SERVICES.get(ServiceKey::of_flow(&pkt.key)) }) else {
                    return xdp_action::XDP_PASS;
                };
                let svc = *svc;
                match new_flow(ctx, &pkt, &svc) {
                    Placed::Done(action) => return action,
                    // Inserted meanwhile (a retransmitted SYN, or another CPU).
                    Placed::Exists => state = SPLITTER_FLOWS.get_ptr_mut(pkt.key),
                }
            }
            match state {
                // SAFETY: the map's value; see `established` on racing writes.
                Some(state) => established(ctx, &pkt, unsafe { &mut *state }),
                None => xdp_action::XDP_PASS,
            }
        }
        Ok(Parsed::Icmp(pkt)) => {
            ctx.stats.inc(Stat::Icmp);
            icmp::translate(ctx, &pkt);
            xdp_action::XDP_PASS
        }
        Ok(Parsed::Other(verdict)) => {
            ctx.stats.inc(verdict.stat());
            xdp_action::XDP_PASS
        }
        // Policy: a packet we cannot parse is not ours to judge; the stack
        // validates it again and drops it with its own accounting.
        Err(reason) => {
            ctx.stats.inc(reason.stat());
            xdp_action::XDP_PASS
        }
    }
}

/// Client → service on a known flow: to the endpoint it was given. The flow
/// keeps it whatever happened to the service's tables since (or to the
/// service: a removed service's flows finish where they are).
#[inline(always)]
fn established(ctx: &Ingress, pkt: &Packet, state: &mut FlowState) -> u32 {
    ctx.stats.inc(Stat::ServicePackets);
    ctx.stats.inc(Stat::FlowHits);
    // SAFETY: plain helper call. Coarse time (jiffies) is plenty for idle
    // aging and FIB refresh, and cheaper than bpf_ktime_get_ns.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Racing updates of last_seen or the next-hop cache from another CPU are
    // harmless: both write equivalent values.
    state.last_seen_ns = now;
    if pkt.tcp_flags & TCP_FIN != 0 {
        state.flags |= FLOW_CLOSING;
    }
    counters::endpoint(state.service, state.endpoint, Direction::In, (ctx.data_end() - ctx.data()) as u64, false);
    if state.flags & FLOW_MIRROR != 0 {
        return xdp_action::XDP_PASS | HANDOFF;
    }
    let hop = forward::next_hop(ctx, pkt, &pkt.key.src_addr, &state.backend, &mut state.hop, now);
    let (backend, port) = (state.backend, state.backend_port);
    to_backend(ctx, pkt, &backend, port, hop)
}

/// What [`new_flow`] did.
enum Placed {
    /// Placed (or refused) with this verdict.
    Done(u32),
    /// The flow has an entry already: it follows it.
    Exists,
}

/// Client → service, first packet of a flow (or one whose entry is gone):
/// place it, remember it (its replies find the same entry), then DNAT. The
/// insert never replaces an entry: a flow that has one follows it.
#[inline(always)]
fn new_flow(ctx: &Ingress, pkt: &Packet, svc: &ServiceRef) -> Placed {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let placed = match select::place(&pkt.key, svc) {
        Ok(placed) => placed,
        Err(select::NoPlace::BadTable) => {
            ctx.stats.inc(Stat::ServicePackets);
            ctx.stats.inc(Stat::NoTable);
            return Placed::Done(xdp_action::XDP_DROP | events::note(events::Event::BadTable, svc.table, now));
        }
    };
    let (ep, idx, mirror) = (placed.endpoint, placed.index, placed.mirror_ifindex);
    let service = (svc.table / 2) as u16;
    let adopted = !pkt.opens_flow();
    // The entry is put together in this CPU's scratch slot: the stack has no
    // room for it. Every field is written (the slot holds the last flow's).
    let Some(scratch) = SPLITTER_SCRATCH.get_ptr_mut(0) else {
        return Placed::Done(xdp_action::XDP_PASS);
    };
    // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile, and
    // only the FIB lookup uses the slot's other field.
    let state = unsafe { &mut (*scratch).flow };
    state.backend = ep.addr;
    state.backend_port = ep.port;
    state.version = ep.version;
    state.flags = if mirror != 0 { FLOW_MIRROR } else { 0 } | if adopted { FLOW_ADOPTED } else { 0 };
    state.endpoint = idx;
    state._pad = 0;
    state.service = service;
    // Nothing cached yet: `ifindex` 0 (the rest is written with a lookup).
    state.hop.ifindex = 0;
    state.reply_hop.ifindex = 0;
    state.last_seen_ns = now;
    state.mirror_ifindex = mirror;
    state._pad2 = 0;
    // A mirrored flow is forwarded by the TC program, which looks up the
    // next hop itself.
    let (mut hop, shared_hop) = if mirror == 0 {
        forward::to_new_endpoint(ctx, pkt, &ep.addr, (service, idx), &mut state.hop, now)
    } else {
        (None, false)
    };
    let mut event = 0;
    // Inserted from the scratch slot by reference (a copy would land on the stack).
    let entry: &FlowState = state;
    let inserted = SPLITTER_FLOWS.insert(pkt.key, entry, BPF_NOEXIST);
    if inserted == Err(-EEXIST) {
        return Placed::Exists;
    }
    ctx.stats.inc(Stat::ServicePackets);
    ctx.stats.inc(if adopted { Stat::Adopted } else { Stat::NewFlows });
    if shared_hop {
        ctx.stats.inc(Stat::FibCached);
    }
    counters::endpoint(service, idx, Direction::In, (ctx.data_end() - ctx.data()) as u64, true);
    match inserted {
        Ok(()) if mirror != 0 => return Placed::Done(xdp_action::XDP_PASS | HANDOFF),
        Ok(()) => {}
        Err(e) => {
            ctx.stats.inc(Stat::FlowInsertFailed);
            event = events::note(events::Event::FlowInsert, e.unsigned_abs(), now);
            // The TC program would not find the flow: no copy, forwarded here.
            if mirror != 0 {
                hop = forward::next_hop(ctx, pkt, &pkt.key.src_addr, &ep.addr, &mut state.hop, now);
            }
        }
    }
    Placed::Done(event | to_backend(ctx, pkt, &ep.addr, ep.port, hop))
}

/// A client's TCP RST ends its flow at once rather than when it ages out: the
/// entry is removed before the packet is rewritten and sent on. Both paths a
/// client's packet takes call it: [`to_backend`] (XDP) and
/// `mirror::to_service` (TC, mirrored flows). An endpoint's RST only marks the
/// flow closing ([`to_client`]).
#[inline(always)]
fn end_flow_on_client_rst(pkt: &Packet) {
    if pkt.is_rst() {
        let _ = SPLITTER_FLOWS.remove(pkt.key);
    }
}

/// DNAT to `backend:port` and send the packet on (`hop`, else the stack). A
/// TCP RST ends the flow ([`end_flow_on_client_rst`]).
#[inline(always)]
fn to_backend(ctx: &Ingress, pkt: &Packet, backend: &[u32; 4], port: u16, hop: Option<NextHop>) -> u32 {
    end_flow_on_client_rst(pkt);
    let hop = match fits(ctx, pkt, hop) {
        Fits::Yes(hop) => hop,
        Fits::Answered => return xdp_action::XDP_PASS,
    };
    if let Err(e) = nat::rewrite(ctx, pkt, Side::Dst, backend, port) {
        e.count(ctx.stats);
        return xdp_action::XDP_PASS;
    }
    match hop {
        Some(hop) => forward::send(ctx, &hop),
        None => xdp_action::XDP_PASS,
    }
}

/// Whether a packet fits the link of the next hop it is about to take.
enum Fits {
    /// It does (or goes to the stack: `None`).
    Yes(Option<NextHop>),
    /// It did not: the frame is now the ICMP error back to its source, for
    /// the stack to route.
    Answered,
}

/// Checks a large packet against its next hop's MTU (before NAT): one too
/// big is answered with the ICMP error a router sends, or (IPv4 without
/// "don't fragment", or not answerable here) left to the stack, which
/// fragments it or answers it itself. Redirected, it would be dropped
/// silently by the egress device.
#[inline(always)]
fn fits(ctx: &Ingress, pkt: &Packet, hop: Option<NextHop>) -> Fits {
    let Some(h) = hop else { return Fits::Yes(None) };
    let Some(mtu) = icmp::too_big_for(ctx, h.ifindex) else { return Fits::Yes(hop) };
    match icmp::answer_too_big(ctx, pkt, mtu) {
        icmp::TooBig::Answered => {
            ctx.stats.inc(Stat::TooBig);
            Fits::Answered
        }
        icmp::TooBig::Fragment | icmp::TooBig::Unanswered => {
            ctx.stats.inc(Stat::TooBigToStack);
            Fits::Yes(None)
        }
    }
}

/// Endpoint → client, a reply whose flow has no entry (evicted from a full
/// table, or lost when the table was resized) to the one VIP the endpoint
/// serves on that port: the entry is restored on this endpoint (so the
/// client's next packet follows it), then the reply goes out as the VIP's.
/// Dropped and counted when the endpoint is no longer in that service.
#[inline(always)]
fn adopt_reply(ctx: &Ingress, pkt: &Packet, vip: &ServiceKey) -> u32 {
    let client = FlowKey {
        src_addr: pkt.key.dst_addr,
        dst_addr: vip.addr,
        src_port: pkt.key.dst_port,
        dst_port: vip.port,
        proto: pkt.key.proto,
        family: pkt.key.family,
        _pad: [0; 2],
    };
    // SAFETY: lookups; the values are read at once.
    let Some(svc) = (unsafe { SPLITTER_SERVICES.get(ServiceKey::of_flow(&client)) }) else {
        ctx.stats.inc(Stat::OrphanReplies);
        return xdp_action::XDP_DROP;
    };
    let Some(table) = SPLITTER_TABLES.get(svc.table) else {
        ctx.stats.inc(Stat::OrphanReplies);
        return xdp_action::XDP_DROP;
    };
    let n = table.n_endpoints as usize;
    let mut found = MAX_ENDPOINTS;
    for i in 0..MAX_ENDPOINTS {
        if i >= n {
            break;
        }
        let e = &table.endpoints[i];
        if e.addr == pkt.key.src_addr && e.port == pkt.key.src_port {
            found = i;
            break;
        }
    }
    if found >= MAX_ENDPOINTS {
        ctx.stats.inc(Stat::OrphanReplies);
        return xdp_action::XDP_DROP;
    }
    let version = table.endpoints[found].version;
    let service = (svc.table / 2) as u16;
    let Some(scratch) = SPLITTER_SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's slot, as in `new_flow`.
    let state = unsafe { &mut (*scratch).flow };
    for w in 0..4 {
        state.backend[w] = pkt.key.src_addr[w];
    }
    state.backend_port = pkt.key.src_port;
    state.version = version;
    state.flags = FLOW_ADOPTED;
    state.endpoint = found as u8;
    state._pad = 0;
    state.service = service;
    state.hop.ifindex = 0;
    state.reply_hop.ifindex = 0;
    // SAFETY: plain helper call.
    state.last_seen_ns = unsafe { bpf_ktime_get_coarse_ns() };
    state.mirror_ifindex = 0;
    state._pad2 = 0;
    let entry: &FlowState = state;
    match SPLITTER_FLOWS.insert(client, entry, BPF_NOEXIST) {
        Ok(()) => ctx.stats.inc(Stat::ReplyAdopted),
        // Restored meanwhile by the client's packet or another CPU: use it.
        Err(e) if e == -EEXIST => {}
        Err(_) => ctx.stats.inc(Stat::FlowInsertFailed),
    }
    match SPLITTER_FLOWS.get_ptr_mut(client) {
        Some(entry) => {
            // SAFETY: the map's value; see `established` on racing writes.
            let entry = unsafe { &mut *entry };
            // The client's flow lives on another endpoint: not its reply.
            if entry.backend != pkt.key.src_addr || entry.backend_port != pkt.key.src_port {
                ctx.stats.inc(Stat::OrphanReplies);
                return xdp_action::XDP_DROP;
            }
            to_client(ctx, pkt, entry, vip)
        }
        // Not kept (the insert failed): translated all the same.
        None => to_client(ctx, pkt, state, vip),
    }
}

/// Endpoint → client (a reply of flow `state` to `vip`): SNAT back to the
/// VIP so the client only sees the VIP. A reply keeps its flow alive too.
#[inline(always)]
fn to_client(ctx: &Ingress, pkt: &Packet, state: &mut FlowState, vip: &ServiceKey) -> u32 {
    ctx.stats.inc(Stat::Replies);
    counters::endpoint(state.service, state.endpoint, Direction::Out, (ctx.data_end() - ctx.data()) as u64, false);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Written only when the (coarse) clock moved: the client's direction may
    // be busy with this entry on another CPU.
    if state.last_seen_ns != now {
        state.last_seen_ns = now;
    }
    if pkt.is_rst() {
        counters::reset(state.service, state.endpoint);
        state.flags |= FLOW_CLOSING;
    }
    if state.flags & FLOW_MIRROR != 0 {
        return xdp_action::XDP_PASS | HANDOFF;
    }
    let hop = forward::next_hop(ctx, pkt, &vip.addr, &pkt.key.dst_addr, &mut state.reply_hop, now);
    let hop = match fits(ctx, pkt, hop) {
        Fits::Yes(hop) => hop,
        Fits::Answered => return xdp_action::XDP_PASS,
    };
    if let Err(e) = nat::rewrite(ctx, pkt, Side::Src, &vip.addr, vip.port) {
        e.count(ctx.stats);
        return xdp_action::XDP_PASS;
    }
    match hop {
        Some(hop) => forward::send(ctx, &hop),
        None => xdp_action::XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
