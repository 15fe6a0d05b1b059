//! The peers the benchmarks measure splitter against, run in a namespace the
//! bench built: HAProxy (`mode http`, over TLS too, or `mode tcp`), nginx
//! (plain, mirroring or terminating TLS) and nftables weighted DNAT
//! (`numgen random mod ... map`, what kube-proxy's nftables mode does).
//! Each is a guard: dropping it stops the process or deletes the rules.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use splitter_testkit::netns::{run_ok, NetNs};

/// Starts peer `what` (`cmd`, its output on stderr) and gives it half a
/// second to refuse its config: one that exits by then panics, saying `why`.
pub(crate) fn spawn_peer(cmd: &mut Command, what: &str, why: impl FnOnce() -> String) -> Child {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e} (`cargo xtask bench` installs the peers)"));
    // The grace period is the check: a peer that refuses its config exits
    // at once; one that runs is not waited for any longer.
    std::thread::sleep(Duration::from_millis(500));
    if let Ok(Some(status)) = child.try_wait() {
        panic!("{what} exited at start ({status}); {}", why());
    }
    child
}

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

    /// [`Haproxy::http`] terminating TLS on `listen` with `pem` (the
    /// certificate chain and its key in one file, as HAProxy's `crt` reads
    /// them; its defaults otherwise: TLS 1.2 and 1.3, session tickets on).
    pub fn https(
        ns: &NetNs,
        dir: &Path,
        listen: SocketAddr,
        backend: SocketAddr,
        threads: usize,
        pem: &Path,
    ) -> Haproxy {
        Haproxy::start(
            ns,
            dir,
            &format!(
                "global\n  nbthread {threads}\n  maxconn 4096\ndefaults\n  mode http\n  option http-keep-alive\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\nfrontend fe\n  bind {listen} ssl crt {}\n  default_backend be\nbackend be\n  http-reuse always\n  server s1 {backend}\n",
                pem.display()
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
        let why = || format!("run `haproxy -c -f {}` to see why", cfg.display());
        Haproxy(spawn_peer(ns.command("haproxy").args(["-db", "-f"]).arg(&cfg), "haproxy", why))
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

/// What each nginx `location` adds to reach its upstream over keep-alive.
const UPSTREAM: &str = "proxy_http_version 1.1; proxy_set_header Connection \"\";";

/// A running nginx (master and one worker), killed on drop.
pub struct Nginx(pub Child);

impl Nginx {
    /// nginx as a reverse proxy with one worker: on `listen` to `backend`
    /// (keep-alive upstream, its documented tuning, with as many idle
    /// upstream connections kept as the benches open client connections:
    /// with 64, 256 busy clients made it close and reopen upstream
    /// connections all the time; client keep-alive without
    /// nginx's default cap of 1,000 requests per connection, which HAProxy and
    /// splitter do not have), and on `mirror_listen`
    /// the same with `mirror` sending `percent` % of requests (sampled with
    /// `split_clients` on the request id) to `shadow`.
    pub fn start(
        ns: &NetNs,
        dir: &Path,
        listen: SocketAddr,
        backend: SocketAddr,
        mirror_listen: SocketAddr,
        shadow: SocketAddr,
        percent: u32,
    ) -> Nginx {
        let upstream = UPSTREAM;
        Nginx::run(
            ns,
            dir,
            "nginx",
            &format!(
                "  upstream primary {{ server {backend}; keepalive 256; }}\n  upstream shadow {{ server {shadow}; keepalive 16; }}\n  split_clients \"${{request_id}}\" $mirrored {{ {percent}% 1; * 0; }}\n  server {{ listen {listen}; location / {{ proxy_pass http://primary; {upstream} }} }}\n  server {{\n    listen {mirror_listen};\n    location / {{ mirror /mirror; proxy_pass http://primary; {upstream} }}\n    location = /mirror {{ internal; if ($mirrored = 0) {{ return 204; }} proxy_pass http://shadow$request_uri; {upstream} }}\n  }}\n"
            ),
        )
    }

    /// nginx with one worker terminating TLS on `listen` with `cert` (PEM
    /// chain) and `key`, proxying to `backend` as [`Nginx::start`] does.
    /// TLS 1.2 and 1.3 as the other proxies (nginx before 1.23.4, Debian
    /// 12's 1.22, leaves 1.3 out by default); its defaults otherwise
    /// (session tickets on). Its files are `DIR/nginx-tls.*`, so it can
    /// share `dir` with an [`Nginx::start`].
    pub fn https(ns: &NetNs, dir: &Path, listen: SocketAddr, backend: SocketAddr, cert: &Path, key: &Path) -> Nginx {
        let upstream = UPSTREAM;
        Nginx::run(
            ns,
            dir,
            "nginx-tls",
            &format!(
                "  upstream primary {{ server {backend}; keepalive 256; }}\n  server {{\n    listen {listen} ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    location / {{ proxy_pass http://primary; {upstream} }}\n  }}\n",
                cert.display(),
                key.display()
            ),
        )
    }

    /// nginx with one worker as an origin on `listen`: every request
    /// answers 200 with `body` (keep-alive, no logging). Its files are
    /// `DIR/nginx-origin.*`.
    pub fn origin(ns: &NetNs, dir: &Path, listen: SocketAddr, body: &str) -> Nginx {
        Nginx::run(
            ns,
            dir,
            "nginx-origin",
            &format!("  server {{ listen {listen}; location / {{ return 200 \"{body}\"; }} }}\n"),
        )
    }

    /// Runs nginx (one worker, in the foreground) with `servers` (the
    /// upstreams and servers of its `http` block), its files `DIR/NAME.*`.
    fn run(ns: &NetNs, dir: &Path, name: &str, servers: &str) -> Nginx {
        let tmp = dir.join(format!("{name}-tmp"));
        std::fs::create_dir_all(&tmp).expect("nginx dir");
        let (d, t) = (dir.display(), tmp.display());
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 60s;\n  client_body_temp_path {t};\n  proxy_temp_path {t};\n  fastcgi_temp_path {t};\n  uwsgi_temp_path {t};\n  scgi_temp_path {t};\n{servers}}}\n"
        );
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let why = || format!("see {d}/{name}-error.log");
        Nginx(spawn_peer(ns.command("nginx").arg("-c").arg(&path), "nginx", why))
    }

    /// The master's process id and its workers'.
    pub fn pids(&self) -> Vec<u32> {
        let pid = self.0.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        std::iter::once(pid).chain(children.split_whitespace().filter_map(|c| c.parse().ok())).collect()
    }

    /// Resident memory of the master and its workers, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids().into_iter().map(crate::rss_kib).sum()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A worker outlives a killed master (it was seen serving on in a
        // deleted namespace after the bench): its workers go first.
        let workers: Vec<u32> = self.pids().into_iter().skip(1).collect();
        let _ = self.0.kill();
        let _ = self.0.wait();
        for pid in workers {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
        }
    }
}
