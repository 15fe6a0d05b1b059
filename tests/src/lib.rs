//! Harnesses shared by splitter's tests: network namespaces and veth pairs
//! (`netns`), test packets (`packet`), `BPF_PROG_TEST_RUN` fixtures
//! (`fixture`), the real agent as a child process (`agent`) and real HTTP
//! backends and clients (`http`), and what benchmarks leave for `cargo xtask
//! bench` (`report`).
//!
//! Tests that need root or the eBPF object call [`require_root`] and fail
//! loudly when they cannot run: nothing here skips silently.

pub mod agent;
pub mod etcd;
pub mod fixture;
pub mod http;
pub mod load;
pub mod netns;
pub mod packet;
pub mod peers;
pub mod raw;
pub mod report;

/// Panics unless the test runs as root (CI does). A test that needs the kernel
/// must not pass by doing nothing.
pub fn require_root(what: &str) {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "{what} needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): run the suite with \
             `sudo -E cargo xtask test`. Refusing to skip silently."
        );
    }
}

/// Resident memory of process `pid`, in KiB (`VmRSS`), for the benchmarks.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
