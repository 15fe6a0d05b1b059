//! Tier 3: a reload is all or nothing. A file whose apply fails part-way —
//! at binding a new l7 listener, at putting a guard on a mirror interface —
//! leaves every table, address and listener as it was, and "refused" is
//! logged only then.

use std::{
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use splitter_testkit::{
    config::Service,
    topology::{vip, Topology, BLUE},
};
use splitter_tests::{agent::Agent, netns::topology};

/// The config: shop (l4, blue/green on :8080) with `weights`, `extra` YAML
/// of shop's (e.g. a mirror), and `api` (l7 on `api`) when given.
fn config(weights: &[(&str, u32)], extra: &str, api: Option<&str>) -> String {
    let shop = Service::tcp(vip(80)).blue_green(8080).weights(weights);
    let shop = if extra.is_empty() { shop } else { shop.with(extra) };
    let mut c = Topology::config().service("shop", shop);
    if let Some(listen) = api {
        c = c.service("api", Service::l7(listen).version("v1", [SocketAddr::from((BLUE, 8081))]).weights(&[("v1", 1)]));
    }
    c.to_string()
}

/// The live basis points of `shop`'s versions.
fn live(agent: &Agent) -> Vec<Option<u32>> {
    agent.status().service("shop").expect("shop").live_bps()
}

/// Addresses on `lo` of the lb namespace besides loopback's.
fn on_lo(topo: &Topology) -> String {
    topo.lb.ip(&["-br", "addr", "show", "dev", "lo"]).unwrap()
}

/// [`Agent::reload_with`], checking that it is the agent's `nth` reload.
fn reload(agent: &Agent, body: &str, nth: usize) -> String {
    let before = agent.log().lines().filter(|l| l.contains(": reloaded") || l.contains("reload refused")).count();
    assert_eq!(before, nth, "reloads before this one");
    agent.reload_with(body)
}

#[test]
fn a_reload_that_fails_part_way_changes_nothing() {
    let topo = topology();
    let agent = Agent::start(&topo.lb, &config(&[("blue", 80), ("green", 20)], "", None));
    assert_eq!(live(&agent), [Some(8000), Some(2000)]);
    let lo_before = on_lo(&topo);

    // New weights for shop, plus an l7 service on a new address whose port
    // another process holds: the listener cannot be bound.
    let _holder = topo.lb.run(|| TcpListener::bind("0.0.0.0:9999").expect("hold the port"));
    let busy = config(&[("blue", 10), ("green", 90)], "", Some("203.0.113.12:9999"));
    let outcome = reload(&agent, &busy, 0);
    assert!(outcome.contains("reload refused") && outcome.contains("9999"), "{outcome}");
    assert_eq!(live(&agent), [Some(8000), Some(2000)], "shop's table is the old one");
    assert_eq!(on_lo(&topo), lo_before, "no address was added");

    // New weights, an l7 service on a free port of a new address, and a
    // mirror interface that does not exist: fails at the mirror guard, after
    // the l7 address was made local, which is taken back.
    let no_mirror =
        config(&[("blue", 10), ("green", 90)], "mirror: { interface: nosuch0, percent: 5 }", Some("203.0.113.12:8080"));
    let outcome = reload(&agent, &no_mirror, 1);
    assert!(outcome.contains("reload refused") && outcome.contains("nosuch0"), "{outcome}");
    assert_eq!(live(&agent), [Some(8000), Some(2000)], "shop's table is the old one");
    assert_eq!(on_lo(&topo), lo_before, "the l7 address added on the way was removed");
    let api: SocketAddr = "203.0.113.12:8080".parse().unwrap();
    assert!(
        topo.client.run(|| std::net::TcpStream::connect_timeout(&api, Duration::from_secs(1))).is_err(),
        "no l7 listener was left behind"
    );

    // The same changes without the failing part apply whole.
    let good = config(&[("blue", 10), ("green", 90)], "", Some("203.0.113.12:8080"));
    let outcome = reload(&agent, &good, 2);
    assert!(outcome.contains(": reloaded"), "{outcome}");
    assert_eq!(live(&agent), [Some(1000), Some(9000)]);
    assert!(on_lo(&topo).contains("203.0.113.12/32"), "{}", on_lo(&topo));
}
