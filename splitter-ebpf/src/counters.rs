//! Per-CPU counters: the kernel's only way of telling what it saw.

use splitter_common::stats::Stat;

use crate::maps::SPLITTER_STATS;

/// Adds `n` to counter `stat` on this CPU. Per-CPU slots need no atomics.
#[inline(always)]
pub fn add(stat: Stat, n: u64) {
    if let Some(slot) = SPLITTER_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: the pointer comes from the map lookup and is this CPU's slot.
        unsafe { *slot += n };
    }
}

/// Adds one to counter `stat`.
#[inline(always)]
pub fn inc(stat: Stat) {
    add(stat, 1)
}
