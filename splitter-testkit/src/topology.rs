//! The namespace topology `splitter demo`, the end-to-end tests and the
//! benchmarks run the agent in: a client, a load balancer and two backends.
//!
//! ```text
//!  client ns                lb ns (agent, XDP on all three)    blue ns / green ns
//!  eth0 192.0.2.2         ── lb-client 192.0.2.1
//!       2001:db8:c::2            2001:db8:c::1
//!                            lb-blue  198.51.100.1/28    ── eth0 198.51.100.10, 2001:db8:1::10
//!                                     2001:db8:1::1
//!                            lb-green 198.51.100.17/28   ── eth0 198.51.100.20, 2001:db8:2::10
//!                                     2001:db8:2::1
//!                            lb-mirror (no address)      ── eth0 in the tap ns (a capture)
//! ```
//! VIPs (203.0.113.0/24, 2001:db8::/64) are routed to the lb by the client's
//! default routes and owned by no one: only the XDP program (or the agent's
//! proxy, for l7 services) answers for them. Nothing leaves the machine:
//! every address lives in namespaces the topology created and deletes when
//! dropped.
//!
//! The agent configs for it start from [`Topology::config`] (its interfaces)
//! and name its backends with [`Service::on_blue`], [`Service::on_green`] and
//! [`Service::blue_green`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{
    config::{Config, Service},
    netns::{veth, NetNs, NetnsError},
};

/// The service address the configs use (routed to the lb, owned by no one).
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The backends' addresses.
pub const BLUE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const GREEN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
pub const BLUE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
pub const GREEN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);
/// The lb's interfaces: where clients arrive, where backends live, and the
/// mirror link's end ([`Topology::mirror_link`]).
pub const CLIENTS: [&str; 1] = ["lb-client"];
pub const BACKENDS: [&str; 2] = ["lb-blue", "lb-green"];
pub const MIRROR: &str = "lb-mirror";

/// `VIP:port`.
pub fn vip(port: u16) -> SocketAddr {
    SocketAddr::from((VIP, port))
}

/// `[VIP6]:port`.
pub fn vip6(port: u16) -> SocketAddr {
    SocketAddr::from((VIP6, port))
}

/// The four namespaces of the topology (see the module docs), deleted with
/// everything in them when dropped.
pub struct Topology {
    pub client: NetNs,
    pub lb: NetNs,
    pub blue: NetNs,
    pub green: NetNs,
}

/// A host's link to the lb: the lb's end and addresses, the host's (its
/// `eth0`), and the IPv4 prefix length they share.
struct Link {
    lb_if: &'static str,
    lb4: Ipv4Addr,
    lb6: Ipv6Addr,
    host4: Ipv4Addr,
    host6: Ipv6Addr,
    prefix4: u8,
}

const fn v6(s: [u16; 8]) -> Ipv6Addr {
    Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7])
}

const CLIENT_LINK: Link = Link {
    lb_if: CLIENTS[0],
    lb4: Ipv4Addr::new(192, 0, 2, 1),
    lb6: v6([0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1]),
    host4: CLIENT,
    host6: v6([0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 2]),
    prefix4: 24,
};
const BLUE_LINK: Link = Link {
    lb_if: BACKENDS[0],
    lb4: Ipv4Addr::new(198, 51, 100, 1),
    lb6: v6([0x2001, 0xdb8, 1, 0, 0, 0, 0, 1]),
    host4: BLUE,
    host6: BLUE6,
    prefix4: 28,
};
const GREEN_LINK: Link = Link {
    lb_if: BACKENDS[1],
    lb4: Ipv4Addr::new(198, 51, 100, 17),
    lb6: v6([0x2001, 0xdb8, 2, 0, 0, 0, 0, 1]),
    host4: GREEN,
    host6: GREEN6,
    prefix4: 28,
};

/// Joins `host` to `lb` by a veth pair with `link`'s names and addresses,
/// the host's default routes through the lb.
fn connect(lb: &NetNs, host: &NetNs, link: &Link) -> Result<(), NetnsError> {
    veth(lb, link.lb_if, host, "eth0")?;
    lb.addr(link.lb_if, link.lb4.into(), link.prefix4)?;
    lb.addr(link.lb_if, link.lb6.into(), 64)?;
    host.addr("eth0", link.host4.into(), link.prefix4)?;
    host.addr("eth0", link.host6.into(), 64)?;
    host.ip(&["route", "add", "default", "via", &link.lb4.to_string()])?;
    host.ip(&["-6", "route", "add", "default", "via", &link.lb6.to_string()])?;
    // XDP redirects into a veth land only if its peer runs NAPI (GRO on),
    // and a redirected frame loses the "checksum to be completed" state of
    // locally sent packets: hosts on veth send full checksums.
    host.enable_gro("eth0")?;
    host.disable_tx_offload("eth0")
}

