//! Test-side network namespaces and topologies: the testkit's guards
//! (`splitter_testkit::netns`, `splitter_testkit::topology`) named uniquely
//! per process and call, so parallel tests and parallel CI runs never
//! collide, and failures that panic with the command's message.

use splitter_testkit::{
    netns::{unique_name, veth, NetNs},
    topology::Topology,
};

/// A fresh namespace named `spt<pid><n>-<tag>`, deleted on drop.
pub fn netns(tag: &str) -> NetNs {
    crate::require_root("creating a network namespace");
    let name = format!("{}-{tag}", unique_name("spt"));
    NetNs::new(&name).unwrap_or_else(|e| panic!("creating namespace {name}: {e}"))
}

/// A veth pair with one end in each namespace, both up.
pub struct Veth {
    /// The end in the first namespace.
    pub a: String,
    /// The end in the second namespace.
    pub b: String,
}

impl Veth {
    pub fn new(ns_a: &NetNs, ns_b: &NetNs) -> Veth {
        let base = unique_name("v");
        let (a, b) = (format!("{base}a"), format!("{base}b"));
        veth(ns_a, &a, ns_b, &b).unwrap_or_else(|e| panic!("creating veth {a}/{b}: {e}"));
        Veth { a, b }
    }
}

/// `ip ARGS` in `ns`, panicking with the command's message.
pub fn ip(ns: &NetNs, args: &[&str]) {
    ns.ip(args).unwrap_or_else(|e| panic!("{}: ip {}: {e}", ns.name(), args.join(" ")));
}

/// `ns` gets a bridge `br0` (with `addr`, if any) that [`bridge_port`]s join.
pub fn bridge(ns: &NetNs, addr: Option<&str>) {
    ip(ns, &["link", "add", "br0", "type", "bridge", "stp_state", "0"]);
    ip(ns, &["link", "set", "br0", "up"]);
    if let Some(a) = addr {
        ip(ns, &["addr", "add", a, "dev", "br0"]);
    }
}

/// A veth from `node` (named `name` there) to a port `port` of `ns`'s
/// bridge ([`bridge`]).
pub fn bridge_port(node: &NetNs, name: &str, ns: &NetNs, port: &str) {
    veth(node, name, ns, port).unwrap_or_else(|e| panic!("veth {name}/{port}: {e}"));
    ip(ns, &["link", "set", port, "master", "br0"]);
    // XDP redirects into this veth land only with NAPI on its peer (GRO).
    ns.enable_gro(port).unwrap();
    ns.disable_tx_offload(port).unwrap();
}

/// The demo topology (`splitter_testkit::topology::Topology`) with unique
/// `spt` names, for a test (it needs root).
pub fn topology() -> Topology {
    crate::require_root("building the client/lb/blue/green topology");
    let prefix = unique_name("spt");
    Topology::build(&prefix).unwrap_or_else(|e| panic!("building topology {prefix}: {e}"))
}
