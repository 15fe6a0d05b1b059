//! The shared store's convergence, run by `cargo xtask bench` (root): the
//! time from a `splitter weight --etcd` call (the real CLI process) until all
//! three nodes report the new revision applied, with 1 and with 100
//! services. A real etcd on a management network; three agents (release
//! binary) in their own namespaces, each with a veth pair for its data path.
//! Writes `target/bench/store.md`.

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use splitter_testkit::{
    agent_process::AgentProcess,
    config::Config,
    netns::{unique_name, veth, NetNs},
    topology::numbered_services,
    wait::wait_until_every,
};
use splitter_tests::{agent::release_bin, etcd::Etcd, load::percentile};
use splitter_user::store::Store;

const NODES: usize = 3;
const CHANGES: usize = 50;

fn ip(ns: &NetNs, args: &[&str]) {
    ns.ip(args).unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
}

/// Node `n{node}`'s config: its data-path link, the store, and `services`
/// numbered services.
fn config(node: usize, services: u16, etcd: &str, prefix: &str) -> Config {
    let config = Config::new(&["eth-c"], &[])
        .setting(&format!("node: n{node}"))
        .setting(&format!("store: {{ etcd: {{ endpoints: [\"{etcd}\"], prefix: {prefix} }} }}"));
    numbered_services(config, services)
}

/// Milliseconds from each CLI change until every node applied it.
fn run(services: u16, bin: &Path, mgmt: &NetNs, nodes: &[NetNs], etcd: &Etcd) -> Vec<f64> {
    let prefix = format!("/{}", unique_name("spb"));
    let agents: Vec<AgentProcess> = nodes
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let config = config(i + 1, services, &etcd.url(), &prefix).to_string();
            AgentProcess::start_unique(bin, ns, "spb", &config, &[]).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let cfg = splitter_user::store::cli_etcd(&etcd.url(), &prefix, None, None).unwrap();
    let rt = mgmt.run(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());
    let mut store = mgmt.run(|| rt.block_on(Store::connect(&cfg))).expect("store");
    let applied = |store: &mut Store, rev: i64| {
        rt.block_on(async {
            let nodes = store.nodes().await.expect("nodes");
            nodes.len() == NODES && nodes.iter().all(|n| n.applied_revision >= rev)
        })
    };
    let mut took = Vec::new();
    for i in 0..CHANGES {
        let t = Instant::now();
        let out = mgmt
            .command(bin)
            .env("SPLITTER_LOG", "warn")
            .args(["weight", "s0", &format!("green={}", 1 + i % 99), "--etcd", &etcd.url(), "--etcd-prefix", &prefix])
            .output()
            .expect("cli");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let rev: i64 = text
            .split("store revision ")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in {text}"));
        // Looked at every 500 µs: the time it took is the measure.
        let what = format!("change {i} to reach every node");
        wait_until_every(
            &what,
            Duration::from_secs(10),
            Duration::from_micros(500),
            || applied(&mut store, rev),
            |a| *a,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        took.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(agents);
    took
}

fn main() {
    splitter_tests::require_root("the store benchmark");
    let bin = release_bin();
    let tag = unique_name("spb");
    let mgmt = NetNs::new(format!("{tag}-m")).unwrap();
    ip(&mgmt, &["link", "add", "br0", "type", "bridge"]);
    ip(&mgmt, &["link", "set", "br0", "up"]);
    ip(&mgmt, &["addr", "add", "10.99.0.1/24", "dev", "br0"]);
    let nodes: Vec<NetNs> = (1..=NODES)
        .map(|n| {
            let ns = NetNs::new(format!("{tag}-n{n}")).unwrap();
            veth(&ns, "eth-m", &mgmt, &format!("p{n}")).unwrap();
            ip(&mgmt, &["link", "set", &format!("p{n}"), "master", "br0"]);
            ip(&ns, &["addr", "add", &format!("10.99.0.1{n}/24"), "dev", "eth-m"]);
            ip(&ns, &["link", "add", "eth-c", "type", "veth", "peer", "name", "eth-x"]);
            ip(&ns, &["link", "set", "eth-c", "up"]);
            ip(&ns, &["link", "set", "eth-x", "up"]);
            ns
        })
        .collect();
    let etcd = Etcd::in_namespace(&mgmt, "10.99.0.1");
    let one = run(1, &bin, &mgmt, &nodes, &etcd);
    let hundred = run(100, &bin, &mgmt, &nodes, &etcd);

    let mut md = String::new();
    writeln!(md, "### Shared store: a change reaching every node ({NODES} nodes, real etcd, {CHANGES} changes each)\n")
        .unwrap();
    writeln!(md, "| services | p50 | p99 | max |").unwrap();
    writeln!(md, "|---|---|---|---|").unwrap();
    for (n, v) in [(1, &one), (100, &hundred)] {
        let max = v.iter().copied().fold(0.0, f64::max);
        writeln!(
            md,
            "| {n} | {:.1} ms | {:.1} ms | {max:.1} ms |",
            percentile(v.clone(), 0.5),
            percentile(v.clone(), 0.99)
        )
        .unwrap();
    }
    writeln!(
        md,
        "\nFrom the `splitter weight --etcd` call (a new CLI process: connect, read, compare-and-swap) until all {NODES} nodes' registrations in etcd name the new revision as applied (each node: watch event, plan from the stored layouts, table writes, registration put). With 100 services a change re-plans every service on every node; only the changed table is written."
    )
    .unwrap();
    splitter_tests::report::write_md("store", &md);
}
