//! Tier 3, three LB nodes behind a BGP router with ECMP: every node runs the
//! real agent (`announce:`) and a real BIRD 2 on the shipped example
//! (`packaging/bgp/bird.conf`, its addresses edited as a user would); the
//! router runs BIRD with `merge paths` and an L4 multipath hash, and the
//! client sits behind it. The router installs one route over the three
//! nodes and new connections spread over them. Draining a node withdraws
//! its VIP and its held connections move to the other nodes, which place
//! them on the same backend (the same deterministic placement, stateless
//! reverse translation): none breaks. Undrained, it is back in the route;
//! `splitter down` on a node withdraws it before its data path goes, and
//! again none breaks. The endpoints route their replies through node 1,
//! the node that stays.

use std::{collections::BTreeMap, time::Duration};

use splitter_common::stats::Stat;
use splitter_tests::{
    agent::splitter_bin,
    ecmp::{broken, Ecmp, HELD, NODES},
};

#[test]
fn ecmp_spreads_flows_over_three_nodes_and_drain_and_down_move_them_without_breaking_one() {
    splitter_tests::require_root("the ECMP test");
    let bin = splitter_bin();
    let mut t = Ecmp::build(&bin, "spt");
    t.wait_hops(&[1, 2, 3], Duration::from_secs(30));

    // New connections spread over the nodes.
    let held = t.hold();
    let flows: BTreeMap<usize, u64> = (1..=NODES).map(|n| (n, t.counter(n, Stat::NewFlows))).collect();
    for (n, f) in &flows {
        assert!(*f >= (HELD / NODES / 3) as u64, "node {n} placed {f} of {HELD} new connections: {flows:?}");
    }
    let answers: BTreeMap<&str, usize> = held.iter().fold(BTreeMap::new(), |mut m, (_, a)| {
        *m.entry(a.as_str()).or_default() += 1;
        m
    });
    assert_eq!(answers.keys().copied().collect::<Vec<_>>(), ["blue", "green"], "{answers:?}");

    // Drain node 2: withdrawn within the BGP timers, its flows move on.
    let adopted_before: u64 = (1..=NODES).map(|n| t.counter(n, Stat::Adopted)).sum();
    let (ok, out, err) = t.cli(&bin, 2, &["node", "drain"]);
    assert!(ok, "{out}{err}");
    let took = t.wait_hops(&[1, 3], Duration::from_secs(10));
    assert!(took < Duration::from_secs(9), "withdrawn after {took:?} (hold time 9 s)");
    let lost = broken(&held);
    assert!(lost.is_empty(), "{} of {HELD} held connections broke on drain: {lost:?}", lost.len());
    let adopted: u64 = (1..=NODES).map(|n| t.counter(n, Stat::Adopted)).sum::<u64>() - adopted_before;
    // Node 1 carries every reply, so it already knows every flow (replies
    // restore entries); node 3 adopts the moved ones it never saw.
    assert!(adopted > 0, "no node adopted a moved flow: the drain moved nothing");
    eprintln!("new flows per node {flows:?}; drain withdrawn in {took:?}; {adopted} flows adopted by the other nodes");

    // Undrain: back in the route, and still none broken.
    let (ok, out, err) = t.cli(&bin, 2, &["node", "undrain"]);
    assert!(ok, "{out}{err}");
    t.wait_hops(&[1, 2, 3], Duration::from_secs(10));
    let lost = broken(&held);
    assert!(lost.is_empty(), "{} broke on undrain: {lost:?}", lost.len());

    // `down` on node 3: withdrawn before its data path goes; none broken.
    t.agents[2].down().expect("splitter down on node 3");
    assert_eq!(t.next_hops(), [1, 2], "node 3 withdrawn");
    assert!(!t.nodes[2].has_xdp("eth-c").unwrap(), "node 3's data path is gone");
    let lost = broken(&held);
    assert!(lost.is_empty(), "{} broke on down: {lost:?}", lost.len());
}
