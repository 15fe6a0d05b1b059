//! The L7 proxy terminating TLS, and proxying gRPC, run by `cargo xtask
//! bench` (root). splitter, HAProxy (`mode http`, 1 thread) and nginx (1
//! worker) hold the same certificate (an ECDSA P-256 one that a CA made here
//! with rcgen signed) and proxy to the same plain-HTTP backend (an nginx
//! origin answering from memory), in the same run, rounds interleaved:
//!
//! 1. HTTPS keep-alive requests/s at 32 and 256 connections (wrk, one
//!    thread), CPU µs per request of the proxy's processes; then p50/p99 at
//!    a fixed rate below saturation, open loop (a Rust client);
//! 2. new TLS handshakes/s: a new connection, a full handshake (the client
//!    never resumes a session; every handshake is checked to be a full one)
//!    and one request each, with CPU µs per handshake;
//! 3. gRPC unary calls/s through splitter (h2c to a tonic server) against
//!    the same server directly (h2load, gRPC-framed POSTs);
//! 4. RSS with 32 and 256 TLS connections open.
//!
//! Issue #23's rules: each proxy runs alone on CPU 1 (all its threads pinned
//! with sched_setaffinity, checked after the runs); the load generators, the
//! backends and this process run on CPU 0. The generator is shown not to be
//! the limit by its direct rate against the backend and by each run's busy
//! time per core (`/proc/stat`). CPU per request comes from `/proc` of the
//! proxy's own processes, which a noisy machine disturbs least.
//!
//! Writes `target/bench/l7_tls.md`.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, HandshakeKind, RootCertStore, SignatureScheme,
};
use splitter_testkit::{
    agent_process::AgentProcess,
    config::Service,
    netns::{unique_name, NetNs},
    topology::{vip, Topology},
};
use splitter_tests::{
    agent::release_bin,
    grpc::{pb, serve_grpc, GrpcClient},
    l7bench::{
        latency_table, med, open_loop, rate_head, rate_row, rounds, rps, rss_table, rss_with_connections, tls_connect,
        KeepAlive, Latency, Proxy, Run, TlsStream, HOST, LOAD_CPU, PACE_TICK, PROXY_CPU,
    },
    load::pin_current_thread,
    peers::{Haproxy, Nginx},
    report::{self, Bar},
    Rss,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Seconds per rate run.
const SECS: u64 = 4;
/// Keep-alive connections of the requests/s runs.
const CONNS: [usize; 2] = [32, 256];
/// Clients handshaking at once in the handshake runs.
const HANDSHAKERS: usize = 32;
/// Connections of the open-loop latency runs.
const LATENCY_CONNS: usize = 32;
/// gRPC load: h2load connections and concurrent streams on each.
const GRPC_CONNS: usize = 4;
const GRPC_STREAMS: usize = 8;
/// Open TLS connections at which each proxy's RSS is read.
const RSS_AT: [usize; 2] = [32, 256];

const BACKEND: &str = "198.51.100.10:8081";
const GRPC_BACKEND: &str = "198.51.100.10:9091";
const SPLITTER_GRPC: u16 = 8051;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// The certificates: a CA, and a server certificate it signed for
/// [`HOST`], as PEM files every proxy reads.
struct Pki {
    ca_der: CertificateDer<'static>,
    server_der: Vec<u8>,
    cert: PathBuf,
    key: PathBuf,
    /// The chain and the key in one file, as HAProxy's `crt` wants them.
    bundle: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "splitter bench CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let ca = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec![HOST.to_owned()]).expect("server params");
        params.distinguished_name.push(DnType::CommonName, HOST);
        let cert = params.signed_by(&key, &ca).expect("server certificate");
        std::fs::create_dir_all(dir).expect("bench dir");
        let (cert_path, key_path, bundle) = (dir.join("server.pem"), dir.join("server.key"), dir.join("haproxy.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("server.pem");
        std::fs::write(&key_path, key.serialize_pem()).expect("server.key");
        std::fs::write(&bundle, format!("{}{}", cert.pem(), key.serialize_pem())).expect("haproxy.pem");
        Pki { ca_der: ca_cert.der().clone(), server_der: cert.der().to_vec(), cert: cert_path, key: key_path, bundle }
    }

    /// A client that trusts only this CA (to check what each proxy presents).
    fn verifying_client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA");
        let c = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(c)
    }
}

/// The load generator's client: HTTP/1.1 by ALPN, no session resumption
/// (every handshake a full one), and no verification of the server's
/// certificate or signature: that is client-side work which would only
/// make the generator slower, while each server's work is the same either
/// way. What each proxy presents is verified once, by [`check_proxy`].
fn load_client() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What one proxy's handshake showed: protocol, cipher suite, key exchange.
struct Negotiated(String);

/// Verifies what `target` presents against the CA, checks it is the
/// certificate [`Pki`] issued, and that a request gets through.
fn check_proxy(ns: &NetNs, name: &str, target: SocketAddr, pki: &Pki) -> Negotiated {
    let config = pki.verifying_client();
    let server_der = pki.server_der.clone();
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
        rt.block_on(async move {
            let mut tls = tls_connect(target, config).await.unwrap_or_else(|e| panic!("{name} at {target}: {e}"));
            let conn = tls.get_ref().1;
            let presented = conn.peer_certificates().and_then(|c| c.first()).expect("a certificate").to_vec();
            assert_eq!(presented, server_der, "{name} presents the bench's certificate");
            let what = format!(
                "{:?}, {:?}, {:?}",
                conn.protocol_version().expect("version"),
                conn.negotiated_cipher_suite().expect("suite").suite(),
                conn.negotiated_key_exchange_group().map(|g| g.name()).expect("group")
            );
            tls.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .expect("request");
            let status = read_response(&mut tls).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(status, 200, "{name} answers 200");
            Negotiated(what)
        })
    })
}

