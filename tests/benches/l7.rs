//! The L7 proxy under load, run by `cargo xtask bench` (root): requests/s and
//! p50/p99 latency through splitter's proxy, directly to the backend, through
//! HAProxy (`mode http`, same thread count) and through splitter with 10 %
//! mirroring, all on the same backend in the same run, rounds interleaved;
//! then the proxies' RSS with 256 open connections.
//!
//! The load generator is a hyper client in the client namespace: `CONNS`
//! keep-alive HTTP/1.1 connections, each sending requests back to back for
//! `SECS` seconds. Client, proxy and backend share this machine's cores, so
//! the absolute numbers are low; the ratios are the point.
//!
//! Writes `target/bench/l7.md`.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use splitter_testkit::{
    agent_process::AgentProcess,
    config::Service,
    http::serve_http,
    netns::{unique_name, NetNs},
    topology::{vip, Topology},
};
use splitter_tests::{
    agent::release_bin,
    load::median,
    peers::{Haproxy, Nginx},
    report::{self, Bar},
    rss_kib,
};

const CONNS: usize = 32;
const SECS: u64 = 3;
/// Open connections at which each proxy's RSS is read.
const RSS_AT: [usize; 2] = [32, 256];

fn rounds() -> usize {
    std::env::var("SPLITTER_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(3)
}

struct Run {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: usize,
}

/// `CONNS` connections sending GET / back to back for `SECS` seconds.
fn load(ns: &NetNs, target: SocketAddr) -> Run {
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
        rt.block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(SECS);
            let mut tasks = Vec::new();
            for _ in 0..CONNS {
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut errors = 0usize;
                    let Ok(stream) = tokio::net::TcpStream::connect(target).await else { return (lat, 1) };
                    let _ = stream.set_nodelay(true);
                    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
                        return (lat, 1);
                    };
                    tokio::spawn(conn);
                    while Instant::now() < deadline {
                        let req = http::Request::get("/")
                            .header("host", target.to_string())
                            .body(Empty::<Bytes>::new())
                            .unwrap();
                        let start = Instant::now();
                        match send.send_request(req).await {
                            Ok(resp) if resp.status().is_success() => {
                                let _ = resp.into_body().collect().await;
                                lat.push(start.elapsed().as_micros() as u32);
                            }
                            _ => {
                                errors += 1;
                                break;
                            }
                        }
                    }
                    (lat, errors)
                }));
            }
            let mut all = Vec::new();
            let mut errors = 0;
            for t in tasks {
                let (lat, e) = t.await.expect("load task");
                all.extend(lat);
                errors += e;
            }
            all.sort_unstable();
            let pct = |p: f64| all.get(((all.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0) as f64;
            Run { rps: all.len() as f64 / SECS as f64, p50_us: pct(0.5), p99_us: pct(0.99), errors }
        })
    })
}

/// Opens `n` keep-alive connections, one request each, and keeps them open
/// while `measure` runs.
fn with_idle_connections<T: Send>(ns: &NetNs, target: SocketAddr, n: usize, measure: impl FnOnce() -> T + Send) -> T {
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
        let senders = rt.block_on(async move {
            let mut held = Vec::new();
            for _ in 0..n {
                let stream = tokio::net::TcpStream::connect(target)
                    .await
                    .unwrap_or_else(|e| panic!("connection {} of {n} to {target}: {e}", held.len()));
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("h1");
                tokio::spawn(conn);
                let req =
                    http::Request::get("/").header("host", target.to_string()).body(Empty::<Bytes>::new()).unwrap();
                let resp = send.send_request(req).await.expect("request");
                let _ = resp.into_body().collect().await;
                held.push(send);
            }
            held
        });
        let out = measure();
        drop(senders);
        drop(rt);
        out
    })
}

