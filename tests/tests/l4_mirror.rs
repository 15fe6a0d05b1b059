//! Tier 3, L4 mirroring end to end: the real agent, real TCP clients and
//! backends (`splitter_testkit::topology::Topology`), and a packet capture in a
//! `tap` namespace on the far side of the LB's mirror interface. The flows a
//! capture sees must be exactly the sampled ones (the sampling is a pure
//! function of the 5-tuple, so the test knows them), each whole.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use splitter_common::{service::mirror_sampled, stats::Stat, FlowKey};
use splitter_testkit::{
    capture::{tcp_flows, Capture, Recording, SeenFlow},
    config::{Config, Service},
    netns::{unique_name, NetNs},
    serve::{ask_version, serve_tcp, serve_udp},
    topology::{vip, Topology, CLIENT, MIRROR, VIP},
};
use splitter_tests::{agent::Agent, netns::topology, raw::RawSocket};

const TIMEOUT: Duration = Duration::from_secs(3);

/// shop (TCP, 50/50) mirroring `mirror_percent` of its flows to the mirror
/// link (none: no mirroring); dns (UDP, blue only).
fn config(mirror_percent: Option<u32>) -> Config {
    let mut shop = Service::tcp(vip(80)).blue_green(8080).weights(&[("blue", 50), ("green", 50)]);
    if let Some(p) = mirror_percent {
        shop = shop.with(&format!("mirror: {{ interface: {MIRROR}, percent: {p} }}"));
    }
    Topology::config()
        .service("shop", shop)
        .service("dns", Service::udp(vip(53)).on_blue("blue", 5353).weights(&[("blue", 1)]))
}

/// The demo topology plus a `tap` namespace joined to the LB by the mirror
/// link (`lb-mirror` in lb, `eth0` in tap).
struct Setup {
    topo: Topology,
    tap: NetNs,
    agent: Agent,
}

fn setup(config: Config) -> Setup {
    let topo = topology();
    for (ns, name) in topo.backends() {
        serve_tcp(ns, 8080, name).expect("TCP backend");
        serve_udp(ns, 5353, name).expect("UDP backend");
    }
    let tap = topo.mirror_link(&unique_name("spt")).expect("mirror link");
    let agent = Agent::start(&topo.lb, &config.to_string());
    Setup { topo, tap, agent }
}

/// Starts recording on the tap side of the mirror link.
fn record(tap: &NetNs) -> Recording {
    tap.run(|| Capture::open("eth0")).expect("capture on the tap side").record()
}

/// The VIP's flows in a recording, by client port; TCP frames between the
/// client and anyone but the VIP (a copy taken after the DNAT) land under 0.
fn flows(frames: &[Vec<u8>]) -> BTreeMap<u16, SeenFlow> {
    let seen = tcp_flows(frames, SocketAddrV4::new(VIP, 80));
    let mut out: BTreeMap<u16, SeenFlow> =
        seen.flows.into_iter().filter(|(c, _)| *c.ip() == CLIENT).map(|(c, f)| (c.port(), f)).collect();
    if seen.other > 0 {
        out.insert(0, SeenFlow::default());
    }
    out
}

/// `n` connections to the VIP (each asks once); the client ports used.
fn connect(topo: &Topology, n: usize) -> Vec<u16> {
    let vip = SocketAddr::from((VIP, 80));
    topo.client.run(|| {
        (0..n)
            .map(|i| {
                let c = TcpStream::connect_timeout(&vip, TIMEOUT).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                c.set_read_timeout(Some(TIMEOUT)).unwrap();
                let v = ask_version(&c).unwrap_or_else(|e| panic!("connection {i} unanswered: {e}"));
                assert!(v == "blue" || v == "green", "connection {i} answered {v:?}");
                c.local_addr().unwrap().port()
            })
            .collect()
    })
}

fn key(port: u16) -> FlowKey {
    FlowKey::v4(CLIENT.octets(), port, VIP.octets(), 80, 6)
}