/// Reads one HTTP/1.1 response (headers, then a Content-Length or chunked
/// body, or to the end) and returns its status.
async fn read_response(s: &mut TlsStream) -> Result<u16, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the response's head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no status in {head:?}"))?;
    let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &buf[head_end..];
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if done {
            return Ok(status);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) if length.is_none() && !chunked => return Ok(status),
            Ok(0) => return Err("closed in the body".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// [`HANDSHAKERS`] clients, each in a loop for [`SECS`]: connect, full TLS
/// handshake, one `GET /` with `Connection: close`, read the answer, close.
/// Returns handshakes/s and failures; panics if any handshake resumed a
/// session or needed a HelloRetryRequest.
fn handshakes(ns: &NetNs, target: SocketAddr) -> (f64, u64) {
    let config = load_client();
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
        rt.block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(SECS);
            let tasks: Vec<_> = (0..HANDSHAKERS)
                .map(|_| {
                    let config = config.clone();
                    tokio::spawn(async move {
                        let (mut done, mut failed, mut other) = (0u64, 0u64, Vec::new());
                        while Instant::now() < deadline {
                            let one = async {
                                let mut tls = tls_connect(target, config.clone()).await?;
                                let kind = tls.get_ref().1.handshake_kind();
                                let req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
                                tls.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
                                match read_response(&mut tls).await? {
                                    200 => Ok(kind),
                                    s => Err(format!("status {s}")),
                                }
                            };
                            match one.await {
                                Ok(Some(HandshakeKind::Full)) => done += 1,
                                Ok(kind) => other.push(kind),
                                Err(_) => failed += 1,
                            }
                        }
                        (done, failed, other)
                    })
                })
                .collect();
            let (mut done, mut failed) = (0, 0);
            for t in tasks {
                let (d, f, other) = t.await.expect("handshake task");
                assert!(other.is_empty(), "handshakes to {target} that were not full ones: {other:?}");
                done += d;
                failed += f;
            }
            (done as f64 / SECS as f64, failed)
        })
    })
}

