//! Endpoint health's cost and speed, run by `cargo xtask bench` (root),
//! with the release `splitter` binary on the demo topology:
//!
//! * ejection time: from killing an endpoint's server to the agent having it
//!   out of service (its tables swapped), p50/p99 over 20 trials, with
//!   checks every 200 ms and `unhealthy_after: 2`;
//! * the agent's CPU and RSS while checking 1,008 endpoints (16 services of
//!   63) every second, beside the same agent and services without checks,
//!   measured in the same run.
//!
//! Writes `target/bench/health.md`.

use std::{
    fmt::Write as _,
    net::{Ipv6Addr, SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use splitter_testkit::{
    agent_process::AgentProcess,
    config::Service,
    netns::unique_name,
    serve::{serve_tcp, serve_tcp_stoppable},
    topology::{vip, Topology, BLUE},
};
use splitter_tests::{agent::release_bin, load::percentile, process_cpu, rss_kib};
use splitter_user::control::{request, Request};

const TRIALS: usize = 20;
const SERVICES: u16 = 16;
const PER_SERVICE: u16 = 63;
const IDLE: Duration = Duration::from_secs(20);

fn blue(port: u16) -> SocketAddr {
    SocketAddr::from((BLUE, port))
}

/// Whether the agent has `endpoint` of `service` up.
fn up(agent: &AgentProcess, service: &str, endpoint: SocketAddr) -> Option<bool> {
    let info = request(&agent.control_socket, &Request::Status).ok()?.agent?;
    info.health.get(service)?.endpoints.iter().find(|e| e.endpoint == endpoint).map(|e| e.up)
}

/// Waits until `endpoint` is `want` (up or down), polling every 2 ms; the time it took.
fn until(agent: &AgentProcess, endpoint: SocketAddr, want: bool, limit: Duration) -> Duration {
    let t = Instant::now();
    while up(agent, "shop", endpoint) != Some(want) {
        assert!(
            t.elapsed() < limit,
            "{endpoint} not {} within {limit:?}:\n{}",
            if want { "up" } else { "down" },
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    t.elapsed()
}

/// Listeners on `ports` in `ns`, accepted and closed by one thread (a
/// health check connects and closes).
fn listeners(ns: &splitter_testkit::netns::NetNs, ports: impl Iterator<Item = u16>) {
    let all: Vec<TcpListener> = ports
        .map(|p| {
            let l = ns.run(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, p))).expect("listen");
            l.set_nonblocking(true).expect("nonblocking");
            l
        })
        .collect();
    std::thread::spawn(move || loop {
        for l in &all {
            while let Ok((c, _)) = l.accept() {
                drop(c);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    });
}

/// CPU (ms per second) and RSS (KiB) of an agent serving `config`, idle but
/// for its checks, over [`IDLE`] after a settling second.
fn idle_cost(bin: &std::path::Path, topo: &Topology, config: &str) -> (f64, u64) {
    let agent = AgentProcess::start_unique(bin, &topo.lb, "spb", config, &[]).unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(2));
    let pid = agent.pid().expect("pid");
    let (cpu0, t0) = (process_cpu(pid), Instant::now());
    std::thread::sleep(IDLE);
    let cpu = (process_cpu(pid) - cpu0).as_secs_f64() * 1e3 / t0.elapsed().as_secs_f64();
    (cpu, rss_kib(pid))
}

fn main() {
    splitter_tests::require_root("the health benchmark");
    let bin = release_bin();
    let topo = Topology::build(&unique_name("spb")).expect("topology");
    serve_tcp(&topo.blue, 8080, "blue-a").expect("blue-a");

    // Ejection time.
    let shop = Service::tcp(vip(80))
        .version("blue", [blue(8080), blue(8081)])
        .weights(&[("blue", 1)])
        .with("health: { interval: 200ms, timeout: 100ms, unhealthy_after: 2, healthy_after: 1 }");
    let config = Topology::config().service("shop", shop).to_string();
    let agent = AgentProcess::start_unique(&bin, &topo.lb, "spb", &config, &[]).unwrap_or_else(|e| panic!("{e}"));
    let mut eject = Vec::new();
    let mut back = Vec::new();
    for trial in 0..TRIALS {
        let mut server = serve_tcp_stoppable(&topo.blue, 8081, "blue-b").expect("blue-b");
        back.push(until(&agent, blue(8081), true, Duration::from_secs(5)).as_secs_f64() * 1e3);
        // Kill it at points spread over the check interval.
        std::thread::sleep(Duration::from_millis(50 + (trial as u64 * 37) % 200));
        server.stop();
        eject.push(until(&agent, blue(8081), false, Duration::from_secs(5)).as_secs_f64() * 1e3);
    }
    drop(agent);

    // 1,008 checked endpoints at 1 s, beside the same services unchecked.
    listeners(&topo.blue, 20_000..20_000 + SERVICES * PER_SERVICE);
    let fleet = |checked: bool| {
        (0..SERVICES).fold(Topology::config(), |c, s| {
            let eps = (0..PER_SERVICE).map(|i| blue(20_000 + s * PER_SERVICE + i));
            let svc = Service::tcp(vip(1000 + s)).version("blue", eps).weights(&[("blue", 1)]);
            c.service(
                &format!("s{s}"),
                if checked { svc.with("health: { interval: 1s, timeout: 500ms }") } else { svc },
            )
        })
    };
    let (cpu_off, rss_off) = idle_cost(&bin, &topo, &fleet(false).to_string());
    let (cpu_on, rss_on) = idle_cost(&bin, &topo, &fleet(true).to_string());
    let endpoints = SERVICES * PER_SERVICE;

    let mut md = String::new();
    writeln!(md, "### Endpoint health (release binary)\n").unwrap();
    writeln!(md, "| measure | p50 | p99 | max |").unwrap();
    writeln!(md, "|---|---|---|---|").unwrap();
    for (what, v) in [
        ("server killed → endpoint out of service (interval 200 ms, unhealthy_after 2)", &eject),
        ("server back → endpoint in service (healthy_after 1)", &back),
    ] {
        let max = v.iter().copied().fold(0.0, f64::max);
        writeln!(
            md,
            "| {what} | {:.0} ms | {:.0} ms | {max:.0} ms |",
            percentile(v.clone(), 0.5),
            percentile(v.clone(), 0.99)
        )
        .unwrap();
    }
    writeln!(
        md,
        "\n{TRIALS} trials. Expected: between `unhealthy_after` × interval after the last passed check and one interval more (200–600 ms here), since a kill falls anywhere in the interval.\n"
    )
    .unwrap();
    writeln!(md, "| agent with {SERVICES} l4 services, {endpoints} endpoints | CPU | RSS |").unwrap();
    writeln!(md, "|---|---|---|").unwrap();
    writeln!(md, "| no checks (baseline) | {:.2} ms/s | {:.1} MiB |", cpu_off, rss_off as f64 / 1024.0).unwrap();
    writeln!(
        md,
        "| TCP checks every 1 s | {:.2} ms/s ({:.1} µs per check) | {:.1} MiB ({:+.1} MiB) |",
        cpu_on,
        (cpu_on - cpu_off).max(0.0) * 1e3 / f64::from(endpoints),
        rss_on as f64 / 1024.0,
        (rss_on as f64 - rss_off as f64) / 1024.0
    )
    .unwrap();
    writeln!(md, "\nCPU over {}s idle but for the checks, from /proc of the agent.", IDLE.as_secs()).unwrap();
    splitter_tests::report::write_md("health", &md);
    splitter_tests::report::write_headline(
        "health",
        &[format!(
            "Health: a killed endpoint is out of service {:.0} ms (p50; p99 {:.0} ms) after its server dies with 200 ms checks; checking {endpoints} endpoints every second costs the agent {:.1} ms of CPU per second and {:+.1} MiB.",
            percentile(eject.clone(), 0.5),
            percentile(eject.clone(), 0.99),
            (cpu_on - cpu_off).max(0.0),
            (rss_on as f64 - rss_off as f64) / 1024.0
        )],
    );
}
