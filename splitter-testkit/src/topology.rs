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

use crate::netns::{veth, NetNs, NetnsError};

/// `splitter demo`'s desired state on this topology: an l4 service `shop`
/// (TCP backends on port 8080) and an l7 service `api` (HTTP backends blue and
/// green on 8081, shadow on green's 8082, broken on green's 8083). The demo
/// runs it; splitter-user's CLI tests check it.
pub const DEMO_CONFIG: &str = r#"# splitter demo: a TCP service split in the kernel (80 % blue / 20 % green,
# 10 % of its flows copied whole to a mirror interface) and an HTTP service
# through the agent's proxy (90/10, a header canary, 10 % of requests
# mirrored to a shadow and compared).
interfaces:
  clients: [lb-client]
  backends: [lb-blue, lb-green]
services:
  shop:
    listen: 203.0.113.10:80
    protocol: tcp
    mode: l4
    versions:
      blue:  [198.51.100.10:8080]
      green: [198.51.100.20:8080]
    weights: { blue: 80, green: 20 }
    mirror: { interface: lb-mirror, percent: 10 }
  api:
    listen: 203.0.113.10:8080
    protocol: tcp
    mode: l7
    versions:
      blue:   [198.51.100.10:8081]
      green:  [198.51.100.20:8081]
      shadow: [198.51.100.20:8082]
      broken: [198.51.100.20:8083]
    weights: { blue: 90, green: 10 }
    routes:
      - match: { headers: { x-canary: "true" } }
        version: green
    mirror: { version: shadow, percent: 10, compare: true }
"#;

/// The four namespaces of the topology (see the module docs), deleted with
/// everything in them when dropped.
pub struct Topology {
    pub client: NetNs,
    pub lb: NetNs,
    pub blue: NetNs,
    pub green: NetNs,
}

impl Topology {
    /// Builds the topology with namespaces `{prefix}-client`, `-lb`, `-blue`, `-green`.
    pub fn build(prefix: &str) -> Result<Topology, NetnsError> {
        let ns = |role: &str| NetNs::new(format!("{prefix}-{role}"));
        let t = Topology { client: ns("client")?, lb: ns("lb")?, blue: ns("blue")?, green: ns("green")? };
        veth(&t.lb, "lb-client", &t.client, "eth0")?;
        veth(&t.lb, "lb-blue", &t.blue, "eth0")?;
        veth(&t.lb, "lb-green", &t.green, "eth0")?;
        let lb = &t.lb;
        lb.addr("lb-client", [192, 0, 2, 1].into(), 24)?;
        lb.addr("lb-client", "2001:db8:c::1".parse().expect("v6"), 64)?;
        lb.addr("lb-blue", [198, 51, 100, 1].into(), 28)?;
        lb.addr("lb-blue", "2001:db8:1::1".parse().expect("v6"), 64)?;
        lb.addr("lb-green", [198, 51, 100, 17].into(), 28)?;
        lb.addr("lb-green", "2001:db8:2::1".parse().expect("v6"), 64)?;
        lb.sysctl("net.ipv4.ip_forward=1")?;
        lb.sysctl("net.ipv6.conf.all.forwarding=1")?;
        for (ns, v4, gw4, v6, gw6, prefix4) in [
            (&t.client, "192.0.2.2", "192.0.2.1", "2001:db8:c::2", "2001:db8:c::1", 24),
            (&t.blue, "198.51.100.10", "198.51.100.1", "2001:db8:1::10", "2001:db8:1::1", 28),
            (&t.green, "198.51.100.20", "198.51.100.17", "2001:db8:2::10", "2001:db8:2::1", 28),
        ] {
            ns.addr("eth0", v4.parse().expect("v4"), prefix4)?;
            ns.addr("eth0", v6.parse().expect("v6"), 64)?;
            ns.ip(&["route", "add", "default", "via", gw4])?;
            ns.ip(&["-6", "route", "add", "default", "via", gw6])?;
            // XDP redirects into a veth land only if its peer runs NAPI (GRO
            // on), and a redirected frame loses the "checksum to be completed"
            // state of locally sent packets: hosts on veth send full checksums.
            ns.enable_gro("eth0")?;
            ns.disable_tx_offload("eth0")?;
        }
        Ok(t)
    }

    /// Adds the mirror link: `lb-mirror` in `lb`, joined to `eth0` in a new
    /// namespace `{prefix}-tap` (returned), where a capture sees the copies.
    pub fn mirror_link(&self, prefix: &str) -> Result<NetNs, NetnsError> {
        let tap = NetNs::new(format!("{prefix}-tap"))?;
        veth(&self.lb, "lb-mirror", &tap, "eth0")?;
        Ok(tap)
    }
}
