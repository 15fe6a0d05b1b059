//! The L7 proxy over plain HTTP, run by `cargo xtask bench` (root).
//! splitter (`--workers 1`: the whole agent on one thread, tokio's current-thread runtime), HAProxy (`mode http`, `nbthread 1`) and nginx
//! (1 worker) proxy to the same origin (an nginx answering 200 from memory)
//! over keep-alive, in the same run, rounds interleaved:
//!
//! 1. keep-alive requests/s at 32 and 256 connections (wrk, one thread)
//!    and CPU µs per request of each proxy's processes; splitter with 10 %
//!    of its requests mirrored to a shadow and compared, nginx with its
//!    `mirror` (not compared);
//! 2. p50/p99 at two fixed rates below saturation (a quarter and a half of
//!    HAProxy's maximum at 32 connections), open loop;
//! 3. RSS idle (splitter with one service) and with 32 and 256 connections
//!    open.
//!
//! Beside them runs a bare proxy made of splitter's parts, doing none of
//! its work ([`splitter_tests::hyper_floor`]): what splitter spends above
//! it is splitter's own layer, what it spends above HAProxy hyper's and
//! tokio's.
//!
//! Issue #23's rules, the method of [`splitter_tests::l7bench`] that the TLS
//! bench shares: each proxy runs alone on CPU 1, wrk, the origins and this
//! process on CPU 0; the generator's direct rate against the best proxy's
//! is reported, and CPU per request comes from `/proc` of the proxy's own
//! processes.
//!
//! With `SPLITTER_BENCH_PROFILE=SECS` (`cargo xtask bench` sets 5 unless
//! it is set) it also profiles splitter under wrk
//! (32 connections) with `perf record -g` for SECS seconds and adds where
//! the time goes to the report (see [`splitter_tests::profile`]).
//!
//! Writes `target/bench/l7.md`.

use std::{fmt::Write as _, net::SocketAddr, process::Command, time::Duration};

use splitter_testkit::{
    agent_process::AgentProcess,
    config::Service,
    netns::unique_name,
    topology::{vip, Topology},
};
use splitter_tests::{
    agent::release_bin,
    hyper_floor::HyperFloor,
    l7bench::wrk,
    l7bench::{
        latency_table, med, open_loop, rounds, rss_table, rss_with_connections, with_open_connections, KeepAlive,
        Latency, Proxy, LOAD_CPU, PACE_TICK, PROXY_CPU,
    },
    load::pin_current_thread,
    peers::{Haproxy, Nginx},
    profile,
    report::{self, Bar},
    Rss,
};

/// Seconds per rate run.
const SECS: u64 = 4;
/// Keep-alive connections of the requests/s runs.
const CONNS: [usize; 2] = [32, 256];
/// Connections of the open-loop latency runs.
const LATENCY_CONNS: usize = 32;
/// The open-loop rates, as shares of HAProxy's maximum at 32 connections:
/// a quarter, where every proxy's core is mostly idle, and a half, where
/// queueing starts to show: on the load side (generator, origin, and the
/// packets' processing), and sooner in a proxy that needs more of its core
/// per request.
const LATENCY_AT: [f64; 2] = [0.25, 0.5];
/// Seconds of each proxy's `perf stat` when profiling.
const COUNT_SECS: u64 = 5;
/// Open connections at which each proxy's RSS is read.
const RSS_AT: [usize; 2] = [32, 256];

const BACKEND: &str = "198.51.100.10:8081";
/// The bare hyper proxy (splitter_tests::hyper_floor): its address, its row.
const FLOOR: &str = "203.0.113.10:8094";
const FLOOR_NAME: &str = "bare hyper proxy (splitter's parts, none of its work)";
/// Its index among the proxies.
const FLOOR_AT: usize = 5;
const SHADOW: &str = "198.51.100.20:8082";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// An l7 service on `port` to the origin (`v1`), its shadow on green.
fn l7(port: u16) -> Service {
    Service::l7(vip(port)).on_blue("v1", 8081).on_green("shadow", 8082).weights(&[("v1", 1)])
}

