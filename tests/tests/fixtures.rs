//! Tier 2: the ingress program under BPF_PROG_TEST_RUN, table-driven.
//! Each row: input frame → verdict, output bytes and the counters it moves.

use splitter_common::stats::Stat;
use splitter_tests::{
    fixture::{Case, Harness, Output, Verdict},
    packet::{self, Tcp},
};

const CLIENT4: [u8; 4] = [192, 0, 2, 1];
const VIP4: [u8; 4] = [203, 0, 113, 10];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];
const VIP6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];

fn pass(description: &'static str, input: Vec<u8>, counts: &[Stat]) -> Case {
    Case { description, input, verdict: Verdict::Pass, output: Output::Unchanged, counts: counts.to_vec() }
}

#[test]
fn parser_classifies_and_counts_every_kind_of_frame() {
    let tcp = packet::tcp_v4(CLIENT4, 40000, VIP4, 80, Tcp::Syn, b"");
    let cases = vec![
        pass("IPv4 TCP SYN", tcp.clone(), &[Stat::Ipv4, Stat::Tcp]),
        pass(
            "IPv4 TCP data",
            packet::tcp_v4(CLIENT4, 40000, VIP4, 80, Tcp::Ack, b"GET / HTTP/1.1\r\n\r\n"),
            &[Stat::Ipv4, Stat::Tcp],
        ),
        pass("IPv4 UDP", packet::udp_v4(CLIENT4, 5353, VIP4, 53, b"query"), &[Stat::Ipv4, Stat::Udp]),
        pass("IPv6 TCP SYN", packet::tcp_v6(CLIENT6, 40000, VIP6, 80, Tcp::Syn, b""), &[Stat::Ipv6, Stat::Tcp]),
        pass("IPv6 UDP", packet::udp_v6(CLIENT6, 5353, VIP6, 53, b"query"), &[Stat::Ipv6, Stat::Udp]),
        pass(
            "802.1Q-tagged IPv4 UDP",
            packet::udp_v4_vlan(42, CLIENT4, 5353, VIP4, 53, b"q"),
            &[Stat::Ipv4, Stat::Udp],
        ),
        pass("ICMP echo", packet::icmp_echo_v4(CLIENT4, VIP4), &[Stat::Ipv4, Stat::Icmp]),
        pass("ICMPv6 echo", packet::icmp_echo_v6(CLIENT6, VIP6), &[Stat::Ipv6, Stat::Icmp]),
        pass("ARP is not IP", packet::arp_request(CLIENT4, VIP4), &[Stat::NonIp]),
        pass(
            "IPv4 with options: L4 found after the options",
            ipv4_with_options(packet::udp_v4(CLIENT4, 1, VIP4, 2, b"x")),
            &[Stat::Ipv4, Stat::Udp],
        ),
        pass(
            "first IPv4 fragment",
            packet::as_ipv4_fragment(packet::udp_v4(CLIENT4, 1, VIP4, 2, b"x"), 0, true),
            &[Stat::Ipv4, Stat::Fragment],
        ),
        pass(
            "later IPv4 fragment",
            packet::as_ipv4_fragment(packet::udp_v4(CLIENT4, 1, VIP4, 2, b"x"), 185, false),
            &[Stat::Ipv4, Stat::Fragment],
        ),
        pass("GRE is another L4", gre_v4(), &[Stat::Ipv4, Stat::OtherL4]),
        pass(
            "IPv4 with Ethernet padding after the datagram",
            padded(packet::udp_v4(CLIENT4, 1, VIP4, 2, b"x")),
            &[Stat::Ipv4, Stat::Udp],
        ),
        pass("IPv6 hop-by-hop extension header: not walked", ipv6_hop_by_hop(), &[Stat::Ipv6, Stat::Ipv6Ext]),
        // Malformed: passed to the stack (it drops them with its own
        // accounting), counted by reason, never redirected.
        pass("Ethernet header only, IPv4 EtherType", packet::truncated(&tcp, 14), &[Stat::Truncated]),
        pass("IPv4 header cut short", packet::truncated(&tcp, 14 + 12), &[Stat::Truncated]),
        pass(
            "TCP header cut short (IP length consistent)",
            packet::truncated(&with_ipv4_tot_len(tcp.clone(), 30), packet::ETH_IPV4_HLEN + 10),
            &[Stat::Ipv4, Stat::Truncated],
        ),
        pass(
            "IPv4 total length past the end of the frame",
            with_ipv4_tot_len(packet::udp_v4(CLIENT4, 1, VIP4, 2, b"x"), 200),
            &[Stat::Ipv4, Stat::BadLength],
        ),
        pass(
            "IPv4 total length below the header length",
            with_ipv4_tot_len(packet::udp_v4(CLIENT4, 1, VIP4, 2, b"x"), 12),
            &[Stat::Ipv4, Stat::BadLength],
        ),
        pass("IPv4 IHL below 5", packet::with_ipv4_ihl(tcp.clone(), 4), &[Stat::BadHeader]),
        pass(
            "IPv4 IHL larger than the datagram",
            packet::with_ipv4_ihl(packet::truncated(&tcp, 40), 15),
            &[Stat::Ipv4, Stat::BadLength],
        ),
        pass("IP version 6 in an IPv4 EtherType", ipv4_wrong_version(tcp.clone()), &[Stat::BadHeader]),
        pass("TCP data offset below 5", tcp_bad_doff(tcp.clone()), &[Stat::Ipv4, Stat::BadHeader]),
        pass("IPv6 payload length past the end of the frame", ipv6_long_payload(), &[Stat::Ipv6, Stat::BadLength]),
        pass(
            "VLAN tag cut short",
            packet::truncated(&packet::udp_v4_vlan(42, CLIENT4, 1, VIP4, 2, b""), 16),
            &[Stat::Truncated],
        ),
    ];
    Harness::new().check_table(&cases);
}

