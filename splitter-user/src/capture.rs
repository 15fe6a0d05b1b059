//! Packet captures in namespaces: an AF_PACKET socket on one interface
//! (what a tcpdump on the far side of a mirror link sees), and the TCP flows
//! of a VIP in what it captured. `splitter demo` shows mirrored flows with
//! it; the tests check them.

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

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
pub fn tcp_flows(frames: &[Vec<u8>], vip: SocketAddrV4) -> TcpFlows {
    let mut out = TcpFlows::default();
    for f in frames {
        // Ethernet II, IPv4, TCP: the fields this needs, bounds-checked.
        if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[23] != 6 {
            continue;
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let l4 = 14 + ihl;
        if f.len() < l4 + 20 || total < ihl + 20 {
            continue;
        }
        let addr = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
        let port = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
        let src = SocketAddrV4::new(addr(26), port(l4));
        let dst = SocketAddrV4::new(addr(30), port(l4 + 2));
        let flags = f[l4 + 13];
        let payload = total > ihl + usize::from(f[l4 + 12] >> 4) * 4;
        if dst == vip {
            let s = out.flows.entry(src).or_default();
            s.syn |= flags & 0x12 == 0x02;
            s.request |= payload;
        } else if src == vip {
            out.flows.entry(dst).or_default().answer |= payload;
        } else {
            out.other += 1;
        }
    }
    out
}

impl TcpFlows {
    /// Flows seen with their SYN, a request and an answer.
    pub fn whole(&self) -> usize {
        self.flows.values().filter(|s| s.syn && s.request && s.answer).count()
    }
}
