//! Installs what building and testing splitter needs on a Debian machine of
//! the supported kind, checking first so a second run does nothing:
//! the nightly toolchain with rust-src and clippy (the eBPF crate), LLVM 22 dev
//! packages and bpf-linker built against them, and the tools the tests drive.
//! Then it proves each piece works (a package that was requested is not yet a
//! tool that runs) and fails naming the missing piece and what provides it.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// bpf-linker release known to work with LLVM 22 and aya 0.14 here.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages: LLVM for bpf-linker, protoc and the well-known `.proto`
/// files (`google/protobuf/descriptor.proto`, `struct.proto`: libprotobuf-dev)
/// for the etcd client's generated gRPC code, then the test and demo tools
/// (ip/netns, ethtool for veth GRO, nsenter, sysctl, etcd and etcdctl for the
/// shared-store tests, openssl for their certificates, prometheus for the
/// release-analysis tests, gzip for the package (dpkg-deb is Debian's own),
/// systemd's systemd-analyze to verify its unit, Chromium with its
/// WebDriver server for the dashboard test, and BIRD 2 and FRR for the BGP
/// tests).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "protobuf-compiler",
    "libprotobuf-dev",
    "iproute2",
    "ethtool",
    "util-linux",
    "procps",
    "etcd-server",
    "etcd-client",
    "openssl",
    "prometheus",
    "gzip",
    "systemd",
    "chromium",
    "chromium-driver",
    "bird2",
    "frr",
];

/// Peers the benchmarks measure against and their load generators (Debian
/// packages): wrk (HTTP/1.1 and HTTPS keep-alive load) and h2load from
/// nghttp2-client (h2c load, gRPC-framed POSTs) for the L7 benches, and perf
/// (linux-perf) for the L7 bench's profile.
const BENCH_PACKAGES: &[&str] = &["haproxy", "nftables", "nginx", "wrk", "nghttp2-client", "linux-perf"];

pub fn run() -> Result<()> {
    nightly()?;
    apt(APT_PACKAGES)?;
    bpf_linker()?;
    verify(&checks())
}

/// What `cargo xtask bench` needs beyond [`run`]: the peers it compares with
/// and the load generators.
pub fn bench_tools() -> Result<()> {
    apt(BENCH_PACKAGES)?;
    verify(&[
        Check::runs("haproxy", &["-v"], "Debian package haproxy"),
        Check::runs("nft", &["--version"], "Debian package nftables"),
        Check::runs("nginx", &["-v"], "Debian package nginx"),
        // `wrk -v` prints its version and usage, and exits 1.
        Check::custom("`wrk`", "Debian package wrk", || match Command::new("wrk").arg("-v").output() {
            Ok(o) if String::from_utf8_lossy(&o.stdout).starts_with("wrk ") => Ok(()),
            Ok(o) => Err(format!("`wrk -v` printed no version ({}): {}", o.status, last_line(&o.stderr))),
            Err(e) => Err(format!("cannot run `wrk`: {e}")),
        }),
        Check::runs("h2load", &["--version"], "Debian package nghttp2-client"),
        // The L7 bench's profile (`SPLITTER_BENCH_PROFILE`).
        Check::runs("perf", &["--version"], "Debian package linux-perf"),
    ])
}

/// cargo-fuzz release known to work here (libFuzzer through libfuzzer-sys 0.4).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What `cargo xtask fuzz` needs beyond [`run`]: cargo-fuzz (runs on the
/// nightly toolchain [`run`] installs).
pub fn fuzz_tools() -> Result<()> {
    let installed = output(Command::new("cargo").args(["+nightly", "fuzz", "--version"]));
    if !installed.as_deref().is_some_and(|v| v.contains(CARGO_FUZZ_VERSION)) {
        run_cmd(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
            "--force",
        ]))?;
    }
    verify(&[
        Check::custom("`cargo +nightly fuzz`", "cargo install cargo-fuzz (runs on the nightly toolchain)", || {
            probe_cmd(Command::new("cargo").args(["+nightly", "fuzz", "--version"]))
        }),
        // libfuzzer-sys's build script compiles libFuzzer (C++).
        Check::runs("c++", &["--version"], "Debian package g++ (build-essential)"),
    ])
}

/// One thing the build or the tests need, and how to prove it works.
struct Check {
    what: String,
    /// What installs it, for the error.
    provided_by: &'static str,
    probe: Probe,
}