impl Topology {
    /// Builds the topology with namespaces `{prefix}-client`, `-lb`, `-blue`, `-green`.
    pub fn build(prefix: &str) -> Result<Topology, NetnsError> {
        let ns = |role: &str| NetNs::new(format!("{prefix}-{role}"));
        let t = Topology { client: ns("client")?, lb: ns("lb")?, blue: ns("blue")?, green: ns("green")? };
        for (host, link) in [(&t.client, &CLIENT_LINK), (&t.blue, &BLUE_LINK), (&t.green, &GREEN_LINK)] {
            connect(&t.lb, host, link)?;
        }
        // Also the default for interfaces made later (`relink_backend`).
        t.lb.sysctl("net.ipv4.ip_forward=1")?;
        t.lb.sysctl("net.ipv6.conf.all.forwarding=1")?;
        Ok(t)
    }

    /// Deletes the link between the lb and backend `version` (`blue` or
    /// `green`): both ends of the veth go, as when a backend's namespace
    /// is deleted.
    pub fn unlink_backend(&self, version: &str) -> Result<(), NetnsError> {
        let (_, link) = self.backend_link(version);
        self.lb.ip(&["link", "del", link.lb_if]).map(drop)
    }

    /// Makes the link [`Topology::unlink_backend`] deleted again, with the
    /// same names and addresses (new interfaces, new indexes).
    pub fn relink_backend(&self, version: &str) -> Result<(), NetnsError> {
        let (host, link) = self.backend_link(version);
        connect(&self.lb, host, link)
    }

    fn backend_link(&self, version: &str) -> (&NetNs, &'static Link) {
        match version {
            "blue" => (&self.blue, &BLUE_LINK),
            "green" => (&self.green, &GREEN_LINK),
            other => panic!("the topology's backends are blue and green, not {other:?}"),
        }
    }

    /// Adds the mirror link: [`MIRROR`] in `lb`, joined to `eth0` in a new
    /// namespace `{prefix}-tap` (returned), where a capture sees the copies.
    pub fn mirror_link(&self, prefix: &str) -> Result<NetNs, NetnsError> {
        let tap = NetNs::new(format!("{prefix}-tap"))?;
        veth(&self.lb, MIRROR, &tap, "eth0")?;
        Ok(tap)
    }

    /// A config for an agent in `lb`: this topology's interfaces, no
    /// services yet.
    pub fn config() -> Config {
        Config::new(&CLIENTS, &BACKENDS)
    }

    /// The backend namespaces, each with the version name the configs give
    /// it by default (`blue`, `green`).
    pub fn backends(&self) -> [(&NetNs, &'static str); 2] {
        [(&self.blue, "blue"), (&self.green, "green")]
    }
}

impl Service {
    /// Adds version `name` served by the blue backend on `port`.
    pub fn on_blue(self, name: &str, port: u16) -> Service {
        self.version(name, [SocketAddr::from((BLUE, port))])
    }

    /// Adds version `name` served by the green backend on `port`.
    pub fn on_green(self, name: &str, port: u16) -> Service {
        self.version(name, [SocketAddr::from((GREEN, port))])
    }

    /// Adds versions `blue` and `green`, the two backends on `port` (IPv4).
    pub fn blue_green(self, port: u16) -> Service {
        self.on_blue("blue", port).on_green("green", port)
    }

    /// Adds versions `blue` and `green`, the two backends on `port` (IPv6).
    pub fn blue_green6(self, port: u16) -> Service {
        self.version("blue", [SocketAddr::from((BLUE6, port))]).version("green", [SocketAddr::from((GREEN6, port))])
    }
}

/// `n` l4 services `s0`, `s1`, ... on the VIP's ports 80, 81, ..., each
/// split 80/20 over blue and green on its own port (8080 + i: an endpoint
/// serves at most 4 services), added to `config`.
pub fn numbered_services(config: Config, n: u16) -> Config {
    (0..n).fold(config, |c, i| {
        c.service(
            &format!("s{i}"),
            Service::tcp(vip(80 + i)).blue_green(8080 + i).weights(&[("blue", 80), ("green", 20)]),
        )
    })
}

/// `splitter demo`'s desired state on this topology: an l4 service `shop`
/// (TCP backends on port 8080) and an l7 service `api` (HTTP backends blue and
/// green on 8081, shadow on green's 8082, broken on green's 8083). The demo
/// runs it; splitter-user's CLI tests check it.
pub fn demo_config() -> Config {
    Topology::config()
        .comment(
            "splitter demo: a TCP service split in the kernel (80 % blue / 20 % green,\n\
             10 % of its flows copied whole to a mirror interface, its endpoints\n\
             health-checked) and an HTTP service\n\
             through the agent's proxy (90/10, a header canary, 10 % of requests\n\
             mirrored to a shadow and compared).",
        )
        .service(
            "shop",
            Service::tcp(vip(80))
                .blue_green(8080)
                .weights(&[("blue", 80), ("green", 20)])
                .with(&format!("mirror: {{ interface: {MIRROR}, percent: 10 }}"))
                .with("health: { interval: 1s, timeout: 500ms }"),
        )
        .service(
            "api",
            Service::l7(vip(8080))
                .blue_green(8081)
                .on_green("shadow", 8082)
                .on_green("broken", 8083)
                .weights(&[("blue", 90), ("green", 10)])
                .route(r#"{ headers: { x-canary: "true" } }"#, "green")
                .with("mirror: { version: shadow, percent: 10, compare: true }"),
        )
}
