//! Tier 3, metrics: the real agent serves `metrics.listen`; the test reads it
//! as a scraper would (HTTP GET in the agent's namespace), parses it with an
//! independent Prometheus text parser (`prometheus-parse`) and checks the
//! numbers against the traffic it sent itself: L4 connections per version,
//! L7 requests per version and status class, control requests and reloads.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use prometheus_parse::{Scrape, Value};
use splitter_testkit::{
    config::{Config, Service},
    http::{get, serve_http, Client},
    netns::NetNs,
    serve::{ask_version, serve_tcp},
    topology::{vip, Topology},
};
use splitter_tests::{agent::Agent, netns::topology};

const METRICS: &str = "127.0.0.1:9190";
const TIMEOUT: Duration = Duration::from_secs(3);

/// shop (l4, 80/20) and api (l7, v1 on blue and v2 on green, 50/50), with
/// metrics on loopback and the flow table swept every second.
fn config() -> Config {
    Topology::config()
        .setting(&format!("metrics: {{ listen: \"{METRICS}\" }}"))
        .setting("flow_aging: { sweep_secs: 1 }")
        .service("shop", Service::tcp(vip(80)).blue_green(8080).weights(&[("blue", 80), ("green", 20)]))
        .service(
            "api",
            Service::l7(vip(8080)).on_blue("v1", 8081).on_green("v2", 8081).weights(&[("v1", 50), ("v2", 50)]),
        )
}

/// GET /metrics from inside `ns` (where the agent listens on loopback):
/// the content type and the parsed samples.
fn scrape(ns: &NetNs, accept: Option<&str>) -> (String, Scrape) {
    let addr: SocketAddr = METRICS.parse().unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let text = ns
        .run(|| {
            let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            write!(s, "GET /metrics HTTP/1.1\r\nHost: splitter\r\n{accept}Connection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })
        .expect("scraping the agent");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: ").or_else(|| l.strip_prefix("Content-Type: ")))
        .unwrap_or_default()
        .to_owned();
    if std::env::var_os("SPLITTER_DUMP_METRICS").is_some() {
        eprintln!("{body}");
    }
    let parsed = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text that parses");
    (ctype, parsed)
}

/// The value of `metric` with exactly these labels (among others absent);
/// a histogram gives its count (the +Inf bucket).
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let hits = values(s, metric, labels);
    assert_eq!(hits.len(), 1, "{metric} {labels:?}: {} samples match", hits.len());
    hits[0]
}

/// One raw HTTP/1.1 exchange with the metrics listener from inside `ns`:
/// the response head and body.
fn exchange(ns: &NetNs, request: &str) -> (String, String) {
    let addr: SocketAddr = METRICS.parse().unwrap();
    let text = ns
        .run(|| {
            let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(request.as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })
        .expect("talking to the metrics listener");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_owned(), body.to_owned())
}

fn values(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().find(|c| c.less_than.is_infinite()).map_or(0.0, |c| c.count),
            Value::Summary(_) => f64::NAN,
        })
        .collect()
}

