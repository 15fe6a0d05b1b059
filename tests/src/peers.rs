//! The peers the benchmarks measure splitter against, run in a namespace the
//! bench built: HAProxy (`mode http` or `mode tcp`) and nftables weighted
//! DNAT (`numgen random mod ... map`, what kube-proxy's nftables mode does).
//! Each is a guard: dropping it stops the process or deletes the rules.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use splitter_user::netns::{run_ok, NetNs};

/// A running HAProxy, killed on drop.
pub struct Haproxy(pub Child);

impl Haproxy {
    /// `mode http` on `listen` in front of `backend`, `threads` threads,
    /// keep-alive to the backend (its documented tuning for a reverse proxy).
    pub fn http(ns: &NetNs, dir: &Path, listen: SocketAddr, backend: SocketAddr, threads: usize) -> Haproxy {
        Haproxy::start(
            ns,
            dir,
            &format!(
                "global\n  nbthread {threads}\n  maxconn 4096\ndefaults\n  mode http\n  option http-keep-alive\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\nfrontend fe\n  bind {listen}\n  default_backend be\nbackend be\n  http-reuse always\n  server s1 {backend}\n"
            ),
        )
    }

    /// `mode tcp` on each `(listen, backends)`: the backends weighted as
    /// given, `threads` threads.
    pub fn tcp(ns: &NetNs, dir: &Path, frontends: &[(SocketAddr, Vec<(SocketAddr, u32)>)], threads: usize) -> Haproxy {
        let mut cfg = format!(
            "global\n  nbthread {threads}\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n"
        );
        for (i, (listen, backends)) in frontends.iter().enumerate() {
            cfg += &format!(
                "frontend fe{i}\n  bind {listen}\n  default_backend be{i}\nbackend be{i}\n  balance roundrobin\n"
            );
            for (j, (addr, weight)) in backends.iter().enumerate() {
                cfg += &format!("  server s{j} {addr} weight {weight}\n");
            }
        }
        Haproxy::start(ns, dir, &cfg)
    }

    fn start(ns: &NetNs, dir: &Path, config: &str) -> Haproxy {
        let cfg = dir.join("haproxy.cfg");
        std::fs::create_dir_all(dir).expect("bench dir");
        std::fs::write(&cfg, config).expect("haproxy.cfg");
        let child = ns
            .command("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy (cargo xtask bench installs it)");
        std::thread::sleep(Duration::from_millis(500));
        let mut h = Haproxy(child);
        if let Ok(Some(status)) = h.0.try_wait() {
            panic!("haproxy exited at start ({status}); run `haproxy -c -f {}` to see why", cfg.display());
        }
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nftables rules in a namespace, deleted on drop.
pub struct Nftables<'a> {
    ns: &'a NetNs,
    table: String,
}

impl<'a> Nftables<'a> {
    /// Weighted DNAT of `vip` (TCP `ports`) to `backends` by `numgen random
    /// mod 100`: each backend owns a range of the 100 slots its weight long.
    pub fn weighted_dnat(
        ns: &'a NetNs,
        vip: std::net::Ipv4Addr,
        ports: &[u16],
        backends: &[(std::net::Ipv4Addr, u32)],
    ) -> Nftables<'a> {
        let total: u32 = backends.iter().map(|(_, w)| w).sum();
        let mut start = 0;
        let ranges: Vec<String> = backends
            .iter()
            .enumerate()
            .map(|(i, (addr, w))| {
                let end = if i + 1 == backends.len() { 99 } else { start + w * 100 / total - 1 };
                let r = format!("{start}-{end} : {addr}");
                start = end + 1;
                r
            })
            .collect();
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let table = "splitter_bench".to_owned();
        let rules = format!(
            "table ip {table} {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {vip} tcp dport {{ {} }} dnat to numgen random mod 100 map {{ {} }}\n  }}\n}}\n",
            ports.join(", "),
            ranges.join(", ")
        );
        let path = std::env::temp_dir().join(format!("splitter-bench-{}.nft", ns.name()));
        std::fs::write(&path, rules).expect("nft rules");
        run_ok(ns.command("nft").arg("-f").arg(&path)).expect("nft -f (cargo xtask bench installs nftables)");
        Nftables { ns, table }
    }
}

impl Drop for Nftables<'_> {
    fn drop(&mut self) {
        let _ = run_ok(self.ns.command("nft").args(["delete", "table", "ip", &self.table]));
    }
}
