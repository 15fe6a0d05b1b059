//! Control-plane cost, run by `cargo xtask bench` (root): how long a runtime
//! change takes from the CLI call until the data path acts on it, and the
//! agent's memory. Uses the release `splitter` binary and the demo topology.
//!
//! * apply latency: `splitter weight` (the real CLI process) until it returns
//!   (the agent answers after the kernel table is swapped);
//! * flip latency: `splitter flip` until the first new connection lands on
//!   the new version;
//! * RSS of the agent idle with 1 service and with 100 services.
//!
//! Writes `target/bench/control.md`.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use splitter_testkit::{
    agent_process::AgentProcess,
    netns::unique_name,
    serve::{ask_version, serve_tcp},
    topology::{numbered_services, Topology},
    wait::wait_until_every,
};
use splitter_tests::{agent::release_bin, load::percentile, rss_kib};

const CHANGES: usize = 200;

fn main() {
    splitter_tests::require_root("the control-plane benchmark");
    let bin = release_bin();
    let topo = Topology::build(&unique_name("spb")).expect("topology");
    for (ns, name) in topo.backends() {
        serve_tcp(ns, 8080, name).unwrap();
    }
    let start = |services: u16| {
        let config = numbered_services(Topology::config(), services).to_string();
        AgentProcess::start_unique(&bin, &topo.lb, "spb", &config, &[]).unwrap_or_else(|e| panic!("{e}"))
    };
    let mut agent = start(100);
    // Part of the measure: RSS once the agent has been idle for a second.
    std::thread::sleep(Duration::from_secs(1));
    let rss100 = rss_kib(agent.pid().expect("pid"));

    let cli = |args: &[&str]| {
        let t = Instant::now();
        let out = Command::new(&bin).args(args).arg("--socket").arg(&agent.control_socket).output().expect("cli");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        t.elapsed()
    };
    let mut apply = Vec::new();
    for i in 0..CHANGES {
        let w = format!("green={}", 1 + i % 99);
        apply.push(cli(&["weight", "s0", &w]).as_secs_f64() * 1e3);
    }
    let vip: SocketAddr = "203.0.113.10:80".parse().unwrap();
    let mut flip = Vec::new();
    for i in 0..CHANGES {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let t = Instant::now();
        cli(&["flip", "s0", "--to", to]);
        // New connections back to back (no pause: the time is the measure).
        let answer = || {
            let c = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            ask_version(&c).expect("answer")
        };
        let what = format!("flip {i} to {to} to take effect");
        topo.client
            .run(|| wait_until_every(&what, Duration::from_secs(5), Duration::ZERO, answer, |v| v == to))
            .unwrap_or_else(|e| panic!("{e}"));
        let landed = t.elapsed();
        flip.push(landed.as_secs_f64() * 1e3);
    }
    drop(agent);

    agent = start(1);
    // As above: idle for a second.
    std::thread::sleep(Duration::from_secs(1));
    let rss1 = rss_kib(agent.pid().expect("pid"));
    drop(agent);

    let mut md = String::new();
    writeln!(md, "### Control plane (release binary, {CHANGES} changes each)\n").unwrap();
    writeln!(md, "| measure | p50 | p99 | max | target |").unwrap();
    writeln!(md, "|---|---|---|---|---|").unwrap();
    for (what, v, target) in [
        ("`splitter weight` call → table swapped (CLI process included)", &apply, "p99 ≤ 50 ms"),
        ("`splitter flip` call → first new connection on the new version", &flip, "p99 ≤ 50 ms"),
    ] {
        let max = v.iter().copied().fold(0.0, f64::max);
        writeln!(
            md,
            "| {what} | {:.1} ms | {:.1} ms | {max:.1} ms | {target} |",
            percentile(v.clone(), 0.5),
            percentile(v.clone(), 0.99)
        )
        .unwrap();
    }
    writeln!(
        md,
        "\nAgent RSS: {:.1} MiB idle with 1 service, {:.1} MiB with 100 services (target ≤ 30 MB). The weight and flip changes above ran with all 100 services live.",
        rss1 as f64 / 1024.0,
        rss100 as f64 / 1024.0
    )
    .unwrap();
    splitter_tests::report::write_md("control", &md);
    splitter_tests::report::write_headline(
        "control",
        &[format!(
            "Control plane: a weight change is live {:.1} ms (p99) after the CLI call, a flip {:.1} ms (target ≤ 50 ms), with 100 services in a {:.1} MiB agent.",
            percentile(apply.clone(), 0.99),
            percentile(flip.clone(), 0.99),
            rss100 as f64 / 1024.0
        )],
    );
}
