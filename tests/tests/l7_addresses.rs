//! Tier 3: an l7 service's listen address must be local for its connections
//! to arrive. The agent makes it so (on `lo`, tagged as its own; `down`
//! removes what it added and nothing else), or, with
//! `local_addresses.manage: false`, `check`, `run` and `status` name the
//! address and the command that fixes it.

use std::{net::SocketAddr, time::Duration};

use http::StatusCode;
use splitter_testkit::{
    config::Service,
    http::{get, serve_http, Client},
    netns::{unique_name, NetNs},
    topology::{vip, vip6, Topology, BLUE, BLUE6},
};
use splitter_tests::{
    agent::{splitter_bin, Agent},
    netns::topology,
};
use splitter_user::status::Report;

/// An l7 service on `listen`, proxied to v1 at `backend`.
fn l7(listen: impl std::fmt::Display, backend: SocketAddr) -> Service {
    Service::l7(listen).version("v1", [backend]).weights(&[("v1", 1)])
}

/// `api` on 203.0.113.10:8080, to blue's :8081.
fn api() -> Service {
    l7(vip(8080), SocketAddr::from((BLUE, 8081)))
}

/// The services a reload adds, as YAML: api2 on a second IPv4 address, api6
/// on IPv6.
fn more() -> String {
    l7("203.0.113.11:8080", SocketAddr::from((BLUE, 8081))).yaml("api2")
        + &l7(vip6(8080), SocketAddr::from((BLUE6, 8081))).yaml("api6")
}

fn setup() -> Topology {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").expect("v1 backend");
    topo
}

/// The addresses on `lo` in `ns` besides loopback's own, sorted, with a
/// note when one cannot be used yet.
fn on_lo(ns: &NetNs) -> Vec<String> {
    let out = ns.command("ip").args(["-j", "addr", "show", "dev", "lo"]).output().expect("ip");
    assert!(out.status.success(), "ip addr show dev lo");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
    let mut all: Vec<String> = v[0]["addr_info"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let tentative = if a["tentative"] == true { " tentative" } else { "" };
            format!("{}/{}{tentative}", a["local"].as_str().unwrap(), a["prefixlen"])
        })
        .filter(|a| a != "127.0.0.1/8" && a != "::1/128")
        .collect();
    all.sort();
    all
}

/// `n` GETs to `vip` from the client; every one must be answered 200 by v1.
fn answered(topo: &Topology, vip: &str, n: usize) {
    let vip: SocketAddr = vip.parse().unwrap();
    let client = Client::new(&topo.client);
    let answers = client.send_all(&topo.client, (0..n).map(|_| get(vip, "/", &[])).collect(), 4, false);
    for (i, a) in answers.into_iter().enumerate() {
        let a = a.unwrap_or_else(|e| panic!("request {i} to {vip}: {e}"));
        assert_eq!((a.status, a.backend.as_str()), (StatusCode::OK, "v1"), "request {i} to {vip}");
    }
}

fn status(agent: &Agent) -> (Report, String) {
    let (ok, json, err) = agent.control(&["status", "--json"]);
    assert!(ok, "status: {err}");
    let (ok, text, err) = agent.control(&["status"]);
    assert!(ok, "status: {err}");
    (serde_json::from_str(&json).expect("a Report"), text)
}

/// Rewrites the agent's services and waits (bounded) until it serves `names`.
fn reload(agent: &Agent, from: &str, to: &str, names: &[&str]) {
    let text = std::fs::read_to_string(&agent.config_path).unwrap();
    std::fs::write(&agent.config_path, text.replace(from, to)).unwrap();
    agent.reload().expect("SIGHUP");
    let served = || -> Vec<String> { agent.info().map(|a| a.services.into_keys().collect()).unwrap_or_default() };
    agent.eventually(&format!("the agent to serve {names:?}"), Duration::from_secs(10), served, |s| *s == names);
}

