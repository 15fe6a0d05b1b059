//! Tier 2, ICMP errors through the NAT: an error about a VIP flow is matched
//! by the header it quotes and translated — towards the flow's endpoint
//! when sent to the VIP, back to the client as the VIP's when sent from the
//! endpoint's side — with exact output bytes: the expected frames are built
//! by etherparse from scratch (every checksum computed whole), so the
//! program's incremental checksums are checked against it.

use std::net::{Ipv6Addr, SocketAddr};

use etherparse::{
    icmpv4::DestUnreachableHeader, icmpv6::DestUnreachableCode, Icmpv4Type, Icmpv6Type, Ipv4Header, PacketBuilder,
};
use splitter_common::stats::Stat::*;
use splitter_testkit::config::Service;
use splitter_tests::{
    fixture::{net::*, Case, FixtureNet, Harness, Output, Verdict},
    packet::{Frame, Tcp},
};

fn sa4(a: [u8; 4], port: u16) -> SocketAddr {
    (a, port).into()
}
fn sa6(a: [u8; 16], port: u16) -> SocketAddr {
    (Ipv6Addr::from(a), port).into()
}

/// A router on the client's side, and one on the endpoints' side.
const CLIENT_ROUTER4: [u8; 4] = [192, 0, 2, 254];
const CLIENT_ROUTER6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe];

/// What an ICMP error quotes of `frame`: its IP header and 8 bytes more.
fn quote(frame: &[u8]) -> Vec<u8> {
    let ip = &frame[14..];
    let header = if ip[0] >> 4 == 4 { usize::from(ip[0] & 0x0f) * 4 } else { 40 };
    ip[..header + 8].to_vec()
}

/// `quoted` with its source (or destination) address and port replaced and,
/// for IPv4, its header checksum computed again (its TCP checksum is left
/// as it was, as the program leaves it).
fn requote(quoted: &[u8], src: Option<SocketAddr>, dst: Option<SocketAddr>) -> Vec<u8> {
    let mut q = quoted.to_vec();
    let v4 = q[0] >> 4 == 4;
    let header = if v4 { usize::from(q[0] & 0x0f) * 4 } else { 40 };
    let (addr_len, src_at, dst_at) = if v4 { (4, 12, 16) } else { (16, 8, 24) };
    for (which, at, port_at) in [(src, src_at, header), (dst, dst_at, header + 2)] {
        if let Some(a) = which {
            let octets = match a.ip() {
                std::net::IpAddr::V4(a) => a.octets().to_vec(),
                std::net::IpAddr::V6(a) => a.octets().to_vec(),
            };
            q[at..at + addr_len].copy_from_slice(&octets);
            q[port_at..port_at + 2].copy_from_slice(&a.port().to_be_bytes());
        }
    }
    if v4 {
        let (h, _) = Ipv4Header::from_slice(&q).expect("a quoted IPv4 header");
        q[10..12].copy_from_slice(&h.calc_header_checksum().to_be_bytes());
    }
    q
}

/// An ICMP error of `kind` from `from` to `to` quoting `quoted`.
fn icmp4(kind: Icmpv4Type, from: [u8; 4], to: [u8; 4], quoted: &[u8], macs: ([u8; 6], [u8; 6])) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(from, to, 64)
        .icmpv4(kind)
        .write(&mut out, quoted)
        .expect("an ICMP error");
    out
}

/// An ICMPv6 error of `kind` from `from` to `to` quoting `quoted`.
fn icmp6(kind: Icmpv6Type, from: [u8; 16], to: [u8; 16], quoted: &[u8], macs: ([u8; 6], [u8; 6])) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(from, to, 64)
        .icmpv6(kind)
        .write(&mut out, quoted)
        .expect("an ICMPv6 error");
    out
}

/// "Fragmentation needed" and "packet too big" with an MTU of 1400; "port unreachable".
const TOO_BIG4: Icmpv4Type =
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 });
const UNREACHABLE4: Icmpv4Type = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
const TOO_BIG6: Icmpv6Type = Icmpv6Type::PacketTooBig { mtu: 1400 };
const UNREACHABLE6: Icmpv6Type = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);

fn case(description: &'static str, input: Vec<u8>, output: Output, counts: &[splitter_common::stats::Stat]) -> Case {
    Case { description, input, verdict: Verdict::Pass, output, counts: counts.to_vec() }
}

