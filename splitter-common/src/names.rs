//! Names of programs and maps, as they appear in the eBPF object and in bpffs.
//!
//! The kernel side names its statics exactly like these constants; a host test
//! in `splitter-user` checks the built object against them.

/// XDP program on the client-facing interfaces.
pub const PROG_INGRESS: &str = "splitter_ingress";

/// Per-CPU array of `u64` counters, indexed by [`crate::stats::Stat`].
pub const MAP_STATS: &str = "SPLITTER_STATS";
