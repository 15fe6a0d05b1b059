//! Tier 2, the L4 split: service packets through the real program under
//! BPF_PROG_TEST_RUN, with the exact rewritten frames (addresses, ports, TTL,
//! checksums, MACs from the FIB) and verdicts expected.

use std::net::{Ipv6Addr, SocketAddr};

use splitter_common::{
    flow_hash,
    service::{ring_slot, version_slot, SEED_ENDPOINT, SEED_VERSION},
    stats::Stat::{self, *},
    FlowKey,
};
use splitter_model::config::FlowAging;
use splitter_testkit::config::{Config, Service};
use splitter_tests::{
    fixture::{
        net::{self, *},
        Case, FixtureNet, Harness, Output, Verdict,
    },
    packet::{Frame, Tcp},
};

/// shop: TCP, versions blue (at `blue`) and green, all on blue.
fn shop(blue: SocketAddr) -> Service {
    Service::tcp(sa4(VIP4, 80)).version("blue", [blue]).version("green", [sa4(GREEN4, 8080)]).weights(&[("blue", 100)])
}

/// The fixtures' services: `shop` (if any), dns (UDP, v1 on .11) and shop6
/// (TCP over IPv6, blue); with `mirror`, each copies flows out of `fxm`
/// (shop 50 %, the others all).
fn config_of(shop: Option<Service>, mirror: bool) -> Config {
    let copied = |s: Service, percent: u32| {
        if mirror {
            s.with(&format!("mirror: {{ interface: fxm, percent: {percent} }}"))
        } else {
            s
        }
    };
    let dns = Service::udp(sa4(VIP4, 53)).version("v1", [sa4([198, 51, 100, 11], 5353)]).weights(&[("v1", 1)]);
    let shop6 = Service::tcp(sa6(VIP6, 80)).version("blue", [sa6(BLUE6, 8080)]).weights(&[("blue", 1)]);
    let config = FixtureNet::config();
    let config = match shop {
        Some(shop) => config.service("shop", copied(shop, 50)),
        None => config,
    };
    config.service("dns", copied(dns, 100)).service("shop6", copied(shop6, 100))
}

/// The fixtures' services as they start: shop's blue at .10.
fn config() -> Config {
    config_of(Some(shop(sa4(BLUE4, 8080))), false)
}

fn sa4(a: [u8; 4], port: u16) -> SocketAddr {
    (a, port).into()
}
fn sa6(a: [u8; 16], port: u16) -> SocketAddr {
    (Ipv6Addr::from(a), port).into()
}

fn case(description: &'static str, input: &Frame, verdict: Verdict, output: Option<Frame>, counts: &[Stat]) -> Case {
    Case {
        description,
        input: input.build(),
        verdict,
        output: output.map_or(Output::Unchanged, |f| Output::Bytes(f.build())),
        counts: counts.to_vec(),
    }
}

/// The frame `input` becomes on its way to `backend`: DNAT, TTL-1, MACs of the
/// backend-side interface and the backend's neighbour entry.
fn to_backend(input: &Frame, backend: SocketAddr, last_octet: u8) -> Frame {
    input.clone().dst(backend).ttl(input.ttl - 1).macs(FXA_MAC, backend_mac(last_octet))
}

/// The frame a reply becomes on its way to the client: SNAT to the VIP.
fn to_client(reply: &Frame, vip: SocketAddr) -> Frame {
    reply.clone().src(vip).ttl(reply.ttl - 1).macs(FXB_MAC, CLIENT_NEIGH_MAC)
}

