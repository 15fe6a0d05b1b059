//! Tier 3, the HTTP control API (`control.http`): the real agent serves it
//! in its namespace; the test calls it as Argo Rollouts or a CI job would
//! (raw HTTP/1.1 over TCP) and checks the token (401 without, 403 wrong),
//! every operation against what the agent then does with real traffic, the
//! analysis endpoint's numbers against the requests the test sent, bad
//! requests refused with the reason, and that the token is never logged.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::Value;
use splitter_testkit::{
    config::{Config, Service},
    http::{get, serve_http, serve_http_failing, Client},
    netns::{unique_name, NetNs},
    topology::{vip, Topology},
};
use splitter_tests::{
    agent::Agent,
    netns::topology,
    tls::{block, connect, Pki, H1, H2},
};

const API: &str = "127.0.0.1:9191";
const TOKEN: &str = "tkn-7f3a9c2e41b84d06a5e1";
const TIMEOUT: Duration = Duration::from_secs(5);

/// api: l7, v1 on blue (weight 100) and v2 on green (0, answering 500);
/// the control API on loopback with the token in `token_file`.
fn config(token_file: &std::path::Path) -> Config {
    Topology::config()
        .setting(&format!("control: {{ http: {{ listen: \"{API}\", token_file: {} }} }}", token_file.display()))
        .service("api", Service::l7(vip(8080)).on_blue("v1", 8081).on_green("v2", 8081).weights(&[("v1", 100)]))
}

/// `method path` with `body` (JSON) and `Authorization: Bearer token`
/// when given, from inside `ns`: the status and the JSON body.
fn call(ns: &NetNs, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: splitter\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let text = exchange(ns, &request).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{method} {path}: no answer: {text:?}"));
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body:?}"));
    (status, json, head.to_owned())
}