/// The RSS of a fresh splitter agent serving one l7 service, once it has
/// answered one request, KiB.
fn idle_rss_one_service(bin: &std::path::Path, topo: &Topology) -> Rss {
    let config = Topology::config().service("api", l7(8080));
    let agent = AgentProcess::start_unique(bin, &topo.lb, "spl", &config.to_string(), &["--workers", "1"])
        .unwrap_or_else(|e| panic!("{e}"));
    with_open_connections(&topo.client, vip(8080), None, 1, || ());
    std::thread::sleep(Duration::from_secs(1));
    Rss::of(agent.pid().expect("agent runs"))
}

fn main() {
    // The floor proxy is this binary run again, in the lb namespace.
    splitter_tests::hyper_floor::run_if_asked();
    splitter_tests::require_root("the L7 benchmark");
    Command::new("wrk")
        .arg("-v")
        .output()
        .unwrap_or_else(|e| panic!("wrk is missing ({e}): `cargo xtask bench` installs it"));
    // This thread, and so every thread and process it starts (the origins,
    // the clients, wrk and, until they are moved, the proxies), runs on
    // LOAD_CPU.
    pin_current_thread(LOAD_CPU);
    let bin = release_bin();
    let topo = Topology::build(&unique_name("spl")).expect("topology");
    topo.lb.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]).expect("VIP on lo");
    let dir = std::env::temp_dir().join(format!("splitter-bench-{}", unique_name("l7")));
    // The origin and the mirrors' shadow: nginx answering 200 from memory,
    // light enough to leave CPU 0 to the generator.
    let origin = Nginx::origin(&topo.blue, &dir.join("origin"), addr("0.0.0.0:8081"), "v1");
    let shadow = Nginx::origin(&topo.green, &dir.join("shadow"), addr("0.0.0.0:8082"), "shadow");
    let load_pids: Vec<u32> = origin.pids().into_iter().chain(shadow.pids()).collect();

    let splitter_idle = idle_rss_one_service(&bin, &topo);
    // api, and mirrored: 10 % of its requests copied to the shadow and compared.
    let config = Topology::config()
        .service("api", l7(8080))
        .service("mirrored", l7(8088).with("mirror: { version: shadow, percent: 10, compare: true }"));
    let agent = AgentProcess::start_unique(&bin, &topo.lb, "spl", &config.to_string(), &["--workers", "1"])
        .unwrap_or_else(|e| panic!("{e}"));
    let agent_pid = agent.pid().expect("agent runs");
    let haproxy = Haproxy::http(&topo.lb, &dir, addr("203.0.113.10:8090"), addr(BACKEND), 1);
    let nginx = Nginx::start(
        &topo.lb,
        &dir,
        addr("203.0.113.10:8092"),
        addr(BACKEND),
        addr("203.0.113.10:8093"),
        addr(SHADOW),
        10,
    );
    let exe = std::env::current_exe().expect("the bench binary");
    let floor = HyperFloor::start(&topo.lb, &exe, addr(FLOOR), addr(BACKEND));
    let proxies = [
        Proxy::new("splitter", vip(8080), false, vec![agent_pid]),
        Proxy::new("HAProxy", addr("203.0.113.10:8090"), false, vec![haproxy.0.id()]),
        Proxy::new("nginx", addr("203.0.113.10:8092"), false, nginx.pids()),
        Proxy::new("splitter, 10 % mirrored + compared", vip(8088), false, vec![agent_pid]),
        Proxy::new("nginx, 10 % mirrored (`mirror`, not compared)", addr("203.0.113.10:8093"), false, nginx.pids()),
        Proxy::new(FLOOR_NAME, addr(FLOOR), false, vec![floor.0.id()]),
    ];
    // The three proxies (the mirrored paths are the same processes).
    let main = &proxies[..3];
    proxies.iter().for_each(Proxy::pin);
    for p in &proxies {
        with_open_connections(&topo.client, p.addr, None, 1, || ());
    }
    let idle = [Some(splitter_idle), Some(main[1].rss()), Some(main[2].rss())];

    // Rate runs, rounds interleaved.
    let mut keepalive = KeepAlive::new(&CONNS, SECS, proxies.len());
    for round in 0..rounds() {
        keepalive.round(&topo.client, &format!("http://{BACKEND}/"), &proxies, &load_pids);
        eprintln!("round {}/{} done", round + 1, rounds());
    }

    // Latency at fixed rates: shares of HAProxy's median maximum at
    // CONNS[0] connections, the same offered rates for every path.
    let rates = LATENCY_AT.map(|share| (share * keepalive.rps(1, 0) / 100.0).floor() * 100.0);
    let mut latency: Vec<Vec<Vec<Latency>>> =
        rates.iter().map(|_| (0..=proxies.len()).map(|_| Vec::new()).collect()).collect();
    for _ in 0..rounds() {
        for (at, rate) in latency.iter_mut().zip(rates) {
            at[0].push(open_loop(&topo.client, addr(BACKEND), None, rate, LATENCY_CONNS, SECS));
            for (i, p) in proxies.iter().enumerate() {
                at[i + 1].push(open_loop(&topo.client, p.addr, None, rate, LATENCY_CONNS, SECS));
            }
        }
    }
    let rss = rss_with_connections(&topo.client, main, None, &RSS_AT);
    // The profile, last: it must not disturb the runs. First each proxy's
    // system calls and context switches per request, then splitter's.
    let profiled = profile::secs().map(|secs| {
        let counts: Vec<(String, profile::Counts, f64)> = main
            .iter()
            .chain([&proxies[FLOOR_AT]])
            .map(|p| {
                let mut rps = 0.0;
                let counts = profile::count(&p.pids, COUNT_SECS, || {
                    rps = wrk(&topo.client, &p.url(), CONNS[0], COUNT_SECS + 1).0;
                });
                (p.name.clone(), counts, rps * COUNT_SECS as f64)
            })
            .collect();
        let url = main[0].url();
        let prof = profile::record(&main[0].pids, secs, &profile::dir("l7"), || {
            wrk(&topo.client, &url, CONNS[0], secs + 1);
        });
        (prof, counts)
    });
    proxies.iter().for_each(Proxy::assert_pinned);

    // The report.
    let mut md = String::new();
    let mut w = |s: String| writeln!(md, "{s}").unwrap();
    w(format!("### L7 proxy, plain HTTP ({} interleaved rounds of {SECS} s runs, median [min–max])\n", rounds()));
    w(format!("splitter (`--workers 1`), HAProxy (`mode http`, `nbthread 1`) and nginx (1 worker) proxy to the same origin over keep-alive, beside a bare proxy made of splitter's parts (hyper-util's server and pooled client on tokio's current-thread runtime) doing none of its work: the floor of splitter's parts, so that what splitter spends above it is its own layer, and what the floor spends above HAProxy is hyper's and tokio's. splitter sends a client's HTTP/1 requests on the endpoint connections that client connection holds, with its own HTTP/1.1 client running in the client connection's task, where the floor looks its pooled client up per request and hands each request to the endpoint connection's own task: splitter's layer is its own work less those savings, and can come out below the floor. Each proxy's threads are pinned to CPU {PROXY_CPU}, alone (sched_setaffinity, as `taskset -a -p`; checked after the runs); wrk (one thread), the origin and the mirrors' shadow (nginx answering 200 from memory, 1 worker each) and the bench process run on CPU {LOAD_CPU}.\n"));
    w("#### Keep-alive requests/s (wrk -t1, `GET /`)\n".into());
    w(keepalive.table("direct to the origin (the generator's ceiling)", &proxies, &|p| p.name.clone()));
    w(keepalive.headroom_note(""));
    let cpu = |i: usize, c: usize| keepalive.cpu_us(i, c);
    w(format!(
        "Mirroring 10 % and comparing each copy's answer costs splitter {:+.1} µs of CPU per request ({:.2}× its unmirrored CPU per request) and keeps {:.0} % of its requests/s at {} connections; nginx's `mirror` (not compared) costs it {:+.1} µs ({:.2}×) and keeps {:.0} % of its own.\n",
        cpu(3, 0) - cpu(0, 0),
        cpu(3, 0) / cpu(0, 0),
        100.0 * keepalive.rps(3, 0) / keepalive.rps(0, 0),
        CONNS[0],
        cpu(4, 0) - cpu(2, 0),
        cpu(4, 0) / cpu(2, 0),
        100.0 * keepalive.rps(4, 0) / keepalive.rps(2, 0),
    ));
    w(format!(
        "Where splitter's CPU per request goes at {} connections: the bare hyper proxy spends {:.1} µs ({:.2}× HAProxy's {:.1}); splitter's own layer (framing guard, routing, limits, statistics, forwarding headers, less the pool lookups it skips) adds {:+.1} µs to it ({:.2}× the floor). At {} connections: floor {:.1} µs ({:.2}× HAProxy), splitter {:+.1} µs over it.\n",
        CONNS[0],
        cpu(FLOOR_AT, 0),
        cpu(FLOOR_AT, 0) / cpu(1, 0),
        cpu(1, 0),
        cpu(0, 0) - cpu(FLOOR_AT, 0),
        cpu(0, 0) / cpu(FLOOR_AT, 0),
        CONNS[1],
        cpu(FLOOR_AT, 1),
        cpu(FLOOR_AT, 1) / cpu(1, 1),
        cpu(0, 1) - cpu(FLOOR_AT, 1),
    ));
    w(format!("#### Latency at fixed rates, open loop\n\nA quarter and a half of HAProxy's median maximum at {} connections, each offered to every path over {LATENCY_CONNS} keep-alive connections: requests fall due evenly spaced and are released every {} µs (a timerfd; a handful at a time) to the connections in turn, whatever the answers do, by a bare HTTP/1.1 client (httparse, as wrk's) so that the load side stays far from saturating CPU {LOAD_CPU} (its busy column); latency from each request's release.\n", CONNS[0], PACE_TICK.as_micros()));
    let lat_names: Vec<String> =
        std::iter::once("direct to the origin".to_owned()).chain(proxies.iter().map(|p| p.name.clone())).collect();
    let p99 = |r: usize, i: usize| med(&latency[r][i], &|l| l.p99_us).0;
    let added = |r: usize, i: usize| p99(r, i + 1) - p99(r, 0);
    for (r, rate) in rates.iter().enumerate() {
        w(format!("At {rate:.0} requests/s ({:.0} % of HAProxy's maximum):\n", 100.0 * LATENCY_AT[r]));
        w(latency_table(&lat_names, &latency[r]));
        w(format!(
            "Added p99 over direct: splitter {:.0} µs, HAProxy {:.0} µs, nginx {:.0} µs; splitter mirrored {:.0} µs.\n",
            added(r, 0),
            added(r, 1),
            added(r, 2),
            added(r, 3)
        ));
    }
    let growth = |i: usize| p99(1, i) / p99(0, i);
    w(format!(
        "From the lower rate to the higher, p99 grows {:.1}× straight to the origin, {:.1}× through splitter, {:.1}× through HAProxy and {:.1}× through nginx. Each request through a proxy is two hops, and the load core also processes the packets it sends and receives (its busy column): where every proxy's p99 grows alike, the queueing is on that side. A proxy that needs more of its core per request (its CPU 1 column) is nearer its own saturation at the same rate, and queues sooner.\n",
        growth(0),
        growth(1),
        growth(2),
        growth(3)
    ));
    w("#### RSS (MiB)\n".into());
    w(rss_table(main, &idle, &RSS_AT, &rss));
    let per_conn = |p: usize| (rss[p][1].anon as f64 - rss[p][0].anon as f64) / (RSS_AT[1] - RSS_AT[0]) as f64;
    w(format!(
        "Allocated (anonymous) memory per open connection, from {} to {} open: splitter {:.1} KiB, HAProxy {:.1} KiB, nginx {:.1} KiB. A splitter client connection keeps its hyper server connection (its read buffer and its head write buffer, for good) and its task; the endpoint connection it holds is a socket alone, whose read buffer exists only while an answer is in flight. HAProxy takes its buffers from a shared pool only while data passes.\n",
        RSS_AT[0],
        RSS_AT[1],
        per_conn(0),
        per_conn(1),
        per_conn(2)
    ));
    w("Idle: splitter is a fresh agent with one l7 service after one request (the bench's agent has two); HAProxy and nginx (with its two servers, plain and mirroring) before any load. With connections open: read after the rate and latency runs (an allocator may keep what the load made it take; splitter's agent hands its free heap pages back within 10 s of a peak, HAProxy keeps its buffer pools), each connection idle after one request, and splitter's connections each holding the endpoint connection its request was sent on. The splitter agent also holds the eBPF data path and the control plane.".into());
    if let Some((prof, counts)) = &profiled {
        let what = format!("splitter under wrk, {} keep-alive connections, pinned as above", CONNS[0]);
        w(format!("\n{}", prof.markdown(&what)));
        w(format!("System calls and context switches per request of each proxy's processes under the same load (`perf stat`, {COUNT_SECS} s each; requests from wrk's rate):\n"));
        w(profile::counts_table(counts));
    }
    report::write_md("l7", &md);

    let mib = |r: Rss| r.total as f64 / 1024.0;
    let anon = |r: Rss| r.anon as f64 / 1024.0;
    let ka = |i: usize, c: usize| keepalive.rps(i, c);
    let short = (0..CONNS.len()).map(|c| keepalive.headroom(c)).fold(f64::INFINITY, f64::min);
    let caveat = if short < splitter_tests::l7bench::HEADROOM_BAR {
        format!(" (wrk's headroom over the best proxy is only {short:.2}×: requests/s are lower bounds, CPU per request compares)")
    } else {
        String::new()
    };
    report::write_headline(
        "l7",
        &[format!(
            "L7 proxy, plain HTTP (each proxy pinned to one core): splitter spends {:.1} µs of CPU per keep-alive request at {} connections, {:.2}× HAProxy's ({:.1}) and {:.2}× nginx's ({:.1}); per core it serves {:.2}× HAProxy's requests/s at {} connections and {:.2}× at {} (nginx: {:.2}×, {:.2}×){caveat}; open loop it adds {:.0} µs p99 over direct at {:.0} requests/s (HAProxy {:.0}, nginx {:.0}) and {:.0} µs at {:.0} (HAProxy {:.0}, nginx {:.0}); it holds {:.1} MiB idle with one service and {:.1} MiB with {} connections open (HAProxy {:.1}, nginx {:.1}), of which its allocations are {:.1} and {:.1} MiB (HAProxy {:.1}, nginx {:.1}) and the rest its binary's pages; a bare proxy of off-the-shelf parts (hyper's server and pooled client, tokio) spends {:.1} µs per request ({:.2}× HAProxy's), so splitter's own layer adds {:+.1} µs.",
            cpu(0, 0),
            CONNS[0],
            cpu(0, 0) / cpu(1, 0),
            cpu(1, 0),
            cpu(0, 0) / cpu(2, 0),
            cpu(2, 0),
            ka(0, 0) / ka(1, 0),
            CONNS[0],
            ka(0, 1) / ka(1, 1),
            CONNS[1],
            ka(0, 0) / ka(2, 0),
            ka(0, 1) / ka(2, 1),
            added(0, 0),
            rates[0],
            added(0, 1),
            added(0, 2),
            added(1, 0),
            rates[1],
            added(1, 1),
            added(1, 2),
            mib(splitter_idle),
            mib(rss[0][1]),
            RSS_AT[1],
            mib(rss[1][1]),
            mib(rss[2][1]),
            anon(splitter_idle),
            anon(rss[0][1]),
            anon(rss[1][1]),
            anon(rss[2][1]),
            cpu(FLOOR_AT, 0),
            cpu(FLOOR_AT, 0) / cpu(1, 0),
            cpu(0, 0) - cpu(FLOOR_AT, 0),
        )],
    );
    let bars: Vec<Bar> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| Bar::new(&p.name, i == 0 || i == 3, splitter_tests::l7bench::rps(&keepalive.proxied[i][0])))
        .collect();
    report::write_chart(
        "l7",
        &format!("L7 proxy (plain HTTP), one core each: requests/s at {} connections", CONNS[0]),
        "requests/s",
        true,
        &bars,
    );
    drop(floor);
    drop(nginx);
    drop(haproxy);
    drop(agent);
    drop(shadow);
    drop(origin);
}
