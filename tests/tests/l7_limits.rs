//! Tier 3: the `l7:` limits of the real agent against real clients. A
//! slowloris from another address leaves a well-behaved client untouched;
//! heads over `max_header_bytes` or with too many fields get 431; idle
//! connections are closed politely after `idle_timeout` (HTTP/1.1 between
//! requests, h2 with GOAWAY); an h2 client gets `max_concurrent_streams`.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

use http::StatusCode;
use splitter_testkit::{
    config::Service,
    http::{get, raw_exchange, serve_http, serve_http_after, Client},
    topology::{vip, Topology, BLUE},
    wait::eventually,
};
use splitter_tests::{agent::Agent, netns::topology};
use splitter_user::l7::ConnectionCounts;

/// The attacker's address, beside the client's own on its `eth0`.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);

/// `api` on the VIP's :8080 with v1 on blue's :8081, and the `l7:` settings given.
fn start(topo: &Topology, l7: &str) -> Agent {
    let api = Service::l7(vip(8080)).version("v1", [SocketAddr::from((BLUE, 8081))]).weights(&[("v1", 1)]);
    let config = Topology::config().setting(l7).service("api", api).to_string();
    Agent::start(&topo.lb, &config)
}

fn counts(agent: &Agent) -> ConnectionCounts {
    agent.info().expect("the agent answers status").l7["api"].connections.clone()
}

#[test]
fn a_slowloris_of_500_connections_does_not_stop_a_well_behaved_client() {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").expect("v1 backend");
    let agent = start(&topo, "l7: { header_read_timeout: 4s }");
    topo.client.addr("eth0", IpAddr::V4(ATTACKER), 24).expect("the attacker's address");
    let vip = vip(8080);
    // 500 connections from the attacker's address, each sending one more
    // byte of a head that never ends every 5 s; meanwhile the client sends
    // requests for 12 s, each on a new connection, 4 at a time: every one
    // is answered.
    let stop = AtomicBool::new(false);
    let client = Client::new(&topo.client);
    let (opened, answered) = std::thread::scope(|s| {
        let attack = s.spawn(|| topo.client.run(|| slowloris(vip, &stop)));
        let started = Instant::now();
        let mut answered = 0;
        while started.elapsed() < Duration::from_secs(12) {
            let reqs = (0..20).map(|_| get(vip, "/", &[("connection", "close")])).collect();
            for (i, a) in client.send_all(&topo.client, reqs, 4, false).into_iter().enumerate() {
                let a = a.unwrap_or_else(|e| panic!("request {i} after {:?}: {e}", started.elapsed()));
                assert_eq!(a.status, StatusCode::OK, "{a:?}");
                answered += 1;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        stop.store(true, Relaxed);
        (attack.join().expect("the attack thread"), answered)
    });
    assert_eq!(opened, 500, "the kernel accepted every attacking connection");
    assert!(answered >= 100, "the well-behaved client was served throughout ({answered} answers)");
    // The attacker got 256 connections (l7.max_connections_per_client), the
    // other 244 were closed at accept, and the 256 ran into the head timeout.
    let c = eventually("the attack counted", Duration::from_secs(10), || counts(&agent), |c| c.head_timeouts >= 256);
    assert_eq!((c.refused_client, c.head_timeouts), (244, 256), "{c:?}");
}

/// 500 connections from [`ATTACKER`] to `vip`, each sent one more byte of
/// a head that never ends every 5 s, until `stop` (at most 30 s); how many
/// the kernel accepted.
fn slowloris(vip: SocketAddr, stop: &AtomicBool) -> usize {
    let mut conns: Vec<TcpStream> = (0..500)
        .filter_map(|_| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.bind(&SocketAddr::from((ATTACKER, 0)).into()).ok()?;
            s.connect_timeout(&vip.into(), Duration::from_secs(3)).ok()?;
            Some(TcpStream::from(s))
        })
        .collect();
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    let mut at = 0;
    while !stop.load(Relaxed) && started.elapsed() < Duration::from_secs(30) {
        for c in &mut conns {
            let _ = c.write_all(&head[at % head.len()..][..1]);
        }
        at += 1;
        for _ in 0..50 {
            if stop.load(Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    conns.len()
}

#[test]
fn heads_over_the_limits_get_431_and_idle_connections_are_closed_politely() {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").expect("v1 backend");
    let agent = start(&topo, "l7: { max_header_bytes: 8192, idle_timeout: 1s, header_read_timeout: 2s }");
    let head = |fields: usize, size: usize| {
        let mut h = b"GET / HTTP/1.1\r\nHost: api\r\n".to_vec();
        for i in 0..fields {
            h.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(size)).as_bytes());
        }
        h.extend_from_slice(b"Connection: close\r\n\r\n");
        h
    };
    // 99 small fields (with Host and Connection: 101) and one 9 KiB field
    // are over; 95 fields (97, and the 3 forwarding headers the proxy adds:
    // the backend is a hyper server with the same bound) and a 7 KiB head
    // are not.
    for (fields, size, want) in [(99, 1, "431"), (1, 9000, "431"), (95, 1, "200"), (1, 7000, "200")] {
        let answer = raw_exchange(&topo.client, vip(8080), &head(fields, size));
        assert!(answer.starts_with(&format!("HTTP/1.1 {want}")), "{fields} fields of {size} bytes: {answer:.200}");
    }
    assert_eq!(counts(&agent).too_large, 2);
    // A head that does not arrive within header_read_timeout (2 s): 408.
    // Meanwhile the connection is not idle, though idle_timeout is 1 s.
    let started = Instant::now();
    let answer = raw_exchange(&topo.client, vip(8080), b"GET / HTTP/1.1\r\nHost: api\r\nX-Slow: ");
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout"), "not closed as idle under a head: {answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(1900), "after the timeout: {:?}", started.elapsed());
    // The clock is the connection's, re-armed for each head: a second head
    // on a kept-alive connection gets its own 2 s, from its first byte.
    let (answer, waited) = topo.client.run(|| {
        let mut s = TcpStream::connect_timeout(&vip(8080), Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        // The first head's clock runs meanwhile.
        std::thread::sleep(Duration::from_millis(300));
        let sent = Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\nHost: api\r\n\r\nGET / HTTP/1.1\r\nHost: api\r\nX-Slow: ").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        (String::from_utf8_lossy(&out).into_owned(), sent.elapsed())
    });
    assert!(answer.starts_with("HTTP/1.1 200"), "the first request is answered: {answer:.200}");
    assert!(answer.contains("HTTP/1.1 408 Request Timeout"), "then the slow head times out: {answer:?}");
    assert!(waited >= Duration::from_millis(1900), "the second head had its own time: {waited:?}");

    // An HTTP/1.1 keep-alive connection is closed about 1 s after its answer.
    let closed_after = topo.client.run(|| {
        let mut s = TcpStream::connect_timeout(&vip(8080), Duration::from_secs(3)).expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).expect("the answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        let answered = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) => return answered.elapsed(),
                Ok(_) => continue,
                Err(e) => panic!("no close within 5 s of idling: {e}"),
            }
        }
    });
    assert!(closed_after >= Duration::from_millis(900), "closed as idle only after 1 s: {closed_after:?}");

    // An h2 connection gets GOAWAY and ends about 1 s after its last answer.
    let rt = topo.client.run(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());
    let ended_after = topo.client.run(|| {
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(vip(8080)).await.expect("connect");
            let (mut send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .expect("h2 handshake");
            let conn = tokio::spawn(conn);
            let req = http::Request::get("http://api/").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
            let resp = send.send_request(req).await.expect("an answer over h2");
            assert_eq!(resp.status(), StatusCode::OK);
            drop(resp);
            let answered = Instant::now();
            let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
            assert!(matches!(ended, Ok(Ok(Ok(())))), "the h2 connection ends cleanly (GOAWAY): {ended:?}");
            answered.elapsed()
        })
    });
    assert!(ended_after >= Duration::from_millis(900), "GOAWAY only after 1 s idle: {ended_after:?}");
    let c = eventually("two idle closes", Duration::from_secs(3), || counts(&agent), |c| c.idle_closed >= 2);
    assert_eq!(c.idle_closed, 2, "{c:?}");
}

