//! Three LB nodes behind a BGP router with ECMP, for the ECMP test and the
//! BGP bench: a client behind a router namespace (BIRD 2, `merge paths`,
//! an L4 multipath hash) bridged to three nodes, each with the real agent
//! (`announce:`) and a real BIRD 2 running the shipped example
//! (`packaging/bgp/bird.conf`) with its addresses edited as a user would;
//! two backends on a network every node reaches, replying through node 1.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use splitter_common::stats::Stat;
use splitter_testkit::{
    agent_process::AgentProcess,
    config::{Config, Service},
    netns::NetNs,
    serve::serve_tcp,
};

use crate::{
    bird::Bird,
    netns::{bridge, bridge_port, ip, netns, Veth},
};

pub const VIP: &str = "203.0.113.10:80";
pub const NODES: usize = 3;
pub const HELD: usize = 300;
const TIMEOUT: Duration = Duration::from_secs(3);

/// The router: one eBGP session per node, every equal path into the kernel.
fn router_conf() -> String {
    let mut conf = String::from(
        "router id 192.0.2.100;\n\
         protocol device { }\n\
         protocol kernel { ipv4 { export all; }; merge paths on; }\n",
    );
    for n in 1..=NODES {
        conf.push_str(&format!(
            "protocol bgp node{n} {{\n\
             \x20 local 192.0.2.100 as 65000;\n\
             \x20 neighbor 192.0.2.1{n} as 65001;\n\
             \x20 connect delay time 1; connect retry time 2; error wait time 1, 10;\n\
             \x20 hold time 9; keepalive time 3;\n\
             \x20 ipv4 {{ import all; export none; }};\n\
             }}\n"
        ));
    }
    conf
}

/// Node `n`'s BIRD: the shipped example with this node's address and the
/// router's.
fn node_conf(n: usize) -> String {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/bgp/bird.conf"))
        .expect("the shipped BIRD example");
    let mut conf = shipped;
    for (from, to) in [
        ("router id 192.0.2.1;", format!("router id 192.0.2.1{n};")),
        ("local 192.0.2.1 as 65001;", format!("local 192.0.2.1{n} as 65001;")),
        ("neighbor 192.0.2.2 as 65000;", "neighbor 192.0.2.100 as 65000;".to_owned()),
    ] {
        assert_eq!(conf.matches(from).count(), 1, "the example has {from:?} once");
        conf = conf.replace(from, &to);
    }
    conf
}

/// Node `n`'s agent config: its links, shop split over blue and green, and
/// the VIP announced.
fn agent_conf() -> Config {
    Config::new(&["eth-c"], &["eth-b"])
        .setting("announce: { interface: splitter0, settle: 2s }")
        .setting("flow_aging: { sweep_secs: 1 }")
        .service("shop", Service::tcp(VIP).blue_green(8080).weights(&[("blue", 50), ("green", 50)]))
}

pub struct Ecmp {
    pub client: NetNs,
    pub router: NetNs,
    _bnet: NetNs,
    _backends: [NetNs; 2],
    pub nodes: Vec<NetNs>,
    pub agents: Vec<AgentProcess>,
    _birds: Vec<Bird>,
    _router_bird: Bird,
}

