//! Network namespaces and veth pairs as RAII guards, ways to run code and
//! programs inside a namespace, and names unique to a process so parallel
//! tests and runs never collide. Used by `splitter demo`, the tests and the
//! benches.
//!
//! Dropping a [`NetNs`] deletes it, and with it every veth end inside it, even
//! when the caller is unwinding from a panic.

use std::{
    ffi::OsStr,
    fs::File,
    net::IpAddr,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{setns, CloneFlags};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("could not start `{cmd}`: {source} (is it installed? `cargo xtask bootstrap` installs it)")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("no {what} in the output of `ip link show dev {dev}`: {out}")]
    Unexpected { what: &'static str, dev: String, out: String },
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (`<prefix><pid><n>` in hex),
/// short enough for an interface name with a one-letter suffix.
pub fn unique_name(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:x}{:x}", std::process::id() & 0xff_ffff, n & 0xfff);
    assert!(name.len() <= 14, "name {name} too long for an interface; use a shorter prefix");
    name
}

fn render(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(OsStr::to_string_lossy).collect::<Vec<_>>().join(" ")
}

/// Runs `cmd`, turning a failure into an error that carries its stderr.
pub fn run_ok(cmd: &mut Command) -> Result<Output, NetnsError> {
    let out = cmd.output().map_err(|source| NetnsError::Spawn { cmd: render(cmd), source })?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            cmd: render(cmd),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// A named network namespace (`/run/netns/NAME`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates namespace `name` with loopback up. The caller picks a name no
    /// one else uses.
    pub fn new(name: impl Into<String>) -> Result<NetNs, NetnsError> {
        let name = name.into();
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "dev", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, for `setns` and `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME ARGS...` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let out = run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Adds `addr/prefix` to `dev`; IPv6 addresses skip duplicate address
    /// detection so they are usable at once.
    pub fn addr(&self, dev: &str, addr: IpAddr, prefix: u8) -> Result<(), NetnsError> {
        let cidr = format!("{addr}/{prefix}");
        let mut args = vec!["addr", "add", &cidr, "dev", dev];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// Sets a sysctl inside the namespace, e.g. `net.ipv4.ip_forward=1`.
    pub fn sysctl(&self, key_value: &str) -> Result<(), NetnsError> {
        run_ok(self.command("sysctl").args(["-q", "-w", key_value])).map(drop)
    }

    /// A command that runs in this namespace's network stack but keeps the
    /// host's mounts (the host's bpffs stays visible, unlike `ip netns exec`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        cmd
    }

    /// Runs `f` on a thread that entered this namespace. Sockets created in `f`
    /// belong to the namespace and can be returned and used from any thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
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
    pub fn has_xdp(&self, dev: &str) -> Result<bool, NetnsError> {
        let out = self.ip(&["-details", "link", "show", "dev", dev])?;
        Ok(out.contains("prog/xdp"))
    }

    /// The MAC address of `dev`, from `ip link`.
    pub fn mac(&self, dev: &str) -> Result<[u8; 6], NetnsError> {
        let out = self.ip(&["-o", "link", "show", "dev", dev])?;
        let unexpected =
            || NetnsError::Unexpected { what: "link/ether address", dev: dev.to_owned(), out: out.clone() };
        let mac = out.split("link/ether ").nth(1).and_then(|r| r.split_whitespace().next()).ok_or_else(unexpected)?;
        let bytes: Vec<u8> =
            mac.split(':').map(|h| u8::from_str_radix(h, 16)).collect::<Result<_, _>>().map_err(|_| unexpected())?;
        bytes.try_into().map_err(|_| unexpected())
    }

    /// Turns GRO on for `dev` (ethtool). An XDP redirect into a veth lands only
    /// when the veth's peer runs NAPI: GRO on, or an XDP program attached.
    pub fn enable_gro(&self, dev: &str) -> Result<(), NetnsError> {
        run_ok(self.command("ethtool").args(["-K", dev, "gro", "on"])).map(drop)
    }
}

impl NetNs {
    /// Turns off TX checksum offload (and so TSO) on `dev`. Packets a host
    /// sends over veth otherwise carry a partial checksum that the receiver
    /// completes; an XDP redirect drops that state and the frame arrives with
    /// a bad checksum. Real NICs deliver full checksums and need nothing.
    pub fn disable_tx_offload(&self, dev: &str) -> Result<(), NetnsError> {
        run_ok(self.command("ethtool").args(["-K", dev, "tx", "off"])).map(drop)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Errors ignored: a panic in drop while unwinding would abort.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Creates a veth pair: `a` in `ns_a`, `b` in `ns_b`, both up. It goes away
/// with either namespace.
pub fn veth(ns_a: &NetNs, a: &str, ns_b: &NetNs, b: &str) -> Result<(), NetnsError> {
    ns_a.ip(&["link", "add", "name", a, "type", "veth", "peer", "name", b, "netns", ns_b.name()])?;
    ns_a.ip(&["link", "set", "dev", a, "up"])?;
    ns_b.ip(&["link", "set", "dev", b, "up"])?;
    Ok(())
}