fn main() {
    splitter_tests::require_root("the L7 benchmark");
    let bin = release_bin();
    let topo = Topology::build(&unique_name("spl")).expect("topology");
    serve_http(&topo.blue, 8081, "v1").expect("backend");
    serve_http(&topo.green, 8082, "shadow").expect("shadow");
    topo.lb.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]).expect("VIP on lo");
    // One proxy thread each: the machine's other cores carry the client and
    // the backend, and requests/s is then per proxy core.
    let threads = 1;
    // api, and mirrored: 10 % of its requests copied to the shadow and compared.
    let l7 = |port: u16| Service::l7(vip(port)).on_blue("v1", 8081).on_green("shadow", 8082).weights(&[("v1", 1)]);
    let config = Topology::config()
        .service("api", l7(8080))
        .service("mirrored", l7(8088).with("mirror: { version: shadow, percent: 10, compare: true }"));
    let dir = std::env::temp_dir().join(format!("splitter-bench-{}", unique_name("l7")));
    let agent = AgentProcess::start_unique(&bin, &topo.lb, "spl", &config.to_string(), &["--workers", "1"])
        .unwrap_or_else(|e| panic!("{e}"));
    let haproxy = Haproxy::http(
        &topo.lb,
        &dir,
        "203.0.113.10:8090".parse().unwrap(),
        "198.51.100.10:8081".parse().unwrap(),
        threads,
    );

    let nginx = Nginx::start(
        &topo.lb,
        &dir,
        "203.0.113.10:8092".parse().unwrap(),
        "198.51.100.10:8081".parse().unwrap(),
        "203.0.113.10:8093".parse().unwrap(),
        "198.51.100.20:8082".parse().unwrap(),
        10,
    );
    let scenarios: [(&str, SocketAddr); 6] = [
        ("direct to the backend", "198.51.100.10:8081".parse().unwrap()),
        ("splitter proxy", "203.0.113.10:8080".parse().unwrap()),
        ("HAProxy mode http", "203.0.113.10:8090".parse().unwrap()),
        ("nginx (1 worker)", "203.0.113.10:8092".parse().unwrap()),
        ("splitter proxy, 10 % mirrored + compared", "203.0.113.10:8088".parse().unwrap()),
        ("nginx, 10 % mirrored (`mirror`, not compared)", "203.0.113.10:8093".parse().unwrap()),
    ];
    let mut results: Vec<Vec<Run>> = scenarios.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds() {
        for (i, (_, target)) in scenarios.iter().enumerate() {
            results[i].push(load(&topo.client, *target));
        }
        eprintln!("round {}/{} done", round + 1, rounds());
    }
    let agent_pid = agent.pid().expect("agent runs");
    let rss_idle = rss_kib(agent_pid);
    // Per proxy, RSS in KiB with each count of RSS_AT open.
    let rss_at = |target: SocketAddr, rss: &(dyn Fn() -> u64 + Sync)| -> Vec<u64> {
        RSS_AT.iter().map(|n| with_idle_connections(&topo.client, target, *n, rss)).collect()
    };
    let rss_agent = rss_at(scenarios[1].1, &|| rss_kib(agent_pid));
    let rss_haproxy = rss_at(scenarios[2].1, &|| rss_kib(haproxy.0.id()));
    let rss_nginx = rss_at(scenarios[3].1, &|| nginx.rss_kib());

    let mut md = String::new();
    writeln!(
        md,
        "### L7 proxy ({CONNS} keep-alive connections, {SECS} s per run, {} interleaved rounds, median [min–max])\n",
        rounds()
    )
    .unwrap();
    writeln!(md, "| path | requests/s | p50 µs | p99 µs | errors | requests/s vs splitter |").unwrap();
    writeln!(md, "|---|---|---|---|---|---|").unwrap();
    let rps_of = |i: usize| median(results[i].iter().map(|r| r.rps).collect()).0;
    for (i, (name, _)) in scenarios.iter().enumerate() {
        let (rps, lo, hi) = median(results[i].iter().map(|r| r.rps).collect());
        let p50 = median(results[i].iter().map(|r| r.p50_us).collect()).0;
        let p99 = median(results[i].iter().map(|r| r.p99_us).collect()).0;
        let errors: usize = results[i].iter().map(|r| r.errors).sum();
        writeln!(
            md,
            "| {name} | {rps:.0} [{lo:.0}–{hi:.0}] | {p50:.0} | {p99:.0} | {errors} | {:.2}× |",
            rps / rps_of(1)
        )
        .unwrap();
    }
    let p99 = |i: usize| median(results[i].iter().map(|r| r.p99_us).collect()).0;
    writeln!(
        md,
        "\nAdded p99 over direct: splitter {:.0} µs, HAProxy {:.0} µs, nginx {:.0} µs (target ≤ 1,000 µs). splitter vs HAProxy {:.2}×, vs nginx {:.2}× requests/s. Mirroring at 10 % keeps {:.0} % of splitter's unmirrored throughput (target ≥ 85 %; splitter also compares every copy's answer), nginx's `mirror` {:.0} % of its own.",
        p99(1) - p99(0),
        p99(2) - p99(0),
        p99(3) - p99(0),
        rps_of(1) / rps_of(2),
        rps_of(1) / rps_of(3),
        100.0 * rps_of(4) / rps_of(1),
        100.0 * rps_of(5) / rps_of(3)
    )
    .unwrap();
    let mib = |kib: u64| kib as f64 / 1024.0;
    writeln!(
        md,
        "\n| RSS (MiB) | idle | {} open connections | {} open connections |\n|---|---|---|---|",
        RSS_AT[0], RSS_AT[1]
    )
    .unwrap();
    writeln!(md, "| splitter agent | {:.1} | {:.1} | {:.1} |", mib(rss_idle), mib(rss_agent[0]), mib(rss_agent[1]))
        .unwrap();
    writeln!(md, "| HAProxy | — | {:.1} | {:.1} |", mib(rss_haproxy[0]), mib(rss_haproxy[1])).unwrap();
    writeln!(md, "| nginx (master and worker) | — | {:.1} | {:.1} |", mib(rss_nginx[0]), mib(rss_nginx[1])).unwrap();
    writeln!(
        md,
        "\nTarget: splitter ≤ 30 MB with {} connections. Each proxy runs {threads} thread or worker (requests/s is per proxy core); the client and the backend share the machine's other cores. The splitter agent also holds the eBPF data path and the control plane.",
        RSS_AT[1]
    )
    .unwrap();
    report::write_md("l7", &md);
    report::write_headline(
        "l7",
        &[format!(
            "L7 proxy: splitter serves {:.2}× HAProxy's and {:.2}× nginx's requests/s, adds {:.0} µs p99 over direct (HAProxy {:.0}, nginx {:.0}), keeps {:.0} % of its throughput with 10 % mirrored and compared, and holds {:.1} MiB with {} connections open.",
            rps_of(1) / rps_of(2),
            rps_of(1) / rps_of(3),
            p99(1) - p99(0),
            p99(2) - p99(0),
            p99(3) - p99(0),
            100.0 * rps_of(4) / rps_of(1),
            mib(rss_agent[1]),
            RSS_AT[1]
        )],
    );
    // Scenarios 1 and 4 are splitter's (unmirrored and mirrored).
    let bars: Vec<Bar> = scenarios
        .iter()
        .zip(&results)
        .enumerate()
        .map(|(i, ((name, _), runs))| Bar::new(name, i == 1 || i == 4, median(runs.iter().map(|r| r.rps).collect())))
        .collect();
    report::write_chart("l7", &format!("L7 proxy, {CONNS} connections: requests/s"), "requests/s", true, &bars);
    drop(haproxy);
    drop(agent);
}
