//! Tier 3, path MTU through the load balancer: the link to the endpoint
//! carries 1,400 bytes while the client's carries 1,500. A packet too big
//! for the endpoint's link is answered with ICMP "fragmentation needed"
//! from the VIP (redirected, the link would drop it silently): TCP learns
//! the path MTU and completes a 1 MB upload, and UDP with "don't fragment"
//! gets the error.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use splitter_common::stats::Stat;
use splitter_testkit::{
    config::Service,
    serve::serve_udp,
    topology::{vip, Topology},
};
use splitter_tests::{agent::Agent, netns::topology};

const UPLOAD: usize = 1 << 20;

/// A TCP server in `ns` on `port` that reads each connection to its end and
/// answers with how many bytes it read.
fn count_server(ns: &splitter_testkit::netns::NetNs, port: u16) {
    let listener = ns.run(|| TcpListener::bind(("::", port))).expect("bind the counting server");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 65536];
                let mut n = 0;
                while let Ok(k) = conn.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                let _ = conn.write_all(format!("{n}\n").as_bytes());
            });
        }
    });
}

#[test]
fn a_smaller_mtu_towards_the_endpoint_is_learned_by_tcp_and_reported_to_udp() {
    let topo = topology();
    count_server(&topo.blue, 9000);
    serve_udp(&topo.blue, 5353, "blue").expect("UDP backend");
    // Only the load balancer's end is smaller: blue itself announces a
    // 1,460-byte MSS, so the client sends full 1,500-byte packets.
    topo.lb.ip(&["link", "set", "dev", "lb-blue", "mtu", "1400"]).expect("set the MTU");
    let config = Topology::config()
        .service("upload", Service::tcp(vip(9000)).on_blue("blue", 9000).weights(&[("blue", 1)]))
        .service("dns", Service::udp(vip(53)).on_blue("blue", 5353).weights(&[("blue", 1)]));
    let agent = Agent::start(&topo.lb, &config.to_string());

    let started = Instant::now();
    let answer = topo.client.run(|| -> std::io::Result<String> {
        let mut c = TcpStream::connect_timeout(&vip(9000), Duration::from_secs(2))?;
        c.set_write_timeout(Some(Duration::from_secs(10)))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.write_all(&vec![7u8; UPLOAD])?;
        c.shutdown(Shutdown::Write)?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s.trim().to_owned())
    });
    assert_eq!(
        answer.as_deref().ok(),
        Some(UPLOAD.to_string().as_str()),
        "{answer:?} after {:?}; counters {:?}\nagent log:\n{}",
        started.elapsed(),
        agent.status().counters.into_iter().filter(|(_, v)| *v > 0).collect::<Vec<_>>(),
        agent.log()
    );
    assert!(agent.counter(Stat::TooBig) > 0, "the program answered too-big packets");

    // UDP with "don't fragment": the first 1,450-byte datagram is answered
    // with the error, and the client's kernel refuses the next ones.
    let refused = topo.client.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.connect(vip(53)).expect("connect");
        let on: libc::c_int = libc::IP_PMTUDISC_DO;
        // SAFETY: a valid socket and option value.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                &on as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "IP_MTU_DISCOVER");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match s.send(&[1u8; 1450]) {
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => return Ok(()),
                Err(e) => return Err(format!("send: {e}")),
                Ok(_) if Instant::now() > deadline => return Err("every send was accepted".to_owned()),
                Ok(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    assert!(refused.is_ok(), "{refused:?}\nagent log:\n{}", agent.log());
}
