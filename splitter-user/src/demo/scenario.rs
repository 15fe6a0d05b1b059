//! The demo itself: the topology (`splitter_testkit::topology`), the agent
//! on the embedded config, real TCP connections and HTTP requests, the split
//! they got next to the configured one, a weight change under held
//! connections, rollouts, and a clean teardown. Nothing leaves the machine:
//! every address lives in namespaces the demo created and deletes on the way
//! out.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use thiserror::Error;

use splitter_model::{config::Config, plan::service_key};
use splitter_testkit::{
    agent_process::{AgentProcess, AgentProcessError},
    capture::{tcp_flows, Capture},
    http::{get, serve_http, serve_http_failing, Client},
    netns::{NetNs, NetnsError},
    serve::{ask_version, serve_tcp},
    topology::{demo_config, Topology},
    wait::{wait_until, wait_until_every},
};

use crate::{
    config_file::ConfigFile as _,
    control::{request, AgentInfo, Request},
    dataplane::PinnedMaps,
    l7::mirror::MirrorCounts,
};

const NS_PREFIX: &str = "spdemo";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the demo looks at a running rollout.
const ROLLOUT_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum DemoError {
    #[error("the demo needs root (it creates network namespaces and loads XDP programs): run it with sudo")]
    NotRoot,
    #[error("building the topology: {0}")]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the agent did not start: {0}")]
    Agent(#[from] AgentProcessError),
    #[error("embedded demo config is invalid: {0}")]
    Config(#[from] crate::config_file::ConfigFileError),
    #[error("{failed} of {total} demo connections failed; agent log:\n{log}")]
    Failed { failed: usize, total: usize, log: String },
    #[error("reading the live state: {0}")]
    Dataplane(#[from] crate::dataplane::DataplaneError),
}

/// Deletes demo namespaces left by a demo that was killed (its pid is gone).
fn remove_stale_namespaces() {
    let Ok(out) = std::process::Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NS_PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::process::Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Opens `n` connections to `vip` from the client namespace (4 threads) and
/// counts which version answered; `None` for failures.
fn connect_many(client: &NetNs, vip: SocketAddr, n: usize) -> BTreeMap<Option<String>, usize> {
    let per_thread = n.div_ceil(4);
    let results: Vec<BTreeMap<Option<String>, usize>> = client.run(|| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    s.spawn(move || {
                        let mut seen = BTreeMap::new();
                        for _ in (t * per_thread)..((t + 1) * per_thread).min(n) {
                            let answer = TcpStream::connect_timeout(&vip, CONNECT_TIMEOUT).ok().and_then(|c| {
                                c.set_read_timeout(Some(CONNECT_TIMEOUT)).ok()?;
                                ask_version(&c).ok()
                            });
                            *seen.entry(answer).or_insert(0) += 1;
                        }
                        seen
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("client thread")).collect()
        })
    });
    let mut total = BTreeMap::new();
    for r in results {
        for (k, v) in r {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

/// Prints what the capture behind the mirror interface saw of `shop`'s
/// flows; returns the flows it saw only in part.
fn print_mirror(shop: &splitter_model::config::Service, frames: &[Vec<u8>], connections: usize, prefix: &str) -> usize {
    let (Some(m), std::net::SocketAddr::V4(vip)) = (shop.l4_mirror(), shop.listen) else { return 0 };
    let seen = tcp_flows(frames, vip);
    println!(
        "   mirror: {}% of new flows copied out of {}; a capture in {prefix}-tap saw {} flows ({:.1}%), {} whole (SYN, request, answer), in the client's view (client <-> VIP; {} other frames)",
        m.percent,
        m.interface,
        seen.flows.len(),
        seen.flows.len() as f64 * 100.0 / connections.max(1) as f64,
        seen.whole(),
        seen.other
    );
    seen.flows.len() - seen.whole() + seen.other
}

/// Prints the split `results` got next to the service's configured and live shares.
fn print_split(
    shop: &splitter_model::config::Service,
    live_bps: &[u32],
    results: &BTreeMap<Option<String>, usize>,
) -> usize {
    let total: usize = results.values().sum();
    println!("  {:<8} {:>7} {:>11} {:>9} {:>12}", "version", "weight", "configured", "observed", "connections");
    for (i, (name, w)) in shop.version_weights().iter().enumerate() {
        let got = results.get(&Some((*name).to_owned())).copied().unwrap_or(0);
        let configured = live_bps.get(i).map_or(0.0, |b| *b as f64 / 100.0);
        println!(
            "  {:<8} {:>7} {:>10.2}% {:>8.1}% {:>12}",
            name,
            w,
            configured,
            got as f64 * 100.0 / total.max(1) as f64,
            got
        );
    }
    let failed: usize = results.iter().filter(|(k, _)| k.is_none()).map(|(_, v)| v).sum();
    println!("  {:<8} {:>43}", "failed", failed);
    failed
}

/// Moves `shop`'s weights through the agent's control socket, as
/// `splitter weight shop blue=50 green=50` does, and returns the live shares.
fn reweight(
    agent: &AgentProcess,
    pinned: &PinnedMaps,
    shop: &mut splitter_model::config::Service,
    weights: &[(&str, u32)],
) -> Result<Vec<u32>, DemoError> {
    let req = Request::Weight {
        service: "shop".into(),
        weights: weights.iter().map(|(v, w)| ((*v).to_owned(), *w)).collect(),
    };
    let response = request(&agent.control_socket, &req).map_err(|e| DemoError::Failed {
        failed: 0,
        total: 0,
        log: e.to_string(),
    })?;
    if !response.ok {
        return Err(DemoError::Failed { failed: 0, total: 0, log: response.message });
    }
    shop.weights = weights.iter().map(|(v, w)| ((*v).to_owned(), *w)).collect();
    Ok(pinned.service(&service_key(shop))?.map(|l| l.version_bps).unwrap_or_default())
}

/// Runs the demo and prints what happened. `connections` is bounded by the caller.
pub fn run(connections: usize) -> Result<(), DemoError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DemoError::NotRoot);
    }
    remove_stale_namespaces();
    let yaml = demo_config().to_string();
    let config = Config::from_yaml(&yaml)?;
    let mut shop = config.services["shop"].clone();
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("{NS_PREFIX}{pid}"));

    println!("splitter demo\n=============");
    println!("config (embedded):\n{}", indent(&yaml));
    let prefix = format!("{NS_PREFIX}{pid}");
    let topo = Topology::build(&prefix)?;
    let tap = topo.mirror_link(&prefix)?;
    println!("topology: namespaces {prefix}-{{client,lb,blue,green,tap}} joined by veth pairs; XDP (and TC) on lb-client, lb-blue, lb-green; lb-mirror leads to tap");
    for (ns, name) in topo.backends() {
        serve_tcp(ns, 8080, name)?;
    }
    serve_http(&topo.blue, 8081, "blue")?;
    serve_http(&topo.green, 8081, "green")?;
    serve_http(&topo.green, 8082, "shadow")?;
    serve_http_failing(&topo.green, 8083, "broken")?;
    // The l7 VIP is served by the agent's proxy: the agent makes it a local
    // address of the lb namespace itself (on its dummy interface splitter0).
    let pin_path = PathBuf::from("/sys/fs/bpf").join(&prefix);
    let agent = AgentProcess::start(&std::env::current_exe()?, &topo.lb, &dir, &pin_path, &yaml)?;
    println!("agent: `splitter run --config {}` in {prefix}-lb\n", agent.config_path.display());

    // 1. The configured split.
    let pinned = PinnedMaps::open(&pin_path)?;
    let before = pinned.counters()?;
    let recording = tap.run(|| Capture::open("eth0"))?.record();
    let started = Instant::now();
    let results = connect_many(&topo.client, shop.listen, connections);
    let elapsed = started.elapsed();
    let copies = recording.finish();
    let delta = pinned.counters()?.since(&before);
    let live = pinned.service(&service_key(&shop))?.map(|l| l.version_bps).unwrap_or_default();
    println!(
        "1. {connections} TCP connections from the client to {} in {:.2}s; each backend answers with its version:\n",
        shop.listen,
        elapsed.as_secs_f64()
    );
    let mut failed = print_split(&shop, &live, &results);
    use splitter_common::stats::Stat;
    println!(
        "\n   in the kernel: {} new flows placed, {} packets redirected, {} replies rewritten to the VIP, {} packets left to the stack",
        delta.get(Stat::NewFlows),
        delta.get(Stat::Redirected),
        delta.get(Stat::Replies),
        delta.get(Stat::Passed)
    );
    failed += print_mirror(&shop, &copies, connections, &prefix);

    // 2. Move the canary while connections are open.
    let held: Vec<(TcpStream, String)> = topo.client.run(|| {
        (0..20)
            .filter_map(|_| {
                let c = TcpStream::connect_timeout(&shop.listen, CONNECT_TIMEOUT).ok()?;
                c.set_read_timeout(Some(CONNECT_TIMEOUT)).ok()?;
                let v = ask_version(&c).ok()?;
                Some((c, v))
            })
            .collect()
    });
    let live = reweight(&agent, &pinned, &mut shop, &[("blue", 50), ("green", 50)])?;
    println!("\n2. {} long-lived connections open; `splitter weight shop blue=50 green=50`.", held.len());
    let results = connect_many(&topo.client, shop.listen, connections);
    println!("   {connections} new connections:\n");
    failed += print_split(&shop, &live, &results);
    let kept = held.iter().filter(|(c, v)| ask_version(c).ok().as_ref() == Some(v)).count();
    println!("\n   established connections still answered by the backend they started on: {kept} of {}", held.len());
    if kept != held.len() {
        failed += held.len() - kept;
    }
    drop(held);

    // 3. The HTTP service through the proxy.
    failed += l7_phase(&topo, &agent, &config, connections)?;

    // 4. Rollouts under traffic: a healthy one, and a broken canary.
    failed += rollout_phase(&topo, &agent, &config)?;
    shop.weights = [("blue".to_owned(), 0), ("green".to_owned(), 10_000)].into();

    let mut live_config = config.clone();
    live_config.pin_path = pin_path.clone();
    live_config.services.insert("shop".into(), shop);
    println!("\n5. `splitter status --config {}` says:", agent.config_path.display());
    println!("{}", indent(&crate::status::report(pin_path.clone(), &live_config.services, info(&agent))?.render()));
    let log = agent.log();
    drop(agent);
    drop(tap);
    drop(topo);
    println!("\ncleaned up: agent stopped, XDP detached, namespaces deleted");
    if failed > 0 {
        return Err(DemoError::Failed { failed, total: 3 * connections + 20, log });
    }
    Ok(())
}

/// Phase 4: `splitter rollout shop --to green` promoted step by step while
/// connections keep coming, then `splitter rollout api --to broken` (a
/// version that answers 500) rolled back by the agent on its own. Returns
/// the number of things that did not go as they should.
fn rollout_phase(topo: &Topology, agent: &AgentProcess, config: &Config) -> Result<usize, DemoError> {
    use crate::control::RolloutAction;
    use splitter_model::rollout::{Gates, Plan, Rollout, State};
    let run = |service: &str,
               plan: Plan,
               traffic: &(dyn Fn(&std::sync::atomic::AtomicBool) + Sync)|
     -> Option<Rollout> {
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| traffic(&stop));
            // The scenario: traffic flows for a moment before the rollout starts.
            std::thread::sleep(Duration::from_millis(300));
            let status = Request::Rollout { service: service.into(), action: RolloutAction::Status };
            let mut next = Some(Request::Rollout { service: service.into(), action: RolloutAction::Start { plan } });
            let mut last = String::new();
            // Start it, then follow it as `splitter rollout` does, printing each new state.
            let follow = || {
                let req = next.take().unwrap_or_else(|| status.clone());
                let rollout = request(&agent.control_socket, &req).ok().and_then(|r| r.rollout);
                if let Some(line) = rollout.as_ref().map(Rollout::describe).filter(|l| *l != last) {
                    println!("     {line}");
                    last = line;
                }
                rollout
            };
            let over = |r: &Option<Rollout>| r.as_ref().is_none_or(|r| r.state.is_over());
            let rollout = wait_until_every("the rollout to end", Duration::from_secs(60), ROLLOUT_POLL, follow, over);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            rollout.ok().flatten()
        })
    };
    let plan = |to: &str, steps: &[u32], min_requests: u64| Plan {
        to: to.into(),
        steps: steps.to_vec(),
        interval_ms: 2000,
        gates: Gates { max_error_rate: Some(0.05), min_requests, ..Gates::default() },
        analysis: Vec::new(),
        webhooks: Vec::new(),
    };
    let shop = config.services["shop"].listen;
    println!("\n4. `splitter rollout shop --to green --steps 75,100 --interval 2s` while connections keep coming:");
    let l4 = run("shop", plan("green", &[75, 100], 20), &|stop| {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            connect_many(&topo.client, shop, 50);
        }
    });
    let mut failed = usize::from(!matches!(l4.map(|r| r.state), Some(State::Promoted)));
    let api = config.services["api"].listen;
    let client = Client::new(&topo.client);
    println!("   `splitter rollout api --to broken --steps 10,50,100 --max-error-rate 5%` (broken answers 500):");
    let l7 = run("api", plan("broken", &[10, 50, 100], 10), &|stop| {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            client.send_all(&topo.client, (0..20).map(|_| get(api, "/", &[])).collect(), 4, false);
        }
    });
    failed += usize::from(!matches!(l7.map(|r| r.state), Some(State::RolledBack { .. })));
    let after = client.send_all(&topo.client, (0..100).map(|_| get(api, "/", &[])).collect(), 4, false);
    let to_broken = after.iter().filter(|a| a.as_ref().is_ok_and(|a| a.backend == "broken")).count();
    println!("   after the rollback, 100 requests: {to_broken} reached broken");
    Ok(failed + to_broken)
}

