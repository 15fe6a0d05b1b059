//! Tier 3, several LB nodes sharing one desired state in a real etcd: three
//! nodes (namespaces, each with its own agent and XDP data path) between one
//! client network and one backend network, as nodes behind ECMP are; etcd on
//! a management network. Changes made at etcd or at any agent reach every
//! node; a connection whose route moves to another node keeps its backend;
//! etcd going away changes nothing that runs, and its return resyncs.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use splitter_common::stats::Stat;
use splitter_testkit::{
    config::{Config, Service},
    netns::{unique_name, NetNs},
    serve::{ask_version, serve_tcp},
    wait::{eventually, wait_until_every},
};
use splitter_tests::{
    agent::{splitter_bin, Agent},
    etcd::Etcd,
    netns::{bridge, bridge_port, ip, netns},
};
use splitter_user::status::ClusterReport;

const TIMEOUT: Duration = Duration::from_secs(3);
const VIP: &str = "203.0.113.10:80";
const NODES: usize = 3;

struct Cluster {
    client: NetNs,
    backends: [NetNs; 2],
    mgmt: NetNs,
    _bnet: NetNs,
    nodes: Vec<NetNs>,
    etcd: Etcd,
    agents: Vec<Agent>,
    prefix: String,
}

/// Node `lb{node}`'s config: its client and backend links, the store, and
/// shop split 50/50 over the two backends.
fn config(node: usize, etcd: &str, prefix: &str) -> Config {
    Config::new(&["eth-c"], &["eth-b"])
        .setting(&format!("node: lb{node}"))
        .setting(&format!("store: {{ etcd: {{ endpoints: [\"{etcd}\"], prefix: {prefix} }} }}"))
        .service("shop", Service::tcp(VIP).blue_green(8080).weights(&[("blue", 50), ("green", 50)]))
}

impl Cluster {
    fn build() -> Cluster {
        splitter_tests::require_root("the shared-store end-to-end test");
        let (client, mgmt, bnet) = (netns("cc"), netns("cm"), netns("cb"));
        let backends = [netns("blue"), netns("green")];
        bridge(&client, Some("192.0.2.100/24"));
        client.disable_tx_offload("br0").unwrap();
        bridge(&mgmt, Some("10.99.0.1/24"));
        bridge(&bnet, None);
        for (i, (b, addr)) in backends.iter().zip(["198.51.100.10/24", "198.51.100.20/24"]).enumerate() {
            bridge_port(b, "eth0", &bnet, &format!("be{i}"));
            ip(b, &["addr", "add", addr, "dev", "eth0"]);
            ip(b, &["route", "add", "default", "via", "198.51.100.1"]);
            b.disable_tx_offload("eth0").unwrap();
        }
        serve_tcp(&backends[0], 8080, "blue").unwrap();
        serve_tcp(&backends[1], 8080, "green").unwrap();
        let mut nodes = Vec::new();
        for n in 1..=NODES {
            let node = netns(&format!("n{n}"));
            bridge_port(&node, "eth-c", &client, &format!("p{n}"));
            bridge_port(&node, "eth-b", &bnet, &format!("p{n}"));
            bridge_port(&node, "eth-m", &mgmt, &format!("p{n}"));
            ip(&node, &["addr", "add", &format!("192.0.2.1{n}/24"), "dev", "eth-c"]);
            ip(&node, &["addr", "add", &format!("198.51.100.{n}/24"), "dev", "eth-b"]);
            ip(&node, &["addr", "add", &format!("10.99.0.1{n}/24"), "dev", "eth-m"]);
            node.sysctl("net.ipv4.ip_forward=1").unwrap();
            nodes.push(node);
        }
        ip(&client, &["route", "add", "203.0.113.10/32", "via", "192.0.2.11"]);
        let etcd = Etcd::in_namespace(&mgmt, "10.99.0.1");
        let prefix = format!("/{}", unique_name("spt"));
        let agents = nodes
            .iter()
            .enumerate()
            .map(|(i, ns)| Agent::start(ns, &config(i + 1, &etcd.url(), &prefix).to_string()))
            .collect();
        Cluster { client, backends, mgmt, _bnet: bnet, nodes, etcd, agents, prefix }
    }

