//! Project tasks, run as `cargo xtask <task>`: bootstrap the toolchain, lint,
//! test, demo. Each task installs what it needs first, so a fresh machine of
//! the supported kind needs nothing but this repository and cargo.

mod bootstrap;
mod chart;
mod fuzz;
mod package;

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "splitter's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain and tools (nightly rust-src, LLVM 22, bpf-linker,
    /// iproute2, ethtool...). A no-op when everything is already there.
    Bootstrap,
    /// Bootstrap, then run every test tier: host unit tests, BPF_PROG_TEST_RUN
    /// fixtures and network-namespace end-to-end tests (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// rustfmt check and clippy (-D warnings) on the host crates (as shipped,
    /// as the tests build them, and with every feature) and the eBPF crate.
    Lint,
    /// Lint, test, a 2-minute soak, then a short fuzzing pass: what CI runs.
    Ci,
    /// Bootstrap, then run the benchmarks (needs root): XDP program cost by
    /// BPF_PROG_TEST_RUN beside an empty-program floor, control-plane apply and
    /// flip latency, agent RSS, the L7 proxy against direct and HAProxy, and
    /// the L7 proxy over TLS and gRPC against HAProxy and nginx, and L4
    /// throughput with and without mirroring. Installs the peers (haproxy,
    /// nginx, nftables) and load generators (wrk, h2load). Writes
    /// target/bench/*.md.
    Bench,
    /// Bootstrap, then run every cargo-fuzz target (or those named) for a
    /// bounded time each, from the committed seeds and the corpus earlier
    /// runs grew (needs root: the packet target loads the XDP program).
    /// Prints the inputs run per target; fails at the first crash.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// libFuzzer sanitizer: none (fastest; Rust code is memory-safe
        /// outside its few `unsafe` blocks), address, leak...
        #[arg(long, default_value = "none")]
        sanitizer: String,
        /// Targets to run (framing, answer, route, cli_values, config, packet); all
        /// when none is named.
        targets: Vec<String>,
    },
    /// Bootstrap, then run the real agent under steady L4 and L7 traffic for
    /// N minutes while it is flipped, reloaded, rolled out and restarted
    /// (needs root). Reports failures, memory and descriptors over time and
    /// the flow table's fill.
    Soak {
        /// How long, in minutes.
        #[arg(long, default_value_t = 2)]
        minutes: u64,
    },
    /// Build the Debian package (target/package/splitter_VERSION_ARCH.deb):
    /// the release binary, the systemd unit, the default config, shell
    /// completions and man pages.
    Package,
    /// Bootstrap, build the release binary with the demo (cargo feature
    /// `demo`) and run `splitter demo` (needs root).
    Demo {
        /// Extra arguments for `splitter demo`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Bootstrap => bootstrap::run(),
        Task::Test { args } => test(&args),
        Task::Lint => {
            bootstrap::run()?;
            lint()
        }
        Task::Ci => {
            bootstrap::run()?;
            lint()?;
            test(&[])?;
            soak(CI_SOAK_MINUTES)?;
            bootstrap::fuzz_tools()?;
            fuzz::run(&fuzz::Options { seconds: CI_FUZZ_SECONDS, sanitizer: "none", only: &[] })
        }
        Task::Bench => {
            bootstrap::run()?;
            require_root("the benchmarks (they load XDP programs and create a network namespace)")?;
            bootstrap::bench_tools()?;
            // The control-plane and L7 benches drive the release binary.
            cargo(&["build", "--release", "--package", "splitter-user", "--bin", "splitter"])?;
            // Only this run's results go into BENCHMARKS.md.
            let out = workspace_root().join("target/bench");
            if out.exists() {
                std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
            }
            // The L7 bench profiles splitter with perf for the report (where
            // its CPU goes), unless told otherwise.
            if std::env::var_os("SPLITTER_BENCH_PROFILE").is_none() {
                std::env::set_var("SPLITTER_BENCH_PROFILE", BENCH_PROFILE_SECS);
            }
            let started = std::time::Instant::now();
            for bench in BENCHES {
                cargo(&["bench", "--package", "splitter-tests", "--bench", bench])?;
            }
            write_benchmarks_md(started.elapsed())
        }
        Task::Fuzz { seconds, sanitizer, targets } => {
            bootstrap::run()?;
            bootstrap::fuzz_tools()?;
            require_root("fuzzing (the packet target loads the XDP program)")?;
            fuzz::run(&fuzz::Options { seconds, sanitizer: &sanitizer, only: &targets })
        }
        Task::Package => {
            bootstrap::run()?;
            package::run().map(drop)
        }
        Task::Soak { minutes } => {
            bootstrap::run()?;
            soak(minutes)
        }
        Task::Demo { args } => {
            bootstrap::run()?;
            require_root("the demo")?;
            // The shipped agent has no demo: it needs the testkit, a feature away.
            cargo(&["build", "--release", "--package", "splitter-user", "--bin", "splitter", "--features", "demo"])?;
            let bin = workspace_root().join("target/release/splitter");
            let status = Command::new(&bin)
                .arg("demo")
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            if !status.success() {
                bail!("splitter demo failed ({status})");
            }
            Ok(())
        }
    }
}

