//! Tier 3: the real agent attaches the real XDP program to a veth inside a
//! network namespace, real TCP and UDP clients talk across it, and the
//! counters `splitter status` reports match what was sent.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use splitter_common::stats::Stat;
use splitter_testkit::{
    config::Config,
    netns::{unique_name, NetNs},
};
use splitter_tests::{
    agent::{splitter_bin, Agent},
    netns::{netns, Veth},
};
use splitter_user::status::Report;

const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const LB4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const LB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const TIMEOUT: Duration = Duration::from_secs(5);

/// client ns ──veth── lb ns, addressed on both families.
fn topology() -> (NetNs, NetNs, Veth) {
    let client = netns("cl");
    let lb = netns("lb");
    let veth = Veth::new(&client, &lb);
    client.addr(&veth.a, CLIENT4.into(), 24).unwrap();
    client.addr(&veth.a, CLIENT6.into(), 64).unwrap();
    lb.addr(&veth.b, LB4.into(), 24).unwrap();
    lb.addr(&veth.b, LB6.into(), 64).unwrap();
    (client, lb, veth)
}

fn send_udp(client: &NetNs, to: SocketAddr, n: usize) {
    client.run(|| {
        let bind: SocketAddr =
            if to.is_ipv4() { (IpAddr::from(CLIENT4), 0).into() } else { (IpAddr::from(CLIENT6), 0).into() };
        let sock = UdpSocket::bind(bind).expect("bind UDP client");
        for i in 0..n {
            sock.send_to(format!("datagram {i}").as_bytes(), to).expect("send UDP");
        }
    });
}

fn recv_udp(server: &UdpSocket, n: usize) -> usize {
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    (0..n).take_while(|_| server.recv_from(&mut buf).is_ok()).count()
}

#[test]
fn agent_attaches_xdp_and_counts_real_tcp_and_udp() {
    let (client, lb, veth) = topology();
    let mut agent = Agent::start(&lb, &Config::new(&[&veth.b], &[]).to_string());
    assert!(lb.has_xdp(&veth.b).unwrap(), "no XDP program on {} after start:\n{}", veth.b, agent.log());

    let udp4 = lb.run(|| UdpSocket::bind((LB4, 0)).expect("bind UDP server"));
    let udp6 = lb.run(|| UdpSocket::bind((LB6, 0)).expect("bind UDP6 server"));
    let tcp = lb.run(|| TcpListener::bind((LB4, 0)).expect("bind TCP server"));
    let tcp_addr = tcp.local_addr().unwrap();

    let before = agent.status();
    let get = |r: &Report, stat: Stat| {
        r.counter(stat).unwrap_or_else(|| panic!("counter {} missing in {:?}", stat.name(), r.counters))
    };

    // UDP: every datagram passes the program and reaches the server.
    const N4: usize = 40;
    const N6: usize = 25;
    send_udp(&client, udp4.local_addr().unwrap(), N4);
    send_udp(&client, udp6.local_addr().unwrap(), N6);
    assert_eq!(recv_udp(&udp4, N4), N4, "IPv4 datagrams lost behind the XDP program");
    assert_eq!(recv_udp(&udp6, N6), N6, "IPv6 datagrams lost behind the XDP program");

    // TCP: echo over a handful of real connections.
    const CONNS: usize = 5;
    let server = std::thread::spawn(move || {
        for _ in 0..CONNS {
            let (mut s, _) = tcp.accept().expect("accept");
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).expect("read");
            s.write_all(&buf).expect("echo");
        }
    });
    client.run(|| {
        for _ in 0..CONNS {
            let mut s = TcpStream::connect_timeout(&tcp_addr, TIMEOUT).expect("connect through XDP");
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).expect("echo back");
            assert_eq!(&buf, b"hello");
        }
    });
    server.join().expect("TCP server");

    let after = agent.status();
    let delta = |stat: Stat| get(&after, stat) - get(&before, stat);
    let all = &after.counters;
    assert_eq!(delta(Stat::Udp), (N4 + N6) as u64, "UDP counter vs datagrams sent; all: {all:?}");
    // Each connection sends at least SYN, ACK, data and FIN towards the server.
    assert!(delta(Stat::Tcp) >= 4 * CONNS as u64, "TCP counter moved by {} for {CONNS} connections", delta(Stat::Tcp));
    assert!(delta(Stat::Ipv4) >= (N4 + 4 * CONNS) as u64, "ipv4 moved by {}", delta(Stat::Ipv4));
    assert!(delta(Stat::Ipv6) >= N6 as u64, "ipv6 moved by {}", delta(Stat::Ipv6));
    assert_eq!(delta(Stat::Dropped), 0);
    assert_eq!(
        delta(Stat::Truncated) + delta(Stat::BadHeader) + delta(Stat::BadLength),
        0,
        "no malformed frames were sent"
    );
    assert_eq!(delta(Stat::Passed), delta(Stat::RxPackets), "no service is configured: every packet is passed");

    // SIGTERM stops the agent and leaves the data path; `down` removes it.
    assert!(agent.stop_ok(), "agent did not exit cleanly:\n{}", agent.log());
    assert!(lb.has_xdp(&veth.b).unwrap(), "SIGTERM must leave the pinned data path serving");
    agent.down().unwrap_or_else(|e| panic!("{e}"));
    assert!(!lb.has_xdp(&veth.b).unwrap(), "XDP program still attached after `splitter down`");
    assert!(!agent.pin_path.exists(), "pins left at {}", agent.pin_path.display());
}

#[test]
fn agent_refuses_a_missing_interface_and_leaves_nothing_behind() {
    splitter_tests::require_root("starting the agent");
    let lb = netns("lb");
    let dir = tempfile::tempdir().unwrap();
    let pin = std::path::PathBuf::from("/sys/fs/bpf").join(unique_name("spt"));
    let cfg = dir.path().join("c.yaml");
    let config = Config::new(&["nosuchif0"], &[]).setting(&format!("pin_path: {}", pin.display()));
    std::fs::write(&cfg, config.to_string()).unwrap();
    let out = lb.command(splitter_bin()).args(["run", "--config"]).arg(&cfg).output().expect("spawn");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "agent started on a missing interface");
    assert!(err.contains("nosuchif0"), "error does not name the interface: {err}");
    assert!(err.contains("nothing was loaded or attached"), "{err}");
    assert!(!pin.join("SPLITTER_STATS").exists(), "counters pinned by a failed start");
    let _ = std::fs::remove_dir(&pin);
}
