//! Tier 3, endpoint health: real servers in the backend namespaces are
//! killed, made to fail their checks or their requests, and brought back
//! under the running agent; new connections and requests stop reaching a
//! dead endpoint within the checks' thresholds, and it gets its share back
//! when it recovers. Also: a version with no healthy endpoint
//! (`redistribute` and `keep`), a rollout to a dead canary, a flapping
//! endpoint, a restart, and bad `health:` values.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use splitter_testkit::{
    config::Service,
    http::{get, serve_http_switched, Client},
    serve::{ask_version, serve_tcp, serve_tcp_stoppable, StoppableTcp},
    topology::{vip, Topology, BLUE, GREEN},
};
use splitter_tests::{agent::Agent, netns::topology};

const TIMEOUT: Duration = Duration::from_millis(500);
/// Fast checks, so a test takes seconds: out after 2 failures 300 ms
/// apart, back after 2 passes.
const CHECKS: &str = "health: { interval: 300ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2 }";

fn blue(port: u16) -> SocketAddr {
    SocketAddr::from((BLUE, port))
}

fn green(port: u16) -> SocketAddr {
    SocketAddr::from((GREEN, port))
}

/// `n` new connections to VIP:80 from the client: how many each backend
/// answered (by name), and "failed" for those none did.
fn connect(topo: &Topology, n: usize) -> BTreeMap<String, usize> {
    topo.client.run(|| {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let who = TcpStream::connect_timeout(&vip(80), TIMEOUT)
                .and_then(|c| {
                    c.set_read_timeout(Some(TIMEOUT))?;
                    ask_version(&c)
                })
                .unwrap_or_else(|_| "failed".into());
            *seen.entry(who).or_default() += 1;
        }
        seen
    })
}

/// Whether the agent has `endpoint` of `service` up (`None`: not checked).
fn endpoint_up(agent: &Agent, service: &str, endpoint: SocketAddr) -> Option<bool> {
    let info = agent.info()?;
    info.health.get(service)?.endpoints.iter().find(|e| e.endpoint == endpoint).map(|e| e.up)
}

/// Waits (bounded by `limit`) until the agent has `endpoint` of `service`
/// up (`up`) or out of service.
#[track_caller]
fn wait_health(agent: &Agent, service: &str, endpoint: SocketAddr, up: bool, limit: Duration) {
    let what = format!("{endpoint} of {service} {}", if up { "up" } else { "down" });
    agent.eventually(&what, limit, || endpoint_up(agent, service, endpoint), |u| *u == Some(up));
}

#[test]
fn a_killed_l4_endpoint_gets_no_new_connections_within_its_thresholds_and_its_share_back_when_it_returns() {
    let topo = topology();
    serve_tcp(&topo.blue, 8080, "blue-a").expect("blue-a");
    let mut b = serve_tcp_stoppable(&topo.blue, 8081, "blue-b").expect("blue-b");
    serve_tcp(&topo.green, 8080, "green").expect("green");
    let shop = Service::tcp(vip(80))
        .version("blue", [blue(8080), blue(8081)])
        .version("green", [green(8080)])
        .weights(&[("blue", 50), ("green", 50)])
        .with(CHECKS);
    let agent = Agent::start(&topo.lb, &Topology::config().service("shop", shop).to_string());
    // Every endpoint checked healthy (the LB's own checks reach them) and used.
    wait_health(&agent, "shop", blue(8081), true, Duration::from_secs(5));
    let before = connect(&topo, 200);
    assert!(before.get("blue-b").is_some_and(|n| *n > 20) && !before.contains_key("failed"), "{before:?}");

    b.stop();
    let killed = Instant::now();
    // interval × unhealthy_after + 1 s.
    std::thread::sleep(Duration::from_millis(2 * 300 + 1000).saturating_sub(killed.elapsed()));
    let after = connect(&topo, 500);
    assert!(
        !after.contains_key("failed") && !after.contains_key("blue-b"),
        "500 new connections after the kill: {after:?}\nagent log:\n{}",
        agent.log()
    );
    // blue-a took blue-b's share; green's is unchanged.
    assert!(after.get("blue-a").is_some_and(|n| *n > 150), "{after:?}");
    let h = agent.info().expect("agent info").health["shop"].clone();
    let down = h.endpoints.iter().find(|e| e.endpoint == blue(8081)).expect("blue-b listed");
    assert!(!down.up && down.reason.contains("connection refused"), "{down:?}");
    assert!(agent.log().contains("endpoint DOWN"), "{}", agent.log());

    // Back: in again within healthy_after intervals (plus slack), its share with it.
    let _b = serve_tcp_stoppable(&topo.blue, 8081, "blue-b").expect("blue-b again");
    wait_health(&agent, "shop", blue(8081), true, Duration::from_millis(2 * 300 + 1500));
    let back = connect(&topo, 200);
    assert!(back.get("blue-b").is_some_and(|n| *n > 20) && !back.contains_key("failed"), "{back:?}");
    let metrics_log = agent.log();
    assert!(metrics_log.contains("endpoint UP"), "{metrics_log}");
}

