//! What the L7 benches (`l7`, plain HTTP, and `l7_tls`) share, issue #23's
//! method: each proxy alone on [`PROXY_CPU`] (all its threads pinned,
//! checked after the runs), the load generator (wrk, or the open-loop client
//! here) and the origin on [`LOAD_CPU`]; per run the proxy's CPU time from
//! `/proc` of its own processes, the load side's, and each core's busy time;
//! the generator's headroom (its direct rate against the best proxy's); and
//! the tables both benches render from that.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    os::fd::AsFd,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Buf, BytesMut};
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use rustls::{pki_types::ServerName, ClientConfig};
use splitter_testkit::netns::NetNs;
use tokio::io::{unix::AsyncFd, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    load::{assert_pinned, busy_per_cpu, median, pin_process, stolen_per_cpu},
    process_cpu, Rss,
};

/// The proxy under test runs here, alone.
pub const PROXY_CPU: usize = 1;
/// The load generators, the origins and the bench process run here.
pub const LOAD_CPU: usize = 0;
/// The name the clients ask for: the `Host` header and, over TLS, the SNI
/// (the TLS bench's certificate is made for it).
pub const HOST: &str = "bench.example";
/// The generator's direct rate should be at least this many times the best
/// proxy's for the rows to measure the proxies (issue #23).
pub const HEADROOM_BAR: f64 = 1.5;