#[test]
fn service_packets_are_rewritten_forwarded_and_counted() {
    let h = Harness::with_config(&config());
    let client = sa4(CLIENT4, 40000);
    let vip = sa4(VIP4, 80);
    let blue = sa4(BLUE4, 8080);
    let syn = Frame::tcp(client, vip, Tcp::Syn);
    let data = Frame::tcp(client, vip, Tcp::Ack).payload(b"GET / HTTP/1.1\r\n\r\n");
    let reply = Frame::tcp(blue, client, Tcp::Ack).payload(b"HTTP/1.1 200 OK\r\n\r\n").macs(backend_mac(10), FXA_MAC);
    let dns_q = Frame::udp(sa4(CLIENT4, 5000), sa4(VIP4, 53)).payload(b"query");
    let dns_backend = sa4([198, 51, 100, 11], 5353);
    let dns_a = Frame::udp(dns_backend, sa4(CLIENT4, 5000)).payload(b"answer");
    let client6 = sa6(CLIENT6, 40000);
    let syn6 = Frame::tcp(client6, sa6(VIP6, 80), Tcp::Syn);
    let reply6 = Frame::tcp(sa6(BLUE6, 8080), client6, Tcp::Ack).payload(b"ok");
    let orphan = Frame::tcp(sa4(CLIENT4, 40001), vip, Tcp::Ack).payload(b"mid-stream");
    let rst = Frame::tcp(sa4(CLIENT4, 40002), vip, Tcp::Rst);
    let after_rst = Frame::tcp(sa4(CLIENT4, 40002), vip, Tcp::Ack);
    let dying = Frame::tcp(sa4(CLIENT4, 40003), vip, Tcp::Syn).ttl(1);
    let other_port = Frame::tcp(client, sa4(VIP4, 443), Tcp::Syn);
    let stranger = Frame::tcp(sa4(GREEN4, 8080), client, Tcp::Ack);
    let evicted = sa4(CLIENT4, 40100);
    let evicted_reply = Frame::tcp(blue, evicted, Tcp::Ack).payload(b"more").macs(backend_mac(10), FXA_MAC);
    let evicted_next = Frame::tcp(evicted, vip, Tcp::Ack).payload(b"next");

    let new_flow = [Ipv4, Tcp, ServicePackets, NewFlows, Redirected];
    // A flow's later packets use the next hop cached at its first packet.
    let hit = [Ipv4, Tcp, ServicePackets, FlowHits, FibCached, Redirected];
    h.check_table(&[
        case(
            "TCP SYN to the VIP: DNAT to blue, redirected to fxa",
            &syn,
            Verdict::Redirect,
            Some(to_backend(&syn, blue, 10)),
            &new_flow,
        ),
        case(
            "data on the same flow follows its entry",
            &data,
            Verdict::Redirect,
            Some(to_backend(&data, blue, 10)),
            &hit,
        ),
        case(
            "reply from blue: SNAT back to the VIP, redirected to fxb",
            &reply,
            Verdict::Redirect,
            Some(to_client(&reply, vip)),
            &[Ipv4, Tcp, Replies, Redirected],
        ),
        case(
            "UDP to the VIP's DNS port: DNAT to the dns service's endpoint",
            &dns_q,
            Verdict::Redirect,
            Some(to_backend(&dns_q, dns_backend, 11)),
            &[Ipv4, Udp, ServicePackets, NewFlows, Redirected],
        ),
        case(
            "UDP answer: SNAT back to VIP:53",
            &dns_a,
            Verdict::Redirect,
            Some(to_client(&dns_a, sa4(VIP4, 53))),
            &[Ipv4, Udp, Replies, Redirected],
        ),
        case(
            "IPv6 SYN: DNAT to the IPv6 endpoint",
            &syn6,
            Verdict::Redirect,
            Some(to_backend(&syn6, sa6(BLUE6, 8080), 0x10)),
            &[Ipv6, Tcp, ServicePackets, NewFlows, Redirected],
        ),
        case(
            "IPv6 reply: SNAT back to the IPv6 VIP",
            &reply6,
            Verdict::Redirect,
            Some(to_client(&reply6, sa6(VIP6, 80))),
            &[Ipv6, Tcp, Replies, Redirected],
        ),
        // New flows to blue from here on start with the next hop blue's
        // first flow looked up (shared per endpoint): fib_cached.
        case(
            "mid-stream ACK without an entry is adopted and forwarded",
            &orphan,
            Verdict::Redirect,
            Some(to_backend(&orphan, blue, 10)),
            &[Ipv4, Tcp, ServicePackets, Adopted, FibCached, Redirected],
        ),
        case(
            "RST is forwarded and forgets the flow",
            &rst,
            Verdict::Redirect,
            Some(to_backend(&rst, blue, 10)),
            &[Ipv4, Tcp, ServicePackets, Adopted, FibCached, Redirected],
        ),
        case(
            "so the next packet of that 5-tuple is adopted again",
            &after_rst,
            Verdict::Redirect,
            Some(to_backend(&after_rst, blue, 10)),
            &[Ipv4, Tcp, ServicePackets, Adopted, FibCached, Redirected],
        ),
        case(
            "TTL 1: passed unchanged so the stack sends time-exceeded",
            &dying,
            Verdict::Pass,
            None,
            &[Ipv4, Tcp, ServicePackets, NewFlows, FibCached, TtlExpired],
        ),
        case(
            "another port on the VIP is not a service: passed unchanged",
            &other_port,
            Verdict::Pass,
            None,
            &[Ipv4, Tcp],
        ),
        case(
            "green answering a flow that lives on blue: dropped, never forwarded with green's address",
            &stranger,
            Verdict::Drop,
            None,
            &[Ipv4, Tcp, OrphanReplies],
        ),
        case(
            "a reply whose flow has no entry (evicted): translated to the VIP, the entry restored",
            &evicted_reply,
            Verdict::Redirect,
            Some(to_client(&evicted_reply, vip)),
            &[Ipv4, Tcp, ReplyAdopted, Replies, Redirected],
        ),
        case(
            "so the client's next packet follows the restored entry to blue",
            &evicted_next,
            Verdict::Redirect,
            Some(to_backend(&evicted_next, blue, 10)),
            &[Ipv4, Tcp, ServicePackets, FlowHits, Redirected],
        ),
    ]);
}

