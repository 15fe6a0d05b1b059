//! Tier 3: a reload is all or nothing. A file whose apply fails part-way —
//! at binding a new l7 listener, at putting a guard on a mirror interface —
//! leaves every table, address and listener as it was, and "refused" is
//! logged only then.

use std::{
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use splitter_tests::{agent::Agent, netns::unique_name};
use splitter_user::demo::Topology;

const HEAD: &str = r#"
interfaces:
  clients: [lb-client]
  backends: [lb-blue, lb-green]
services:
  shop:
    listen: 203.0.113.10:80
    protocol: tcp
    versions: { blue: [198.51.100.10:8080], green: [198.51.100.20:8080] }
"#;

const WEIGHTS: &str = "    weights: { blue: 80, green: 20 }\n";

/// The live basis points of `shop`'s versions.
fn live(agent: &Agent) -> Vec<Option<u32>> {
    let r: splitter_user::status::Report = serde_json::from_value(agent.status()).expect("a Report");
    r.services.iter().find(|s| s.name == "shop").expect("shop").versions.iter().map(|v| v.live_bps).collect()
}

/// Addresses on `lo` of the lb namespace besides loopback's.
fn on_lo(topo: &Topology) -> String {
    topo.lb.ip(&["-br", "addr", "show", "dev", "lo"]).unwrap()
}

/// Writes `body` as the agent's services, sends SIGHUP and waits (bounded)
/// until the agent logged the outcome of this reload; returns the log line.
fn reload(agent: &Agent, body: &str, nth: usize) -> String {
    let text = std::fs::read_to_string(&agent.config_path).unwrap();
    let start = text.find("\ninterfaces:").expect("the agent's config has its interfaces");
    std::fs::write(&agent.config_path, format!("{}{body}", &text[..start])).unwrap();
    agent.reload().expect("SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = agent.log();
        let outcomes: Vec<&str> =
            log.lines().filter(|l| l.contains(": reloaded") || l.contains("reload refused")).collect();
        if outcomes.len() > nth {
            return outcomes[nth].to_owned();
        }
        assert!(Instant::now() < deadline, "no outcome of reload {nth}:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_reload_that_fails_part_way_changes_nothing() {
    splitter_tests::require_root("the reload test");
    let topo = Topology::build(&unique_name("spt")).expect("build topology");
    let agent = Agent::start(&topo.lb, &format!("{HEAD}{WEIGHTS}"));
    assert_eq!(live(&agent), [Some(8000), Some(2000)]);
    let lo_before = on_lo(&topo);

    // New weights for shop, plus an l7 service on a new address whose port
    // another process holds: the listener cannot be bound.
    let _holder = topo.lb.run(|| TcpListener::bind("0.0.0.0:9999").expect("hold the port"));
    let busy = format!(
        "{HEAD}    weights: {{ blue: 10, green: 90 }}\n  api:\n    listen: 203.0.113.12:9999\n    protocol: tcp\n    mode: l7\n    versions: {{ v1: [198.51.100.10:8081] }}\n    weights: {{ v1: 1 }}\n"
    );
    let outcome = reload(&agent, &busy, 0);
    assert!(outcome.contains("reload refused") && outcome.contains("9999"), "{outcome}");
    assert_eq!(live(&agent), [Some(8000), Some(2000)], "shop's table is the old one");
    assert_eq!(on_lo(&topo), lo_before, "no address was added");

    // New weights, an l7 service on a free port of a new address, and a
    // mirror interface that does not exist: fails at the mirror guard, after
    // the l7 address was made local, which is taken back.
    let no_mirror = format!(
        "{HEAD}    weights: {{ blue: 10, green: 90 }}\n    mirror: {{ interface: nosuch0, percent: 5 }}\n  api:\n    listen: 203.0.113.12:8080\n    protocol: tcp\n    mode: l7\n    versions: {{ v1: [198.51.100.10:8081] }}\n    weights: {{ v1: 1 }}\n"
    );
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
    let good = format!(
        "{HEAD}    weights: {{ blue: 10, green: 90 }}\n  api:\n    listen: 203.0.113.12:8080\n    protocol: tcp\n    mode: l7\n    versions: {{ v1: [198.51.100.10:8081] }}\n    weights: {{ v1: 1 }}\n"
    );
    let outcome = reload(&agent, &good, 2);
    assert!(outcome.contains(": reloaded"), "{outcome}");
    assert_eq!(live(&agent), [Some(1000), Some(9000)]);
    assert!(on_lo(&topo).contains("203.0.113.12/32"), "{}", on_lo(&topo));
}
