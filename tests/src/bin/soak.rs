//! `cargo xtask soak --minutes N`: the real agent under steady L4 and L7
//! traffic for N minutes while it is flipped every 10 s (l4 `shop`),
//! reloaded every 30 s, rolled out every 2 minutes (l7 `api`, alternately to
//! v2 and back to v1) and restarted every 5 minutes (SIGTERM and a new
//! agent at once, which takes the l7 listeners over; once, three quarters
//! in, in a shorter run such as CI's two minutes), with 10 % of the l4
//! flows and 10 % of the l7 requests mirrored. Reports failed connections
//! and requests, the agent's resident memory and open descriptors over time
//! and the flow table's fill; exits non-zero on a failure or on memory or
//! descriptors that grew more than 5 % after warm-up within one agent's life
//! (descriptors beyond 16 of slack, for the proxy's pools).
//!
//! Needs root and the debug `splitter` binary (`SPLITTER_BIN`, which the
//! xtask sets).

use std::{
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use splitter_testkit::{
    config::{Config, Service},
    http::{get, serve_http, Client},
    netns::unique_name,
    serve::{ask_version, serve_tcp},
    topology::{vip, Topology},
};
use splitter_tests::{agent::Agent, netns::topology, rss_kib};

const FLIP_EVERY: u64 = 10;
const RELOAD_EVERY: u64 = 30;
const ROLLOUT_EVERY: u64 = 120;
const RESTART_EVERY: u64 = 300;
const SAMPLE_EVERY: u64 = 10;
/// Memory is judged from this long after each start.
const WARM_UP: Duration = Duration::from_secs(60);
const MAX_GROWTH: f64 = 0.05;
/// Descriptors may vary by this many whatever the share: the proxy's
/// keep-alive pools follow which versions get traffic (a rollout adds v2's).
const FD_SLACK: usize = 16;

/// One failed connection or request, and when.
struct Failure {
    at: Duration,
    what: String,
}

/// One sample of the agent.
struct Sample {
    at: Duration,
    life: usize,
    rss_kib: u64,
    fds: usize,
    flows: u64,
    flow_capacity: u64,
}

fn config() -> Config {
    let shop = Service::tcp(vip(80))
        .blue_green(8080)
        .weights(&[("blue", 50), ("green", 50)])
        .with("mirror: { interface: lb-mirror, percent: 10 }");
    let api = Service::l7(vip(8080))
        .on_blue("v1", 8081)
        .on_green("v2", 8081)
        .on_blue("shadow", 8082)
        .weights(&[("v1", 1)])
        .with("mirror: { version: shadow, percent: 10 }");
    Topology::config().service("shop", shop).service("api", api)
}

/// Every RESTART_EVERY seconds; a run shorter than that (CI's two minutes)
/// still restarts once, three quarters in, so the first agent is judged
/// after its warm-up and the restarted one resumes the paused rollout.
fn restart_due(second: u64, run_secs: u64) -> bool {
    if run_secs <= RESTART_EVERY {
        second == run_secs * 3 / 4
    } else {
        second.is_multiple_of(RESTART_EVERY) && second < run_secs
    }
}

fn minutes() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--minutes").and_then(|i| args.get(i + 1)) {
        Some(m) => m.parse().unwrap_or_else(|_| panic!("--minutes {m:?} is not a whole number of minutes")),
        None => 2,
    }
}