#[test]
fn a_flip_moves_new_flows_and_leaves_established_ones() {
    let mut h = Harness::with_config(&config());
    let vip = sa4(VIP4, 80);
    let (blue, green) = (sa4(BLUE4, 8080), sa4(GREEN4, 8080));
    let old = Frame::tcp(sa4(CLIENT4, 41000), vip, Tcp::Syn);
    let old_data = Frame::tcp(sa4(CLIENT4, 41000), vip, Tcp::Ack).payload(b"still here");
    let new = Frame::tcp(sa4(CLIENT4, 41001), vip, Tcp::Syn);
    h.check_table(&[case(
        "before the flip: blue",
        &old,
        Verdict::Redirect,
        Some(to_backend(&old, blue, 10)),
        &[Ipv4, Tcp, ServicePackets, NewFlows, Redirected],
    )]);

    h.apply(&config_of(Some(shop(blue).weights(&[("green", 100)])), false));
    h.check_table(&[
        case(
            "established flow stays on blue after the flip",
            &old_data,
            Verdict::Redirect,
            Some(to_backend(&old_data, blue, 10)),
            &[Ipv4, Tcp, ServicePackets, FlowHits, FibCached, Redirected],
        ),
        case(
            "a new flow goes to green",
            &new,
            Verdict::Redirect,
            Some(to_backend(&new, green, 20)),
            &[Ipv4, Tcp, ServicePackets, NewFlows, Redirected],
        ),
        case(
            "a retransmitted SYN of that flow is no new flow: its insert finds the entry, it stays on blue",
            &old,
            Verdict::Redirect,
            Some(to_backend(&old, blue, 10)),
            &[Ipv4, Tcp, ServicePackets, FlowHits, FibCached, Redirected],
        ),
    ]);
}