#[test]
fn l4_passive_checks_eject_an_endpoint_whose_connections_fail() {
    let topo = topology();
    serve_tcp(&topo.blue, 8080, "blue-a").expect("blue-a");
    let mut b = serve_tcp_stoppable(&topo.blue, 8081, "blue-b").expect("blue-b");
    // Active checks an hour apart: only the traffic can eject it here.
    let shop = Service::tcp(vip(80))
        .version("blue", [blue(8080), blue(8081)])
        .weights(&[("blue", 1)])
        .with("health: { interval: 1h, timeout: 1s, passive: { consecutive_failures: 3, eject_for: 1h } }");
    let agent = Agent::start(&topo.lb, &Topology::config().service("shop", shop).to_string());
    let before = connect(&topo, 100);
    assert!(before.get("blue-b").is_some_and(|n| *n > 10), "{before:?}");
    // The passive check reads the counters every second: from its second
    // reading on, it judges what happened since the one before.
    std::thread::sleep(Duration::from_millis(2100));
    b.stop();
    // Its new connections are reset; the kernel counts the resets.
    let failing = connect(&topo, 40);
    assert!(failing.get("failed").is_some_and(|n| *n >= 3), "{failing:?}");
    wait_health(&agent, "shop", blue(8081), false, Duration::from_secs(4));
    let e = agent.info().expect("info").health["shop"].endpoints.iter().find(|e| e.endpoint == blue(8081)).cloned();
    assert!(e.as_ref().is_some_and(|e| e.ejected && e.reason.contains("connections failed in a row")), "{e:?}");
    let after = connect(&topo, 100);
    assert_eq!(after.get("blue-a"), Some(&100), "{after:?}\nagent log:\n{}", agent.log());
}

/// A service whose green version has one endpoint, `when_version_down` as given.
fn blue_green(policy: &str) -> Service {
    Service::tcp(vip(80))
        .version("blue", [blue(8080)])
        .version("green", [green(8080)])
        .weights(&[("blue", 50), ("green", 50)])
        .with(&format!(
            "health: {{ interval: 300ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2, when_version_down: {policy} }}"
        ))
}

/// blue (its server for good) and green (one that can be stopped) serving
/// [`blue_green`] with `policy`, green checked up.
fn start_blue_green(policy: &str) -> (Topology, StoppableTcp, Agent) {
    let topo = topology();
    serve_tcp(&topo.blue, 8080, "blue").expect("blue");
    let green_server = serve_tcp_stoppable(&topo.green, 8080, "green").expect("green");
    let agent = Agent::start(&topo.lb, &Topology::config().service("shop", blue_green(policy)).to_string());
    wait_health(&agent, "shop", green(8080), true, Duration::from_secs(5));
    (topo, green_server, agent)
}