#[test]
fn icmp_errors_about_a_vip_flow_are_translated_both_ways_v4_and_v6() {
    let blue = sa4(BLUE4, 8080);
    let blue6 = sa6(BLUE6, 8080);
    let config = FixtureNet::config()
        .service("shop", Service::tcp(sa4(VIP4, 80)).version("blue", [blue]).weights(&[("blue", 1)]))
        .service("shop6", Service::tcp(sa6(VIP6, 80)).version("blue", [blue6]).weights(&[("blue", 1)]));
    let h = Harness::with_config(&config);
    let (vip, vip6) = (sa4(VIP4, 80), sa6(VIP6, 80));
    let (client, client6) = (sa4(CLIENT4, 40300), sa6(CLIENT6, 40300));
    let from_client_side = (CLIENT_NEIGH_MAC, FXB_MAC);
    let from_endpoint_side = (backend_mac(10), FXA_MAC);
    // The flows, placed on blue.
    for syn in [Frame::tcp(client, vip, Tcp::Syn), Frame::tcp(client6, vip6, Tcp::Syn)] {
        let (v, _) = h.run(&syn.build());
        assert_eq!(v, Verdict::Redirect as u32, "the flow is placed");
    }
    // What the VIP sent the client (as the client saw it), and what the
    // client sent that reached blue (as blue saw it).
    let vip_said = quote(&Frame::tcp(vip, client, Tcp::Ack).payload(b"0123456789").build());
    let client_said = quote(&Frame::tcp(client, blue, Tcp::Ack).payload(b"0123456789").build());
    let vip6_said = quote(&Frame::tcp(vip6, client6, Tcp::Ack).payload(b"0123456789").build());
    let client6_said = quote(&Frame::tcp(client6, blue6, Tcp::Ack).payload(b"0123456789").build());
    let counts = [Ipv4, Icmp, IcmpTranslated];
    let counts6 = [Ipv6, Icmp, IcmpTranslated];
    h.check_table(&[
        case(
            "fragmentation needed, sent to the VIP by a router on the client's side: to blue, about blue's packet",
            icmp4(TOO_BIG4, CLIENT_ROUTER4, VIP4, &vip_said, from_client_side),
            Output::Bytes(icmp4(
                TOO_BIG4,
                CLIENT_ROUTER4,
                BLUE4,
                &requote(&vip_said, Some(blue), None),
                from_client_side,
            )),
            &counts,
        ),
        case(
            "port unreachable from blue to the client: from the VIP, about the client's packet to the VIP",
            icmp4(UNREACHABLE4, BLUE4, CLIENT4, &client_said, from_endpoint_side),
            Output::Bytes(icmp4(
                UNREACHABLE4,
                VIP4,
                CLIENT4,
                &requote(&client_said, None, Some(vip)),
                from_endpoint_side,
            )),
            &counts,
        ),
        case(
            "from a router on blue's side: its own address kept, the quoted packet translated",
            icmp4(TOO_BIG4, [198, 51, 100, 1], CLIENT4, &client_said, from_endpoint_side),
            Output::Bytes(icmp4(
                TOO_BIG4,
                [198, 51, 100, 1],
                CLIENT4,
                &requote(&client_said, None, Some(vip)),
                from_endpoint_side,
            )),
            &counts,
        ),
        case(
            "IPv6 packet too big, sent to the VIP: to blue, about blue's packet",
            icmp6(TOO_BIG6, CLIENT_ROUTER6, VIP6, &vip6_said, from_client_side),
            Output::Bytes(icmp6(
                TOO_BIG6,
                CLIENT_ROUTER6,
                BLUE6,
                &requote(&vip6_said, Some(blue6), None),
                from_client_side,
            )),
            &counts6,
        ),
        case(
            "IPv6 port unreachable from blue: from the VIP, about the client's packet to the VIP",
            icmp6(UNREACHABLE6, BLUE6, CLIENT6, &client6_said, from_endpoint_side),
            Output::Bytes(icmp6(
                UNREACHABLE6,
                VIP6,
                CLIENT6,
                &requote(&client6_said, None, Some(vip6)),
                from_endpoint_side,
            )),
            &counts6,
        ),
        case(
            "an error about a packet of no flow: passed unchanged",
            icmp4(
                TOO_BIG4,
                CLIENT_ROUTER4,
                VIP4,
                &quote(&Frame::tcp(vip, sa4(CLIENT4, 40999), Tcp::Ack).build()),
                from_client_side,
            ),
            Output::Unchanged,
            &[Ipv4, Icmp],
        ),
        case(
            "an error sent to the VIP about a packet the VIP did not send: passed unchanged",
            icmp4(TOO_BIG4, CLIENT_ROUTER4, [203, 0, 113, 99], &vip_said, from_client_side),
            Output::Unchanged,
            &[Ipv4, Icmp],
        ),
    ]);
}

#[test]
fn a_packet_too_big_for_the_endpoints_link_is_answered_with_fragmentation_needed() {
    let blue = sa4(BLUE4, 8080);
    let config = FixtureNet::config()
        .service("shop", Service::tcp(sa4(VIP4, 80)).version("blue", [blue]).weights(&[("blue", 1)]));
    let h = Harness::with_config(&config);
    h.net.ns.ip(&["link", "set", "dev", "fxa", "mtu", "1400"]).expect("a smaller MTU towards the endpoints");
    let vip = sa4(VIP4, 80);
    let client = sa4(CLIENT4, 40400);
    let (v, _) = h.run(&Frame::tcp(client, vip, Tcp::Syn).build());
    assert_eq!(v, Verdict::Redirect as u32);
    let big = Frame::tcp(client, vip, Tcp::Ack).payload(&[9u8; 1460]).macs(CLIENT_NEIGH_MAC, FXB_MAC).build();
    let quoted = quote(&big);
    // The answer says "don't fragment" and quotes the packet as the client sent it.
    let mut want = icmp4(TOO_BIG4, VIP4, CLIENT4, &quoted, (CLIENT_NEIGH_MAC, FXB_MAC));
    want[14 + 6] = 0x40;
    let (h4, _) = Ipv4Header::from_slice(&want[14..]).unwrap();
    want[24..26].copy_from_slice(&h4.calc_header_checksum().to_be_bytes());
    h.check_table(&[Case {
        description: "1,514-byte frame towards a 1,400-byte link: fragmentation needed, back to the client",
        input: big,
        verdict: Verdict::Pass,
        output: Output::Bytes(want),
        counts: vec![Ipv4, Tcp, ServicePackets, FlowHits, FibCached, TooBig],
    }]);
}