/// `splitter check` on `yaml` in the lb namespace: its stdout.
fn check(topo: &Topology, dir: &std::path::Path, yaml: &str) -> String {
    let path = dir.join("check.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = topo.lb.command(splitter_bin()).args(["check", "--config"]).arg(&path).output().expect("check");
    assert!(out.status.success(), "check: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_agent_makes_l7_addresses_local_and_removes_only_what_it_added() {
    let topo = setup();
    let dir = tempdir();
    let yaml = Topology::config().service("api", api()).to_string();
    let (api, more) = (api().yaml("api"), more());
    let said = check(&topo, &dir, &yaml);
    assert!(
        said.contains("api: 203.0.113.10 is not local in this network namespace; the agent adds it to lo"),
        "{said}"
    );
    assert_eq!(on_lo(&topo.lb), Vec::<String>::new());

    let mut agent = Agent::start(&topo.lb, &yaml);
    assert_eq!(on_lo(&topo.lb), ["203.0.113.10/32"]);
    answered(&topo, "203.0.113.10:8080", 20);
    let log = agent.log();
    assert!(log.contains("services=1") && log.contains("l7=1"), "the start line counts the l7 service:\n{log}");
    let (report, text) = status(&agent);
    assert_eq!(report.services[0].not_local, None);
    assert!(text.contains("proxied by the agent"), "{text}");

    // Services come: their addresses are added (IPv6 usable at once), but
    // not one an operator made local already.
    topo.lb.ip(&["addr", "add", "203.0.113.11/32", "dev", "lo"]).unwrap();
    reload(&agent, &api, &format!("{api}{more}"), &["api", "api2", "api6"]);
    assert_eq!(on_lo(&topo.lb), ["2001:db8::10/128", "203.0.113.10/32", "203.0.113.11/32"]);
    answered(&topo, "203.0.113.11:8080", 10);
    let (report, _) = status(&agent);
    assert!(report.services.iter().all(|s| s.not_local.is_none()), "{:?}", report.services);
    // ... and go: the agent's are removed, the operator's stays.
    reload(&agent, &format!("{api}{more}"), &format!("{api} "), &["api"]);
    assert_eq!(on_lo(&topo.lb), ["203.0.113.10/32", "203.0.113.11/32"]);
    answered(&topo, "203.0.113.10:8080", 10);

    // `down` (through the agent) removes what the agent added, only that.
    agent.down().expect("down");
    assert_eq!(on_lo(&topo.lb), ["203.0.113.11/32"]);
}

#[test]
fn without_management_check_run_and_status_name_an_address_that_is_not_local() {
    let topo = setup();
    let dir = tempdir();
    let yaml = Topology::config().setting("local_addresses: { manage: false }").service("api", api()).to_string();
    let fix = "ip addr add 203.0.113.10/32 dev lo";
    let said = check(&topo, &dir, &yaml);
    assert!(said.contains("warning: api: 203.0.113.10 is not local") && said.contains(fix), "{said}");

    let agent = Agent::start(&topo.lb, &yaml);
    let log = agent.log();
    assert!(log.contains("l7 listen address is not local") && log.contains(fix), "{log}");
    let (report, text) = status(&agent);
    assert_eq!(report.services[0].not_local, Some("203.0.113.10".parse().unwrap()));
    assert!(text.contains("NOT REACHABLE: 203.0.113.10 is not local") && text.contains(fix), "{text}");
    assert_eq!(on_lo(&topo.lb), Vec::<String>::new(), "nothing added without management");

    // The operator runs the command: status sees it at once, and it serves.
    topo.lb.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]).unwrap();
    let (report, text) = status(&agent);
    assert_eq!(report.services[0].not_local, None);
    assert!(text.contains("proxied by the agent"), "{text}");
    answered(&topo, "203.0.113.10:8080", 10);
}

/// A private directory for this test's files, removed at the end.
fn tempdir() -> TempDir {
    let dir = std::env::temp_dir().join(unique_name("spt"));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
