//! Tier 3, WebSocket (and any `Upgrade`) through the l7 proxy: real
//! tokio-tungstenite echo servers (v1 on blue, v2 on green) and clients.
//! The upgrade goes to the version routing and stickiness pick, becomes a
//! tunnel after the 101, counts as one request, and is cut after
//! `l7.idle_timeout` with no byte either way.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use splitter_testkit::{
    config::Service,
    http::serve_http,
    topology::{vip, Topology},
};
use splitter_tests::{
    agent::Agent,
    netns::topology,
    ws::{serve_ws, WsClient},
};

/// api on the VIP's :8080: v1 (blue) and v2 (green) WebSocket echoes on
/// :8081 split 50/50, sticky by the `user` cookie; `plain` (blue :8082) is a
/// plain HTTP server, routed to by `x-plain: 1`.
fn setup(l7: &str) -> (Topology, Agent, SocketAddr) {
    let topo = topology();
    serve_ws(&topo.blue, 8081, "v1").expect("v1 backend");
    serve_ws(&topo.green, 8081, "v2").expect("v2 backend");
    serve_http(&topo.blue, 8082, "plain").expect("plain backend");
    let api = Service::l7(vip(8080))
        .on_blue("v1", 8081)
        .on_green("v2", 8081)
        .on_blue("plain", 8082)
        .weights(&[("v1", 50), ("v2", 50)])
        .route(r#"{ headers: { x-plain: "1" } }"#, "plain")
        .with("affinity: { cookie: user }");
    let agent = Agent::start(&topo.lb, &Topology::config().setting(l7).service("api", api).to_string());
    (topo, agent, vip(8080))
}

#[test]
fn websockets_go_to_the_sticky_version_and_echo_both_ways() {
    let (topo, agent, vip) = setup("l7: { idle_timeout: 60s }");
    let mut placed: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..30 {
        let cookie = format!("user=u{i}");
        let mut ws = WsClient::connect(&topo.client, vip, "/chat", &[("cookie", &cookie)]).expect("a WebSocket");
        assert_eq!(ws.status, http::StatusCode::SWITCHING_PROTOCOLS);
        let first = ws.echo("hello").expect("an echo");
        let (backend, text) = first.split_once(": ").expect("NAME: TEXT");
        assert_eq!(text, "hello");
        for n in 0..5 {
            assert_eq!(ws.echo(&format!("m{n}")).unwrap(), format!("{backend}: m{n}"), "one tunnel, one backend");
        }
        placed.insert(cookie, backend.to_owned());
    }
    let v1 = placed.values().filter(|b| *b == "v1").count();
    assert!(v1 > 0 && v1 < 30, "both versions get WebSockets at 50/50: {placed:?}");
    // The same user comes back to the same version.
    for (cookie, backend) in placed.iter().take(10) {
        let mut ws = WsClient::connect(&topo.client, vip, "/chat", &[("cookie", cookie)]).expect("a WebSocket");
        assert_eq!(ws.echo("again").unwrap(), format!("{backend}: again"), "{cookie}");
    }
    // Each WebSocket was one request, answered 101.
    let info = agent.info().expect("status");
    let versions = &info.l7["api"].versions;
    let (requests, switched): (u64, u64) =
        versions.values().fold((0, 0), |(r, s), c| (r + c.requests, s + c.responses_1xx));
    assert_eq!((requests, switched), (40, 40), "{versions:?}");
}

#[test]
fn a_silent_websocket_is_cut_after_the_idle_timeout_and_a_busy_one_is_not() {
    let (topo, agent, vip) = setup("l7: { idle_timeout: 1s }");
    let mut silent = WsClient::connect(&topo.client, vip, "/", &[]).expect("a WebSocket");
    let mut busy = WsClient::connect(&topo.client, vip, "/", &[]).expect("a WebSocket");
    silent.echo("first").expect("an echo");
    let started = Instant::now();
    // The busy one talks every 300 ms for 3 s: it stays.
    while started.elapsed() < Duration::from_secs(3) {
        busy.echo("ping").expect("the busy tunnel stays open");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(silent.closed_within(Duration::from_millis(100)), "the silent tunnel was cut (within 3 s)");
    let c = agent.info().expect("status").l7["api"].connections.clone();
    assert_eq!(c.idle_closed, 1, "{c:?}");
}

/// Sends `request` on `stream` and reads one answer (head and, by
/// Content-Length, its body).
fn exchange(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("an answer");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

#[test]
fn an_upgrade_the_endpoint_declines_leaves_an_ordinary_http_connection() {
    let (topo, _agent, vip) = setup("l7: { idle_timeout: 60s }");
    topo.client.run(|| {
        let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let upgrade = b"GET / HTTP/1.1\r\nHost: api\r\nX-Plain: 1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let answer = exchange(&mut s, upgrade);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("x-backend: plain"), "{answer}");
        // Still HTTP/1.1, framing guard included.
        let answer = exchange(&mut s, b"GET /again HTTP/1.1\r\nHost: api\r\nX-Plain: 1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let answer = exchange(
            &mut s,
            b"POST / HTTP/1.1\r\nHost: api\r\nX-Plain: 1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    });
}