#[test]
fn a_removed_service_stops_taking_new_flows_and_its_established_ones_finish() {
    let mut h = Harness::with_config(&config());
    let vip = sa4(VIP4, 80);
    let blue = sa4(BLUE4, 8080);
    let old = Frame::tcp(sa4(CLIENT4, 41500), vip, Tcp::Syn);
    let old_data = Frame::tcp(sa4(CLIENT4, 41500), vip, Tcp::Ack).payload(b"still here");
    let reply = Frame::tcp(blue, sa4(CLIENT4, 41500), Tcp::Ack).payload(b"ok").macs(backend_mac(10), FXA_MAC);
    let new = Frame::tcp(sa4(CLIENT4, 41501), vip, Tcp::Syn);
    h.check_table(&[case(
        "a flow of shop",
        &old,
        Verdict::Redirect,
        Some(to_backend(&old, blue, 10)),
        &[Ipv4, Tcp, ServicePackets, NewFlows, Redirected],
    )]);
    h.apply(&config_of(None, false));
    h.check_table(&[
        case(
            "its next packet still reaches blue",
            &old_data,
            Verdict::Redirect,
            Some(to_backend(&old_data, blue, 10)),
            &[Ipv4, Tcp, ServicePackets, FlowHits, FibCached, Redirected],
        ),
        case(
            "and its replies still reach the client",
            &reply,
            Verdict::Redirect,
            Some(to_client(&reply, vip)),
            &[Ipv4, Tcp, Replies, Redirected],
        ),
        case("a new connection to the removed service is not ours: passed", &new, Verdict::Pass, None, &[Ipv4, Tcp]),
    ]);
    // The agent's sweep keeps the endpoint while a flow to it lives ...
    let aging = FlowAging::default();
    h.dp.sweep_flows(&aging).expect("sweep");
    h.check_table(&[case(
        "after a sweep, the live flow's replies still reach the client",
        &reply,
        Verdict::Redirect,
        Some(to_client(&reply, vip)),
        &[Ipv4, Tcp, Replies, FibCached, Redirected],
    )]);
    // ... and forgets it with its last flow.
    let rst = Frame::tcp(sa4(CLIENT4, 41500), vip, Tcp::Rst);
    assert_eq!(h.run(&rst.build()).0, Verdict::Redirect as u32, "the client's RST ends the flow");
    h.dp.sweep_flows(&aging).expect("sweep");
    h.check_table(&[case(
        "once the flow is gone, the endpoint's packets are not replies: passed as they are",
        &reply,
        Verdict::Pass,
        None,
        &[Ipv4, Tcp],
    )]);
}

#[test]
fn an_endpoint_slot_given_to_another_endpoint_never_lends_it_the_old_next_hop() {
    let mut h = Harness::with_config(&config());
    let vip = sa4(VIP4, 80);
    let first = Frame::tcp(sa4(CLIENT4, 41700), vip, Tcp::Syn);
    let second = Frame::tcp(sa4(CLIENT4, 41701), vip, Tcp::Syn);
    let third = Frame::tcp(sa4(CLIENT4, 41702), vip, Tcp::Syn);
    h.check_table(&[case(
        "blue's first flow looks its next hop up",
        &first,
        Verdict::Redirect,
        Some(to_backend(&first, sa4(BLUE4, 8080), 10)),
        &[Ipv4, Tcp, ServicePackets, NewFlows, Redirected],
    )]);
    // Version blue's only endpoint (slot 0) becomes .11: another neighbour.
    h.apply(&config_of(Some(shop(sa4([198, 51, 100, 11], 8080))), false));
    let other = sa4([198, 51, 100, 11], 8080);
    h.check_table(&[
        case(
            "the slot's new endpoint gets its own lookup, and its own MAC",
            &second,
            Verdict::Redirect,
            Some(to_backend(&second, other, 11)),
            &[Ipv4, Tcp, ServicePackets, NewFlows, Redirected],
        ),
        case(
            "which the next flow to it shares",
            &third,
            Verdict::Redirect,
            Some(to_backend(&third, other, 11)),
            &[Ipv4, Tcp, ServicePackets, NewFlows, FibCached, Redirected],
        ),
    ]);
}