/// Phase 3: plain requests split 90/10, canary-marked ones all on green,
/// 10 % mirrored to the shadow and compared. Returns the failed requests.
fn l7_phase(topo: &Topology, agent: &AgentProcess, config: &Config, n: usize) -> Result<usize, DemoError> {
    let api = &config.services["api"];
    let client = Client::new(&topo.client);
    let answers = client.send_all(&topo.client, (0..n).map(|_| get(api.listen, "/", &[])).collect(), 16, false);
    let canary = client.send_all(
        &topo.client,
        (0..20).map(|_| get(api.listen, "/", &[("x-canary", "true")])).collect(),
        4,
        false,
    );
    let mut seen: BTreeMap<Option<String>, usize> = BTreeMap::new();
    for a in &answers {
        let version = a.as_ref().ok().filter(|a| a.status.is_success()).map(|a| a.backend.clone());
        *seen.entry(version).or_insert(0) += 1;
    }
    println!("\n3. {n} HTTP requests to the l7 service api ({}), proxied by the agent:\n", api.listen);
    let bps = splitter_model::plan::basis_points(&api.version_weights().iter().map(|(_, w)| *w).collect::<Vec<_>>());
    let mut failed = print_split(api, &bps, &seen);
    let on_green = canary.iter().filter(|a| a.as_ref().is_ok_and(|a| a.backend == "green")).count();
    println!("\n   20 requests with `x-canary: true` (the route): {on_green} of 20 answered by green");
    failed += 20 - on_green;
    // Copies settle out of band: wait (bounded) until each sampled request has
    // an outcome, then show what there is.
    let mirror = || info(agent).and_then(|i| i.l7.get("api")?.mirror.clone());
    let settled = |m: &Option<MirrorCounts>| m.as_ref().is_some_and(MirrorCounts::settled);
    let _ = wait_until("the mirror's copies to settle", Duration::from_secs(10), mirror, settled);
    let report = request(&agent.control_socket, &Request::Diffs { service: "api".into() })
        .ok()
        .and_then(|r| r.diffs)
        .unwrap_or_default();
    println!(
        "   mirror: {} requests copied to shadow and compared with the primary: {} matched, {} differ (`splitter diffs api`); no shadow answer reached the client",
        report.compared, report.matched, report.differ
    );
    if let Some(s) = report.samples.last() {
        println!("   e.g. {}: {}", s.request, s.diff);
    }
    Ok(failed)
}

/// What the agent says about itself on its control socket (`None` when
/// nothing answers).
fn info(agent: &AgentProcess) -> Option<AgentInfo> {
    request(&agent.control_socket, &Request::Status).ok()?.agent
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}