    /// `splitter ARGS --etcd URL --etcd-prefix P`, run on the management
    /// network: success, stdout, stderr.
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd: Command = self.mgmt.command(splitter_bin());
        let out = cmd
            .env("SPLITTER_LOG", "warn")
            .args(args)
            .args(["--etcd", &self.etcd.url(), "--etcd-prefix", &self.prefix])
            .output()
            .expect("run splitter");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    fn cluster_status(&self) -> ClusterReport {
        let (ok, out, err) = self.cli(&["status", "--cluster", "--json"]);
        assert!(ok, "status --cluster: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --cluster --json is a ClusterReport ({e}): {out}"))
    }

    /// Waits until every node reports the store's desired revision; returns
    /// how long that took.
    fn converge(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        let converged = |s: &ClusterReport| s.nodes.len() == NODES && s.converged;
        // Every 20 ms: the time it took is reported.
        wait_until_every(
            "every node to apply the desired revision",
            limit,
            Duration::from_millis(20),
            || self.cluster_status(),
            converged,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        start.elapsed()
    }

    /// Each node's live basis points for shop (blue, green), from its kernel.
    fn live_bps(&self) -> Vec<Vec<u32>> {
        self.agents.iter().map(|a| a.live_bps("shop")).collect()
    }

    /// Routes the client's VIP traffic and the backends' replies through node `n`.
    fn route_via(&self, n: usize) {
        ip(&self.client, &["route", "replace", "203.0.113.10/32", "via", &format!("192.0.2.1{n}")]);
        for b in &self.backends {
            ip(b, &["route", "replace", "default", "via", &format!("198.51.100.{n}")]);
        }
    }

    fn connect(&self, n: usize) -> Vec<TcpStream> {
        let vip: SocketAddr = VIP.parse().unwrap();
        self.client.run(|| {
            (0..n)
                .map(|i| {
                    let c = TcpStream::connect_timeout(&vip, TIMEOUT).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                    c.set_read_timeout(Some(TIMEOUT)).unwrap();
                    c
                })
                .collect()
        })
    }

    fn split(&self, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for c in self.connect(n) {
            *seen.entry(ask_version(&c).expect("answer")).or_insert(0) += 1;
        }
        seen
    }
}

#[test]
fn changes_reach_every_node_and_a_moved_flow_keeps_its_backend() {
    let c = Cluster::build();
    c.converge(Duration::from_secs(10));
    assert_eq!(c.live_bps(), vec![vec![5000, 5000]; NODES], "every node serves the seeded weights");
    let s = c.cluster_status();
    assert_eq!(s.nodes.iter().filter(|n| n.leader).count(), 1, "one leader: {s:?}");

    // A weight change at etcd directly, then a flip through one agent.
    let (ok, out, err) = c.cli(&["weight", "shop", "green=25", "blue=75"]);
    assert!(ok, "weight through etcd: {err}");
    assert!(out.contains("store revision"), "{out}");
    let t_weight = c.converge(Duration::from_secs(10));
    assert_eq!(c.live_bps(), vec![vec![7500, 2500]; NODES]);
    let (ok, _, err) = c.agents[2].control(&["flip", "shop", "--to", "green"]);
    assert!(ok, "flip through node 3's agent: {err}");
    let t_flip = c.converge(Duration::from_secs(10));
    assert_eq!(c.live_bps(), vec![vec![0, 10_000]; NODES], "the flip is served everywhere");
    eprintln!("convergence: weight {t_weight:?}, flip {t_flip:?} (to {NODES} nodes, measured by polling)");
    // Every node's status names the revision and who changed it.
    let info = c.agents[0].status().agent.and_then(|a| a.cluster).expect("node 1's place in the store");
    assert_eq!(info.node, "lb1", "{info:?}");
    assert!(info.change.contains("shop"), "{info:?}");

    // Back to 50/50, then connections through node 1; the route moves to
    // node 2 mid-stream (both ways, as an ECMP change does) and every
    // connection keeps talking to its backend.
    let (ok, _, err) = c.cli(&["weight", "shop", "green=50", "blue=50"]);
    assert!(ok, "{err}");
    c.converge(Duration::from_secs(10));
    let conns = c.connect(24);
    let first: Vec<String> = conns.iter().map(|s| ask_version(s).expect("answer via node 1")).collect();
    assert!(first.iter().any(|v| v == "blue") && first.iter().any(|v| v == "green"), "both versions: {first:?}");
    let before = c.agents[1].counter(Stat::Adopted);
    c.route_via(2);
    for (i, s) in conns.iter().enumerate() {
        let again = ask_version(s).unwrap_or_else(|e| panic!("connection {i} after the move to node 2: {e}"));
        assert_eq!(again, first[i], "connection {i} changed backend when its route moved");
    }
    let adopted = c.agents[1].counter(Stat::Adopted) - before;
    assert!(adopted >= 24, "node 2 placed the 24 moved flows mid-stream (adopted {adopted})");
    drop(conns);
    c.route_via(1);
}