impl Ecmp {
    /// Builds it and starts everything, the agents from `bin` (unique
    /// names, `prefix` for their paths).
    pub fn build(bin: &Path, prefix: &str) -> Ecmp {
        let (client, router, bnet) = (netns("ec"), netns("er"), netns("eb"));
        // client 10.0.0.2 — router 10.0.0.1 / 192.0.2.100 (bridge to the nodes).
        let link = Veth::new(&client, &router);
        ip(&client, &["addr", "add", "10.0.0.2/24", "dev", &link.a]);
        ip(&client, &["route", "add", "default", "via", "10.0.0.1"]);
        client.disable_tx_offload(&link.a).unwrap();
        ip(&router, &["addr", "add", "10.0.0.1/24", "dev", &link.b]);
        bridge(&router, Some("192.0.2.100/24"));
        router.sysctl("net.ipv4.ip_forward=1").unwrap();
        // Hash on the 5-tuple: each connection keeps one node while the paths stay.
        router.sysctl("net.ipv4.fib_multipath_hash_policy=1").unwrap();
        bridge(&bnet, None);
        let backends = [netns("eblue"), netns("egreen")];
        for (i, (b, addr)) in backends.iter().zip(["198.51.100.10/24", "198.51.100.20/24"]).enumerate() {
            bridge_port(b, "eth0", &bnet, &format!("be{i}"));
            ip(b, &["addr", "add", addr, "dev", "eth0"]);
            // Replies go through node 1.
            ip(b, &["route", "add", "default", "via", "198.51.100.1"]);
            b.disable_tx_offload("eth0").unwrap();
        }
        serve_tcp(&backends[0], 8080, "blue").unwrap();
        serve_tcp(&backends[1], 8080, "green").unwrap();
        let mut nodes = Vec::new();
        for n in 1..=NODES {
            let node = netns(&format!("en{n}"));
            bridge_port(&node, "eth-c", &router, &format!("p{n}"));
            bridge_port(&node, "eth-b", &bnet, &format!("p{n}"));
            ip(&node, &["addr", "add", &format!("192.0.2.1{n}/24"), "dev", "eth-c"]);
            ip(&node, &["addr", "add", &format!("198.51.100.{n}/24"), "dev", "eth-b"]);
            ip(&node, &["route", "add", "10.0.0.0/24", "via", "192.0.2.100"]);
            node.sysctl("net.ipv4.ip_forward=1").unwrap();
            nodes.push(node);
        }
        let agents: Vec<AgentProcess> = nodes
            .iter()
            .map(|ns| {
                AgentProcess::start_unique(bin, ns, prefix, &agent_conf().to_string(), &[])
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        let birds = nodes.iter().enumerate().map(|(i, ns)| Bird::start(ns, &node_conf(i + 1))).collect();
        let router_bird = Bird::start(&router, &router_conf());
        Ecmp {
            client,
            router,
            _bnet: bnet,
            _backends: backends,
            nodes,
            agents,
            _birds: birds,
            _router_bird: router_bird,
        }
    }

    /// The nodes the router's route to the VIP goes through.
    pub fn next_hops(&self) -> Vec<usize> {
        let route = self.router.ip(&["route", "show", "203.0.113.10"]).unwrap_or_default();
        (1..=NODES).filter(|n| route.contains(&format!("via 192.0.2.1{n} "))).collect()
    }

    pub fn wait_hops(&self, want: &[usize], limit: Duration) -> Duration {
        let start = Instant::now();
        while self.next_hops() != want {
            assert!(
                start.elapsed() < limit,
                "the route to the VIP goes through {:?}, not {want:?}: {}",
                self.next_hops(),
                self.router.ip(&["route", "show", "203.0.113.10"]).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        start.elapsed()
    }

    /// `HELD` connections from the client, each asked once: the connection
    /// and the backend that answered.
    pub fn hold(&self) -> Vec<(TcpStream, String)> {
        let vip: SocketAddr = VIP.parse().unwrap();
        self.client.run(|| {
            (0..HELD)
                .map(|i| {
                    let c = TcpStream::connect_timeout(&vip, TIMEOUT).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                    c.set_read_timeout(Some(TIMEOUT)).unwrap();
                    let answer = ask(&c).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                    (c, answer)
                })
                .collect()
        })
    }

    /// Data-path counter `stat` of node `n` (1-based), from its pins.
    pub fn counter(&self, n: usize, stat: Stat) -> u64 {
        let pinned = splitter_user::dataplane::PinnedMaps::open(&self.agents[n - 1].pin_path).expect("the node's pins");
        pinned.counters().expect("its counters").get(stat)
    }

    /// `splitter ARGS --socket` for node `n` (1-based): success, stdout, stderr.
    pub fn cli(&self, bin: &Path, n: usize, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(bin)
            .args(args)
            .arg("--socket")
            .arg(&self.agents[n - 1].control_socket)
            .env("SPLITTER_LOG", "warn")
            .output()
            .expect("running splitter");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }
}

/// One question on a held connection, and the backend's answer.
pub fn ask(c: &TcpStream) -> std::io::Result<String> {
    (&*c).write_all(b"version?\n")?;
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::other("closed"));
    }
    Ok(line.trim().to_owned())
}

/// Asks every held connection again: those that broke or changed backend.
pub fn broken(held: &[(TcpStream, String)]) -> Vec<String> {
    held.iter()
        .enumerate()
        .filter_map(|(i, (c, first))| match ask(c) {
            Ok(a) if &a == first => None,
            Ok(a) => Some(format!("connection {i}: {first} before, {a} now")),
            Err(e) => Some(format!("connection {i} ({first}): {e}")),
        })
        .collect()
}
