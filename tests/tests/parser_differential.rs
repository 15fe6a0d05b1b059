//! Tier 2, the packet parser checked differentially: thousands of frames —
//! well-formed ones of every kind the program knows, each cut at every
//! length, each header byte set to edge values, and seeded random
//! corruptions — run through the real XDP program (`BPF_PROG_TEST_RUN`), and
//! its verdict, output and counters must be what the host-side mirror
//! (`splitter_common::packet::parse`) implies. The `packet` fuzz target runs
//! the same judge on what libFuzzer makes up (`cargo xtask fuzz`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use splitter_common::{
    packet::{CLASS_STATS, ETH_HLEN},
    stats::Stat,
};
use splitter_testkit::config::Service;
use splitter_tests::{
    differential::{judge, Run, Services, RUNNABLE},
    fixture::{net::*, FixtureNet, Harness},
    packet::{self, Tcp},
};

fn sa4(a: [u8; 4], port: u16) -> SocketAddr {
    (a, port).into()
}
fn sa6(a: [u8; 16], port: u16) -> SocketAddr {
    (Ipv6Addr::from(a), port).into()
}

/// Frames of every kind the parser tells apart, to and not to a service.
fn bases() -> Vec<Vec<u8>> {
    let mut with_options = packet::with_ipv4_ihl(packet::tcp_v4(CLIENT4, 40000, VIP4, 80, Tcp::Syn, b"x"), 6);
    packet::fix_ipv4_checksum(&mut with_options);
    vec![
        packet::tcp_v4(CLIENT4, 40000, VIP4, 80, Tcp::Syn, b""),
        packet::tcp_v4(CLIENT4, 40000, VIP4, 80, Tcp::Ack, b"GET / HTTP/1.1\r\n\r\n"),
        packet::tcp_v4(CLIENT4, 40001, VIP4, 81, Tcp::Syn, b""),
        packet::tcp_v4(BLUE4, 8080, CLIENT4, 40000, Tcp::Ack, b"reply"),
        // Endpoints answering the host itself (its own connections).
        packet::tcp_v4(BLUE4, 8080, FXA4, 50000, Tcp::Ack, b"to the host"),
        packet::udp_v4([198, 51, 100, 11], 5353, FXB4, 50001, b"to the host"),
        packet::tcp_v6(BLUE6, 8080, FXA6, 50002, Tcp::Ack, b"to the host"),
        packet::udp_v4(CLIENT4, 5000, VIP4, 53, b"query"),
        packet::udp_v4_vlan(7, CLIENT4, 5001, VIP4, 53, b"query"),
        packet::tcp_v6(CLIENT6, 40000, VIP6, 80, Tcp::Syn, b""),
        packet::udp_v6(CLIENT6, 5000, VIP6, 53, b"q"),
        packet::icmp_echo_v4(CLIENT4, VIP4),
        packet::icmp_echo_v6(CLIENT6, VIP6),
        packet::arp_request(CLIENT4, VIP4),
        packet::as_ipv4_fragment(packet::udp_v4(CLIENT4, 5002, VIP4, 53, b"frag"), 0, true),
        with_options,
        packet::Frame::tcp(sa4(CLIENT4, 40003), sa4(VIP4, 80), Tcp::Syn).ttl(1).build(),
    ]
}

/// Bases, every cut of them, every header byte at edge values, and seeded
/// random corruptions.
fn corpus() -> Vec<Vec<u8>> {
    let bases = bases();
    let mut out = bases.clone();
    for b in &bases {
        out.extend((ETH_HLEN..b.len()).map(|n| b[..n].to_vec()));
        for at in 0..b.len().min(80) {
            for v in [0x00, 0xff, b[at] ^ 0x01, b[at] ^ 0x80, b[at] ^ 0x0f, b[at] ^ 0xf0] {
                let mut m = b.clone();
                m[at] = v;
                out.push(m);
            }
        }
    }
    // xorshift64: the same corruptions every run.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..3000 {
        let mut m = bases[next() as usize % bases.len()].clone();
        for _ in 0..1 + next() % 4 {
            let at = next() as usize % m.len();
            m[at] = next() as u8;
        }
        let keep = m.len() - (next() as usize % 8).min(m.len() - ETH_HLEN);
        m.truncate(keep);
        out.push(m);
    }
    out.retain(|f| RUNNABLE.contains(&f.len()));
    out
}

#[test]
fn the_xdp_parser_agrees_with_its_host_side_mirror_on_every_frame() {
    let config = FixtureNet::config()
        .service("shop", Service::tcp(sa4(VIP4, 80)).version("blue", [sa4(BLUE4, 8080)]).weights(&[("blue", 1)]))
        .service(
            "dns",
            Service::udp(sa4(VIP4, 53)).version("v1", [sa4([198, 51, 100, 11], 5353)]).weights(&[("v1", 1)]),
        )
        .service("shop6", Service::tcp(sa6(VIP6, 80)).version("blue", [sa6(BLUE6, 8080)]).weights(&[("blue", 1)]));
    let h = Harness::with_config(&config);
    let ip4 = |a: [u8; 4]| IpAddr::from(a);
    let ip6 = |a: [u8; 16]| IpAddr::from(a);
    let services = Services::of(&h.plans).on_host(
        &[ip4(FXA4), ip4(FXB4), ip6(FXA6), ip6(FXB6)],
        &[ip4(CLIENT4), ip4(BLUE4), ip4(GREEN4), ip4([198, 51, 100, 11]), ip6(CLIENT6), ip6(BLUE6)],
    );
    let corpus = corpus();
    let counters = || {
        let c = h.dp.stats().expect("read counters");
        Stat::ALL.iter().map(|s| c.get(*s)).collect::<Vec<u64>>()
    };
    let (failures, classes) = h.net.ns.run(|| {
        let mut failures = Vec::new();
        let mut classes: BTreeMap<&str, usize> = BTreeMap::new();
        for frame in &corpus {
            let before = counters();
            let out = h.dp.test_run(frame, 1).expect("BPF_PROG_TEST_RUN");
            let after = counters();
            let deltas: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            if let Err(e) = judge(frame, &services, &Run { action: out.action, output: &out.output, deltas: &deltas }) {
                failures.push(e);
            }
            for c in CLASS_STATS.iter().chain([&Stat::ToHost]).filter(|c| deltas[**c as usize] > 0) {
                *classes.entry(c.name()).or_default() += 1;
            }
        }
        (failures, classes)
    });
    assert!(
        failures.is_empty(),
        "{} of {} frames were handled otherwise than the host-side parser says; the first:\n{}",
        failures.len(),
        corpus.len(),
        failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
    // The corpus reached every outcome, so each comparison could have failed.
    for c in CLASS_STATS {
        assert!(classes.get(c.name()).is_some_and(|n| *n > 0), "no frame was classified {}: {classes:?}", c.name());
    }
    assert!(classes.get(Stat::ToHost.name()).is_some_and(|n| *n > 0), "no frame was passed to the host: {classes:?}");
    assert!(corpus.len() > 5000, "{} frames", corpus.len());
}