#[test]
fn a_fifth_of_the_flows_is_copied_whole_and_no_other_flow_at_all() {
    let s = setup(config(Some(20)));
    let recording = record(&s.tap);
    const N: usize = 1000;
    let ports = connect(&s.topo, N);
    let seen = flows(&recording.finish());

    let sampled: BTreeSet<u16> = ports.iter().copied().filter(|p| mirror_sampled(&key(*p), 2000)).collect();
    let captured: BTreeSet<u16> = seen.keys().copied().filter(|p| *p != 0).collect();
    let share = captured.len() as f64 / N as f64;
    // 1,000 flows at 20 %: one standard deviation is 1.3 pp.
    assert!((share - 0.20).abs() <= 0.05, "{} of {N} flows captured ({share:.3}), not 20 % ± 5 pp", captured.len());
    let unsampled: Vec<_> = captured.difference(&sampled).collect();
    assert!(unsampled.is_empty(), "flows copied that were not sampled: {unsampled:?}");
    let missing: Vec<_> = sampled.difference(&captured).collect();
    assert!(missing.is_empty(), "sampled flows with no copy: {missing:?}");
    for (port, f) in &seen {
        assert!(*port != 0, "copies must show the client's view: frames between the client and others were copied");
        assert!(f.syn && f.request && f.answer, "flow from port {port} not copied whole: {f:?}");
    }

    let status = s.agent.status();
    let shop = status.service("shop").unwrap();
    let m = shop.flow_mirror.as_ref().unwrap_or_else(|| panic!("shop's flow mirror in status: {shop:?}"));
    assert_eq!((m.interface.as_deref(), m.percent), (Some("lb-mirror"), 20.0), "{shop:?}");
    assert!(m.packets >= 4 * sampled.len() as u64, "copies counted per flow: {m:?}");
    let c = &status.counters;
    assert!(status.counter(Stat::Mirrored).unwrap() >= 4 * sampled.len() as u64, "{c:?}");
    for k in [Stat::MirrorDown, Stat::MirrorNoDevice, Stat::MirrorDropped, Stat::MirrorFailed] {
        assert_eq!(status.counter(k), Some(0), "{}: {c:?}", k.name());
    }
}

#[test]
fn the_mirror_link_going_down_or_away_costs_copies_and_no_primary_connection() {
    let s = setup(config(Some(50)));
    let vip = SocketAddr::from((VIP, 80));
    let done = AtomicBool::new(false);
    let (ok, failed) = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            s.topo.client.run(|| {
                let (mut ok, mut failed) = (0u32, Vec::new());
                for i in 0..600 {
                    match TcpStream::connect_timeout(&vip, TIMEOUT).and_then(|c| {
                        c.set_read_timeout(Some(TIMEOUT))?;
                        ask_version(&c)
                    }) {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(format!("connection {i}: {e}")),
                    }
                    if i == 200 {
                        s.topo.lb.ip(&["link", "set", "dev", "lb-mirror", "down"]).expect("mirror link down");
                    }
                    if i == 400 {
                        s.topo.lb.ip(&["link", "del", "dev", "lb-mirror"]).expect("mirror link removed");
                    }
                }
                done.store(true, Ordering::Relaxed);
                (ok, failed)
            })
        });
        client.join().expect("client thread")
    });
    assert!(failed.is_empty(), "{} primary connections failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert_eq!(ok, 600);
    let status = s.agent.status();
    let c = &status.counters;
    let n = |stat: Stat| status.counter(stat).unwrap();
    assert!(n(Stat::Mirrored) > 0, "copies before the link went down: {c:?}");
    // A down veth drops at its (deactivated) queue: NET_XMIT_DROP.
    assert!(n(Stat::MirrorDropped) > 0, "copies while the link was down are counted as mirror_dropped: {c:?}");
    assert!(n(Stat::MirrorNoDevice) > 0, "copies after it was removed are counted as mirror_no_device: {c:?}");
}

#[test]
fn a_mirror_link_deleted_and_made_again_gets_its_guard_and_the_copies_back() {
    let s = setup(config(Some(100)));
    let copied = |tap: &NetNs, n: usize| {
        let recording = record(tap);
        let ports = connect(&s.topo, n);
        let seen = flows(&recording.finish());
        ports.iter().filter(|p| seen.contains_key(p)).count()
    };
    assert_eq!(copied(&s.tap, 10), 10, "every flow copied before");
    s.topo.lb.ip(&["link", "del", "dev", MIRROR]).expect("mirror link removed");
    // The same names again: a new interface, with a new index.
    splitter_testkit::netns::veth(&s.topo.lb, MIRROR, &s.tap, "eth0").expect("mirror link made again");
    let again = s.agent.eventually(
        "copies of new flows on the new mirror link",
        Duration::from_secs(2),
        || copied(&s.tap, 5),
        |n| *n == 5,
    );
    assert_eq!(again, 5);
    assert!(s.topo.lb.has_xdp(MIRROR).expect("ip link"), "the guard is back on the new link");
    let log = s.agent.log();
    assert!(log.contains("interface (re)appeared") && log.contains(MIRROR), "{log}");
}