enum Probe {
    /// The command runs and exits 0.
    Runs(&'static str, &'static [&'static str]),
    /// A custom proof; `Err` says what went wrong.
    Custom(fn() -> Result<(), String>),
}

impl Check {
    fn runs(cmd: &'static str, args: &'static [&'static str], provided_by: &'static str) -> Check {
        Check { what: format!("`{cmd}`"), provided_by, probe: Probe::Runs(cmd, args) }
    }

    fn custom(what: &str, provided_by: &'static str, probe: fn() -> Result<(), String>) -> Check {
        Check { what: what.to_owned(), provided_by, probe: Probe::Custom(probe) }
    }

    fn probe(&self) -> Result<(), String> {
        match &self.probe {
            Probe::Runs(cmd, args) => match Command::new(cmd).args(*args).stdout(Stdio::null()).output() {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!("`{cmd} {}` failed ({}): {}", args.join(" "), o.status, last_line(&o.stderr))),
                Err(e) => Err(format!("cannot run `{cmd}`: {e}")),
            },
            Probe::Custom(f) => f(),
        }
    }
}

/// Everything `cargo xtask test` and `demo` need, each proven to work.
fn checks() -> Vec<Check> {
    vec![
        Check::custom(
            "the nightly toolchain's rust-src (the eBPF crate builds core itself)",
            "rustup component add rust-src --toolchain nightly",
            nightly_rust_src,
        ),
        Check::custom(
            "protoc with the well-known types (google/protobuf/descriptor.proto, struct.proto)",
            "Debian packages protobuf-compiler and libprotobuf-dev",
            protoc_well_known_types,
        ),
        Check::custom(
            "bpf-linker linking a BPF object (LLVM 22)",
            "cargo install bpf-linker --no-default-features --features llvm-22 (LLVM from Debian package llvm-22-dev)",
            bpf_linker_links,
        ),
        Check::custom(
            "free disk space for the build (a clean `cargo xtask test` writes about 3 GiB, fuzzing 2 more)",
            "room on the filesystem of the target directory: remove old build trees (`cargo clean`)",
            free_disk,
        ),
        Check::runs("ip", &["-V"], "Debian package iproute2"),
        Check::runs("ethtool", &["--version"], "Debian package ethtool"),
        Check::runs("nsenter", &["--version"], "Debian package util-linux"),
        Check::runs("prlimit", &["--version"], "Debian package util-linux"),
        Check::runs("sysctl", &["--version"], "Debian package procps"),
        Check::runs("etcd", &["--version"], "Debian package etcd-server"),
        Check::runs("etcdctl", &["version"], "Debian package etcd-client"),
        Check::runs("openssl", &["version"], "Debian package openssl"),
        Check::runs("prometheus", &["--version"], "Debian package prometheus"),
        Check::runs("dpkg-deb", &["--version"], "Debian package dpkg"),
        Check::runs("gzip", &["--version"], "Debian package gzip"),
        Check::runs("systemd-analyze", &["--version"], "Debian package systemd"),
        Check::custom(
            "headless Chromium running a page's script (as root: --no-sandbox)",
            "Debian package chromium",
            chromium_runs_scripts,
        ),
        Check::runs("chromedriver", &["--version"], "Debian package chromium-driver"),
        Check::custom(
            "BIRD 2 parsing the shipped example (packaging/bgp/bird.conf)",
            "Debian package bird2",
            bird_parses,
        ),
        Check::custom(
            "FRR's bgpd parsing the shipped example (packaging/bgp/frr.conf)",
            "Debian package frr",
            frr_parses,
        ),
    ]
}

/// Runs every check and fails listing each one that does not work.
fn verify(checks: &[Check]) -> Result<()> {
    let failed: Vec<String> = checks
        .iter()
        .filter_map(|c| c.probe().err().map(|why| format!("  - {}: {why}\n    provided by: {}", c.what, c.provided_by)))
        .collect();
    if failed.is_empty() {
        eprintln!("bootstrap: verified {} tools and files", checks.len());
        return Ok(());
    }
    bail!("bootstrap: installed, but these do not work:\n{}", failed.join("\n"))
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned()
}

/// A scratch directory for one probe, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Result<Scratch, String> {
        let dir = std::env::temp_dir().join(format!("splitter-bootstrap-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }

    fn write(&self, file: &str, text: &str) -> Result<std::path::PathBuf, String> {
        let path = self.0.join(file);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd`; `Err` carries the last line it printed on failure.
/// Space the build and the tests need free where they build: CI once ran
/// out of disk part-way through the build, which said nothing about why.
const MIN_FREE_GIB: u64 = 6;

fn free_disk() -> Result<(), String> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    // The target directory may not exist yet: ask about its nearest ancestor.
    let existing = dir.ancestors().find(|d| d.exists()).ok_or(format!("no ancestor of {} exists", dir.display()))?;
    let path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} has a NUL byte", existing.display()))?;
    // SAFETY: a valid C string and a zeroed out-parameter the call fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(format!("statvfs {}: {}", existing.display(), std::io::Error::last_os_error()));
    }
    let free_gib = st.f_bavail as u64 * st.f_frsize as u64 / (1 << 30);
    if free_gib < MIN_FREE_GIB {
        return Err(format!("{free_gib} GiB free at {}, the build needs {MIN_FREE_GIB} GiB", existing.display()));
    }
    Ok(())
}

fn probe_cmd(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{:?} failed ({}): {}", cmd.get_program(), out.status, last_line(&out.stderr)))
    }
}

fn nightly_rust_src() -> Result<(), String> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .ok_or("`rustc +nightly --print sysroot` failed: no nightly toolchain")?;
    let core = std::path::Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.exists() {
        Ok(())
    } else {
        Err(format!("{} is missing", core.display()))
    }
}

/// What etcd-client's build does: protoc compiles files that import the
/// well-known types, which come from libprotobuf-dev, not protobuf-compiler.
fn protoc_well_known_types() -> Result<(), String> {
    let dir = Scratch::new("protoc")?;
    let proto = dir.write(
        "probe.proto",
        "syntax = \"proto3\";\nimport \"google/protobuf/descriptor.proto\";\nimport \"google/protobuf/struct.proto\";\n\
         extend google.protobuf.FieldOptions { google.protobuf.Value probe = 50001; }\n",
    )?;
    probe_cmd(
        Command::new("protoc")
            .arg(format!("--proto_path={}", dir.0.display()))
            .arg(format!("--descriptor_set_out={}", dir.0.join("probe.pb").display()))
            .arg(&proto),
    )
}

/// Links a tiny LLVM module for the BPF target, as building the eBPF crate
/// does, and checks that the result is a BPF ELF object.
fn bpf_linker_links() -> Result<(), String> {
    let dir = Scratch::new("bpf-linker")?;
    let ll = dir.write(
        "probe.ll",
        "target datalayout = \"e-m:e-p:64:64-i64:64-i128:128-n32:64-S128\"\ntarget triple = \"bpfel\"\n\
         define i32 @probe(ptr %ctx) #0 section \"xdp\" { ret i32 2 }\n\
         attributes #0 = { noinline nounwind }\n",
    )?;
    let bc = dir.0.join("probe.bc");
    probe_cmd(Command::new(format!("{LLVM_PREFIX}/bin/llvm-as")).arg(&ll).arg("-o").arg(&bc))?;
    let obj = dir.0.join("probe.o");
    probe_cmd(Command::new("bpf-linker").args(["--target", "bpfel", "--export", "probe", "-o"]).arg(&obj).arg(&bc))?;
    let elf = std::fs::read(&obj).map_err(|e| format!("bpf-linker wrote no object: {e}"))?;
    // ELF magic, then e_machine (offset 18, little endian) 247 = EM_BPF.
    if elf.len() > 20 && elf.starts_with(b"\x7fELF") && u16::from_le_bytes([elf[18], elf[19]]) == 247 {
        Ok(())
    } else {
        Err(format!("{} is not a BPF ELF object", obj.display()))
    }
}

/// BIRD 2 runs and accepts the example config the package ships (`-p`:
/// parse only).
fn bird_parses() -> Result<(), String> {
    let conf = crate::workspace_root().join("packaging/bgp/bird.conf");
    probe_cmd(Command::new("bird").arg("-p").arg("-c").arg(&conf))
}

/// FRR's bgpd checks the example config the package ships (`-C`: it
/// exits 0 either way, so any word it says is a refusal).
fn frr_parses() -> Result<(), String> {
    let shipped = crate::workspace_root().join("packaging/bgp/frr.conf");
    let text = std::fs::read_to_string(&shipped).map_err(|e| format!("reading {}: {e}", shipped.display()))?;
    // bgpd reads it as user frr, after dropping root: a checkout under a
    // private directory (mktemp -d is 0700) is not readable to it, so it
    // reads a copy in a scratch directory that is.
    let dir = Scratch::new("frr")?;
    let conf = dir.write("frr.conf", &text)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let open = |p: &std::path::Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("chmod {}: {e}", p.display()))
        };
        open(&dir.0, 0o755)?;
        open(&conf, 0o644)?;
    }
    let out = Command::new("/usr/lib/frr/bgpd")
        .arg("-C")
        .arg("-f")
        .arg(&conf)
        .output()
        .map_err(|e| format!("cannot run /usr/lib/frr/bgpd: {e}"))?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("bgpd -C refused {} (as {}): {}", shipped.display(), conf.display(), said.trim()))
    }
}

/// Headless Chromium loads a page whose script changes it, and prints the
/// changed page (what the dashboard test needs of it, short of WebDriver).
fn chromium_runs_scripts() -> Result<(), String> {
    let dir = Scratch::new("chromium")?;
    let page = "data:text/html,<p id=p>static</p><script>document.getElementById('p').textContent='scripted'</script>";
    let out = Command::new("timeout")
        .args(["60", "chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", dir.0.display()))
        .arg(page)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run `chromium`: {e}"))?;
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("<p id=\"p\">scripted</p>") {
        Ok(())
    } else {
        Err(format!("headless chromium did not run the page's script ({}): {}", out.status, last_line(&out.stderr)))
    }
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
