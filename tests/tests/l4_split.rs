//! Tier 3, the L4 split end to end: the real agent in an lb namespace, real
//! TCP and UDP clients in a client namespace, backends in blue/green
//! namespaces (`splitter_testkit::topology::Topology`). Shares must match weights,
//! flows must stick to their backend, and the client must only see the VIP.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use splitter_common::stats::Stat;
use splitter_testkit::{
    config::{Config, Service},
    serve::{ask_version, serve_tcp, serve_udp},
    topology::{vip, vip6, Topology, BLUE, BLUE6, GREEN},
    wait::eventually,
};
use splitter_tests::{agent::Agent, netns::topology};
use splitter_user::status::{Report, ServiceStatus};

const TIMEOUT: Duration = Duration::from_secs(3);

/// shop (80/20) and shop6 (50/50) over TCP, dns (50/50) over UDP.
fn config() -> Config {
    Topology::config()
        .service("shop", Service::tcp(vip(80)).blue_green(8080).weights(&[("blue", 80), ("green", 20)]))
        .service("shop6", Service::tcp(vip6(80)).blue_green6(8080).weights(&[("blue", 50), ("green", 50)]))
        .service("dns", Service::udp(vip(53)).blue_green(5353).weights(&[("blue", 50), ("green", 50)]))
}

/// The topology with TCP (8080) and UDP (5353) backends, and the agent on `config`.
fn setup_with(config: Config) -> (Topology, Agent) {
    let topo = topology();
    for (ns, name) in topo.backends() {
        serve_tcp(ns, 8080, name).expect("TCP backend");
        serve_udp(ns, 5353, name).expect("UDP backend");
    }
    let agent = Agent::start(&topo.lb, &config.to_string());
    (topo, agent)
}

fn setup() -> (Topology, Agent) {
    setup_with(config())
}