#[test]
fn metrics_match_the_traffic_the_test_sent() {
    let topo = topology();
    for (ns, name) in topo.backends() {
        serve_tcp(ns, 8080, name).unwrap();
    }
    serve_http(&topo.blue, 8081, "v1").unwrap();
    serve_http(&topo.green, 8081, "v2").unwrap();
    topo.lb.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]).expect("VIP on lo");
    let mut agent = Agent::start(&topo.lb, &config().to_string());

    // L4: 300 connections; the client knows which version answered each.
    let vip: SocketAddr = "203.0.113.10:80".parse().unwrap();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    topo.client.run(|| {
        for i in 0..300 {
            let c = TcpStream::connect_timeout(&vip, TIMEOUT).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            *seen.entry(ask_version(&c).unwrap()).or_default() += 1;
        }
    });
    // L7: 200 requests.
    let api: SocketAddr = "203.0.113.10:8080".parse().unwrap();
    let client = Client::new(&topo.client);
    let answers = client.send_all(&topo.client, (0..200).map(|_| get(api, "/", &[])).collect(), 8, false);
    let mut by_version: BTreeMap<String, u64> = BTreeMap::new();
    for a in answers {
        *by_version.entry(a.expect("request answered").backend).or_default() += 1;
    }
    // Control: one good change, one refused.
    assert!(agent.control(&["weight", "shop", "green=30"]).0);
    assert!(!agent.control(&["weight", "shop", "purple=5"]).0);

    let (ctype, s) = scrape(&topo.lb, None);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    for (version, n) in &seen {
        let ep = if version == "blue" { "198.51.100.10:8080" } else { "198.51.100.20:8080" };
        let labels = [("service", "shop"), ("version", version.as_str()), ("endpoint", ep)];
        assert_eq!(value(&s, "splitter_endpoint_flows_total", &labels), *n as f64, "flows of {version}");
        let mut inbound = labels.to_vec();
        inbound.push(("direction", "in"));
        // SYN, request, ACKs, FIN: at least three packets per connection.
        assert!(value(&s, "splitter_endpoint_packets_total", &inbound) >= 3.0 * *n as f64);
    }
    assert_eq!(value(&s, "splitter_datapath_total", &[("event", "new_flows")]), 300.0);
    assert_eq!(value(&s, "splitter_version_weight", &[("service", "shop"), ("version", "green")]), 30.0);
    // Shares are basis points: 80/110 is 72.73 %.
    assert_eq!(value(&s, "splitter_version_share", &[("service", "shop"), ("version", "blue")]), 0.7273);
    for (version, n) in &by_version {
        let l = [("service", "api"), ("version", version.as_str())];
        assert_eq!(value(&s, "splitter_requests_total", &l), *n as f64, "requests of {version}");
        let mut ok = l.to_vec();
        ok.push(("class", "2xx"));
        assert_eq!(value(&s, "splitter_responses_total", &ok), *n as f64);
        assert_eq!(value(&s, "splitter_request_duration_seconds", &l), *n as f64, "one latency per request");
    }
    assert_eq!(by_version.values().sum::<u64>(), 200);
    assert_eq!(value(&s, "splitter_control_requests_total", &[("op", "weight"), ("result", "ok")]), 1.0);
    assert_eq!(value(&s, "splitter_control_requests_total", &[("op", "weight"), ("result", "failed")]), 1.0);
    assert!(value(&s, "splitter_apply_duration_seconds", &[]) >= 1.0, "the weight change was timed");

    // `status` shows the split the agent observed (the first sample was taken
    // at its start, before any traffic: the window holds all of it).
    let status = agent.status();
    let info = status.agent.as_ref().expect("an agent answers");
    assert!(info.observed_secs <= 60, "{info:?}");
    for (svc, want) in [("shop", &seen), ("api", &by_version)] {
        let svc = status.service(svc).unwrap();
        let total: u64 = want.values().sum();
        for v in &svc.versions {
            let n = want.get(&v.name).copied().unwrap_or(0);
            assert_eq!(v.observed, Some(n), "{v:?}");
            let share = v.observed_share.unwrap();
            assert!((share - n as f64 / total as f64).abs() < 1e-9, "{v:?}");
        }
    }

    // Flows in the table per service, as of the agent's last sweep (every
    // second here; closed connections stay until closing_secs).
    let active = || values(&scrape(&topo.lb, None).1, "splitter_active_flows", &[("service", "shop")]);
    agent.eventually("300 active flows of shop", Duration::from_secs(10), active, |n| {
        n.first().is_some_and(|n| *n >= 300.0)
    });

    // A broken file on reload is counted as failed.
    let good = std::fs::read_to_string(&agent.config_path).unwrap();
    std::fs::write(&agent.config_path, good.replace("weights: { v1: 50, v2: 50 }", "weights: { v9: 1 }")).unwrap();
    agent.reload().unwrap();
    let failed = || value(&scrape(&topo.lb, None).1, "splitter_reloads_total", &[("result", "failed")]);
    agent.eventually("the failed reload counted", Duration::from_secs(10), failed, |n| *n >= 1.0);

    // OpenMetrics when asked for it.
    let (ctype, _) = scrape(&topo.lb, Some("application/openmetrics-text; version=1.0.0"));
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");

    // Beside /metrics: the dashboard, confined to its own script, and its
    // data; anything else is refused, and nothing there changes the agent.
    let ask = |req: &str| exchange(&topo.lb, &format!("{req}\r\nHost: splitter\r\nConnection: close\r\n\r\n"));
    let (head, body) = ask("GET / HTTP/1.1");
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/html"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{head}");
    assert!(body.contains("<script src=\"/dashboard.js\""), "{body}");
    let (head, body) = ask("GET /dashboard.js HTTP/1.1");
    assert!(head.starts_with("HTTP/1.1 200") && body.contains("/dashboard.json"), "{head}");
    let (head, body) = ask("GET /dashboard.json HTTP/1.1");
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("application/json"), "{head}");
    let view: serde_json::Value = serde_json::from_str(&body).expect("the dashboard's data is JSON");
    let names: Vec<&str> = view["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["api", "shop"], "{view}");
    let weights_before = agent.info().unwrap().weights;
    let (head, _) = ask("POST /dashboard.json HTTP/1.1\r\nContent-Length: 0");
    assert!(head.starts_with("HTTP/1.1 405") && head.contains("allow: GET"), "{head}");
    let (head, body) = ask("GET /v1/status HTTP/1.1");
    assert!(head.starts_with("HTTP/1.1 404") && body.contains("/metrics"), "{head}\n{body}");
    let (head, _) = ask("GET /%zz HTTP/1.1\r\nX-Junk: \u{1}");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(agent.info().unwrap().weights, weights_before, "the dashboard changes nothing");
    assert!(agent.stop_ok(), "the agent kept running: {}", agent.log());
}
