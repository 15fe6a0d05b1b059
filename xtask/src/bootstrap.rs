//! Installs what building and testing splitter needs on a Debian machine of
//! the supported kind, checking first so a second run does nothing:
//! the nightly toolchain with rust-src and clippy (the eBPF crate), LLVM 22 dev
//! packages and bpf-linker built against them, and the tools the tests drive.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// bpf-linker release known to work with LLVM 22 and aya 0.14 here.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages: LLVM for bpf-linker, protoc for the etcd client's
/// generated gRPC code, then the test and demo tools (ip/netns, ethtool for
/// veth GRO, nsenter, sysctl, etcd and etcdctl for the shared-store tests).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "protobuf-compiler",
    "iproute2",
    "ethtool",
    "util-linux",
    "procps",
    "etcd-server",
    "etcd-client",
];

/// Peers the benchmarks measure against (Debian packages).
const BENCH_PACKAGES: &[&str] = &["haproxy", "nftables", "nginx"];

pub fn run() -> Result<()> {
    nightly()?;
    apt(APT_PACKAGES)?;
    bpf_linker()?;
    Ok(())
}

/// What `cargo xtask bench` needs beyond [`run`]: the peers it compares with.
pub fn bench_tools() -> Result<()> {
    apt(BENCH_PACKAGES)
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("bootstrap: {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is required (the eBPF crate builds with the nightly toolchain)")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run_cmd(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .unwrap_or_default();
    let missing: Vec<&str> = ["rust-src", "clippy", "rustfmt"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if !missing.is_empty() {
        run_cmd(Command::new("rustup").args(["component", "add", "--toolchain", "nightly"]).args(&missing))?;
    }
    Ok(())
}

fn apt(packages: &[&'static str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}; run `sudo -E cargo xtask bootstrap` to install them");
    }
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn bpf_linker() -> Result<()> {
    if let Some(v) = output(Command::new("bpf-linker").arg("--version")) {
        if v.contains(BPF_LINKER_VERSION) {
            return Ok(());
        }
        eprintln!("bootstrap: found {}, want bpf-linker {BPF_LINKER_VERSION}", v.trim());
    }
    run_cmd(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
            .args(["--no-default-features", "--features", "llvm-22"])
            // bpf-linker's build finds LLVM through LLVM_PREFIX (else the first
            // llvm-config on PATH, which may be another version); llvm-sys
            // through LLVM_SYS_221_PREFIX.
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX),
    )?;
    if output(Command::new("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
