//! Packet captures in namespaces: an AF_PACKET socket on one interface
//! (what a tcpdump on the far side of a mirror link sees), and the TCP flows
//! of a VIP in what it captured, read with etherparse. `splitter demo` shows
//! mirrored flows with it; the tests check them.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddrV4,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use etherparse::{NetSlice, SlicedPacket, TcpSlice, TransportSlice};

/// A packet capture on one interface (AF_PACKET, every protocol, incoming
/// frames only): what a tcpdump on the far side of a link would see.
pub struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// Starts capturing on `ifname`. Call inside the namespace (`NetNs::run`).
    pub fn open(ifname: &str) -> io::Result<Capture> {
        let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain libc calls on a socket we own; the structs are plain data.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all));
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = all;
            addr.sll_ifindex = ifindex;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            let set = |level, opt, value: i32| {
                let v = &value as *const i32;
                if libc::setsockopt(fd.as_raw_fd(), level, opt, v.cast(), 4) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            };
            set(libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)?;
            set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 32 << 20)?;
            Ok(Capture { fd })
        }
    }

    /// The next frame, or `None` when none comes within `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        if ready <= 0 {
            return None;
        }
        let mut buf = vec![0u8; 65_536];
        // SAFETY: the buffer outlives the call and its length is passed.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }

    /// Records in the background until [`Recording::finish`].
    pub fn record(self) -> Recording {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let start = Instant::now();
            // Bounded: a recording nobody finishes ends by itself.
            while start.elapsed() < Duration::from_secs(600) {
                match self.recv(Duration::from_millis(300)) {
                    Some(f) => frames.push(f),
                    None if flag.load(Ordering::Relaxed) => break,
                    None => {}
                }
            }
            frames
        });
        Recording { stop, thread }
    }

    /// Every frame until none came for `quiet` (or `limit` has passed).
    pub fn frames(&self, quiet: Duration, limit: Duration) -> Vec<Vec<u8>> {
        let end = Instant::now() + limit;
        let mut out = Vec::new();
        while Instant::now() < end {
            match self.recv(quiet) {
                Some(f) => out.push(f),
                None => break,
            }
        }
        out
    }
}

/// A capture recording on its own thread.
pub struct Recording {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Vec<u8>>>,
}

impl Recording {
    /// Stops once the link has been quiet for a moment; every frame recorded.
    pub fn finish(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// What a capture saw of one client's TCP flow to the VIP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeenFlow {
    /// The client's SYN.
    pub syn: bool,
    /// Payload from the client.
    pub request: bool,
    /// Payload to the client.
    pub answer: bool,
}

/// The TCP flows of one VIP in a capture (IPv4, untagged Ethernet).
#[derive(Clone, Debug, Default)]
pub struct TcpFlows {
    /// By the client's address and port.
    pub flows: BTreeMap<SocketAddrV4, SeenFlow>,
    /// TCP frames that are not between a client and the VIP (e.g. addressed
    /// to a backend): none, when copies show the client's view.
    pub other: usize,
}

/// Groups the IPv4 TCP frames of `frames` by client, for flows to `vip`.
/// Frames that are not Ethernet II + IPv4 + TCP, or that do not parse whole
/// (cut short, impossible lengths), are left out.
pub fn tcp_flows(frames: &[Vec<u8>], vip: SocketAddrV4) -> TcpFlows {
    let mut out = TcpFlows::default();
    for f in frames {
        let Some((src, dst, tcp)) = ipv4_tcp(f) else { continue };
        let payload = !tcp.payload().is_empty();
        if dst == vip {
            let s = out.flows.entry(src).or_default();
            s.syn |= tcp.syn() && !tcp.ack();
            s.request |= payload;
        } else if src == vip {
            out.flows.entry(dst).or_default().answer |= payload;
        } else {
            out.other += 1;
        }
    }
    out
}

/// An untagged Ethernet II frame carrying IPv4 and TCP: its source and
/// destination, and the TCP segment.
fn ipv4_tcp(frame: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, TcpSlice<'_>)> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    if !packet.link_exts.is_empty() {
        return None;
    }
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) = (packet.net, packet.transport) else {
        return None;
    };
    let header = ip.header();
    let src = SocketAddrV4::new(header.source_addr(), tcp.source_port());
    let dst = SocketAddrV4::new(header.destination_addr(), tcp.destination_port());
    Some((src, dst, tcp))
}

impl TcpFlows {
    /// Flows seen with their SYN, a request and an answer.
    pub fn whole(&self) -> usize {
        self.flows.values().filter(|s| s.syn && s.request && s.answer).count()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use etherparse::PacketBuilder;

    use super::*;

    const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 40000);
    const BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 10), 8080);

    /// A TCP frame from `src` to `dst`; `syn` / `ack` flags, `payload`.
    fn tcp(src: SocketAddrV4, dst: SocketAddrV4, syn: bool, ack: bool, payload: &[u8]) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src.ip().octets(), dst.ip().octets(), 64)
            .tcp(src.port(), dst.port(), 1, 64_000);
        if syn {
            b = b.syn();
        }
        if ack {
            b = b.ack(1);
        }
        let mut frame = Vec::new();
        b.write(&mut frame, payload).unwrap();
        frame
    }

    #[test]
    fn flows_are_grouped_by_client_and_what_is_not_ipv4_tcp_is_left_out() {
        let other_client = SocketAddrV4::new(*CLIENT.ip(), 40001);
        let mut cut_short = tcp(CLIENT, VIP, false, true, b"GET");
        cut_short.truncate(14 + 20 + 10);
        let mut udp = Vec::new();
        PacketBuilder::ethernet2([2; 6], [3; 6])
            .ipv4(CLIENT.ip().octets(), VIP.ip().octets(), 64)
            .udp(CLIENT.port(), VIP.port())
            .write(&mut udp, b"q")
            .unwrap();
        let frames = vec![
            tcp(CLIENT, VIP, true, false, b""),
            tcp(VIP, CLIENT, true, true, b""),
            tcp(CLIENT, VIP, false, true, b"version?\n"),
            tcp(VIP, CLIENT, false, true, b"blue\n"),
            tcp(other_client, VIP, false, true, b""),
            tcp(CLIENT, BACKEND, true, false, b""),
            cut_short,
            udp,
        ];
        let seen = tcp_flows(&frames, VIP);
        assert_eq!(seen.flows[&CLIENT], SeenFlow { syn: true, request: true, answer: true });
        assert_eq!(seen.flows[&other_client], SeenFlow::default(), "an ACK alone is neither a SYN nor a request");
        assert_eq!(seen.flows.len(), 2);
        assert_eq!(seen.other, 1, "the frame addressed to a backend");
        assert_eq!(seen.whole(), 1);
    }
}
