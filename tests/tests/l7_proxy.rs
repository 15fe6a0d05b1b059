//! Tier 3, the L7 path end to end: the real agent proxies an l7 service on a
//! VIP in the lb namespace; real hyper backends in the blue (v1) and green
//! (v2) namespaces answer with their identity; a real hyper client in the
//! client namespace sends the requests.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use http::StatusCode;
use splitter_model::config::Mirror;
use splitter_testkit::{
    config::{Config, Service},
    http::{get, request, request_with_body, serve_http, serve_http_after, Answer, Client},
    topology::Topology,
};
use splitter_tests::{agent::Agent, netns::topology};
use splitter_user::l7::{mirror::MirrorCounts, ServiceStats};

const VIP: &str = "203.0.113.10:8080";
/// How long the slow shadow takes to answer.
const SLOW_SHADOW: Duration = Duration::from_secs(3);

/// api (l7) with `weights`, and what `more` adds to it: v1 on blue and v2 on
/// green (:8081), shadows on :8082, and versions on an address no one
/// answers (198.51.100.11).
fn config(weights: &[(&str, u32)], more: impl FnOnce(Service) -> Service) -> Config {
    let api = Service::l7(VIP)
        .on_blue("v1", 8081)
        .on_green("v2", 8081)
        .version("dead", ["198.51.100.11:8081"])
        .version("mixed", ["198.51.100.11:8081", "198.51.100.10:8081"])
        .on_blue("shadow", 8082)
        .on_green("slowshadow", 8082)
        .version("deadshadow", ["198.51.100.11:8082"])
        .weights(weights)
        .with("proxy: { connect_timeout_ms: 500, response_timeout_ms: 1000 }");
    Topology::config().service("api", more(api))
}