#[test]
fn a_version_with_no_healthy_endpoint_gives_its_share_away_with_redistribute() {
    let (topo, mut g, agent) = start_blue_green("redistribute");
    assert_eq!(agent.live_bps("shop"), [5000, 5000]);
    g.stop();
    agent.eventually(
        "green's share moved to blue",
        Duration::from_secs(3),
        || agent.live_bps("shop"),
        |b| *b == [10_000, 0],
    );
    let seen = connect(&topo, 200);
    assert_eq!(seen.get("blue"), Some(&200), "{seen:?}");
    // status says why the served share differs.
    let report = agent.status();
    let h = report.service("shop").and_then(|s| s.health.clone()).expect("health in status");
    let green_served = h.versions.iter().find(|v| v.version == "green").expect("green");
    assert_eq!((green_served.configured_bps, green_served.served_bps), (5000, 0));
    assert!(green_served.why.as_deref().is_some_and(|w| w.contains("redistribute")), "{green_served:?}");
    let (ok, text, _) = agent.control(&["status"]);
    assert!(ok && text.contains("served 0.00% of configured 50.00%"), "{text}");
    // Back: its share returns.
    let _g = serve_tcp_stoppable(&topo.green, 8080, "green").expect("green again");
    agent.eventually("green's share back", Duration::from_secs(3), || agent.live_bps("shop"), |b| *b == [5000, 5000]);
}

#[test]
fn a_version_with_no_healthy_endpoint_keeps_its_share_with_keep() {
    let (topo, mut g, agent) = start_blue_green("keep");
    g.stop();
    wait_health(&agent, "shop", green(8080), false, Duration::from_secs(3));
    assert_eq!(agent.live_bps("shop"), [5000, 5000], "keep: nothing moves");
    let seen = connect(&topo, 100);
    assert!(seen.get("failed").is_some_and(|n| *n > 20), "green's new connections fail, as configured: {seen:?}");
    let h = agent.status().service("shop").and_then(|s| s.health.clone()).expect("health");
    let why = h.versions.iter().find(|v| v.version == "green").and_then(|v| v.why.clone()).unwrap_or_default();
    assert!(why.contains("keep"), "{why}");
}

#[test]
fn a_rollout_to_a_canary_whose_endpoint_is_down_is_rolled_back() {
    let topo = topology();
    serve_tcp(&topo.blue, 8080, "blue").expect("blue");
    // green's server never starts.
    let shop = Service::tcp(vip(80))
        .version("blue", [blue(8080)])
        .version("green", [green(8080)])
        .weights(&[("blue", 100), ("green", 0)])
        .with(CHECKS);
    let agent = Agent::start(&topo.lb, &Topology::config().service("shop", shop).to_string());
    wait_health(&agent, "shop", green(8080), false, Duration::from_secs(5));
    let (ok, out, err) =
        agent.control(&["rollout", "shop", "--to", "green", "--steps", "50,100", "--interval", "5s", "--detach"]);
    assert!(ok, "{out}{err}");
    let r = agent.eventually(
        "the rollout rolled back",
        Duration::from_secs(4),
        || agent.info().and_then(|i| i.rollouts.get("shop").cloned()),
        |r| matches!(r.as_ref().map(|r| &r.state), Some(splitter_model::rollout::State::RolledBack { .. })),
    );
    let reason = format!("{:?}", r.map(|r| r.state));
    assert!(reason.contains("no healthy endpoint"), "{reason}");
    assert_eq!(agent.live_bps("shop"), [10_000, 0], "the weights from before");
}