/// Rounds per bench: `SPLITTER_BENCH_ROUNDS`, 3 by default.
pub fn rounds() -> usize {
    std::env::var("SPLITTER_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(3)
}

/// A proxy under test: its name, where it listens, whether over TLS, and
/// its processes (all of their CPU time and memory count).
pub struct Proxy {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: bool,
    pub pids: Vec<u32>,
}

impl Proxy {
    pub fn new(name: &str, addr: SocketAddr, tls: bool, pids: Vec<u32>) -> Proxy {
        Proxy { name: name.to_owned(), addr, tls, pids }
    }

    /// The URL wrk loads.
    pub fn url(&self) -> String {
        format!("{}://{}/", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Pins every thread of the proxy's processes to [`PROXY_CPU`].
    pub fn pin(&self) {
        for pid in &self.pids {
            pin_process(*pid, PROXY_CPU);
        }
    }

    /// Panics unless every thread of the proxy may still run on
    /// [`PROXY_CPU`] only.
    pub fn assert_pinned(&self) {
        for pid in &self.pids {
            assert_pinned(*pid, PROXY_CPU);
        }
    }

    /// Resident memory of the proxy's processes, KiB.
    pub fn rss(&self) -> Rss {
        self.pids.iter().map(|p| Rss::of(*p)).fold(Rss::default(), |a, b| a + b)
    }
}

/// Steal on [`LOAD_CPU`] and [`PROXY_CPU`] together.
fn stolen() -> Duration {
    let s = stolen_per_cpu();
    s[LOAD_CPU] + s[PROXY_CPU]
}

/// CPU time used during a run: by the proxy's processes, by the load side
/// (this process: the Rust clients and any backend it serves; the
/// generators it ran and waited for; the origins) and by anything on each
/// core, other work on the machine included.
pub struct Usage {
    pub proxy: Duration,
    pub load: Duration,
    pub load_core: Duration,
    pub proxy_core: Duration,
    /// Steal on the load's and the proxy's cores together.
    pub stolen: Duration,
    pub wall: Duration,
}

impl Usage {
    /// `d` as a percentage of the run's wall time (of one core).
    pub fn share(&self, d: Duration) -> f64 {
        100.0 * d.as_secs_f64() / self.wall.as_secs_f64()
    }
}

/// User and system CPU time of this process (`RUSAGE_SELF`) or of its
/// children that ended and were waited for (`RUSAGE_CHILDREN`).
fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a valid pointer.
    assert_eq!(unsafe { libc::getrusage(who, &mut ru) }, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs `f` and returns what it returned with the CPU time it took:
/// `pids`' (the proxy's), `load_pids`' plus this process's and its reaped
/// children's (the load side), and each core's.
pub fn measured<T>(pids: &[u32], load_pids: &[u32], f: impl FnOnce() -> T) -> (T, Usage) {
    let cpu = |pids: &[u32]| pids.iter().map(|p| process_cpu(*p)).sum::<Duration>();
    let load = || cpu(load_pids) + rusage(libc::RUSAGE_SELF) + rusage(libc::RUSAGE_CHILDREN);
    let (p0, l0, c0, s0, t0) = (cpu(pids), load(), busy_per_cpu(), stolen(), Instant::now());
    let out = f();
    let (p1, l1, c1, s1, wall) = (cpu(pids), load(), busy_per_cpu(), stolen(), t0.elapsed());
    let core = |cpu: usize| c1[cpu].saturating_sub(c0[cpu]);
    let usage = Usage {
        proxy: p1 - p0,
        load: l1 - l0,
        load_core: core(LOAD_CPU),
        proxy_core: core(PROXY_CPU),
        stolen: s1.saturating_sub(s0),
        wall,
    };
    (out, usage)
}

/// One rate run: operations per second, failures, and the CPU it took.
pub struct Run {
    pub per_sec: f64,
    pub failed: u64,
    pub secs: u64,
    pub usage: Usage,
}

impl Run {
    /// Runs `f`, a rate run of `secs` seconds that returns operations/s and
    /// failures, measuring the CPU of `pids` (the proxy) and `load_pids`.
    pub fn measure(pids: &[u32], load_pids: &[u32], secs: u64, f: impl FnOnce() -> (f64, u64)) -> Run {
        let ((per_sec, failed), usage) = measured(pids, load_pids, f);
        Run { per_sec, failed, secs, usage }
    }

    /// CPU µs of the proxy's processes per operation.
    pub fn cpu_us(&self) -> f64 {
        self.usage.proxy.as_secs_f64() * 1e6 / (self.per_sec * self.secs as f64).max(1.0)
    }
}

/// Median, min and max of `f` over `runs`.
pub fn med<R>(runs: &[R], f: &dyn Fn(&R) -> f64) -> (f64, f64, f64) {
    median(runs.iter().map(f).collect())
}

/// Median, min and max operations/s of `runs`.
pub fn rps(runs: &[Run]) -> (f64, f64, f64) {
    med(runs, &|r| r.per_sec)
}

/// Failures over all `runs`.
pub fn failed(runs: &[Run]) -> u64 {
    runs.iter().map(|r| r.failed).sum()
}

/// `median [min–max]`, no decimals.
pub fn range((m, lo, hi): (f64, f64, f64)) -> String {
    format!("{m:.0} [{lo:.0}–{hi:.0}]")
}

/// The table columns [`usage_cells`] fills.
pub const USAGE_COLUMNS: &str = "proxy's CPU use | CPU 1 busy | load side's CPU use | CPU 0 busy | stolen";

/// The median shares of the runs' [`Usage`]: the proxy's use of its core
/// (`—` for a path without a proxy), CPU 1 busy, the load side's use of
/// CPU 0, CPU 0 busy and the steal on both.
pub fn usage_cells(runs: &[Run], proxy: bool) -> String {
    let share = |f: &dyn Fn(&Usage) -> Duration| med(runs, &|r| r.usage.share(f(&r.usage))).0;
    let (p, l, c0, c1) = (share(&|u| u.proxy), share(&|u| u.load), share(&|u| u.load_core), share(&|u| u.proxy_core));
    // Of the two cores together.
    let stolen = share(&|u| u.stolen) / 2.0;
    let p = if proxy { format!("{p:.0} %") } else { "—".into() };
    format!("{p} | {c1:.0} % | {l:.0} % | {c0:.0} % | {stolen:.0} %")
}

/// The head of a table of rate runs: `columns`, then [`USAGE_COLUMNS`]
/// (two lines, no newline at the end).
pub fn rate_head(columns: &[&str]) -> String {
    let n = columns.len() + USAGE_COLUMNS.split('|').count();
    format!("| {} | {USAGE_COLUMNS} |\n|{}", columns.join(" | "), "---|".repeat(n))
}

/// A row under [`rate_head`] (no newline at the end): `first` (the leading cells), the runs'
/// median [min–max] rate, the median against `base`, the proxy's CPU µs
/// per operation with `cpu` decimals (`—` for a path without a proxy),
/// failures and [`usage_cells`].
pub fn rate_row(first: &str, runs: &[Run], base: f64, cpu: Option<usize>) -> String {
    let cpu_us = cpu.map_or("—".to_owned(), |d| format!("{:.d$}", med(runs, &|r| r.cpu_us()).0));
    format!(
        "| {first} | {} | {:.2}× | {cpu_us} | {} | {} |",
        range(rps(runs)),
        rps(runs).0 / base,
        failed(runs),
        usage_cells(runs, cpu.is_some())
    )
}

/// What the usage columns mean and how to read CPU µs per request, for the
/// report under a table of rate runs.
pub const USAGE_NOTE: &str = "The proxy's CPU use is its processes' share of its core (from /proc); CPU 1 busy counts whatever ran there, since other work on this shared machine is not kept off the proxy's core: a proxy below 100 % on a CPU 1 near 100 % lost the rest to its neighbours, and its requests/s is lower than alone. The load side's CPU use (this bench's process, the generator, the origin) is what the generator and the backend needed of CPU 0, CPU 0 busy adds the rest. Stolen is the time the hypervisor gave both cores' turns to other machines (steal, of both cores' wall time): a run that lost much of it measured a slower machine. CPU µs per request is the comparison that survives this; it also drops as a proxy gets busier (more requests per wake-up), so compare it between rows of one connection count.";

/// `wrk -t1 -cCONNS` against `url` for `secs`: requests/s and errors
/// (socket errors and non-2xx/3xx answers).
pub fn wrk(ns: &NetNs, url: &str, conns: usize, secs: u64) -> (f64, u64) {
    let out = ns
        .command("wrk")
        .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s"), "--timeout", "5s", url])
        .output()
        .unwrap_or_else(|e| panic!("wrk (cargo xtask bench installs it, Debian package wrk): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk {url} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    parse_wrk(&text).unwrap_or_else(|| panic!("no Requests/sec in wrk's output: {text}"))
}

/// Requests/s and errors from wrk's report.
fn parse_wrk(text: &str) -> Option<(f64, u64)> {
    let rps = text.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok())?;
    let mut errors = 0u64;
    for line in text.lines().map(str::trim) {
        if let Some(socket) = line.strip_prefix("Socket errors:") {
            errors += socket.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        }
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Some((rps, errors))
}

/// Keep-alive rate runs with wrk: at each connection count, the origin
/// directly (the generator's ceiling) and every proxy, rounds interleaved.
pub struct KeepAlive {
    pub conns: Vec<usize>,
    pub secs: u64,
    /// `[conns]` → runs straight to the origin.
    pub direct: Vec<Vec<Run>>,
    /// `[proxy][conns]` → runs.
    pub proxied: Vec<Vec<Vec<Run>>>,
}

impl KeepAlive {
    pub fn new(conns: &[usize], secs: u64, proxies: usize) -> KeepAlive {
        let per_conns = || conns.iter().map(|_| Vec::new()).collect::<Vec<_>>();
        KeepAlive {
            conns: conns.to_vec(),
            secs,
            direct: per_conns(),
            proxied: (0..proxies).map(|_| per_conns()).collect(),
        }
    }

    /// One round: at each connection count, wrk to `direct_url`, then to
    /// each of `proxies`; `load_pids` are the load side's processes.
    pub fn round(&mut self, ns: &NetNs, direct_url: &str, proxies: &[Proxy], load_pids: &[u32]) {
        let secs = self.secs;
        for (c, conns) in self.conns.iter().enumerate() {
            self.direct[c].push(Run::measure(&[], load_pids, secs, || wrk(ns, direct_url, *conns, secs)));
            for (i, p) in proxies.iter().enumerate() {
                self.proxied[i][c].push(Run::measure(&p.pids, load_pids, secs, || wrk(ns, &p.url(), *conns, secs)));
            }
        }
    }

    /// Median requests/s of proxy `i` at connection count index `c`.
    pub fn rps(&self, i: usize, c: usize) -> f64 {
        rps(&self.proxied[i][c]).0
    }

    /// Median CPU µs per request of proxy `i` at connection count index `c`.
    pub fn cpu_us(&self, i: usize, c: usize) -> f64 {
        med(&self.proxied[i][c], &|r| r.cpu_us()).0
    }

    /// The generator's headroom at connection count index `c`: its direct
    /// rate over the best proxy's.
    pub fn headroom(&self, c: usize) -> f64 {
        let best = (0..self.proxied.len()).map(|i| self.rps(i, c)).fold(0.0, f64::max);
        rps(&self.direct[c]).0 / best
    }

    /// The table: per connection count the direct row (`direct`) and one
    /// row per proxy (`label` names it), requests/s against the first
    /// proxy's, CPU µs per request, errors and the usage columns.
    pub fn table(&self, direct: &str, proxies: &[Proxy], label: &dyn Fn(&Proxy) -> String) -> String {
        let vs = format!("vs {}", proxies[0].name);
        let mut lines = vec![rate_head(&["path", "connections", "requests/s", &vs, "CPU µs per request", "errors"])];
        for (c, conns) in self.conns.iter().enumerate() {
            let first = self.rps(0, c);
            lines.push(rate_row(&format!("{direct} | {conns}"), &self.direct[c], first, None));
            for (i, p) in proxies.iter().enumerate() {
                lines.push(rate_row(&format!("{} | {conns}", label(p)), &self.proxied[i][c], first, Some(1)));
            }
        }
        lines.join("\n") + "\n"
    }

    /// The paragraph under the table: the generator's headroom at each
    /// connection count (`aside` qualifies it), said plainly where it is
    /// under [`HEADROOM_BAR`], then [`USAGE_NOTE`].
    pub fn headroom_note(&self, aside: &str) -> String {
        let each: Vec<String> = self
            .conns
            .iter()
            .enumerate()
            .map(|(c, conns)| format!("{:.2}× at {conns} connections", self.headroom(c)))
            .collect();
        let mut md = format!(
            "The generator's headroom: wrk's rate straight to the origin is {} the best proxy's{aside}.",
            each.join(", ")
        );
        let short: Vec<String> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(c, _)| self.headroom(*c) < HEADROOM_BAR)
            .map(|(_, conns)| conns.to_string())
            .collect();
        if !short.is_empty() {
            write!(
                md,
                " **That is under {HEADROOM_BAR}× at {} connections**: there wrk and the origin (sharing CPU {LOAD_CPU}) come close to what the proxies serve, so a fast proxy may be held back by the load side rather than its own core. Those rows' requests/s are lower bounds of what each proxy serves on its core, and their ratios understate the gaps; CPU µs per request, from each proxy's own processes, still compares.",
                short.join(" and ")
            )
            .unwrap();
        }
        format!("{md} {USAGE_NOTE}\n")
    }
}

pub type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TCP connection to `target` with a TLS handshake for [`HOST`].
pub async fn tls_connect(target: SocketAddr, config: Arc<ClientConfig>) -> Result<TlsStream, String> {
    let tcp = tokio::net::TcpStream::connect(target).await.map_err(|e| format!("connect {target}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(HOST).expect("a DNS name");
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))
}

/// A byte stream the bench client speaks HTTP/1.1 over: TCP, or TLS on TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// The one request the bench clients send: `GET /` for [`HOST`].
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: bench.example\r\n\r\n";
// It names HOST: the same length at least.
const _: () = assert!(REQUEST.len() == "GET / HTTP/1.1\r\nhost: \r\n\r\n".len() + HOST.len());

/// A bare HTTP/1.1 keep-alive client, as wrk is: [`REQUEST`] written whole,
/// the answer's head parsed (httparse) and its `Content-Length` body read.
/// The open-loop generator uses it so that the load side spends little CPU
/// per request (a hyper client on one core spent as much as the proxies it
/// measured, and its own queueing showed in every path's p99).
pub struct BenchConn {
    io: Box<dyn Stream>,
    buf: BytesMut,
}

impl BenchConn {
    /// A keep-alive connection to `target`, over TLS when `tls`.
    pub async fn connect(target: SocketAddr, tls: Option<Arc<ClientConfig>>) -> Result<BenchConn, String> {
        let io: Box<dyn Stream> = match tls {
            Some(config) => Box::new(tls_connect(target, config).await?),
            None => {
                let tcp = tokio::net::TcpStream::connect(target).await.map_err(|e| format!("connect {target}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                Box::new(tcp)
            }
        };
        Ok(BenchConn { io, buf: BytesMut::with_capacity(4096) })
    }

    /// `GET /` and its answer read to the end; an error unless it is a 2xx
    /// with a `Content-Length` (the bench's origins answer so) on a
    /// connection that stays open.
    pub async fn get(&mut self) -> Result<(), String> {
        self.io.write_all(REQUEST).await.map_err(|e| format!("write: {e}"))?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf).map_err(|e| format!("answer's head: {e}"))? {
                httparse::Status::Complete(head) => {
                    let status = resp.code.unwrap_or(0);
                    let length = resp
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                        .ok_or_else(|| format!("status {status} without a Content-Length"))?;
                    let closes = resp
                        .headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close"));
                    while self.buf.len() < head + length {
                        self.fill().await?;
                    }
                    self.buf.advance(head + length);
                    return match status {
                        200..=299 if !closes => Ok(()),
                        200..=299 => Err("the connection was closed".into()),
                        _ => Err(format!("status {status}")),
                    };
                }
                httparse::Status::Partial => self.fill().await?,
            }
        }
    }

    async fn fill(&mut self) -> Result<(), String> {
        self.buf.reserve(4096);
        match self.io.read_buf(&mut self.buf).await {
            Ok(0) => Err("the connection was closed".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

/// What an open-loop run saw: latency from the request's due time (or its
/// send, when the timer woke late and the connection was free) to the
/// answer's end.
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub achieved: f64,
    pub errors: u64,
    /// How busy [`LOAD_CPU`] (generator, origin) and [`PROXY_CPU`] were
    /// over the run, 0–1: the load side must stay well below saturation
    /// for the latency to be the proxy's.
    pub load_busy: f64,
    pub proxy_busy: f64,
    /// Steal on both cores, of both cores' time, 0–1.
    pub stolen: f64,
}

/// `rate` requests/s over `conns` keep-alive connections (over TLS when
/// `tls`) for `secs`, open loop: requests fall due on a fixed schedule,
/// evenly spaced, are released every [`PACE_TICK`] and go to the
/// connections in turn, whatever the answers do. A request released while
/// its connection still waits for the previous answer goes right after it,
/// and its latency counts from its release: the queueing shows.
pub fn open_loop(
    ns: &NetNs,
    target: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
    rate: f64,
    conns: usize,
    secs: u64,
) -> Latency {
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
        rt.block_on(async move {
            let mut senders = Vec::new();
            for _ in 0..conns {
                senders.push(BenchConn::connect(target, tls.clone()).await.unwrap_or_else(|e| panic!("{target}: {e}")));
            }
            let (busy0, stolen0, t0) = (busy_per_cpu(), stolen(), Instant::now());
            let (dues, tasks): (Vec<_>, Vec<_>) = senders
                .into_iter()
                .map(|mut send| {
                    let (due, mut dues) = tokio::sync::mpsc::unbounded_channel::<Instant>();
                    let task = tokio::spawn(async move {
                        let (mut lat, mut errors) = (Vec::new(), 0u64);
                        while let Some(at) = dues.recv().await {
                            match send.get().await {
                                Ok(()) => lat.push(at.elapsed().as_secs_f64() * 1e6),
                                Err(_) => errors += 1,
                            }
                        }
                        (lat, errors)
                    });
                    (due, task)
                })
                .unzip();
            pace(&dues, rate, secs).await;
            drop(dues);
            let (mut all, mut errors) = (Vec::new(), 0);
            for t in tasks {
                let (l, e) = t.await.expect("latency task");
                all.extend(l);
                errors += e;
            }
            all.sort_by(f64::total_cmp);
            let q = |p: f64| all.get(((all.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(f64::NAN);
            let (busy1, took) = (busy_per_cpu(), t0.elapsed().as_secs_f64());
            let busy = |cpu: usize| (busy1[cpu] - busy0[cpu]).as_secs_f64() / took;
            Latency {
                p50_us: q(0.5),
                p99_us: q(0.99),
                achieved: all.len() as f64 / secs as f64,
                errors,
                load_busy: busy(LOAD_CPU),
                proxy_busy: busy(PROXY_CPU),
                stolen: stolen().saturating_sub(stolen0).as_secs_f64() / took / 2.0,
            }
        })
    })
}

/// A timerfd tokio can wait on.
struct Ticks(TimerFd);

impl std::os::fd::AsRawFd for Ticks {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0.as_fd())
    }
}

/// How often the open-loop pacer releases what fell due: fine enough that
/// a release is a handful of requests (tokio's 1 ms timer sends some 20 at
/// once at these rates, and that burst's queueing showed in every path's
/// p50), coarse enough that the load side's wake-ups stay cheap (a
/// release per request woke the generator and the origin so often that
/// they filled their core). Not a divisor of the kernel's tick: the CPU
/// time in /proc/stat is sampled at ticks, and a load in step with them
/// (at 250 µs) was charged as if the cores idled (a direct run at 27,700
/// requests/s read as 3 % busy).
pub const PACE_TICK: Duration = Duration::from_micros(237);

/// The open-loop schedule: `rate × secs` requests due evenly spaced from
/// 100 ms on, handed to `dues` in turn. A periodic timerfd ticks every
/// [`PACE_TICK`]; each tick releases what fell due since the last, stamped
/// with the tick's time, and a late wake-up releases all the ticks it
/// missed with their own times. Returns when all are handed out.
async fn pace(dues: &[tokio::sync::mpsc::UnboundedSender<Instant>], rate: f64, secs: u64) {
    let gap = Duration::from_secs_f64(1.0 / rate);
    let timer =
        TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC).expect("a timerfd");
    let first = Duration::from_millis(100);
    let start = Instant::now() + first;
    timer
        .set(Expiration::IntervalDelayed(first.into(), PACE_TICK.into()), TimerSetTimeFlags::empty())
        .expect("timerfd_settime");
    // SAFETY: Ticks owns the TimerFd, so its descriptor stays open and the
    // same for as long as the AsyncFd holds it.
    let timer = unsafe { AsyncFd::register(Ticks(timer)) }.unwrap_or_else(|e| panic!("the timerfd on tokio: {e}"));
    let total = (rate * secs as f64) as u32;
    let (mut n, mut tick) = (0u32, 0u32);
    while n < total {
        let mut ready = timer.readable().await.expect("the timerfd");
        let mut count = [0u8; 8];
        match nix::unistd::read(ready.get_inner().0.as_fd(), &mut count) {
            Ok(8) => {
                for _ in 0..u64::from_ne_bytes(count) {
                    let at = start + PACE_TICK * tick;
                    tick += 1;
                    while n < total && start + gap * n <= at {
                        let _ = dues[n as usize % dues.len()].send(at);
                        n += 1;
                    }
                }
            }
            Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
            other => panic!("reading the timerfd: {other:?}"),
        }
    }
}

/// The open-loop table: per path (`names[i]`) the achieved rate, p50 and
/// p99 (median [min–max] over the rounds of `latency[i]`) and errors.
pub fn latency_table(names: &[String], latency: &[Vec<Latency>]) -> String {
    let mut md = format!(
        "| path | achieved requests/s | p50 µs | p99 µs | errors | CPU {LOAD_CPU} busy (load side) | CPU {PROXY_CPU} busy (proxy) | stolen |\n|---|---|---|---|---|---|---|---|\n"
    );
    for (name, runs) in names.iter().zip(latency) {
        writeln!(
            md,
            "| {name} | {:.0} | {} | {} | {} | {:.0} % | {:.0} % | {:.0} % |",
            med(runs, &|l| l.achieved).0,
            range(med(runs, &|l| l.p50_us)),
            range(med(runs, &|l| l.p99_us)),
            runs.iter().map(|l| l.errors).sum::<u64>(),
            med(runs, &|l| l.load_busy).0 * 100.0,
            med(runs, &|l| l.proxy_busy).0 * 100.0,
            med(runs, &|l| l.stolen).0 * 100.0,
        )
        .unwrap();
    }
    md
}

/// Opens `n` keep-alive connections to `target` (over TLS when `tls`), one
/// request each, and keeps them open while `measure` runs.
pub fn with_open_connections<T: Send>(
    ns: &NetNs,
    target: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
    n: usize,
    measure: impl FnOnce() -> T + Send,
) -> T {
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
        let held = rt.block_on(async move {
            let mut held = Vec::new();
            for i in 0..n {
                let mut send = BenchConn::connect(target, tls.clone())
                    .await
                    .unwrap_or_else(|e| panic!("connection {i} of {n} to {target}: {e}"));
                send.get().await.unwrap_or_else(|e| panic!("request on connection {i} to {target}: {e}"));
                held.push(send);
            }
            held
        });
        let out = measure();
        drop(held);
        drop(rt);
        out
    })
}

/// Each proxy's RSS with each count of `at` connections open (over TLS
/// where the proxy is): `[proxy][count]`.
pub fn rss_with_connections(
    ns: &NetNs,
    proxies: &[Proxy],
    tls: Option<Arc<ClientConfig>>,
    at: &[usize],
) -> Vec<Vec<Rss>> {
    proxies
        .iter()
        .map(|p| {
            let tls = tls.clone().filter(|_| p.tls);
            at.iter().map(|n| with_open_connections(ns, p.addr, tls.clone(), *n, || p.rss())).collect()
        })
        .collect()
}

/// The RSS table in MiB: per proxy its idle RSS (when read) and its RSS
/// with each count of `at` connections open (`rss[proxy][count]`), each
/// as total and, in brackets, its anonymous part.
pub fn rss_table(proxies: &[Proxy], idle: &[Option<Rss>], at: &[usize], rss: &[Vec<Rss>]) -> String {
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    let cell = |r: &Rss| format!("{} ({})", mib(r.total), mib(r.anon));
    let mut md =
        format!("| proxy | idle |{}\n|---|---|", at.iter().map(|n| format!(" {n} open |")).collect::<String>());
    md += &"---|".repeat(at.len());
    md.push('\n');
    for ((p, idle), rss) in proxies.iter().zip(idle).zip(rss) {
        let cells: String = rss.iter().map(|r| format!(" {} |", cell(r))).collect();
        let procs = if p.pids.len() > 1 { format!(" ({} processes)", p.pids.len()) } else { String::new() };
        writeln!(md, "| {}{procs} | {} |{cells}", p.name, idle.as_ref().map_or("—".into(), cell)).unwrap();
    }
    md += "\nEach cell: all resident memory (VmRSS) and, in brackets, its anonymous part (RssAnon: heap, stacks, what the process allocated). The rest is the pages of the binary and its libraries it has touched: shared with every process mapping them and dropped by the kernel under memory pressure.\n";
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_report_parsed() {
        let text = "Running 4s test @ http://x/\n  1 threads and 32 connections\n  Latency   1.00ms\n  12345 requests in 4.00s, 1.00MB read\n  Socket errors: connect 1, read 2, write 0, timeout 3\n  Non-2xx or 3xx responses: 4\nRequests/sec:   3086.25\nTransfer/sec:    1.00MB\n";
        assert_eq!(parse_wrk(text), Some((3086.25, 10)));
        assert_eq!(parse_wrk("nothing"), None);
    }
}