/// Routes to v2 by header, cookie and path, and query and method; to the
/// dead version and the half-dead one by header.
fn routes(api: Service) -> Service {
    api.route(r#"{ headers: { x-canary: "true" } }"#, "v2")
        .route(r#"{ cookies: { beta: "1" }, path_prefix: /checkout }"#, "v2")
        .route(r#"{ query: { preview: "on" }, methods: [GET] }"#, "v2")
        .route(r#"{ headers: { x-dead: { prefix: "y" } } }"#, "dead")
        .route(r#"{ headers: { x-mixed: "1" } }"#, "mixed")
}

/// The topology with backends v1 (blue) and v2 (green) on :8081, and the
/// agent (which makes the VIP local in the lb namespace: the proxy serves it).
fn setup(config: Config) -> (Topology, Agent, Client, SocketAddr) {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").expect("v1 backend");
    serve_http(&topo.green, 8081, "v2").expect("v2 backend");
    serve_http(&topo.blue, 8082, "shadow").expect("shadow backend");
    serve_http_after(&topo.green, 8082, "slowshadow", SLOW_SHADOW).expect("slow shadow backend");
    let agent = Agent::start(&topo.lb, &config.to_string());
    let client = Client::new(&topo.client);
    (topo, agent, client, VIP.parse().unwrap())
}

fn ok(answers: Vec<Result<Answer, String>>) -> Vec<Answer> {
    answers.into_iter().enumerate().map(|(i, a)| a.unwrap_or_else(|e| panic!("request {i}: {e}"))).collect()
}

fn by_backend(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        *m.entry(a.backend.clone()).or_insert(0) += 1;
    }
    m
}

fn cli(agent: &Agent, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = agent.control(args);
    (ok, out + &err)
}

#[test]
fn routes_send_marked_requests_to_the_canary_and_the_rest_split_by_weight() {
    let (topo, agent, client, vip) = setup(config(&[("v1", 95), ("v2", 5)], routes));
    let marked = vec![
        get(vip, "/", &[("x-canary", "true")]),
        get(vip, "/checkout/pay", &[("cookie", "session=1; beta=1")]),
        get(vip, "/search?q=x&preview=on", &[]),
    ];
    let answers = ok(client.send_all(&topo.client, marked, 4, false));
    assert!(answers.iter().all(|a| a.backend == "v2"), "{answers:?}");
    // Near misses follow the weights (all v1 in 60 tries at 5 % is unlikely
    // to hide a bug; the share test below is the real check).
    let near = (0..20).flat_map(|_| {
        [
            get(vip, "/", &[("x-canary", "false")]),
            get(vip, "/home", &[("cookie", "beta=1")]),
            request("POST", vip, "/search?preview=on", &[]),
        ]
    });
    let answers = ok(client.send_all(&topo.client, near.collect(), 8, false));
    let split = by_backend(&answers);
    assert!(split.get("v1").copied().unwrap_or(0) >= 45, "near misses must not take the routes: {split:?}");

    // 2,000 plain requests: v2 gets 5 % ± 2 pp, over HTTP/1.1 and h2c.
    for h2 in [false, true] {
        let answers = ok(client.send_all(&topo.client, (0..2000).map(|_| get(vip, "/", &[])).collect(), 16, h2));
        let split = by_backend(&answers);
        let v2 = split.get("v2").copied().unwrap_or(0) as f64 / 2000.0;
        assert!((v2 - 0.05).abs() <= 0.02, "h2={h2}: v2 share {v2} ({split:?})");
        assert!(!split.contains_key("dead"), "weight 0 got requests: {split:?}");
    }
    let status = agent.status();
    let api = status.service("api").unwrap();
    let requests = |v: &str| api.version(v).unwrap().requests.as_ref().unwrap().requests;
    assert_eq!(requests("v1") + requests("v2"), 3 + 60 + 4000, "status counts every request: {api:?}");
}

#[test]
fn sticky_users_never_see_two_versions_and_stay_in_the_canary_as_it_grows() {
    let (topo, agent, client, vip) =
        setup(config(&[("v1", 95), ("v2", 5)], |api| api.with("affinity: { cookie: user }")));
    let users: Vec<String> = (0..400).map(|i| format!("user=u{i}")).collect();
    let round = |n: usize| -> Vec<String> {
        let reqs = users.iter().flat_map(|c| (0..n).map(move |_| get(vip, "/", &[("cookie", c.as_str())]))).collect();
        let answers = ok(client.send_all(&topo.client, reqs, 16, false));
        answers
            .chunks(n)
            .enumerate()
            .map(|(u, chunk)| {
                assert!(chunk.iter().all(|a| a.backend == chunk[0].backend), "user {u} saw two versions: {chunk:?}");
                chunk[0].backend.clone()
            })
            .collect()
    };
    let at5 = round(3);
    assert!(cli(&agent, &["weight", "api", "v1=75", "v2=25"]).0);
    let at25 = round(3);
    for (u, (before, after)) in at5.iter().zip(&at25).enumerate() {
        assert!(before != "v2" || after == "v2", "user {u} left the canary when it grew from 5 % to 25 %");
    }
    let share = at25.iter().filter(|v| *v == "v2").count() as f64 / users.len() as f64;
    assert!((share - 0.25).abs() < 0.07, "25 %: {share}");
}

#[test]
fn weight_flip_and_rollback_swap_the_table_and_in_flight_requests_finish_where_they_started() {
    let (topo, agent, client, vip) = setup(config(&[("v1", 100), ("v2", 0)], |api| api));
    let all_on = |want: &str| {
        let answers = ok(client.send_all(&topo.client, (0..50).map(|_| get(vip, "/", &[])).collect(), 8, false));
        let split = by_backend(&answers);
        assert_eq!(split.get(want), Some(&50), "{split:?}");
    };
    all_on("v1");
    std::thread::scope(|s| {
        // A slow request decided on the old table...
        let slow = s.spawn(|| client.send_all(&topo.client, vec![get(vip, "/slow/700", &[])], 1, false));
        // The scenario: the flip comes while that request is in flight (it
        // takes 700 ms at the backend; 200 ms in, it has been routed).
        std::thread::sleep(Duration::from_millis(200));
        let (ok_flip, out) = cli(&agent, &["flip", "api", "--to", "v2"]);
        assert!(ok_flip, "{out}");
        // ...finishes there, while new ones take the new table.
        let slow = slow.join().unwrap().remove(0).expect("slow request");
        assert_eq!((slow.status, slow.backend.as_str()), (StatusCode::OK, "v1"));
    });
    all_on("v2");
    assert!(cli(&agent, &["rollback", "api"]).0);
    all_on("v1");
    let (refused, out) = cli(&agent, &["weight", "api", "nope=5"]);
    assert!(!refused && out.contains("nope"), "{out}");
    all_on("v1");
}

#[test]
fn the_proxy_adds_forwarding_headers_strips_hop_by_hop_and_maps_failures() {
    let (topo, _agent, client, vip) = setup(config(&[("v1", 1)], routes));
    let a = ok(client.send_all(
        &topo.client,
        vec![get(vip, "/", &[("connection", "x-secret"), ("x-secret", "1"), ("x-forwarded-for", "192.0.2.99")])],
        1,
        false,
    ))
    .remove(0);
    let seen = |h: &str| a.headers.get(h).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert_eq!(seen("x-seen-xff"), "192.0.2.99, 192.0.2.2", "{a:?}");
    assert_eq!(seen("x-seen-forwarded"), format!("for=192.0.2.2;proto=http;host=\"{VIP}\""));
    assert_eq!(seen("x-seen-secret"), "", "a header named in Connection was forwarded");
    assert_eq!(seen("x-seen-host"), VIP);

    // Unreachable endpoint → 502; slow endpoint → 504; the backend's own 503 passes through.
    let answers = ok(client.send_all(
        &topo.client,
        vec![get(vip, "/", &[("x-dead", "yes")]), get(vip, "/slow/3000", &[]), get(vip, "/status/503", &[])],
        3,
        false,
    ));
    assert_eq!(answers[0].status, StatusCode::BAD_GATEWAY, "{:?}", answers[0]);
    assert_eq!(answers[1].status, StatusCode::GATEWAY_TIMEOUT, "{:?}", answers[1]);
    assert_eq!((answers[2].status, answers[2].backend.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "v1"));

    // Raw requests a parser must refuse.
    let raw = |bytes: &[u8]| -> String {
        topo.client.run(|| {
            let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let _ = s.write_all(bytes);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let smuggle = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = raw(smuggle);
    assert!(answer.starts_with("HTTP/1.1 400"), "TE + CL: {answer:?}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "the smuggled request was answered: {answer:?}");
    let answer = raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhelloGET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "two equal Content-Lengths: {answer:?}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer:?}");
    // A clean pipeline (chunked POST, then GET) on one connection is served whole.
    let answer = raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer:?}");
    let answer = raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!");
    assert!(answer.starts_with("HTTP/1.1 400"), "two Content-Lengths: {answer:?}");
    let answer = raw(b"GARBAGE\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "malformed: {answer:?}");
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let answer = raw(huge.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "oversized head: {answer:?}");
}

/// The proxy's counters of `api`, from `status`.
fn l7_status(agent: &Agent) -> ServiceStats {
    let mut info = agent.status().agent.expect("an agent answers");
    info.l7.remove("api").unwrap_or_else(|| panic!("no l7 counters of api in {:?}", info.l7))
}

/// Waits (bounded) until the mirror has settled every sampled request; its
/// counters then.
fn mirror_settled(agent: &Agent) -> MirrorCounts {
    let counts = || l7_status(agent).mirror.expect("the mirror's counters");
    agent.eventually("every sampled request's copy to settle", Duration::from_secs(15), counts, MirrorCounts::settled)
}

#[test]
fn mirroring_copies_a_sample_compares_out_of_band_and_never_answers_the_client() {
    let mirror = "mirror: { version: shadow, percent: 10, compare: { headers: [x-seen-mirror] }, methods: [GET, POST], max_body_bytes: 1024 }";
    let (topo, agent, client, vip) = setup(config(&[("v1", 1)], |api| api.with(mirror)));
    let answers = ok(client.send_all(&topo.client, (0..2000).map(|_| get(vip, "/", &[])).collect(), 16, false));
    for a in &answers {
        assert_eq!((a.status, a.backend.as_str(), &a.body[..]), (StatusCode::OK, "v1", &b"v1"[..]), "{a:?}");
        assert_eq!(a.headers["x-seen-mirror"], "", "a client got a mirrored answer: {a:?}");
    }
    let m = mirror_settled(&agent);
    let share = m.sampled as f64 / 2000.0;
    // One standard deviation of the share is sqrt(0.1 * 0.9 / 2000) = 0.0067:
    // ±0.03 is 4.5 of them (±0.02 failed once in a few hundred runs).
    assert!((share - 0.10).abs() <= 0.03, "mirrored share {share}: {m:?}");
    assert_eq!(m.sent, m.sampled, "every sampled request reached the shadow: {m:?}");
    assert_eq!(m.compared, m.sent, "{m:?}");
    assert_eq!(m.differ, m.compared, "the shadow always differs (it sees the mirror marker): {m:?}");

    let out = agent.cli().args(["diffs", "api", "--json", "--socket"]).arg(&agent.control_socket).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["compared"], m.compared);
    assert_eq!(report["differ"], m.differ);
    let sample = &report["samples"][0];
    assert_eq!((sample["request"].as_str(), sample["primary_status"].as_u64()), (Some("GET /"), Some(200)), "{report}");
    assert_eq!(sample["diff"], "header x-seen-mirror:  vs 1", "the shadow saw x-splitter-mirror: 1: {report}");

    // Bodies over the cap are not mirrored (counted); the primary is unaffected.
    let big = bytes::Bytes::from(vec![b'x'; 4096]);
    let posts = (0..200).map(|_| request_with_body("POST", vip, "/", &[], big.clone())).collect();
    let answers = ok(client.send_all(&topo.client, posts, 8, false));
    assert!(answers.iter().all(|a| a.status == StatusCode::OK && a.backend == "v1"));
    let m2 = mirror_settled(&agent);
    assert!(m2.skipped_body_too_large > 0, "{m2:?}");
    assert_eq!(m2.skipped_body_too_large, m2.sampled - m.sampled, "every sampled POST was too large: {m2:?}");
    assert_eq!(m2.sent, m.sent, "{m2:?}");
}

#[test]
fn a_slow_or_dead_shadow_leaves_primary_statuses_and_latency_unchanged() {
    let mirror = "mirror: { version: slowshadow, percent: 100, compare: true, timeout_ms: 2500 }";
    let (topo, agent, client, vip) = setup(config(&[("v1", 1)], |api| api.with(mirror)));
    let answers = ok(client.send_all(&topo.client, (0..200).map(|_| get(vip, "/", &[])).collect(), 8, false));
    // Were the primary waiting for the shadow, every request would take
    // 2.5 s or more; far less means the copy is out of band.
    let slowest = answers.iter().map(|a| a.elapsed).max().unwrap();
    assert!(slowest < Duration::from_millis(1500), "a primary request took {slowest:?} with a {SLOW_SHADOW:?} shadow");
    assert!(answers.iter().all(|a| a.status == StatusCode::OK && a.backend == "v1"));
    let m = mirror_settled(&agent);
    assert_eq!(m.shadow_timeouts, m.sampled, "{m:?}");

    // A dead shadow (nothing listens): errors counted, primaries fine.
    let text = std::fs::read_to_string(&agent.config_path).unwrap();
    std::fs::write(&agent.config_path, text.replace("version: slowshadow", "version: deadshadow")).unwrap();
    agent.reload().expect("SIGHUP");
    let mirror_version = || match agent.info()?.services.get("api")?.mirror.clone()? {
        Mirror::L7(m) => Some(m.version),
        Mirror::L4(_) => None,
    };
    agent.eventually("the agent to mirror to deadshadow", Duration::from_secs(10), mirror_version, |v| {
        v.as_deref() == Some("deadshadow")
    });
    let before = m.shadow_errors;
    let answers = ok(client.send_all(&topo.client, (0..100).map(|_| get(vip, "/", &[])).collect(), 8, false));
    assert!(answers.iter().all(|a| a.status == StatusCode::OK && a.backend == "v1"));
    let m = mirror_settled(&agent);
    assert!(m.shadow_errors >= before + 100, "{m:?}\n{}", agent.log());
}

#[test]
fn idempotent_requests_retry_another_endpoint_and_bodies_stream() {
    let (topo, _agent, client, vip) = setup(config(&[("v1", 1)], routes));
    // Half the "mixed" version is down: GETs go on to the live endpoint, a
    // POST (not idempotent) gets 502 when it lands on the dead one.
    let answers =
        ok(client.send_all(&topo.client, (0..50).map(|_| get(vip, "/", &[("x-mixed", "1")])).collect(), 4, false));
    assert!(answers.iter().all(|a| a.status == StatusCode::OK && a.backend == "v1"), "{answers:?}");
    let posts = ok(client.send_all(
        &topo.client,
        (0..50).map(|_| request("POST", vip, "/", &[("x-mixed", "1")])).collect(),
        4,
        false,
    ));
    let bad = posts.iter().filter(|a| a.status == StatusCode::BAD_GATEWAY).count();
    assert!(bad > 0 && bad < 50, "POSTs are not retried: {bad} of 50 got 502");

    // 5 chunks 300 ms apart: the first reaches the client long before the last is sent.
    let (first, total) = topo.client.run(|| {
        let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let start = std::time::Instant::now();
        s.write_all(b"GET /stream/5/300 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut buf = [0u8; 8192];
        let mut got = 0;
        let mut first = None;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got += n;
            if first.is_none() && got > 1024 {
                first = Some(start.elapsed());
            }
        }
        (first.expect("a first chunk"), start.elapsed())
    });
    assert!(total >= Duration::from_millis(1200), "the backend paces 5 chunks 300 ms apart: {total:?}");
    assert!(first < total / 2, "the body was buffered: first data after {first:?} of {total:?}");
}
