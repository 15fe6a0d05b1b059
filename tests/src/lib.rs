//! Harnesses of splitter's tests and benches (the namespaces, topology,
//! configs, captures, agent process and HTTP they share with the demo are in
//! splitter-testkit): test namespaces that panic on failure (`netns`), test
//! packets (`packet`) and raw frames (`raw`), `BPF_PROG_TEST_RUN` fixtures
//! (`fixture`), the agent under test (`agent`), real etcd members (`etcd`),
//! a real gRPC service and client (`grpc`), a WebSocket echo (`ws`), a test
//! CA and TLS client (`tls`), a real Prometheus (`prometheus`), a webhook
//! receiver (`webhook`), a real headless Chromium (`browser`), a real BIRD
//! (`bird`) and FRR (`frr`), three LB nodes behind a BGP router with ECMP (`ecmp`),
//! the peers and load of the benchmarks (`peers`, `load`), the method and
//! tables the L7 benches share (`l7bench`), profiles with perf (`profile`),
//! and what benchmarks
//! leave for `cargo xtask bench` (`report`).
//!
//! Tests that need root or the eBPF object call [`require_root`] and fail
//! loudly when they cannot run: nothing here skips silently.

pub mod agent;
pub mod bird;
pub mod browser;
pub mod differential;
pub mod ecmp;
pub mod etcd;
pub mod fixture;
pub mod frr;
pub mod grpc;
pub mod hyper_floor;
pub mod l7bench;
pub mod load;
pub mod netns;
pub mod packet;
pub mod peers;
pub mod profile;
pub mod prometheus;
pub mod raw;
pub mod report;
pub mod tls;
pub mod webhook;
pub mod ws;

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

/// CPU time (user and system) process `pid` has used, from `/proc/PID/stat`.
pub fn process_cpu(pid: u32) -> std::time::Duration {
    let (user, system) = process_user_system(pid);
    user + system
}

/// User and system CPU time process `pid` has used, from `/proc/PID/stat`.
pub fn process_user_system(pid: u32) -> (std::time::Duration, std::time::Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process stat");
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let secs = |ticks: u64| std::time::Duration::from_secs_f64(ticks as f64 / hz as f64);
    (secs(f[11]), secs(f[12]))
}

/// Resident memory of process `pid`, in KiB (`VmRSS`), for the benchmarks.
pub fn rss_kib(pid: u32) -> u64 {
    Rss::of(pid).total
}

/// A process's resident memory, all of it and its anonymous part.
pub use splitter_testkit::agent_process::Rss;