/// `n` sequential TCP connections to `vip`; version name → count.
fn tcp_split(topo: &Topology, vip: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    topo.client.run(|| {
        let mut seen = BTreeMap::new();
        for i in 0..n {
            let c =
                TcpStream::connect_timeout(&vip, TIMEOUT).unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"));
            assert_eq!(c.peer_addr().unwrap(), vip, "the client must only ever see the VIP");
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            let answer = ask_version(&c).unwrap_or_else(|e| panic!("asking connection {i}: {e}"));
            *seen.entry(answer).or_insert(0) += 1;
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
    let before = agent.status();

    // 5,000 connections: the observed share's standard deviation is 0.57 pp,
    // so ± 2 pp is a 3.5-sigma bound.
    const N4: usize = 5000;
    let v4 = tcp_split(&topo, "203.0.113.10:80".parse().unwrap(), N4);
    assert_eq!(v4.values().sum::<usize>(), N4, "every connection answered");
    assert!(v4.keys().all(|k| k == "blue" || k == "green"), "unexpected answers {v4:?}");
    let green = share(&v4, "green");
    assert!((green - 0.20).abs() <= 0.02, "IPv4 green share {green:.4} is not 20 % ± 2 pp: {v4:?}");

    // 1,000 at 50 %: one standard deviation is 1.6 pp, so ± 8 pp is 5 sigma.
    let v6 = tcp_split(&topo, "[2001:db8::10]:80".parse().unwrap(), 1000);
    let green6 = share(&v6, "green");
    assert!((green6 - 0.5).abs() <= 0.08, "IPv6 green share {green6:.3} is not 50 % ± 8 pp: {v6:?}");

    let after = agent.status();
    let delta = |stat: Stat| after.counter(stat).unwrap() - before.counter(stat).unwrap();
    let counters = &after.counters;
    assert_eq!(delta(Stat::NewFlows), N4 as u64 + 1000, "one flow entry per connection; counters {counters:?}");
    assert!(delta(Stat::Replies) >= (N4 as u64 + 1000) * 2, "replies rewritten: {}", delta(Stat::Replies));
    assert_eq!(delta(Stat::NoTable), 0);

    // status reports the live split next to the file's.
    let status = agent.status();
    let shop = status.service("shop").expect("shop in status");
    assert!(shop.live, "{shop:?}");
    assert!(!shop.differs_from_file, "{shop:?}");
    assert_eq!(shop.live_bps(), [Some(8000), Some(2000)], "live basis points of blue/green");
    // The kernel's per-version flow counters match what the client saw.
    for v in &shop.versions {
        let name = v.name.as_str();
        assert_eq!(v.flows.unwrap(), v4[name] as u64, "flows of {name}: {v:?}");
        let ep = &v.endpoints[0];
        assert!(ep.packets_out.unwrap() >= 2 * v4[name] as u64, "replies from {name}: {ep:?}");
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

/// `n` exchanges with `endpoint` from the lb namespace (the host itself, not
/// a client): TCP connections asking the backend's name, or UDP datagrams
/// on a connected socket. Stops at the first failure, which it returns.
fn from_lb_host(topo: &Topology, endpoint: SocketAddr, tcp: bool, n: usize, name: &str) -> Result<(), String> {
    let timeout = Duration::from_secs(1);
    topo.lb.run(|| {
        for i in 0..n {
            let answer = if tcp {
                TcpStream::connect_timeout(&endpoint, timeout).and_then(|c| {
                    c.set_read_timeout(Some(timeout))?;
                    ask_version(&c)
                })
            } else {
                UdpSocket::bind(if endpoint.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).and_then(|s| {
                    s.set_read_timeout(Some(timeout))?;
                    s.connect(endpoint)?;
                    s.send(b"q")?;
                    let mut buf = [0u8; 64];
                    let n = s.recv(&mut buf)?;
                    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
                })
            };
            match answer {
                Ok(a) if a == name => {}
                other => {
                    let proto = if tcp { "TCP" } else { "UDP" };
                    return Err(format!("{proto} exchange {i} with {endpoint}: {other:?}"));
                }
            }
        }
        Ok(())
    })
}

#[test]
fn the_lb_host_talks_to_endpoints_directly_and_their_answers_are_never_taken_for_replies() {
    // blue:8080 serves shop only; green:8080 shop and admin.
    let config = config().service("admin", Service::tcp(vip(81)).on_green("green", 8080).weights(&[("green", 1)]));
    let (topo, agent) = setup_with(config);
    let failures: Vec<String> = [
        (SocketAddr::from((BLUE, 8080)), true, "blue"),
        (SocketAddr::from((GREEN, 8080)), true, "green"),
        (SocketAddr::from((BLUE6, 8080)), true, "blue"),
        (SocketAddr::from((BLUE, 5353)), false, "blue"),
    ]
    .into_iter()
    .filter_map(|(endpoint, tcp, name)| from_lb_host(&topo, endpoint, tcp, 20, name).err())
    .collect();
    assert!(failures.is_empty(), "the lb host could not talk to its endpoints: {failures:#?}\n{}", agent.log());
    // Every answer reached the host as the endpoint's (at least one packet
    // per TCP connection and per datagram), none was given a VIP or dropped.
    assert!(agent.counter(Stat::ToHost) >= 80, "to_host {}", agent.counter(Stat::ToHost));
    assert_eq!(agent.counter(Stat::ReplyAdopted), 0);
    assert_eq!(agent.counter(Stat::OrphanReplies), 0);
    // Clients are served as before, blue's replies given the VIP.
    let seen = tcp_split(&topo, vip(80), 50);
    assert_eq!(seen.values().sum::<usize>(), 50, "{seen:?}");
    assert!(agent.counter(Stat::Replies) >= 100);
}

/// Rewrites the agent's config file with `from` replaced by `to`, sends
/// SIGHUP and waits (bounded) until `status` shows the expected live basis
/// points for service `shop`.
fn reload_weights(agent: &Agent, from: &str, to: &str, want_bps: [u32; 2]) {
    let text = std::fs::read_to_string(&agent.config_path).unwrap();
    assert!(text.contains(from), "config has no {from:?}");
    std::fs::write(&agent.config_path, text.replace(from, to)).unwrap();
    agent.reload().expect("SIGHUP");
    agent.eventually("the reload's split live", Duration::from_secs(10), || live_bps(agent), |live| *live == want_bps);
}

#[test]
fn established_connections_keep_their_backend_across_a_weight_change() {
    let (topo, mut agent) = setup();
    let vip: SocketAddr = "203.0.113.10:80".parse().unwrap();
    reload_weights(&agent, "weights: { blue: 80, green: 20 }", "weights: { blue: 100, green: 0 }", [10000, 0]);

    // Long-lived connections, all on blue.
    let conns: Vec<TcpStream> = topo.client.run(|| {
        (0..40)
            .map(|i| {
                let c = TcpStream::connect_timeout(&vip, TIMEOUT).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                c.set_read_timeout(Some(TIMEOUT)).unwrap();
                c
            })
            .collect()
    });
    for (i, c) in conns.iter().enumerate() {
        assert_eq!(ask_version(c).unwrap(), "blue", "connection {i} before the change");
    }

    // Flip to green: established connections stay on blue, message after message.
    reload_weights(&agent, "weights: { blue: 100, green: 0 }", "weights: { blue: 0, green: 100 }", [0, 10000]);
    for round in 0..3 {
        for (i, c) in conns.iter().enumerate() {
            assert_eq!(ask_version(c).unwrap(), "blue", "connection {i}, message {round} after the flip moved");
        }
    }
    let fresh = tcp_split(&topo, vip, 100);
    assert_eq!(fresh.get("green"), Some(&100), "new connections must follow the new weights: {fresh:?}");

    // A broken file on reload changes nothing: the agent keeps the running tables.
    let good = std::fs::read_to_string(&agent.config_path).unwrap();
    std::fs::write(
        &agent.config_path,
        good.replace("weights: { blue: 0, green: 100 }", "weights: { blue: 0, purple: 100 }"),
    )
    .unwrap();
    agent.reload().expect("SIGHUP");
    agent.eventually(
        "the refusal in the log",
        Duration::from_secs(10),
        || agent.log().contains("reload refused"),
        |r| *r,
    );
    assert!(agent.is_running(), "agent died on a bad reload:\n{}", agent.log());
    let after_bad = tcp_split(&topo, vip, 50);
    assert_eq!(after_bad.get("green"), Some(&50), "a refused reload changed the split: {after_bad:?}");
    for (i, c) in conns.iter().enumerate() {
        assert_eq!(ask_version(c).unwrap(), "blue", "connection {i} after the refused reload");
    }
}

#[test]
fn idle_and_closed_flows_age_out_of_the_flow_table() {
    let (topo, agent) = setup_with(
        config().setting("flow_aging: { tcp_idle_secs: 600, udp_idle_secs: 1, closing_secs: 1, sweep_secs: 1 }"),
    );
    let flows = || agent.status().active_flows;
    let new_flows = || agent.counter(Stat::NewFlows);
    let gone = |what: &str| agent.eventually(what, Duration::from_secs(15), flows, |n| *n == 0);

    // A closed TCP connection (client FIN) leaves after closing_secs.
    topo.client.run(|| {
        let c = TcpStream::connect_timeout(&"203.0.113.10:80".parse().unwrap(), TIMEOUT).unwrap();
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        ask_version(&c).unwrap();
    });
    assert!(flows() >= 1, "the connection has a flow entry");
    gone("the closed TCP flow's removal");

    // An idle UDP flow leaves after udp_idle_secs; its next datagram is a new flow.
    let vip: SocketAddr = "203.0.113.10:53".parse().unwrap();
    let sock = topo.client.run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let ask = || {
        sock.send_to(b"q", vip).unwrap();
        let mut buf = [0u8; 16];
        sock.recv_from(&mut buf).expect("UDP answer");
    };
    let before = new_flows();
    ask();
    ask();
    assert_eq!(new_flows(), before + 1, "two datagrams of one flow are one flow");
    gone("the idle UDP flow's removal");
    ask();
    assert_eq!(new_flows(), before + 2, "after aging out, the next datagram starts a new flow");
}

#[test]
fn a_burst_of_malformed_frames_at_the_vip_changes_nothing_for_normal_traffic() {
    use splitter_tests::{
        packet::{self, Frame, Tcp},
        raw::RawSocket,
    };
    let (topo, agent) = setup();
    let lb_mac = topo.lb.mac("lb-client").expect("lb-client's MAC");
    let client_mac = topo.client.mac("eth0").expect("the client's MAC");
    let (client4, vip4) = ([192, 0, 2, 2], [203, 0, 113, 10]);
    let good = Frame::tcp((client4, 40000), (vip4, 80), Tcp::Syn).macs(client_mac, lb_mac).build();
    let udp = Frame::udp((client4, 40001), (vip4, 53)).macs(client_mac, lb_mac).payload(b"q").build();
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    packet::fix_ipv4_checksum(&mut bad_ihl);
    let mut long = udp.clone();
    long[16..18].copy_from_slice(&900u16.to_be_bytes());
    packet::fix_ipv4_checksum(&mut long);
    let mut bad_doff = good.clone();
    bad_doff[14 + 20 + 12] = 0x30;
    let burst: Vec<(&str, Vec<u8>)> = vec![
        ("IPv4 header cut short", packet::truncated(&good, 14 + 10)),
        ("IHL 4", bad_ihl),
        ("total length past the frame", long),
        ("TCP data offset 3", bad_doff),
        ("fragment to the VIP", packet::as_ipv4_fragment(udp.clone(), 0, true)),
    ];
    let before = agent.status();
    topo.client.run(|| {
        let sock = RawSocket::open("eth0").expect("AF_PACKET socket");
        for round in 0..200 {
            for (what, frame) in &burst {
                sock.send(frame).unwrap_or_else(|e| panic!("sending {what} (round {round}): {e}"));
            }
        }
    });
    // Normal traffic right after the burst: every connection answered, split kept.
    let seen = tcp_split(&topo, "203.0.113.10:80".parse().unwrap(), 1000);
    assert_eq!(seen.values().sum::<usize>(), 1000);
    let green = share(&seen, "green");
    assert!((green - 0.2).abs() <= 0.05, "split after the burst: {seen:?}");
    let after = agent.status();
    let delta = |stat: Stat| after.counter(stat).unwrap() - before.counter(stat).unwrap();
    let counters = &after.counters;
    assert_eq!(delta(Stat::Truncated), 200, "{counters:?}");
    assert_eq!(delta(Stat::BadHeader), 400, "IHL and data offset: {counters:?}");
    assert_eq!(delta(Stat::BadLength), 200, "{counters:?}");
    assert_eq!(delta(Stat::Fragment), 200, "{counters:?}");
    // Only the 1,000 good connections were placed: no malformed frame made a flow.
    assert_eq!(delta(Stat::NewFlows), 1000, "{counters:?}");
    assert_eq!(delta(Stat::Adopted), 0, "{counters:?}");
}

/// Runs `splitter ARGS --socket <agent's socket>`; (success, stdout, stderr).
fn cli(agent: &Agent, args: &[&str]) -> (bool, String, String) {
    agent.control(args)
}

fn live_bps(agent: &Agent) -> Vec<u32> {
    agent.live_bps("shop")
}

#[test]
fn weight_flip_and_rollback_through_the_control_socket() {
    let (topo, agent) = setup();
    let vip: SocketAddr = "203.0.113.10:80".parse().unwrap();
    assert_eq!(live_bps(&agent), [8000, 2000]);

    let (ok, out, err) = cli(&agent, &["weight", "shop", "green=80", "blue=20"]);
    assert!(ok, "weight failed: {err}");
    assert!(out.contains("blue=20 green=80"), "{out}");
    assert_eq!(live_bps(&agent), [2000, 8000], "weight applied at once");
    let held: Vec<(TcpStream, String)> = topo.client.run(|| {
        (0..20)
            .map(|_| {
                let c = TcpStream::connect_timeout(&vip, TIMEOUT).unwrap();
                c.set_read_timeout(Some(TIMEOUT)).unwrap();
                let v = ask_version(&c).unwrap();
                (c, v)
            })
            .collect()
    });

    let (ok, _, err) = cli(&agent, &["flip", "shop", "--to", "blue"]);
    assert!(ok, "flip failed: {err}");
    assert_eq!(live_bps(&agent), [10000, 0]);
    assert_eq!(tcp_split(&topo, vip, 100).get("blue"), Some(&100), "after the flip every new connection is blue");
    for (i, (c, v)) in held.iter().enumerate() {
        assert_eq!(&ask_version(c).unwrap(), v, "held connection {i} moved on the flip");
    }

    // Bad requests are refused with the reason and change nothing.
    let (ok, _, err) = cli(&agent, &["weight", "shop", "purple=5"]);
    assert!(!ok && err.contains("no version \"purple\"") && err.contains("nothing was changed"), "{err}");
    let (ok, _, err) = cli(&agent, &["weight", "shop", "blue=0"]);
    assert!(!ok && err.contains("weigh 0"), "{err}");
    let (ok, _, err) = cli(&agent, &["flip", "nosuch", "--to", "blue"]);
    assert!(!ok && err.contains("no service \"nosuch\""), "{err}");
    assert_eq!(live_bps(&agent), [10000, 0], "refused requests changed the tables");

    // Rollback undoes the flip, then the weight change, then has nothing left.
    assert!(cli(&agent, &["rollback", "shop"]).0);
    assert_eq!(live_bps(&agent), [2000, 8000]);
    assert!(cli(&agent, &["rollback", "shop"]).0);
    assert_eq!(live_bps(&agent), [8000, 2000], "back to the file's weights");
    let (ok, _, err) = cli(&agent, &["rollback", "shop"]);
    assert!(!ok && err.contains("nothing to roll back"), "{err}");

    // Garbage on the socket gets an error answer and the agent keeps running.
    use std::io::{BufRead, Write};
    let mut raw = std::os::unix::net::UnixStream::connect(&agent.control_socket).unwrap();
    raw.write_all(b"{\"op\":\"explode\"}\n").unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(&raw).read_line(&mut answer).unwrap();
    assert!(answer.contains("\"ok\":false") && answer.contains("bad control request"), "{answer}");
    assert_eq!(live_bps(&agent), [8000, 2000]);
}

/// `splitter status ARGS --json` with nothing but the agent's socket, parsed.
fn status_over_socket(agent: &Agent, args: &[&str]) -> Report {
    let (ok, out, err) = cli(agent, &[&["status", "--json"], args].concat());
    assert!(ok, "status --socket failed: {err}\nagent log:\n{}", agent.log());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is a Report ({e}): {out}"))
}

#[test]
fn status_with_only_the_socket_shows_what_status_with_the_file_shows() {
    let (topo, agent) = setup();
    // A change, so the agent's view differs from the file's.
    assert!(cli(&agent, &["weight", "shop", "green=60", "blue=40"]).0);
    tcp_split(&topo, "203.0.113.10:80".parse().unwrap(), 20);
    // Neither the agent's socket nor its pin path is the default one.
    assert_ne!(agent.pin_path, std::path::Path::new(splitter_model::config::DEFAULT_PIN_PATH));
    let by_socket = status_over_socket(&agent, &[]);
    let by_file = agent.status();
    assert_eq!(by_socket.pin_path, agent.pin_path, "the agent's pin path, not the default");
    let names = |r: &Report| r.services.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&by_socket), ["dns", "shop", "shop6"]);
    assert_eq!(names(&by_socket), names(&by_file));
    for (a, b) in by_socket.services.iter().zip(&by_file.services) {
        assert!(a.live && b.live, "{} is live in both views", a.name);
        assert_eq!(a.differs_from_file, b.differs_from_file, "{}", a.name);
        let view = |s: &ServiceStatus| {
            s.versions
                .iter()
                .map(|v| (v.name.clone(), v.weight, v.runtime_weight, v.live_bps, v.endpoints.len()))
                .collect::<Vec<_>>()
        };
        assert_eq!(view(a), view(b), "{}", a.name);
    }
    let shop = by_socket.service("shop").unwrap();
    assert_eq!(shop.live_bps(), [Some(4000), Some(6000)]);
    assert!(shop.differs_from_file);
    assert!(shop.versions.iter().map(|v| v.flows.unwrap_or(0)).sum::<u64>() >= 20, "flows counted: {shop:?}");
    assert!(by_socket.counter(Stat::NewFlows).unwrap_or(0) >= 20, "{:?}", by_socket.counters);
    // The text and --watch show the same services.
    let (ok, text, err) = cli(&agent, &["status"]);
    assert!(ok, "{err}");
    for s in ["service dns ", "service shop ", "service shop6 ", "40.00%", "60.00%"] {
        assert!(text.contains(s), "status --socket shows {s:?}:\n{text}");
    }
    let mut watch = agent
        .cli()
        .args(["status", "--watch", "1", "--socket"])
        .arg(&agent.control_socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("status --watch");
    // Part of the scenario: `--watch 1` runs 2.5 s, time for at least two frames.
    std::thread::sleep(Duration::from_millis(2500));
    watch.kill().expect("stop --watch");
    let out = watch.wait_with_output().expect("--watch output");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.matches("service shop ").count() >= 2, "--watch redraws the services:\n{shown}");
}

#[test]
fn idle_control_connections_do_not_hold_up_the_agent() {
    let (_topo, agent) = setup();
    // Clients that connect and send nothing (or half a line), more than one
    // request's read limit long in all.
    let idle: Vec<std::os::unix::net::UnixStream> = (0..8)
        .map(|i| {
            let mut c = std::os::unix::net::UnixStream::connect(&agent.control_socket).expect("connect");
            if i % 2 == 1 {
                std::io::Write::write_all(&mut c, b"{\"op\":").unwrap();
            }
            c
        })
        .collect();
    // The agent answers others at once meanwhile: each of these would wait
    // out the idle ones' 5 s read limit if the loop read requests itself.
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let (ok, out, err) = cli(&agent, &["weight", "shop", "green=30", "blue=70"]);
        assert!(ok, "{out}{err}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "three changes took {:?} beside idle connections",
        started.elapsed()
    );
    assert_eq!(live_bps(&agent), [7000, 3000]);
    // The idle ones are answered with an error after the limit, and closed.
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut c, &mut answer).unwrap();
        assert!(answer.contains("\"ok\":false") && answer.contains("bad control request"), "{answer}");
    }
}

#[test]
fn runtime_changes_survive_an_agent_restart() {
    let (topo, mut agent) = setup();
    assert!(cli(&agent, &["weight", "shop", "green=60", "blue=40"]).0);
    assert!(cli(&agent, &["flip", "shop", "--to", "green"]).0);
    assert_eq!(live_bps(&agent), [0, 10000]);
    agent.restart(&topo.lb).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(live_bps(&agent), [0, 10000], "the flip must survive the restart:\n{}", agent.log());
    let status = agent.status();
    let shop = status.service("shop").unwrap();
    assert!(shop.differs_from_file, "status shows the live split differs from the file");
    let seen = tcp_split(&topo, "203.0.113.10:80".parse().unwrap(), 50);
    assert_eq!(seen.get("green"), Some(&50), "{seen:?}");
    // The history survived too: rollback undoes the flip.
    assert!(cli(&agent, &["rollback", "shop"]).0);
    assert_eq!(live_bps(&agent), [4000, 6000]);
}

#[test]
fn two_agents_on_one_host_never_see_each_others_state() {
    let (topo_a, agent_a) = setup();
    let (topo_b, agent_b) = setup();
    assert_ne!(agent_a.control_socket, agent_b.control_socket);
    assert!(cli(&agent_a, &["flip", "shop", "--to", "green"]).0);
    assert_eq!(live_bps(&agent_a), [0, 10000]);
    assert_eq!(live_bps(&agent_b), [8000, 2000], "a change to agent A leaked into agent B");
    let vip: SocketAddr = "203.0.113.10:80".parse().unwrap();
    assert_eq!(tcp_split(&topo_a, vip, 40).get("green"), Some(&40));
    let b = tcp_split(&topo_b, vip, 400);
    assert!(b.get("blue").copied().unwrap_or(0) > 250, "agent B still splits 80/20: {b:?}");
    // Each agent counted only its own traffic.
    assert_eq!(agent_a.counter(Stat::NewFlows), 40);
    assert_eq!(agent_b.counter(Stat::NewFlows), 400);
}

#[test]
fn editing_the_config_file_applies_without_a_signal() {
    let (_topo, agent) = setup();
    let text = std::fs::read_to_string(&agent.config_path).unwrap();
    // Written the way editors do: a new file renamed over the old one.
    let tmp = agent.config_path.with_extension("swp");
    std::fs::write(&tmp, text.replace("weights: { blue: 80, green: 20 }", "weights: { blue: 30, green: 70 }")).unwrap();
    std::fs::rename(&tmp, &agent.config_path).unwrap();
    agent.eventually("the edit's split live", Duration::from_secs(10), || live_bps(&agent), |l| *l == [3000, 7000]);
    assert!(agent.log().contains("file changed: reloaded"), "{}", agent.log());
}

#[test]
fn thirty_flips_under_a_steady_stream_of_connections() {
    let (topo, agent) = setup();
    let vip: SocketAddr = "203.0.113.10:80".parse().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let start = std::time::Instant::now();
    let (results, flips) = std::thread::scope(|s| {
        let client = s.spawn(|| connect_until(&topo, vip, &stop));
        let mut flips = 0;
        for i in 0..30 {
            let to = if i % 2 == 0 { "green" } else { "blue" };
            let (ok, _, err) = cli(&agent, &["flip", "shop", "--to", to]);
            assert!(ok, "flip {i} failed: {err}");
            flips += 1;
            // Pacing: a flip every 50 ms, connections arriving between them.
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (client.join().unwrap(), flips)
    });
    let elapsed = start.elapsed();
    let (ok, failed, split_brain) = results;
    assert_eq!(flips, 30);
    assert_all_answered_once(&failed, split_brain, "during the flips");
    let rate = ok as f64 / elapsed.as_secs_f64();
    assert!(rate >= 100.0, "only {rate:.0} connections/s arrived during the flips ({ok} in {elapsed:?})");
}

/// Opens connections to `vip` in a loop until `stop` (at most 60 s); each asks
/// its backend twice. Returns (answered, failures, answered by two backends).
fn connect_until(topo: &Topology, vip: SocketAddr, stop: &std::sync::atomic::AtomicBool) -> (u32, Vec<String>, u32) {
    topo.client.run(|| {
        let (mut ok, mut failed, mut split_brain) = (0u32, Vec::new(), 0u32);
        let start = std::time::Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
            match TcpStream::connect_timeout(&vip, TIMEOUT).and_then(|c| {
                c.set_read_timeout(Some(TIMEOUT))?;
                let first = ask_version(&c)?;
                // A pause between the two questions, so a change can fall between them.
                std::thread::sleep(Duration::from_millis(2));
                Ok((first, ask_version(&c)?))
            }) {
                Ok((a, b)) if a == b => ok += 1,
                Ok(_) => split_brain += 1,
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed, split_brain)
    })
}

/// What [`connect_until`] saw must be clean: no failure, no connection
/// answered by two backends.
fn assert_all_answered_once(failed: &[String], split_brain: u32, during: &str) {
    assert!(failed.is_empty(), "{} connections failed {during}: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert_eq!(split_brain, 0, "a connection was answered by two backends {during}");
}

#[test]
fn kill_9_leaves_the_data_path_serving_and_a_restart_adopts_it_without_a_gap() {
    let (topo, mut agent) = setup();
    let vip: SocketAddr = "203.0.113.10:80".parse().unwrap();
    // A runtime weight the file does not have (80/20 there).
    assert!(cli(&agent, &["weight", "shop", "blue=30", "green=70"]).0);
    let held: Vec<(TcpStream, String)> = topo.client.run(|| {
        (0..30)
            .map(|i| {
                let c = TcpStream::connect_timeout(&vip, TIMEOUT).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                c.set_read_timeout(Some(TIMEOUT)).unwrap();
                let v = ask_version(&c).unwrap();
                (c, v)
            })
            .collect()
    });
    let flows_before = agent.counter(Stat::NewFlows);

    agent.kill().expect("kill -9");
    assert!(agent.info().is_none(), "nothing answers on the control socket after kill -9");
    for (i, (c, v)) in held.iter().enumerate() {
        assert_eq!(&ask_version(c).unwrap(), v, "connection {i} while no agent runs");
    }
    let while_down = tcp_split(&topo, vip, 400);
    let green = share(&while_down, "green");
    assert!((green - 0.70).abs() < 0.07, "new connections without an agent follow the last weights: {while_down:?}");
    let status = agent.status();
    assert!(status.agent.is_none(), "status says no agent runs: {:?}", status.agent);

    // Restart while connections keep arriving: none may fail or move.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (ok, failed, split_brain) = std::thread::scope(|s| {
        let client = s.spawn(|| connect_until(&topo, vip, &stop));
        // The scenario: connections arrive while no agent runs (200 ms), across
        // the start, and after it serves again (300 ms).
        std::thread::sleep(Duration::from_millis(200));
        agent.start_again(&topo.lb).unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        client.join().unwrap()
    });
    assert_all_answered_once(&failed, split_brain, "across the restart");
    assert!(ok > 0);
    let log = agent.log();
    assert!(log.contains("adopted the pinned data path"), "{log}");
    assert!(log.contains("in the pinned links (atomic)"), "the restart must swap programs, not re-attach:\n{log}");
    // The maps carried over: the counter continued (no reset), the weights held.
    assert_eq!(agent.counter(Stat::NewFlows), flows_before + 400 + u64::from(ok), "counters carried over the restart");
    assert_eq!(live_bps(&agent), [3000, 7000], "the runtime weights survive kill -9");
    for (i, (c, v)) in held.iter().enumerate() {
        assert_eq!(&ask_version(c).unwrap(), v, "connection {i} after the restart");
    }

    // SIGTERM: the agent exits, the data path stays.
    assert!(agent.stop_ok(), "the agent exits cleanly on SIGTERM:\n{}", agent.log());
    assert!(topo.lb.has_xdp("lb-client").unwrap(), "SIGTERM leaves XDP attached");
    for (i, (c, v)) in held.iter().enumerate() {
        assert_eq!(&ask_version(c).unwrap(), v, "connection {i} after SIGTERM");
    }
    assert_eq!(tcp_split(&topo, vip, 20).values().sum::<usize>(), 20);

    // `splitter down`: XDP detached, pins gone, the VIP served no more.
    agent.down().unwrap_or_else(|e| panic!("{e}"));
    for dev in ["lb-client", "lb-blue", "lb-green"] {
        assert!(!topo.lb.has_xdp(dev).unwrap(), "XDP still on {dev} after down");
    }
    assert!(!agent.pin_path.exists(), "pins left at {}", agent.pin_path.display());
    let refused = topo.client.run(|| TcpStream::connect_timeout(&vip, Duration::from_secs(1)).is_err());
    assert!(refused, "nothing serves the VIP after down");
}

#[test]
fn down_through_a_running_agent_detaches_and_stops_it() {
    let (topo, mut agent) = setup();
    assert!(topo.lb.has_xdp("lb-client").unwrap());
    let (ok, out, err) = cli(&agent, &["down"]);
    assert!(ok, "{err}");
    assert!(out.contains("XDP detached"), "{out}");
    eventually("the agent to exit after down", Duration::from_secs(10), || agent.is_running(), |running| !running);
    assert!(!topo.lb.has_xdp("lb-client").unwrap() && !topo.lb.has_xdp("lb-blue").unwrap());
    assert!(!agent.pin_path.exists());
    // Again, with nothing running: found through the config file, it says so.
    let out = agent.cli().args(["down", "--config"]).arg(&agent.config_path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already down"));
    // Without a config there is nothing to find the pins by: a clear refusal.
    let (ok, _, err) = cli(&agent, &["down"]);
    assert!(!ok && err.contains("pass --config"), "{err}");
}

#[test]
fn a_restart_with_a_resized_flow_table_makes_only_a_new_flow_table_with_the_old_flows() {
    let (topo, mut agent) = setup();
    let vip: SocketAddr = "203.0.113.10:80".parse().unwrap();
    assert!(cli(&agent, &["flip", "shop", "--to", "green"]).0);
    assert!(agent.stop_ok());
    let text = std::fs::read_to_string(&agent.config_path).unwrap();
    std::fs::write(&agent.config_path, format!("flow_table_size: 4096\n{text}")).unwrap();
    // An earlier build's reverse-NAT table, still pinned (an upgrade): the
    // next agent removes it.
    let retired = agent.pin_path.join("SPLITTER_REVERSE");
    let gate = aya::maps::MapData::from_pin(agent.pin_path.join(splitter_common::names::MAP_LOG_GATE)).unwrap();
    gate.pin(&retired).expect("pin a stand-in for the retired map");
    agent.start_again(&topo.lb).unwrap_or_else(|e| panic!("{e}"));
    let log = agent.log();
    assert!(log.contains("flow table resized") && log.contains("to=4096"), "{log}");
    assert!(!log.contains("does not fit this build"), "no map was replaced: {log}");
    assert!(!retired.exists(), "the retired map's pin is still there");
    assert!(log.contains("earlier build pinned") && log.contains("SPLITTER_REVERSE"), "{log}");
    // The tables were adopted: the flip holds, and traffic flows.
    assert_eq!(live_bps(&agent), [0, 10000]);
    assert_eq!(tcp_split(&topo, vip, 20).get("green"), Some(&20));
}

#[test]
fn kernel_events_reach_the_agent_log_rate_limited() {
    use aya::maps::{HashMap, Map, MapData};
    use splitter_common::service::{ServiceKey, ServiceRef, MAX_TABLES};
    let (topo, agent) = setup();
    // Point a service at a table nobody wrote (as a corrupted or foreign
    // write to the pinned map would): its packets must be dropped, counted,
    // and reported in the agent's log.
    let pinned = MapData::from_pin(agent.pin_path.join(splitter_common::names::MAP_SERVICES)).unwrap();
    let mut services: HashMap<MapData, ServiceKey, ServiceRef> =
        HashMap::try_from(Map::from_map_data(pinned).unwrap()).unwrap();
    let vip: SocketAddr = "203.0.113.10:81".parse().unwrap();
    let key = ServiceKey {
        addr: splitter_model::plan::addr_words(vip.ip()),
        port: vip.port().to_be(),
        proto: 6,
        family: splitter_common::FAMILY_V4,
    };
    let table = MAX_TABLES - 1;
    services.insert(key, ServiceRef { table, flags: 0 }, 0).unwrap();
    let before = agent.counter(Stat::NoTable);
    topo.client.run(|| {
        for _ in 0..10 {
            assert!(TcpStream::connect_timeout(&vip, Duration::from_millis(200)).is_err());
        }
    });
    let dropped = agent.counter(Stat::NoTable) - before;
    assert!(dropped >= 10, "each SYN to the broken service is counted: {dropped}");
    let needle = format!("service table {table} is missing or inconsistent");
    agent.eventually("the kernel event in the log", Duration::from_secs(5), || agent.log().contains(&needle), |r| *r);
    // At most once a second per CPU, not once per packet (2 s of SYNs here).
    let lines = agent.log().matches(&needle).count() as u64;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(lines <= cpus * 4 && lines < dropped, "{lines} log lines for {dropped} drops");
    services.remove(&key).unwrap();
}
