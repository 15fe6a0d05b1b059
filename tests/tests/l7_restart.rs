//! Tier 3, restarts of the l7 side that lose no request: under 200 req/s of
//! requests that each take 1 s, the agent gets SIGTERM and a new one starts
//! at once; the new one takes the listeners over (with the connections
//! queued on them), the old one finishes what is in flight and closes its
//! connections politely. Real hyper clients (HTTP/1.1 keep-alive, then h2)
//! and a real backend.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use http::StatusCode;
use splitter_testkit::{
    config::Service,
    http::{get, serve_http_after, Client},
    topology::{vip, Topology, BLUE},
};
use splitter_tests::{agent::Agent, netns::topology};

fn start(topo: &Topology) -> Agent {
    let api = Service::l7(vip(8080)).version("v1", [SocketAddr::from((BLUE, 8081))]).weights(&[("v1", 1)]);
    let config = Topology::config().setting("l7: { drain_timeout: 10s }").service("api", api).to_string();
    // One worker: the whole agent on one thread (a current-thread runtime),
    // as the benches run it; the hand-over and the drain must work there too.
    Agent::start_args(&topo.lb, &config, &["--workers", "1"])
}

/// 1400 requests, 200 at a time, to a backend taking 1 s each (about 7 s
/// at 200 req/s); the agent is replaced 2 s in. Every request is answered.
fn replaced_under_load(h2: bool) {
    let topo = topology();
    serve_http_after(&topo.blue, 8081, "v1", Duration::from_secs(1)).expect("a backend answering after 1 s");
    let mut agent = start(&topo);
    let old_pid = agent.pid().expect("running");
    let client = Client::new(&topo.client);
    let (answers, replaced_at) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let started = Instant::now();
            let reqs = (0..1400).map(|_| get(vip(8080), "/", &[])).collect();
            (client.send_all(&topo.client, reqs, 200, h2), started)
        });
        std::thread::sleep(Duration::from_secs(2));
        let at = Instant::now();
        agent.replace(&topo.lb).unwrap_or_else(|e| panic!("the new agent: {e}"));
        let (answers, started) = load.join().expect("the load");
        (answers, at.duration_since(started))
    });
    let failed: Vec<(usize, String)> = answers
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match a {
            Ok(a) if a.status == StatusCode::OK => None,
            Ok(a) => Some((i, format!("status {}", a.status))),
            Err(e) => Some((i, e.clone())),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 1400 failed (replaced {replaced_at:?} in): {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        agent.log()
    );
    let status = agent.wait_replaced(Duration::from_secs(15)).expect("the old agent exits after draining");
    assert!(status.success(), "{status:?}");
    let log = agent.log();
    assert!(log.contains("handed the l7 listeners over to the new agent"), "{log}");
    assert!(log.contains("took the l7 listeners over from the agent that is stopping"), "{log}");
    // Both agents served part of the load.
    let new = agent.info().expect("the new agent answers").l7["api"].versions["v1"].requests;
    assert!(new > 100 && new < 1400, "the new agent served {new} of 1400 requests");
    assert_ne!(agent.pid(), Some(old_pid));
}

#[test]
fn an_agent_replaced_under_http1_load_loses_no_request() {
    replaced_under_load(false);
}

#[test]
fn an_agent_replaced_under_h2_load_loses_no_request() {
    replaced_under_load(true);
}

#[test]
fn a_running_agent_hands_over_only_when_asked_to_take_over() {
    let topo = topology();
    serve_http_after(&topo.blue, 8081, "v1", Duration::ZERO).expect("a backend");
    let agent = start(&topo);
    // A second `splitter run` on the same state dir, without --takeover: refused.
    let out = agent
        .cli()
        .env("SPLITTER_LOG", "error")
        .args(["run", "--config"])
        .arg(&agent.config_path)
        .output()
        .expect("run splitter");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains(
            "is running and not stopping: stop it first (SIGTERM), or start this one with `splitter run --takeover`"
        ),
        "{text}"
    );
    // The running agent was not disturbed.
    let client = Client::new(&topo.client);
    let a = client.send_all(&topo.client, vec![get(vip(8080), "/", &[])], 1, false).remove(0).expect("served");
    assert_eq!(a.status, StatusCode::OK);
}

#[test]
fn sigterm_alone_lets_in_flight_requests_finish_and_tells_http1_clients_to_close() {
    let topo = topology();
    serve_http_after(&topo.blue, 8081, "v1", Duration::from_secs(1)).expect("a backend answering after 1 s");
    let mut agent = start(&topo);
    let client = Client::new(&topo.client);
    let (answers, stopped) = std::thread::scope(|s| {
        let load =
            s.spawn(|| client.send_all(&topo.client, (0..50).map(|_| get(vip(8080), "/", &[])).collect(), 50, false));
        std::thread::sleep(Duration::from_millis(300));
        let at = Instant::now();
        let status = agent.stop().expect("the agent exits after draining");
        (load.join().expect("the load"), (status, at.elapsed()))
    });
    for (i, a) in answers.iter().enumerate() {
        let a = a.as_ref().unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers.get("connection").map(|v| v.to_str().unwrap()), Some("close"), "request {i}: {a:?}");
    }
    let (status, took) = stopped;
    assert!(status.success(), "{status:?}");
    // It waited for the requests (about 0.7 s) and a moment for a successor.
    assert!(took >= Duration::from_millis(600) && took < Duration::from_secs(8), "stopped after {took:?}");
    assert!(agent.log().contains("stopping: l7 connections finish what is in flight"), "{}", agent.log());
}
