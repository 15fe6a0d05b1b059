//! Per-CPU counters: the kernel's only way of telling what it saw.

use splitter_common::{
    service::endpoint_stats_index,
    stats::{Stat, StatBlock},
};

use crate::maps::{SPLITTER_ENDPOINT_STATS, SPLITTER_STATS};

/// This CPU's [`StatBlock`], looked up once per packet. Per-CPU slots need no
/// atomics.
#[derive(Clone, Copy)]
pub struct Stats(*mut StatBlock);

impl Stats {
    /// This CPU's counters. (The array always has its one entry; the verifier
    /// wants the check.)
    #[inline(always)]
    pub fn this_cpu() -> Option<Stats> {
        SPLITTER_STATS.get_ptr_mut(0).map(Stats)
    }

    /// Adds `n` to counter `stat`.
    #[inline(always)]
    pub fn add(self, stat: Stat, n: u64) {
        let i = stat as usize;
        // The check lets the verifier (and LLVM, for a constant) bound a
        // counter chosen at run time.
        if i < Stat::COUNT as usize {
            // SAFETY: the pointer comes from the map lookup and is this CPU's
            // value; `i` is in bounds.
            unsafe { *(*self.0).counts.get_unchecked_mut(i) += n };
        }
    }

    /// Adds one to counter `stat`.
    #[inline(always)]
    pub fn inc(self, stat: Stat) {
        self.add(stat, 1)
    }
}

/// Which way a packet of a service flow goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → endpoint.
    In,
    /// Endpoint → client (a reply).
    Out,
}

/// Counts one packet of `bytes` for endpoint `endpoint` of service slot
/// `service`, and a placed flow when `placed`.
#[inline(always)]
pub fn endpoint(service: u16, endpoint: u8, dir: Direction, bytes: u64, placed: bool) {
    if let Some(s) = SPLITTER_ENDPOINT_STATS.get_ptr_mut(endpoint_stats_index(service, endpoint)) {
        // SAFETY: this CPU's slot of the map value.
        unsafe {
            if placed {
                (*s).flows += 1;
            }
            if dir == Direction::In {
                (*s).packets_in += 1;
                (*s).bytes_in += bytes;
            } else {
                (*s).packets_out += 1;
                (*s).bytes_out += bytes;
            }
        }
    }
}

/// Counts `packets` copies (`bytes` in all) of a mirrored flow of endpoint
/// `endpoint` of service slot `service`.
#[inline(always)]
pub fn mirrored(service: u16, endpoint: u8, packets: u64, bytes: u64) {
    if let Some(s) = SPLITTER_ENDPOINT_STATS.get_ptr_mut(endpoint_stats_index(service, endpoint)) {
        // SAFETY: this CPU's slot of the map value.
        unsafe {
            (*s).mirrored_packets += packets;
            (*s).mirrored_bytes += bytes;
        }
    }
}

/// Counts a TCP reset sent by endpoint `endpoint` of service slot `service`.
#[inline(always)]
pub fn reset(service: u16, endpoint: u8) {
    if let Some(s) = SPLITTER_ENDPOINT_STATS.get_ptr_mut(endpoint_stats_index(service, endpoint)) {
        // SAFETY: this CPU's slot of the map value.
        unsafe { (*s).resets += 1 };
    }
}
