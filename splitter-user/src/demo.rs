//! `splitter demo`: the embedded default config on a namespace topology the
//! command builds itself (client → lb → blue/green), real TCP connections, the
//! split they got next to the configured one, and a clean teardown.
//!
//! ```text
//!  client ns            lb ns (agent, XDP)              blue ns / green ns
//!  eth0 192.0.2.2 ── lb-client 192.0.2.1
//!                       lb-blue  198.51.100.1/28  ── eth0 198.51.100.10 :8080
//!                       lb-green 198.51.100.17/28 ── eth0 198.51.100.20 :8080
//! ```
//! Nothing leaves the machine: every address lives in namespaces the demo
//! created and deletes on the way out.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use thiserror::Error;

use crate::{
    config::Config,
    dataplane::{read_pinned_service, Counters},
    netns::{veth, NetNs, NetnsError},
    plan::service_key,
};

/// The demo's desired state. Interface names match the topology it builds.
pub const DEMO_CONFIG: &str = r#"# splitter demo: one TCP service, 80 % blue / 20 % green.
interfaces:
  clients: [lb-client]
  backends: [lb-blue, lb-green]
services:
  shop:
    listen: 203.0.113.10:80
    protocol: tcp
    mode: l4
    versions:
      blue:  [198.51.100.10:8080]
      green: [198.51.100.20:8080]
    weights: { blue: 80, green: 20 }
"#;

const NS_PREFIX: &str = "spdemo";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum DemoError {
    #[error("the demo needs root (it creates network namespaces and loads XDP programs): run it with sudo")]
    NotRoot,
    #[error("building the topology: {0}")]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the agent did not start:\n{0}")]
    Agent(String),
    #[error("embedded demo config is invalid: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{failed} of {total} demo connections failed; agent log:\n{log}")]
    Failed { failed: usize, total: usize, log: String },
    #[error("reading the live state: {0}")]
    Dataplane(#[from] crate::dataplane::DataplaneError),
}

/// Kills and reaps the agent when the demo ends, however it ends.
struct AgentGuard(Child);

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

struct Topology {
    client: NetNs,
    lb: NetNs,
    blue: NetNs,
    green: NetNs,
}

fn build_topology() -> Result<Topology, DemoError> {
    let pid = std::process::id();
    let ns = |role: &str| NetNs::new(format!("{NS_PREFIX}{pid}-{role}"));
    let t = Topology { client: ns("client")?, lb: ns("lb")?, blue: ns("blue")?, green: ns("green")? };
    veth(&t.lb, "lb-client", &t.client, "eth0")?;
    veth(&t.lb, "lb-blue", &t.blue, "eth0")?;
    veth(&t.lb, "lb-green", &t.green, "eth0")?;
    t.lb.addr("lb-client", [192, 0, 2, 1].into(), 24)?;
    t.lb.addr("lb-blue", [198, 51, 100, 1].into(), 28)?;
    t.lb.addr("lb-green", [198, 51, 100, 17].into(), 28)?;
    t.lb.sysctl("net.ipv4.ip_forward=1")?;
    t.client.addr("eth0", [192, 0, 2, 2].into(), 24)?;
    t.client.ip(&["route", "add", "default", "via", "192.0.2.1"])?;
    t.blue.addr("eth0", [198, 51, 100, 10].into(), 28)?;
    t.blue.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
    t.green.addr("eth0", [198, 51, 100, 20].into(), 28)?;
    t.green.ip(&["route", "add", "default", "via", "198.51.100.17"])?;
    for ns in [&t.client, &t.blue, &t.green] {
        // XDP redirects into a veth land only if its peer runs NAPI (GRO on),
        // and a redirected frame loses the "checksum still to be completed"
        // state of locally sent packets: hosts on veth send full checksums.
        ns.enable_gro("eth0")?;
        ns.disable_tx_offload("eth0")?;
    }
    Ok(t)
}

/// A backend: answers each connection with its version name, then closes.
fn serve_version(ns: &NetNs, name: &'static str) -> Result<(), DemoError> {
    let listener = ns.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)))?;
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(format!("{name}\n").as_bytes());
        }
    });
    Ok(())
}

