//! Gives the heap's free memory back to the kernel after a load peak.
//!
//! glibc's allocator keeps what a peak made it take: the l7 proxy's
//! per-connection and per-request buffers of a few hundred busy connections
//! are freed when the load passes, but the pages stay in the process (only
//! the heap's top is ever returned), so the agent's RSS stays at its peak.
//! Every [`CHECK_EVERY`] the trimmer asks the allocator how much it holds
//! free and, past [`TRIM_ABOVE`], has it hand the free pages back
//! (`malloc_trim`, which also releases pages in the middle of the heap).
//! Under a steady load the free space stays small and nothing is done.

use std::time::{Duration, Instant};

use tracing::debug;

/// How often the allocator's free space is read.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// Free space the allocator may keep for the next requests before it is
/// asked to give pages back.
pub const TRIM_ABOVE: usize = 4 << 20;

/// Bytes the allocator holds free (in its arenas, not yet returned).
pub fn free_bytes() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    unsafe { libc::mallinfo2() }.fordblks
}

/// Asks the allocator to return its free pages when it holds more than
/// `above` bytes free; whether it was asked.
pub fn trim_if_free_above(above: usize) -> bool {
    let free = free_bytes();
    if free <= above {
        return false;
    }
    let started = Instant::now();
    // SAFETY: malloc_trim takes the allocator's own locks; 0 keeps no pad.
    let released = unsafe { libc::malloc_trim(0) } == 1;
    debug!(free, released, took_us = started.elapsed().as_micros() as u64, "heap trimmed");
    true
}

/// Runs the trimmer on the current runtime until the runtime stops.
pub fn spawn_trimmer() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            trim_if_free_above(TRIM_ABOVE);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's anonymous resident memory, KiB.
    fn rss_anon_kib() -> u64 {
        splitter_testkit::agent_process::Rss::of(std::process::id()).anon
    }

    #[test]
    fn freed_pages_go_back_after_a_peak() {
        // 64 MiB in 4 KiB pieces (the heap, not mmap), written so they are
        // resident; one kept at the end so only a trim in the middle of the
        // heap can give the rest back.
        let mut pieces: Vec<Vec<u8>> = (0..16 * 1024).map(|i| vec![i as u8 | 1; 4096]).collect();
        let keep = vec![7u8; 4096];
        let peak = rss_anon_kib();
        pieces.clear();
        pieces.shrink_to_fit();
        assert!(free_bytes() >= 48 << 20, "the freed pieces are free in the allocator: {}", free_bytes());
        // Nothing is done while the free space is under the bar.
        assert!(!trim_if_free_above(usize::MAX));
        assert!(trim_if_free_above(TRIM_ABOVE));
        let after = rss_anon_kib();
        assert!(
            after + 32 * 1024 <= peak,
            "the trim returned less than 32 MiB of the 64 freed: {peak} KiB at the peak, {after} KiB after"
        );
        assert_eq!(keep[0], 7);
    }
}
