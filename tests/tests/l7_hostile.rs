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
use splitter_testkit::{
    config::Service,
    http::{get, raw_exchange, serve_http, Client},
    topology::{vip, Topology, BLUE, GREEN},
    wait::eventually,
};
use splitter_tests::{agent::Agent, netns::topology};

const VIP: &str = "203.0.113.10:8080";

/// `api` on the VIP's :8080, v1 on blue's :8081 (and v2 on green's, when asked).
fn api(with_v2: bool) -> Service {
    let api = Service::l7(vip(8080)).version("v1", [SocketAddr::from((BLUE, 8081))]);
    let api = if with_v2 { api.version("v2", [SocketAddr::from((GREEN, 8081))]) } else { api };
    api.weights(&[("v1", 1)])
}

fn setup() -> (Topology, Agent) {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").expect("v1 backend");
    let agent = Agent::start(&topo.lb, &limited("l7: { header_read_timeout: 1s, max_connections_per_client: 100 }"));
    (topo, agent)
}

/// `api` (v1 only) with metrics on the lb's loopback and the `l7:` settings given.
fn limited(l7: &str) -> String {
    Topology::config()
        .setting("metrics: { listen: \"127.0.0.1:9190\" }")
        .setting(l7)
        .service("api", api(false))
        .to_string()
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
    let counts =
        eventually("200 refused at accept", Duration::from_secs(5), || closed(&agent), |c| c.refused_client >= 200);
    assert_eq!(counts.refused_client, 200, "{counts:?}");
    // The 100 admitted ones are closed after the header read timeout (1 s).
    let counts =
        eventually("100 head timeouts", Duration::from_secs(10), || closed(&agent), |c| c.head_timeouts >= 100);
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

/// The status codes of the answers in a raw HTTP/1.1 exchange, in order.
fn statuses(answer: &str) -> Vec<&str> {
    answer.match_indices("HTTP/1.1 ").filter_map(|(at, _)| answer.get(at + 9..at + 12)).collect()
}

#[test]
fn a_client_sending_malformed_bodies_cannot_roll_a_canary_back() {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").expect("v1 backend");
    serve_http(&topo.green, 8081, "v2").expect("v2 backend");
    let config = Topology::config().service("api", api(true).route("{ headers: { x-canary: \"true\" } }", "v2"));
    let agent = Agent::start(&topo.lb, &config.to_string());
    let (ok, out, err) = agent.control(&[
        "rollout",
        "api",
        "--to",
        "v2",
        "--steps",
        "50,100",
        "--interval",
        "2s",
        "--min-requests",
        "5",
        "--detach",
    ]);
    assert!(ok, "{out}{err}");
    let head = "POST / HTTP/1.1\r\nHost: api\r\nx-canary: true\r\nTransfer-Encoding: chunked\r\n\r\n";
    let bodies =
        ["zz\r\nabc", "0x3\r\nabc\r\n0\r\n\r\n", "FFFFFFFFFFFFFFFFFF\r\n", "3\r\nabcX0\r\n\r\n", "3\nabc\n0\n\n"];
    let client = Client::new(&topo.client);
    let vip: SocketAddr = VIP.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut malformed = 0;
    // Forty malformed bodies aimed at the canary, beside its good traffic,
    // until the rollout is over.
    let state = loop {
        for body in bodies {
            let answer = raw_exchange(&topo.client, vip, format!("{head}{body}").as_bytes());
            assert!(answer.starts_with("HTTP/1.1 400"), "a malformed body is the client's error: {answer:?}");
            malformed += 1;
        }
        for a in
            client.send_all(&topo.client, (0..5).map(|_| get(vip, "/", &[("x-canary", "true")])).collect(), 2, false)
        {
            assert_eq!(a.expect("answered").status, StatusCode::OK);
        }
        let r = agent.info().expect("status").rollouts["api"].clone();
        if r.state.is_over() || Instant::now() > deadline {
            break r.state;
        }
    };
    assert!(malformed >= 40, "{malformed} malformed requests sent");
    assert_eq!(state, splitter_model::rollout::State::Promoted, "malformed client bodies rolled the canary back");
    let v2 = agent.info().expect("status").l7["api"].versions["v2"].clone();
    assert_eq!((v2.bad_gateway, v2.responses_5xx, v2.timeouts), (0, 0, 0), "{v2:?}");
    assert_eq!(v2.client_errors, malformed, "{v2:?}");
}

#[test]
fn the_framing_guard_and_header_checks_hold_for_the_whole_connection() {
    let (topo, agent) = setup();
    // A chunk size with a blank before its CRLF, then a smuggling attempt on
    // the same connection: the second is refused.
    let answer = raw_exchange(
        &topo.client,
        vip(8080),
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n\
POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(statuses(&answer), ["200", "400"], "{answer}");
    // The same after a first request with bare-LF line endings.
    let answer = raw_exchange(
        &topo.client,
        vip(8080),
        b"GET / HTTP/1.1\nHost: a\n\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(statuses(&answer), ["200", "400"], "{answer}");
    for (request, status) in [
        (&b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..], "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", "HTTP/1.1 405"),
    ] {
        let answer = raw_exchange(&topo.client, vip(8080), request);
        assert!(answer.starts_with(status), "{} -> {answer:?}", String::from_utf8_lossy(request));
    }
    assert_eq!(agent.info().expect("status").l7["api"].client_errors, 3);
}

#[test]
fn under_a_1024_open_file_limit_many_idle_connections_leave_status_and_metrics_answering() {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").expect("v1 backend");
    // Per-client limits high enough that only the descriptor budget holds:
    // (1024 - 512 kept for the agent) / 2 = 256 client connections.
    let config = limited("l7: { header_read_timeout: 3s, max_connections_per_client: 5000 }");
    let agent = Agent::start_limited(&topo.lb, &config, 1024);
    // This test holds 1,100 sockets itself.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("getrlimit");
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    let vip: SocketAddr = VIP.parse().unwrap();
    let idle: Vec<TcpStream> = topo.client.run(|| {
        (0..1100)
            .map(|i| TcpStream::connect_timeout(&vip, Duration::from_secs(3)).unwrap_or_else(|e| panic!("{i}: {e}")))
            .collect()
    });
    // status and /metrics answer while they are held.
    let counts =
        eventually("844 refused at the budget", Duration::from_secs(5), || closed(&agent), |c| c.refused_budget >= 844);
    assert_eq!(counts.refused_budget, 1100 - 256, "{counts:?}");
    let metrics = scrape(&topo);
    assert!(
        metrics.contains("splitter_l7_connections_closed_total{service=\"api\",reason=\"budget\"} 844"),
        "{metrics}"
    );
    // Once the held ones are cut off, clients are served again.
    eventually("256 head timeouts", Duration::from_secs(10), || closed(&agent), |c| c.head_timeouts >= 256);
    drop(idle);
    let client = Client::new(&topo.client);
    for a in client.send_all(&topo.client, (0..20).map(|_| get(vip, "/", &[])).collect(), 4, false) {
        assert_eq!(a.expect("answered").status, StatusCode::OK);
    }
    assert!(agent.log().contains("l7 connection budget"), "the agent says what it gave the l7 side");
}
