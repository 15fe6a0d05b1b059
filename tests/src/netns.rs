//! Test-side network namespaces: the product's `splitter_user::netns` guards
//! with names unique per process and per call, so parallel tests and parallel
//! CI runs never collide, and failures that panic with the command's message.

use std::sync::atomic::{AtomicU32, Ordering};

pub use splitter_user::netns::NetNs;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (`<prefix><pid><n>` in hex),
/// short enough for an interface name with a one-letter suffix.
pub fn unique_name(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:x}{:x}", std::process::id() & 0xff_ffff, n & 0xfff);
    assert!(name.len() <= 14, "name {name} too long for an interface; use a shorter prefix");
    name
}

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
        splitter_user::netns::veth(ns_a, &a, ns_b, &b).unwrap_or_else(|e| panic!("creating veth {a}/{b}: {e}"));
        Veth { a, b }
    }
}