#[test]
fn an_h2_client_gets_max_concurrent_streams_and_the_rest_wait() {
    let topo = topology();
    serve_http_after(&topo.blue, 8081, "v1", Duration::from_secs(1)).expect("a backend answering after 1 s");
    let _agent = start(&topo, "l7: { max_concurrent_streams: 8 }");
    let client = Client::new(&topo.client);
    // The client learns the limit from the proxy's SETTINGS (until then a
    // stream over it is refused with REFUSED_STREAM).
    let first = client.send_all(&topo.client, vec![get(vip(8080), "/", &[])], 1, true).remove(0);
    assert_eq!(first.expect("an answer over h2").status, StatusCode::OK);
    // 20 requests at once on that h2 connection, 8 streams at a time: three
    // rounds of the backend's 1 s.
    let started = Instant::now();
    let answers = client.send_all(&topo.client, (0..20).map(|_| get(vip(8080), "/", &[])).collect(), 20, true);
    let took = started.elapsed();
    for (i, a) in answers.into_iter().enumerate() {
        assert_eq!(a.unwrap_or_else(|e| panic!("request {i}: {e}")).status, StatusCode::OK);
    }
    assert!(took >= Duration::from_millis(2900), "20 requests with 8 streams at a time took {took:?}");
}

#[test]
fn an_h2_client_opening_and_resetting_streams_in_a_flood_gets_goaway_and_is_counted() {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").expect("v1 backend");
    let agent = start(&topo, "l7: { max_concurrent_streams: 256 }");
    // The "rapid reset" attack (CVE-2023-44487): 200 streams opened and
    // reset at once, before the server has taken them.
    let ended = topo.client.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(vip(8080)).await.expect("connect");
            let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
            let conn = tokio::spawn(conn);
            for _ in 0..200 {
                let req = http::Request::get("http://api/").body(()).unwrap();
                let Ok((_, mut stream)) = client.send_request(req, true) else { break };
                stream.send_reset(h2::Reason::CANCEL);
            }
            tokio::time::timeout(Duration::from_secs(5), conn).await
        })
    });
    let err = match ended {
        Ok(Ok(Err(e))) => e,
        other => panic!("the connection ends with an error: {other:?}"),
    };
    assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err:?}");
    let c = eventually("the flood counted", Duration::from_secs(3), || counts(&agent), |c| c.h2_flood >= 1);
    assert_eq!(c.h2_flood, 1, "{c:?}");
    // Others are served.
    let client = Client::new(&topo.client);
    let a = client.send_all(&topo.client, vec![get(vip(8080), "/", &[])], 1, true).remove(0);
    assert_eq!(a.expect("served over h2").status, StatusCode::OK);
}
