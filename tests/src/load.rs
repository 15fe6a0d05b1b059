//! Load for the benchmarks, from a client namespace: new TCP connections as
//! fast as they complete (each asks a `serve_tcp` backend once), and bulk
//! transfers to TCP sinks.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use splitter_testkit::{netns::NetNs, serve::ask_version};

/// A sink on `[::]:port`: reads each connection to its end, then answers
/// with the byte count (8 bytes, big endian).
pub fn serve_sink(ns: &NetNs, port: u16) {
    let listener = ns.run(|| TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port))).expect("sink");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 1 << 16];
                let mut n = 0u64;
                while let Ok(k) = conn.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                }
                let _ = conn.write_all(&n.to_be_bytes());
            });
        }
    });
}

/// Sends `bytes` to a sink at `target` over `from` (a bound, unconnected
/// socket) or a fresh one; checks the sink got every byte.
pub fn send_bulk(target: SocketAddr, bytes: usize, from: Option<socket2::Socket>) {
    let sock =
        from.unwrap_or_else(|| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap());
    sock.connect_timeout(&target.into(), Duration::from_secs(3)).unwrap_or_else(|e| panic!("connect to {target}: {e}"));
    let mut conn: TcpStream = sock.into();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let chunk = vec![0x5au8; 1 << 16];
    for _ in 0..bytes / chunk.len() {
        conn.write_all(&chunk).unwrap_or_else(|e| panic!("send to {target}: {e}"));
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut n = [0u8; 8];
    conn.read_exact(&mut n).unwrap_or_else(|e| panic!("count from {target}: {e}"));
    assert_eq!(u64::from_be_bytes(n), (bytes / chunk.len() * chunk.len()) as u64, "the sink got every byte");
}

/// `streams` parallel bulk transfers of `bytes` each; Gbit/s.
pub fn bulk(client: &NetNs, target: SocketAddr, streams: usize, bytes: usize) -> f64 {
    let start = Instant::now();
    client.run(|| {
        std::thread::scope(|s| {
            for _ in 0..streams {
                s.spawn(|| send_bulk(target, bytes, None));
            }
        })
    });
    (streams * bytes * 8) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// What [`connection_rate`] measured.
pub struct Rate {
    pub per_sec: f64,
    /// Connect plus one answer, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub failed: usize,
}

/// `threads` clients opening a connection, asking once and closing, for
/// `secs` seconds.
pub fn connection_rate(client: &NetNs, target: SocketAddr, threads: usize, secs: u64) -> Rate {
    let (mut lat, failed) = client.run(|| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(move || {
                        let end = Instant::now() + Duration::from_secs(secs);
                        let (mut lat, mut failed) = (Vec::new(), 0usize);
                        while Instant::now() < end {
                            let t = Instant::now();
                            let ok = TcpStream::connect_timeout(&target, Duration::from_secs(2)).and_then(|c| {
                                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                                ask_version(&c)
                            });
                            match ok {
                                Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1e6),
                                Err(_) => failed += 1,
                            }
                        }
                        (lat, failed)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("client thread")).fold((Vec::new(), 0), |mut acc, (l, f)| {
                acc.0.extend(l);
                (acc.0, acc.1 + f)
            })
        })
    });
    lat.sort_by(f64::total_cmp);
    let q =
        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0.0);
    Rate { per_sec: lat.len() as f64 / secs as f64, p50_us: q(0.5), p99_us: q(0.99), failed }
}

/// The `p` quantile (0..=1) of `v`, nearest rank.
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Median, min and max of `v`.
pub fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// CPU time the whole machine spent busy (user, system, interrupts, softirq;
/// not idle, not iowait, not stolen by the host) since boot, from `/proc/stat`.
/// Taken around a run and compared with the same run on a baseline path, it
/// gives the path's own CPU cost wherever it runs (softirq on any core).
pub fn busy_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = stat.lines().find(|l| l.starts_with("cpu ")).expect("/proc/stat has a cpu line");
    // user nice system idle iowait irq softirq steal ...
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let busy = f[0] + f[1] + f[2] + f[5] + f[6];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(busy as f64 / hz as f64)
}

/// TCP segments sent and retransmitted so far in `ns` (`Tcp: OutSegs` and
/// `RetransSegs` of its `/proc/net/snmp`).
pub fn tcp_segments(ns: &NetNs) -> (u64, u64) {
    ns.run(|| {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read the namespace's snmp");
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next().expect("Tcp: names"), tcp.next().expect("Tcp: values"));
        let field = |name: &str| {
            let i = names.split_whitespace().position(|n| n == name).expect("Tcp field");
            values.split_whitespace().nth(i).and_then(|v| v.parse().ok()).expect("Tcp value")
        };
        (field("OutSegs"), field("RetransSegs"))
    })
}

/// Busy time of each CPU since boot (user, nice, system, irq, softirq), from
/// the `cpuN` lines of `/proc/stat`, in CPU order. Taken around a run it
/// shows which core was saturated: the one pinned to the proxy under test
/// or the one carrying the load generator and the backend.
pub fn busy_per_cpu() -> Vec<Duration> {
    per_cpu(|f| f[0] + f[1] + f[2] + f[5] + f[6])
}

/// Per CPU, the time the hypervisor ran something else while this VM's
/// CPU wanted to run (steal): a run that lost much of it measured a
/// slower machine.
pub fn stolen_per_cpu() -> Vec<Duration> {
    per_cpu(|f| f.get(7).copied().unwrap_or(0))
}

/// Per CPU, `pick` of its `/proc/stat` fields (user, nice, system, idle,
/// iowait, irq, softirq, steal...) in clock ticks, as time.
fn per_cpu(pick: impl Fn(&[u64]) -> u64) -> Vec<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|line| {
            let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
            Duration::from_secs_f64(pick(&f) as f64 / hz as f64)
        })
        .collect()
}

fn cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data, all zeroes is the empty set; CPU_SET
    // writes one bit of it (cpu is below CPU_SETSIZE on any machine here).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Pins the calling thread to `cpu`; the threads and processes it starts
/// afterwards inherit that.
pub fn pin_current_thread(cpu: usize) {
    let set = cpu_set(cpu);
    // SAFETY: `set` is a valid cpu_set_t of the size passed; tid 0 is the caller.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "pin this thread to CPU {cpu}: {}", std::io::Error::last_os_error());
}

/// The thread ids of process `pid`.
fn threads(pid: u32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("threads of process {pid}: {e}"))
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Pins every thread of process `pid` to `cpu` (the threads it starts later
/// inherit it from theirs), like `taskset -a -p -c CPU PID`.
pub fn pin_process(pid: u32, cpu: usize) {
    let set = cpu_set(cpu);
    for tid in threads(pid) {
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        assert_eq!(rc, 0, "pin thread {tid} of {pid} to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
}

/// Panics unless every thread of process `pid` may run on `cpu` only
/// (`Cpus_allowed_list` of each thread): the pinning held for the run.
pub fn assert_pinned(pid: u32, cpu: usize) {
    for tid in threads(pid) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
        let allowed = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(str::trim);
        // A thread that ended meanwhile has no status left: nothing to check.
        if let Some(allowed) = allowed {
            assert_eq!(allowed, cpu.to_string(), "thread {tid} of process {pid} may run on CPUs {allowed}");
        }
    }
}
