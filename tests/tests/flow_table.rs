//! Tier 3, the flow table under pressure: how full it is shows in `status`,
//! in `/metrics` and in the agent's log before it overflows.

use std::{net::UdpSocket, time::Duration};

use splitter_testkit::{
    config::Service,
    serve::serve_udp,
    topology::{vip, Topology},
};
use splitter_tests::{agent::Agent, netns::topology};

#[test]
fn a_flow_table_above_80_percent_is_reported_in_status_and_the_log() {
    let topo = topology();
    for (ns, name) in topo.backends() {
        serve_udp(ns, 5353, name).expect("UDP backend");
    }
    let config = Topology::config()
        .setting("flow_table_size: 1024\nflow_aging: { tcp_idle_secs: 900, udp_idle_secs: 600, closing_secs: 10, sweep_secs: 1 }")
        .service("dns", Service::udp(vip(53)).blue_green(5353).weights(&[("blue", 50), ("green", 50)]));
    let agent = Agent::start(&topo.lb, &config.to_string());
    // 900 flows: one datagram each from its own source port (sockets held,
    // so no port is reused).
    let sockets: Vec<UdpSocket> = topo.client.run(|| {
        (0..900)
            .map(|_| {
                let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
                s.send_to(b"q", vip(53)).expect("send");
                s
            })
            .collect()
    });
    agent.eventually(
        "a warning that the flow table is above 80 %",
        Duration::from_secs(5),
        || agent.log(),
        |log| log.contains("the flow table is above 80% full"),
    );
    let report = agent.status();
    assert_eq!(report.flow_table_size, 1024);
    assert!(report.active_flows >= 820, "{} flows", report.active_flows);
    let text =
        String::from_utf8(agent.cli().args(["status", "--socket"]).arg(&agent.control_socket).output().unwrap().stdout)
            .unwrap();
    assert!(text.contains("of 1024 (") && text.contains("the flow table is above 80%"), "{text}");
    drop(sockets);
}
