//! Every map the kernel programs use. Names match `splitter_common::names`
//! (the agent's tests check the built object against those constants).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use splitter_common::stats::Stat;

/// Per-CPU `u64` counters indexed by `Stat` (`names::MAP_STATS`).
#[map]
pub static SPLITTER_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);