#[test]
fn harness_notices_a_wrong_expectation() {
    // The harness itself must be able to fail: a wrong verdict, wrong bytes and
    // a wrong counter are each reported.
    let h = Harness::new();
    let input = packet::udp_v4(CLIENT4, 1, VIP4, 2, b"x");
    let wrong = Case {
        description: "deliberately wrong",
        input: input.clone(),
        verdict: Verdict::Drop,
        output: Output::Bytes(vec![0; 3]),
        counts: vec![Stat::Tcp],
    };
    let err = h.check(&wrong).expect_err("a wrong case must fail");
    assert!(err.contains("verdict Pass, expected Drop"), "{err}");
    assert!(err.contains("output differs"), "{err}");
    assert!(err.contains("counter tcp moved by 0, expected 1"), "{err}");
    assert!(err.contains("counter udp moved by 1, expected 0"), "{err}");
    // And the same harness passes the right expectation.
    h.check(&pass("the right expectation", input, &[Stat::Ipv4, Stat::Udp])).expect("correct case");
}

/// Adds 4 bytes of IPv4 options (NOP x4) and fixes lengths and checksums.
fn ipv4_with_options(frame: Vec<u8>) -> Vec<u8> {
    let mut f = frame[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 1]);
    f.extend_from_slice(&frame[34..]);
    f[14] = 0x46;
    let tot = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    packet::fix_ipv4_checksum(&mut f);
    f
}

fn gre_v4() -> Vec<u8> {
    let mut f = packet::udp_v4(CLIENT4, 1, VIP4, 2, b"xxxx");
    f[23] = 47;
    packet::fix_ipv4_checksum(&mut f);
    f
}

fn ipv4_wrong_version(mut f: Vec<u8>) -> Vec<u8> {
    f[14] = 0x65;
    packet::fix_ipv4_checksum(&mut f);
    f
}

fn with_ipv4_tot_len(mut f: Vec<u8>, len: u16) -> Vec<u8> {
    f[16..18].copy_from_slice(&len.to_be_bytes());
    packet::fix_ipv4_checksum(&mut f);
    f
}

fn padded(mut f: Vec<u8>) -> Vec<u8> {
    f.extend_from_slice(&[0; 16]);
    f
}

fn ipv6_hop_by_hop() -> Vec<u8> {
    // Next header 0 (hop-by-hop) followed by an 8-byte option header that
    // leads to UDP; the parser must not take the option bytes for ports.
    let mut f = packet::udp_v6(CLIENT6, 1, VIP6, 2, b"x");
    let udp = f.split_off(54);
    f[20] = 0;
    f.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
    f.extend_from_slice(&udp);
    let len = (f.len() - 54) as u16;
    f[18..20].copy_from_slice(&len.to_be_bytes());
    f
}

fn ipv6_long_payload() -> Vec<u8> {
    let mut f = packet::udp_v6(CLIENT6, 1, VIP6, 2, b"x");
    f[18..20].copy_from_slice(&400u16.to_be_bytes());
    f
}

fn tcp_bad_doff(mut f: Vec<u8>) -> Vec<u8> {
    f[packet::ETH_IPV4_HLEN + 12] = 0x40;
    f
}