#[test]
fn an_endpoint_shared_by_two_services_answers_each_flow_as_its_own_vip() {
    let on_blue = |listen: SocketAddr| Service::tcp(listen).version("blue", [sa4(BLUE4, 8080)]).weights(&[("blue", 1)]);
    let h = Harness::with_config(
        &FixtureNet::config()
            .service("shop", on_blue(sa4(VIP4, 80)))
            .service("admin", on_blue(sa4([203, 0, 113, 11], 80))),
    );
    let blue = sa4(BLUE4, 8080);
    let (shop, admin) = (sa4(VIP4, 80), sa4([203, 0, 113, 11], 80));
    let to_shop = Frame::tcp(sa4(CLIENT4, 41600), shop, Tcp::Syn);
    let to_admin = Frame::tcp(sa4(CLIENT4, 41601), admin, Tcp::Syn);
    let from_shop = Frame::tcp(blue, sa4(CLIENT4, 41600), Tcp::Ack).payload(b"shop").macs(backend_mac(10), FXA_MAC);
    let from_admin = Frame::tcp(blue, sa4(CLIENT4, 41601), Tcp::Ack).payload(b"admin").macs(backend_mac(10), FXA_MAC);
    let unasked = Frame::tcp(blue, sa4(CLIENT4, 41602), Tcp::Ack).payload(b"?").macs(backend_mac(10), FXA_MAC);
    let new_flow = [Ipv4, Tcp, ServicePackets, NewFlows, Redirected];
    let reply = [Ipv4, Tcp, Replies, Redirected];
    h.check_table(&[
        case("a flow to shop", &to_shop, Verdict::Redirect, Some(to_backend(&to_shop, blue, 10)), &new_flow),
        case("a flow to admin", &to_admin, Verdict::Redirect, Some(to_backend(&to_admin, blue, 10)), &new_flow),
        case(
            "blue answers the shop flow as shop",
            &from_shop,
            Verdict::Redirect,
            Some(to_client(&from_shop, shop)),
            &reply,
        ),
        case(
            "and the admin flow as admin",
            &from_admin,
            Verdict::Redirect,
            Some(to_client(&from_admin, admin)),
            &reply,
        ),
        case(
            "a packet of blue's that answers no flow is dropped: blue serves two VIPs on 8080, which it answers is unknown",
            &unasked,
            Verdict::Drop,
            None,
            &[Ipv4, Tcp, OrphanReplies],
        ),
    ]);
}

