//! Throughput of an l4 service with 0 % and with 10 % of its flows mirrored
//! (run by `cargo xtask bench`, root): the demo topology plus a `tap`
//! namespace behind the LB's mirror interface, TCP sinks as backends, and a
//! client sending `BYTES` on each of `CONNS` parallel connections. Rounds
//! alternate mirroring off and on (`splitter mirror`), so both see the same
//! machine state. Client ports are chosen so exactly `CONNS / 10` flows of a
//! mirrored round are sampled (the sampling is a pure function of the
//! 5-tuple), which keeps the rounds comparable.
//!
//! Writes `target/bench/mirror.md`.

use std::{fmt::Write as _, net::SocketAddr, time::Instant};

use splitter_common::{service::mirror_sampled, stats::Stat, FlowKey};
use splitter_testkit::{
    agent_process::AgentProcess,
    config::{Config, Service},
    netns::{unique_name, NetNs},
    topology::{vip, Topology, CLIENT, VIP},
};
use splitter_tests::{
    agent::release_bin,
    load::{median, send_bulk, serve_sink},
};
use splitter_user::status::Report;

const CONNS: usize = 40;
const BYTES: usize = 8 << 20;
const PORT: u16 = 9000;

fn rounds() -> usize {
    std::env::var("SPLITTER_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(5)
}

/// bulk: split 1:1 over TCP sinks on blue and green.
fn config() -> Config {
    Topology::config().service("bulk", Service::tcp(vip(80)).blue_green(PORT).weights(&[("blue", 1), ("green", 1)]))
}

/// Client ports for one round: `CONNS` fresh ports, exactly `CONNS / 10` of
/// them sampled at 10 %.
fn ports(next: &mut u16) -> Vec<u16> {
    let (mut sampled, mut plain) = (Vec::new(), Vec::new());
    while sampled.len() < CONNS / 10 || plain.len() < CONNS - CONNS / 10 {
        let p = *next;
        *next += 1;
        let key = FlowKey::v4(CLIENT.octets(), p, VIP.octets(), 80, 6);
        if mirror_sampled(&key, 1000) {
            if sampled.len() < CONNS / 10 {
                sampled.push(p);
            }
        } else if plain.len() < CONNS - CONNS / 10 {
            plain.push(p);
        }
    }
    sampled.into_iter().chain(plain).collect()
}

/// Sends `BYTES` on each connection in parallel; Gbit/s over the round.
fn round(client: &NetNs, ports: &[u16]) -> f64 {
    let vip = SocketAddr::from((VIP, 80));
    let start = Instant::now();
    client.run(|| {
        std::thread::scope(|s| {
            for &port in ports {
                s.spawn(move || {
                    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
                    sock.bind(&SocketAddr::from((CLIENT, port)).into()).unwrap_or_else(|e| panic!("bind {port}: {e}"));
                    send_bulk(vip, BYTES, Some(sock));
                });
            }
        })
    });
    (ports.len() * BYTES * 8) as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    splitter_tests::require_root("the mirroring benchmark");
    let topo = Topology::build(&unique_name("spb")).expect("topology");
    for (ns, _) in topo.backends() {
        serve_sink(ns, PORT);
    }
    let _tap = topo.mirror_link(&unique_name("spb")).expect("mirror link");
    let bin = release_bin();
    let mut agent =
        AgentProcess::start_unique(&bin, &topo.lb, "spb", &config().to_string(), &[]).unwrap_or_else(|e| panic!("{e}"));
    let mirror = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(["mirror", "bulk"])
            .args(args)
            .arg("--socket")
            .arg(&agent.control_socket)
            .output()
            .expect("splitter mirror");
        assert!(out.status.success(), "splitter mirror {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let mirrored = || {
        let out = std::process::Command::new(&bin)
            .args(["status", "--json", "--config"])
            .arg(&agent.config_path)
            .output()
            .expect("status");
        let r: Report = serde_json::from_slice(&out.stdout).expect("status --json prints a Report");
        (r.counter(Stat::Mirrored).unwrap_or(0), r.counter(Stat::ServicePackets).unwrap_or(0))
    };

    let mut next_port = 20000u16;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut copies, mut packets) = (0u64, 0u64);
    round(&topo.client, &ports(&mut next_port)); // warm-up
    for r in 0..rounds() {
        mirror(&["--off"]);
        off.push(round(&topo.client, &ports(&mut next_port)));
        mirror(&["--interface", "lb-mirror", "--percent", "10"]);
        let (c0, p0) = mirrored();
        on.push(round(&topo.client, &ports(&mut next_port)));
        let (c1, p1) = mirrored();
        copies += c1 - c0;
        packets += p1 - p0;
        eprintln!("round {}/{}: off {:.2} Gbit/s, 10 % {:.2} Gbit/s", r + 1, rounds(), off[r], on[r]);
    }
    let _ = agent.stop();

    let (off, on) = (median(off), median(on));
    let mut md = String::new();
    writeln!(
        md,
        "### L4 service throughput with mirroring ({} interleaved rounds, {CONNS} parallel connections × {} MiB, median [min–max])\n",
        rounds(),
        BYTES >> 20
    )
    .unwrap();
    writeln!(md, "| mirrored flows | Gbit/s | vs. no mirroring |").unwrap();
    writeln!(md, "|---|---|---|").unwrap();
    writeln!(md, "| 0 % | {:.2} [{:.2}–{:.2}] | 1.00× |", off.0, off.1, off.2).unwrap();
    writeln!(
        md,
        "| 10 % ({} of {CONNS} flows) | {:.2} [{:.2}–{:.2}] | {:.2}× |",
        CONNS / 10,
        on.0,
        on.1,
        on.2,
        on.0 / off.0
    )
    .unwrap();
    writeln!(
        md,
        "\nIn the mirrored rounds {copies} copies (both directions) left lb-mirror while the service received {packets} client packets (a copy of a coalesced packet counts per segment). Client, LB and backends share this machine's cores: the ratio is the point."
    )
    .unwrap();
    splitter_tests::report::write_md("mirror", &md);
}