#[test]
fn etcd_away_changes_nothing_that_runs_and_its_return_resyncs() {
    let mut c = Cluster::build();
    c.converge(Duration::from_secs(10));
    let (ok, _, err) = c.cli(&["weight", "shop", "green=10", "blue=90"]);
    assert!(ok, "{err}");
    c.converge(Duration::from_secs(10));

    c.etcd.stop();
    // Traffic is served as before.
    let seen = c.split(200);
    assert_eq!(seen.values().sum::<usize>(), 200, "{seen:?}");
    assert!(seen.get("green").copied().unwrap_or(0) < 60, "still 90/10: {seen:?}");
    // The CLI says clearly that the store is unreachable, both ways.
    let (ok, _, err) = c.cli(&["flip", "shop", "--to", "green"]);
    assert!(!ok && err.contains("unreachable"), "direct: {err}");
    let (ok, _, err) = c.agents[0].control(&["flip", "shop", "--to", "green"]);
    assert!(!ok && err.contains("unreachable") && err.contains("nothing changed"), "through an agent: {err}");
    assert_eq!(c.live_bps(), vec![vec![9000, 1000]; NODES], "nothing changed anywhere");
    // An agent restarted while etcd is away serves its last applied state.
    c.agents[2].restart(&c.nodes[2]).unwrap();
    assert_eq!(c.live_bps()[2], vec![9000, 1000], "the restarted node serves what it had");
    // `None`: no agent answered, or it has no place in a store.
    let reachable = |a: &Agent| a.status().agent.and_then(|a| a.cluster).map(|c| c.reachable);
    c.agents[0].eventually(
        "node 1 to notice the store is gone",
        Duration::from_secs(15),
        || reachable(&c.agents[0]),
        |r| *r == Some(false),
    );

    c.etcd.start_again();
    // The nodes reconnect (backoff ≤ 5 s) and a new change applies everywhere.
    let all_reachable = || c.agents.iter().map(reachable).collect::<Vec<_>>();
    eventually("every node to reconnect to etcd", Duration::from_secs(30), all_reachable, |r| {
        r.iter().all(|r| *r == Some(true))
    });
    let (ok, _, err) = c.agents[0].control(&["flip", "shop", "--to", "green"]);
    assert!(ok, "a change after etcd returned: {err}");
    c.converge(Duration::from_secs(15));
    assert_eq!(c.live_bps(), vec![vec![0, 10_000]; NODES]);
    let seen = c.split(50);
    assert_eq!(seen.get("green"), Some(&50), "{seen:?}");
}