#[test]
fn an_endpoint_packet_to_this_host_is_passed_unchanged_and_never_taken_for_a_reply() {
    // blue:8080 serves shop only (a flowless packet of its would be an
    // orphan reply), green:8080 shop and admin (one would be ambiguous).
    let admin = Service::tcp(sa4([203, 0, 113, 11], 80)).version("blue", [sa4(GREEN4, 8080)]).weights(&[("blue", 1)]);
    let h = Harness::with_config(&config().service("admin", admin));
    let (blue, green) = (sa4(BLUE4, 8080), sa4(GREEN4, 8080));
    let from = |endpoint: SocketAddr, last: u8, to: SocketAddr, flags: Tcp| {
        Frame::tcp(endpoint, to, flags).payload(b"hello").macs(backend_mac(last), FXA_MAC)
    };
    // The host's own connections: to blue, to green, from its other
    // interface's address, over IPv6; and a UDP exchange with dns's endpoint.
    let host_blue = from(blue, 10, sa4(FXA4, 50000), Tcp::Ack);
    let host_blue_fin = from(blue, 10, sa4(FXA4, 50000), Tcp::Fin);
    let host_green = from(green, 20, sa4(FXA4, 50001), Tcp::Ack);
    let host_other_side = from(blue, 10, sa4(FXB4, 50002), Tcp::Ack);
    let host_blue6 = from(sa6(BLUE6, 8080), 0x10, sa6(FXA6, 50003), Tcp::Ack);
    let host_dns =
        Frame::udp(sa4([198, 51, 100, 11], 5353), sa4(FXA4, 50004)).payload(b"answer").macs(backend_mac(11), FXA_MAC);
    // The same endpoints' flowless packets to a client, as before.
    let client_blue = from(blue, 10, sa4(CLIENT4, 50000), Tcp::Ack);
    let client_green = from(green, 20, sa4(CLIENT4, 50001), Tcp::Ack);
    let to_host = |family| [family, Tcp, ToHost];
    h.check_table(&[
        case("blue answers the host itself: passed unchanged", &host_blue, Verdict::Pass, None, &to_host(Ipv4)),
        case("and again (no flow was made of it)", &host_blue_fin, Verdict::Pass, None, &to_host(Ipv4)),
        case(
            "green, which serves two VIPs on 8080, answers the host: passed, not dropped",
            &host_green,
            Verdict::Pass,
            None,
            &to_host(Ipv4),
        ),
        case(
            "to the host's address on the clients' side: passed unchanged",
            &host_other_side,
            Verdict::Pass,
            None,
            &to_host(Ipv4),
        ),
        case("over IPv6: passed unchanged", &host_blue6, Verdict::Pass, None, &to_host(Ipv6)),
        case("UDP: passed unchanged", &host_dns, Verdict::Pass, None, &[Ipv4, Udp, ToHost]),
        case(
            "blue's flowless packet to a client is still given back its VIP",
            &client_blue,
            Verdict::Redirect,
            Some(to_client(&client_blue, sa4(VIP4, 80))),
            &[Ipv4, Tcp, ReplyAdopted, Replies, Redirected],
        ),
        case(
            "and green's still dropped, never forwarded with green's address",
            &client_green,
            Verdict::Drop,
            None,
            &[Ipv4, Tcp, OrphanReplies],
        ),
    ]);
}

#[test]
fn kernel_places_every_flow_where_the_userspace_plan_says() {
    let shop = Service::tcp(sa4(VIP4, 80))
        .version("blue", [sa4(BLUE4, 8080), sa4([198, 51, 100, 11], 8080)])
        .version("green", [sa4(GREEN4, 8080)])
        .weights(&[("blue", 60), ("green", 40)]);
    let h = Harness::with_config(&FixtureNet::config().service("shop", shop));
    let plan = &h.plans[0];
    let mut per_version = [0u32; 2];
    for port in 20000..20400u16 {
        let syn = Frame::tcp(sa4(CLIENT4, port), sa4(VIP4, 80), Tcp::Syn).build();
        let (verdict, out) = h.run(&syn);
        assert_eq!(verdict, Verdict::Redirect as u32, "flow from port {port} not redirected");
        // Where the pure plan puts this flow.
        let key = FlowKey::v4(CLIENT4, port, VIP4, 80, 6);
        let v = plan.table.slot_version[version_slot(flow_hash(&key, SEED_VERSION))] as usize;
        let e = plan.table.rings[v][ring_slot(flow_hash(&key, SEED_ENDPOINT))] as usize;
        let want = plan.table.endpoints[e];
        let got_ip = u32::from_ne_bytes(out[30..34].try_into().unwrap());
        let got_port = u16::from_ne_bytes(out[36..38].try_into().unwrap());
        assert_eq!((got_ip, got_port), (want.addr[0], want.port), "flow from port {port}: kernel and plan disagree");
        per_version[v] += 1;
    }
    // 400 flows at 60/40: a loose sanity bound (exact proportions are the plan's unit tests' job).
    assert!((180..=300).contains(&per_version[0]), "blue got {} of 400", per_version[0]);
    let _ = net::VIP4;
}