#[test]
fn l7_active_http_checks_take_out_an_endpoint_whose_healthz_answers_503() {
    let topo = topology();
    let _a = serve_http_switched(&topo.blue, 8081, "v1-a").expect("v1-a");
    let b = serve_http_switched(&topo.blue, 8082, "v1-b").expect("v1-b");
    let api = Service::l7(vip(80)).version("v1", [blue(8081), blue(8082)]).weights(&[("v1", 1)]).with(
        "health: { check: http, http: { path: /healthz }, interval: 300ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2 }",
    );
    let agent = Agent::start(&topo.lb, &Topology::config().service("api", api).to_string());
    let client = Client::new(&topo.client);
    let by_backend = |n: usize| {
        let mut seen = BTreeMap::<String, usize>::new();
        for a in client.send_all(&topo.client, (0..n).map(|_| get(vip(80), "/", &[])).collect(), 8, false) {
            let who = match a {
                Ok(a) if a.status == 200 => a.backend,
                Ok(a) => format!("status {}", a.status),
                Err(e) => e,
            };
            *seen.entry(who).or_default() += 1;
        }
        seen
    };
    wait_health(&agent, "api", blue(8082), true, Duration::from_secs(5));
    let before = by_backend(100);
    assert!(before.get("v1-b").is_some_and(|n| *n > 10), "{before:?}");
    b.healthz(503);
    wait_health(&agent, "api", blue(8082), false, Duration::from_secs(3));
    let after = by_backend(100);
    assert_eq!(after.get("v1-a"), Some(&100), "every request to the healthy endpoint: {after:?}");
    let h = agent.info().expect("info").health["api"].clone();
    let e = h.endpoints.iter().find(|e| e.endpoint == blue(8082)).expect("listed");
    assert!(e.reason.contains("status 503 (expected 200)"), "{e:?}");
    b.healthz(200);
    wait_health(&agent, "api", blue(8082), true, Duration::from_secs(3));
    assert!(by_backend(100).get("v1-b").is_some_and(|n| *n > 10));
}

#[test]
fn l7_passive_checks_eject_an_endpoint_answering_502_and_bring_it_back_after_eject_for() {
    let topo = topology();
    let _a = serve_http_switched(&topo.blue, 8081, "v1-a").expect("v1-a");
    let b = serve_http_switched(&topo.blue, 8082, "v1-b").expect("v1-b");
    // Active checks pass (the server is up): only its answers eject it.
    let api = Service::l7(vip(80))
        .version("v1", [blue(8081), blue(8082)])
        .weights(&[("v1", 1)])
        .with("health: { interval: 1s, timeout: 500ms, passive: { consecutive_failures: 3, eject_for: 2s } }");
    let agent = Agent::start(&topo.lb, &Topology::config().service("api", api).to_string());
    let client = Client::new(&topo.client);
    let statuses = |n: usize| {
        let mut seen = BTreeMap::<(String, u16), usize>::new();
        for a in client.send_all(&topo.client, (0..n).map(|_| get(vip(80), "/", &[])).collect(), 1, false) {
            let a = a.expect("an answer");
            *seen.entry((a.backend, a.status.as_u16())).or_default() += 1;
        }
        seen
    };
    b.all(502);
    let ejecting = statuses(60);
    let failed = ejecting.get(&("v1-b".into(), 502)).copied().unwrap_or(0);
    assert!(
        (3..=6).contains(&failed),
        "ejected after 3 failures in a row (a few more in flight at most): {ejecting:?}"
    );
    let ejected_at = Instant::now();
    let e = agent.info().expect("info").health["api"].endpoints.iter().find(|e| e.endpoint == blue(8082)).cloned();
    assert!(e.as_ref().is_some_and(|e| e.ejected && e.reason.contains("answered 502")), "{e:?}");
    let during = statuses(40);
    assert_eq!(during.get(&("v1-a".into(), 200)), Some(&40), "{during:?}");
    b.all(0);
    wait_health(&agent, "api", blue(8082), true, Duration::from_secs(4));
    assert!(ejected_at.elapsed() >= Duration::from_millis(1800), "back before eject_for: {:?}", ejected_at.elapsed());
    assert!(statuses(60).get(&("v1-b".into(), 200)).is_some_and(|n| *n > 5));
}