#[test]
fn the_leader_drives_a_rollout_started_at_etcd_to_every_node() {
    let c = Cluster::build();
    c.converge(Duration::from_secs(10));
    let s = c.cluster_status();
    let leader = s.nodes.iter().find(|n| n.leader).expect("a leader").node.clone();
    let n: usize = leader.trim_start_matches("lb").parse().unwrap();
    // The leader judges on its own traffic: send the client's through it.
    c.route_via(n);
    let (ok, out, err) = c.cli(&[
        "rollout",
        "shop",
        "--to",
        "green",
        "--steps",
        "50,100",
        "--interval",
        "1s",
        "--min-requests",
        "5",
        "--detach",
    ]);
    assert!(ok, "rollout through etcd: {err}");
    assert!(out.contains("started at 50%"), "{out}");
    // Traffic the whole time: ten connections, then a look, every 200 ms.
    let traffic_and_status = || {
        let seen = c.split(10);
        assert_eq!(seen.values().sum::<usize>(), 10);
        c.cli(&["rollout", "shop", "--status", "--detach"]).1
    };
    wait_until_every(
        "the rollout to be promoted",
        Duration::from_secs(30),
        Duration::from_millis(200),
        traffic_and_status,
        |out| out.contains("promoted") || out.contains("Promoted"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    c.converge(Duration::from_secs(10));
    assert_eq!(c.live_bps(), vec![vec![0, 10_000]; NODES], "every node serves the promoted canary");
    let info = c.agents[n % NODES].status().agent.expect("an agent answers");
    let r = info.rollouts.get("shop").unwrap_or_else(|| panic!("no rollout of shop in {:?}", info.rollouts));
    assert_eq!(r.driver.as_deref(), Some(leader.as_str()), "the leader drove it: {r:?}");
}

#[test]
fn saving_the_file_on_one_node_publishes_its_services_to_every_node() {
    let c = Cluster::build();
    c.converge(Duration::from_secs(10));
    let path = &c.agents[1].config_path;
    let text = std::fs::read_to_string(path).unwrap();
    let edited = text.replace("weights: { blue: 50, green: 50 }", "weights: { blue: 30, green: 70 }");
    assert_ne!(text, edited);
    std::fs::write(path, edited).unwrap();
    eventually(
        "the edit to reach every node",
        Duration::from_secs(15),
        || c.live_bps(),
        |bps| *bps == vec![vec![3000, 7000]; NODES],
    );
    c.converge(Duration::from_secs(10));
    let s = c.cluster_status();
    assert!(s.change.as_deref().unwrap().contains("services published from"), "{s:?}");
    assert_eq!(s.changed_by.as_deref(), Some("lb2"), "{s:?}");

    // A rollout declared in the same file reaches the store, and the
    // leader (whatever node was edited) starts it and drives it to the end.
    let leader = s.nodes.iter().find(|n| n.leader).expect("a leader").node.clone();
    let n: usize = leader.trim_start_matches("lb").parse().unwrap();
    c.route_via(n);
    let text = std::fs::read_to_string(path).unwrap();
    let declared = text.replace(
        "weights: { blue: 30, green: 70 }",
        "weights: { blue: 30, green: 70 }\n    rollout: { to: blue, steps: [50, 100], interval: 1s, gates: { min_requests: 5 } }",
    );
    assert_ne!(text, declared);
    std::fs::write(path, declared).unwrap();
    wait_until_every(
        "the declared rollout to be promoted",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            c.split(10);
            c.cli(&["rollout", "shop", "--status", "--detach"]).1
        },
        |out| out.contains("promoted to blue"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (_, out, _) = c.cli(&["rollout", "shop", "--status", "--detach"]);
    assert!(out.contains("declared in the shared store (services.shop.rollout)"), "{out}");
    c.converge(Duration::from_secs(10));
    assert_eq!(c.live_bps(), vec![vec![10_000, 0]; NODES], "every node serves the promoted canary");
}