#[test]
fn a_service_without_a_usable_table_is_dropped_and_counted_with_a_clean_verdict() {
    let mut h = Harness::with_config(&config());
    let vip = sa4(VIP4, 81);
    let key = splitter_common::service::ServiceKey {
        addr: splitter_model::plan::addr_words(vip.ip()),
        port: vip.port().to_be(),
        proto: 6,
        family: splitter_common::FAMILY_V4,
    };
    let table = splitter_common::service::MAX_TABLES - 1;
    h.dp.write_service_ref(key, splitter_common::service::ServiceRef { table, flags: 0 }).unwrap();
    let syn = Frame::tcp(sa4(CLIENT4, 40000), vip, Tcp::Syn);
    // The first drop is noted for the log, the second is inside the rate
    // gate: both verdicts must be exactly XDP_DROP (the internal "log
    // pending" bit never leaks out).
    let drop = case(
        "SYN to a service whose table is missing",
        &syn,
        Verdict::Drop,
        None,
        &[Ipv4, Tcp, ServicePackets, NoTable, Dropped],
    );
    h.check_table(&[drop.clone(), drop]);
}

/// `TC_ACT_*` verdicts of the mirror program.
const TC_ACT_OK: i32 = 0;
const TC_ACT_REDIRECT: i32 = 7;

#[test]
fn a_mirrored_flow_is_copied_whole_by_the_tc_program_and_an_unmirrored_one_never() {
    use splitter_common::service::mirror_sampled;
    use splitter_testkit::capture::Capture;
    let h = Harness::with_config(&config_of(Some(shop(sa4(BLUE4, 8080))), true));
    let vip = sa4(VIP4, 80);
    let blue = sa4(BLUE4, 8080);
    let key = |port: u16| FlowKey::v4(CLIENT4, port, VIP4, 80, 6);
    let sampled = (42000..43000).find(|p| mirror_sampled(&key(*p), 5000)).expect("a sampled port");
    let unsampled = (42000..43000).find(|p| !mirror_sampled(&key(*p), 5000)).expect("an unsampled port");
    let capture = h.net.ns.run(|| Capture::open("fxn")).expect("capture on fxn");
    // Only the test's TCP frames: the links also carry IPv6 neighbour discovery.
    let copies = || -> Vec<Vec<u8>> {
        capture
            .frames(std::time::Duration::from_millis(200), std::time::Duration::from_secs(2))
            .into_iter()
            .filter(|f| {
                let v4 = f.len() > 23 && f[12..14] == [0x08, 0x00] && matches!(f[23], 6 | 17);
                v4 || (f.len() > 20 && f[12..14] == [0x86, 0xdd] && f[20] == 6)
            })
            .collect()
    };
    let stat = |s: Stat| h.stats()[s as usize];

    let client = sa4(CLIENT4, sampled);
    let syn = Frame::tcp(client, vip, Tcp::Syn);
    let reply = Frame::tcp(blue, client, Tcp::Ack).payload(b"mirrored answer").macs(backend_mac(10), FXA_MAC);
    let handoff = [Ipv4, Tcp, ServicePackets, NewFlows, MirrorHandoff];
    h.check_table(&[
        case("sampled SYN: XDP leaves it to the TC program, unchanged", &syn, Verdict::Pass, None, &handoff),
        case(
            "reply on the mirrored flow: also left to TC",
            &reply,
            Verdict::Pass,
            None,
            &[Ipv4, Tcp, Replies, MirrorHandoff],
        ),
    ]);
    let (mirrored, redirected) = (stat(Mirrored), stat(Redirected));
    let (verdict, out) = h.run_mirror(&syn.build());
    assert_eq!(verdict, TC_ACT_REDIRECT, "TC forwards the sampled SYN");
    assert_eq!(out, to_backend(&syn, blue, 10).build(), "the primary is rewritten exactly as XDP would");
    let (verdict, out) = h.run_mirror(&reply.build());
    assert_eq!(verdict, TC_ACT_REDIRECT, "TC forwards the reply");
    assert_eq!(out, to_client(&reply, vip).build(), "the reply is rewritten exactly as XDP would");
    assert_eq!(
        copies(),
        [syn.build(), to_client(&reply, vip).build()],
        "the copies: the SYN as the client sent it, the reply as the client gets it"
    );
    assert_eq!((stat(Mirrored) - mirrored, stat(Redirected) - redirected), (2, 2));

    let plain = Frame::tcp(sa4(CLIENT4, unsampled), vip, Tcp::Syn);
    h.check_table(&[case(
        "unsampled SYN: the pure XDP path",
        &plain,
        Verdict::Redirect,
        Some(to_backend(&plain, blue, 10)),
        &[Ipv4, Tcp, ServicePackets, NewFlows, Redirected],
    )]);
    let (verdict, out) = h.run_mirror(&plain.build());
    assert_eq!((verdict, out), (TC_ACT_OK, plain.build()), "TC leaves an unmirrored flow alone");
    let stranger = Frame::tcp(sa4(GREEN4, 8080), client, Tcp::Ack);
    assert_eq!(h.run_mirror(&stranger.build()), (TC_ACT_OK, stranger.build()), "and traffic of no flow");
    assert!(copies().is_empty(), "no copy of an unsampled flow or a stranger");
    assert_eq!(stat(Mirrored), mirrored + 2);

    // IPv6 and UDP take the same path (services mirrored at 100 %).
    let syn6 = Frame::tcp(sa6(CLIENT6, 40000), sa6(VIP6, 80), Tcp::Syn);
    let dns_q = Frame::udp(sa4(CLIENT4, 5000), sa4(VIP4, 53)).payload(b"query");
    let dns_backend = sa4([198, 51, 100, 11], 5353);
    h.check_table(&[
        case(
            "IPv6 SYN of a mirrored service: left to TC",
            &syn6,
            Verdict::Pass,
            None,
            &[Ipv6, Tcp, ServicePackets, NewFlows, MirrorHandoff],
        ),
        case(
            "UDP datagram of a mirrored service: left to TC",
            &dns_q,
            Verdict::Pass,
            None,
            &[Ipv4, Udp, ServicePackets, NewFlows, MirrorHandoff],
        ),
    ]);
    assert_eq!(h.run_mirror(&syn6.build()), (TC_ACT_REDIRECT, to_backend(&syn6, sa6(BLUE6, 8080), 0x10).build()));
    assert_eq!(h.run_mirror(&dns_q.build()), (TC_ACT_REDIRECT, to_backend(&dns_q, dns_backend, 11).build()));
    assert_eq!(copies(), [syn6.build(), dns_q.build()], "IPv6 and UDP copies, as the client sent them");
}