#[test]
fn a_flapping_endpoint_causes_no_churn_beyond_the_thresholds() {
    let topo = topology();
    serve_tcp(&topo.blue, 8080, "blue-a").expect("blue-a");
    let shop = Service::tcp(vip(80))
        .version("blue", [blue(8080), blue(8081)])
        .weights(&[("blue", 1)])
        .with("health: { interval: 250ms, timeout: 100ms, unhealthy_after: 3, healthy_after: 3 }");
    let agent = Agent::start(&topo.lb, &Topology::config().service("shop", shop).to_string());
    // Up 100 ms, down 100 ms, for 6 s: a check sees it up about half the
    // time, never long enough in a row to flip it either way.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let up = serve_tcp_stoppable(&topo.blue, 8081, "blue-b").expect("blue-b");
        std::thread::sleep(Duration::from_millis(100));
        drop(up);
        std::thread::sleep(Duration::from_millis(100));
    }
    let transitions = agent.log().matches("endpoint DOWN").count() + agent.log().matches("endpoint UP").count();
    // 24 checks: with the thresholds ignored it flips several times a second.
    assert!(transitions <= 2, "{transitions} transitions\nagent log:\n{}", agent.log());
}

#[test]
fn a_restarted_agent_starts_from_the_kernels_table_without_flapping() {
    let (topo, mut g, mut agent) = start_blue_green("redistribute");
    g.stop();
    agent.eventually("green out", Duration::from_secs(3), || agent.live_bps("shop"), |b| *b == [10_000, 0]);
    agent.restart(&topo.lb).expect("restart");
    // At once, before any check: still out, the table unchanged.
    assert_eq!(endpoint_up(&agent, "shop", green(8080)), Some(false), "{}", agent.log());
    assert_eq!(agent.live_bps("shop"), [10_000, 0]);
    assert!(agent.log().contains("out of service in the kernel's table"), "{}", agent.log());
    let _g = serve_tcp_stoppable(&topo.green, 8080, "green").expect("green again");
    agent.eventually("green back", Duration::from_secs(3), || agent.live_bps("shop"), |b| *b == [5000, 5000]);
}

#[test]
fn bad_health_values_are_refused_by_check_and_by_a_reload() {
    let topo = topology();
    serve_tcp(&topo.blue, 8080, "blue").expect("blue");
    let good = Topology::config().service("shop", blue_green("redistribute"));
    let agent = Agent::start(&topo.lb, &good.to_string());
    for (bad, says) in [
        ("health: { interval: 10ms }", "health.interval 10ms"),
        ("health: { check: http, http: { expect: [700] } }", "700 is not an HTTP status"),
        ("health: { passive: { eject_for: forever } }", "forever"),
        ("health: { when_version_down: drop }", "drop"),
    ] {
        let shop = Service::tcp(vip(80)).version("blue", [blue(8080)]).weights(&[("blue", 1)]).with(bad);
        let text = Topology::config().service("shop", shop).to_string();
        let file = agent.config_path.with_file_name("bad.yaml");
        std::fs::write(&file, &text).expect("write");
        let out = agent.cli().arg("check").arg("--config").arg(&file).output().expect("check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{bad}: {err}");
        // The same as a reload: refused, and the running state unchanged.
        std::fs::write(&agent.config_path, &text).expect("write");
        agent.reload().expect("SIGHUP");
        agent.eventually(
            "the reload refused",
            Duration::from_secs(3),
            || agent.log(),
            |l| l.matches("reload refused").count() > 0 && l.contains(says),
        );
        // (The file is bad now: asked over the control socket.)
        let info = agent.info().expect("info");
        assert!(info.health.contains_key("shop"), "still checked");
        assert_eq!(info.weights["shop"].len(), 2, "still the two versions: {:?}", info.weights);
    }
}
