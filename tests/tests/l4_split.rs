//! Tier 3, the L4 split end to end: the real agent in an lb namespace, real
//! TCP and UDP clients in a client namespace, backends in blue/green
//! namespaces (`splitter_user::demo::Topology`). Shares must match weights,
//! flows must stick to their backend, and the client must only see the VIP.

use std::{
    collections::BTreeMap,
    io::Read,
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use splitter_tests::{agent::Agent, netns::unique_name};
use splitter_user::demo::{serve_tcp, serve_udp, Topology};

const TIMEOUT: Duration = Duration::from_secs(3);

const CONFIG: &str = r#"
interfaces:
  clients: [lb-client]
  backends: [lb-blue, lb-green]
services:
  shop:
    listen: 203.0.113.10:80
    protocol: tcp
    versions: { blue: [198.51.100.10:8080], green: [198.51.100.20:8080] }
    weights: { blue: 80, green: 20 }
  shop6:
    listen: "[2001:db8::10]:80"
    protocol: tcp
    versions: { blue: ["[2001:db8:1::10]:8080"], green: ["[2001:db8:2::10]:8080"] }
    weights: { blue: 50, green: 50 }
  dns:
    listen: 203.0.113.10:53
    protocol: udp
    versions: { blue: [198.51.100.10:5353], green: [198.51.100.20:5353] }
    weights: { blue: 50, green: 50 }
"#;

fn setup() -> (Topology, Agent) {
    splitter_tests::require_root("the L4 end-to-end test");
    let topo = Topology::build(&unique_name("spt")).expect("build topology");
    for (ns, name) in [(&topo.blue, "blue"), (&topo.green, "green")] {
        serve_tcp(ns, 8080, name).expect("TCP backend");
        serve_udp(ns, 5353, name).expect("UDP backend");
    }
    let agent = Agent::start(&topo.lb, CONFIG);
    (topo, agent)
}

/// `n` sequential TCP connections to `vip`; version name → count.
fn tcp_split(topo: &Topology, vip: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    topo.client.run(|| {
        let mut seen = BTreeMap::new();
        for i in 0..n {
            let mut c =
                TcpStream::connect_timeout(&vip, TIMEOUT).unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"));
            assert_eq!(c.peer_addr().unwrap(), vip, "the client must only ever see the VIP");
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut answer = String::new();
            c.read_to_string(&mut answer).unwrap_or_else(|e| panic!("reading connection {i}: {e}"));
            *seen.entry(answer.trim().to_owned()).or_insert(0) += 1;
        }
        seen
    })
}

fn share(seen: &BTreeMap<String, usize>, version: &str) -> f64 {
    let total: usize = seen.values().sum();
    seen.get(version).copied().unwrap_or(0) as f64 / total as f64
}

#[test]
fn tcp_connections_split_by_weight_over_ipv4_and_ipv6() {
    let (topo, agent) = setup();
    let before = agent.status()["counters"].clone();

    let v4 = tcp_split(&topo, "203.0.113.10:80".parse().unwrap(), 1000);
    assert_eq!(v4.values().sum::<usize>(), 1000);
    assert!(v4.keys().all(|k| k == "blue" || k == "green"), "unexpected answers {v4:?}");
    let green = share(&v4, "green");
    assert!((green - 0.20).abs() <= 0.04, "IPv4 green share {green:.3} is not 20 % ± 4 pp: {v4:?}");

    let v6 = tcp_split(&topo, "[2001:db8::10]:80".parse().unwrap(), 400);
    let green6 = share(&v6, "green");
    assert!((green6 - 0.5).abs() <= 0.08, "IPv6 green share {green6:.3} is not 50 % ± 8 pp: {v6:?}");

    let after = agent.status()["counters"].clone();
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(delta("new_flows"), 1400, "one flow entry per connection; counters {after}");
    assert!(delta("replies") >= 1400 * 2, "replies rewritten: {}", delta("replies"));
    assert_eq!(delta("no_table"), 0);

    // status reports the live split next to the file's.
    let status = agent.status();
    let shop = status["services"].as_array().unwrap().iter().find(|s| s["name"] == "shop").expect("shop in status");
    assert_eq!(shop["live"], true, "{shop}");
    assert_eq!(shop["differs_from_file"], false, "{shop}");
    let live: Vec<u64> = shop["versions"].as_array().unwrap().iter().map(|v| v["live_bps"].as_u64().unwrap()).collect();
    assert_eq!(live, [8000, 2000], "live basis points of blue/green");
    // The kernel's per-version flow counters match what the client saw.
    for v in shop["versions"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        assert_eq!(v["flows"].as_u64().unwrap(), v4[name] as u64, "flows of {name}: {v}");
        let ep = &v["endpoints"][0];
        assert!(ep["packets_out"].as_u64().unwrap() >= 2 * v4[name] as u64, "replies from {name}: {ep}");
    }
}

#[test]
fn udp_flows_split_and_each_flow_sticks_to_its_backend() {
    let (topo, _agent) = setup();
    let vip: SocketAddr = "203.0.113.10:53".parse().unwrap();
    let seen = topo.client.run(|| {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for flow in 0..300 {
            // A new socket is a new source port: a new flow.
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut first = None;
            for i in 0..3 {
                sock.send_to(format!("q{i}").as_bytes(), vip).unwrap();
                let mut buf = [0u8; 64];
                let (n, from) = sock.recv_from(&mut buf).unwrap_or_else(|e| panic!("flow {flow} datagram {i}: {e}"));
                assert_eq!(from, vip, "the answer must come from the VIP");
                let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                match &first {
                    None => first = Some(answer),
                    Some(f) => assert_eq!(f, &answer, "flow {flow} moved between backends"),
                }
            }
            *seen.entry(first.unwrap()).or_insert(0) += 1;
        }
        seen
    });
    let green = share(&seen, "green");
    assert!((green - 0.5).abs() <= 0.1, "UDP green share {green:.3} is not 50 % ± 10 pp: {seen:?}");
}
