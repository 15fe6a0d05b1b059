//! Tier 3: hostile clients against the l7 side of the real agent. Idle and
//! slow connections are closed after `l7.header_read_timeout`, one client
//! address cannot hold more than `l7.max_connections_per_client`, and
//! whatever they do, `status` and `/metrics` keep answering and a normal
//! client is served once the limits have done their work.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use http::StatusCode;
use splitter_tests::{
    agent::Agent,
    http::{get, serve_http, Client},
    netns::unique_name,
};
use splitter_user::demo::Topology;

const VIP: &str = "203.0.113.10:8080";

const CONFIG: &str = r#"
interfaces:
  clients: [lb-client]
  backends: [lb-blue, lb-green]
metrics: { listen: "127.0.0.1:9190" }
l7: { header_read_timeout: 1s, max_connections_per_client: 100 }
services:
  api:
    listen: 203.0.113.10:8080
    protocol: tcp
    mode: l7
    versions: { v1: [198.51.100.10:8081] }
    weights: { v1: 1 }
"#;

fn setup() -> (Topology, Agent) {
    splitter_tests::require_root("the hostile l7 test");
    let topo = Topology::build(&unique_name("spt")).expect("build topology");
    serve_http(&topo.blue, 8081, "v1").expect("v1 backend");
    let agent = Agent::start(&topo.lb, CONFIG);
    (topo, agent)
}

/// The l7 service's connection counters, from `status`.
fn closed(agent: &Agent) -> splitter_user::l7::ConnectionCounts {
    let info = agent.info().expect("the agent answers status");
    info.l7["api"].connections.clone()
}

/// GET /metrics in the lb namespace (the agent listens on its loopback).
fn scrape(topo: &Topology) -> String {
    topo.lb
        .run(|| {
            let mut s = TcpStream::connect_timeout(&"127.0.0.1:9190".parse().unwrap(), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: splitter\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })
        .expect("scraping the agent")
}

/// Polls `f` every 50 ms for up to `limit`; the last value when it never held.
fn within<T: std::fmt::Debug>(limit: Duration, mut f: impl FnMut() -> T, ok: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let v = f();
        if ok(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `stream` was closed by the other side (EOF or reset) within `limit`.
fn closed_by_peer(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // An answer (e.g. 408/400) before the close counts as closing too.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_and_slow_clients_are_closed_and_cannot_take_the_agent_down() {
    let (topo, agent) = setup();
    let vip: SocketAddr = VIP.parse().unwrap();
    // 300 connections that send nothing, from one client address.
    let mut idle: Vec<TcpStream> = topo.client.run(|| {
        (0..300)
            .map(|i| TcpStream::connect_timeout(&vip, Duration::from_secs(3)).unwrap_or_else(|e| panic!("{i}: {e}")))
            .collect()
    });
    // The agent's control socket answers meanwhile (the l7 side does not
    // hold it up), and the per-client limit closed 200 of them at once.
    let counts = within(Duration::from_secs(5), || closed(&agent), |c| c.refused_client >= 200);
    assert_eq!(counts.refused_client, 200, "{counts:?}");
    // The 100 admitted ones are closed after the header read timeout (1 s).
    let counts = within(Duration::from_secs(10), || closed(&agent), |c| c.head_timeouts >= 100);
    assert_eq!(counts.head_timeouts, 100, "{counts:?}");
    for (i, c) in idle.iter_mut().enumerate() {
        assert!(closed_by_peer(c, Duration::from_secs(2)), "idle connection {i} is still open");
    }

    // Slowloris: one byte every 300 ms never completes a head in time; nor
    // does a head with bare-LF line endings, or a partial h2 preface.
    let mut slow = topo.client.run(|| TcpStream::connect(vip).unwrap());
    let mut bare_lf = topo.client.run(|| TcpStream::connect(vip).unwrap());
    bare_lf.write_all(b"GET / HTTP/1.1\nHost: x\n").unwrap();
    let mut preface = topo.client.run(|| TcpStream::connect(vip).unwrap());
    preface.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let started = Instant::now();
    let mut slow_closed = false;
    for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle().take(40) {
        if slow.write_all(&[*b]).is_err() {
            slow_closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(slow_closed || closed_by_peer(&mut slow, Duration::from_secs(2)), "a slow head is cut off");
    assert!(started.elapsed() < Duration::from_secs(12), "cut off after about the timeout");
    assert!(closed_by_peer(&mut bare_lf, Duration::from_secs(3)), "a bare-LF head that never ends is cut off");
    assert!(closed_by_peer(&mut preface, Duration::from_secs(3)), "a partial h2 preface is cut off");

    // A normal client is served, and /metrics says what happened.
    let client = Client::new(&topo.client);
    for a in client.send_all(&topo.client, (0..20).map(|_| get(vip, "/", &[])).collect(), 4, false) {
        assert_eq!(a.expect("answered").status, StatusCode::OK);
    }
    let metrics = scrape(&topo);
    for want in [
        "splitter_l7_connections_closed_total{service=\"api\",reason=\"client\"} 200",
        "splitter_l7_connections_closed_total{service=\"api\",reason=\"head_timeout\"}",
    ] {
        assert!(metrics.contains(want), "/metrics has {want:?}:\n{metrics}");
    }
}