fn main() -> std::process::ExitCode {
    let minutes = minutes();
    let run_for = Duration::from_secs(minutes * 60);
    let topo = topology();
    for (ns, name) in topo.backends() {
        serve_tcp(ns, 8080, name).expect("TCP backend");
    }
    serve_http(&topo.blue, 8081, "v1").expect("v1 backend");
    serve_http(&topo.green, 8081, "v2").expect("v2 backend");
    serve_http(&topo.blue, 8082, "shadow").expect("shadow backend");
    let _tap = topo.mirror_link(&unique_name("spt")).expect("mirror link");
    let mut agent = Agent::start(&topo.lb, &config().to_string());
    let start = Instant::now();
    let done = AtomicBool::new(false);
    // The clients stop by then even if the schedule never says so (it
    // panicked): the process ends and its guards clean up.
    let give_up = run_for + Duration::from_secs(60);
    let failures = Mutex::new(Vec::<Failure>::new());
    let fail = |what: String| failures.lock().unwrap().push(Failure { at: start.elapsed(), what });
    let (mut l4_ok, mut l7_ok) = (0u64, 0u64);
    let mut restarts: Vec<(Duration, Duration)> = Vec::new();
    let mut samples = Vec::new();
    let mut events = Vec::new();
    std::thread::scope(|s| {
        let l4 = s.spawn(|| {
            topo.client.run(|| {
                let mut ok = 0;
                while !done.load(Ordering::Relaxed) && start.elapsed() < give_up {
                    let r = TcpStream::connect_timeout(&vip(80), Duration::from_secs(2)).and_then(|c| {
                        c.set_read_timeout(Some(Duration::from_secs(2)))?;
                        ask_version(&c)
                    });
                    match r {
                        Ok(_) => ok += 1,
                        Err(e) => fail(format!("l4 connection: {e}")),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                ok
            })
        });
        let l7 = s.spawn(|| {
            let client = Client::new(&topo.client);
            let target: SocketAddr = vip(8080);
            let mut ok = 0;
            while !done.load(Ordering::Relaxed) && start.elapsed() < give_up {
                let reqs = (0..10).map(|_| get(target, "/", &[])).collect();
                for a in client.send_all(&topo.client, reqs, 4, false) {
                    match a {
                        Ok(a) if a.status.is_success() => ok += 1,
                        Ok(a) => failures
                            .lock()
                            .unwrap()
                            .push(Failure { at: start.elapsed(), what: format!("l7 request: status {}", a.status) }),
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(Failure { at: start.elapsed(), what: format!("l7 request: {e}") }),
                    }
                }
                std::thread::sleep(Duration::from_millis(150));
            }
            ok
        });
        // The schedule, second by second.
        let mut life = 0;
        let mut flip_to_green = true;
        let mut rollout_to_v2 = true;
        let mut reloads = 0;
        for second in 1..=run_for.as_secs() {
            let next = start + Duration::from_secs(second);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            let at = start.elapsed();
            if second % FLIP_EVERY == 0 {
                let to = if flip_to_green { "green" } else { "blue" };
                flip_to_green = !flip_to_green;
                let (ok, out, err) = agent.control(&["flip", "shop", "--to", to]);
                events.push(format!("{at:>6.1?} flip shop to {to}: {}", if ok { "ok" } else { err.trim() }));
                if !ok {
                    fail(format!("flip refused: {out}{err}"));
                }
            }
            if second % RELOAD_EVERY == 0 {
                reloads += 1;
                let text = std::fs::read_to_string(&agent.config_path).expect("the config file");
                std::fs::write(&agent.config_path, format!("{text}# soak reload {reloads}\n")).expect("rewrite");
                events.push(format!("{at:>6.1?} reload {reloads}"));
            }
            if second % ROLLOUT_EVERY == ROLLOUT_EVERY / 2 {
                let to = if rollout_to_v2 { "v2" } else { "v1" };
                rollout_to_v2 = !rollout_to_v2;
                let (ok, out, err) =
                    agent.control(&["rollout", "api", "--to", to, "--steps", "50,100", "--interval", "5s", "--detach"]);
                events.push(format!("{at:>6.1?} rollout api to {to}: {}", if ok { "started" } else { err.trim() }));
                if !ok {
                    fail(format!("rollout refused: {out}{err}"));
                }
            }
            if restart_due(second, run_for.as_secs()) {
                let began = start.elapsed();
                // SIGTERM and a new agent at once: it takes the l7
                // listeners over while the old one drains.
                agent.replace(&topo.lb).unwrap_or_else(|e| panic!("restarting the agent: {e}"));
                if let Err(e) = agent.wait_replaced(Duration::from_secs(40)) {
                    fail(format!("the replaced agent did not drain and exit: {e}"));
                }
                restarts.push((began, start.elapsed()));
                life += 1;
                events.push(format!("{began:>6.1?} restart ({:.1?})", start.elapsed() - began));
                // A restarted agent pauses a running rollout until told to
                // go on, as an operator would after checking it.
                let (resumed, _, _) = agent.control(&["rollout", "api", "--resume"]);
                if resumed {
                    events.push(format!("{:>6.1?} rollout api resumed after the restart", start.elapsed()));
                }
            }
            if second % SAMPLE_EVERY == 0 {
                let report = agent.try_status();
                if let (Some(info), Ok(report)) = (agent.info(), &report) {
                    samples.push(Sample {
                        at: start.elapsed(),
                        life,
                        rss_kib: rss_kib(info.pid),
                        fds: std::fs::read_dir(format!("/proc/{}/fd", info.pid)).map_or(0, |d| d.count()),
                        flows: report.active_flows,
                        flow_capacity: report.flow_table_size,
                    });
                }
                // Recorded, not a panic: the soak always ends with its
                // report, and removes its namespaces and pins.
                if let Err(e) = report {
                    fail(format!("status: {e}"));
                }
            }
        }
        done.store(true, Ordering::Relaxed);
        l4_ok = l4.join().expect("l4 client");
        l7_ok = l7.join().expect("l7 client");
    });

    let failures = failures.into_inner().unwrap();
    println!("# soak: {minutes} min");
    println!("l4 connections ok {l4_ok}, l7 requests ok {l7_ok}");
    // Restarts included: the new agent takes the l7 listeners over.
    println!("failures: {}", failures.len());
    for f in failures.iter().take(20) {
        println!("  {:>6.1?} {}", f.at, f.what);
    }
    println!("events:");
    for e in &events {
        println!("  {e}");
    }
    println!("samples (time, agent life, RSS KiB, open descriptors, flow-table entries of capacity):");
    for s in &samples {
        println!("  {:>6.1?} {} {:>8} {:>5} {:>7} of {}", s.at, s.life, s.rss_kib, s.fds, s.flows, s.flow_capacity);
    }
    // Growth within each agent's life, from its first sample after warm-up.
    let mut worst: Option<(usize, f64, f64)> = None;
    for life in 0..=restarts.len() {
        let lived: Vec<&Sample> = samples.iter().filter(|s| s.life == life).collect();
        let born = if life == 0 { Duration::ZERO } else { restarts[life - 1].1 };
        let warm: Vec<&&Sample> = lived.iter().filter(|s| s.at >= born + WARM_UP).collect();
        if let (Some(first), Some(last)) = (warm.first(), warm.last()) {
            let rss = last.rss_kib as f64 / first.rss_kib as f64 - 1.0;
            let fds = last.fds.saturating_sub(FD_SLACK) as f64 / first.fds as f64 - 1.0;
            if worst.is_none_or(|(_, r, f)| rss.max(fds) > r.max(f)) {
                worst = Some((life, rss, fds));
            }
        }
    }
    match worst {
        Some((life, rss, fds)) => {
            println!(
                "growth after warm-up (worst life, {life}): RSS {:+.1}%, descriptors {:+.1}%",
                rss * 100.0,
                fds * 100.0
            )
        }
        None => {
            println!("growth after warm-up: not judged (no agent lived {WARM_UP:?} past its start with two samples)")
        }
    }
    let grew = worst.is_some_and(|(_, rss, fds)| rss > MAX_GROWTH || fds > MAX_GROWTH);
    // Returned, not exited: the agent and the namespaces are dropped (and
    // removed) on the way out.
    if !failures.is_empty() || grew || l4_ok == 0 || l7_ok == 0 {
        println!("soak FAILED\nagent log:\n{}", agent.log());
        return std::process::ExitCode::FAILURE;
    }
    println!("soak passed");
    std::process::ExitCode::SUCCESS
}
