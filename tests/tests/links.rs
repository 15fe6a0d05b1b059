//! Tier 3, interfaces that come and go: a backend's link deleted and made
//! again under the running agent (as when its namespace is deleted and
//! recreated) gets the programs back at once, without a restart.

use std::{net::TcpStream, time::Duration};

use splitter_testkit::{
    config::Service,
    serve::{ask_version, serve_tcp},
    topology::{vip, Topology},
    wait::wait_until,
};
use splitter_tests::{agent::Agent, netns::topology};

const TIMEOUT: Duration = Duration::from_millis(500);

/// `n` new connections to the service; how many of them a backend answered.
fn answered(topo: &Topology, n: usize) -> usize {
    topo.client.run(|| {
        (0..n)
            .filter(|_| {
                TcpStream::connect_timeout(&vip(80), TIMEOUT)
                    .and_then(|c| {
                        c.set_read_timeout(Some(TIMEOUT))?;
                        ask_version(&c)
                    })
                    .is_ok()
            })
            .count()
    })
}

#[test]
fn a_backend_interface_that_is_deleted_and_comes_back_is_served_again_within_two_seconds() {
    let topo = topology();
    for (ns, name) in topo.backends() {
        serve_tcp(ns, 8080, name).expect("TCP backend");
    }
    let config = Topology::config()
        .service("shop", Service::tcp(vip(80)).blue_green(8080).weights(&[("blue", 50), ("green", 50)]));
    let agent = Agent::start(&topo.lb, &config.to_string());
    assert_eq!(answered(&topo, 20), 20, "every connection answered before");

    topo.unlink_backend("green").expect("delete green's link");
    topo.relink_backend("green").expect("make green's link again");
    // Within 2 s of its return, every new connection is answered again
    // (without the programs on the new lb-green, green's replies go back
    // untranslated and the connections placed on green fail).
    let after =
        wait_until("every new connection answered", Duration::from_secs(2), || answered(&topo, 20), |n| *n == 20);
    assert!(after.is_ok(), "{after:?}\nagent log:\n{}", agent.log());
    let log = agent.log();
    assert!(log.contains("interface deleted") && log.contains("interface (re)appeared"), "{log}");
}
