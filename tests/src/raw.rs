//! Sending hand-made Ethernet frames out of an interface (AF_PACKET), for
//! tests that must put malformed packets on a real wire.

use std::{io, os::fd::AsRawFd};

use std::os::fd::{FromRawFd, OwnedFd};

/// A raw packet socket bound to one interface of the namespace it was made in.
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    /// Opens a socket on `ifname`. Call inside the namespace (`NetNs::run`).
    pub fn open(ifname: &str) -> io::Result<RawSocket> {
        let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: plain libc calls; the fd is owned right away.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(RawSocket { fd: OwnedFd::from_raw_fd(fd), ifindex })
        }
    }

    /// Sends `frame` (starting at the Ethernet header) as it is.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; all-zero is valid before filling it.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the buffer and address outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The MAC address of `dev` in `ns`, from `ip link`.
pub fn mac_of(ns: &splitter_user::netns::NetNs, dev: &str) -> [u8; 6] {
    let out = ns.ip(&["-o", "link", "show", "dev", dev]).expect("ip link show");
    let mac =
        out.split("link/ether ").nth(1).and_then(|r| r.split_whitespace().next()).expect("link/ether in ip output");
    let bytes: Vec<u8> = mac.split(':').map(|h| u8::from_str_radix(h, 16).expect("hex")).collect();
    bytes.try_into().expect("six bytes")
}

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
    pub fn recv(&self, timeout: std::time::Duration) -> Option<Vec<u8>> {
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

    /// Every frame until none came for `quiet` (or `limit` has passed).
    pub fn frames(&self, quiet: std::time::Duration, limit: std::time::Duration) -> Vec<Vec<u8>> {
        let end = std::time::Instant::now() + limit;
        let mut out = Vec::new();
        while std::time::Instant::now() < end {
            match self.recv(quiet) {
                Some(f) => out.push(f),
                None => break,
            }
        }
        out
    }
}