/// h2load sending the unary call in `body` (gRPC-framed) over
/// [`GRPC_CONNS`] h2c connections with [`GRPC_STREAMS`] streams each for
/// [`SECS`]: calls/s (2xx answers) and failures.
fn h2load_grpc(ns: &NetNs, target: SocketAddr, body: &Path) -> (f64, u64) {
    let url = format!("http://{target}/echo.Echo/Unary");
    let out = ns
        .command("h2load")
        .args(["-c", &GRPC_CONNS.to_string(), "-m", &GRPC_STREAMS.to_string(), "-D", &SECS.to_string()])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers", "-d"])
        .arg(body)
        .arg(&url)
        .output()
        .unwrap_or_else(|e| panic!("h2load (cargo xtask bench installs it, Debian package nghttp2-client): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load {url} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let field = |line: &str, name: &str| -> u64 {
        let l = text.lines().find(|l| l.starts_with(line)).unwrap_or_else(|| panic!("no {line} in h2load: {text}"));
        l.split(',')
            .find_map(|p| p.trim().strip_suffix(name).and_then(|n| n.trim().rsplit(' ').next()?.parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in {l:?}"))
    };
    let ok = field("status codes:", "2xx");
    let failed = field("requests:", "failed") + field("requests:", "errored") + field("requests:", "timeout");
    (ok as f64 / SECS as f64, failed)
}

/// The gRPC request body: one length-prefixed, uncompressed `echo.Msg`.
fn grpc_body(dir: &Path) -> PathBuf {
    let msg = prost::Message::encode_to_vec(&pb::Msg { text: "bench".into(), ..pb::Msg::default() });
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let path = dir.join("grpc-unary.bin");
    std::fs::write(&path, framed).expect("gRPC body");
    path
}

fn main() {
    splitter_tests::require_root("the L7 TLS benchmark");
    for tool in [&["wrk", "-v"][..], &["h2load", "--version"]] {
        Command::new(tool[0])
            .args(&tool[1..])
            .output()
            .unwrap_or_else(|e| panic!("{} is missing ({e}): `cargo xtask bench` installs it", tool[0]));
    }
    // This thread, and so every thread and process it starts (the backends,
    // the clients, wrk, h2load and, until they are moved, the proxies), runs
    // on LOAD_CPU.
    pin_current_thread(LOAD_CPU);
    let bin = release_bin();
    let topo = Topology::build(&unique_name("spl")).expect("topology");
    serve_grpc(&topo.blue, 9091, "v1").expect("gRPC backend");
    topo.lb.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]).expect("VIP on lo");
    // Handshake runs open tens of thousands of connections a second.
    topo.client.sysctl("net.ipv4.tcp_tw_reuse=1").expect("tcp_tw_reuse");
    topo.client.sysctl("net.ipv4.ip_local_port_range=1024 65535").expect("port range");
    let dir = std::env::temp_dir().join(format!("splitter-bench-{}", unique_name("tls")));
    let pki = Pki::new(&dir);
    // The HTTP backend: an nginx origin answering 200 from memory, light
    // enough to leave CPU 0 to the generator (started from this thread: on
    // LOAD_CPU).
    let origin = Nginx::origin(&topo.blue, &dir, addr("0.0.0.0:8081"), "v1");
    let load_pids = origin.pids();
    let tls = format!("tls: {{ certificates: [{{ cert: {}, key: {} }}] }}", pki.cert.display(), pki.key.display());
    let config = Topology::config()
        .service("https", Service::l7(vip(8443)).on_blue("v1", 8081).weights(&[("v1", 1)]).with(&tls))
        .service(
            "grpc",
            Service::l7(vip(SPLITTER_GRPC))
                .on_blue("v1", 9091)
                .weights(&[("v1", 1)])
                .with("upstream: { protocol: h2c }"),
        );
    let agent = AgentProcess::start_unique(&bin, &topo.lb, "spl", &config.to_string(), &["--workers", "1"])
        .unwrap_or_else(|e| panic!("{e}"));
    let agent_pid = agent.pid().expect("agent runs");
    let haproxy = Haproxy::https(&topo.lb, &dir, addr("203.0.113.10:8444"), addr(BACKEND), 1, &pki.bundle);
    let nginx = Nginx::https(&topo.lb, &dir, addr("203.0.113.10:8445"), addr(BACKEND), &pki.cert, &pki.key);
    let proxies = [
        Proxy::new("splitter", addr("203.0.113.10:8443"), true, vec![agent_pid]),
        Proxy::new("HAProxy", addr("203.0.113.10:8444"), true, vec![haproxy.0.id()]),
        Proxy::new("nginx", addr("203.0.113.10:8445"), true, nginx.pids()),
    ];
    proxies.iter().for_each(Proxy::pin);
    let negotiated: Vec<Negotiated> =
        proxies.iter().map(|p| check_proxy(&topo.client, &p.name, p.addr, &pki)).collect();
    let body = grpc_body(&dir);
    let splitter_grpc = vip(SPLITTER_GRPC);
    for (what, target) in [("directly", addr(GRPC_BACKEND)), ("through splitter", splitter_grpc)] {
        let answer = GrpcClient::connect(&topo.client, target).unary("bench", &[]);
        let answer = answer.unwrap_or_else(|s| panic!("the bench's gRPC call {what}: {s}"));
        assert_eq!(answer.served_by, "v1", "the gRPC call {what} reached the backend");
    }
    let rss_idle = Rss::of(agent_pid);

    // Rate runs, rounds interleaved: per round, every path of every scenario.
    let direct_url = format!("http://{BACKEND}/");
    let mut keepalive = KeepAlive::new(&CONNS, SECS, proxies.len());
    let mut hs: Vec<Vec<Run>> = proxies.iter().map(|_| Vec::new()).collect();
    let (mut grpc_direct, mut grpc_splitter) = (Vec::new(), Vec::new());
    for round in 0..rounds() {
        keepalive.round(&topo.client, &direct_url, &proxies, &load_pids);
        for (i, p) in proxies.iter().enumerate() {
            hs[i].push(Run::measure(&p.pids, &load_pids, SECS, || handshakes(&topo.client, p.addr)));
        }
        grpc_direct.push(Run::measure(&[], &load_pids, SECS, || h2load_grpc(&topo.client, addr(GRPC_BACKEND), &body)));
        grpc_splitter
            .push(Run::measure(&[agent_pid], &load_pids, SECS, || h2load_grpc(&topo.client, splitter_grpc, &body)));
        eprintln!("round {}/{} done", round + 1, rounds());
    }

    // Latency at a fixed rate: half of the slowest proxy's median maximum at
    // CONNS[0] connections, the same offered rate for every path.
    let rate = 0.5 * (0..proxies.len()).map(|i| keepalive.rps(i, 0)).fold(f64::INFINITY, f64::min);
    let rate = (rate / 100.0).floor() * 100.0;
    let mut latency: Vec<Vec<Latency>> = (0..=proxies.len()).map(|_| Vec::new()).collect();
    for _ in 0..rounds() {
        latency[0].push(open_loop(&topo.client, addr(BACKEND), None, rate, LATENCY_CONNS, SECS));
        for (i, p) in proxies.iter().enumerate() {
            latency[i + 1].push(open_loop(&topo.client, p.addr, Some(load_client()), rate, LATENCY_CONNS, SECS));
        }
    }

    // RSS with TLS connections open.
    let rss = rss_with_connections(&topo.client, &proxies, Some(load_client()), &RSS_AT);
    proxies.iter().for_each(Proxy::assert_pinned);

    // The report.
    let n = rounds();
    let mut md = String::new();
    let mut w = |s: String| writeln!(md, "{s}").unwrap();
    w(format!("### L7 over TLS and gRPC ({n} interleaved rounds of {SECS} s runs, median [min–max])\n"));
    w(format!("splitter (`--workers 1`), HAProxy (`nbthread 1`) and nginx (1 worker) terminate TLS with the same certificate (ECDSA P-256, signed by a CA made for the run) and proxy to the same plain-HTTP/1.1 backend over keep-alive. Each proxy's threads are pinned to CPU {PROXY_CPU}, alone (sched_setaffinity, as `taskset -a -p`; checked after the runs); the load generators, the backends (an nginx origin answering 200 from memory, 1 worker; a tonic gRPC server) and the bench process run on CPU {LOAD_CPU}. Every handshake negotiated: splitter {}; HAProxy {}; nginx {}.\n", negotiated[0].0, negotiated[1].0, negotiated[2].0));
    w("#### HTTPS keep-alive (wrk -t1, `GET /`)\n".into());
    w(keepalive.table("direct to the backend (plain HTTP: the generator's ceiling)", &proxies, &|p| {
        format!("{} over TLS", p.name)
    }));
    w(keepalive.headroom_note(" (its rate is plain HTTP; over TLS wrk spends a few µs a request more)"));
    let mut bars: Vec<Bar> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| Bar::new(&format!("{} (HTTPS)", p.name), i == 0, rps(&keepalive.proxied[i][0])))
        .collect();
    w(format!("Open loop at {rate:.0} requests/s (half the slowest proxy's median maximum at {} connections), {LATENCY_CONNS} keep-alive connections, requests released every {} µs as in the plain HTTP bench; latency from each request's release:\n", CONNS[0], PACE_TICK.as_micros()));
    let lat_names: Vec<String> = std::iter::once("direct to the backend (plain HTTP)".to_owned())
        .chain(proxies.iter().map(|p| format!("{} over TLS", p.name)))
        .collect();
    w(latency_table(&lat_names, &latency));
    w(format!("#### New TLS handshakes ({HANDSHAKERS} clients: connect, full handshake, one `GET /` with `Connection: close`)\n"));
    w(rate_head(&["path", "handshakes/s", "vs splitter", "CPU µs per handshake", "failed"]));
    for (p, runs) in proxies.iter().zip(&hs) {
        w(rate_row(&p.name, runs, rps(&hs[0]).0, Some(0)));
    }
    let bound: Vec<&str> = proxies
        .iter()
        .zip(&hs)
        .filter(|(_, runs)| med(runs, &|r| r.usage.share(r.usage.proxy)).0 < 90.0)
        .map(|(p, _)| p.name.as_str())
        .collect();
    if !bound.is_empty() {
        w(format!("\nUnder 90 % of their core: {}. Their handshakes/s is bound by the load side (the client's own key exchange, and whatever else ran on CPU {LOAD_CPU}) or by neighbours on CPU {PROXY_CPU}, so compare CPU µs per handshake.", bound.join(", ")));
    }
    w("\nThe client is rustls (ring) with session resumption off and every handshake checked to be a full one (no resumption, no HelloRetryRequest); it does not verify the server (the proxies' work is the same either way; each proxy's certificate was verified against the CA once before the runs).\n".into());
    w(format!("#### gRPC unary (h2load: {GRPC_CONNS} h2c connections × {GRPC_STREAMS} streams, `echo.Echo/Unary`, a tonic server)\n"));
    w(rate_head(&["path", "calls/s", "vs direct", "CPU µs per call (splitter)", "failed"]));
    let grpc_d = rps(&grpc_direct).0;
    w(rate_row("direct to the tonic server", &grpc_direct, grpc_d, None));
    w(rate_row("splitter (`upstream: h2c`)", &grpc_splitter, grpc_d, Some(1)));
    let mib = |r: Rss| r.total as f64 / 1024.0;
    w("\n#### RSS with TLS connections open (MiB)\n".into());
    let mut idle = vec![None; proxies.len()];
    idle[0] = Some(rss_idle);
    w(rss_table(&proxies, &idle, &RSS_AT, &rss));
    w("Idle is splitter's before the runs, with its two services; the others are read after the rate runs, as the l7 bench does (an allocator may keep what the load made it take; splitter's agent hands its free heap pages back within 10 s of a peak), with each connection idle after one request. The splitter agent also holds the eBPF data path, the control plane and the gRPC service.".into());
    report::write_md("l7_tls", &md);

    let ka = |i: usize| keepalive.rps(i, 0);
    let cpu_ka = |i: usize| keepalive.cpu_us(i, 0);
    let hsr = |i: usize| rps(&hs[i]).0;
    let cpu_hs = |i: usize| med(&hs[i], &|r| r.cpu_us()).0;
    report::write_headline(
        "l7_tls",
        &[format!(
            "L7 over TLS (each proxy pinned to one core): splitter spends {:.1} µs of CPU per HTTPS keep-alive request (HAProxy {:.1}, nginx {:.1}) and serves {:.2}× HAProxy's and {:.2}× nginx's requests/s at {} connections; a new TLS handshake costs it {:.0} µs (HAProxy {:.0}, nginx {:.0}) at {:.2}× HAProxy's and {:.2}× nginx's handshakes/s; it passes {:.2}× the direct gRPC unary rate at {:.1} µs per call, and holds {:.1} MiB with {} TLS connections open (HAProxy {:.1}, nginx {:.1}).",
            cpu_ka(0),
            cpu_ka(1),
            cpu_ka(2),
            ka(0) / ka(1),
            ka(0) / ka(2),
            CONNS[0],
            cpu_hs(0),
            cpu_hs(1),
            cpu_hs(2),
            hsr(0) / hsr(1),
            hsr(0) / hsr(2),
            rps(&grpc_splitter).0 / grpc_d,
            med(&grpc_splitter, &|r| r.cpu_us()).0,
            mib(rss[0][1]),
            RSS_AT[1],
            mib(rss[1][1]),
            mib(rss[2][1]),
        )],
    );
    for (i, p) in proxies.iter().enumerate() {
        bars.push(Bar::new(&format!("{} (handshakes)", p.name), i == 0, rps(&hs[i])));
    }
    report::write_chart(
        "l7_tls",
        &format!("L7 over TLS, one core each: requests/s at {} connections, new handshakes/s", CONNS[0]),
        "per second",
        true,
        &bars,
    );
    drop(nginx);
    drop(origin);
    drop(haproxy);
    drop(agent);
}