fn test(args: &[String]) -> Result<()> {
    bootstrap::run()?;
    require_root("the test suite (tiers 2 and 3 load XDP programs and create network namespaces)")?;
    // The end-to-end tests run the real `splitter` binary: build it first,
    // as the test build builds it (every package's tests: splitter-user's own
    // need the binary, and the tests package turns on its `test-hooks`), so
    // that it is there whatever ARGS select and is not built twice.
    cargo(&["test", "--no-run"])?;
    // The package test installs and removes the .deb this builds.
    package::run()?;
    let mut cmd = vec!["test", "--no-fail-fast"];
    cmd.extend(args.iter().map(String::as_str));
    cargo(&cmd)
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    // The workspace as the tests build it (splitter-user with `test-hooks`)...
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    // ... with every feature (`splitter demo` too) ...
    cargo(&["clippy", "--all-targets", "--all-features", "--", "-D", "warnings"])?;
    // ... and the agent as shipped: no feature, so nothing only a test uses.
    cargo(&["clippy", "--package", "splitter-user", "--all-targets", "--", "-D", "warnings"])?;
    // The fuzz targets (not a default member: cargo fuzz builds them).
    cargo(&["clippy", "--package", "splitter-fuzz", "--all-targets", "--", "-D", "warnings"])?;
    // The eBPF crate only builds for the BPF target on nightly.
    let status = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["+nightly", "clippy", "--package", "splitter-ebpf", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--release", "--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"])
        .env("CARGO_ENCODED_RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\"")
        .status()
        .context("running nightly clippy on splitter-ebpf")?;
    if !status.success() {
        bail!("clippy found problems in splitter-ebpf");
    }
    Ok(())
}

fn require_root(what: &str) -> Result<()> {
    if !bootstrap::is_root() {
        bail!("{what} needs root: run `sudo -E cargo xtask ...`");
    }
    Ok(())
}

/// Minutes of soak in CI: one of each event (flips, reloads, a rollout, a
/// restart); the long runs are `cargo xtask soak --minutes N`.
const CI_SOAK_MINUTES: u64 = 2;

/// The real agent under traffic and churn for `minutes` (tests/src/bin/soak.rs).
fn soak(minutes: u64) -> Result<()> {
    require_root("the soak (it runs the agent in network namespaces)")?;
    cargo(&["build", "--package", "splitter-user", "--bin", "splitter"])?;
    cargo(&["build", "--package", "splitter-tests", "--bin", "soak"])?;
    let root = workspace_root();
    // The soak runs a copy of both binaries: a build meanwhile (the same
    // checkout's tests, say) must not swap the agent's CLI under it.
    let dir = root.join("target/soak");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for bin in ["splitter", "soak"] {
        std::fs::copy(root.join("target/debug").join(bin), dir.join(bin))
            .with_context(|| format!("copying target/debug/{bin} to {}", dir.display()))?;
    }
    let status = Command::new(dir.join("soak"))
        .args(["--minutes", &minutes.to_string()])
        .env("SPLITTER_BIN", dir.join("splitter"))
        .status()
        .context("running the soak")?;
    if !status.success() {
        bail!("the soak failed ({status})");
    }
    Ok(())
}

/// Seconds per fuzz target in CI: a short pass that replays the seeds and
/// explores a little; long runs are `cargo xtask fuzz --seconds N`.
const CI_FUZZ_SECONDS: u64 = 20;

/// Seconds the full bench run's L7 bench profiles splitter for
/// (`SPLITTER_BENCH_PROFILE`).
const BENCH_PROFILE_SECS: &str = "5";

/// The benchmarks `cargo xtask bench` runs, in order; each writes
/// `target/bench/NAME.md`.
const BENCHES: [&str; 9] = ["xdp", "l4", "l7", "l7_tls", "mirror", "control", "health", "store", "bgp"];

/// Puts the latest full run into BENCHMARKS.md: the chart (BENCHMARKS.svg),
/// the machine, kernel, date and command, the benches' headline lines, then
/// each bench's section.
fn write_benchmarks_md(took: std::time::Duration) -> Result<()> {
    let root = workspace_root();
    let out = root.join("target/bench");
    let chart = if chart::draw(&out, &BENCHES, &root.join("BENCHMARKS.svg"))? > 0 {
        "![The headline comparisons: medians with min–max whiskers](BENCHMARKS.svg)\n\n"
    } else {
        ""
    };
    let cmd = |c: &str, a: &[&str]| {
        Command::new(c)
            .args(a)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_default();
    let mut md = format!(
        "# Benchmarks\n\nThe latest full run of `cargo xtask bench` (every scenario, peers in the same run on the same topology, rounds interleaved; medians with min–max). Machines here are shared and noisy: read the ratios, not the absolute numbers.\n\n{chart}- date: {}\n- machine: {} CPUs, {cpu}\n- kernel: {}\n- command: `sudo -E cargo xtask bench` (took {:.1} min)\n\n",
        cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cmd("nproc", &[]),
        cmd("uname", &["-r"]),
        took.as_secs_f64() / 60.0
    );
    let headlines: String =
        BENCHES.iter().filter_map(|b| std::fs::read_to_string(out.join(format!("{b}.headline.md"))).ok()).collect();
    if !headlines.is_empty() {
        md += "## Headline\n\n";
        md += &headlines;
        md += "\n";
    }
    for bench in BENCHES {
        let path = out.join(format!("{bench}.md"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        md += &text;
        md += "\n";
    }
    std::fs::write(root.join("BENCHMARKS.md"), md).context("writing BENCHMARKS.md")?;
    eprintln!("wrote BENCHMARKS.md and BENCHMARKS.svg");
    Ok(())
}

pub(crate) fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