fn start_agent(lb: &NetNs, dir: &Path) -> Result<(AgentGuard, PathBuf, PathBuf), DemoError> {
    let pin_path = PathBuf::from("/sys/fs/bpf").join(format!("{NS_PREFIX}{}", std::process::id()));
    let config = format!(
        "pin_path: {}\nstate_dir: {}\ncontrol: {{ socket: {} }}\n{DEMO_CONFIG}",
        pin_path.display(),
        dir.join("state").display(),
        dir.join("splitter.sock").display()
    );
    let config_path = dir.join("demo.yaml");
    std::fs::write(&config_path, config)?;
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let child = lb
        .command(std::env::current_exe()?)
        .args(["run", "--stats-every", "0", "--config"])
        .arg(&config_path)
        .env("SPLITTER_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut guard = AgentGuard(child);
    let ready = pin_path.join(splitter_common::names::MAP_STATS);
    let start = Instant::now();
    while !ready.exists() {
        if guard.0.try_wait()?.is_some() || start.elapsed() > Duration::from_secs(20) {
            return Err(DemoError::Agent(std::fs::read_to_string(&log_path).unwrap_or_default()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((guard, pin_path, config_path))
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
                            let answer = TcpStream::connect_timeout(&vip, CONNECT_TIMEOUT).ok().and_then(|mut c| {
                                c.set_read_timeout(Some(CONNECT_TIMEOUT)).ok()?;
                                let mut s = String::new();
                                c.read_to_string(&mut s).ok()?;
                                Some(s.trim().to_owned())
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

/// Runs the demo and prints what happened. `connections` is bounded by the caller.
pub fn run(connections: usize) -> Result<(), DemoError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DemoError::NotRoot);
    }
    remove_stale_namespaces();
    let config = Config::from_yaml(DEMO_CONFIG)?;
    let shop = &config.services["shop"];
    let dir = tempfile_dir()?;

    println!("splitter demo\n=============");
    println!("config (embedded):\n{}", indent(DEMO_CONFIG));
    let topo = build_topology()?;
    println!(
        "topology: namespaces {}-{{client,lb,blue,green}}, veth pairs, XDP on lb-client, lb-blue, lb-green",
        topo.lb.name().trim_end_matches("-lb")
    );
    serve_version(&topo.blue, "blue")?;
    serve_version(&topo.green, "green")?;
    let (agent, pin_path, config_path) = start_agent(&topo.lb, &dir.0)?;
    println!("agent: `splitter run --config {}` in the lb namespace\n", config_path.display());

    let before = Counters::read_pinned(&pin_path)?;
    let started = Instant::now();
    let results = connect_many(&topo.client, shop.listen, connections);
    let elapsed = started.elapsed();
    let after = Counters::read_pinned(&pin_path)?;
    let delta = after.since(&before);

    let live = read_pinned_service(&pin_path, &service_key(shop))?;
    let weights = shop.version_weights();
    let total_w: u32 = weights.iter().map(|(_, w)| w).sum();
    println!(
        "{connections} TCP connections from the client to {} in {:.2}s; each backend answers with its version:\n",
        shop.listen,
        elapsed.as_secs_f64()
    );
    println!("  {:<8} {:>9} {:>11} {:>9} {:>12}", "version", "weight", "configured", "observed", "connections");
    for (i, (name, w)) in weights.iter().enumerate() {
        let got = results.get(&Some((*name).to_owned())).copied().unwrap_or(0);
        let live_share = live.as_ref().and_then(|l| l.version_bps.get(i)).map(|b| *b as f64 / 100.0);
        println!(
            "  {:<8} {:>9} {:>10.2}% {:>8.1}% {:>12}",
            name,
            w,
            live_share.unwrap_or(*w as f64 * 100.0 / total_w as f64),
            got as f64 * 100.0 / connections as f64,
            got
        );
    }
    let failed: usize = results.iter().filter(|(k, _)| k.is_none()).map(|(_, v)| v).sum();
    println!("  {:<8} {:>45}", "failed", failed);
    println!("\ndata path counters for this run (splitter status shows them live):");
    for (name, v) in delta.iter().filter(|(_, v)| *v > 0) {
        println!("  {name:<18} {v:>10}");
    }
    drop(agent);
    let log = std::fs::read_to_string(dir.0.join("agent.log")).unwrap_or_default();
    drop(topo);
    println!("\ncleaned up: agent stopped, XDP detached, namespaces deleted");
    if failed > 0 {
        return Err(DemoError::Failed { failed, total: connections, log });
    }
    Ok(())
}

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> std::io::Result<TempDir> {
    let dir = std::env::temp_dir().join(format!("{NS_PREFIX}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(TempDir(dir))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}
