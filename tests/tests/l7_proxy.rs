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
use splitter_tests::{
    agent::Agent,
    http::{get, request, serve_http, Answer, Client},
    netns::unique_name,
};
use splitter_user::demo::Topology;

const VIP: &str = "203.0.113.10:8080";

fn config(weights: &str, extra: &str) -> String {
    format!(
        r#"
interfaces:
  clients: [lb-client]
  backends: [lb-blue, lb-green]
services:
  api:
    listen: {VIP}
    protocol: tcp
    mode: l7
    versions:
      v1: [198.51.100.10:8081]
      v2: [198.51.100.20:8081]
      dead: [198.51.100.11:8081]
    weights: {weights}
    proxy: {{ connect_timeout_ms: 500, response_timeout_ms: 1000 }}
{extra}"#
    )
}

const ROUTES: &str = r#"    routes:
      - match: { headers: { x-canary: "true" } }
        version: v2
      - match: { cookies: { beta: "1" }, path_prefix: /checkout }
        version: v2
      - match: { query: { preview: "on" }, methods: [GET] }
        version: v2
      - match: { headers: { x-dead: { prefix: "y" } } }
        version: dead
"#;

/// The topology with backends v1 (blue) and v2 (green) on :8081, the VIP made
/// local in the lb namespace (the proxy serves it), and the agent.
fn setup(yaml: &str) -> (Topology, Agent, Client, SocketAddr) {
    splitter_tests::require_root("the L7 end-to-end test");
    let topo = Topology::build(&unique_name("spt")).expect("build topology");
    serve_http(&topo.blue, 8081, "v1").expect("v1 backend");
    serve_http(&topo.green, 8081, "v2").expect("v2 backend");
    topo.lb.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]).expect("VIP on lo");
    let agent = Agent::start(&topo.lb, yaml);
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
    let out = agent.cli().args(args).arg("--socket").arg(&agent.control_socket).output().expect("run splitter");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn routes_send_marked_requests_to_the_canary_and_the_rest_split_by_weight() {
    let (topo, agent, client, vip) = setup(&config("{ v1: 95, v2: 5 }", ROUTES));
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
    let api = status["services"].as_array().unwrap().iter().find(|s| s["name"] == "api").unwrap().clone();
    let requests = |v: &str| {
        api["versions"].as_array().unwrap().iter().find(|x| x["name"] == v).unwrap()["requests"]["requests"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(requests("v1") + requests("v2"), 3 + 60 + 4000, "status counts every request: {api}");
}

#[test]
fn sticky_users_never_see_two_versions_and_stay_in_the_canary_as_it_grows() {
    let extra = "    affinity: { cookie: user }\n";
    let (topo, agent, client, vip) = setup(&config("{ v1: 95, v2: 5 }", extra));
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
    let (topo, agent, client, vip) = setup(&config("{ v1: 100, v2: 0 }", ""));
    let all_on = |want: &str| {
        let answers = ok(client.send_all(&topo.client, (0..50).map(|_| get(vip, "/", &[])).collect(), 8, false));
        let split = by_backend(&answers);
        assert_eq!(split.get(want), Some(&50), "{split:?}");
    };
    all_on("v1");
    std::thread::scope(|s| {
        // A slow request decided on the old table...
        let slow = s.spawn(|| client.send_all(&topo.client, vec![get(vip, "/slow/700", &[])], 1, false));
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
    let (topo, _agent, client, vip) = setup(&config("{ v1: 1 }", ROUTES));
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
    // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3), the
    // connection closes after the answer, and the bytes smuggled behind the
    // chunked body are never read as a request.
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "the smuggled request was answered: {answer:?}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "TE + CL must close: {answer:?}");
    let answer = raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!");
    assert!(answer.starts_with("HTTP/1.1 400"), "two Content-Lengths: {answer:?}");
    let answer = raw(b"GARBAGE\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "malformed: {answer:?}");
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let answer = raw(huge.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "oversized head: {answer:?}");
}