/// Writes `request` to the API from inside `ns` and reads until it closes.
fn exchange(ns: &NetNs, request: &str) -> std::io::Result<String> {
    let addr: SocketAddr = API.parse().unwrap();
    ns.run(|| {
        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.write_all(request.as_bytes())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
}

/// `n` requests to api from the client: answers per version.
fn send(topo: &Topology, n: usize) -> BTreeMap<String, u64> {
    let client = Client::new(&topo.client);
    let mut by = BTreeMap::new();
    for a in client.send_all(&topo.client, (0..n).map(|_| get(vip(8080), "/", &[])).collect(), 4, false) {
        *by.entry(a.expect("answered").backend).or_default() += 1;
    }
    by
}

/// The weights api is served with now, as the control socket tells.
fn weights(agent: &Agent) -> BTreeMap<String, u32> {
    agent.info().expect("the agent answers").weights["api"].clone()
}

#[test]
fn the_http_api_needs_the_token_and_does_what_the_socket_does() {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").unwrap();
    serve_http_failing(&topo.green, 8081, "v2").unwrap();
    topo.lb.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]).expect("VIP on lo");
    let dir = std::env::temp_dir().join(unique_name("ctlhttp"));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let agent = Agent::start(&topo.lb, &config(&token_file).to_string());
    let ns = &topo.lb;
    let ok = |method: &str, path: &str, body: &str| {
        let (status, json, _) = call(ns, method, path, Some(TOKEN), body);
        assert_eq!(status, 200, "{method} {path}: {json}");
        json
    };

    // No token, a wrong one: nothing done.
    let (status, json, head) = call(ns, "POST", "/v1/services/api/weights", None, r#"{"weights": {"v2": 100}}"#);
    assert_eq!(status, 401, "{json}");
    assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    let wrong = format!("{}x", &TOKEN[..TOKEN.len() - 1]);
    let (status, _, _) = call(ns, "POST", "/v1/services/api/weights", Some(&wrong), r#"{"weights": {"v2": 100}}"#);
    assert_eq!(status, 403);
    let (status, _, _) = call(ns, "GET", "/v1/status", Some("Bearer"), "");
    assert_eq!(status, 403, "a token that is not the agent's");
    assert_eq!(weights(&agent), [("v1".to_owned(), 100), ("v2".to_owned(), 0)].into());

    // Status, as the socket's.
    let status = ok("GET", "/v1/status", "");
    assert_eq!(status["agent"]["weights"]["api"]["v1"], 100, "{status}");

    // 40 requests on v1, then the analysis of the last minute.
    assert_eq!(send(&topo, 40), [("v1".to_owned(), 40)].into());
    let a = ok("GET", "/v1/services/api/analysis?window=60s", "");
    let v1 = &a["analysis"]["versions"]["v1"];
    assert_eq!(
        (v1["requests"].as_u64(), v1["errors"].as_u64(), v1["weight"].as_u64()),
        (Some(40), Some(0), Some(100)),
        "{a}"
    );
    assert_eq!(v1["error_rate"].as_f64(), Some(0.0), "{a}");
    assert!(v1["p99_seconds"].as_f64().is_some_and(|p| p > 0.0 && p < 1.0), "{a}");
    let v2 = &a["analysis"]["versions"]["v2"];
    assert_eq!(v2["requests"].as_u64(), Some(0), "{a}");
    assert!(v2["error_rate"].is_null() && v2["p99_seconds"].is_null(), "no data is not a good rate: {a}");
    assert_eq!(a["analysis"]["window_secs"], 60);

    // Weights: v2 (failing) gets everything; the analysis sees its errors.
    let w = ok("POST", "/v1/services/api/weights", r#"{"weights": {"v1": 0, "v2": 100}}"#);
    assert_eq!(w["weights"]["v2"], 100, "{w}");
    assert_eq!(weights(&agent), [("v1".to_owned(), 0), ("v2".to_owned(), 100)].into());
    let client = Client::new(&topo.client);
    let answers = client.send_all(&topo.client, (0..20).map(|_| get(vip(8080), "/", &[])).collect(), 4, false);
    assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|a| a.status == 500 && a.backend == "v2")));
    let a = ok("POST", "/v1/services/api/analysis?window=5m", r#"{"name": "flagger webhook payload"}"#);
    let v2 = &a["analysis"]["versions"]["v2"];
    assert_eq!(
        (v2["requests"].as_u64(), v2["errors"].as_u64(), v2["error_rate"].as_f64()),
        (Some(20), Some(20), Some(1.0)),
        "{a}"
    );

    // Rollback, flip; the rollout read; diffs of an l7 service.
    ok("POST", "/v1/services/api/rollback", "");
    assert_eq!(weights(&agent), [("v1".to_owned(), 100), ("v2".to_owned(), 0)].into());
    let f = ok("POST", "/v1/services/api/flip", r#"{"to": "v2"}"#);
    assert_eq!(f["weights"]["v2"], 100, "{f}");
    ok("POST", "/v1/services/api/flip", r#"{"to": "v1"}"#);
    assert!(ok("GET", "/v1/services/api/diffs", "")["diffs"].is_object());
    let (status, json, _) = call(ns, "GET", "/v1/services/api/rollout", Some(TOKEN), "");
    assert_eq!(status, 409, "no rollout yet: {json}");
    assert!(json["message"].as_str().is_some_and(|m| m.contains("api")), "{json}");

    // Refusals: the agent's (409) and the API's own (400, 404, 405); nothing changed.
    let refused = [
        ("POST", "/v1/services/api/weights", r#"{"weights": {"v9": 5}}"#, 409, "v9"),
        ("POST", "/v1/services/shop/flip", r#"{"to": "green"}"#, 409, "shop"),
        ("POST", "/v1/services/api/mirror", r#"{"mirror": null}"#, 409, "l4"),
        ("POST", "/v1/services/api/weights", r#"{"weights": {"v2": "lots"}}"#, 400, "VERSION"),
        ("POST", "/v1/services/api/rollout", r#"{"action": "fly"}"#, 400, "pause"),
        ("GET", "/v1/services/api/analysis?window=2h", "", 400, "3600s"),
        ("GET", "/v1/nothing", "", 404, "no such route"),
        ("GET", "/v1/services/api/weights", "", 405, "POST"),
    ];
    for (method, path, body, want, says) in refused {
        let (status, json, _) = call(ns, method, path, Some(TOKEN), body);
        assert_eq!(status, want, "{method} {path} {body}: {json}");
        assert!(json["message"].as_str().is_some_and(|m| m.contains(says)), "{method} {path}: {json}");
    }
    assert_eq!(weights(&agent), [("v1".to_owned(), 100), ("v2".to_owned(), 0)].into());
    assert_eq!(send(&topo, 10), [("v1".to_owned(), 10)].into());

    // The token is in no log line, whatever was asked.
    let log = agent.log();
    assert!(!log.contains(TOKEN) && !log.contains(&wrong), "the token was logged:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `tls:` the API is HTTPS (HTTP/1.1 and h2 by ALPN), with the same
/// token rules; a plain HTTP client gets no answer from it.
#[test]
fn over_tls_the_api_answers_https_only_and_still_needs_the_token() {
    let topo = topology();
    let pki = Pki::new();
    let pair = pki.write("api", &pki.issue(&["api.splitter.test"], 1));
    let token_file = pki.path("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let config = Topology::config()
        .setting(&format!(
            "control: {{ http: {{ listen: \"{API}\", token_file: {}, tls: {{ certificates: [{pair}] }} }} }}",
            token_file.display()
        ))
        .service("api", Service::l7(vip(8080)).on_blue("v1", 8081).on_green("v2", 8081).weights(&[("v1", 100)]));
    let agent = Agent::start(&topo.lb, &config.to_string());
    let api: SocketAddr = API.parse().unwrap();
    let bearer = format!("Bearer {TOKEN}");
    for alpn in [H2, H1] {
        let statuses = block(&topo.lb, async {
            let mut conn = connect(api, pki.client(&[alpn], true), "api.splitter.test").await.expect("a handshake");
            assert_eq!(conn.alpn.as_deref(), Some(alpn));
            let mut out = Vec::new();
            for auth in [None, Some("Bearer not-the-token-at-all"), Some(bearer.as_str())] {
                let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
                let status = conn.get("/v1/services/api/analysis?window=30s", &headers).await.expect("an answer");
                out.push(status.status.as_u16());
            }
            out
        });
        assert_eq!(statuses, [401, 403, 200], "{}", String::from_utf8_lossy(alpn));
    }
    // Plain HTTP to the HTTPS listener: the handshake fails, nothing is served.
    let plain = format!("GET /v1/status HTTP/1.1\r\nHost: splitter\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    let answer = exchange(&topo.lb, &plain).unwrap_or_default();
    assert!(!answer.contains("HTTP/1.1 200") && !answer.contains("\"ok\""), "plain HTTP was answered: {answer:?}");
    assert!(!agent.log().contains(TOKEN));
}
