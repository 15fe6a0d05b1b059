//! Network namespaces and veth pairs as RAII guards, plus ways to run code and
//! programs inside a namespace.
//!
//! Names are unique per process and per call (`sp<pid><n>`), so tests running
//! in parallel, or two CI runs on one machine, never collide. Dropping a
//! [`NetNs`] deletes it, which also deletes every veth end inside it, even when
//! the test panicked.

use std::{
    fs::File,
    net::IpAddr,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{setns, CloneFlags};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: fits IFNAMSIZ with a
/// one-letter role suffix (`sp` + up to 7 hex of pid + up to 4 hex of counter).
pub fn unique_name(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:x}{:x}", std::process::id() & 0xfff_ffff, n & 0xffff);
    assert!(name.len() <= 14, "interface name {name} too long; use a shorter prefix");
    name
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
    if !out.status.success() {
        panic!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    out
}

/// A named network namespace (`/run/netns/NAME`), deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a fresh namespace with loopback up.
    pub fn new(tag: &str) -> NetNs {
        crate::require_root("creating a network namespace");
        let name = format!("{}-{tag}", unique_name("spt"));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        ns.ip(&["link", "set", "dev", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, for `setns` and `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME ARGS...`, panicking with ip's message on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Adds `addr/prefix` to `dev`. IPv6 addresses skip duplicate address
    /// detection so they are usable at once.
    pub fn addr(&self, dev: &str, addr: IpAddr, prefix: u8) {
        let cidr = format!("{addr}/{prefix}");
        if addr.is_ipv6() {
            self.ip(&["addr", "add", &cidr, "dev", dev, "nodad"]);
        } else {
            self.ip(&["addr", "add", &cidr, "dev", dev]);
        }
    }

    /// Sets a sysctl inside the namespace (e.g. `net.ipv4.ip_forward=1`).
    pub fn sysctl(&self, key_value: &str) {
        run_ok(self.command("sysctl").args(["-q", "-w", key_value]));
    }

    /// A command that runs inside this namespace's network stack but keeps the
    /// host's mounts (so the host's bpffs stays visible, unlike `ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created in
    /// `f` stay in the namespace, so they can be returned and used anywhere.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path()).unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()));
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Whether `dev` in this namespace has an XDP program attached.
    pub fn has_xdp(&self, dev: &str) -> bool {
        let out = self.ip(&["-details", "link", "show", "dev", dev]);
        out.contains("prog/xdp") || out.contains(" xdp")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Not run_ok: a failing drop during a panic would abort the process.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A veth pair with one end in each namespace, both up.
pub struct Veth {
    /// Name of the end in the first namespace.
    pub a: String,
    /// Name of the end in the second namespace.
    pub b: String,
}

impl Veth {
    /// Creates `a` in `ns_a` and `b` in `ns_b` and brings both up. The pair
    /// goes away with either namespace.
    pub fn new(ns_a: &NetNs, ns_b: &NetNs) -> Veth {
        let base = unique_name("v");
        let (a, b) = (format!("{base}a"), format!("{base}b"));
        ns_a.ip(&["link", "add", "name", &a, "type", "veth", "peer", "name", &b, "netns", ns_b.name()]);
        ns_a.ip(&["link", "set", "dev", &a, "up"]);
        ns_b.ip(&["link", "set", "dev", &b, "up"]);
        Veth { a, b }
    }
}

/// Turns GRO on for `dev` in `ns` (needs ethtool). An XDP redirect into a veth
/// only lands when the peer runs NAPI: GRO on, or an XDP program attached.
pub fn enable_gro(ns: &NetNs, dev: &str) {
    run_ok(ns.command("ethtool").args(["-K", dev, "gro", "on"]));
}
