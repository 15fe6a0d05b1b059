//! splitter's XDP programs: entry points only. Parsing, maps and counters live
//! in their own modules so each role reads on its own.
#![no_std]
#![no_main]

mod counters;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use splitter_common::stats::Stat;

use crate::parse::{Parsed, Verdict};

/// Ingress on the client-facing interfaces: parse once, count, decide.
///
/// Today every packet is passed to the stack; what it parsed is counted. The
/// split (service lookup, flow table, rewrite, redirect) builds on `Parsed`.
#[xdp]
pub fn splitter_ingress(ctx: XdpContext) -> u32 {
    let action = try_ingress(&ctx);
    match action {
        xdp_action::XDP_DROP => counters::inc(Stat::Dropped),
        xdp_action::XDP_PASS => counters::inc(Stat::Passed),
        _ => {}
    }
    action
}

#[inline(always)]
fn try_ingress(ctx: &XdpContext) -> u32 {
    counters::inc(Stat::RxPackets);
    counters::add(Stat::RxBytes, (ctx.data_end() - ctx.data()) as u64);

    match parse::parse(ctx) {
        Ok(Parsed::Flow(pkt)) => {
            counters::inc(match pkt.key.proto {
                parse::IPPROTO_TCP => Stat::Tcp,
                _ => Stat::Udp,
            });
            xdp_action::XDP_PASS
        }
        Ok(Parsed::Other(verdict)) => {
            counters::inc(match verdict {
                Verdict::NonIp => Stat::NonIp,
                Verdict::Icmp => Stat::Icmp,
                Verdict::OtherL4 => Stat::OtherL4,
                Verdict::Fragment => Stat::Fragment,
            });
            xdp_action::XDP_PASS
        }
        // Policy: a packet we cannot parse is not ours to judge; the stack
        // validates it again and drops it with its own accounting.
        Err(_) => {
            counters::inc(Stat::Malformed);
            xdp_action::XDP_PASS
        }
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