#[test]
fn the_mirror_guard_drops_answers_from_a_service_address_and_passes_the_rest() {
    let h = Harness::with_config(&config());
    let guard = |f: &Frame| {
        let before = h.stats();
        let out = h.net.ns.run(|| h.dp.test_run_program(splitter_common::names::PROG_MIRROR_GUARD, &f.build(), 1));
        let out = out.expect("BPF_PROG_TEST_RUN of the guard");
        let after = h.stats();
        let moved: Vec<&str> =
            Stat::ALL.iter().filter(|s| after[**s as usize] != before[**s as usize]).map(|s| s.name()).collect();
        (out.action, moved)
    };
    let client = sa4(CLIENT4, 40000);
    let shadow_answer = Frame::tcp(sa4(VIP4, 80), client, Tcp::Ack).payload(b"from the shadow");
    assert_eq!(guard(&shadow_answer), (Verdict::Drop as u32, vec!["shadow_replies"]));
    let dns_answer = Frame::udp(sa4(VIP4, 53), sa4(CLIENT4, 5000)).payload(b"shadow dns");
    assert_eq!(guard(&dns_answer), (Verdict::Drop as u32, vec!["shadow_replies"]));
    for other in [
        Frame::tcp(sa4(VIP4, 443), client, Tcp::Ack),
        Frame::tcp(client, sa4(VIP4, 80), Tcp::Syn),
        Frame::udp(sa4(VIP4, 80), client),
    ] {
        assert_eq!(guard(&other), (Verdict::Pass as u32, vec![]), "not from a service: {other:?}");
    }
}
