//! Host-side library target of the eBPF crate: empty on purpose.
//!
//! `splitter-user` takes this crate as a build-dependency so that cargo rebuilds
//! it (and re-runs aya-build) whenever the kernel program changes. The programs
//! themselves are the `splitter` binary target (`src/main.rs`).
#![no_std]