#[test]
fn mirroring_is_switched_at_run_time_and_bad_requests_change_nothing() {
    let mut s = setup(config(None));
    let copies = |topo: &Topology, tap: &NetNs, n: usize| {
        let recording = record(tap);
        let ports = connect(topo, n);
        (ports, flows(&recording.finish()))
    };
    let (_, seen) = copies(&s.topo, &s.tap, 50);
    assert!(seen.is_empty(), "no mirror configured, yet copies: {seen:?}");

    let (ok, out, err) = s.agent.control(&["mirror", "shop", "--interface", "lb-mirror", "--percent", "100"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("mirroring 100% of new flows to lb-mirror"), "{out}");
    let (ports, seen) = copies(&s.topo, &s.tap, 50);
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), ports.iter().copied().collect(), "every flow at 100 %");

    for (args, want) in [
        (&["mirror", "shop", "--interface", "lb-client", "--percent", "5"][..], "clients/backends interface"),
        (&["mirror", "shop", "--interface", "nosuch0", "--percent", "5"][..], "does not exist"),
        (&["mirror", "dns", "--interface", "lb-mirror", "--percent", "500"][..], "out of range"),
        (&["mirror", "nope", "--off"][..], "no service \"nope\""),
    ] {
        let (ok, out, err) = s.agent.control(args);
        assert!(!ok && err.contains(want), "{args:?}: want a refusal mentioning {want:?}, got {out}{err}");
    }
    let (ports, seen) = copies(&s.topo, &s.tap, 20);
    assert_eq!(seen.len(), ports.len(), "a refused request left mirroring as it was");

    // Persisted like a weight: a restarted agent mirrors the same way.
    s.agent.restart(&s.topo.lb).expect("restart");
    let (ports, seen) = copies(&s.topo, &s.tap, 20);
    assert_eq!(seen.len(), ports.len(), "after a restart: {seen:?}");

    let (ok, out, err) = s.agent.control(&["mirror", "shop", "--off"]);
    assert!(ok && out.contains("mirroring off"), "{out}{err}");
    let (_, seen) = copies(&s.topo, &s.tap, 50);
    assert!(seen.is_empty(), "mirroring off, yet copies: {seen:?}");
    let status = s.agent.status();
    let shop = status.service("shop").expect("shop in status");
    assert!(shop.flow_mirror.as_ref().and_then(|m| m.interface.as_ref()).is_none(), "status shows it off: {shop:?}");
}

#[test]
fn answers_a_shadow_sends_from_a_service_address_are_dropped_at_the_mirror_interface() {
    let s = setup(config(Some(20)));
    let lb_mac = s.topo.lb.mac("lb-mirror").expect("lb-mirror's MAC");
    let tap_mac = s.tap.mac("eth0").expect("tap's MAC");
    let udp_from = |src: SocketAddrV4| {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2(tap_mac, lb_mac)
            .ipv4(src.ip().octets(), CLIENT.octets(), 64)
            .udp(src.port(), 5555)
            .write(&mut frame, b"from the shadow")
            .unwrap();
        frame
    };
    let sock = s.topo.client.run(|| UdpSocket::bind("0.0.0.0:5555")).expect("client socket");
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let raw = s.tap.run(|| RawSocket::open("eth0")).expect("raw socket in tap");
    let before = s.agent.counter(Stat::ShadowReplies);
    // Not from a service: the LB's stack forwards it to the client. (Shows
    // the path would deliver, so the drop below is the guard's doing.)
    let mut buf = [0u8; 64];
    let mut delivered = false;
    for _ in 0..5 {
        raw.send(&udp_from(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 99), 53))).unwrap();
        if sock.recv_from(&mut buf).is_ok() {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "a datagram from a non-service address crossed the LB");
    for _ in 0..5 {
        raw.send(&udp_from(SocketAddrV4::new(VIP, 53))).unwrap();
    }
    assert!(sock.recv_from(&mut buf).is_err(), "an answer from the service address reached the client");
    assert_eq!(s.agent.counter(Stat::ShadowReplies) - before, 5, "each one counted");
}

#[test]
fn a_client_reset_ends_a_mirrored_flow_at_once() {
    // Every flow mirrored: every packet takes the TC program's path.
    let s = setup(config(Some(100)));
    let vip = SocketAddr::from((VIP, 80));
    let held: Vec<TcpStream> = s.topo.client.run(|| {
        (0..20)
            .map(|i| {
                let c = TcpStream::connect_timeout(&vip, TIMEOUT).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                c.set_read_timeout(Some(TIMEOUT)).unwrap();
                ask_version(&c).unwrap_or_else(|e| panic!("connection {i} unanswered: {e}"));
                c
            })
            .collect()
    });
    let before = s.agent.status().active_flows;
    assert!(before >= 20, "{before} flows in the table with 20 held");
    let mirrored_before = s.agent.counter(Stat::Mirrored);
    // Closed with a reset (linger 0): the client's RST, seen by TC, removes
    // each flow from the table then and there, not when it ages out.
    for c in held {
        socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO)).expect("linger 0");
        drop(c);
    }
    let after = s.agent.eventually(
        "the reset flows to leave the table",
        Duration::from_secs(3),
        || s.agent.status().active_flows,
        |n| *n + 20 <= before,
    );
    assert!(after + 20 <= before, "{before} → {after}");
    assert!(s.agent.counter(Stat::Mirrored) > mirrored_before, "the resets went the mirrored path (copied)");
}
